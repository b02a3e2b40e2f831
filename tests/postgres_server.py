"""A real PostgreSQL server for the team-deployment test (Debian's `postgresql` package, no system service).

`start_postgres()` creates a fresh cluster in a temporary folder (`initdb`), starts it with `pg_ctl` on a free port
of 127.0.0.1 (its Unix socket in the same folder, never /var/run/postgresql), creates a login role with a random
password and a database it owns, and checks that the role can log in over TCP with that password (the way
dagster-postgres connects). `stop_postgres()` stops the server and removes the folder. The module-scoped fixture
`postgres_server` does both around a test module.

The server refuses to run as root: as root the cluster belongs to an unprivileged account (Debian's `postgres`,
else `nobody`) and its commands run through `runuser`; as another user, as that user. Local socket connections
are trusted (the fixture's own administration), TCP connections need the password (scram-sha-256).

Without the server binaries (`initdb`, `pg_ctl`, `postgres`) the test fails with the install command: it does not
skip (CI installs `postgresql`, and `tests/forbid_skips.py` would fail a skip there anyway).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

INSTALL = "apt-get install -y postgresql"
BIN_ENV = "DOGE_TEST_PG_BIN"  # a folder holding initdb/pg_ctl/postgres, when they are not in Debian's place
SERVER_ACCOUNTS = ("postgres", "nobody")  # the unprivileged account that owns the cluster when we are root
ADMIN = "doge_admin"  # the cluster's superuser (socket connections only)
SERVER_BINARIES = ("initdb", "pg_ctl", "postgres", "psql")


@dataclass
class PostgresServer:
    """A running server: where it listens, the role and database a Dagster instance uses, and its folder."""

    host: str
    port: int
    user: str
    password: str
    database: str
    root: Path
    bin_dir: Path
    account: str | None  # the OS account running the server (None: this process's own)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def dagster_env(self) -> dict[str, str]:
        """The variables deploy/dagster.yaml reads its storage from."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.database,
        }

    def sql(self, statement: str, database: str | None = None, as_admin: bool = False) -> str:
        """Run one SQL statement with psql; return its unaligned, tuples-only output.

        By default as the deployment's role over TCP with its password (what Dagster does); `as_admin` connects
        as the superuser through the socket.
        """
        if as_admin:
            target = ["-h", str(self.socket_dir), "-U", ADMIN]
            env = {**os.environ}
            env.pop("PGPASSWORD", None)
        else:
            target = ["-h", self.host, "-U", self.user]
            env = {**os.environ, "PGPASSWORD": self.password}
        command = [
            str(self.bin_dir / "psql"), *target, "-p", str(self.port), "-d", database or self.database,
            "-X", "-v", "ON_ERROR_STOP=1", "-A", "-t", "-c", statement,
        ]  # fmt: skip
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode:
            raise AssertionError(f"psql failed ({result.returncode}) on {statement!r}: {result.stderr.strip()}")
        return result.stdout.strip()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _version(bin_dir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", bin_dir.parent.name)) or (0,)


def postgres_bin_dir() -> Path:
    """The folder of the server binaries: $DOGE_TEST_PG_BIN, else Debian's newest /usr/lib/postgresql/N/bin, else PATH."""
    candidates: list[Path] = []
    if os.environ.get(BIN_ENV):
        candidates.append(Path(os.environ[BIN_ENV]))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if all((folder / name).is_file() for name in SERVER_BINARIES):
            return folder
    pytest.fail(
        f"the PostgreSQL server is not installed (no {', '.join(SERVER_BINARIES)} in "
        f"{[str(folder) for folder in candidates] or 'Debian /usr/lib/postgresql/*/bin or PATH'}); the team deployment "
        f"test needs a real server: install it with `{INSTALL}` (or set {BIN_ENV} to the folder of its binaries)",
        pytrace=False,
    )


def _server_account() -> str | None:
    """The unprivileged account to run the server as when we are root (None: we are not root, run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_ACCOUNTS:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    pytest.fail(f"running as root and none of the accounts {SERVER_ACCOUNTS} exists to run PostgreSQL", pytrace=False)


def _as_account(account: str | None, command: list[str]) -> list[str]:
    return ["runuser", "-u", account, "--", *command] if account else command


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(command: list[str], what: str, timeout: float = 120, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    if result.returncode:
        raise AssertionError(
            f"{what} failed ({result.returncode}): {' '.join(command)}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return result.stdout


def start_postgres(user: str = "dagster", database: str = "dagster") -> PostgresServer:
    """initdb, start on a free 127.0.0.1 port, create `user` (random password) and `database`; the running server."""
    bin_dir = postgres_bin_dir()
    account = _server_account()
    # Not under pytest's tmp_path: that is mode 700 and root's; the server account must own its folder.
    root = Path(tempfile.mkdtemp(prefix="doge-postgres-"))
    (root / "socket").mkdir()
    if account:
        for path in (root, root / "socket"):
            shutil.chown(path, account)
    server = PostgresServer(
        host="127.0.0.1", port=0, user=user, password=secrets.token_hex(16), database=database,
        root=root, bin_dir=bin_dir, account=account,
    )  # fmt: skip
    try:
        _run(
            _as_account(account, [
                str(bin_dir / "initdb"), "-D", str(server.data_dir), "-U", ADMIN, "-E", "UTF8", "--no-locale",
                "--auth-local=trust", "--auth-host=scram-sha-256",
            ]),
            "initdb",
        )  # fmt: skip
        for attempt in range(3):  # a free port can be taken between the probe and the bind: try another
            server.port = _free_port()
            options = (
                f"-p {server.port} -k {server.socket_dir} -c listen_addresses=127.0.0.1"
                # A throwaway cluster: no fsync (durability across a machine crash is not what the test is about).
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            started = subprocess.run(
                _as_account(account, [
                    str(bin_dir / "pg_ctl"), "-D", str(server.data_dir), "-l", str(server.log_path), "-w", "-t", "60",
                    "-o", options, "start",
                ]),
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            if started.returncode == 0:
                break
            if attempt == 2 or "could not bind" not in server.log_tail():
                raise AssertionError(
                    f"pg_ctl start failed ({started.returncode}): {started.stdout}{started.stderr}\n{server.log_tail()}"
                )
        server.sql(f"CREATE ROLE {user} LOGIN PASSWORD '{server.password}'", database="postgres", as_admin=True)
        server.sql(f"CREATE DATABASE {database} OWNER {user}", database="postgres", as_admin=True)
        # The role logs in over TCP with its password, as dagster-postgres will; a wrong password is refused.
        assert server.sql("SELECT current_user") == user
        wrong = subprocess.run(
            [str(bin_dir / "psql"), "-h", server.host, "-p", str(server.port), "-U", user, "-d", database, "-X",
             "-c", "SELECT 1"],
            env={**os.environ, "PGPASSWORD": "not-" + server.password}, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr, wrong.stderr
    except BaseException:
        stop_postgres(server)
        raise
    return server


def _postmaster_pid(server: PostgresServer) -> int | None:
    try:
        return int((server.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop_postgres(server: PostgresServer) -> None:
    """Stop the server (fast shutdown; SIGKILL if that does not finish) and remove its folder."""
    pid = _postmaster_pid(server)
    if pid is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                _as_account(server.account, [
                    str(server.bin_dir / "pg_ctl"), "-D", str(server.data_dir), "-m", "fast", "-w", "-t", "30", "stop",
                ]),
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):  # the postmaster's children exit once it is gone
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    shutil.rmtree(server.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie is dead
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL server with a role and database for a Dagster instance, for one test module."""
    server = start_postgres()
    try:
        yield server
    finally:
        stop_postgres(server)
