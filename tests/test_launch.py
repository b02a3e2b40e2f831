"""Launch checks before anything runs: recipe validation, the accelerate command, resume points, the spec file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import PROJECT_ROOT, tiny_recipe

from doge_dagster.launching.command import LaunchError, accelerate_command, accelerate_config_path
from doge_dagster.launching.spec import LaunchSpec
from doge_dagster.recipes import ACCELERATE_CONFIGS_DIR, LaunchRecipe
from doge_dagster.training.runner import last_complete_checkpoint
from doge_dagster.training.validation import validate_stage

STAGES = ("pretrain", "sft", "dpo", "distill", "grpo")
KNOWN_CONFIGS = sorted(path.stem for path in ACCELERATE_CONFIGS_DIR.glob("*.yaml"))


# -- validate_stage ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", STAGES)
def test_the_tiny_recipe_validates_for_every_stage(stage):
    validate_stage(stage, tiny_recipe(), tokenizer_vocab=1500)


def test_unknown_accelerate_config_names_the_field_and_every_known_config():
    recipe = tiny_recipe({"stages.sft.launch.accelerate_config": "cpu_zero7"})
    with pytest.raises(LaunchError) as raised:
        validate_stage("sft", recipe)
    message = str(raised.value)
    assert "stages.sft.launch.accelerate_config" in message and "'cpu_zero7'" in message, message
    assert {"cpu", "cpu_ddp", "cpu_zero2"} <= set(KNOWN_CONFIGS)
    for name in KNOWN_CONFIGS:
        assert name in message, f"known config {name!r} missing from: {message}"


def test_accelerate_config_may_be_a_yaml_path(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text((ACCELERATE_CONFIGS_DIR / "cpu.yaml").read_text())
    assert accelerate_config_path(str(config)) == config
    assert accelerate_config_path("cpu_ddp") == ACCELERATE_CONFIGS_DIR / "cpu_ddp.yaml"
    validate_stage("pretrain", tiny_recipe({"stages.pretrain.launch.accelerate_config": str(config)}))
    with pytest.raises(LaunchError, match="accelerate_config"):
        accelerate_config_path(str(tmp_path / "missing.yaml"))


def test_multi_process_config_without_a_process_count_is_rejected():
    # `--num_processes` from the recipe overrides the config: cpu_ddp alone would silently run ONE process
    recipe = tiny_recipe({"stages.pretrain.launch.accelerate_config": "cpu_ddp"})
    with pytest.raises(LaunchError) as raised:
        validate_stage("pretrain", recipe)
    message = str(raised.value)
    assert "stages.pretrain.launch.num_processes" in message and "'cpu_ddp' declares 2 processes" in message, message
    validate_stage(
        "pretrain", tiny_recipe({"stages.pretrain.launch": {"accelerate_config": "cpu_ddp", "num_processes": 2}})
    )
    validate_stage(
        "pretrain", tiny_recipe({"stages.pretrain.launch": {"accelerate_config": "cpu_ddp", "num_processes": 1}})
    )
    validate_stage(
        "pretrain", tiny_recipe({"stages.pretrain.launch": {"accelerate_config": "ddp", "gpus_per_node": 4}})
    )
    validate_stage("pretrain", tiny_recipe({"stages.pretrain.launch.accelerate_config": "cpu_zero2"}))  # one process
    for two_processes in ("cpu_fsdp", "cpu_zero3"):
        with pytest.raises(LaunchError, match=f"'{two_processes}' declares 2 processes"):
            validate_stage("sft", tiny_recipe({"stages.sft.launch.accelerate_config": two_processes}))
        validate_stage(
            "sft", tiny_recipe({"stages.sft.launch": {"accelerate_config": two_processes, "num_processes": 2}})
        )


def test_zero3_that_would_not_save_full_weights_is_rejected(tmp_path):
    # Without gathering on save, ZeRO-3's Trainer.save_model writes no weights: the published model would be empty
    shipped = (ACCELERATE_CONFIGS_DIR / "zero3.yaml").read_text()
    assert "zero3_save_16bit_model: true" in shipped
    config = tmp_path / "zero3_no_gather.yaml"
    config.write_text(shipped.replace("zero3_save_16bit_model: true", "zero3_save_16bit_model: false"))
    with pytest.raises(LaunchError) as raised:
        validate_stage("pretrain", tiny_recipe({"stages.pretrain.launch": {"accelerate_config": str(config),
                                                                            "gpus_per_node": 8}}))  # fmt: skip
    message = str(raised.value)
    assert "stages.pretrain.launch" in message and "zero3_save_16bit_model: true" in message, message
    for name in ("zero3", "cpu_zero3", "cpu_zero2", "fsdp"):
        validate_stage("pretrain", tiny_recipe({"stages.pretrain.launch": {"accelerate_config": name,
                                                                            "num_processes": 2}}))  # fmt: skip


@pytest.mark.parametrize(
    "stage, field, config_class",
    [
        ("pretrain", "learning_rat", "transformers.TrainingArguments"),
        ("sft", "max_seq_len", "trl.SFTConfig"),
        ("distill", "assistant_loss_only", "trl.SFTConfig"),
        ("dpo", "betta", "trl.DPOConfig"),
        ("grpo", "num_generation", "trl.GRPOConfig"),
    ],
)
def test_unknown_training_field_is_named_with_its_stage_path_and_class(stage, field, config_class):
    recipe = tiny_recipe({f"stages.{stage}.training.{field}": 1})
    with pytest.raises(LaunchError) as raised:
        validate_stage(stage, recipe)
    message = str(raised.value)
    assert f"stages.{stage}.training.{field}" in message, message
    assert config_class in message, message


def test_unknown_field_hint_lists_similar_fields():
    with pytest.raises(LaunchError, match=r"similar fields: .*max_length"):
        validate_stage("sft", tiny_recipe({"stages.sft.training.max_seq_len": 128}))


def test_fields_the_pipeline_owns_are_rejected():
    with pytest.raises(LaunchError, match=r"stages\.dpo\.training\.run_name is set by the pipeline"):
        validate_stage("dpo", tiny_recipe({"stages.dpo.training.run_name": "mine"}))


def test_legacy_field_names_are_translated_and_then_valid():
    recipe = tiny_recipe({"stages.sft.training.max_seq_length": 128})
    assert recipe.stages.sft.training["max_length"] == 128 and "max_seq_length" not in recipe.stages.sft.training
    validate_stage("sft", recipe)


def test_grpo_generation_batch_not_divisible_is_rejected_with_every_factor():
    recipe = tiny_recipe(
        {"stages.grpo.training.num_generations": 3, "stages.grpo.training.per_device_train_batch_size": 8}
    )
    with pytest.raises(LaunchError) as raised:
        validate_stage("grpo", recipe)
    message = str(raised.value)
    for part in ("stages.grpo", "per_device_train_batch_size (8)", "processes (1)", "steps_per_generation (1)", "= 8",
                 "num_generations (3)"):  # fmt: skip
        assert part in message, f"{part!r} missing from: {message}"


@pytest.mark.parametrize(
    "edits, divisible",
    [
        ({"stages.grpo.training.per_device_train_batch_size": 3, "stages.grpo.training.num_generations": 6,
          "stages.grpo.launch": {"accelerate_config": "cpu_ddp", "num_processes": 2}}, True),  # 3 x 2 processes = 6
        ({"stages.grpo.training.per_device_train_batch_size": 3, "stages.grpo.training.num_generations": 6}, False),
        ({"stages.grpo.training.per_device_train_batch_size": 2, "stages.grpo.training.num_generations": 8,
          "stages.grpo.training.steps_per_generation": 4}, True),  # 2 x 1 x 4 = 8
        ({"stages.grpo.training.per_device_train_batch_size": 2, "stages.grpo.training.num_generations": 8,
          "stages.grpo.training.gradient_accumulation_steps": 4}, True),  # steps_per_generation defaults to GA
        ({"stages.grpo.training.per_device_train_batch_size": 2, "stages.grpo.training.num_generations": 4,
          "stages.grpo.launch": {"accelerate_config": "ddp", "nodes": 2, "gpus_per_node": 1}}, True),  # 2 x 2 = 4
    ],
)  # fmt: skip
def test_grpo_divisibility_counts_processes_and_steps_per_generation(edits, divisible):
    recipe = tiny_recipe(edits)
    if divisible:
        validate_stage("grpo", recipe)
    else:
        with pytest.raises(LaunchError, match="num_generations"):
            validate_stage("grpo", recipe)


def test_vocab_size_smaller_than_the_tokenizer_is_rejected():
    recipe = tiny_recipe({"model.vocab_size": 1000})
    with pytest.raises(LaunchError) as raised:
        validate_stage("pretrain", recipe, tokenizer_vocab=1500)
    message = str(raised.value)
    assert "model.vocab_size 1000" in message and "1500" in message and "'tokenizer'" in message, message
    validate_stage("pretrain", recipe, tokenizer_vocab=1000)  # equal is enough
    validate_stage("pretrain", recipe)  # no tokenizer known yet: nothing to compare
    validate_stage("pretrain", tiny_recipe(), tokenizer_vocab=10**6)  # 'tokenizer' follows the tokenizer


# -- accelerate_command -----------------------------------------------------------------------------------------
def test_single_process_command():
    command = accelerate_command("sft", "/work/spec.json", LaunchRecipe(), python="/venv/bin/python")
    assert command == [
        "/venv/bin/python", "-m", "accelerate.commands.launch",
        "--config_file", str(ACCELERATE_CONFIGS_DIR / "cpu.yaml"),
        "--num_processes", "1", "--num_machines", "1",
        "-m", "doge_dagster.training", "sft", "--spec", "/work/spec.json",
    ]  # fmt: skip
    assert "--machine_rank" not in command and "--main_process_ip" not in command


def test_multi_node_command_needs_machine_rank_and_address():
    launch = LaunchRecipe(accelerate_config="ddp", nodes=2, gpus_per_node=8)
    with pytest.raises(LaunchError, match="machine_rank and main_process_ip"):
        accelerate_command("pretrain", "spec.json", launch)
    with pytest.raises(LaunchError, match="machine_rank and main_process_ip"):
        accelerate_command("pretrain", "spec.json", launch, machine_rank="1")
    command = accelerate_command("pretrain", "spec.json", launch, machine_rank="$SLURM_NODEID", main_process_ip="10.0.0.1",
                                 main_process_port=29555)  # fmt: skip
    flags = dict(zip(command[3:-5:2], command[4:-5:2], strict=True))
    assert flags == {
        "--config_file": str(ACCELERATE_CONFIGS_DIR / "ddp.yaml"),
        "--num_processes": "16",
        "--num_machines": "2",
        "--machine_rank": "$SLURM_NODEID",
        "--main_process_ip": "10.0.0.1",
        "--main_process_port": "29555",
    }
    assert command[-5:] == ["-m", "doge_dagster.training", "pretrain", "--spec", "spec.json"]


def test_commands_parse_with_the_accelerate_launch_parser():
    from accelerate.commands.launch import launch_command_parser

    parser = launch_command_parser()
    single = accelerate_command("grpo", "s.json", LaunchRecipe(accelerate_config="cpu_ddp", num_processes=2))
    multi = accelerate_command(
        "dpo", "s.json", LaunchRecipe(accelerate_config="ddp", nodes=2, gpus_per_node=4), "1", "10.0.0.1"
    )
    args = parser.parse_args(single[3:])
    assert (args.num_processes, args.num_machines, args.module) == (2, 1, True)
    assert (args.training_script, args.training_script_args) == ("doge_dagster.training", ["grpo", "--spec", "s.json"])
    args = parser.parse_args(multi[3:])
    assert (args.num_processes, args.num_machines, args.machine_rank, args.main_process_ip) == (8, 2, 1, "10.0.0.1")


def test_unknown_accelerate_config_fails_building_the_command():
    with pytest.raises(LaunchError, match="not a known config"):
        accelerate_command("sft", "spec.json", LaunchRecipe(accelerate_config="nope"))


# -- last_complete_checkpoint -----------------------------------------------------------------------------------
def make_checkpoint(folder: Path, step: int, state: str | dict | None) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if state is not None:
        (path / "trainer_state.json").write_text(state if isinstance(state, str) else json.dumps(state))
    return path


def test_last_complete_checkpoint_skips_incomplete_and_mismatched(tmp_path):
    complete = make_checkpoint(tmp_path, 20, {"global_step": 20})
    make_checkpoint(tmp_path, 40, None)  # killed before the trainer state was written
    make_checkpoint(tmp_path, 60, {"global_step": 50})  # state of another step
    make_checkpoint(tmp_path, 80, '{"global_step": 8')  # killed mid-write of the state
    assert last_complete_checkpoint(tmp_path) == complete


def test_last_complete_checkpoint_orders_steps_numerically_and_ignores_other_entries(tmp_path):
    make_checkpoint(tmp_path, 20, {"global_step": 20})
    newest = make_checkpoint(tmp_path, 100, {"global_step": 100})
    (tmp_path / "checkpoint-300").write_text("a file, not a folder")
    (tmp_path / "checkpoint-x").mkdir()
    (tmp_path / "runs").mkdir()
    assert last_complete_checkpoint(tmp_path) == newest


def test_last_complete_checkpoint_none_when_nothing_usable(tmp_path):
    assert last_complete_checkpoint(tmp_path / "missing") is None
    assert last_complete_checkpoint(tmp_path) is None
    make_checkpoint(tmp_path, 10, None)
    make_checkpoint(tmp_path, 20, {"global_step": 19})
    assert last_complete_checkpoint(tmp_path) is None


# -- LaunchSpec -------------------------------------------------------------------------------------------------
def make_spec(stage: str, tmp_path: Path) -> LaunchSpec:
    from doge_dagster.stages import CHAIN

    return LaunchSpec(
        name=stage,
        asset=CHAIN.stage(stage).asset,
        partition="tiny",
        version="0123456789abcdef",
        upstream={"tokenizer": "t" * 16, "doge_base": "b" * 16},
        recipe=tiny_recipe().model_dump(mode="json"),
        store_root="s3://bucket/prefix",
        work_dir=str(tmp_path / "work"),
        env={"HF_HUB_OFFLINE": "1"},
    )


def test_stage_spec_write_read_roundtrip(tmp_path):
    spec = make_spec("sft", tmp_path)
    path = spec.write(tmp_path / "spec.json")
    assert path == tmp_path / "spec.json"
    assert LaunchSpec.read(path) == spec
    assert LaunchSpec.read(str(path)) == spec
    raw = json.loads(path.read_text())
    assert raw["recipe"]["stages"]["sft"]["training"]["max_steps"] == tiny_recipe().stages.sft.training["max_steps"]
    assert "secret" not in path.read_text().lower()


def test_stage_spec_default_env_roundtrips(tmp_path):
    spec = LaunchSpec("pretrain", "doge_base", "tiny", "v", {}, {}, "/store", str(tmp_path))
    assert spec.env == {}
    assert LaunchSpec.read(spec.write(tmp_path / "spec.json")) == spec


@pytest.mark.parametrize(
    "stage, asset, parent, mixture",
    [
        ("pretrain", "doge_base", None, "pretrain_mixture"),
        ("sft", "doge_instruct_sft", "doge_base", "sft_mixture"),
        ("dpo", "doge_instruct", "doge_instruct_sft", "dpo_mixture"),
        ("distill", "doge_reason_distill", "doge_instruct", "distill_mixture"),
        ("grpo", "doge_reason", "doge_reason_distill", "grpo_mixture"),
    ],
)
def test_each_stage_names_its_asset_parent_model_and_mixture(stage, asset, parent, mixture, tmp_path):
    from doge_dagster.artifacts import ArtifactStore
    from doge_dagster.trainer_contract import StageContext
    from doge_dagster.training.runner import parent_asset

    recipe = tiny_recipe()
    record = recipe.chain.stage(stage)
    ctx = StageContext(make_spec(stage, tmp_path), recipe, ArtifactStore(str(tmp_path / "store")), None, record)
    assert (record.asset, parent_asset(ctx), recipe.chain.mixture(record.mixture).asset) == (asset, parent, mixture)


def test_stage_spec_reads_from_an_environment_variable(tmp_path, monkeypatch):
    from doge_dagster.launching.spec import SPEC_ENV_PREFIX, SPEC_ENV_VAR

    spec = make_spec("grpo", tmp_path)
    monkeypatch.setenv(SPEC_ENV_VAR, spec.to_json())
    assert LaunchSpec.read(f"{SPEC_ENV_PREFIX}{SPEC_ENV_VAR}") == spec
    monkeypatch.delenv(SPEC_ENV_VAR)
    with pytest.raises(FileNotFoundError, match=SPEC_ENV_VAR):
        LaunchSpec.read(f"{SPEC_ENV_PREFIX}{SPEC_ENV_VAR}")


# -- the shipped accelerate configs, read by accelerate's own loader ---------------------------------------------
ACCELERATE_CONFIGS = {  # name: (distributed type, ZeRO stage or FSDP)
    "single_gpu": ("NO", None),
    "ddp": ("MULTI_GPU", None),
    "fsdp": ("FSDP", "fsdp"),
    "zero2": ("DEEPSPEED", 2),
    "zero3": ("DEEPSPEED", 3),
    "cpu": ("NO", None),
    "cpu_ddp": ("MULTI_GPU", None),
    "cpu_zero2": ("DEEPSPEED", 2),
    "cpu_fsdp": ("FSDP", "fsdp"),
    "cpu_zero3": ("DEEPSPEED", 3),
}


@pytest.mark.parametrize("name", sorted(ACCELERATE_CONFIGS))
def test_each_accelerate_config_loads_with_accelerates_own_loader(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(PROJECT_ROOT / "recipes" / "accelerate" / f"{name}.yaml"))
    distributed, sharding = ACCELERATE_CONFIGS[name]
    assert config.distributed_type.name == distributed
    if sharding == "fsdp":
        assert config.fsdp_config, "the fsdp config carries no fsdp_config"
    elif sharding is not None:
        assert int(config.deepspeed_config["zero_stage"]) == sharding
    # cpu_ddp is MULTI_GPU without use_cpu on purpose (its header: `--cpu` would run one process only)
    # cpu_fsdp too: the runner's `use_cpu` on a machine without CUDA is what makes it gloo (sharding.py)
    assert bool(config.use_cpu) == (name in ("cpu", "cpu_zero2", "cpu_zero3")), "GPU configs must not force the CPU"
    if name.startswith("cpu"):
        assert config.mixed_precision == "no", "CPU configs train in fp32"


def test_the_shipped_configs_are_exactly_those_checked():
    shipped = {path.stem for path in (PROJECT_ROOT / "recipes" / "accelerate").glob("*.yaml")}
    assert shipped == set(ACCELERATE_CONFIGS)


def test_accelerates_loader_rejects_an_unknown_key(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    bad = tmp_path / "bad.yaml"
    bad.write_text((PROJECT_ROOT / "recipes" / "accelerate" / "ddp.yaml").read_text() + "num_gpus_typo: 8\n")
    with pytest.raises(ValueError, match="num_gpus_typo"):
        load_config_from_file(str(bad))


# -- the trainer config every stage starts from --------------------------------------------------------------------
def stage_args(stage: str, tmp_path: Path, edits: dict | None = None):
    """The trainer config `runner.build_args` makes for `stage` of the (edited) tiny recipe."""
    from doge_dagster.artifacts import ArtifactStore
    from doge_dagster.trainer_contract import StageContext
    from doge_dagster.training.runner import build_args

    recipe = tiny_recipe(edits)
    spec = make_spec(stage, tmp_path)
    spec = LaunchSpec(**{**spec.__dict__, "recipe": recipe.model_dump(mode="json")})
    record = recipe.chain.stage(stage)
    ctx = StageContext(spec, recipe, ArtifactStore(str(tmp_path / "store")), None, record)
    return build_args(ctx, record.trainer_class()(), tmp_path / "checkpoints")


@pytest.mark.parametrize("stage", ["pretrain", "sft", "dpo", "distill", "grpo"])
def test_every_stage_trains_in_full_precision_without_checkpointing_unless_the_recipe_asks(stage, tmp_path):
    # TRL's configs default to bf16 autocast and gradient checkpointing; on a CPU without native bf16 that
    # ran the chat stages about 9x slower per token than pretraining. The recipe decides, for every stage.
    args = stage_args(stage, tmp_path)
    assert (args.bf16, args.activation_checkpointing) == (False, False)
    # the seed's name for it (transformers 4) is translated, and the recipe's choice wins
    asked = stage_args(stage, tmp_path, {f"stages.{stage}.training.gradient_checkpointing": True})
    assert asked.activation_checkpointing is True


def test_the_copied_distributed_types_are_accelerates():
    """`validation.DISTRIBUTED_TYPES` copies accelerate's enum (importing accelerate imports torch): kept in step."""
    from accelerate.utils import DistributedType

    from doge_dagster.training.validation import DISTRIBUTED_TYPES

    assert set(DISTRIBUTED_TYPES) == {member.value for member in DistributedType}
