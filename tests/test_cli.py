"""The command lines the README documents, run as a user runs them (subprocesses, own DAGSTER_HOME).

- `dagster asset materialize -m doge_dagster.definitions --select ... --partition tiny` (quick start, the
  README's CLI block, a single asset on an empty store, and the re-run that reports everything cached);
- `dg check defs`, `dg list defs`;
- `dagster job launch -m doge_dagster.definitions -j data --tags '{"dagster/partition": "tiny"}'`: queues a
  run, which `dagster-daemon run -m doge_dagster.definitions` then starts; `dagster job execute` runs a
  job in the calling process without any daemon;
- `doge-dagster lineage doge_instruct --partition tiny` and `doge-dagster versions --partition tiny`.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from dagster_dev import (
    ARTIFACTS_DIR,
    CHAIN_TEST_TIMEOUT_S,
    DAGSTER,
    DG,
    DOGE_DAGSTER,
    QUICK_START_COMMAND,
    VENV_BIN,
    cli_env,
    code_location_assets,
    instance_runs,
    kill_processes_with_env,
    latest_materializations,
    run_command,
)
from helpers import (
    DATA_ASSETS,
    PROJECT_ROOT,
    cli_materialize_command,
    kill_group,
    planned_version,
    published_versions,
    tail,
)

DEFS = ["-m", "doge_dagster.definitions"]
TAGS_TINY = '{"dagster/partition": "tiny"}'


def artifact_assets() -> list[str]:
    """Every asset of the pipeline with an artifact: tokenizer, mixtures, models, reports (sources and releases,
    which the quick start builds only when enabled, excluded)."""
    location = code_location_assets()
    return [
        key for key in location["materializable"] if not key.startswith("source_") and key not in location["releases"]
    ]


def assert_ok(result: subprocess.CompletedProcess, what: str) -> None:
    assert result.returncode == 0, f"{what} failed (rc {result.returncode}):\n{tail(result.stdout, 80)}"


# -- dagster asset materialize ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S)
def test_quick_start_materializes_every_asset_of_tiny(tiny_chain):
    assert tiny_chain.command == QUICK_START_COMMAND
    assert "RUN_SUCCESS" in tiny_chain.output, tail(tiny_chain.output)
    assets = artifact_assets()
    for asset in assets:
        assert published_versions(tiny_chain.artifact_root, asset), f"{asset} has no published artifact"
    latest = latest_materializations(tiny_chain.env(), assets)
    assert set(latest) == set(assets)
    assert len({entry["run_id"] for entry in latest.values()}) == 1, "one run materializes the whole graph"
    assert not any(entry["cached"] for entry in latest.values()), "a fresh store computes everything"
    print(f"quick start: {tiny_chain.seconds:.0f}s for {len(assets)} assets")


@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S)
def test_quick_start_again_reports_every_asset_cached(tiny_chain, tmp_path):
    env = tiny_chain.env(dagster_home=tiny_chain.copy_home(tmp_path / "home"))
    started = time.monotonic()
    result = run_command(QUICK_START_COMMAND, env, 900, log_path=ARTIFACTS_DIR / "cli-quick-start-again.log")
    seconds = time.monotonic() - started
    assert_ok(result, "the quick start again")
    latest = latest_materializations(env, artifact_assets())
    not_cached = sorted(asset for asset, entry in latest.items() if entry["cached"] is not True)
    assert not not_cached, f"recomputed although nothing changed: {not_cached}"
    print(f"quick start again (all cached): {seconds:.0f}s")


@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S)
def test_readme_cli_block_data_assets_then_one_model(tiny_chain, tmp_path):
    env = tiny_chain.env(dagster_home=tiny_chain.copy_home(tmp_path / "home"))
    data = run_command(
        cli_materialize_command(",".join(DATA_ASSETS)), env, 600, log_path=ARTIFACTS_DIR / "cli-data-assets.log"
    )
    assert_ok(data, "the README's data-assets command")
    model = run_command(cli_materialize_command("doge_base"), env, 600, log_path=ARTIFACTS_DIR / "cli-doge-base.log")
    assert_ok(model, "the README's one-model command")
    latest = latest_materializations(env, [*DATA_ASSETS, "doge_base"])
    assert all(entry["cached"] is True for entry in latest.values()), latest


@pytest.mark.slow
def test_materialize_the_tokenizer_on_an_empty_store(tmp_path):
    env = cli_env(tmp_path / "home", tmp_path / "artifacts")
    result = run_command(cli_materialize_command("tokenizer"), env, 600, log_path=ARTIFACTS_DIR / "cli-tokenizer.log")
    assert_ok(result, "`dagster asset materialize --select tokenizer --partition tiny`")
    assert len(published_versions(tmp_path / "artifacts", "tokenizer")) == 1
    entry = latest_materializations(env, ["tokenizer"])["tokenizer"]
    assert entry["cached"] is False and re.fullmatch(r"[0-9a-f]{16}", entry["version"]), entry
    assert entry["metadata"]["vocab_size"] > 100, entry["metadata"]


# -- dg --------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_dg_check_defs(tmp_path):
    result = run_command([DG, "check", "defs"], cli_env(tmp_path / "home", tmp_path / "artifacts"), 300)
    assert_ok(result, "`dg check defs`")
    assert "All definitions loaded successfully" in result.stdout, result.stdout


def test_readme_schedule_commands_start_the_retrain_schedule(tmp_path):
    env = cli_env(
        tmp_path / "home", tmp_path / "artifacts", DOGE_RETRAIN_CRON="0 3 * * 0", DOGE_RETRAIN_PARTITIONS="tiny"
    )
    assert_ok(
        run_command([DAGSTER, "schedule", "start", "retrain_schedule", *DEFS], env, 300), "`dagster schedule start`"
    )
    listed = run_command([DAGSTER, "schedule", "list", *DEFS], env, 300)
    assert_ok(listed, "`dagster schedule list`")
    assert "retrain_schedule [RUNNING]" in listed.stdout and "0 3 * * 0" in listed.stdout, listed.stdout


def test_readme_sensor_command_starts_the_evaluation_automation(tmp_path):
    env = cli_env(tmp_path / "home", tmp_path / "artifacts")
    before = run_command([DAGSTER, "sensor", "list", *DEFS], env, 300)
    assert_ok(before, "`dagster sensor list`")
    assert "evaluate_new_models [STOPPED]" in before.stdout, before.stdout
    started = run_command([DAGSTER, "sensor", "start", "evaluate_new_models", *DEFS], env, 300)
    assert_ok(started, "`dagster sensor start evaluate_new_models`")
    after = run_command([DAGSTER, "sensor", "list", *DEFS], env, 300)
    assert "evaluate_new_models [RUNNING]" in after.stdout, after.stdout


@pytest.mark.slow
def test_dg_list_defs_lists_every_asset_job_schedule_and_sensor(tmp_path):
    result = run_command([DG, "list", "defs"], cli_env(tmp_path / "home", tmp_path / "artifacts"), 300)
    assert_ok(result, "`dg list defs`")
    listed = set(re.findall(r"[A-Za-z0-9_]+", result.stdout))
    missing = [key for key in code_location_assets()["all"] if key not in listed]
    assert not missing, f"`dg list defs` does not list {missing}:\n{result.stdout[-4000:]}"
    for name in (
        "full_pipeline",
        "data",
        "pretrain",
        "instruct",
        "reason",
        "retrain_schedule",
        "source_data_sensor",
        "run_failure_summary",
        "evaluate_new_models",
    ):
        assert name in listed, f"{name} not listed"


# -- dagster job launch / execute --------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S)
def test_job_launch_queues_a_run_that_the_daemon_starts(tiny_chain, tmp_path):
    # A home of its own (so only this run is in it) on the chain's store (so the data job is all cached).
    env = tiny_chain.env(dagster_home=tmp_path / "home")
    launch = run_command(
        [DAGSTER, "job", "launch", *DEFS, "-j", "data", "--tags", TAGS_TINY],
        env,
        300,
        log_path=ARTIFACTS_DIR / "cli-job-launch.log",
    )
    assert_ok(launch, "`dagster job launch`")
    (queued,) = instance_runs(env)
    assert queued["job"] == "data" and queued["tags"]["dagster/partition"] == "tiny"
    assert queued["status"] == "QUEUED", "without a daemon the run waits in the queue"

    log = (ARTIFACTS_DIR / "cli-dagster-daemon.log").open("w")
    daemon = subprocess.Popen(
        [str(VENV_BIN / "dagster-daemon"), "run", *DEFS],
        cwd=PROJECT_ROOT, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 420
        status = queued["status"]
        while time.monotonic() < deadline and status not in ("SUCCESS", "FAILURE", "CANCELED"):
            time.sleep(3)
            status = next(run for run in instance_runs(env) if run["run_id"] == queued["run_id"])["status"]
            assert daemon.poll() is None, (
                f"dagster-daemon exited: {(ARTIFACTS_DIR / 'cli-dagster-daemon.log').read_text()[-3000:]}"
            )
    finally:
        kill_group(daemon.pid)
        kill_processes_with_env(f"DAGSTER_HOME={tmp_path / 'home'}")
        log.close()
    assert status == "SUCCESS", (
        f"the queued run ended {status}\n{(ARTIFACTS_DIR / 'cli-dagster-daemon.log').read_text()[-3000:]}"
    )
    latest = latest_materializations(env, DATA_ASSETS)
    assert {entry["run_id"] for entry in latest.values()} == {queued["run_id"]}
    assert all(entry["cached"] is True for entry in latest.values())


@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S)
def test_job_execute_runs_the_data_job_without_a_daemon(tiny_chain, tmp_path):
    env = tiny_chain.env(dagster_home=tmp_path / "home")
    result = run_command(
        [DAGSTER, "job", "execute", *DEFS, "-j", "data", "--tags", TAGS_TINY],
        env,
        600,
        log_path=ARTIFACTS_DIR / "cli-job-execute.log",
    )
    assert_ok(result, "`dagster job execute`")
    (run,) = instance_runs(env)
    assert run["status"] == "SUCCESS" and run["tags"]["dagster/partition"] == "tiny"
    assert set(latest_materializations(env, DATA_ASSETS)) == set(DATA_ASSETS)


# -- doge-dagster ------------------------------------------------------------------------------------------------------
def lineage(env, *args: str) -> str:
    result = run_command([DOGE_DAGSTER, *args], env, 120)
    assert_ok(result, f"`doge-dagster {' '.join(args)}`")
    return result.stdout


LINEAGE_CHAIN = [
    "tokenizer",
    "pretrain_mixture",
    "doge_base",
    "sft_mixture",
    "doge_instruct_sft",
    "dpo_mixture",
    "doge_instruct",
]


def node_lines(output: str) -> dict[str, str]:
    return {line.split()[0]: line for line in output.splitlines() if line.strip()}


def test_lineage_on_an_empty_store_lists_sources_and_missing_nodes(tmp_path):
    output = lineage(cli_env(tmp_path / "home", tmp_path / "empty"), "lineage", "doge_instruct", "--partition", "tiny")
    lines = node_lines(output)
    sources = [name for name in lines if name.startswith("source_")]
    # the tokenizer is trained on every source of the recipe, so all eight are ancestors of doge_instruct
    assert set(sources) == set(code_location_assets()["sources"]) and len(sources) == 8, output
    for name in sources:
        assert re.fullmatch(r"source_\w+\s+[0-9a-f]{16}", lines[name].strip()), lines[name]
    assert set(lines) == set(sources) | set(LINEAGE_CHAIN), output
    for node in LINEAGE_CHAIN:
        assert planned_version(node) in lines[node] and "[missing]" in lines[node], lines[node]
    assert not any(name in lines for name in ("doge_reason", "distill_mixture")), "only the ancestry of doge_instruct"


@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S)
def test_lineage_and_versions_on_the_materialized_chain_say_published(tiny_chain):
    env = tiny_chain.env()
    lines = node_lines(lineage(env, "lineage", "doge_instruct", "--partition", "tiny"))
    for node in LINEAGE_CHAIN:
        assert planned_version(node) in lines[node] and "[published " in lines[node], lines[node]
    versions = node_lines(lineage(env, "versions", "--partition", "tiny"))
    assert set(LINEAGE_CHAIN) < set(versions)
    releases = code_location_assets()["releases"]  # planned as well; built only when enabled (release_base is off)
    assert set(releases) < set(versions)
    for node, line in versions.items():
        assert planned_version(node) in line, line
        assert node in releases or "[published " in line, line
    # The recorded lineage of the published model, read back from the manifests, is the same chain.
    recorded = node_lines(
        lineage(env, "lineage", "doge_instruct", "--partition", "tiny", "--version", planned_version("doge_instruct"))
    )
    assert set(recorded) == set(lines), recorded
    for node in LINEAGE_CHAIN:
        assert recorded[node].split()[1] == planned_version(node) and "[published " in recorded[node], recorded[node]
    for name in (name for name in lines if name.startswith("source_")):
        assert recorded[name].split()[1] == lines[name].split()[1], (recorded[name], lines[name])


def test_recorded_lineage_of_an_unpublished_version_says_how_to_find_one(tmp_path):
    result = run_command(
        [DOGE_DAGSTER, "lineage", "doge_base", "--partition", "tiny", "--version", "0123456789abcdef"],
        cli_env(tmp_path / "home", tmp_path / "empty"), 120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "doge_base[tiny] has no published version 0123456789abcdef" in result.stdout
    assert "doge-dagster versions --partition tiny" in result.stdout
