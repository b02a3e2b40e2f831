"""Throughput, MFU and cost reporting; `doge-dagster plan`; the refusal of launches that cannot finish in time."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
from helpers import dagster_env, dg_materialize, planned_version, tiny_recipe, write_tiny_recipe

from assets.launching import check_time_budget
from assets.versioned import BuildContext
from doge_dagster.artifacts import ArtifactStore
from doge_dagster.budget import ALLOW_OVER_TIME_LIMIT_TAG, MEASURED, estimate_stage, stage_run_metrics
from doge_dagster.cli import main
from doge_dagster.plan import plan_versions
from doge_dagster.recipe_sections import WITH_SETTINGS
from doge_dagster.recipes import apply_overrides, load_recipe, parse_recipe
from doge_dagster.throughput import (
    find_device,
    flops_per_token,
    model_flops_per_token,
    peak_flops,
    run_throughput,
    slurm_time,
    time_limit_seconds,
)

TINY_TOKENS = 900 * 12 * 160  # tiny's pretraining: max_steps x per-device batch x max_length, one process
SETTINGS = {
    "stages.pretrain.launch.device": "H100",
    "stages.pretrain.launch.peak_tflops": 500,
    "stages.pretrain.launch.gpu_hour_price": 2.5,
    "stages.pretrain.launch.expected_tokens_per_second": 1234,
}


# -- the device table and MFU ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "key", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756),
        ("NVIDIA H100 NVL", "H100 NVL", 835),
        ("NVIDIA H200", "H200", 989),
        ("NVIDIA A100-SXM4-40GB", "A100", 312),
        ("NVIDIA A100-SXM4-80GB", "A100", 312),
        ("NVIDIA A100 80GB PCIe", "A100", 312),
        ("NVIDIA L40S", "L40S", 362),
        ("NVIDIA L40", "L40", 181),
        ("NVIDIA L4", "L4", 121),
        ("NVIDIA A10", "A10", 125),
        ("NVIDIA GeForce RTX 4090", "RTX 4090", 165.2),
    ],
)
def test_peak_table_covers_the_common_gpus(name, key, tflops):
    device = find_device(name)
    assert device is not None and device.key == key and device.peak_bf16_tflops == tflops
    peak, source = peak_flops(name)
    assert peak == tflops * 1e12 and ("datasheet" in source or "whitepaper" in source)


def test_unknown_devices_and_cpus_say_what_to_set():
    assert find_device("NVIDIA A10G") is None  # not the A10: no silent guess
    peak, note = peak_flops("NVIDIA A10G")
    assert peak is None and "unknown device 'NVIDIA A10G': set launch.peak_tflops" in note
    peak, note = peak_flops("cpu")
    assert peak is None and note == "MFU is not computed for CPUs unless launch.peak_tflops is given"
    assert peak_flops("cpu", 2.0)[0] == 2e12 and peak_flops("NVIDIA H200", 500)[0] == 500e12


def test_flops_per_token_reproduces_the_recorded_h200_mfu():
    # bench/RESULTS.md: Doge-160M 60,356 tokens/s at 8.4% MFU, Doge-20M 350,812 at 4.6% (tied embeddings)
    assert flops_per_token(152_676_168, 32768, 768, 24, 2048) == 6 * 152_676_168 + 12 * 24 * 768 * 2048
    assert round(flops_per_token(152_676_168, 32768, 768, 24, 2048) * 60_356 / 989e12, 3) == 0.084
    assert round(flops_per_token(13_118_728, 32768, 256, 8, 2048) * 350_812 / 989e12, 3) == 0.046
    # untied: the input embedding is a lookup (no FLOPs); the output projection still counts
    assert flops_per_token(1000 + 2 * 50 * 4, 50, 4, 1, 8, tied_embeddings=False) == 6 * (1000 + 200) + 12 * 4 * 8


def test_flops_per_token_of_the_model_doge_base_builds():
    import torch
    from transformers import DogeConfig, DogeForCausalLM

    with torch.device("meta"):
        model = DogeForCausalLM(DogeConfig(**load_recipe("160M").model.model_dump(), router_aux_loss_coef=0.0))
    assert sum(parameter.numel() for parameter in model.parameters()) == 152_676_168
    assert model_flops_per_token(model, 2048) == flops_per_token(152_676_168, 32768, 768, 24, 2048)


def test_a_gpu_run_reports_rates_mfu_gpu_hours_and_cost():
    report = run_throughput(
        device_name="NVIDIA H200", processes=8, tokens_per_second=8 * 59_504.0, wall_time_s=3600,
        flops_per_token=1.369e9, gpu_hour_price=3.0,
    )  # fmt: skip
    assert report["tokens_per_second_per_process"] == 59_504.0
    assert report["mfu"] == round(1.369e9 * 59_504 / 989e12, 4) and report["peak_tflops"] == 989
    assert "H200" in report["peak_tflops_source"] and "mfu_note" not in report
    assert report["gpu_hours"] == 8.0 and report["estimated_cost"] == 24.0
    assert "launch.gpu_hour_price" in report["estimated_cost_basis"]
    unpriced = run_throughput(
        device_name="Mystery GPU", processes=2, tokens_per_second=10.0, wall_time_s=1800, flops_per_token=1.0
    )
    assert "mfu" not in unpriced and "unknown device 'Mystery GPU': set launch.peak_tflops" in unpriced["mfu_note"]
    assert unpriced["gpu_hours"] == 1.0 and "set launch.gpu_hour_price" in unpriced["cost_note"]


def test_a_cpu_run_reports_no_mfu_unless_a_peak_is_given():
    report = run_throughput(
        device_name="cpu", processes=2, tokens_per_second=100.0, wall_time_s=360, flops_per_token=1e6
    )
    assert report["mfu_note"] == "MFU is not computed for CPUs unless launch.peak_tflops is given"
    assert report["gpu_hours"] == 0.0 and report["cpu_process_hours"] == 0.2
    given = run_throughput(
        device_name="cpu", processes=1, tokens_per_second=100.0, wall_time_s=1, flops_per_token=1e6, peak_tflops=1.0
    )
    assert given["mfu"] == 1e-4 and given["peak_tflops_source"] == "launch.peak_tflops (1 TFLOP/s)"


def test_time_limits_in_and_out_of_slurm_format():
    assert time_limit_seconds("2-00:00:00") == 172_800 and time_limit_seconds("30") == 1800
    assert slurm_time(3601) == "01:01:00" and slurm_time(2 * 86400 + 59) == "2-00:01:00"


# -- settings never change versions, and survive overrides and launch specs --------------------------------------
def test_planning_settings_do_not_change_artifact_versions():
    base = plan_versions(load_recipe("160M"), fingerprint=lambda ref, seed: "fixed")
    edited = apply_overrides(load_recipe("160M"), SETTINGS)
    assert plan_versions(edited, fingerprint=lambda ref, seed: "fixed") == base
    launch = edited.stages.pretrain.launch
    assert (launch.device, launch.peak_tflops, launch.gpu_hour_price, launch.expected_tokens_per_second) == (
        "H100", 500, 2.5, 1234,
    )  # fmt: skip
    # an override of another field keeps them (the round trip dumps them), and so does the launch spec's recipe
    again = apply_overrides(edited, {"stages.pretrain.launch.time_limit": "3-00:00:00"})
    assert again.stages.pretrain.launch.peak_tflops == 500
    dumped = edited.model_dump(mode="json", context=WITH_SETTINGS)
    assert parse_recipe(dumped).stages.pretrain.launch.gpu_hour_price == 2.5
    assert "peak_tflops" not in json.dumps(edited.model_dump(mode="json"))


# -- estimates ---------------------------------------------------------------------------------------------------
def test_the_estimate_of_a_stage_with_a_known_rate():
    recipe = tiny_recipe({"stages.pretrain.launch.expected_tokens_per_second": 100,
                          "stages.pretrain.launch.time_limit": "00:10:00"})  # fmt: skip
    estimate = estimate_stage(recipe, "pretrain")
    assert estimate.tokens == TINY_TOKENS and estimate.steps == 900 and estimate.processes == 1
    assert estimate.device == "cpu" and estimate.wall_s == TINY_TOKENS / 100
    assert estimate.gpu_hours == pytest.approx(TINY_TOKENS / 100 / 3600)
    assert estimate.verdict == "DOES NOT FIT" and estimate.share == pytest.approx(TINY_TOKENS / 100 / 600)
    problem = estimate.over_limit_problem()
    for part in (
        "stages.pretrain", "4.8 h", "00:10:00", f"{TINY_TOKENS:,} tokens", "100 tokens/s",
        "stages.pretrain.launch.expected_tokens_per_second", f"at least {math.ceil(TINY_TOKENS / 100 / 600)} processes",
        "gradient_accumulation_steps", "time_limit to at least 06:00:00", f"{ALLOW_OVER_TIME_LIMIT_TAG}=true",
    ):  # fmt: skip
        assert part in problem, f"{part!r} missing from: {problem}"
    relaxed = estimate_stage(apply_overrides(recipe, {"stages.pretrain.launch.time_limit": "06:00:00"}), "pretrain")
    assert relaxed.verdict == "fits" and relaxed.over_limit_problem() is None


def test_no_rate_means_no_refusal_but_says_how_to_get_one():
    estimate = estimate_stage(tiny_recipe({"stages.pretrain.launch.time_limit": "00:00:01"}), "pretrain")
    assert estimate.rate is None and estimate.verdict == "unknown" and estimate.over_limit_problem() is None
    assert "stages.pretrain.launch.expected_tokens_per_second" in estimate.rate_source
    gpu = estimate_stage(load_recipe("160M"), "grpo")
    assert gpu.rate is None and "no measurement for Doge-160M's grpo stage on H200" in gpu.rate_source
    assert gpu.tokens is None and gpu.tokens_bound is None and gpu.verdict == "unknown"  # generation: no bound
    unknown = estimate_stage(load_recipe("160M"), "pretrain", device="NVIDIA H100 80GB HBM3")
    assert unknown.rate is None and "bench/bench_gpu.py --sizes 160M --trainer 2 --batch 8" in unknown.rate_source


def test_measured_rates_pick_the_model_device_and_batch_layout():
    estimate = estimate_stage(load_recipe("160M"), "pretrain")
    assert estimate.rate == 59_504 and estimate.processes == 8 and estimate.device == "H200"
    assert "bench/RESULTS.md" in estimate.rate_source
    seed_layout = apply_overrides(load_recipe("160M"), {
        "stages.pretrain.training.per_device_train_batch_size": 1,
        "stages.pretrain.training.gradient_accumulation_steps": 768,
        "stages.pretrain.launch": {"accelerate_config": "single_gpu", "gpus_per_node": 1, "device": "H200",
                                   "time_limit": "7-00:00:00"},
    })  # fmt: skip
    slow = estimate_stage(seed_layout, "pretrain")
    assert slow.rate == 16_183 and slow.verdict == "DOES NOT FIT" and slow.wall_s / 86400 == pytest.approx(27.0, 0.01)
    assert {(rate.model, rate.device) for rate in MEASURED} >= {("Doge-160M", "H200"), ("Doge-320M", "H200")}


# -- upper bounds for the stages whose tokens depend on their examples' lengths ---------------------------------
def test_seed_parameter_counts_are_what_the_model_builds():
    import torch
    from transformers import DogeConfig, DogeForCausalLM

    from doge_dagster.budget import SEED_PARAMETERS, SEED_SHAPES

    for name, (hidden, intermediate, layers, heads, kv_heads) in SEED_SHAPES.items():
        with torch.device("meta"):
            model = DogeForCausalLM(DogeConfig(vocab_size=32768, hidden_size=hidden, intermediate_size=intermediate,
                                               num_hidden_layers=layers, num_attention_heads=heads,
                                               num_key_value_heads=kv_heads, tie_word_embeddings=True))  # fmt: skip
        assert sum(parameter.numel() for parameter in model.parameters()) == SEED_PARAMETERS[name], name


def test_chat_stages_get_an_upper_bound_at_a_rate_derived_from_pretraining():
    from doge_dagster.budget import DPO_COST_PER_TOKEN, SEED_PARAMETERS

    recipe = load_recipe("160M")
    sft = estimate_stage(recipe, "sft")
    # every example at max_length, 2 epochs of the train split (990,000 of 1,000,000 rows), packed 2048-token rows
    assert sft.tokens is None and sft.tokens_bound == 2 * 990_000 * 2048 and sft.bounded
    assert sft.rate == 59_504 and sft.rate_source.startswith("derived: 59,504 tokens/s for pretraining Doge-160M")
    assert sft.wall_s == pytest.approx(sft.tokens_bound / (8 * 59_504)) and sft.verdict == "fits"
    dpo = estimate_stage(recipe, "dpo")  # two 1024-token sequences a pair; the reference forward adds a third
    assert dpo.tokens_bound == 2 * 58_800 * 2 * 1024
    assert dpo.rate == pytest.approx(59_504 / DPO_COST_PER_TOKEN) and "reference forward" in dpo.rate_source
    distill = estimate_stage(recipe, "distill")  # 4096-token rows: more attention FLOPs per token, same MFU
    longer = flops_per_token(SEED_PARAMETERS["Doge-160M"], 32768, 768, 24, 2048) / flops_per_token(
        SEED_PARAMETERS["Doge-160M"], 32768, 768, 24, 4096
    )
    assert distill.tokens_bound == 99_000 * 4096 and distill.rate == pytest.approx(59_504 * longer)
    assert 0.7 < longer < 0.8 and "4,096-token rows" in distill.rate_source


def test_a_bound_over_the_limit_warns_but_is_not_refused():
    seed_literal = apply_overrides(load_recipe("160M"), {
        "stages.sft.training.per_device_train_batch_size": 1,
        "stages.sft.training.gradient_accumulation_steps": 128,
        "stages.sft.launch": {"accelerate_config": "single_gpu", "gpus_per_node": 1, "device": "H200"},
    })  # fmt: skip
    estimate = estimate_stage(seed_literal, "sft")
    assert estimate.rate == 16_183 and estimate.verdict == "may not fit" and estimate.over_limit_problem() is None
    assert estimate.share == pytest.approx(2 * 990_000 * 2048 / 16_183 / 86_400)
    assert estimate.summary().startswith("stages.sft: at most 69.6 h")
    # a layout with no measured pretraining of the same tokens per micro-batch gets no derived rate
    odd = apply_overrides(seed_literal, {"stages.sft.training.per_device_train_batch_size": 2,
                                         "stages.sft.training.gradient_accumulation_steps": 64})  # fmt: skip
    assert estimate_stage(odd, "sft").rate is None


def test_the_last_run_on_the_same_device_wins_over_the_table(tmp_path):
    recipe = load_recipe("160M")
    store = ArtifactStore(str(tmp_path / "store"))
    spec = SimpleNamespace(name="pretrain", asset="doge_base", partition="160M", extra_stages="",
                           recipe=recipe.model_dump(mode="json", context=WITH_SETTINGS))  # fmt: skip
    config = SimpleNamespace(vocab_size=32768, hidden_size=768, num_hidden_layers=24, tie_word_embeddings=True)
    metrics = stage_run_metrics(spec, config, 152_676_168, 8 * 70_000.0, 3600.0, 8, "NVIDIA H200")
    staged = tmp_path / "staged"
    staged.mkdir()
    store.publish("doge_base", "160M", "0123456789abcdef", staged, {}, metrics)
    estimate = estimate_stage(recipe, "pretrain", store, "160M")
    assert estimate.rate == 70_000 and "the last run on NVIDIA H200" in estimate.rate_source
    # another device's run is not used
    assert estimate_stage(recipe, "pretrain", store, "160M", device="NVIDIA H100 PCIe").rate is None


def test_run_metrics_note_a_device_other_than_planned():
    recipe = load_recipe("20M")
    spec = SimpleNamespace(name="pretrain", asset="doge_base", partition="20M", extra_stages="",
                           recipe=recipe.model_dump(mode="json", context=WITH_SETTINGS))  # fmt: skip
    config = SimpleNamespace(vocab_size=32768, hidden_size=256, num_hidden_layers=8, tie_word_embeddings=True)
    metrics = stage_run_metrics(spec, config, 13_118_728, 300_000.0, 7200.0, 1, "NVIDIA A100-SXM4-80GB")
    assert metrics["gpu_hours"] == 2.0 and metrics["peak_tflops"] == 312 and 0 < metrics["mfu"] < 1
    assert "launch.device says H200" in metrics["device_note"]


# -- doge-dagster plan -------------------------------------------------------------------------------------------
def test_plan_prints_every_stage_against_its_limit(tmp_path, capsys):
    assert main(["plan", "--partition", "160M", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    pretrain = next(line for line in out.splitlines() if line.startswith("pretrain "))
    for part in ("37,748,736,000", "24,000", " 8 ", "H200", "476,032", "22.0 h", "176.2", "2-00:00:00", "fits (46%)"):
        assert part in pretrain, f"{part!r} missing from: {pretrain}"
    sft = next(line for line in out.splitlines() if line.startswith("sft "))
    for part in ("<= 4,055,040,000", "476,032", "<= 2.4 h", "<= 18.9", "fits (<= 10%)"):
        assert part in sft, f"{part!r} missing from: {sft}"
    assert "grpo: no measurement for Doge-160M's grpo stage on H200" in out


def test_plan_marks_a_stage_that_does_not_fit_and_exits_1(tmp_path, capsys):
    overrides = ["stages.pretrain.launch.time_limit='12:00:00'", "stages.pretrain.launch.gpu_hour_price=2"]
    code = main(["plan", "--partition", "160M", "--root", str(tmp_path), *(f"--override={item}" for item in overrides)])
    assert code == 1
    out = capsys.readouterr().out
    assert "<< DOES NOT FIT (184%) >>" in out and "cost" in out and "352.44" in out, out
    assert "raise stages.pretrain.launch.time_limit to at least 1-03:33:00" in out


# -- the refusal before launch -----------------------------------------------------------------------------------
def fake_context(tags: dict[str, str] | None = None):
    messages: list[tuple[str, str]] = []
    log = SimpleNamespace(info=lambda text: messages.append(("info", text)),
                          warning=lambda text: messages.append(("warning", text)))  # fmt: skip
    return SimpleNamespace(log=log, run=SimpleNamespace(tags=tags or {}), partition_key="tiny"), messages


def fake_build(recipe, tmp_path: Path) -> BuildContext:
    planned = plan_versions(recipe, nodes=["doge_base"])["doge_base"]
    return BuildContext(recipe, planned, Path(), {}, ArtifactStore(str(tmp_path / "store")), None)


def test_the_override_tag_launches_over_the_limit_with_a_warning(tmp_path):
    recipe = tiny_recipe({"stages.pretrain.launch.expected_tokens_per_second": 100})
    recipe = apply_overrides(recipe, {"stages.pretrain.launch.time_limit": "00:01:00"})
    compute = SimpleNamespace(backend="local")
    context, messages = fake_context()
    with pytest.raises(dg.Failure) as refused:
        check_time_budget(context, fake_build(recipe, tmp_path), compute, "pretrain")
    assert "exceeds stages.pretrain.launch.time_limit 00:01:00" in refused.value.description
    context, messages = fake_context({ALLOW_OVER_TIME_LIMIT_TAG: "true"})
    check_time_budget(context, fake_build(recipe, tmp_path), compute, "pretrain")
    [(level, text)] = messages
    assert level == "warning" and f"({ALLOW_OVER_TIME_LIMIT_TAG}=true)" in text and "4.8 h" in text
    context, messages = fake_context()
    check_time_budget(context, fake_build(tiny_recipe(), tmp_path), compute, "pretrain")  # no rate: a warning
    [(level, text)] = messages
    assert level == "warning" and "no time estimate" in text and "expected_tokens_per_second" in text


def test_materializing_a_stage_over_its_time_limit_fails_before_the_launch(tmp_path):
    """The real asset path on CPU: tiny's pretraining at an injected 100 tokens/s in a 1-minute limit is refused
    before any process starts, naming the numbers and the fixes. The upstream artifacts only need manifests."""
    root = tmp_path / "artifacts"
    store = ArtifactStore(str(root))
    for asset, metadata in (("tokenizer", {"vocab_size": 1500}), ("pretrain_mixture", {})):
        staged = tmp_path / f"staged-{asset}"
        staged.mkdir()
        store.publish(asset, "tiny", planned_version(asset), staged, {}, metadata)
    recipes = write_tiny_recipe(tmp_path / "recipes", {
        "stages.pretrain.launch.expected_tokens_per_second": 100, "stages.pretrain.launch.time_limit": "00:01:00",
    })  # fmt: skip
    result = dg_materialize("doge_base", dagster_env(tmp_path / "home", root, recipes))
    assert not result["success"]
    [failure] = result["failures"]
    text = failure["description"]
    for part in (f"{TINY_TOKENS:,} tokens", "100 tokens/s", "4.8 h", "00:01:00", "at least 288 processes",
                 "time_limit to at least 06:00:00", f"{ALLOW_OVER_TIME_LIMIT_TAG}=true"):  # fmt: skip
        assert part in text, f"{part!r} missing from: {text}"
    assert result["launches"] == 0, "the stage was launched despite its estimate"
    assert not (root / "doge_base").exists(), "a launch spec or work folder was written"
