"""Recipes: every file loads, the seed numbers are right, versions are stable, and errors say where and how to fix."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from doge_dagster.plan import plan_versions
from doge_dagster.recipes import (
    RECIPES_DIR,
    RecipeError,
    apply_overrides,
    available_recipes,
    content_version,
    load_recipe,
    parse_recipe,
)
from doge_dagster.registry import DATASETS

TINY = RECIPES_DIR / "tiny.yaml"
SIZES = ("20M", "60M", "160M", "320M")

# The SmallDoge guide's sizes: hidden, intermediate, layers, heads, kv heads, LR, steps, warmup = decay, grad accum
SEED_TABLE = {
    "20M": (256, 512, 8, 2, 1, 8e-3, 8_000, 800, 256),
    "60M": (512, 1024, 16, 4, 2, 6e-3, 16_000, 1_600, 512),
    "160M": (768, 1536, 24, 6, 3, 4e-3, 24_000, 2_400, 768),
    "320M": (1024, 2048, 32, 8, 4, 2e-3, 32_000, 3_200, 1024),
}
SFT_LR = {"20M": 8e-4, "60M": 6e-4, "160M": 4e-4, "320M": 2e-4}
PRETRAIN_MIXTURE = {"fineweb-edu": 0.7, "cosmopedia-v2": 0.2, "python-edu": 0.05, "finemath": 0.05}
BBH_TASKS = (  # noqa: SIM905 -- one string reads like the seed list
    "boolean_expressions causal_judgement date_understanding disambiguation_qa dyck_languages formal_fallacies "
    "geometric_shapes hyperbaton logical_deduction_five_objects logical_deduction_seven_objects "
    "logical_deduction_three_objects movie_recommendation multistep_arithmetic_two navigate object_counting "
    "penguins_in_a_table reasoning_about_colored_objects ruin_names salient_translation_error_detection snarks "
    "sports_understanding temporal_sequences tracking_shuffled_objects_five_objects "
    "tracking_shuffled_objects_seven_objects tracking_shuffled_objects_three_objects web_of_lies word_sorting"
).split()
BASE_TASKS = [
    "leaderboard|hellaswag|0|0",
    "custom|arc|5|0",
    "lighteval|piqa|5|0",
    "custom|mmlu|5|0",
    "leaderboard|winogrande|0|0",
    "custom|openbook_qa|0|0",
    "custom|trivia_qa|5|0",
]
INSTRUCT_TASKS = [
    "extended|ifeval|0|0",
    "leaderboard|hellaswag|0|0",
    "custom|arc|0|0",
    "lighteval|piqa|0|0",
    "custom|mmlu|0|0",
    *(f"harness|bbh:{task}|3|0" for task in BBH_TASKS),
]
REASON_TASKS = ["custom|aime24|0|0", "custom|math_500|0|0", "custom|gpqa:diamond|0|0"]


def tiny_raw() -> dict:
    return yaml.safe_load(TINY.read_text())


def write_recipe(tmp_path: Path, edit: Callable[[dict], None], name: str = "edited") -> Path:
    raw = tiny_raw()
    edit(raw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def recipe_error(tmp_path: Path, edit: Callable[[dict], None]) -> str:
    path = write_recipe(tmp_path, edit)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message, message
    return message


def problem_line(message: str, location: str) -> str:
    """The line of the error that reports `location` (a dotted field path)."""
    lines = [line.strip() for line in message.splitlines() if line.strip().startswith(f"{location}: ")]
    assert lines, f"no problem reported at {location!r} in:\n{message}"
    return lines[0]


# -- every recipe loads ------------------------------------------------------------------------------------
def test_the_family_is_tiny_then_sizes_in_order():
    assert available_recipes() == ["tiny", *SIZES]


@pytest.mark.parametrize("name", ["tiny", *SIZES])
def test_every_recipe_loads_by_name_and_by_path(name):
    recipe = load_recipe(name)
    assert recipe.name == name
    assert load_recipe(RECIPES_DIR / f"{name}.yaml") == recipe
    for stage in ("pretrain", "sft", "dpo", "distill", "grpo"):
        mixture = recipe.section(f"mixtures.{stage}")
        assert abs(sum(source.ratio for source in mixture.sources) - 1) < 1e-9
    assert recipe.model.pad_token_id != recipe.model.eos_token_id
    assert int(recipe.stages.grpo.training.get("num_generations", 8)) >= 2


def test_unknown_recipe_names_the_known_ones():
    with pytest.raises(RecipeError, match=r"'nope'.*known recipes: tiny, 20M, 60M, 160M, 320M"):
        load_recipe("nope")


# -- the seed numbers (the SmallDoge guide's) ---------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_architecture_matches_the_seed(size):
    hidden, intermediate, layers, heads, kv, *_ = SEED_TABLE[size]
    model = load_recipe(size).model
    assert (model.hidden_size, model.intermediate_size, model.num_hidden_layers) == (hidden, intermediate, layers)
    assert (model.num_attention_heads, model.num_key_value_heads) == (heads, kv)
    assert model.vocab_size == 32768
    assert model.tie_word_embeddings is True
    assert model.rope_theta == 1e4
    assert model.max_position_embeddings == 2048 and model.keep_window_size == 2048
    assert (model.bos_token_id, model.eos_token_id, model.pad_token_id) == (0, 1, 2)


@pytest.mark.parametrize("size", SIZES)
def test_pretraining_matches_the_seed(size):
    *_, lr, steps, warmup, accum = SEED_TABLE[size]
    recipe = load_recipe(size)
    training = recipe.stages.pretrain.training
    assert training["learning_rate"] == pytest.approx(lr)
    assert training["max_steps"] == steps
    assert training["warmup_steps"] == warmup == steps // 10
    assert training["lr_scheduler_kwargs"]["num_decay_steps"] == warmup
    # the seed's global batch (1 per device x `accum` accumulation on one GPU), laid out to fit the time limit
    launch = recipe.stages.pretrain.launch
    global_batch = training["per_device_train_batch_size"] * training["gradient_accumulation_steps"] * launch.processes
    assert global_batch == accum
    assert training["lr_scheduler_type"] == "warmup_stable_decay"
    assert (training["adam_beta1"], training["adam_beta2"], training["adam_epsilon"]) == (0.9, 0.95, 1e-8)
    assert training["weight_decay"] == 0.01 and training["max_grad_norm"] == 1.0
    assert training["bf16"] is True and training["seed"] == 233
    mixture = recipe.mixtures.pretrain
    assert mixture.max_length == 2048 and mixture.packing and mixture.seed == 233
    # the token budget is exactly what the trainer consumes: steps x global batch x 2048
    assert mixture.total_size == steps * accum * 2048
    assert {source.dataset: source.ratio for source in mixture.sources} == PRETRAIN_MIXTURE
    assert all(source.kind == "hub" for source in mixture.sources)


@pytest.mark.parametrize("size", SIZES)
def test_the_wsd_decay_ends_at_one_percent_of_the_peak(size):
    # the SmallDoge guide: min_lr 8e-5 for a peak of 8e-3
    assert load_recipe(size).stages.pretrain.training["lr_scheduler_kwargs"]["min_lr_ratio"] == 0.01


def test_the_160m_description_states_its_token_budget():
    recipe = load_recipe("160M")
    *_, steps, _, accum = SEED_TABLE["160M"]
    assert steps * accum * 2048 == 37_748_736_000 == recipe.mixtures.pretrain.total_size
    assert "37.7B tokens" in recipe.description and "24,000 steps x 768" in recipe.description
    assert "32B" not in recipe.description


@pytest.mark.parametrize("size", SIZES)
def test_pretraining_fits_its_time_limit_per_the_plan(size):
    """`doge-dagster plan`: the measured H200 rate puts each real recipe's pretraining well inside its limit."""
    from doge_dagster.budget import TIGHT_SHARE, estimate_stage

    estimate = estimate_stage(load_recipe(size), "pretrain")
    assert estimate.device == "H200" and estimate.rate is not None, estimate.rate_source
    assert estimate.verdict == "fits" and estimate.share <= TIGHT_SHARE, estimate.summary()
    assert (estimate.processes == 8) == (size in ("160M", "320M"))


