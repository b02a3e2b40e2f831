"""The chain's records: every mixture, stage and report is declared once, and everything derives from them.

Adding a stage is shown, not claimed: `plugins/second_sft.py` declares one extra stage (a record and its
trainer) outside the project; with DOGE_EXTRA_STAGES naming it, it is validated in recipes, appears as an asset
with its checks, lineage and jobs, launches through `accelerate launch` and publishes a model on tiny.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from dagster_dev import ARTIFACTS_DIR, CHAIN_TEST_TIMEOUT_S
from helpers import (
    cli_materialize_command,
    copy_artifacts,
    program_env,
    published_versions,
    read_manifest,
    run_command,
    run_program,
    tail,
    tiny_raw,
    write_tiny_recipe,
)

from doge_dagster.launching.command import LaunchError
from doge_dagster.plan import chain_nodes, plan_versions
from doge_dagster.recipes import RecipeError, load_recipe, parse_recipe
from doge_dagster.stages import CHAIN, Chain, ChainError, Stage, load_chain
from doge_dagster.training.validation import validate_stage

PLUGIN = "plugins.second_sft"
EXTRA = "doge_instruct_sft_again"
SECOND_PASS = {"training": {"max_steps": 6, "logging_steps": 2, "save_steps": 6, "per_device_train_batch_size": 8}}


def extended_recipe(section: dict | None = SECOND_PASS):
    """The tiny recipe under the extended chain, with (or without) the extra stage's section."""
    raw = tiny_raw()
    if section is not None:
        raw["stages"]["sft_again"] = section
    return parse_recipe(raw, source="tiny + sft_again", chain=load_chain(PLUGIN))


# -- the shipped chain ----------------------------------------------------------------------------------------------
def test_the_shipped_chain_in_order():
    assert [stage.asset for stage in CHAIN.stages] == [
        "doge_base", "doge_instruct_sft", "doge_instruct", "doge_reason_distill", "doge_reason"]  # fmt: skip
    assert [report.asset for report in CHAIN.reports] == ["base_eval", "instruct_eval", "reason_eval"]
    assert [mixture.asset for mixture in CHAIN.mixtures] == [
        "pretrain_mixture", "sft_mixture", "dpo_mixture", "distill_mixture", "grpo_mixture"]  # fmt: skip
    assert [(release.asset, release.model_stage, release.report) for release in CHAIN.releases] == [
        ("release_base", "pretrain", "base"), ("release_instruct", "dpo", "instruct"), ("release_reason", "grpo", "reason")]  # fmt: skip
    assert CHAIN.root_stage().name == "pretrain"
    assert CHAIN.report("reason").checks == ("scores_valid", "no_regression", "format_rate")
    assert CHAIN.report("base").checks == ("scores_valid",)


def test_the_recipe_schema_follows_the_records():
    recipe = load_recipe("tiny")
    assert recipe.chain is CHAIN
    assert list(type(recipe.stages).model_fields) == [stage.name for stage in CHAIN.stages]
    assert list(type(recipe.mixtures).model_fields) == [mixture.name for mixture in CHAIN.mixtures]
    assert list(type(recipe.evaluation).model_fields) == [report.name for report in CHAIN.reports]
    assert list(type(recipe.releases).model_fields) == [release.name for release in CHAIN.releases]


# -- records check themselves when built ----------------------------------------------------------------------------
def stage(**changes) -> Stage:
    base = dict(CHAIN.stage("sft").__dict__)
    return Stage(**{**base, "name": "extra", "asset": "doge_extra", **changes})


class NoTrainer:
    """Not a StageTrainer."""


def test_a_stage_whose_trainer_lacks_a_piece_fails_at_load_naming_the_stage():
    with pytest.raises(ChainError, match="stage 'extra': trainer .*NoTrainer is not a StageTrainer subclass"):
        stage(trainer=f"{__name__}:NoTrainer")
    with pytest.raises(
        ChainError, match="stage 'extra' has no parent stage, so its trainer .* must implement build_model"
    ):
        stage(parent=None)
    with pytest.raises(ChainError, match="stage 'extra': trainer no_such.module:X: cannot import"):
        stage(trainer="no_such.module:X")
    with pytest.raises(ChainError, match="stage 'extra': unknown check\\(s\\) \\['loss_is_tiny'\\]"):
        stage(checks=("loss_is_tiny",))


def test_a_chain_that_names_what_it_lacks_fails_naming_the_record():
    with pytest.raises(ChainError, match="stage 'extra': mixture 'kto' is not declared"):
        Chain(CHAIN.mixtures, (*CHAIN.stages, stage(mixture="kto")), CHAIN.reports)
    with pytest.raises(ChainError, match="stage 'extra': parent stage 'nope' is not declared"):
        Chain(CHAIN.mixtures, (*CHAIN.stages, stage(parent="nope")), CHAIN.reports)
    with pytest.raises(ChainError, match="asset name\\(s\\) used twice: doge_instruct"):
        Chain(CHAIN.mixtures, (*CHAIN.stages, stage(asset="doge_instruct")), CHAIN.reports)
    with pytest.raises(ChainError, match="stage name\\(s\\) declared twice: sft"):
        Chain(CHAIN.mixtures, (*CHAIN.stages, stage(name="sft")), CHAIN.reports)
    with pytest.raises(ChainError, match="report 'base': stage 'gone' is not declared"):
        Chain(
            CHAIN.mixtures,
            CHAIN.stages,
            (dataclasses.replace(CHAIN.reports[0], model_stage="gone"), *CHAIN.reports[1:]),
        )
    with pytest.raises(ChainError, match="cannot import"):
        load_chain("no_such_plugin_module")


