"""A recipe edit makes exactly the affected stage and its downstream unsynced, and a re-run recomputes only those.

On the session's tiny chain: one field of the tiny distillation section changes (an edited copy of the recipes under
DOGE_RECIPES_DIR; recipes are read when the code location is imported, hence subprocesses). Then
(a) Dagster's stale status, through the GraphQL API the UI uses (`assetNodes { staleStatus staleCauses }`),
    both run in process by the `dagster-graphql` CLI and served by a `dagster dev` started on the edited recipe, is
    STALE with a code-version cause for exactly doge_reason_distill and everything downstream (code versions
    hash the recipe sections of a stage's whole lineage), FRESH for the rest; `doge-dagster versions`
    lists the same assets as `missing`;
(b) `dagster job execute -j full_pipeline --tags '{"dagster/partition": "tiny"}'` recomputes only those
    (every other asset reports `cached=True`), after which everything is FRESH again.
The run goes into a copy of the session's DAGSTER_HOME, so other tests keep seeing the unedited history.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
import yaml
from dagster_dev import (
    ARTIFACTS_DIR,
    CHAIN_TEST_TIMEOUT_S,
    CHAIN_TIMEOUT_S,
    DOGE_DAGSTER,
    cli_env,
    cli_stale_status,
    code_location_assets,
    latest_materializations,
    run_command,
    start_dagster_dev,
)
from helpers import (
    PROJECT_ROOT,
    cli_job_execute_command,
    cli_materialize_command,
    planned_version,
    published_versions,
    run_program,
    tail,
    tiny_raw,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S)]

# tiny.yaml logs every 10 steps. Any field of the section makes a new version; this one leaves the weights as
# they were, so the re-run's downstream gates pass as on the session's chain (a learning rate edit can cost the
# reason model more than its gate allows, which is the gate's job, not this test's subject).
# A stage in the middle of the chain (its downstream crosses into GRPO and an evaluation) whose re-run is short.
EDIT = {"stages.distill.training.logging_steps": 5}
EDITED_ASSET = "doge_reason_distill"


def stale_status(env) -> dict[str, dict]:
    """asset -> {status, causes} for tiny of every materializable asset, from env's code location and instance.

    Read through the GraphQL API the UI uses (`assetNodes { staleStatus staleCauses }`), run in process by the
    `dagster-graphql` CLI: Dagster has no public Python API for stale status.
    """
    releases = code_location_assets()["releases"]  # outside the pipeline: `full_pipeline` never rebuilds them
    return {
        asset: {"status": info["status"], "causes": info["causes"]}
        for asset, info in cli_stale_status(env, "tiny").items()
        if info["materializable"] and asset not in releases
    }


def descendants(asset: str) -> set[str]:
    """`asset` and everything downstream of it in the code location's pipeline (releases left out)."""
    location = code_location_assets()
    parents = {
        child: its_parents for child, its_parents in location["parents"].items() if child not in location["releases"]
    }
    found = {asset}
    changed = True
    while changed:
        changed = False
        for child, its_parents in parents.items():
            if child not in found and found & set(its_parents):
                found.add(child)
                changed = True
    return found


def stale_assets(statuses: dict[str, dict]) -> set[str]:
    return {asset for asset, info in statuses.items() if info["status"] != "FRESH"}


