"""The retraining schedule, the source-data sensor and the run-failure summary.

In process with Dagster's testing helpers (`build_schedule_context`, `build_sensor_context`,
`build_run_status_sensor_context`, `materialize`), plus one real scheduled tick through the daemon of a
`dagster dev` whose cron fires every minute.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster_dev import start_dagster_dev
from helpers import tiny_raw

from doge_dagster.artifacts import ArtifactStore
from doge_dagster.definitions import build_definitions
from doge_dagster.recipes import OVERRIDE_TAG_PREFIX, RECIPES_DIR, RecipeFolder, overrides_from_tags
from doge_dagster.stages import CHAIN
from jobs import automation
from resources.artifact_store import ArtifactStoreResource

INIT_FROM_TAG = f"{OVERRIDE_TAG_PREFIX}stages.pretrain.init_from"


def publish_fake(store: ArtifactStore, asset: str, partition: str, version: str) -> None:
    """A complete (manifest-carrying) artifact without real content: enough for `store.latest`."""
    with store.writing(asset, partition, version) as staged:
        (staged.path / "README.md").write_text(f"fake {asset} {version}\n")
    time.sleep(0.01)  # manifests are ordered by creation time


# -- the retrain schedule ----------------------------------------------------------------------------------------
def test_retrain_schedule_continues_from_the_newest_base_and_skips_partitions_it_cannot_plan(tmp_path):
    store = ArtifactStore(str(tmp_path))
    publish_fake(store, "doge_base", "tiny", "aaaaaaaaaaaaaaaa")
    publish_fake(store, "doge_base", "tiny", "bbbbbbbbbbbbbbbb")  # the newest: the one to continue from
    publish_fake(store, "doge_base", "60M", "cccccccccccccccc")
    schedule = build_definitions(retrain_partitions=["tiny", "20M", "60M"]).resolve_schedule_def("retrain_schedule")

    context = dg.build_schedule_context(resources={"artifact_store": ArtifactStoreResource(root=str(tmp_path))})
    requests = list(schedule(context))

    # The real recipes read unpinned Hub datasets: offline, their versions (and so what changed) are unknown,
    # and the tick says so instead of launching a multi-day run on a guess.
    assert [request.partition_key for request in requests] == ["tiny"]
    assert requests[0].tags == {INIT_FROM_TAG: "doge_base:bbbbbbbbbbbbbbbb"}
    assert overrides_from_tags(requests[0].tags) == {"stages.pretrain.init_from": "doge_base:bbbbbbbbbbbbbbbb"}
    _, skipped = automation.retrain_requests(
        ArtifactStoreResource(root=str(tmp_path)), RecipeFolder(RECIPES_DIR), ["20M"]
    )
    assert skipped and "20M: cannot plan the retraining now" in skipped[0] and "pin `revision`" in skipped[0]
    assert schedule.job_name == "full_pipeline"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert schedule.cron_schedule == automation.DEFAULT_RETRAIN_CRON


def test_retrain_schedule_without_a_published_base_sets_no_override(tmp_path):
    context = dg.build_schedule_context(resources={"artifact_store": ArtifactStoreResource(root=str(tmp_path))})
    requests = list(build_definitions().resolve_schedule_def("retrain_schedule")(context))
    assert [request.partition_key for request in requests] == list(automation.DEFAULT_RETRAIN_PARTITIONS)
    assert all(not overrides_from_tags(request.tags) for request in requests)


def test_the_init_from_override_the_schedule_sets_is_a_valid_recipe_override():
    from doge_dagster.recipes import apply_overrides, load_recipe

    recipe = apply_overrides(load_recipe("tiny"), {"stages.pretrain.init_from": "doge_base:bbbbbbbbbbbbbbbb"})
    assert recipe.stages.pretrain.init_from == "doge_base:bbbbbbbbbbbbbbbb"


# -- the source-data sensor ----------------------------------------------------------------------------------------
@pytest.fixture
def local_source_recipes(tmp_path, monkeypatch):
    """A recipes folder holding only `tiny`, whose smoltalk source is a local jsonl folder; returns that folder."""
    source = tmp_path / "smoltalk-local"
    source.mkdir()
    row = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    (source / "train.jsonl").write_text(json.dumps(row) + "\n")
    raw = tiny_raw()
    raw["mixtures"]["sft"]["sources"] = [{"dataset": "smoltalk", "ratio": 1.0, "kind": "local", "path": str(source)}]
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "tiny.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    # The code location of this folder serves tiny only.
    return source


def definitions_of(source: Path) -> dg.Definitions:
    """The code location of the recipes folder `local_source_recipes` wrote (beside its source folder)."""
    return build_definitions(recipes_dir=source.parent / "recipes")


def evaluate(cursor: str | None, source: Path):
    defs = definitions_of(source)
    # Partitioned run requests are resolved against the repository (partition keys, target job).
    context = dg.build_sensor_context(cursor=cursor, repository_def=defs.get_repository_def())
    return defs.resolve_sensor_def("source_data_sensor").evaluate_tick(context)


def test_source_sensor_requests_a_data_run_only_after_a_source_changes(local_source_recipes):
    first = evaluate(None, local_source_recipes)
    assert not first.run_requests, "the first tick only records the source versions"
    cursor = json.loads(first.cursor)
    assert set(cursor) == {"tiny"}, cursor

    unchanged = evaluate(first.cursor, local_source_recipes)
    assert not unchanged.run_requests and unchanged.skip_message
    assert json.loads(unchanged.cursor) == cursor

    with (local_source_recipes / "train.jsonl").open("a") as handle:  # new data in the local source
        handle.write(
            json.dumps({"messages": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]})
            + "\n"
        )
    changed = evaluate(unchanged.cursor, local_source_recipes)
    assert [request.partition_key for request in changed.run_requests] == ["tiny"]
    new_cursor = json.loads(changed.cursor)
    assert new_cursor["tiny"] != cursor["tiny"]
    assert changed.run_requests[0].run_key == f"tiny-{new_cursor['tiny']}"
    assert changed.run_requests[0].job_name in (None, "data")

    again = evaluate(changed.cursor, local_source_recipes)
    assert not again.run_requests, "the same change must not be requested twice"


def observed_versions(result) -> dict[tuple[str, str], str]:
    """(source asset, partition) -> data version of the observations a sensor tick records."""
    return {
        (event.asset_key.to_user_string(), event.partition): event.tags["dagster/data_version"]
        for event in result.asset_events
    }


def test_source_sensor_records_observations_that_agree_with_observing_the_sources(local_source_recipes):
    first = evaluate(None, local_source_recipes)
    observed = observed_versions(first)
    assert {partition for _, partition in observed} == {"tiny"}
    assert ("source_smoltalk", "tiny") in observed and len(observed) == 8, observed
    # The UI's "Observe sources" runs the observable source assets: they must report the same versions.
    for source in definitions_of(local_source_recipes).assets:
        if not isinstance(source, dg.SourceAsset):
            continue
        reported = source.observe_fn(dg.build_asset_context()).data_versions_by_partition
        assert reported["tiny"].value == observed[(source.key.to_user_string(), "tiny")], source.key

    assert not evaluate(first.cursor, local_source_recipes).asset_events, "unchanged sources are not observed again"
    with (local_source_recipes / "train.jsonl").open("a") as handle:
        handle.write(
            json.dumps({"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]})
            + "\n"
        )
    changed = observed_versions(evaluate(first.cursor, local_source_recipes))
    assert changed[("source_smoltalk", "tiny")] != observed[("source_smoltalk", "tiny")]
    assert {key for key in changed if changed[key] != observed[key]} == {("source_smoltalk", "tiny")}


def test_source_sensor_with_a_stale_cursor_requests_the_data_job(local_source_recipes):
    result = evaluate(json.dumps({"tiny": "0000000000000000"}), local_source_recipes)
    assert [request.partition_key for request in result.run_requests] == ["tiny"]


def test_source_sensor_only_ever_targets_the_data_job():
    from doge_dagster.definitions import defs

    sensor = defs.resolve_sensor_def("source_data_sensor")
    assert sensor.job_name == "data"
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    data_job = defs.resolve_job_def("data")
    keys = {key.to_user_string() for key in data_job.asset_layer.executable_asset_keys}
    assert keys and not keys & {stage.asset for stage in CHAIN.stages}, keys
    assert all(not name.startswith("doge_") for name in keys), keys


# -- the run-failure summary ---------------------------------------------------------------------------------------
def test_failure_sensor_writes_a_summary_with_run_partition_and_cause(tmp_path):
    from doge_dagster.definitions import defs

    artifact_store = ArtifactStoreResource(root=str(tmp_path / "store"))
    instance = dg.DagsterInstance.ephemeral()
    # doge_base with no data published: the step fails before any training, naming the missing upstream.
    result = dg.materialize(
        [defs.get_assets_def("doge_base")],
        partition_key="tiny",
        resources={**defs.resources, "artifact_store": artifact_store},
        instance=instance,
        tags={INIT_FROM_TAG: "doge_base:feedfacefeedface"},
        raise_on_error=False,
    )
    assert not result.success
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_summary",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
        resources={"artifact_store": artifact_store},
    ).for_run_failure()
    automation.run_failure_summary(context)

    path = tmp_path / "store" / "_failures" / f"{result.run_id}.json"
    assert path.is_file(), list((tmp_path / "store").rglob("*"))
    summary = json.loads(path.read_text())
    assert summary["run_id"] == result.run_id
    assert summary["partition"] == "tiny"
    assert summary["overrides"] == {INIT_FROM_TAG: "doge_base:feedfacefeedface"}
    # The cause, not only "Steps failed": the missing upstream artifact and what to do.
    assert "doge_base" in summary["failed_steps"], summary
    assert "not published" in summary["error"] and "materialize tokenizer" in summary["error"], summary["error"]


# -- one real tick through the daemon -------------------------------------------------------------------------------
@pytest.mark.slow
def test_retrain_schedule_ticks_through_the_dagster_dev_daemon(tmp_path):
    artifacts = tmp_path / "artifacts"
    publish_fake(ArtifactStore(str(artifacts)), "doge_base", "tiny", "0123456789abcdef")
    extra = {"DOGE_RETRAIN_CRON": "* * * * *", "DOGE_RETRAIN_PARTITIONS": "tiny"}
    with start_dagster_dev(tmp_path / "dev", artifact_root=artifacts, extra_env=extra) as server:
        started = server.set_schedule_running("retrain_schedule", True)
        assert started["__typename"] == "ScheduleStateResult" and started["scheduleState"]["status"] == "RUNNING", (
            started
        )
        run, ticks = None, []
        try:
            deadline = time.monotonic() + 170  # the next minute boundary, plus the daemon's loop
            while time.monotonic() < deadline:
                runs = server.runs({"dagster/schedule_name": "retrain_schedule"})
                run = runs[-1] if runs else None
                ticks = server.schedule_ticks("retrain_schedule")
                # The run is created before its tick is marked done: wait for both.
                if run and any(run["runId"] in tick["runIds"] and tick["status"] == "SUCCESS" for tick in ticks):
                    break
                time.sleep(3)
            assert run is not None, f"no scheduled run within 170 s; ticks: {ticks}\n{server.log_tail()}"
        finally:
            server.set_schedule_running("retrain_schedule", False)  # no second tick while we clean up
        assert any(run["runId"] in tick["runIds"] and tick["status"] == "SUCCESS" for tick in ticks), ticks
        assert run["jobName"] == "full_pipeline"
        assert run["tags"].get("dagster/partition") == "tiny"
        assert run["tags"].get(INIT_FROM_TAG) == "doge_base:0123456789abcdef", run["tags"]
        # A full retraining is not this test's business: stop the run and see it end.
        for candidate in server.runs({"dagster/schedule_name": "retrain_schedule"}):
            if candidate["status"] in ("QUEUED", "NOT_STARTED", "STARTING", "STARTED"):
                server.terminate_run(candidate["runId"])
        status = server.wait_for_run(run["runId"], timeout=120)
        assert status in ("CANCELED", "FAILURE", "SUCCESS"), status


# -- evaluation automation ---------------------------------------------------------------------------------------
def test_an_evaluation_reruns_when_its_model_changes_and_nothing_trains_by_itself():
    from doge_dagster.definitions import defs

    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor=None):
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        asked = {
            key.to_user_string(): set(result.get_requested_partitions(key))
            for key in defs.resolve_asset_graph().get_all_asset_keys()
            if result.get_num_requested(key)
        }
        return result.cursor, asked

    def model_published(*assets: str) -> None:
        for asset in assets:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition="tiny"))

    cursor, asked = tick()
    assert asked == {}, "no model exists yet: nothing to evaluate"
    model_published("tokenizer", "doge_base")
    cursor, asked = tick(cursor)
    assert asked == {"base_eval": {"tiny"}}, "a new base model is evaluated, in its own partition only"
    cursor, asked = tick(cursor)
    assert asked == {}, "requested once per model materialization"
    model_published("doge_base")  # e.g. a continued pretraining
    cursor, asked = tick(cursor)
    assert asked == {"base_eval": {"tiny"}}

    graph = defs.resolve_asset_graph()
    automated = {key.to_user_string() for key in graph.get_all_asset_keys() if graph.get(key).automation_condition}
    assert automated == {"base_eval", "instruct_eval", "reason_eval"}, "no training or data asset is automated"
    sensor = defs.resolve_sensor_def("evaluate_new_models")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
