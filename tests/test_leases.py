"""One writer per artifact: the lease on `{asset}/{partition}/{version}` (`doge_dagster/leases.py`).

- On a local store and on S3 (moto): the lease is exclusive and names its holder; a second acquirer waits and
  gets it once it is released; refreshing keeps a lease alive past its TTL; the lease of a holder SIGKILLed in
  another process expires and is taken over; of two takers that both read the same stale lease, only the first
  replaces it; releasing a lease that is no longer ours leaves the other holder's alone.
- Local store: several processes racing for the same free or stale lease: exactly one wins each round.
- Any other fsspec store (memory://), and an S3 endpoint that answers 501 to conditional writes (logged): the
  weaker write, read back and compare method still excludes a second acquirer that comes later.
- Through Dagster (the tokenizer, in process): a run finding the artifact being built waits, then reports the
  other run's artifact cached; a run whose writer died takes the lease over and builds; `doge/wait-for-writer`
  = `false` fails at once naming the holder and the fix.
- End to end (slow): two CLI materializations of `doge_base[tiny]` started together train it once; the other
  waits and reports it cached; one valid version is published and no lease is left.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster_dev import CHAIN_TEST_TIMEOUT_S, CHAIN_TIMEOUT_S, cli_env, latest_materializations
from helpers import (
    PROJECT_ROOT,
    _short_stage,
    cli_materialize_command,
    copy_artifacts,
    kill_group,
    planned_version,
    published_versions,
    read_manifest,
    run_command,
    tail,
    wait_for,
    write_tiny_recipe,
)
from moto_s3 import BUCKET, store_options

from assets.data import build_tokenizer_asset
from doge_dagster.artifacts import MANIFEST_NAME, ArtifactStore, hash_file
from doge_dagster.leases import (
    POLL_ENV,
    REFRESH_ENV,
    TTL_ENV,
    WAIT_FOR_WRITER_TAG,
    Lease,
    LeaseHeldError,
    LeaseRecord,
    hold_lease,
)
from doge_dagster.recipes import RECIPES_DIR, RecipeFolder
from resources.artifact_store import ArtifactStoreResource

# Short lease times for the unit tests: refreshed ten times per TTL, so a loaded machine does not expire a live one.
TTL_S = 4.0
REFRESH_S = 0.4
POLL_S = 0.05
SHORT = {"ttl_s": TTL_S, "refresh_s": REFRESH_S, "poll_s": POLL_S}
TIMEOUT_S = 60  # waits that should take a few seconds; only a hang reaches it


# -- stores ---------------------------------------------------------------------------------------------------------
@pytest.fixture(params=["local", "s3"])
def store_spec(request, tmp_path) -> tuple[str, dict]:
    """(root, storage options) of a fresh store: a local folder, or a prefix of the moto bucket."""
    if request.param == "local":
        return str(tmp_path / "store"), {}
    url, _ = request.getfixturevalue("s3_server")
    return f"s3://{BUCKET}/{request.node.name}", store_options(url)


@pytest.fixture
def store(store_spec, tmp_path) -> ArtifactStore:
    """An `ArtifactStore` on the parametrized root."""
    root, options = store_spec
    return ArtifactStore(root, options, cache_dir=str(tmp_path / "cache"))


def lease_record(store: ArtifactStore, asset: str = "model", version: str = "v1") -> dict | None:
    """The lease file as stored (None if there is none)."""
    try:
        return json.loads(store.fs.cat_file(store.lease_path(asset, "tiny", version)))
    except FileNotFoundError:
        return None


def write_record(store: ArtifactStore, record: LeaseRecord) -> None:
    """Put a lease file in place by hand, as another (possibly long dead) holder left it."""
    path = store.lease_path(record.asset, record.partition, record.version)
    if store.is_local:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    store.fs.pipe_file(path, record.to_bytes())


def dead_record(version: str = "v1", token: str = "dead-holder", age_s: float = 3600) -> LeaseRecord:
    """A lease last refreshed `age_s` ago by a process that no longer exists."""
    then = time.time() - age_s
    return LeaseRecord("model", "tiny", version, "gone-host", 999999, token, "dead-run", then, then)


# -- a holder in another process ------------------------------------------------------------------------------------
HOLDER = """
import json, sys, time
from doge_dagster.artifacts import ArtifactStore
from doge_dagster.leases import Lease
root, options, asset, version, ttl, refresh = sys.argv[1:7]
lease = Lease(ArtifactStore(root, json.loads(options)), asset, "tiny", version, run_id="doomed-run",
              ttl_s=float(ttl), refresh_s=float(refresh))