def test_pretrain_datasets_point_at_the_seed_hub_configs():
    assert (DATASETS["fineweb-edu"].hub_id, DATASETS["fineweb-edu"].config) == (
        "HuggingFaceTB/smollm-corpus",
        "fineweb-edu-dedup",
    )
    assert (DATASETS["cosmopedia-v2"].hub_id, DATASETS["cosmopedia-v2"].config) == (
        "HuggingFaceTB/smollm-corpus",
        "cosmopedia-v2",
    )
    assert (DATASETS["python-edu"].hub_id, DATASETS["python-edu"].config) == (
        "HuggingFaceTB/smollm-corpus",
        "python-edu",
    )
    assert (DATASETS["finemath"].hub_id, DATASETS["finemath"].config) == ("HuggingFaceTB/finemath", "finemath-4plus")
    assert (DATASETS["ultrafeedback"].split, DATASETS["ultrafeedback"].test_split) == ("train_prefs", "test_prefs")
    assert DATASETS["smoltalk"].hub_id == "HuggingFaceTB/smoltalk"
    assert DATASETS["openthoughts"].hub_id == "open-thoughts/OpenThoughts-114k"
    assert DATASETS["openr1-math"].hub_id == "open-r1/OpenR1-Math-220k"


def global_batch(recipe, stage: str) -> int:
    section = getattr(recipe.stages, stage)
    training = section.training
    processes = section.launch.gpus_per_node * section.launch.nodes
    return training["per_device_train_batch_size"] * training["gradient_accumulation_steps"] * processes


