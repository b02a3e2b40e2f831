"""`doge-dagster diff`: which recipe fields, code versions and upstream versions make the current recipe plan
another version than the published one, explained down the chain.

On stand-in artifacts published at the plan's versions with what a real build records (the code version and
the recipe sections), and once through the real CLI on the tiny chain.
"""

from __future__ import annotations

import time

import pytest
from dagster_dev import CHAIN_TEST_TIMEOUT_S, DOGE_DAGSTER, run_command

from doge_dagster.artifacts import ArtifactStore
from doge_dagster.cli import main
from doge_dagster.explain import Build, explain_previous
from doge_dagster.plan import plan_versions
from doge_dagster.recipes import load_recipe


def publish_tiny_plan(root) -> ArtifactStore:
    """Every tiny artifact as a stand-in whose manifest records what a real build records."""
    store = ArtifactStore(str(root))
    recipe = load_recipe("tiny")
    for node, info in plan_versions(recipe).items():
        build = Build.planned(recipe, info)
        staged = store.staging_dir(node, "tiny", info.version)
        (staged / "README.md").write_text(node)
        metadata = {"code_version": build.code_version, "recipe_sections": build.sections}
        store.publish(node, "tiny", info.version, staged, info.upstream, metadata)
        time.sleep(0.01)
    return store


def diff(capsys, root, asset: str, *overrides: str) -> tuple[int, str]:
    argv = ["diff", asset, "--partition", "tiny", "--root", str(root)]
    for override in overrides:
        argv += ["--override", override]
    code = main(argv)
    return code, capsys.readouterr().out


def test_an_unchanged_recipe_says_nothing_changed(tmp_path, capsys):
    publish_tiny_plan(tmp_path)
    code, out = diff(capsys, tmp_path, "doge_reason")
    assert code == 0 and "is what the current recipe plans: nothing changed" in out, out


def test_a_pretraining_field_is_named_under_every_stage_it_reaches(tmp_path, capsys):
    publish_tiny_plan(tmp_path)
    code, out = diff(capsys, tmp_path, "doge_instruct", "stages.pretrain.training.max_steps=1000")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("published ") and "(current recipe)" in lines[0], out
    assert lines[1].startswith("doge_instruct: "), out
    assert any(line.startswith("  doge_instruct_sft: ") for line in lines), out
    assert "      recipe stages.pretrain.training.max_steps: 900 -> 1000" in lines, out
    assert not any("tokenizer" in line or "mixture" in line for line in lines), "unchanged inputs are not listed"


def test_a_source_change_and_a_code_version_are_named(tmp_path, capsys):
    store = publish_tiny_plan(tmp_path)
    code, out = diff(capsys, tmp_path, "pretrain_mixture", "mixtures.pretrain.seed=7")
    assert code == 0 and "  recipe mixtures.pretrain.seed: " in out and "-> 7" in out, out
    assert "source source_" in out, "the generated sources' rows depend on the seed, so their versions move too"
    manifest = store.latest("doge_base", "tiny")
    manifest.metadata["code_version"] = "pretrain-1"  # as an artifact published by the previous code
    old = Build.from_manifest(manifest)
    new = Build.planned(load_recipe("tiny"), plan_versions(load_recipe("tiny"))["doge_base"])
    from doge_dagster.explain import explain, recorded_resolver

    lines = explain(
        Build(**{**old.__dict__, "version": "0" * 16}),
        new,
        recorded_resolver(store, "tiny"),
        recorded_resolver(store, "tiny"),
    )
    assert "  code version: pretrain-1 -> pretrain-2" in lines, lines


def test_an_artifact_published_without_a_record_says_so(tmp_path, capsys):
    store = ArtifactStore(str(tmp_path))
    staged = store.staging_dir("doge_base", "tiny", "0" * 16)
    (staged / "README.md").write_text("old")
    store.publish("doge_base", "tiny", "0" * 16, staged, {})
    code, out = diff(capsys, tmp_path, "doge_base")
    assert code == 0 and "recipe fields: not recorded" in out and "code version: not recorded" in out, out


def test_the_metadata_of_a_new_version_names_what_changed_since_the_previous_one(tmp_path):
    store = publish_tiny_plan(tmp_path)
    recipe = load_recipe("tiny").model_copy(deep=True)
    recipe.stages.sft.training["learning_rate"] = 7.7e-4
    info = plan_versions(recipe)["doge_instruct_sft"]
    build = Build.planned(recipe, info)
    staged = store.staging_dir("doge_instruct_sft", "tiny", info.version)
    (staged / "README.md").write_text("new")
    manifest = store.publish("doge_instruct_sft", "tiny", info.version, staged, info.upstream,
                             {"code_version": build.code_version, "recipe_sections": build.sections})  # fmt: skip
    text = explain_previous(store, manifest)
    assert "recipe stages.sft.training.learning_rate:" in text and "-> 0.00077" in text, text


@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S)
def test_the_cli_explains_a_changed_sft_field_on_the_tiny_chain(tiny_chain):
    env = tiny_chain.env()
    command = [
        DOGE_DAGSTER,
        "diff",
        "doge_reason",
        "--partition",
        "tiny",
        "--override",
        "stages.sft.training.max_steps=7",
    ]
    result = run_command(command, env, 120)
    assert result.returncode == 0, result.stdout
    assert "recipe stages.sft.training.max_steps:" in result.stdout and "-> 7" in result.stdout, result.stdout
    for asset in ("doge_reason", "doge_reason_distill", "doge_instruct", "doge_instruct_sft"):
        assert f"{asset}: " in result.stdout, result.stdout
    unchanged = run_command([DOGE_DAGSTER, "diff", "doge_reason", "--partition", "tiny"], env, 120)
    assert "nothing changed" in unchanged.stdout, unchanged.stdout
