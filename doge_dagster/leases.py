"""One writer per artifact: a lease on `{asset}/{partition}/{version}` kept in the artifact store itself.

Two runs (the UI and a schedule, two users) may ask for the same asset, partition and version at once; both
would train into the same work folder. Before building, a run takes the lease: a small JSON file at
`{root}/{asset}/{partition}/.leases/{version}.json` (`ArtifactStore.lease_path`; dot folders are never read as
artifacts) naming the holder (host, pid, a unique token, the Dagster run id when given) with the times it was
acquired and last refreshed. While it is held, a thread rewrites `refreshed` every `refresh_s` (30 s); a lease
not refreshed for `ttl_s` (90 s, the Marin executor's numbers) is stale: its holder is taken for dead, and the
next run takes it over. Release deletes the file, only if it is still ours. A run that finds the lease held by a
live holder waits (polling every `poll_s`) until it is released or stale, then holds it itself; the caller then
reads the manifest again, since the other run has usually published the artifact meanwhile.

How each store makes taking the lease atomic (exactly one of several runs gets it):

- **local folder**: the lease is written to a temporary file and hard-linked to its name (`os.link` fails if the
  name exists; `O_CREAT | O_EXCL` where hard links are not supported). Replacing a lease (refresh, taking over a
  stale one) and deleting it compare the file with what the caller last saw and then `os.replace` / unlink it,
  under an `flock` on the store's `.leases.lock`, so two runs taking over the same stale lease cannot both succeed:
  the second one finds the file changed. Released leases leave nothing behind: the empty `.leases` folder and
  asset folders above it are removed under the same lock (a build that was refused before it wrote anything
  leaves the store as it found it). The lock is held for milliseconds and the kernel drops it when its holder
  dies, so it never goes stale itself.
- **S3**: conditional writes. Taking a free lease is a `PutObject` with `If-None-Match: *`; refreshing and taking
  over a stale lease are a `PutObject` with `If-Match` on the ETag read before; release is a `DeleteObject` with
  `If-Match`. AWS S3 documents these headers (PutObject's since 2024) and moto honours them (s3fs passes them
  through to botocore, which knows them); an endpoint answering 501 Not Implemented falls back to the generic
  method below (logged). An endpoint that silently ignores them gives no guarantee.
- **any other fsspec store** (and S3 endpoints without conditional writes): write, wait `settle_s`, read back and
  compare. This is weaker: two runs whose writes land within `settle_s` of each other can both believe they hold
  the lease. It narrows the race window; it does not close it.

Staleness compares the holder's clock (`refreshed`) with the reader's, so the hosts' clocks must agree to well
within the TTL (NTP does). Nothing here imports Dagster; `WAIT_FOR_WRITER_TAG` is read by the assets.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Self

from doge_dagster.artifacts import ArtifactStore

# Run tag: `false` makes a run that finds the artifact being built by another run fail at once instead of waiting.
WAIT_FOR_WRITER_TAG = "doge/wait-for-writer"

TTL_ENV = "DOGE_LEASE_TTL_S"
REFRESH_ENV = "DOGE_LEASE_REFRESH_S"
POLL_ENV = "DOGE_LEASE_POLL_S"
DEFAULT_TTL_S = 90.0
DEFAULT_REFRESH_S = 30.0
DEFAULT_POLL_S = 5.0
DEFAULT_SETTLE_S = 1.0  # generic stores only: how long a write is left to settle before it is read back
LOCK_NAME = ".leases.lock"  # local stores: at the store root, the flock that serializes lease changes

Log = Callable[[str], Any]


class LeaseHeldError(RuntimeError):
    """Another live holder has the lease (raised when the caller asked not to wait, or waited too long)."""

    def __init__(self, message: str, holder: LeaseRecord, location: str):
        super().__init__(message)
        self.holder = holder
        self.location = location


@dataclass(frozen=True)
class LeaseRecord:
    """What a lease file holds: the artifact, who holds it and since when (Unix times)."""

    asset: str
    partition: str
    version: str
    host: str
    pid: int
    token: str
    run_id: str | None
    acquired: float
    refreshed: float

    def to_bytes(self) -> bytes:
        """Serialize for the lease file."""
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseRecord | None:
        """Parse a lease file; None if it is not one (empty, cut short, another format)."""
        try:
            fields = json.loads(data.decode())
            return cls(**{name: fields[name] for name in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def is_stale(self, ttl_s: float, now: float | None = None) -> bool:
        """Not refreshed for longer than `ttl_s`, or held by a process of this host that no longer exists: the
        holder is dead (a run killed with SIGKILL is seen at once on its own host, elsewhere after the TTL)."""
        return (time.time() if now is None else now) - self.refreshed > ttl_s or self.holder_is_dead_here()

    def holder_is_dead_here(self) -> bool:
        """The holder ran on this host and its pid is gone (a reused pid counts as alive: the TTL decides then)."""
        if self.host != socket.gethostname() or self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def describe(self, now: float | None = None) -> str:
        """Who holds it and since when, for logs and error messages."""
        now = time.time() if now is None else now
        since = datetime.fromtimestamp(self.acquired, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (
            f"host {self.host}, pid {self.pid}, run {self.run_id or '(none: not a Dagster run)'}, "
            f"since {since} (refreshed {max(0.0, now - self.refreshed):.0f} s ago)"
        )


def _unknown_holder(asset: str, partition: str, version: str, first_seen: float) -> LeaseRecord:
    """Stands in for a lease file that cannot be parsed: an unknown holder, alive until it sat unchanged for a TTL."""
    return LeaseRecord(asset, partition, version, "unknown", -1, "unreadable", None, first_seen, first_seen)


@dataclass(frozen=True)
class _Current:
    """A lease as read from the store: its bytes, its parsed record and the tag a conditional change must match."""

    data: bytes
    record: LeaseRecord | None
    tag: Any


# -- storage backends -----------------------------------------------------------------------------------------------
class _LocalBackend:
    """Lease files in a local (or NFS) folder: hard-link creation, compare-and-replace under an flock."""

    def __init__(self, path: str, root: str, log: Log):
        self.path = path
        self.folder = os.path.dirname(path)
        self.root = root
        self.lock_path = os.path.join(root, LOCK_NAME)
        self.log = log
        self.warned_no_lock = False

    def read(self) -> _Current | None:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        return _Current(data, LeaseRecord.from_bytes(data), data)

    def _temporary(self, data: bytes) -> str:
        os.makedirs(self.folder, exist_ok=True)
        temporary = os.path.join(self.folder, f".{os.path.basename(self.path)}.{uuid.uuid4().hex}.tmp")
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return temporary

    def create(self, data: bytes) -> Any | None:
        with self._locked():  # not while a release prunes the folders it would create
            return self._create(data)

    def _create(self, data: bytes) -> Any | None:
        temporary = self._temporary(data)
        try:
            os.link(temporary, self.path)
        except FileExistsError:
            return None
        except OSError as error:  # no hard links here (some FUSE / SMB mounts): an exclusive create instead
            if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return None
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        return data

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(self.root, exist_ok=True)
        descriptor = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX)
            except OSError as error:
                # A filesystem without flock: changes are compared, then made, without the lock (a narrow race).
                if not self.warned_no_lock:
                    self.warned_no_lock = True
                    self.log(f"no flock on {self.lock_path} ({error}); lease changes are not serialized")
            yield
        finally:
            os.close(descriptor)  # releases the flock

    def replace(self, data: bytes, expected: Any) -> Any | None:
        with self._locked():
            current = self.read()
            if current is None or current.tag != expected:
                return None
            os.replace(self._temporary(data), self.path)
        return data

    def delete(self, expected: Any) -> bool:
        with self._locked():
            current = self.read()
            if current is None or current.tag != expected:
                return False
            os.unlink(self.path)
            self._prune()
        return True

    def _prune(self) -> None:
        """Remove the folders up to the store root that the lease alone created (empty ones only)."""
        folder = self.folder
        while os.path.abspath(folder) != os.path.abspath(self.root) and folder.startswith(self.root):
            try:
                os.rmdir(folder)
            except OSError:  # not empty: an artifact, a staging folder or another lease lives there
                return
            folder = os.path.dirname(folder)


class _FsspecBackend:
    """Any fsspec store without conditional writes: write, let it settle, read back and compare (weaker)."""

    def __init__(self, fs, path: str, settle_s: float):
        self.fs = fs
        self.path = path
        self.settle_s = settle_s

    def read(self) -> _Current | None:
        try:
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        return _Current(data, LeaseRecord.from_bytes(data), data)

    def _write_and_confirm(self, data: bytes) -> Any | None:
        self.fs.pipe_file(self.path, data)
        time.sleep(self.settle_s)
        current = self.read()
        return data if current is not None and current.data == data else None

    def create(self, data: bytes) -> Any | None:
        if self.fs.exists(self.path):
            return None
        return self._write_and_confirm(data)

    def replace(self, data: bytes, expected: Any) -> Any | None:
        current = self.read()
        if current is None or current.tag != expected:
            return None
        return self._write_and_confirm(data)

    def delete(self, expected: Any) -> bool:
        current = self.read()
        if current is None or current.tag != expected:
            return False
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path)
        return True


_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_MISSING = {"NoSuchKey", "404", "NotFound"}
_UNSUPPORTED = {"NotImplemented", "501"}


def _s3_error_code(error: BaseException) -> str | None:
    """The S3 error code behind an s3fs exception (s3fs translates ClientError and keeps it as the cause)."""
    for candidate in (error, error.__cause__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            code = (response.get("Error") or {}).get("Code")
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            return str(code or status)
    return "NoSuchKey" if isinstance(error, FileNotFoundError) else None


class _Unsupported(Exception):
    """The S3 endpoint answered that it does not implement conditional requests."""


class _S3Backend:
    """Lease objects on S3 with conditional writes (If-None-Match / If-Match on the ETag)."""

    def __init__(self, fs, path: str, settle_s: float, log: Log):
        self.fs = fs
        self.path = path
        self.bucket, self.key, _ = fs.split_path(path)
        self.fallback: _FsspecBackend | None = None
        self.settle_s = settle_s
        self.log = log
        self._seen: dict[str, bytes] = {}  # ETag -> bytes of the last objects seen, for a fallback mid-lease

    def _remember(self, etag: str, data: bytes) -> str:
        self._seen[etag] = data
        while len(self._seen) > 8:
            self._seen.pop(next(iter(self._seen)))
        return etag

    def _data_of(self, expected: Any) -> Any:
        """A tag for the fallback, which compares bytes: the bytes of the object the ETag named (or the bytes)."""
        return self._seen.get(expected, expected) if isinstance(expected, str) else expected

    def _fall_back(self, error: BaseException) -> _FsspecBackend:
        if self.fallback is None:
            self.log(
                f"the S3 endpoint does not support conditional writes ({error.__cause__ or error}); the lease "
                f"{self.path} falls back to write, read back and compare, which does not fully exclude two writers"
            )
            self.fallback = _FsspecBackend(self.fs, self.path, self.settle_s)
        return self.fallback

    def read(self) -> _Current | None:
        if self.fallback:
            return self.fallback.read()

        async def get() -> tuple[bytes, str]:
            response = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            try:
                return await response["Body"].read(), response["ETag"]
            finally:
                response["Body"].close()

        from fsspec.asyn import sync

        try:
            data, etag = sync(self.fs.loop, get)
        except Exception as error:
            if _s3_error_code(error) in _MISSING:
                return None
            raise
        return _Current(data, LeaseRecord.from_bytes(data), self._remember(etag, data))

    def _put(self, data: bytes, condition: dict[str, str]) -> Any | None:
        try:
            response = self.fs.call_s3(
                "put_object", Bucket=self.bucket, Key=self.key, Body=data, ContentType="application/json", **condition
            )
            return self._remember(response["ETag"], data)
        except Exception as error:
            code = _s3_error_code(error)
            if code in _UNSUPPORTED:
                raise _Unsupported() from error
            if code not in _PRECONDITION | _MISSING:
                raise
        # The condition failed, or a retried request whose first attempt had succeeded: ours only if it says so.
        current = self.read()
        return current.tag if current is not None and current.data == data else None

    def create(self, data: bytes) -> Any | None:
        if self.fallback is None:
            try:
                return self._put(data, {"IfNoneMatch": "*"})
            except _Unsupported as error:
                self._fall_back(error)
        return self.fallback.create(data)

    def replace(self, data: bytes, expected: Any) -> Any | None:
        if self.fallback is None:
            try:
                return self._put(data, {"IfMatch": expected})
            except _Unsupported as error:
                self._fall_back(error)
        return self.fallback.replace(data, self._data_of(expected))

    def delete(self, expected: Any) -> bool:
        if self.fallback is None:
            try:
                self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=expected)
                return True
            except Exception as error:
                code = _s3_error_code(error)
                if code in _PRECONDITION | _MISSING:
                    return False
                if code not in _UNSUPPORTED:
                    raise
                self._fall_back(error)
        return self.fallback.delete(self._data_of(expected))


def _is_s3(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return any(protocol in ("s3", "s3a") for protocol in protocols) and hasattr(fs, "_call_s3")


# -- the lease ------------------------------------------------------------------------------------------------------
def _setting(value: float | None, env: str, default: float) -> float:
    if value is not None:
        return float(value)
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        parsed = float(raw)
    except ValueError:
        raise ValueError(f"{env}={raw!r}: set a number of seconds, or unset it") from None
    if parsed <= 0:
        raise ValueError(f"{env}={raw!r}: set a positive number of seconds, or unset it")
    return parsed


class Lease:
    """The lease on one artifact version in `store`: acquire (waiting or not), keep refreshed, release.

    `ttl_s`, `refresh_s` and `poll_s` default to DOGE_LEASE_TTL_S / DOGE_LEASE_REFRESH_S / DOGE_LEASE_POLL_S, else
    90 s, min(30 s, a third of the TTL) and 5 s. `log` receives warnings (a lease taken over, a failed refresh).
    """

    def __init__(
        self,
        store: ArtifactStore,
        asset: str,
        partition: str,
        version: str,
        *,
        run_id: str | None = None,
        ttl_s: float | None = None,
        refresh_s: float | None = None,
        poll_s: float | None = None,
        settle_s: float = DEFAULT_SETTLE_S,
        log: Log | None = None,
    ):
        self.store = store
        self.asset, self.partition, self.version = asset, partition, version
        self.run_id = run_id
        self.ttl_s = _setting(ttl_s, TTL_ENV, DEFAULT_TTL_S)
        self.refresh_s = _setting(refresh_s, REFRESH_ENV, min(DEFAULT_REFRESH_S, self.ttl_s / 3))
        self.poll_s = _setting(poll_s, POLL_ENV, DEFAULT_POLL_S)
        if self.refresh_s >= self.ttl_s:
            raise ValueError(
                f"lease refresh interval {self.refresh_s} s must be shorter than its TTL {self.ttl_s} s "
                f"({REFRESH_ENV} / {TTL_ENV})"
            )
        self.log: Log = log or (lambda message: None)
        self.token = uuid.uuid4().hex
        self.path = store.lease_path(asset, partition, version)
        self.location = self.path if store.is_local else store.fs.unstrip_protocol(self.path)
        if store.is_local:
            self._backend: Any = _LocalBackend(self.path, store.root, self.log)
        elif _is_s3(store.fs):
            self._backend = _S3Backend(store.fs, self.path, settle_s, self.log)
        else:
            self._backend = _FsspecBackend(store.fs, self.path, settle_s)
        self.record: LeaseRecord | None = None  # ours, as last written
        self.waited_for: list[LeaseRecord] = []  # the live holders this lease waited on, in order
        self.took_over: LeaseRecord | None = None  # the stale holder this lease replaced, if any
        self._tag: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self._lost = False
        self._unreadable_since: dict[bytes, float] = {}

    @property
    def held(self) -> bool:
        """Acquired, not released and not lost to another holder."""
        return self.record is not None and not self._lost

    @property
    def lost(self) -> bool:
        """Another holder replaced this lease while it was held (it was taken for dead)."""
        return self._lost

    def current(self) -> LeaseRecord | None:
        """The holder recorded in the store now, if any (an unreadable file reads as an unknown holder)."""
        found = self._backend.read()
        return None if found is None else self._holder(found)

    def _holder(self, found: _Current) -> LeaseRecord:
        if found.record is not None:
            return found.record
        first_seen = self._unreadable_since.setdefault(found.data, time.time())
        return _unknown_holder(self.asset, self.partition, self.version, first_seen)

    def _new_record(self, now: float) -> LeaseRecord:
        return LeaseRecord(
            asset=self.asset,
            partition=self.partition,
            version=self.version,
            host=socket.gethostname(),
            pid=os.getpid(),
            token=self.token,
            run_id=self.run_id,
            acquired=now,
            refreshed=now,
        )

    def try_acquire(self) -> LeaseRecord | None:
        """Take the lease if it is free or stale; None when it is now ours, else the live holder."""
        if self.held:
            return None
        holder = None
        for _ in range(5):  # each round loses only to a concurrent change; re-read and decide again
            found = self._backend.read()
            mine = self._new_record(time.time())
            if found is None:
                tag = self._backend.create(mine.to_bytes())
                if tag is not None:
                    self._won(mine, tag)
                    return None
                continue
            holder = self._holder(found)
            if not holder.is_stale(self.ttl_s):
                return holder
            tag = self._backend.replace(mine.to_bytes(), found.tag)
            if tag is not None:
                self.took_over = holder
                self.log(
                    f"took over the stale lease on {self.asset}[{self.partition}] version {self.version} "
                    f"({self.location}) of {holder.describe()}: taken for dead after {self.ttl_s:.0f} s"
                )
                self._won(mine, tag)
                return None
        return holder or self.current()

    def acquire(
        self,
        wait: bool = True,
        on_wait: Callable[[LeaseRecord], Any] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        """Take the lease. Held by a live holder: raise `LeaseHeldError` at once unless `wait`; with `wait`, poll
        every `poll_s` until it is released or stale (`on_wait(holder)` is called for each new holder), raising
        after `timeout_s` if given."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            holder = self.try_acquire()
            if holder is None:
                return
            if not wait:
                raise LeaseHeldError(self._held_message(holder), holder, self.location)
            if not self.waited_for or self.waited_for[-1].token != holder.token:
                self.waited_for.append(holder)
                if on_wait is not None:
                    on_wait(holder)
            if deadline is not None and time.monotonic() >= deadline:
                raise LeaseHeldError(
                    f"{self._held_message(holder)}; still held after waiting {timeout_s:.0f} s", holder, self.location
                )
            time.sleep(self.poll_s)

    def _held_message(self, holder: LeaseRecord) -> str:
        return (
            f"{self.asset}[{self.partition}] version {self.version} is held by {holder.describe()} "
            f"(lease {self.location})"
        )

    def _won(self, record: LeaseRecord, tag: Any) -> None:
        self.record, self._tag, self._lost = record, tag, False
        self._stop.clear()
        self._refresher = threading.Thread(
            target=self._refresh_loop, name=f"lease-{self.asset}-{self.version}", daemon=True
        )
        self._refresher.start()

    def refresh(self) -> bool:
        """Rewrite `refreshed` now, if the lease is still ours; False (and `lost`) if another holder replaced it."""
        with self._lock:
            if self.record is None or self._lost:
                return False
            updated = replace(self.record, refreshed=time.time())
            tag = self._backend.replace(updated.to_bytes(), self._tag)
            if tag is not None:
                self.record, self._tag = updated, tag
                return True
            holder = self.current()
            self.log(
                f"lost the lease on {self.asset}[{self.partition}] version {self.version} ({self.location}): "
                f"now {'held by ' + holder.describe() if holder else 'deleted'}; this run was taken for dead "
                f"(no refresh for {self.ttl_s:.0f} s), so another run may be building the same artifact"
            )
            self._lost = True
        return False

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                if not self.refresh():
                    return
            except Exception as error:  # noqa: BLE001 - a transient store error: try again next interval
                self.log(f"could not refresh the lease {self.location} ({error!r}); retrying in {self.refresh_s} s")

    def release(self) -> None:
        """Stop refreshing and delete the lease if it is still ours; a lease of another holder is left alone."""
        self._stop.set()
        if self._refresher is not None and self._refresher is not threading.current_thread():
            self._refresher.join()
        self._refresher = None
        with self._lock:
            if self.record is None:
                return
            tag, lost = self._tag, self._lost
            self.record, self._tag = None, None
            if lost:
                return
            try:
                if not self._backend.delete(tag):
                    self.log(f"the lease {self.location} is no longer ours; left as it is")
            except Exception as error:  # noqa: BLE001 - it expires after the TTL anyway
                self.log(f"could not delete the lease {self.location} ({error!r}); it expires after {self.ttl_s} s")

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


@contextlib.contextmanager
def hold_lease(
    store: ArtifactStore,
    asset: str,
    partition: str,
    version: str,
    *,
    run_id: str | None = None,
    wait: bool = True,
    on_wait: Callable[[LeaseRecord], Any] | None = None,
    timeout_s: float | None = None,
    **options: Any,
) -> Iterator[Lease]:
    """Hold the lease on `{asset}/{partition}/{version}` for the block; released when it ends, however it ends.

    With `wait`, waits for a live holder (see `Lease.acquire`); without, raises `LeaseHeldError`. The caller
    should read the manifest again inside the block: a holder it waited for has usually published it. `options`
    go to `Lease` (`ttl_s`, `refresh_s`, `poll_s`, `settle_s`, `log`).
    """
    lease = Lease(store, asset, partition, version, run_id=run_id, **options)
    lease.acquire(wait=wait, on_wait=on_wait, timeout_s=timeout_s)
    try:
        yield lease
    finally:
        lease.release()
