"""`dagster dev` and the Dagster CLI in tests: a throwaway server, CLI runs, and the shared tiny chain.

- `start_dagster_dev(...)`: `dagster dev` on 127.0.0.1 on a free port with its own DAGSTER_HOME and
  DOGE_ARTIFACT_ROOT, in its own process group (started in the background, `dagster dev` ignores
  SIGINT/SIGTERM and orphans its children, so the whole group is killed), ready once `/server_info`
  answers and the code location is loaded. Teardown kills the group and then every process that still
  carries the server's DAGSTER_HOME in its environment (run workers and training processes).
- `DagsterDev`: GraphQL helpers against a started server (runs, schedules, stale status).
- `cli_stale_status(...)`: the same stale-status query through the `dagster-graphql` CLI, without a server.
- `latest_materializations(...)`, `instance_runs(...)`: what a DAGSTER_HOME holds (`programs/instance.py`).
- `run_command(...)`: any CLI command in its own process group, killed as a group on timeout.
- `TinyChain` / `tiny_chain_session`: the whole tiny graph materialized once per test session with the
  README's quick-start command (`dagster asset materialize ... --select 'tokenizer*' --partition tiny`);
  `tests/conftest.py` exposes it as the session fixture `tiny_chain`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import (
    DAGSTER_BIN,
    PROJECT_ROOT,
    dagster_env,
    kill_group,
    processes_in_group,
    run_command,
    run_program,
    tail,
)

VENV_BIN = Path(sys.executable).parent
DAGSTER = str(DAGSTER_BIN)
DG = str(VENV_BIN / "dg")
DAGSTER_GRAPHQL = str(VENV_BIN / "dagster-graphql")
DOGE_DAGSTER = str(VENV_BIN / "doge-dagster")
ARTIFACTS_DIR = PROJECT_ROOT / "test-artifacts"  # screenshots and logs (gitignored)
LOCATION = "doge_dagster"  # [tool.dagster] code_location_name
REPOSITORY = "__repository__"
# About 5 minutes on an idle 2-core machine; 45 and more when other jobs share the cores.
CHAIN_TIMEOUT_S = float(os.environ.get("DOGE_TEST_CHAIN_TIMEOUT", "3600"))
# pytest-timeout counts fixture setup: a test that may be the first to need the chain gets this much.
CHAIN_TEST_TIMEOUT_S = int(CHAIN_TIMEOUT_S) + 1200
DAGSTER_YAML = "telemetry:\n  enabled: false\n"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_home(dagster_home: Path) -> Path:
    """A DAGSTER_HOME with a dagster.yaml (telemetry off, so nothing tries the network)."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    return dagster_home