lease.acquire(wait=False)
print("held", lease.token, flush=True)
time.sleep(3600)
"""


def start_holder(
    store_spec: tuple[str, dict], asset: str = "model", version: str = "v1"
) -> tuple[subprocess.Popen, str]:
    """A child process holding the lease (refreshed); returns it and its token once it holds it."""
    root, options = store_spec
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, root, json.dumps(options), asset, version, str(TTL_S), str(REFRESH_S)],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    line = child.stdout.readline()
    if not line.startswith("held "):
        kill_group(child.pid)
        raise AssertionError(f"the holder did not take the lease: {line}{child.stdout.read()}")
    return child, line.split()[1]


# -- the lease on local and S3 stores -------------------------------------------------------------------------------
def test_the_lease_is_exclusive_and_names_its_holder(store):
    """A held lease refuses a second acquirer, and its file names the holder: host, pid, token, run id, times."""
    first = Lease(store, "model", "tiny", "v1", run_id="run-one", **SHORT)
    second = Lease(store, "model", "tiny", "v1", run_id="run-two", **SHORT)
    first.acquire(wait=False)
    try:
        recorded = lease_record(store)
        assert recorded["token"] == first.token and recorded["run_id"] == "run-one"
        assert recorded["pid"] == os.getpid() and recorded["host"] and recorded["acquired"] <= recorded["refreshed"]
        holder = second.try_acquire()
        assert holder is not None and holder.token == first.token and not second.held
        with pytest.raises(LeaseHeldError) as held:
            second.acquire(wait=False)
        message = str(held.value)
        assert "model[tiny] version v1" in message and "run run-one" in message and f"pid {os.getpid()}" in message
        assert held.value.location == first.location and first.location.endswith("model/tiny/.leases/v1.json")
        assert lease_record(store)["token"] == first.token
    finally:
        first.release()
    assert lease_record(store) is None
    assert store.manifests("model", "tiny") == []  # the .leases folder is never read as an artifact


def test_a_second_acquirer_waits_and_gets_the_lease_once_it_is_released(store):
    """A waiting acquirer is told who holds the lease (once), keeps polling, and holds it right after the release."""
    first = Lease(store, "model", "tiny", "v1", run_id="run-one", **SHORT)
    first.acquire()
    seen: list[LeaseRecord] = []
    second = Lease(store, "model", "tiny", "v1", run_id="run-two", **SHORT)
    waiter = threading.Thread(target=second.acquire, kwargs={"on_wait": seen.append}, daemon=True)
    waiter.start()
    wait_for(lambda: seen, TIMEOUT_S, "the second acquirer to start waiting")
    time.sleep(5 * POLL_S)  # several polls while the first holds it
    assert not second.held and [holder.run_id for holder in seen] == ["run-one"]
    first.release()
    waiter.join(TIMEOUT_S)
    assert not waiter.is_alive() and second.held
    assert second.waited_for == seen and second.took_over is None
    assert lease_record(store)["token"] == second.token
    second.release()
    assert lease_record(store) is None


def test_hold_lease_releases_when_the_block_raises(store):
    """A failed build releases its lease: the next run need not wait for the TTL."""
    with (
        pytest.raises(RuntimeError, match="build failed"),
        hold_lease(store, "model", "tiny", "v1", run_id="run-one", **SHORT) as lease,
    ):
        assert lease.held and lease_record(store)["token"] == lease.token
        raise RuntimeError("build failed")
    assert lease_record(store) is None


def test_refreshing_keeps_a_live_lease_past_its_ttl(store):
    """A holder that lives longer than the TTL keeps its lease, refreshed by its thread."""
    with hold_lease(store, "model", "tiny", "v1", **SHORT) as lease:
        time.sleep(2 * TTL_S)  # twice the TTL: only refreshing keeps it
        other = Lease(store, "model", "tiny", "v1", **SHORT)
        holder = other.try_acquire()
        assert holder is not None and holder.token == lease.token, "a refreshed lease was taken over"
        assert holder.refreshed > holder.acquired and not holder.is_stale(TTL_S)
        assert not lease.lost


def test_the_lease_of_a_killed_holder_expires_and_is_taken_over(store, store_spec):
    """A holder SIGKILLed in another process stops refreshing; a waiter takes the lease over once it is stale."""
    child, token = start_holder(store_spec)
    try:
        taker = Lease(store, "model", "tiny", "v1", run_id="taker", **SHORT)
        holder = taker.try_acquire()
        assert holder is not None and holder.token == token and holder.pid == child.pid, "the live holder lost it"
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(TIMEOUT_S)
        logged: list[str] = []
        taker.log = logged.append
        taker.acquire(timeout_s=TIMEOUT_S)
    finally:
        kill_group(child.pid)
        child.stdout.close()
    try:
        assert taker.held and taker.took_over.token == token and taker.took_over.run_id == "doomed-run"
        assert any("took over the stale lease" in line and f"pid {child.pid}" in line for line in logged), logged
        assert lease_record(store)["token"] == taker.token
    finally:
        taker.release()
    assert lease_record(store) is None


def test_of_two_takers_of_one_stale_lease_only_the_first_replaces_it(store):
    """Both read the stale lease before either replaces it (the interleaving a race can produce)."""
    write_record(store, dead_record())
    first = Lease(store, "model", "tiny", "v1", run_id="first", **SHORT)
    second = Lease(store, "model", "tiny", "v1", run_id="second", **SHORT)
    seen_by_second = second._backend.read()
    assert seen_by_second.record.token == "dead-holder"
    assert first.try_acquire() is None and first.took_over.token == "dead-holder"
    try:
        real_read = second._backend.read
        reads = iter([seen_by_second])
        second._backend.read = lambda: next(reads, None) or real_read()  # its first read is the stale one
        holder = second.try_acquire()
        assert holder is not None and holder.token == first.token and not second.held
        assert lease_record(store)["token"] == first.token
    finally:
        first.release()


def test_releasing_a_lease_that_is_no_longer_ours_leaves_it_alone(store):
    """A lease taken over by another run is reported lost, and releasing it deletes nothing of the new holder's."""
    logged: list[str] = []
    # Refreshed every 20 s, so not during this test: the refresh below is the refresher's, made when the test says.
    lease = Lease(store, "model", "tiny", "v1", log=logged.append, ttl_s=60, refresh_s=20)
    never_acquired = Lease(store, "model", "tiny", "v1", **SHORT)
    lease.acquire()
    never_acquired.release()
    assert lease_record(store)["token"] == lease.token
    # A run with a TTL of 0.25 s takes it for dead and takes it over, through the same atomic replace as any
    # takeover, as another run would once this one stopped refreshing for 90 s.
    impatient = Lease(store, "model", "tiny", "v1", run_id="impatient-run", ttl_s=0.25, refresh_s=0.05, poll_s=0.01)
    impatient.acquire(timeout_s=TIMEOUT_S)
    try:
        assert impatient.took_over.token == lease.token
        assert lease.refresh() is False and lease.lost and not lease.held
        assert any("lost the lease" in line and "impatient-run" in line for line in logged), logged
        lease.release()
        assert lease_record(store)["token"] == impatient.token
    finally:
        impatient.release()
    assert lease_record(store) is None


