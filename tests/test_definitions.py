"""How the code location is assembled from the environment: the executor a run's steps get."""

import dagster as dg
import pytest

from doge_dagster.definitions import executor_from_env


def test_local_runs_execute_one_step_at_a_time_in_the_run_process(monkeypatch):
    monkeypatch.delenv("DOGE_MAX_CONCURRENT_STEPS", raising=False)
    monkeypatch.delenv("DOGE_COMPUTE_BACKEND", raising=False)
    assert executor_from_env() is dg.in_process_executor
    monkeypatch.setenv("DOGE_MAX_CONCURRENT_STEPS", "1")
    assert executor_from_env() is dg.in_process_executor


@pytest.mark.parametrize(("backend", "steps"), [("slurm", None), ("kubernetes", None), ("local", "3")])
def test_cluster_backends_or_a_step_count_run_steps_in_parallel_processes(monkeypatch, backend, steps):
    monkeypatch.setenv("DOGE_COMPUTE_BACKEND", backend)
    if steps is None:
        monkeypatch.delenv("DOGE_MAX_CONCURRENT_STEPS", raising=False)
    else:
        monkeypatch.setenv("DOGE_MAX_CONCURRENT_STEPS", steps)
    executor = executor_from_env()
    assert executor.name == "multiprocess"
    if steps is None:  # Dagster's own: a run's config may still choose its parallelism
        assert executor is dg.multiprocess_executor
    else:
        resolved = executor.config_schema.resolve_config({})
        assert resolved.success, resolved.errors
        assert resolved.value["config"]["max_concurrent"] == int(steps)


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_step_count_names_the_variable_and_the_fix(monkeypatch, value):
    monkeypatch.setenv("DOGE_MAX_CONCURRENT_STEPS", value)
    with pytest.raises(ValueError, match="DOGE_MAX_CONCURRENT_STEPS.*whole number of steps, at least 1"):
        executor_from_env()


def test_definitions_are_built_for_any_recipes_folder_and_chain_in_process(tmp_path):
    import shutil

    from doge_dagster.definitions import build_definitions
    from doge_dagster.recipes import RECIPES_DIR
    from doge_dagster.stages import load_chain

    shutil.copy(RECIPES_DIR / "tiny.yaml", tmp_path / "tiny.yaml")
    shutil.copy(RECIPES_DIR / "tiny.yaml", tmp_path / "other.yaml")
    defs = build_definitions(recipes_dir=tmp_path, chain=load_chain("plugins.second_sft"), retrain_cron="0 5 * * *")
    graph = defs.resolve_asset_graph()
    extra = graph.get(dg.AssetKey("doge_instruct_sft_again"))
    assert extra.partitions_def.get_partition_keys() == ["other", "tiny"]
    assert {key.to_user_string() for key in extra.parent_keys} == {"doge_instruct_sft", "sft_mixture", "tokenizer"}
    assert defs.resolve_schedule_def("retrain_schedule").cron_schedule == "0 5 * * *"
    assert "doge_instruct_sft_again" in {
        key.to_user_string() for key in defs.resolve_job_def("instruct").asset_layer.executable_asset_keys
    }


def test_releases_run_from_their_own_job_and_join_full_pipeline_only_when_turned_on(monkeypatch):
    from doge_dagster.definitions import build_definitions, release_in_full_pipeline_from_env
    from doge_dagster.stages import CHAIN

    releases = {release.asset for release in CHAIN.releases}
    assert releases == {"release_base", "release_instruct", "release_reason"}

    def job_assets(defs: dg.Definitions, job: str) -> set[str]:
        return {key.to_user_string() for key in defs.resolve_job_def(job).asset_layer.executable_asset_keys}

    defs = build_definitions()
    assert job_assets(defs, "release") == releases
    assert not releases & job_assets(defs, "full_pipeline"), "releasing is never part of the pipeline by default"
    assert {"doge_reason", "reason_eval"} <= job_assets(defs, "full_pipeline")
    graph = defs.resolve_asset_graph()
    for asset in releases:  # no automation condition: nothing releases by itself
        assert graph.get(dg.AssetKey(asset)).automation_condition is None
        assert graph.get(dg.AssetKey(asset)).group_name == "release"
    assert releases <= job_assets(build_definitions(release_in_full_pipeline=True), "full_pipeline")

    monkeypatch.delenv("DOGE_RELEASE_IN_FULL_PIPELINE", raising=False)
    assert release_in_full_pipeline_from_env() is False
    monkeypatch.setenv("DOGE_RELEASE_IN_FULL_PIPELINE", "true")
    assert release_in_full_pipeline_from_env() is True
    monkeypatch.setenv("DOGE_RELEASE_IN_FULL_PIPELINE", "sometimes")
    with pytest.raises(ValueError, match="DOGE_RELEASE_IN_FULL_PIPELINE='sometimes': set true or false"):
        release_in_full_pipeline_from_env()
