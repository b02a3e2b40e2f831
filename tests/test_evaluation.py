"""Evaluation: the report and its gates, the launch plumbing, the model view (no stale predictions), and the
three evaluation assets of the tiny chain through the CLI (slow: cached re-run, planted regression)."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import (
    DATA_ASSETS,
    copy_artifacts,
    dagster_env,
    dg_materialize,
    planned_version,
    published_versions,
    read_manifest,
    write_tiny_recipe,
)

from doge_dagster.evaluation import report as reports
from doge_dagster.evaluation.report import TaskScore
from doge_dagster.launching.command import accelerate_command
from doge_dagster.launching.spec import LaunchSpec
from doge_dagster.plan import NODES, plan_versions
from doge_dagster.recipes import LaunchRecipe, load_recipe
from doge_dagster.stages import CHAIN

EVAL_ASSETS = ("base_eval", "instruct_eval", "reason_eval")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def score(task: str, value: float, **extra) -> TaskScore:
    return TaskScore(
        task,
        reports.task_name(task),
        extra.pop("metric", "acc"),
        value,
        0.05,
        [reports.lighteval_task(task)],
        50,
        **extra,
    )


# -- report -------------------------------------------------------------------------------------------------------
def test_collect_scores_averages_supersets_and_reads_the_primary_metric():
    tasks = ["custom|arc|5|0", "custom|arithmetic_think|0|0", "custom|missing|0|0"]
    subtasks = {
        "custom|arc|5|0": ["custom|arc:challenge|5", "custom|arc:easy|5"],
        "custom|arithmetic_think|0|0": ["custom|arithmetic_think|0"],
    }
    aggregated = {
        "custom|arc:challenge|5": {"acc": 0.3, "acc_stderr": 0.03},
        "custom|arc:easy|5": {"acc": 0.5, "acc_stderr": 0.04},
        "custom|arithmetic_think|0": {"acc": 0.2, "acc_stderr": 0.05, "think_format": 0.6, "think_format_stderr": 0.07},
    }
    primary = {"custom|arc:challenge|5": "acc", "custom|arc:easy|5": "acc", "custom|arithmetic_think|0": "acc"}
    samples = {"custom|arc:challenge|5": 100, "custom|arc:easy|5": 100, "custom|arithmetic_think|0": 50}
    arc, think, missing = reports.collect_scores(tasks, subtasks, aggregated, primary, samples)
    assert arc.key == "arc" and math.isclose(arc.score, 0.4) and math.isclose(arc.stderr, 0.025) and arc.samples == 200
    assert think.format_rate == 0.6 and arc.format_rate is None
    assert math.isnan(missing.score) and not missing.subtasks
    assert reports.format_rate([arc, think]) == 0.6


def test_task_keys_are_unique():
    assert reports.task_keys(["custom|arc|5|0", "custom|arc|0|0", "lighteval|piqa|5|0"]) == {
        "custom|arc|5|0": "arc|5", "custom|arc|0|0": "arc|0", "lighteval|piqa|5|0": "piqa"}  # fmt: skip


def test_comparison_matches_suite_task_and_fewshot():
    previous = [score("custom|arithmetic_gen|0|0", 0.30).to_dict(), score("custom|arc|5|0", 0.4).to_dict()]
    current = [score("custom|arithmetic_gen|0|0", 0.10), score("custom|arc|0|0", 0.5)]
    [row] = reports.compare(current, previous)
    assert row["task"] == "custom|arithmetic_gen|0" and math.isclose(row["delta"], -0.2)


def gates(current, previous=None, tolerance=0.02, rate=None, min_rate=None, check_format=False):
    comparison = reports.compare(current, [s.to_dict() for s in previous]) if previous is not None else None
    names = ("scores_valid", *(("no_regression",) if previous is not None else ()), *(("format_rate",) if check_format else ()))
    return reports.gate_checks(names, current, comparison, tolerance, "base_eval", rate, min_rate)


def test_scores_valid_gate():
    assert gates([score("custom|a|0|0", 0.5)])["scores_valid"][0]
    for bad in (float("nan"), 1.5, -0.1):
        passed, detail = gates([score("custom|a|0|0", 0.5), score("custom|b|0|0", bad)])["scores_valid"]
        assert not passed and "b=" in detail
    passed, detail = gates([TaskScore("custom|c|0|0", "c", "?", float("nan"), None, [], 0)])["scores_valid"]
    assert not passed and "custom|c|0|0: no result" in detail


def test_regression_gate_names_task_and_delta():
    before = [score("custom|arithmetic_mc|0|0", 0.46), score("custom|arithmetic_gen|0|0", 0.34)]
    passed, detail = gates([score("custom|arithmetic_mc|0|0", 0.45), score("custom|arithmetic_gen|0|0", 0.10)], before)[
        "no_regression"
    ]
    assert not passed
    assert "custom|arithmetic_gen|0" in detail and "delta -0.240" in detail and "tolerance 0.02" in detail
    assert "arithmetic_mc" not in detail  # -0.01 is within tolerance
    passed, detail = gates([score("custom|arithmetic_mc|0|0", 0.45)], before)["no_regression"]
    assert passed and "smallest delta -0.010" in detail
    assert gates([score("custom|arithmetic_mc|0|0", 0.88)], [score("custom|arithmetic_mc|0|0", 0.90)])["no_regression"][
        0
    ]  # -0.02 exactly
    passed, detail = gates([score("custom|other|0|0", 0.0)], before)["no_regression"]
    assert passed and "no task shared" in detail
    assert "no_regression" not in gates([score("custom|a|0|0", 0.1)])  # the first evaluation has nothing to compare


def test_format_rate_gate():
    current = [score("custom|arithmetic_think|0|0", 0.1)]
    assert gates(current, rate=0.6, min_rate=0.5, check_format=True)["format_rate"][0]
    passed, detail = gates(current, rate=0.4, min_rate=0.5, check_format=True)["format_rate"]
    assert not passed and "0.400" in detail and "0.5" in detail
    assert not gates(current, rate=None, min_rate=0.5, check_format=True)["format_rate"][0]
    assert gates(current, rate=None, min_rate=None, check_format=True)["format_rate"][0]
    assert "format_rate" not in gates(current, rate=0.1, min_rate=0.5)


def test_published_scores_side_by_side():
    rows = reports.published_rows("20M", [score("custom|mmlu|5|0", 0.254), score("lighteval|piqa|5|0", 0.6)])
    by_task = {row["task"]: row for row in rows}
    assert by_task["mmlu"] == {"task": "mmlu", "this_run": 25.4, "task_string": "custom|mmlu|5|0", "metric": "acc", "published": 25.4}
    assert by_task["winogrande"]["this_run"] is None and by_task["winogrande"]["published"] == 50.2
    assert reports.published_rows("tiny", []) == []


def test_summary_markdown_has_every_section():
    current = [score("custom|arithmetic_gen|0|0", 0.1)]
    comparison = reports.compare(current, [score("custom|arithmetic_gen|0|0", 0.3).to_dict()])
    checks = reports.gate_checks(CHAIN.report("reason").checks, current, comparison, 0.02, "instruct_eval", 0.6, 0.5)
    text = reports.summary_markdown(
        "reason_eval (tiny)", ["Model: x"], current, comparison, "instruct_eval", [], checks, 0.6
    )
    for part in ("# reason_eval (tiny)", "| task | metric | score | stderr |", "## Compared with instruct_eval", "FAIL `no_regression`",
                 "PASS `format_rate`", "Format rate"):  # fmt: skip
        assert part in text


# -- plan, spec, launch, definitions --------------------------------------------------------------------------------
def test_evaluation_nodes_and_versions():
    assert NODES["instruct_eval"].upstream == ("doge_instruct", "tokenizer", "base_eval")
    assert NODES["reason_eval"].upstream == ("doge_reason", "tokenizer", "instruct_eval")
    assert "instruct_eval" not in NODES["doge_reason_distill"].upstream  # a Dagster dep only: versions unchanged
    planned = plan_versions(load_recipe("tiny"), nodes=list(EVAL_ASSETS))
    assert planned["instruct_eval"].upstream["base_eval"] == planned["base_eval"].version
    assert planned_version("instruct_eval", {"evaluation.base.max_samples": 10}) != planned["instruct_eval"].version
    assert planned_version("base_eval", {"evaluation.instruct.max_samples": 10}) == planned["base_eval"].version
    assert planned_version("doge_reason_distill", {"evaluation.instruct.max_samples": 10}) == planned_version(
        "doge_reason_distill"
    )


def test_spec_and_command_name_the_evaluation_entrypoint(tmp_path):
    spec = LaunchSpec("instruct", "instruct_eval", "tiny", "v1", {"doge_instruct": "m"}, {}, "/store", str(tmp_path),
                      module="doge_dagster.evaluation")  # fmt: skip
    assert LaunchSpec.read(spec.write(tmp_path / "spec.json")) == spec and spec.asset == "instruct_eval"
    command = accelerate_command("instruct", "spec.json", LaunchRecipe(accelerate_config="cpu"), module=spec.module)
    assert command[-5:] == ["-m", "doge_dagster.evaluation", "instruct", "--spec", "spec.json"]
    assert accelerate_command("sft", "s.json", LaunchRecipe(accelerate_config="cpu"))[-5:-3] == [
        "-m",
        "doge_dagster.training",
    ]


def test_definitions_hold_gated_evaluation_assets():
    import dagster as dg

    from doge_dagster.definitions import defs

    expected = {"base": {"scores_valid"}, "instruct": {"scores_valid", "no_regression"},
                "reason": {"scores_valid", "no_regression", "format_rate"}}  # fmt: skip
    for report in CHAIN.reports:
        stage, name = report.name, report.asset
        key = dg.AssetKey(name)
        assets_def = defs.get_assets_def(key)
        assert {dep.to_user_string() for dep in assets_def.asset_deps[key]} == set(NODES[name].upstream)
        assert assets_def.group_names_by_key[key] == "evaluation" and assets_def.partitions_def is not None
        specs = list(assets_def.check_specs)
        assert {spec.name for spec in specs} == expected[stage] and all(spec.blocking for spec in specs)
    distill = dg.AssetKey("doge_reason_distill")
    assert dg.AssetKey("instruct_eval") in defs.get_assets_def(distill).asset_deps[distill]
    assert defs.resolve_job_def("evaluation") is not None


# -- the runner: settings, fingerprint, model view ---------------------------------------------------------------
def test_settings_follow_the_recipe():
    from doge_dagster.data.mixing import DEFAULT_IDENTITY_PROMPT, DEFAULT_THINKING_PROMPT
    from doge_dagster.evaluation.runner import settings_for

    recipe = load_recipe("tiny")
    base, instruct, reason = (settings_for(CHAIN.report(name), recipe) for name in ("base", "instruct", "reason"))
    assert base.system_prompt is None and not base.use_chat_template and base.max_samples == 50
    assert instruct.system_prompt == DEFAULT_IDENTITY_PROMPT and instruct.use_chat_template
    assert reason.system_prompt == DEFAULT_THINKING_PROMPT and reason.tasks == (
        "custom|arithmetic_gen|0|0",
        "custom|arithmetic_think|0|0",
    )
    assert [report.compares_with for report in CHAIN.reports] == [None, "base", "instruct"]


def tiny_model(folder: Path, seed: int) -> Path:
    """A random 2-layer Doge with a small trained BPE and the chat end id in its generation config."""
    import torch
    from transformers import DogeConfig, DogeForCausalLM, GenerationConfig

    from doge_dagster.data.generated import generate_rows
    from doge_dagster.data.tokenizer import train_bpe
    from doge_dagster.recipes import TokenizerRecipe

    texts = [row["text"] for row in generate_rows("fineweb-edu", 200, 1)]
    tokenizer = train_bpe(texts, TokenizerRecipe(source="train_bpe", vocab_size=400, min_frequency=1))
    torch.manual_seed(seed)
    config = DogeConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=1, max_position_embeddings=256, keep_window_size=128, router_aux_loss_coef=0.0,
                        bos_token_id=0, eos_token_id=1, pad_token_id=2)  # fmt: skip
    DogeForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    GenerationConfig(
        bos_token_id=0, eos_token_id=[1, tokenizer.convert_tokens_to_ids("<|im_end|>")], pad_token_id=2
    ).save_pretrained(str(folder))
    return folder


def test_model_view_links_the_weights_and_sets_the_chat_end(tmp_path):
    from doge_dagster.artifacts import ArtifactStore
    from doge_dagster.evaluation.runner import model_view, weights_fingerprint

    store = ArtifactStore(str(tmp_path / "store"))
    staged = store.staging_dir("doge_instruct", "tiny", "v1")
    tiny_model(staged, seed=1)
    manifest = store.publish("doge_instruct", "tiny", "v1", staged)
    model_dir = store.local_path(manifest)
    before = sorted(path.name for path in model_dir.iterdir())
    fingerprint = weights_fingerprint(model_dir, manifest)
    assert fingerprint == weights_fingerprint(model_dir)  # from the manifest's hashes or from the files alike
    view = model_view(model_dir, tmp_path / "work", fingerprint, chat=True)
    assert view.name == f"{fingerprint[:16]}-chat" and (view / "model.safetensors").is_symlink()
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(view)).eos_token == "<|im_end|>"
    assert (
        AutoTokenizer.from_pretrained(str(model_view(model_dir, tmp_path / "work", fingerprint, chat=False))).eos_token
        != "<|im_end|>"
    )
    assert sorted(path.name for path in model_dir.iterdir()) == before  # nothing written into the artifact


@pytest.mark.slow
def test_reevaluating_a_changed_model_gives_fresh_scores(tmp_path):
    """lighteval keys its prediction cache by model config and path, not weights: the same
    folder with new weights must not get the old predictions."""
    os.environ.update(OFFLINE)
    from doge_dagster.evaluation.runner import EvalSettings, evaluate

    model_dir = tiny_model(tmp_path / "model", seed=1)
    before = sorted(path.name for path in model_dir.iterdir())
    settings = EvalSettings(tasks=("custom|arithmetic_mc|0|0",), max_samples=12)
    work = tmp_path / "work"

    def logprobs(outcome):
        return [value for row in outcome.details["custom|arithmetic_mc|0"] for value in row["logprobs"]]

    first = evaluate(model_dir, work, settings)
    tiny_model(model_dir, seed=2)  # retrained in place: same path, same config, new weights
    second = evaluate(model_dir, work, settings)
    fresh = evaluate(model_dir, tmp_path / "fresh-work", settings)
    assert second.fingerprint != first.fingerprint
    assert logprobs(second) != logprobs(first)
    assert logprobs(second) == pytest.approx(logprobs(fresh))
    assert second.scores[0].score == fresh.scores[0].score
    assert sorted(path.name for path in model_dir.iterdir()) == before  # lighteval's cache stayed out of the model


# -- the tiny chain through the CLI (the shared session chain materializes the evaluations too) ------------------
@dataclass
class PrebuiltChain:
    """A tiny chain already materialized (quick start) into ARTIFACT_ROOT with DAGSTER_HOME."""

    artifact_root: Path
    dagster_home: Path
    output: str = ""


@pytest.fixture(scope="session")
def eval_chain(request):
    """The session's tiny chain (`tiny_chain`, evaluations included), or a prebuilt one named by
    DOGE_TEST_EVAL_CHAIN=<dir with artifacts/ and home/> to iterate on these tests without rebuilding it."""
    prebuilt = os.environ.get("DOGE_TEST_EVAL_CHAIN")
    if prebuilt:
        folder = Path(prebuilt)
        log = folder / "log.txt"
        return PrebuiltChain(folder / "artifacts", folder / "home", log.read_text() if log.is_file() else "")
    return request.getfixturevalue("tiny_chain")


def step_durations(output: str) -> dict[str, str]:
    """`Finished execution of step "base_eval" in 1m40s.` -> {"base_eval": "1m40s"}."""
    return dict(re.findall(r'Finished execution of step "(\w+)" in ([\w.]+)\.', output))


@pytest.mark.slow
@pytest.mark.timeout(4800)
def test_tiny_chain_publishes_three_gated_reports(eval_chain):
    root = eval_chain.artifact_root
    durations = step_durations(eval_chain.output)
    reports_by_asset = {}
    for asset in EVAL_ASSETS:
        version = planned_version(asset)
        assert published_versions(root, asset) == [version], asset
        manifest = read_manifest(root, asset, version)
        metadata = manifest["metadata"]
        reports_by_asset[asset] = metadata
        folder = root / asset / "tiny" / version
        assert json.loads((folder / "results.json").read_text())["results"]
        assert (folder / "README.md").read_text().startswith(f"# {asset} (tiny)")
        for task in metadata["tasks"]:
            value = metadata[f"score/{task['key']}"]
            assert isinstance(value, float) and 0.0 <= value <= 1.0, (asset, task)
            details = folder / "details" / f"{task['lighteval_id'].replace('|', '_')}.jsonl"
            assert len(details.read_text().splitlines()) == 50, details
        assert all(passed for passed, _ in metadata["checks"].values()), (asset, metadata["checks"])
        assert not (root / asset / "tiny" / ".work" / version / "models").exists()  # view and cache removed
        print(f"{asset}: {metadata['scores']} | eval {metadata['eval_wall_time_s']}s in process "
              f"{metadata['wall_time_in_process_s']}s | step {durations.get(asset)}")  # fmt: skip
    assert set(reports_by_asset["base_eval"]["checks"]) == {"scores_valid"}
    instruct = reports_by_asset["instruct_eval"]
    assert {row["task"] for row in instruct["comparison"]} == {"custom|arithmetic_mc|0", "custom|arithmetic_gen|0"}
    assert [row["task"] for row in reports_by_asset["reason_eval"]["comparison"]] == ["custom|arithmetic_gen|0"]
    assert 0.0 <= reports_by_asset["reason_eval"]["format_rate"] <= 1.0
    # The post-trained models answer the arithmetic questions the base model only continues as text.
    base_gen = reports_by_asset["base_eval"]["scores"]["arithmetic_gen"]
    for asset in ("instruct_eval", "reason_eval"):
        assert reports_by_asset[asset]["scores"]["arithmetic_gen"] > base_gen + 0.3, (asset, reports_by_asset[asset]["scores"], base_gen)
    for model in ("doge_base", "doge_instruct", "doge_reason"):  # nothing written into the evaluated models
        model_manifest = read_manifest(root, model, planned_version(model))
        on_disk = sorted(p.relative_to(root / model / "tiny" / model_manifest["version"]).as_posix()
                         for p in (root / model / "tiny" / model_manifest["version"]).rglob("*") if p.is_file())  # fmt: skip
        assert on_disk == sorted([entry["path"] for entry in model_manifest["files"]] + ["manifest.json"])


@pytest.mark.slow
@pytest.mark.timeout(4800)
def test_rematerializing_the_evaluations_is_a_cached_skip(eval_chain, tmp_path):
    root = eval_chain.artifact_root
    created = {asset: read_manifest(root, asset, planned_version(asset))["created"] for asset in EVAL_ASSETS}
    result = dg_materialize(",".join(EVAL_ASSETS), dagster_env(tmp_path / "home", root), timeout=600)
    assert result["success"], result["failures"]
    assert result["launches"] == 0
    assert {asset: read_manifest(root, asset, planned_version(asset))["created"] for asset in EVAL_ASSETS} == created


@pytest.mark.slow
@pytest.mark.timeout(4800)
def test_damaged_reason_model_fails_its_gate_on_fresh_scores(eval_chain, tmp_path):
    """A recipe whose GRPO learning rate is 100x the shipped one: the model collapses (arithmetic_gen 0.0
    against the instruct model's 0.94 when measured). GRPO's own `reward_improves` check catches it first (its
    rewards fall), so reason_eval is not launched in that run; evaluated anyway in a later run
    (`doge/allow-failed-gates=true`), reason_eval scores the new weights and its own blocking gate fails, naming
    the task and the delta. The collapse is total, so it holds on any CPU: a damage near the gate's tolerance
    would not (a DPO learning rate 50x too high left the instruct model as good as a weak base model on one
    machine, and 3x that failed DPO's own loss check)."""
    edits = {"stages.grpo.training.learning_rate": 1.0e-3}
    root = tmp_path / "artifacts"
    kept = (*DATA_ASSETS, "doge_base", "doge_instruct_sft", "doge_instruct", "doge_reason_distill")
    copy_artifacts(eval_chain.artifact_root, root, (*kept, "base_eval", "instruct_eval"))
    recipes = write_tiny_recipe(tmp_path / "recipes", edits)
    env = dagster_env(tmp_path / "home", root, recipes)
    result = dg_materialize("doge_reason,reason_eval", env, timeout=2400)
    assert not result["success"]
    assert result["launches"] == 1, result["failures"]  # doge_reason only: its failed check blocks reason_eval
    reason = read_manifest(root, "doge_reason", planned_version("doge_reason", edits))["metadata"]
    assert reason["checks"]["reward_improves"][0] is False, reason["checks"]["reward_improves"]
    result = dg_materialize("reason_eval", env, timeout=2400, tags={"doge/allow-failed-gates": "true"})
    assert not result["success"] and result["launches"] == 1, result["failures"]
    version = planned_version("reason_eval", edits)
    assert version != planned_version("reason_eval")
    metadata = read_manifest(root, "reason_eval", version)["metadata"]
    assert metadata["gate_override"][0]["asset"] == "doge_reason"
    healthy = read_manifest(eval_chain.artifact_root, "reason_eval", planned_version("reason_eval"))["metadata"]
    assert (
        metadata["weights_sha256"] != healthy["weights_sha256"] and metadata["scores"] != healthy["scores"]
    )  # fresh scores
    passed, detail = metadata["checks"]["no_regression"]
    assert not passed
    assert re.search(r"custom\|arithmetic_gen\|0 \(\w+\): [\d.]+ -> [\d.]+, delta -[\d.]+ beyond tolerance", detail), detail
