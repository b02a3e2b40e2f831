"""Retraining that means something: a schedule tick launches work only when a source or a recipe changed, and
continues pretraining from the newest base model whose gates passed.

The decisions depend only on the published manifests (versions, recorded lineage, check results) and the
recipe, so most tests publish small stand-in artifacts at the versions the plan gives; one reads the real tiny
chain.
"""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from helpers import tiny_raw

from doge_dagster.artifacts import ArtifactStore
from doge_dagster.plan import plan_versions
from doge_dagster.recipes import RECIPES_DIR, RecipeFolder, apply_overrides, load_recipe, overrides_from_tags
from jobs import automation
from resources.artifact_store import ArtifactStoreResource

INIT_FROM = "doge/override/stages.pretrain.init_from"


def publish(store: ArtifactStore, asset: str, version: str, upstream=None, passed: bool = True) -> None:
    """A complete artifact standing in for a real one: the manifest fields the schedule reads, with one check."""
    staged = store.staging_dir(asset, "tiny", version)
    (staged / "README.md").write_text(f"{asset} {version}\n")
    checks = {"a_blocking_check": [passed, "ok" if passed else "loss rose"]}
    store.publish(asset, "tiny", version, staged, upstream or {}, {"checks": checks})
    time.sleep(0.01)  # manifests are ordered by creation time


def tick(store_root: Path, recipes: RecipeFolder) -> tuple[list[dg.RunRequest], list[str]]:
    return automation.retrain_requests(ArtifactStoreResource(root=str(store_root)), recipes, ["tiny"])


def publish_plan(store: ArtifactStore, tags: dict[str, str]) -> dict:
    """Every artifact the tiny recipe with these run tags plans, as if a run had built them all."""
    planned = plan_versions(apply_overrides(load_recipe("tiny"), overrides_from_tags(tags)))
    for node, info in planned.items():
        if store.read_manifest(node, "tiny", info.version) is None:
            publish(store, node, info.version, info.upstream)
    return planned


@pytest.mark.slow
def test_a_tick_on_the_tiny_chain_with_nothing_changed_launches_nothing(tiny_chain):
    requests, skipped = tick(tiny_chain.artifact_root, RecipeFolder(RECIPES_DIR))
    assert requests == [], [request.tags for request in requests]
    assert len(skipped) == 1 and skipped[0].startswith("tiny: nothing changed"), skipped


@pytest.mark.slow
def test_a_changed_source_continues_from_the_newest_base_whose_gates_passed(tiny_chain, tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    base = ArtifactStore(str(tiny_chain.artifact_root)).latest("doge_base", "tiny")
    publish(store, "doge_base", base.version, base.upstream)
    publish(store, "doge_base", "f" * 16, passed=False)  # newer, but its blocking check failed
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    changed = tiny_raw({"mixtures.pretrain.sources": [
        {**source, "num_rows": source["num_rows"] + 100} if source.get("kind") == "generated" else source
        for source in tiny_raw()["mixtures"]["pretrain"]["sources"]
    ]})  # fmt: skip
    (recipes / "tiny.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))

    requests, skipped = tick(store.root, RecipeFolder(recipes))

    assert skipped == []
    assert [request.partition_key for request in requests] == ["tiny"]
    assert requests[0].tags == {INIT_FROM: f"doge_base:{base.version}"}, "continue from the passing base, not f..."


def test_after_continuing_the_next_tick_launches_nothing(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    publish(store, "doge_base", "a" * 16)  # an earlier base of another recipe
    recipes = RecipeFolder(RECIPES_DIR)
    requests, _ = tick(store.root, recipes)
    assert requests[0].tags == {INIT_FROM: "doge_base:" + "a" * 16}

    planned = publish_plan(store, requests[0].tags)  # the run the tick requested, completed
    assert planned["doge_base"].upstream["doge_base"] == "a" * 16

    requests, skipped = tick(store.root, recipes)
    assert requests == [], "the same recipe and sources: the next tick would only repeat the run"
    assert skipped[0].startswith("tiny: nothing changed") and planned["doge_base"].version in skipped[0], skipped


def test_a_changed_downstream_section_reruns_only_what_changed_on_the_same_base(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    publish_plan(store, {})
    recipe_dir = tmp_path / "recipes"
    recipe_dir.mkdir()
    (recipe_dir / "tiny.yaml").write_text(yaml.safe_dump(tiny_raw({"stages.grpo.training.max_steps": 21})))

    requests, skipped = tick(store.root, RecipeFolder(recipe_dir))

    assert skipped == [] and requests[0].tags == {}, "the base is unchanged: no continued pretraining"


def test_a_tick_does_not_launch_runs_that_its_failed_gates_would_refuse(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    planned = plan_versions(load_recipe("tiny"))
    for node in ("tokenizer", "pretrain_mixture"):
        publish(store, node, planned[node].version, planned[node].upstream)
    publish(store, "doge_base", planned["doge_base"].version, planned["doge_base"].upstream, passed=False)

    requests, skipped = tick(store.root, RecipeFolder(RECIPES_DIR))

    assert requests == []
    assert "doge_base" in skipped[0] and "failed blocking checks" in skipped[0], skipped
    assert "doge/allow-failed-gates=true" in skipped[0]