@pytest.mark.parametrize("size", SIZES)
def test_post_training_matches_the_seed(size):
    recipe = load_recipe(size)
    sft, dpo = recipe.stages.sft.training, recipe.stages.dpo.training
    assert [source.dataset for source in recipe.mixtures.sft.sources] == ["smoltalk"]
    assert recipe.mixtures.sft.max_length == 2048
    assert sft["learning_rate"] == pytest.approx(SFT_LR[size])
    assert sft["num_train_epochs"] == 2 and sft["packing"] is True
    # the seed's global batches (128 SFT rows, 64 DPO pairs, 128 distillation rows per optimizer step), whatever
    # the per-device split
    assert global_batch(recipe, "sft") == 128 and global_batch(recipe, "dpo") == 64
    assert global_batch(recipe, "distill") == 128
    assert sft["lr_scheduler_type"] == "cosine_with_min_lr" and sft["lr_scheduler_kwargs"] == {"min_lr_rate": 0.1}
    assert sft["warmup_steps"] == 0.1  # the seed's warmup_ratio 0.1
    assert [source.dataset for source in recipe.mixtures.dpo.sources] == ["ultrafeedback"]
    assert recipe.mixtures.dpo.max_length == 1024
    assert dpo["beta"] == 0.1 and dpo["loss_type"] == "sigmoid" and dpo["num_train_epochs"] == 2
    assert dpo["learning_rate"] == pytest.approx(SFT_LR[size] / 10)
    assert [source.dataset for source in recipe.mixtures.distill.sources] == ["openthoughts"]
    assert recipe.mixtures.distill.max_length == 4096 and recipe.mixtures.distill.formatting == "thinking"
    assert [source.dataset for source in recipe.mixtures.grpo.sources] == ["openr1-math"]
    grpo = recipe.stages.grpo
    assert recipe.mixtures.grpo.max_length == 512 and grpo.training["max_completion_length"] == 1024
    assert grpo.training["num_generations"] >= 2 and set(grpo.rewards) == {"accuracy", "format"}


