"""A TCP proxy in front of a local server (the moto S3 endpoint), for cutting uploads where a test wants them.

`TcpProxy(target_port)` listens on 127.0.0.1 and forwards every connection to the target. It can
- hold: stop forwarding requests once `budget` request bytes went through (counted from the first request, or,
  with `trigger`, from the first request whose bytes contain `trigger`, e.g. `b"PUT /bucket/prefix/"`), so the
  client blocks in the middle of a request;
- stop: close every connection and the listening socket, so the endpoint is gone (connection refused), as if the
  server had stopped; `start()` listens again on the same port, so clients configured with the URL reach it again.

Responses are always forwarded; only requests are counted and held.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading


class TcpProxy:
    """A stoppable, restartable TCP proxy to 127.0.0.1:`target_port` that can hold requests after a byte budget."""

    def __init__(self, target_port: int, budget: int | None = None, trigger: bytes | None = None, port: int = 0):
        self.target_port = target_port
        self.budget = budget
        self.trigger = trigger
        self.port = port
        self.triggered = threading.Event()  # the trigger was seen (or there is none and a request arrived)
        self.saturated = threading.Event()  # the budget is used up: requests are held from here on
        self.forwarded = 0  # request bytes counted against the budget
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.stopped = threading.Event()
        self.start()

    @property
    def url(self) -> str:
        """The proxy's endpoint URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen (again) on the proxy's port; a restart forwards everything (no budget, no trigger)."""
        if self.listener is not None:  # a restart: the endpoint is back, without faults
            self.budget = None
            self.trigger = None
        self.stopped = threading.Event()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener, self.stopped), daemon=True).start()

    def stop(self) -> None:
        """Close every connection and stop listening: clients get connection errors until `start()`."""
        self.stopped.set()
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in [self.listener, *sockets]:
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket, stopped: threading.Event) -> None:
        while not stopped.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True, stopped), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False, stopped), daemon=True).start()

    def _allowed(self, data: bytes, seen: bytearray) -> int:
        """How many bytes of this request chunk may go through."""
        with self.lock:
            if not self.triggered.is_set():
                seen += data
                at = seen.find(self.trigger) if self.trigger else 0
                if at < 0:
                    del seen[: max(0, len(seen) - len(self.trigger or b"") + 1)]
                    return len(data)
                self.triggered.set()
                counted = data[max(0, len(data) - (len(seen) - at)) :]  # from the trigger on
                before = len(data) - len(counted)
            else:
                counted, before = data, 0
            if self.budget is None:
                return len(data)
            allowed = max(0, min(len(counted), self.budget - self.forwarded))
            self.forwarded += allowed
            if self.forwarded >= self.budget:
                self.saturated.set()
            return before + allowed

    def _pump(self, source: socket.socket, destination: socket.socket, is_request: bool, stopped) -> None:
        seen = bytearray()
        try:
            while not stopped.is_set():
                ready, _, _ = select.select([source], [], [], 0.1)
                if not ready:
                    continue
                data = source.recv(65536)
                if not data:
                    destination.shutdown(socket.SHUT_WR)
                    return
                if not is_request:
                    destination.sendall(data)
                    continue
                allowed = self._allowed(data, seen)
                destination.sendall(data[:allowed])
                if allowed < len(data):
                    stopped.wait()  # hold the rest until the test stops the proxy
                    return
        except OSError:
            return