def test_a_release_must_name_the_report_of_the_model_it_releases():
    release = CHAIN.release("instruct")
    with pytest.raises(
        ChainError, match="release 'instruct' releases stage 'dpo', but its report 'reason' evaluates stage 'grpo'"
    ):
        Chain(CHAIN.mixtures, CHAIN.stages, CHAIN.reports, (dataclasses.replace(release, report="reason"),))
    with pytest.raises(ChainError, match="release 'instruct': base release 'base' is not declared"):
        Chain(CHAIN.mixtures, CHAIN.stages, CHAIN.reports, (release,))
    with pytest.raises(ChainError, match="asset name\\(s\\) used twice: doge_instruct"):
        Chain(
            CHAIN.mixtures,
            CHAIN.stages,
            CHAIN.reports,
            (dataclasses.replace(release, asset="doge_instruct", base_release=None),),
        )


# -- an extra stage: one record plus its trainer -----------------------------------------------------------------------
def test_an_extra_stage_joins_the_plan_without_moving_other_versions():
    chain = load_chain(PLUGIN)
    node = chain_nodes(chain)[EXTRA]
    assert node.upstream == ("doge_instruct_sft", "sft_mixture", "tokenizer") and node.group == "instruct"
    extended = plan_versions(extended_recipe())
    shipped = plan_versions(load_recipe("tiny"))
    assert {name: planned.version for name, planned in shipped.items()} == {
        name: planned.version for name, planned in extended.items() if name != EXTRA
    }
    assert extended[EXTRA].upstream["doge_instruct_sft"] == shipped["doge_instruct_sft"].version


def test_recipes_without_the_extra_section_still_load_and_say_the_stage_does_not_run():
    recipe = extended_recipe(section=None)
    assert recipe.stages.sft_again is None
    with pytest.raises(
        LaunchError, match="recipe 'tiny' does not run stage 'sft_again': add a `stages.sft_again` section"
    ):
        validate_stage("sft_again", recipe)


def test_the_extra_section_is_validated_like_any_stage():
    with pytest.raises(RecipeError, match="stages.sft_again.trainig: unknown field"):
        extended_recipe({"trainig": {}})
    with pytest.raises(LaunchError, match="stages.sft_again.training.max_stepz is not a field of trl.SFTConfig"):
        validate_stage("sft_again", extended_recipe({"training": {"max_stepz": 3}}))
    validate_stage("sft_again", extended_recipe())


def test_the_extra_trainer_hooks_reach_the_trainer_config(tmp_path):
    from doge_dagster.artifacts import ArtifactStore
    from doge_dagster.launching.spec import LaunchSpec
    from doge_dagster.trainer_contract import StageContext
    from doge_dagster.training.runner import build_args

    recipe = extended_recipe()
    record = recipe.chain.stage("sft_again")
    spec = LaunchSpec("sft_again", EXTRA, "tiny", "v", {}, recipe.model_dump(mode="json"), str(tmp_path), str(tmp_path))
    ctx = StageContext(spec, recipe, ArtifactStore(str(tmp_path / "store")), None, record)
    args = build_args(ctx, record.trainer_class()(), tmp_path / "checkpoints")
    assert args.learning_rate == pytest.approx(2.0e-4) and args.max_length == recipe.mixtures.sft.max_length


@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S)
def test_an_extra_stage_is_an_asset_with_checks_and_jobs_and_trains_on_tiny(tiny_chain, tmp_path):
    root = tmp_path / "artifacts"
    copy_artifacts(tiny_chain.artifact_root, root, ("tokenizer", "sft_mixture", "doge_base", "doge_instruct_sft"))
    raw_edits = {f"stages.sft_again.{key}": value for key, value in SECOND_PASS.items()}
    recipes = write_tiny_recipe(tmp_path / "recipes", raw_edits)
    env = program_env(
        tiny_chain.env(recipes, dagster_home=tmp_path / "home", artifact_root=root, DOGE_EXTRA_STAGES=PLUGIN)
    )

    location = run_program("code_location", [], env, 300).result
    asset = location["assets"][EXTRA]
    assert asset["group"] == "instruct" and asset["deps"] == ["doge_instruct_sft", "sft_mixture", "tokenizer"]
    assert asset["checks"] == sorted(CHAIN.stage("sft").checks)
    assert EXTRA in location["jobs"]["instruct"] and EXTRA in location["jobs"]["full_pipeline"]

    result = run_command(cli_materialize_command(EXTRA), env, 900, log_path=ARTIFACTS_DIR / "extra-stage.log")
    assert result.returncode == 0, tail(result.stdout)
    assert "accelerate.commands.launch" in result.stdout and "-m doge_dagster.training sft_again" in result.stdout
    [version] = published_versions(root, EXTRA)
    assert version == plan_versions(extended_recipe())[EXTRA].version
    manifest = read_manifest(root, EXTRA, version)
    assert manifest["upstream"]["doge_instruct_sft"] == published_versions(root, "doge_instruct_sft")[0]
    checks = manifest["metadata"]["checks"]
    assert sorted(checks) == sorted(CHAIN.stage("sft").checks) and all(passed for passed, _ in checks.values()), checks
    assert manifest["metadata"]["global_step"] == SECOND_PASS["training"]["max_steps"]
    assert (Path(root) / EXTRA / "tiny" / version / "model.safetensors").is_file()