# The guide's data seeds: 233 for pretraining, 42 for the instruct mixtures, 123 for the reasoning ones; the
# instruct and reasoning mixtures are built unpacked (the SFT trainers' own `packing` is a training argument).
MIXTURE_SEEDS = {"pretrain": 233, "sft": 42, "dpo": 42, "distill": 123, "grpo": 123}


@pytest.mark.parametrize("size", SIZES)
def test_mixture_seeds_and_packing_match_the_guide(size):
    mixtures = load_recipe(size).mixtures
    assert {kind: getattr(mixtures, kind).seed for kind in MIXTURE_SEEDS} == MIXTURE_SEEDS
    assert mixtures.pretrain.packing is True
    assert mixtures.sft.packing is False and mixtures.distill.packing is False


@pytest.mark.parametrize("size", SIZES)
def test_evaluation_task_lists_match_the_seed(size):
    evaluation = load_recipe(size).evaluation
    assert evaluation.base.tasks == BASE_TASKS and not evaluation.base.use_chat_template
    assert evaluation.instruct.tasks == INSTRUCT_TASKS and evaluation.instruct.use_chat_template
    assert (
        len([task for task in evaluation.instruct.tasks if task.startswith("harness|bbh:")])
        == 27
        == len(set(BBH_TASKS))
    )
    assert evaluation.reason.tasks == REASON_TASKS and evaluation.reason.use_chat_template


def test_tiny_runs_offline_on_generated_data():
    recipe = load_recipe("tiny")
    assert recipe.tokenizer.source == "train_bpe"
    for stage in ("pretrain", "sft", "dpo", "distill", "grpo"):
        assert all(source.kind == "generated" for source in recipe.section(f"mixtures.{stage}").sources)
    assert {source.dataset: source.ratio for source in recipe.mixtures.pretrain.sources} == PRETRAIN_MIXTURE


