"""The team deployment for real: deploy/dagster.yaml on a PostgreSQL server, `dagster-daemon` and `dagster-webserver`.

One PostgreSQL server (`postgres_server.py`), one daemon and one webserver serve the whole module, started as
README.md's "Deploying for a team" says: deploy/dagster.yaml copied into a fresh DAGSTER_HOME (two monitoring
timings shortened, see `SHORTENED`), its variables (DAGSTER_PG_*, DAGSTER_COMPUTE_LOGS_DIR) in the environment,
both processes on the project's workspace.yaml. Everything is driven through the webserver's GraphQL API, as the UI
does. The artifact store is built by the deployment itself first: the tokenizer and the pretraining mixture of
`tiny` (no training); the runs below train `doge_base` for a few steps through run-tag overrides of the recipe
(`doge/override/...`), so each is a real `accelerate launch` in the `gpu` pool, of a version of its own.

- the webserver and the daemon share the instance: QueuedRunCoordinator, pool limit 1, PostgreSQL storage (the
  runs are rows of the server's `runs` table), every daemon healthy;
- two runs queued at once both start (the run queue allows 8), and their `gpu` steps run one after the other: the
  second step is blocked by the pool ("Step blocked by limit for pool gpu") while the first holds the slot, and
  starts only after the first ended; both succeed and publish their models;
- the retraining schedule (cron `* * * * *` through DOGE_RETRAIN_CRON) ticks, and the tick launches a
  `full_pipeline` run for tiny that continues pretraining from the newest published base (terminated once started);
- a run worker SIGKILLed in the middle of a `gpu` step: its run is marked FAILURE (by the code server that started
  the worker: the default run launcher gives run monitoring no worker health check), its trainer dies with it, its
  slot stays claimed until the monitoring daemon frees it (`free_slots_after_run_end_seconds`), and only then does
  the automatic retry (`run_retries`), queued meanwhile, start its `gpu` step.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster_dev import (
    ARTIFACTS_DIR,
    LOCATION,
    REPOSITORY,
    VENV_BIN,
    DagsterDev,
    GraphQLError,
    _wait_until_ready,
    cli_env,
    free_port,
    kill_processes_with_env,
    processes_with_env,
)
from helpers import (
    PROJECT_ROOT,
    kill_group,
    planned_version,
    processes_in_group,
    processes_mentioning,
    published_versions,
    tail,
    wait_for,
)
from postgres_server import PostgresServer, postgres_server  # noqa: F401  (the module fixture)

pytestmark = pytest.mark.slow

DEPLOY = PROJECT_ROOT / "deploy" / "dagster.yaml"
WORKSPACE = PROJECT_ROOT / "workspace.yaml"
POOL = "gpu"
# The two settings of deploy/dagster.yaml the test changes, both to keep it short: the monitoring daemon wakes every
# 60 s and frees the slots of a dead run 300 s after the run ended; 2 s and 10 s let the killed-worker test end in
# seconds instead of six minutes. Everything else is the file as shipped (checked in `deployment`).
SHORTENED = {
    ("run_monitoring", "poll_interval_seconds"): 2,
    ("run_monitoring", "free_slots_after_run_end_seconds"): 10,
}
IN_PROGRESS = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")
RUN_TIMEOUT_S = 600
SCHEDULE = "retrain_schedule"


def pretrain_overrides(steps: int, seed: int = 233) -> dict[str, Any]:
    """Recipe edits (dotted path -> value) that make `doge_base` a short pretraining of its own version."""
    return {
        "stages.pretrain.training.max_steps": steps,
        "stages.pretrain.training.warmup_steps": 2,
        "stages.pretrain.training.lr_scheduler_kwargs": {"num_decay_steps": 2, "min_lr_ratio": 0.0},
        "stages.pretrain.training.logging_steps": max(1, steps // 4),  # a few losses: the check wants a falling loss
        "stages.pretrain.training.save_steps": steps,
        "stages.pretrain.training.seed": seed,
    }


def override_tags(edits: dict[str, Any]) -> dict[str, str]:
    """The run tags carrying `edits` (`doge/override/<path>`, values as YAML)."""
    return {
        f"doge/override/{path}": yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        for path, value in edits.items()
    }


# -- the deployment ------------------------------------------------------------------------------------------------
@dataclass
class Deployment:
    """The running webserver (its GraphQL API through `web`), the daemon, and the PostgreSQL server they share."""

    web: DagsterDev
    daemon: subprocess.Popen
    daemon_log: Path
    postgres: PostgresServer
    compute_logs: Path

    @property
    def artifact_root(self) -> Path:
        return self.web.artifact_root

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.web.graphql(query, variables)

    def daemon_log_text(self) -> str:
        return self.daemon_log.read_text(errors="replace")

    def logs(self) -> str:
        """The tails of the daemon's and webserver's logs, for assertion messages."""
        return f"--- daemon ---\n{tail(self.daemon_log_text(), 40)}\n--- webserver ---\n{self.web.log_tail(20)}"

    def launch(self, assets: list[str], tags: dict[str, str], job: str = "full_pipeline") -> str:
        """Submit a run of `assets` of tiny (queued: the daemon launches it); its run id."""
        data = self.graphql(
            """
            mutation Launch($params: ExecutionParams!) {
              launchRun(executionParams: $params) {
                __typename
                ... on LaunchRunSuccess { run { runId status } }
                ... on Error { message }
              }
            }
            """,
            {
                "params": {
                    "selector": {
                        "repositoryLocationName": LOCATION,
                        "repositoryName": REPOSITORY,
                        "jobName": job,
                        "assetSelection": [{"path": [asset]} for asset in assets],
                    },
                    "executionMetadata": {
                        "tags": [
                            {"key": key, "value": value} for key, value in {"dagster/partition": "tiny", **tags}.items()
                        ]
                    },
                }
            },
        )["launchRun"]
        assert data["__typename"] == "LaunchRunSuccess", f"launchRun: {data}"
        assert data["run"]["status"] == "QUEUED", data  # the QueuedRunCoordinator: the daemon launches it
        return data["run"]["runId"]

    def run(self, run_id: str) -> dict[str, Any]:
        """Status, job, start/end times (seconds) and tags of a run."""
        data = self.graphql(
            """
            query Run($runId: ID!) {
              runOrError(runId: $runId) {
                __typename
                ... on Run { runId jobName status startTime endTime updateTime tags { key value } }
              }
            }
            """,
            {"runId": run_id},
        )["runOrError"]
        assert data["__typename"] == "Run", data
        return {**data, "tags": {tag["key"]: tag["value"] for tag in data["tags"]}}

    def events(self, run_id: str) -> list[dict[str, Any]]:
        """Every event of a run, oldest first: eventType, message, stepKey and timestamp (seconds)."""
        events, cursor = [], None
        while True:
            data = self.graphql(
                """
                query Logs($runId: ID!, $after: String) {
                  logsForRun(runId: $runId, afterCursor: $after) {
                    __typename
                    ... on EventConnection {
                      cursor hasMore
                      events { __typename ... on MessageEvent { eventType message stepKey timestamp } }
                    }
                  }
                }
                """,
                {"runId": run_id, "after": cursor},
            )["logsForRun"]
            assert data["__typename"] == "EventConnection", data
            events += [{**event, "timestamp": int(event["timestamp"]) / 1000} for event in data["events"]]
            if not data["hasMore"]:
                return events
            cursor = data["cursor"]

    def messages(self, run_id: str) -> list[str]:
        return [event["message"] or "" for event in self.events(run_id)]

    def step_window(self, run_id: str, step: str) -> tuple[float | None, float | None]:
        """When `step` of the run started and ended (None: not yet), from its STEP_START and STEP_SUCCESS/FAILURE."""
        events = [event for event in self.events(run_id) if event["stepKey"] == step]
        starts = [event["timestamp"] for event in events if event["eventType"] == "STEP_START"]
        ends = [event["timestamp"] for event in events if event["eventType"] in ("STEP_SUCCESS", "STEP_FAILURE")]
        assert len(starts) <= 1 and len(ends) <= len(starts), f"{run_id} {step}: {len(starts)} starts, {len(ends)} ends"
        return (starts[0] if starts else None), (ends[0] if ends else None)

    def pool(self) -> dict[str, Any]:
        """The `gpu` pool as the instance's concurrency storage has it: its limit, claimed slots and pending steps."""
        data = self.graphql(
            """
            query Pool($key: String) {
              instance {
                concurrencyLimit(concurrencyKey: $key) {
                  slotCount limit claimedSlots { runId stepKey } pendingSteps { runId stepKey assignedTimestamp }
                }
              }
            }
            """,
            {"key": POOL},
        )["instance"]["concurrencyLimit"]
        return {
            **data,
            "claimed": [(slot["runId"], slot["stepKey"]) for slot in data["claimedSlots"]],
            "pending": [(step["runId"], step["stepKey"]) for step in data["pendingSteps"]],
        }

    def runs(self, tags: dict[str, str] | None = None) -> list[dict[str, Any]]:
        return self.web.runs(tags)

    def wait_for_status(self, run_id: str, statuses: tuple[str, ...], timeout: float) -> dict[str, Any]:
        """Poll the run until its status is one of `statuses`; fail early if it finishes otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run["status"] in statuses:
                return run
            if run["status"] in FINISHED or time.monotonic() > deadline:
                raise AssertionError(
                    f"run {run_id} is {run['status']}, waited for {statuses}\n"
                    f"{self.web.run_failure_text(run_id)}\n{self.logs()}"
                )
            time.sleep(1)

    def terminate(self, run_id: str) -> None:
        self.web.terminate_run(run_id)


def instance_config() -> dict[str, Any]:
    """deploy/dagster.yaml as parsed, with the `SHORTENED` timings."""
    config = yaml.safe_load(DEPLOY.read_text())
    for (section, key), value in SHORTENED.items():
        assert key in config[section], f"deploy/dagster.yaml has no {section}.{key} to shorten"
        config[section][key] = value
    return config


def leaves(config: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    if isinstance(config, dict):
        for key, value in config.items():
            yield from leaves(value, (*path, key))
    else:
        yield path, config


def wait_for_daemons(web: DagsterDev, timeout: float) -> list[str]:
    """Wait until every required daemon has a healthy heartbeat (read from the shared storage); their types."""

    def healthy() -> list[str] | None:
        query = "{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }"
        statuses = web.graphql(query)["instance"]["daemonHealth"]["allDaemonStatuses"]
        required = [status for status in statuses if status["required"]]
        return [status["daemonType"] for status in required] if all(s["healthy"] for s in required) else None

    return wait_for(healthy, timeout, "every required daemon to report healthy", interval=1)


@pytest.fixture(scope="module")
def deployment(postgres_server: PostgresServer, tmp_path_factory) -> Iterator[Deployment]:  # noqa: F811
    """deploy/dagster.yaml on `postgres_server`, with `dagster-daemon run` and `dagster-webserver` on workspace.yaml."""
    work = tmp_path_factory.mktemp("team-deployment")
    home = work / "dagster_home"
    home.mkdir()
    config = instance_config()
    shipped = dict(leaves(yaml.safe_load(DEPLOY.read_text())))
    assert {path: value for path, value in leaves(config) if shipped.get(path) != value} == SHORTENED
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    compute_logs = work / "compute_logs"
    env = cli_env(
        home, work / "artifacts",
        **postgres_server.dagster_env(),
        DAGSTER_COMPUTE_LOGS_DIR=str(compute_logs),
        # The retraining schedule every minute, so that a tick comes within the test (README: DOGE_RETRAIN_CRON).
        DOGE_RETRAIN_CRON="* * * * *",
        DOGE_RETRAIN_PARTITIONS="tiny",
    )  # fmt: skip
    (work / "artifacts").mkdir()
    daemon_log, web_log = work / "dagster-daemon.log", work / "dagster-webserver.log"
    processes: list[subprocess.Popen] = []
    with daemon_log.open("w") as daemon_out, web_log.open("w") as web_out:
        try:
            daemon = subprocess.Popen(
                [str(VENV_BIN / "dagster-daemon"), "run", "-w", str(WORKSPACE)],
                cwd=PROJECT_ROOT, env=env, start_new_session=True, stdout=daemon_out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            processes.append(daemon)
            port = free_port()
            webserver = subprocess.Popen(
                [str(VENV_BIN / "dagster-webserver"), "-w", str(WORKSPACE), "-h", "127.0.0.1", "-p", str(port)],
                cwd=PROJECT_ROOT, env=env, start_new_session=True, stdout=web_out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            processes.append(webserver)
            web = DagsterDev(port, home, work / "artifacts", web_log, webserver, env)
            _wait_until_ready(web, timeout=300)
            wait_for_daemons(web, timeout=300)
            yield Deployment(web, daemon, daemon_log, postgres_server, compute_logs)
        finally:
            for process in processes:
                kill_group(process.pid)
            # Run workers and trainers may have left the groups (trainers start sessions of their own): by home.
            kill_processes_with_env(f"DAGSTER_HOME={home}")
            for process in processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
            ARTIFACTS_DIR.mkdir(exist_ok=True)
            for log in (daemon_log, web_log, postgres_server.log_path):
                with contextlib.suppress(OSError):
                    shutil.copy(log, ARTIFACTS_DIR / f"team-deployment-{log.name}")
    left = [pid for process in processes for pid in processes_in_group(process.pid)]
    left += processes_with_env(f"DAGSTER_HOME={home}")
    assert not left, f"the deployment left processes behind: {left}"


@pytest.fixture(scope="module")
def tiny_data(deployment: Deployment) -> Deployment:
    """The tokenizer and pretraining mixture of tiny, built by a run of the deployment (no `gpu` step)."""
    run_id = deployment.launch(["tokenizer", "pretrain_mixture"], {})
    run = deployment.wait_for_status(run_id, ("SUCCESS",), RUN_TIMEOUT_S)
    assert run["status"] == "SUCCESS"
    for asset in ("tokenizer", "pretrain_mixture"):
        assert published_versions(deployment.artifact_root, asset) == [planned_version(asset)], asset
    return deployment


@pytest.fixture(autouse=True)
def idle(request) -> None:
    """Each test starts on an idle deployment: no run in progress (a failed test's leftovers are terminated)."""
    if "deployment" not in request.fixturenames:
        return
    deployment: Deployment = request.getfixturevalue("deployment")
    for run in deployment.runs():
        if run["status"] in IN_PROGRESS:
            with contextlib.suppress(GraphQLError):
                deployment.terminate(run["runId"])
    wait_for(
        lambda: not [run for run in deployment.runs() if run["status"] in IN_PROGRESS], 120, "no run in progress", 1
    )


# -- the tests -----------------------------------------------------------------------------------------------------
def test_the_webserver_and_the_daemon_share_the_postgres_instance(deployment: Deployment):
    instance = deployment.graphql(
        """
        { instance {
            runQueuingSupported runQueueConfig { maxConcurrentRuns isOpConcurrencyAware }
            supportsConcurrencyLimits poolConfig { defaultPoolLimit }
            daemonHealth { allDaemonStatuses { daemonType required healthy } }
        } }
        """
    )["instance"]
    assert instance["runQueuingSupported"], "runs are queued (QueuedRunCoordinator)"
    assert instance["runQueueConfig"] == {"maxConcurrentRuns": 8, "isOpConcurrencyAware": True}
    assert instance["supportsConcurrencyLimits"] and instance["poolConfig"]["defaultPoolLimit"] == 1
    # The daemon writes its heartbeats to the storage; the webserver reads them there: one database for both.
    daemons = {status["daemonType"] for status in instance["daemonHealth"]["allDaemonStatuses"] if status["required"]}
    assert {"SCHEDULER", "SENSOR", "QUEUED_RUN_COORDINATOR", "MONITORING"} <= daemons, daemons
    tables = set(deployment.postgres.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").split())
    assert {"runs", "event_logs", "jobs", "job_ticks", "concurrency_limits", "daemon_heartbeats"} <= tables, tables
    heartbeats = int(deployment.postgres.sql("SELECT count(*) FROM daemon_heartbeats"))
    assert heartbeats >= len(daemons), "the daemon's heartbeats are rows of the PostgreSQL database"


def test_two_queued_gpu_runs_take_the_pool_one_at_a_time(tiny_data: Deployment):
    deployment = tiny_data
    edits = [pretrain_overrides(8, seed=1), pretrain_overrides(8, seed=2)]
    versions = [planned_version("doge_base", edit) for edit in edits]
    before = published_versions(deployment.artifact_root, "doge_base")
    assert not set(versions) & set(before)
    # tokenizer (a cached skip, outside the pool) first: the run queue lets both runs start (it holds back only runs
    # whose first steps all wait on a full pool), so it is the pool, not the queue, that keeps the two trainings apart.
    run_ids = [deployment.launch(["tokenizer", "doge_base"], override_tags(edit)) for edit in edits]
    for run_id in run_ids:
        run = deployment.wait_for_status(run_id, ("SUCCESS",), RUN_TIMEOUT_S)
        assert run["status"] == "SUCCESS"
    assert sorted(set(published_versions(deployment.artifact_root, "doge_base")) - set(before)) == sorted(versions)
    rows = deployment.postgres.sql(f"SELECT count(*) FROM runs WHERE run_id IN ('{run_ids[0]}', '{run_ids[1]}')")
    assert rows == "2", "the runs are rows of the PostgreSQL database"

    windows = {run_id: deployment.step_window(run_id, "doge_base") for run_id in run_ids}
    first, second = sorted(run_ids, key=lambda run_id: windows[run_id][0])
    (first_start, first_end), (second_start, second_end) = windows[first], windows[second]
    assert first_end is not None and second_end is not None
    assert first_end <= second_start, f"the gpu steps overlapped: {windows}"
    # Both runs were in progress while the first held the slot, and the second's step waited on the pool.
    second_run = deployment.run(second)
    assert second_run["startTime"] < first_end, (
        f"the second run started only at {second_run['startTime']:.1f}, after the first step ended ({first_end:.1f}):"
        " the queue, not the pool, kept them apart (the machine is too slow for these timings?)"
    )
    blocked = [
        event
        for event in deployment.events(second)
        if event["eventType"] == "ENGINE_EVENT"
        and event["stepKey"] == "doge_base"
        and event["message"] == f"Step blocked by limit for pool {POOL}"
    ]
    assert blocked, f"no 'blocked by pool' event in run {second}"
    assert first_start <= blocked[0]["timestamp"] <= first_end, (blocked[0], windows)
    assert deployment.pool()["claimed"] == [], "both slots released"
    assert any(deployment.compute_logs.rglob("*")), "the steps' stdout/stderr are kept in DAGSTER_COMPUTE_LOGS_DIR"


def start_schedule(deployment: Deployment) -> None:
    started = deployment.web.set_schedule_running(SCHEDULE, True)
    assert started["__typename"] == "ScheduleStateResult", started
    assert started["scheduleState"]["status"] == "RUNNING"


def test_the_retrain_schedule_ticks_and_launches_a_run(tiny_data: Deployment):
    deployment = tiny_data
    bases = published_versions(deployment.artifact_root, "doge_base")
    start_schedule(deployment)
    try:
        # Cron `* * * * *`: the first tick is the next whole minute after the start, evaluated by the daemon.
        tick = wait_for(
            lambda: next(
                (tick for tick in deployment.web.schedule_ticks(SCHEDULE) if tick["status"] != "STARTED"), None
            ),
            150,
            f"a tick of {SCHEDULE}",
            2,
        )
    finally:
        assert deployment.web.set_schedule_running(SCHEDULE, False)["scheduleState"]["status"] == "STOPPED"
    assert tick["status"] == "SUCCESS" and len(tick["runIds"]) == 1, f"tick: {tick}\n{deployment.logs()}"
    (run_id,) = tick["runIds"]
    run = deployment.run(run_id)
    assert run["jobName"] == "full_pipeline"
    assert run["tags"]["dagster/partition"] == "tiny"
    assert run["tags"]["dagster/schedule_name"] == SCHEDULE
    # The recipe's own doge_base (900 steps) was never built: the retraining is due. With bases published (the
    # short ones of the other tests), it continues pretraining from the newest one whose gates passed.
    init_from = run["tags"].get("doge/override/stages.pretrain.init_from")
    if bases:
        assert init_from in {f"doge_base:{version}" for version in bases}, run["tags"]
    else:
        assert init_from is None, run["tags"]
    # The daemon launches it (a run of the whole pipeline: many minutes; stopped here once it started).
    deployment.wait_for_status(run_id, ("STARTED",), 180)
    deployment.terminate(run_id)
    assert deployment.wait_for_status(run_id, ("CANCELED",), 120)["status"] == "CANCELED"


def run_worker_pid(deployment: Deployment, run_id: str) -> int:
    """The pid of the run's worker process, from its "Started process for run (pid: N)." event."""
    for event in deployment.events(run_id):
        found = re.fullmatch(r"Started process for run \(pid: (\d+)\)\.", event["message"] or "")
        if found:
            return int(found.group(1))
    raise AssertionError(f"run {run_id} logged no run worker pid")


def test_a_killed_run_worker_fails_its_run_and_its_gpu_slot_is_freed(tiny_data: Deployment):
    deployment = tiny_data
    free_after = SHORTENED[("run_monitoring", "free_slots_after_run_end_seconds")]
    # A pretraining of 100000 steps: hours on this machine, so the step is still training when its worker dies.
    run_id = deployment.launch(["doge_base"], override_tags(pretrain_overrides(100_000)))
    wait_for(lambda: (run_id, "doge_base") in deployment.pool()["claimed"], 180, "the gpu step to claim the slot", 1)
    version = planned_version("doge_base", pretrain_overrides(100_000))
    # Kill it once the trainer runs (it has opened Dagster Pipes): a worker dying in the middle of a training step.
    wait_for(
        lambda: "[pipes] external process successfully opened dagster pipes." in deployment.messages(run_id),
        120, "the trainer to start", 1,
    )  # fmt: skip
    trainers = processes_mentioning(f"/.work/{version}/")
    assert trainers, "no trainer process of the step"
    pid = run_worker_pid(deployment, run_id)
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"DAGSTER_HOME={deployment.web.dagster_home}".encode() in environ, f"pid {pid} is not this deployment's"

    os.kill(pid, signal.SIGKILL)
    failed = deployment.wait_for_status(run_id, ("FAILURE",), 60)
    # Noticed by the code server that started the worker (`dagster api grpc`, run by the daemon), which fails the run.
    crash = f"Run execution process for {run_id} was terminated by signal 9 (SIGKILL)."
    assert any(crash in message for message in deployment.messages(run_id)), deployment.messages(run_id)[-5:]
    assert deployment.step_window(run_id, "doge_base")[1] is None, "the step never ended: its worker died in it"
    # Nothing in the dead run could release its slot: it stays claimed.
    assert (run_id, "doge_base") in deployment.pool()["claimed"], "the dead run's slot was released at once"
    held_seen = [time.time()]  # when the dead run was last seen holding the slot
    # No trainer outlives its worker (doge_dagster/lifetime.py).
    wait_for(lambda: not processes_mentioning(f"/.work/{version}/"), 30, "the trainer to die with its worker", 0.5)

    # run_retries queues a retry of the run (the event-log daemon, every 5 s). While the dead run holds the slot,
    # the retry stays queued: its first step is in the full pool.
    def retry_run() -> dict[str, Any] | None:
        if (run_id, "doge_base") in deployment.pool()["claimed"]:
            held_seen.append(time.time())
        return next(iter(deployment.runs({"dagster/parent_run_id": run_id})), None)

    retry = wait_for(retry_run, 60, "the automatic retry", 1)
    assert retry["tags"].get("dagster/retry_number") == "1", retry["tags"]
    retry_id = retry["runId"]
    try:
        while (run_id, "doge_base") in (pool := deployment.pool())["claimed"]:
            # (NOT_STARTED for the moment between its creation and its submission to the queue)
            status = deployment.run(retry_id)["status"]
            assert status in ("NOT_STARTED", "QUEUED"), f"the retry is {status} while the slot is held"
            held_seen.append(time.time())
            assert time.time() - failed["endTime"] < free_after + 60, f"the slot was never freed: {pool}"
            time.sleep(1)
        # Freed by the monitoring daemon (nothing else frees a dead run's slots), free_slots_after_run_end_seconds
        # after the run ended (its loop wakes every poll_interval_seconds: 2 s here).
        assert held_seen[-1] >= failed["endTime"] + free_after - 3, (
            f"freed {held_seen[-1] - failed['endTime']:.1f}s after the run ended, before {free_after}s"
        )

        # Then the retry is launched and its gpu step gets the slot (it would resume training; stopped here).
        wait_for(lambda: (retry_id, "doge_base") in deployment.pool()["claimed"], 120, "the retry to claim the slot", 1)
        retried = deployment.run(retry_id)
        assert retried["startTime"] > held_seen[-1], "the retry started only once the slot was freed"
    finally:
        deployment.terminate(retry_id)
    assert deployment.wait_for_status(retry_id, ("CANCELED",), 120)["status"] == "CANCELED"
    wait_for(lambda: deployment.pool()["claimed"] == [], 60, "the pool to have no claimed slot", 1)