# -- processes racing (local store) ------------------------------------------------------------------------------------
RACER = """
import json, sys, time
from doge_dagster.artifacts import ArtifactStore
from doge_dagster.leases import Lease
root, start_at, rounds, gap = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
store = ArtifactStore(root)
results, leases = [], []
for index in range(rounds):
    while time.time() < start_at + index * gap:
        time.sleep(0.0005)
    lease = Lease(store, "model", "tiny", f"v{index}", ttl_s=60, refresh_s=20)
    holder = lease.try_acquire()
    results.append({"round": index, "won": holder is None, "token": lease.token, "holder": holder and holder.token})
    leases.append(lease)
print(json.dumps(results), flush=True)
"""


def test_processes_racing_for_a_free_or_stale_lease_exactly_one_wins(tmp_path):
    """Rounds alternate a free lease and a stale one; several processes try each round at the same instant."""
    store = ArtifactStore(str(tmp_path / "store"))
    rounds, racers, gap = 8, 3, 0.5
    for index in range(0, rounds, 2):
        write_record(store, dead_record(f"v{index}"))
    start_at = time.time() + 8  # time for the interpreters to start on a busy machine
    command = [sys.executable, "-c", RACER, str(tmp_path / "store"), str(start_at), str(rounds), str(gap)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "start_new_session": True}
    processes = [subprocess.Popen(command, cwd=PROJECT_ROOT, **pipes) for _ in range(racers)]
    try:
        outputs = [process.communicate(timeout=120) for process in processes]
    finally:
        for process in processes:
            kill_group(process.pid)
    assert all(process.returncode == 0 for process in processes), [error for _, error in outputs]
    results = [json.loads(stdout) for stdout, _ in outputs]
    for index in range(rounds):
        entries = [result[index] for result in results]
        winners = [entry["token"] for entry in entries if entry["won"]]
        assert len(winners) == 1, f"round {index}: {entries}"
        assert lease_record(store, version=f"v{index}")["token"] == winners[0]
        assert all(entry["holder"] == winners[0] for entry in entries if not entry["won"]), entries