def cli_env(dagster_home: Path, artifact_root: Path, recipes_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess or a `dagster dev`: our DAGSTER_HOME and artifact root, offline."""
    prepare_home(dagster_home)
    env = dagster_env(dagster_home, artifact_root, recipes_dir, **extra)
    env.pop("DAGSTER_CLI_API_GRPC_PORT", None)
    env["VIRTUAL_ENV"] = str(VENV_BIN.parent)  # `dg` warns when the active venv is not the project's
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("COLUMNS", "240")  # `dg list defs` draws a table as wide as the terminal
    return env


# -- processes --------------------------------------------------------------------------------------------------
def processes_with_env(marker: str) -> list[int]:
    """Live processes whose environment contains `marker` (e.g. `DAGSTER_HOME=/tmp/...`), this one excluded."""
    needle = marker.encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (
                needle in (entry / "environ").read_bytes() + b"\0"
                and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            ):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_processes_with_env(marker: str, wait_s: float = 20.0) -> None:
    """SIGKILL every process started with `marker` in its environment (only the test's own: the marker is a temp path)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        pids = processes_with_env(marker)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


# -- the Dagster instance, read in a subprocess ------------------------------------------------------------------
def latest_materializations(
    env: dict[str, str], assets: Sequence[str], partition: str = "tiny", timeout: float = 180
) -> dict[str, dict]:
    """The newest materialization of each asset partition in env's DAGSTER_HOME: run id, `cached`, `version`, metadata."""
    return run_program("instance", ["materializations", partition, *assets], env, timeout).result


def instance_runs(env: dict[str, str], timeout: float = 120) -> list[dict[str, Any]]:
    """Every run in env's DAGSTER_HOME (run id, job, status, tags), newest first."""
    return run_program("instance", ["runs"], env, timeout).result


# -- stale status, through the GraphQL API the UI uses ----------------------------------------------------------------
STALE_STATUS_QUERY = """
query Stale($partition: String) {
  assetNodes {
    assetKey { path }
    isMaterializable
    staleStatus(partition: $partition)
    staleCauses(partition: $partition) { key { path } category reason dependency { path } }
  }
}
"""


def stale_status_by_asset(asset_nodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`assetNodes` of STALE_STATUS_QUERY as asset -> {status, materializable, causes}.

    A cause is `{key, category, reason, dependency}` (asset names, `dependency` None or not). GraphQL gives root
    causes: a dependency's new data version is a cause whose `key` is the changed asset (with no dependency), a new
    code version one whose `key` is the asset itself.
    """
    return {
        "/".join(node["assetKey"]["path"]): {
            "status": node["staleStatus"],
            "materializable": node["isMaterializable"],
            "causes": [
                {
                    "key": "/".join(cause["key"]["path"]),
                    "category": cause["category"],
                    "reason": cause["reason"],
                    "dependency": "/".join(cause["dependency"]["path"]) if cause.get("dependency") else None,
                }
                for cause in node["staleCauses"] or []
            ],
        }
        for node in asset_nodes
    }


def cli_stale_status(env: dict[str, str], partition: str = "tiny", timeout: float = 300) -> dict[str, dict[str, Any]]:
    """Stale status and causes of every asset for `partition`, from the `dagster-graphql` CLI (no server needed).

    `dagster-graphql -m doge_dagster.definitions` runs STALE_STATUS_QUERY in process against the code location
    (loaded by a code server it starts with env, so DOGE_RECIPES_DIR applies) and the instance of env's
    DAGSTER_HOME: the same API and answer as a `dagster dev` (see `DagsterDev.stale_status`), without the webserver.
    """
    with tempfile.TemporaryDirectory(prefix="stale-status-") as folder:
        answer_path = Path(folder) / "answer.json"
        command = [
            DAGSTER_GRAPHQL, "-m", "doge_dagster.definitions", "-t", STALE_STATUS_QUERY,
            "-v", json.dumps({"partition": partition}), "-o", str(answer_path),
        ]  # fmt: skip
        result = run_command(command, env, timeout)
        assert result.returncode == 0 and answer_path.is_file(), (
            f"dagster-graphql failed (rc {result.returncode}):\n{tail(result.stdout)}"
        )
        answer = json.loads(answer_path.read_text())
    if answer.get("errors"):
        raise GraphQLError(f"GraphQL errors: {json.dumps(answer['errors'])[:3000]}")
    return stale_status_by_asset(answer["data"]["assetNodes"])


def code_location_assets() -> dict[str, Any]:
    """Asset keys of the code location by kind (loads the definitions in this process)."""
    from doge_dagster.definitions import defs

    graph = defs.get_repository_def().asset_graph
    keys = sorted(key.to_user_string() for key in graph.get_all_asset_keys())
    return {
        "all": keys,
        "materializable": sorted(key.to_user_string() for key in graph.materializable_asset_keys),
        "sources": [key for key in keys if key.startswith("source_")],
        # Releases sit outside the pipeline (`release` job; a disabled one never materializes): tests of the chain
        # as the quick start and `full_pipeline` build it leave them out.
        "releases": sorted(
            key.to_user_string() for key in graph.get_all_asset_keys() if graph.get(key).group_name == "release"
        ),
        "parents": {
            key.to_user_string(): sorted(parent.to_user_string() for parent in graph.get(key).parent_keys)
            for key in graph.get_all_asset_keys()
        },
    }


# -- dagster dev --------------------------------------------------------------------------------------------------
class GraphQLError(AssertionError):
    """A GraphQL request failed or answered with errors."""


@dataclass
class DagsterDev:
    """A running `dagster dev`: its URL, home, artifact root, log and process."""

    port: int
    dagster_home: Path
    artifact_root: Path
    log_path: Path
    process: subprocess.Popen
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 80) -> str:
        try:
            return tail(self.log_path.read_text(errors="replace"), lines)
        except OSError:
            return ""

    def graphql(self, query: str, variables: dict[str, Any] | None = None, timeout: float = 60) -> dict[str, Any]:
        """POST a GraphQL query; return `data` or raise with the errors."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.base_url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answer = json.loads(response.read())
        except (urllib.error.URLError, OSError) as error:
            raise GraphQLError(f"GraphQL request failed: {error}\n{self.log_tail()}") from error
        if answer.get("errors"):
            raise GraphQLError(f"GraphQL errors: {json.dumps(answer['errors'])[:3000]}")
        return answer["data"]

    def client(self):
        """A `DagsterGraphQLClient` on this server."""
        from dagster_graphql import DagsterGraphQLClient

        return DagsterGraphQLClient("127.0.0.1", port_number=self.port, timeout=60)

    # -- runs ---------------------------------------------------------------------------------------------------
    def runs(self, tags: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Runs (id, job, status, tags), newest first, optionally filtered by tags."""
        data = self.graphql(
            """
            query Runs($filter: RunsFilter) {
              runsOrError(filter: $filter) {
                __typename
                ... on Runs { results { runId jobName status tags { key value } } }
                ... on PythonError { message }
              }
            }
            """,
            {"filter": {"tags": [{"key": key, "value": value} for key, value in (tags or {}).items()]}},
        )["runsOrError"]
        if data["__typename"] != "Runs":
            raise GraphQLError(f"runsOrError: {data}")
        return [{**run, "tags": {tag["key"]: tag["value"] for tag in run["tags"]}} for run in data["results"]]

    def run_events(self, run_id: str) -> list[dict[str, Any]]:
        """A run's events, oldest first: `__typename`, `message` and, for step failures, `error`."""
        data = self.graphql(
            """
            query Logs($runId: ID!) {
              logsForRun(runId: $runId) {
                __typename
                ... on EventConnection { events { __typename ... on MessageEvent { message } ... on ExecutionStepFailureEvent { error { message } } } }
              }
            }
            """,
            {"runId": run_id},
        )["logsForRun"]
        return data.get("events") or []

    def run_failure_text(self, run_id: str) -> str:
        """Error messages of a run's failed steps (for assertion messages)."""
        return "\n".join(
            (event.get("error") or {}).get("message") or event.get("message") or ""
            for event in self.run_events(run_id)
            if event["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent")
        )

    def run_messages(self, run_id: str) -> list[str]:
        """Every message of a run's event log, oldest first (progress lines of the trainer included)."""
        return [event.get("message") or "" for event in self.run_events(run_id)]

    def wait_for_run(self, run_id: str, timeout: float, poll_s: float = 2.0) -> str:
        """Poll a run until it ends; return its final status (SUCCESS, FAILURE or CANCELED)."""
        deadline = time.monotonic() + timeout
        client = self.client()
        status = None
        while time.monotonic() < deadline:
            status = client.get_run_status(run_id).value
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                return status
            time.sleep(poll_s)
        raise AssertionError(f"run {run_id} still {status} after {timeout:.0f}s\n{self.log_tail()}")

    def terminate_run(self, run_id: str) -> None:
        """Ask the run to terminate (a queued run is canceled, a started one interrupted)."""
        self.graphql(
            """
            mutation Terminate($runId: String!) {
              terminateRun(runId: $runId) { __typename ... on PythonError { message } }
            }
            """,
            {"runId": run_id},
        )

    # -- schedules ----------------------------------------------------------------------------------------------
    def set_schedule_running(self, schedule: str, running: bool) -> dict[str, Any]:
        """Start or stop a schedule, as the UI's toggle does."""
        selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "scheduleName": schedule}
        if running:
            query = """
                mutation Start($selector: ScheduleSelector!) {
                  startSchedule(scheduleSelector: $selector) {
                    __typename
                    ... on ScheduleStateResult { scheduleState { status } }
                    ... on PythonError { message }
                  }
                }"""
            return self.graphql(query, {"selector": selector})["startSchedule"]
        query = """
            query State($selector: ScheduleSelector!) {
              scheduleOrError(scheduleSelector: $selector) { ... on Schedule { scheduleState { id selectorId } } }
            }"""
        state = self.graphql(query, {"selector": selector})["scheduleOrError"]["scheduleState"]
        stop = """
            mutation Stop($id: String!) {
              stopRunningSchedule(id: $id) {
                __typename
                ... on ScheduleStateResult { scheduleState { status } }
                ... on PythonError { message }
              }
            }"""
        return self.graphql(stop, {"id": state["id"]})["stopRunningSchedule"]

    def schedule_ticks(self, schedule: str) -> list[dict[str, Any]]:
        """The schedule's ticks (status, run ids, error), newest first."""
        selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "scheduleName": schedule}
        data = self.graphql(
            """
            query Ticks($selector: ScheduleSelector!) {
              scheduleOrError(scheduleSelector: $selector) {
                __typename
                ... on Schedule { scheduleState { status ticks(limit: 10) { status runIds timestamp error { message } skipReason } } }
              }
            }
            """,
            {"selector": selector},
        )["scheduleOrError"]
        return data["scheduleState"]["ticks"]

    # -- assets -------------------------------------------------------------------------------------------------
    def stale_status(self, partition: str) -> dict[str, dict[str, Any]]:
        """Per asset: the UI's stale status for `partition` (FRESH, STALE, MISSING) and the causes."""
        return stale_status_by_asset(self.graphql(STALE_STATUS_QUERY, {"partition": partition})["assetNodes"])


def _wait_until_ready(server: DagsterDev, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"dagster dev exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.base_url}/server_info", timeout=5) as response:
                if response.status == 200:
                    break
        except (urllib.error.URLError, OSError) as error:
            last_error = str(error)
        time.sleep(0.5)
    else:
        raise AssertionError(
            f"dagster dev did not answer /server_info within {timeout:.0f}s ({last_error}):\n{server.log_tail()}"
        )
    # The webserver answers before the code server has loaded the definitions: wait for the location too.
    while time.monotonic() < deadline:
        entries = server.graphql(
            """
            { workspaceOrError { ... on Workspace { locationEntries { name loadStatus
                locationOrLoadError { __typename ... on PythonError { message } } } } } }
            """
        )["workspaceOrError"]["locationEntries"]
        entry = next((entry for entry in entries if entry["name"] == LOCATION), None)
        if entry and entry["loadStatus"] == "LOADED":
            loaded = entry["locationOrLoadError"] or {}
            if loaded.get("__typename") != "RepositoryLocation":
                raise AssertionError(f"code location {LOCATION} failed to load: {loaded.get('message')}")
            return
        time.sleep(0.5)
    raise AssertionError(f"code location {LOCATION} not loaded within {timeout:.0f}s:\n{server.log_tail()}")


@contextlib.contextmanager
def start_dagster_dev(
    work_dir: Path,
    artifact_root: Path | None = None,
    dagster_home: Path | None = None,
    recipes_dir: Path | None = None,
    extra_env: dict[str, str] | None = None,
    timeout: float = 240,
) -> Iterator[DagsterDev]:
    """`dagster dev` (webserver + daemon) on a free 127.0.0.1 port; yields a ready `DagsterDev`, kills it all after."""
    work_dir.mkdir(parents=True, exist_ok=True)
    dagster_home = prepare_home(dagster_home or work_dir / "dagster_home")
    artifact_root = artifact_root or work_dir / "artifacts"
    artifact_root.mkdir(parents=True, exist_ok=True)
    env = cli_env(dagster_home, artifact_root, recipes_dir, **(extra_env or {}))
    port = free_port()
    log_path = work_dir / "dagster-dev.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [DAGSTER, "dev", "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT_ROOT, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = DagsterDev(port, dagster_home, artifact_root, log_path, process, env)
    try:
        _wait_until_ready(server, timeout)
        yield server
    finally:
        kill_group(process.pid)
        # Run workers and training processes of the daemon may have left the group: find them by home.
        kill_processes_with_env(f"DAGSTER_HOME={dagster_home}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        log.close()
        ARTIFACTS_DIR.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copy(log_path, ARTIFACTS_DIR / f"dagster-dev-{work_dir.name}.log")
    # Reached only when the body succeeded (a failure keeps its own error): nothing of the server is left.
    left = processes_in_group(process.pid) + processes_with_env(f"DAGSTER_HOME={dagster_home}")
    assert not left, f"dagster dev left processes behind: {left}"


# -- the tiny chain, materialized once per session -----------------------------------------------------------------
@dataclass
class TinyChain:
    """The whole tiny graph, materialized by the README quick-start command into a session store."""

    dagster_home: Path
    artifact_root: Path
    command: list[str]
    output: str
    seconds: float

    def env(
        self,
        recipes_dir: Path | None = None,
        dagster_home: Path | None = None,
        artifact_root: Path | None = None,
        **extra: str,
    ) -> dict[str, str]:
        """CLI environment on this chain's store and instance, unless another home or store is given."""
        return cli_env(dagster_home or self.dagster_home, artifact_root or self.artifact_root, recipes_dir, **extra)

    def copy_store(self, target: Path) -> Path:
        """A copy of this chain's artifact store at `target`, for tests that publish other versions."""
        shutil.copytree(self.artifact_root, target)
        return target

    def copy_home(self, target: Path) -> Path:
        """A copy of this chain's DAGSTER_HOME at `target`, for tests that add runs (the shared one stays as built)."""
        shutil.copytree(self.dagster_home, target)
        return target


QUICK_START_COMMAND = [
    DAGSTER,
    "asset",
    "materialize",
    "-m",
    "doge_dagster.definitions",
    "--select",
    "tokenizer*",
    "--partition",
    "tiny",
]


def tiny_chain_session(base: Path) -> TinyChain:
    """Run the README quick-start materialization of `tokenizer*` for tiny into `base` (fails the caller on error)."""
    dagster_home = prepare_home(base / "dagster_home")
    artifact_root = base / "artifacts"
    artifact_root.mkdir(parents=True, exist_ok=True)
    env = cli_env(dagster_home, artifact_root)
    started = time.monotonic()
    result = run_command(QUICK_START_COMMAND, env, CHAIN_TIMEOUT_S, log_path=ARTIFACTS_DIR / "tiny-chain.log")
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise AssertionError(
            f"the tiny chain failed (rc {result.returncode}) after {seconds:.0f}s:\n{tail(result.stdout, 120)}"
        )
    return TinyChain(dagster_home, artifact_root, QUICK_START_COMMAND, result.stdout, seconds)