# -- versions ------------------------------------------------------------------------------------------------
def _reverse_keys(value):
    if isinstance(value, dict):
        return {key: _reverse_keys(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [_reverse_keys(item) for item in value]
    return value


def _fingerprint(ref, seed) -> str:
    return f"{ref.dataset}:{ref.num_rows}:{seed}"


def test_content_version_ignores_key_order():
    raw = tiny_raw()
    shuffled = _reverse_keys(copy.deepcopy(raw))
    assert list(shuffled) != list(raw)
    first, second = parse_recipe(raw), parse_recipe(shuffled)
    assert content_version(first) == content_version(second)
    for section in ("tokenizer", "mixtures.pretrain", "stages.pretrain", "stages.grpo", "evaluation.reason"):
        assert content_version(first.section(section)) == content_version(second.section(section))
    # sections nested in lists (as in Dagster code versions) too: dicts inside must not follow insertion order
    assert content_version([[first.stages], {"a": first.tokenizer}]) == content_version(
        [[second.stages], {"a": second.tokenizer}]
    )
    planned = {name: plan.version for name, plan in plan_versions(first, _fingerprint).items()}
    assert planned == {name: plan.version for name, plan in plan_versions(second, _fingerprint).items()}


def test_content_version_ignores_yaml_formatting(tmp_path):
    text = TINY.read_text()
    block = tmp_path / "block.yaml"
    block.write_text(yaml.safe_dump(yaml.safe_load(text), default_flow_style=False, indent=4, sort_keys=True))
    flow = tmp_path / "flow.yaml"
    flow.write_text("# a comment\n" + yaml.safe_dump(yaml.safe_load(text), default_flow_style=True, width=60))
    respelled = tmp_path / "respelled.yaml"
    respelled.write_text(
        text.replace("learning_rate: 3.0e-3", "learning_rate: 0.003")
        .replace("name: tiny", "name: 'tiny'   # quoted")
        .replace("total_size: 600000", "total_size: +600000   # the same number")
    )
    versions = {content_version(load_recipe(path)) for path in (TINY, block, flow, respelled)}
    assert len(versions) == 1


def test_spelling_out_a_default_keeps_the_version(tmp_path):
    explicit = write_recipe(tmp_path, lambda raw: raw["mixtures"]["sft"].update(seed=233, shuffle_buffer=10_000))
    assert content_version(load_recipe(explicit)) == content_version(load_recipe(TINY))


def test_a_value_change_changes_the_version_of_that_section_and_its_downstream_only():
    base = parse_recipe(tiny_raw())
    raw = tiny_raw()
    raw["mixtures"]["pretrain"]["total_size"] += 1
    changed = parse_recipe(raw)
    assert content_version(changed) != content_version(base)
    assert content_version(changed.mixtures.pretrain) != content_version(base.mixtures.pretrain)
    assert content_version(changed.mixtures.sft) == content_version(base.mixtures.sft)
    before, after = plan_versions(base, _fingerprint), plan_versions(changed, _fingerprint)
    assert after["pretrain_mixture"].version != before["pretrain_mixture"].version
    for name in ("tokenizer", "sft_mixture", "dpo_mixture", "distill_mixture", "grpo_mixture"):
        assert after[name].version == before[name].version, name

    raw = tiny_raw()
    raw["tokenizer"]["vocab_size"] = 4096
    retokenized = plan_versions(parse_recipe(raw), _fingerprint)
    for name in ("tokenizer", "pretrain_mixture", "sft_mixture", "dpo_mixture", "distill_mixture", "grpo_mixture"):
        assert retokenized[name].version != before[name].version, name
    assert retokenized["sft_mixture"].upstream["tokenizer"] == retokenized["tokenizer"].version

    raw = tiny_raw()
    raw["stages"]["pretrain"]["training"]["learning_rate"] = 1e-3
    assert content_version(parse_recipe(raw).stages.pretrain) != content_version(base.stages.pretrain)


def test_source_data_version_flows_into_the_plan():
    recipe = parse_recipe(tiny_raw())
    plain = plan_versions(recipe, _fingerprint)
    other = plan_versions(
        recipe, lambda ref, seed: _fingerprint(ref, seed) + ("x" if ref.dataset == "smoltalk" else "")
    )
    assert other["sft_mixture"].version != plain["sft_mixture"].version
    assert other["tokenizer"].version != plain["tokenizer"].version  # the BPE trains on every source
    assert plain["sft_mixture"].upstream["source_smoltalk"] == "smoltalk:6000:233"


# -- validation errors: file, dotted field path, fix ---------------------------------------------------------
def test_malformed_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\ntokenizer:\n  source: [train_bpe\nmixtures: {}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message and "malformed YAML" in message and "line" in message


def test_a_recipe_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- name: tiny\n")
    with pytest.raises(RecipeError, match=r"list.yaml: a recipe must be a mapping of sections, got list"):
        load_recipe(path)


def test_unknown_field_names_its_path_and_the_allowed_fields(tmp_path):
    message = recipe_error(tmp_path, lambda raw: raw["mixtures"]["pretrain"].update(total_tokens=5))
    line = problem_line(message, "mixtures.pretrain.total_tokens")
    assert "unknown field" in line
    allowed = line.split("allowed here:")[1]
    for field in ("sources", "total_size", "max_length", "packing", "seed", "test_size", "ratio_tolerance"):
        assert field in allowed


def test_unknown_field_inside_a_list_item_and_deep_sections(tmp_path):
    def edit(raw):
        raw["mixtures"]["pretrain"]["sources"][1]["weight"] = 0.2
        raw["stages"]["pretrain"]["launch"]["gpus"] = 8
        raw["mixture"] = {}

    message = recipe_error(tmp_path, edit)
    line = problem_line(message, "mixtures.pretrain.sources.1.weight")
    assert all(field in line for field in ("dataset", "ratio", "kind", "path", "revision", "num_rows"))
    assert "gpus_per_node" in problem_line(message, "stages.pretrain.launch.gpus")
    assert "mixtures" in problem_line(message, "mixture")
    assert "3 problem(s)" in message


def test_missing_section_is_named(tmp_path):
    message = recipe_error(tmp_path, lambda raw: raw.pop("model"))
    assert "required field is missing" in problem_line(message, "model")


def test_ratios_must_sum_to_one(tmp_path):
    message = recipe_error(tmp_path, lambda raw: raw["mixtures"]["pretrain"]["sources"][3].update(ratio=0.04))
    line = problem_line(message, "mixtures.pretrain")
    assert "sum to 0.99" in line and "must sum to 1" in line


@pytest.mark.parametrize("size", [0, -5])
def test_total_size_must_be_positive(tmp_path, size):
    message = recipe_error(tmp_path, lambda raw: raw["mixtures"]["sft"].update(total_size=size))
    assert "greater than 0" in problem_line(message, "mixtures.sft.total_size")


def test_unknown_dataset_lists_the_known_ones(tmp_path):
    message = recipe_error(tmp_path, lambda raw: raw["mixtures"]["pretrain"]["sources"][0].update(dataset="fineweb"))
    line = problem_line(message, "mixtures.pretrain.sources.0.dataset")
    assert "unknown dataset 'fineweb'" in line
    assert all(name in line for name in DATASETS)


def test_a_mixture_takes_only_datasets_of_its_kind(tmp_path):
    message = recipe_error(tmp_path, lambda raw: raw["mixtures"]["pretrain"]["sources"][1].update(dataset="smoltalk"))
    assert "mixtures.pretrain.sources.1.dataset" in message
    assert "'smoltalk' holds conversation rows" in message and "needs text datasets" in message

    message = recipe_error(tmp_path, lambda raw: raw["mixtures"]["grpo"]["sources"][0].update(dataset="openthoughts"))
    assert "mixtures.grpo.sources.0.dataset" in message and "math_problem" in message


def test_source_kind_needs_its_fields(tmp_path):
    message = recipe_error(
        tmp_path, lambda raw: raw["mixtures"]["sft"]["sources"][0].update(kind="local", num_rows=None)
    )
    assert "needs `path`" in problem_line(message, "mixtures.sft.sources.0")


@pytest.mark.parametrize("generations", [1, 0])
def test_grpo_needs_two_generations(tmp_path, generations):
    message = recipe_error(tmp_path, lambda raw: raw["stages"]["grpo"]["training"].update(num_generations=generations))
    assert "training.num_generations must be at least 2" in problem_line(message, "stages.grpo")


def test_pad_must_differ_from_eos(tmp_path):
    message = recipe_error(tmp_path, lambda raw: raw["model"].update(pad_token_id=1))
    assert "pad_token_id must differ from eos_token_id" in problem_line(message, "model")


def test_bad_task_string_is_named(tmp_path):
    message = recipe_error(tmp_path, lambda raw: raw["evaluation"]["base"].update(tasks=["piqa"]))
    assert "suite|task|fewshot|truncate" in problem_line(message, "evaluation.base.tasks")


# -- legacy names --------------------------------------------------------------------------------------------
def test_warmup_ratio_becomes_warmup_steps(tmp_path):
    def edit(raw):
        training = raw["stages"]["sft"]["training"]
        training.pop("warmup_steps")
        training["warmup_ratio"] = 0.1

    recipe = load_recipe(write_recipe(tmp_path, edit))
    assert recipe.stages.sft.training["warmup_steps"] == 0.1
    assert "warmup_ratio" not in recipe.stages.sft.training
    assert content_version(recipe.stages.sft) == content_version(load_recipe(TINY).stages.sft)


def test_warmup_ratio_and_steps_together_are_rejected(tmp_path):
    message = recipe_error(tmp_path, lambda raw: raw["stages"]["sft"]["training"].update(warmup_ratio=0.1))
    assert "keep only `warmup_steps`" in problem_line(message, "stages.sft.training")


def test_max_seq_length_becomes_max_length(tmp_path):
    recipe = load_recipe(
        write_recipe(tmp_path, lambda raw: raw["stages"]["sft"]["training"].update(max_seq_length=512))
    )
    assert recipe.stages.sft.training["max_length"] == 512
    assert "max_seq_length" not in recipe.stages.sft.training


def test_overwrite_output_dir_is_rejected_with_a_hint(tmp_path):
    message = recipe_error(
        tmp_path, lambda raw: raw["stages"]["pretrain"]["training"].update(overwrite_output_dir=True)
    )
    line = problem_line(message, "stages.pretrain.training")
    assert "`overwrite_output_dir` is no longer supported" in line
    assert "remove it" in line and "artifact store" in line


def test_parse_recipe_names_its_source():
    raw = tiny_raw()
    raw["mixtures"]["dpo"]["max_length"] = -1
    with pytest.raises(RecipeError) as info:
        parse_recipe(raw, source="from-the-ui.yaml")
    assert str(info.value).startswith("from-the-ui.yaml: invalid recipe")
    assert "greater than 0" in problem_line(str(info.value), "mixtures.dpo.max_length")


@pytest.mark.parametrize("reference", ["doge_base:latest", "doge_base:v1", "doge_base:0123"])
def test_continued_pretraining_names_a_published_base_version(reference):
    with pytest.raises(RecipeError) as info:
        apply_overrides(load_recipe("tiny"), {"stages.pretrain.init_from": reference})
    message = str(info.value)
    assert "stages.pretrain.init_from" in message and "doge_base:<16 hex digits>" in message, message
    assert "doge-dagster versions" in message


@pytest.mark.parametrize("reference", ["doge_base:0123456789abcdef", "SmallDoge/Doge-20M", "/data/checkpoints/base"])
def test_continued_pretraining_accepts_versions_hub_ids_and_folders(reference, monkeypatch):
    from doge_dagster import hub_models

    # The Hub itself is out of reach here; tests/test_init_from_hub.py resolves ids through a real Hub cache.
    monkeypatch.setattr(hub_models, "hub_commit", lambda repo_id, revision=None, field="": "c" * 40)
    recipe = apply_overrides(load_recipe("tiny"), {"stages.pretrain.init_from": reference})
    assert recipe.stages.pretrain.init_from == reference
    # A published base version is an upstream artifact: it goes into the continued model's lineage; a Hub
    # checkpoint goes in as the commit its id resolves to.
    upstream = plan_versions(recipe, _fingerprint, nodes=["doge_base"])["doge_base"].upstream
    assert upstream.get("doge_base") == ("0123456789abcdef" if reference.startswith("doge_base:") else None)
    assert upstream.get("hub_model:SmallDoge/Doge-20M") == ("c" * 40 if reference == "SmallDoge/Doge-20M" else None)
    assert (
        "doge_base" not in plan_versions(load_recipe("tiny"), _fingerprint, nodes=["doge_base"])["doge_base"].upstream
    )


@pytest.mark.parametrize(
    ("mixture", "packing", "fix"), [("pretrain", False, "set it to true"), ("sft", True, "set it to false")]
)
def test_mixture_packing_that_the_mixer_cannot_honour_is_refused(mixture, packing, fix):
    raw = yaml.safe_load((RECIPES_DIR / "tiny.yaml").read_text())
    raw["mixtures"][mixture]["packing"] = packing
    with pytest.raises(RecipeError, match=f"mixtures.{mixture}.packing: .*{fix}"):
        parse_recipe(raw, "tiny.yaml")