# -- a store without conditional writes --------------------------------------------------------------------------------
def test_a_store_without_conditional_writes_falls_back_to_write_and_compare(request):
    """On a store without conditional writes (memory://), a later second acquirer is still refused."""
    store = ArtifactStore(f"memory://leases-{request.node.name}")
    first = Lease(store, "model", "tiny", "v1", settle_s=0.01, **SHORT)
    second = Lease(store, "model", "tiny", "v1", settle_s=0.01, **SHORT)
    first.acquire(wait=False)
    assert first.location.startswith("memory://") and first.location.endswith("/model/tiny/.leases/v1.json")
    with pytest.raises(LeaseHeldError):
        second.acquire(wait=False)
    first.release()
    second.acquire(wait=False)
    assert lease_record(store)["token"] == second.token
    second.release()
    assert lease_record(store) is None


def test_an_s3_endpoint_without_conditional_writes_falls_back_and_says_so(s3_server, request, tmp_path, monkeypatch):
    """An S3 endpoint answering 501 to If-None-Match / If-Match: the lease falls back, logs it, and still works."""
    from botocore.exceptions import ClientError

    url, _ = s3_server
    store = ArtifactStore(f"s3://{BUCKET}/{request.node.name}", store_options(url), cache_dir=str(tmp_path / "cache"))
    plain_call = store.fs.call_s3

    def without_conditions(method, *args, **kwargs):  # as an endpoint answering 501 to If-None-Match / If-Match
        if "IfNoneMatch" in kwargs or "IfMatch" in kwargs:
            error = {"Code": "NotImplemented", "Message": "A header you provided implies functionality not implemented"}
            raise ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": 501}}, method)
        return plain_call(method, *args, **kwargs)

    monkeypatch.setattr(store.fs, "call_s3", without_conditions)
    logged: list[str] = []
    first = Lease(store, "model", "tiny", "v1", settle_s=0.05, log=logged.append, **SHORT)
    second = Lease(store, "model", "tiny", "v1", settle_s=0.05, **SHORT)
    first.acquire(wait=False)
    assert any("does not support conditional writes" in line for line in logged), logged
    assert lease_record(store)["token"] == first.token
    with pytest.raises(LeaseHeldError):
        second.acquire(wait=False)
    first.release()
    assert lease_record(store) is None
    second.acquire(wait=False)
    second.release()


def test_lease_times_come_from_arguments_then_the_environment(monkeypatch, tmp_path):
    """90 / 30 / 5 s by default, DOGE_LEASE_* variables over those, arguments over both; nonsense is refused."""
    store = ArtifactStore(str(tmp_path))
    for name in (TTL_ENV, REFRESH_ENV, POLL_ENV):
        monkeypatch.delenv(name, raising=False)
    lease = Lease(store, "model", "tiny", "v1")
    assert (lease.ttl_s, lease.refresh_s, lease.poll_s) == (90, 30, 5)
    monkeypatch.setenv(TTL_ENV, "6")
    monkeypatch.setenv(REFRESH_ENV, "0.5")
    monkeypatch.setenv(POLL_ENV, "0.1")
    lease = Lease(store, "m", "tiny", "v1")
    assert (lease.ttl_s, lease.refresh_s, lease.poll_s) == (6, 0.5, 0.1)
    assert Lease(store, "m", "tiny", "v1", ttl_s=20, refresh_s=2).ttl_s == 20
    monkeypatch.setenv(REFRESH_ENV, "6")
    with pytest.raises(ValueError, match=f"{REFRESH_ENV} / {TTL_ENV}"):
        Lease(store, "m", "tiny", "v1")
    monkeypatch.setenv(TTL_ENV, "soon")
    with pytest.raises(ValueError, match=TTL_ENV):
        Lease(store, "m", "tiny", "v1")