@pytest.fixture(scope="module")
def edited(tiny_chain, tmp_path_factory):
    """The edited recipes folder (every recipe copied, tiny's distillation section edited), copies of the chain's home and store."""
    base = tmp_path_factory.mktemp("unsynced")
    recipes = base / "recipes"
    recipes.mkdir()
    for path in (PROJECT_ROOT / "recipes").glob("*.yaml"):  # every partition: code versions hash all of them
        shutil.copy(path, recipes / path.name)
    raw = tiny_raw(EDIT)
    assert (
        raw["stages"]["distill"]["training"]["logging_steps"]
        != tiny_raw()["stages"]["distill"]["training"]["logging_steps"]
    )
    (recipes / "tiny.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    home = tiny_chain.copy_home(base / "dagster_home")
    store = tiny_chain.copy_store(base / "artifacts")  # re-running the edited pipeline publishes new versions
    env = tiny_chain.env(recipes_dir=recipes, dagster_home=home, artifact_root=store)
    return {"recipes": recipes, "home": home, "store": store, "env": env}


@pytest.mark.slow
def test_the_materialized_chain_is_fresh_before_the_edit(tiny_chain):
    statuses = stale_status(tiny_chain.env())
    assert not stale_assets(statuses), {asset: info for asset, info in statuses.items() if info["status"] != "FRESH"}


def assert_exactly_the_downstream_of_the_edit_is_stale(statuses: dict[str, dict]) -> None:
    expected = descendants(EDITED_ASSET)
    assert {"doge_reason_distill", "doge_reason", "reason_eval"} <= expected
    assert not {"doge_instruct", "instruct_eval"} & expected
    assert stale_assets(statuses) == expected, json.dumps(statuses, indent=1)
    for asset in expected:
        assert statuses[asset]["status"] == "STALE"
        assert any(cause["category"] == "CODE" and cause["key"] == asset for cause in statuses[asset]["causes"]), (
            statuses[asset]
        )


@pytest.mark.slow
def test_editing_the_distill_section_makes_exactly_distill_and_its_downstream_stale(edited):
    assert_exactly_the_downstream_of_the_edit_is_stale(stale_status(edited["env"]))


@pytest.mark.slow
def test_versions_cli_lists_the_edited_stage_and_its_downstream_as_missing(edited, tiny_chain):
    expected = descendants(EDITED_ASSET)
    result = run_command([DOGE_DAGSTER, "versions", "--partition", "tiny"], edited["env"], 120)
    assert result.returncode == 0, tail(result.stdout)
    releases = code_location_assets()["releases"]  # planned too, but outside the pipeline
    rows = [line.split() for line in result.stdout.splitlines() if line.strip() and line.split()[0] not in releases]
    missing = {row[0] for row in rows if "[missing]" in row}
    published = {row[0] for row in rows if "[missing]" not in row}
    assert missing == expected, result.stdout
    assert published and not published & expected, result.stdout


@pytest.mark.slow
def test_the_ui_graphql_api_shows_the_same_unsynced_assets(edited, tiny_chain, tmp_path):
    work = tmp_path / "dev"
    home = tmp_path / "home"  # the server writes to its home (daemon heartbeats): a copy of the copy
    shutil.copytree(edited["home"], home)
    with start_dagster_dev(
        work, artifact_root=edited["store"], dagster_home=home, recipes_dir=edited["recipes"]
    ) as server:
        nodes = server.stale_status("tiny")
    releases = code_location_assets()["releases"]
    assert_exactly_the_downstream_of_the_edit_is_stale(
        {asset: info for asset, info in nodes.items() if info["materializable"] and asset not in releases}
    )


@pytest.mark.slow
def test_rerunning_full_pipeline_recomputes_only_the_unsynced_stages(edited, tiny_chain):
    env = edited["env"]
    expected = descendants(EDITED_ASSET)
    location = code_location_assets()
    assets = [
        key for key in location["materializable"] if not key.startswith("source_") and key not in location["releases"]
    ]
    started = time.monotonic()
    result = run_command(
        cli_job_execute_command("full_pipeline", {"dagster/partition": "tiny"}),
        env, CHAIN_TIMEOUT_S, log_path=ARTIFACTS_DIR / "unsynced-full-pipeline.log",
    )  # fmt: skip
    seconds = time.monotonic() - started
    assert result.returncode == 0, f"full_pipeline failed (rc {result.returncode}):\n{tail(result.stdout, 80)}"
    latest = latest_materializations(env, assets)
    assert set(latest) == set(assets)
    assert len({entry["run_id"] for entry in latest.values()}) == 1, "one run materialized every asset"
    recomputed = {asset for asset, entry in latest.items() if entry["cached"] is False}
    cached = {asset for asset, entry in latest.items() if entry["cached"] is True}
    assert recomputed == expected, f"recomputed {sorted(recomputed)}, expected {sorted(expected)}"
    assert cached == set(assets) - expected
    # The new versions are what the edited recipe plans; the old ones stay published beside them.
    for asset in ("doge_reason_distill", "doge_reason"):
        assert latest[asset]["version"] == planned_version(asset, EDIT) != planned_version(asset)
        assert {planned_version(asset), planned_version(asset, EDIT)} <= set(published_versions(edited["store"], asset))
    assert latest["doge_base"]["version"] == planned_version("doge_base")
    # ... and now nothing is stale any more.
    statuses = stale_status(env)
    assert not stale_assets(statuses), {asset: info for asset, info in statuses.items() if info["status"] != "FRESH"}
    print(f"full_pipeline after the distillation edit: {seconds:.0f}s, recomputed {sorted(recomputed)}")


# -- a data change ----------------------------------------------------------------------------------------------------
def data_causes(statuses: dict[str, dict], asset: str) -> list[str]:
    """The upstream assets whose new data version makes `asset` stale.

    The causes are root causes (see `stale_status`): a source's new data version is a cause whose `key` is the
    source; a cause naming a `dependency` (e.g. a new input) names that dependency.
    """
    return [cause["dependency"] or cause["key"] for cause in statuses[asset]["causes"] if cause["category"] == "DATA"]


def test_a_source_data_change_flags_the_mixtures_built_on_it(tmp_path):
    env = cli_env(tmp_path / "home", tmp_path / "artifacts")
    tick = run_program("source_events", ["tick"], env, 300)
    assert tick.result == 8, tail(tick.output)  # tiny's eight sources
    built = run_command(
        cli_materialize_command("tokenizer,sft_mixture,pretrain_mixture"),
        env, 900, log_path=ARTIFACTS_DIR / "unsynced-data-change.log",
    )  # fmt: skip
    assert built.returncode == 0, tail(built.stdout)
    before = stale_status(env)
    assert not data_causes(before, "sft_mixture") and not data_causes(before, "pretrain_mixture"), before

    run_program("source_events", ["observe", "source_smoltalk", "tiny", "new-smoltalk-rows"], env, 120)  # new rows
    after = stale_status(env)
    assert after["sft_mixture"]["status"] == "STALE" and "source_smoltalk" in data_causes(after, "sft_mixture"), after
    assert "source_smoltalk" not in data_causes(after, "pretrain_mixture"), "pretraining does not read smoltalk"