# -- through Dagster: the tokenizer, in process ------------------------------------------------------------------------
TOKENIZER = build_tokenizer_asset(RecipeFolder(RECIPES_DIR))


def materialize_tokenizer(root: Path, instance: dg.DagsterInstance | None = None, tags: dict | None = None):
    """Materialize tiny's tokenizer in this process into the store at `root`; returns the result and the run's log
    (every event's message, the asset's own log lines included)."""
    instance = instance or dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [TOKENIZER],
        partition_key="tiny",
        resources={"artifact_store": ArtifactStoreResource(root=str(root))},
        instance=instance,
        tags=tags,
        raise_on_error=False,
    )
    return result, "\n".join(entry.user_message or "" for entry in instance.all_logs(result.run_id))


def materialization(result) -> dict:
    """The tokenizer's materialization metadata."""
    (event,) = result.get_asset_materialization_events()
    return {key: value.value for key, value in event.materialization.metadata.items()}


@pytest.fixture
def lease_env(monkeypatch):
    """Short lease times for the runs of this process (they read the environment)."""
    monkeypatch.setenv(TTL_ENV, str(TTL_S))
    monkeypatch.setenv(REFRESH_ENV, str(REFRESH_S))
    monkeypatch.setenv(POLL_ENV, str(POLL_S))


def test_wait_for_writer_false_fails_at_once_naming_the_holder_and_the_fix(tmp_path, lease_env):
    """With the tag, a run that finds the lease held fails at once, naming what, who and the fix; nothing is built."""
    root = tmp_path / "store"
    store = ArtifactStore(str(root))
    version = planned_version("tokenizer")
    with hold_lease(store, "tokenizer", "tiny", version, run_id="the-other-run") as lease:
        result, _ = materialize_tokenizer(root, tags={WAIT_FOR_WRITER_TAG: "false"})
        assert not result.success
        failures = [event.step_failure_data for event in result.all_events if event.is_step_failure]
        description = failures[0].user_failure_data.description
        for needle in (
            f"tokenizer[tiny] version {version}",
            f"host {os.uname().nodename}",
            f"pid {os.getpid()}",
            "run the-other-run",
            f"{WAIT_FOR_WRITER_TAG}=false",
            "once that run is done",
            f"delete its lease file {lease.location}",
        ):
            assert needle in description, f"{needle!r} not in: {description}"
        assert lease.held and lease_record(store, "tokenizer", version)["token"] == lease.token
    assert published_versions(root, "tokenizer") == []


def test_a_run_waits_for_the_writer_then_reports_its_artifact_cached(tmp_path, lease_env):
    """A run that finds the lease held logs the holder, waits, and reports the artifact the holder published cached."""
    root = tmp_path / "store"
    store = ArtifactStore(str(root))
    version = planned_version("tokenizer")
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_tokenizer(tmp_path / "elsewhere")[0].success
    built_store = ArtifactStore(str(tmp_path / "elsewhere"))
    built = built_store.require("tokenizer", "tiny", version)
    built_folder = built_store.local_path(built)

    def logged_waiting() -> bool:
        runs = instance.get_runs()
        return bool(runs) and any(
            "another run is building it" in (entry.user_message or "") for entry in instance.all_logs(runs[0].run_id)
        )

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with hold_lease(store, "tokenizer", "tiny", version, run_id="the-writer") as lease:
            waiting = pool.submit(materialize_tokenizer, root, instance)
            wait_for(logged_waiting, TIMEOUT_S, "the run to log that it waits for the writer")
            assert not waiting.done()
            # The writer publishes its artifact (one built elsewhere beforehand, files and checks), then releases.
            staged = store.staging_dir("tokenizer", "tiny", version)
            shutil.copytree(built_folder, staged, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MANIFEST_NAME))
            published = store.publish("tokenizer", "tiny", version, staged, built.upstream, built.metadata)
            assert lease.held
        result, log = waiting.result(TIMEOUT_S)
    assert result.success, log
    assert materialization(result)["cached"] is True
    assert store.read_manifest("tokenizer", "tiny", version) == published
    assert f"(host {os.uname().nodename}, pid {os.getpid()}, run the-writer, since " in log, log
    assert "the other run published it" in log and "reporting it cached" in log
    assert lease_record(store, "tokenizer", version) is None


def test_a_run_whose_writer_died_takes_the_lease_over_and_builds(tmp_path, lease_env):
    """A run whose writer was SIGKILLed on this host takes its lease over at once (the holder's pid is gone: no
    wait for the TTL), finds no artifact and builds it."""
    root = tmp_path / "store"
    store = ArtifactStore(str(root))
    version = planned_version("tokenizer")
    child, _ = start_holder((str(root), {}), "tokenizer", version)
    try:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(TIMEOUT_S)
        result, log = materialize_tokenizer(root)
    finally:
        kill_group(child.pid)
        child.stdout.close()
    assert result.success, log
    assert materialization(result)["cached"] is False
    assert f"pid {child.pid}, run doomed-run" in log and "took over the stale lease" in log, log
    assert "waiting until it is done" not in log, "a dead holder on this host is not waited for"
    assert published_versions(root, "tokenizer") == [version]
    assert lease_record(store, "tokenizer", version) is None


# -- end to end: two CLI runs of the same model ------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S + int(CHAIN_TIMEOUT_S))  # the chain may be built first
def test_two_cli_runs_of_one_model_train_it_once(tiny_chain, tmp_path):
    """Both runs start together, on a pretraining shortened to 120 steps (the race for the lease is under test, not
    the learning; the runs still overlap by the ~20 s it takes to launch accelerate and train). The whole shipped
    pretraining took 29 minutes here with other test sessions loading the 2 cores (load average 7), so each run
    keeps the chain's timeout."""
    root = tmp_path / "artifacts"
    copy_artifacts(tiny_chain.artifact_root, root)  # the tokenizer and mixtures: doge_base is missing
    short = _short_stage("pretrain", 120, warmup_steps=10, lr_scheduler_kwargs={"num_decay_steps": 10,
                                                                              "min_lr_ratio": 0.0})  # fmt: skip
    recipes = write_tiny_recipe(tmp_path / "recipes", short)
    version = planned_version("doge_base", short)
    assert published_versions(root, "doge_base") == []
    envs = [cli_env(tmp_path / f"home-{index}", root, recipes, **{POLL_ENV: "1"}) for index in range(2)]
    command = cli_materialize_command("doge_base")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = [
            pool.submit(run_command, command, env, CHAIN_TIMEOUT_S, log_path=tmp_path / f"run-{index}.log")
            for index, env in enumerate(envs)
        ]
        outputs = [run.result().stdout for run in runs]
    for index, run in enumerate(runs):
        assert run.result().returncode == 0, f"run {index} failed:\n{tail(outputs[index])}"

    launched = [
        index for index, output in enumerate(outputs) if f"doge_base[tiny] version {version}: launching" in output
    ]
    assert len(launched) == 1, f"launches: {launched}\n{tail(outputs[0])}\n{tail(outputs[1])}"
    trainer, waiter = launched[0], 1 - launched[0]
    found = [latest_materializations(env, ["doge_base"])["doge_base"] for env in envs]
    assert [entry["version"] for entry in found] == [version, version]
    assert found[trainer]["cached"] is False and found[waiter]["cached"] is True, found
    waited = outputs[waiter]
    assert "another run is building it" in waited and f"run {found[trainer]['run_id']}" in waited, tail(waited)
    assert "the other run published it" in waited and "complete artifact found, reporting it cached" in waited
    assert "another run is building it" not in outputs[trainer]

    assert published_versions(root, "doge_base") == [version]
    manifest = read_manifest(root, "doge_base", version)
    folder = root / "doge_base" / "tiny" / version
    assert manifest["files"] and {
        path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()
    } == {entry["path"] for entry in manifest["files"]} | {MANIFEST_NAME}
    for entry in manifest["files"]:
        assert (folder / entry["path"]).stat().st_size == entry["size"]
        assert hash_file(folder / entry["path"]) == entry["sha256"], entry["path"]
    leases = root / "doge_base" / "tiny" / ".leases"
    assert not list(leases.glob("*.json")), list(leases.iterdir())
