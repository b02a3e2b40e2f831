"""Check a stage's recipe section before anything is launched, naming the field and the fix.

Everything here is cheap and Dagster-free, so the orchestrator rejects bad input (unknown accelerate config,
unknown training field, a launch the stage's own rules refuse) in milliseconds.
`python -m doge_dagster.training.validation MODULE:CLASS...` prints the config classes' field schemas as JSON.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

from doge_dagster.launching.command import LaunchError, accelerate_config_path, read_accelerate_config
from doge_dagster.recipes import LaunchRecipe, Recipe
from doge_dagster.training.sharding import zero3_without_full_weights
from doge_dagster.training.tracking import tracker_problems

FIELD_CACHE_DIR = Path.home() / ".cache" / "doge-dagster"


def trainer_schema(config_class: str) -> dict[str, dict[str, Any]]:
    """Field name -> accepted value kinds (`config_class_schema`) of a trainer config class (`trl:SFTConfig`),
    cached per installed transformers/TRL version and class (importing them costs seconds, checking a recipe
    should not)."""
    versions = "-".join(package_metadata.version(name) for name in ("transformers", "trl"))
    cache = FIELD_CACHE_DIR / f"trainer-config-schema-{versions}.json"
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if config_class not in known:
        command = [sys.executable, "-m", "doge_dagster.training.validation", config_class]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        known.update(json.loads(output.strip().splitlines()[-1]))
        cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache.with_suffix(f".{id(known)}.tmp")
        temporary.write_text(json.dumps(known))
        temporary.replace(cache)
    return known[config_class]


def trainer_fields(config_class: str) -> set[str]:
    """Field names of a trainer config class (`trl:SFTConfig`), from the cached schema."""
    return set(trainer_schema(config_class))


def config_class_fields(config_class: str) -> list[str]:
    """Field names of `module:Class` (imports the class)."""
    return sorted(config_class_schema(config_class))


def config_class_schema(config_class: str) -> dict[str, dict[str, Any]]:
    """Per field of `module:Class` (imports the class) the JSON kinds a value may have (`null`, `bool`, `int`,
    `float`, `str`, `list`, `dict`, or `any` when the annotation says nothing checkable) and, for a field typed
    `SomeEnum | str`, the enum's values (the config converts the string to the enum)."""
    import enum
    import types
    import typing

    module, _, name = config_class.partition(":")
    cls = getattr(importlib.import_module(module), name)
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: fall back to names only
        hints = {}
    scalar = {type(None): "null", bool: "bool", int: "int", float: "float", str: "str", list: "list",
              tuple: "list", dict: "dict"}  # fmt: skip

    def kinds(hint: Any, choices: list[Any]) -> set[str]:
        origin = typing.get_origin(hint)
        if origin in (typing.Union, types.UnionType):
            return set().union(*(kinds(argument, choices) for argument in typing.get_args(hint)))
        if origin is typing.Literal:
            values = typing.get_args(hint)
            return {scalar.get(type(value), "any") for value in values}
        if origin is not None:
            return {scalar.get(origin, "any")}
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            choices.extend(member.value for member in hint)
            return {"enum"}
        return {scalar.get(hint, "any")}

    schema = {}
    for field in dataclasses.fields(cls):
        choices: list[Any] = []
        accepted = kinds(hints[field.name], choices) if field.name in hints else {"any"}
        enum_with_text = "enum" in accepted and "str" in accepted
        accepted.discard("enum")
        schema[field.name] = {
            "kinds": sorted(accepted or {"any"}),
            "choices": [str(choice) for choice in choices] if enum_with_text else None,
        }
    return schema


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    for kind, python in (("bool", bool), ("int", int), ("float", float), ("str", str), ("list", list), ("dict", dict)):
        if isinstance(value, python):
            return kind
    return type(value).__name__


def value_problem(value: Any, accepted: dict[str, Any]) -> str | None:
    """Why `value` does not fit a field of `config_class_schema` (None when it does): what the field takes."""
    kinds = set(accepted["kinds"])
    if kinds & {"any", "list", "dict"}:
        # Containers are not checked: configs take a single string for many `list[str]` fields (TRL's loss_type)
        # and JSON text for dicts, converting them after the annotation.
        return None
    kind = _kind(value)
    fits = kind in kinds or (kind == "int" and "float" in kinds)
    if fits and kind == "str" and accepted.get("choices") and value not in accepted["choices"]:
        return f"takes one of: {', '.join(accepted['choices'])}"
    if fits:
        return None
    wanted = {"null": "null", "bool": "true or false", "int": "an integer", "float": "a number", "str": "a string",
              "list": "a list", "dict": "a mapping"}  # fmt: skip
    described = " or ".join(wanted[name] for name in sorted(kinds) if name in wanted)
    if accepted.get("choices"):
        described += f" (one of: {', '.join(accepted['choices'])})"
    return f"takes {described}"


# Fields the runner sets itself; a recipe must not override where outputs go or what the runs are called.
# (`report_to` is the recipe's: checked by `tracker_problems`, see doge_dagster/training/tracking.py.)
RUNNER_OWNED = {"output_dir", "logging_dir", "run_name", "push_to_hub", "hub_model_id"}


# accelerate 1.15's `DistributedType` values (importing accelerate imports torch: seconds, so copied).
DISTRIBUTED_TYPES = (
    "NO", "MULTI_CPU", "MULTI_GPU", "MULTI_NPU", "MULTI_MLU", "MULTI_SDAA", "MULTI_MUSA", "MULTI_XPU", "DEEPSPEED",
    "FSDP", "XLA", "MEGATRON_LM", "MULTI_HPU", "MULTI_NEURON",
)  # fmt: skip


def validate_launch(launch: LaunchRecipe, where: str) -> Path:
    """Reject launch settings that `accelerate launch` would refuse, or run other than the recipe says, naming
    the field (`where` is the section, e.g. `stages.sft` or `evaluation.base`) and the fix. Returns the
    accelerate config file."""
    try:
        config_path = accelerate_config_path(launch.accelerate_config)
    except LaunchError as error:  # name the section: a recipe has eight launch sections
        raise LaunchError(f"{where}.{error}") from None
    field = f"{where}.launch.accelerate_config"
    try:
        config = read_accelerate_config(config_path)
    except LaunchError as error:
        raise LaunchError(f"{field} {launch.accelerate_config!r}: {error}") from None
    distributed = config.get("distributed_type", "NO")
    if str(distributed) not in DISTRIBUTED_TYPES:
        raise LaunchError(
            f"{field} {launch.accelerate_config!r}: distributed_type {distributed!r} in {config_path} is not one of "
            f"accelerate's ({', '.join(DISTRIBUTED_TYPES)}); fix the config file"
        )
    declared = config.get("num_processes")
    if declared is not None and (isinstance(declared, bool) or not isinstance(declared, int) or declared < 1):
        raise LaunchError(
            f"{field} {launch.accelerate_config!r}: num_processes {declared!r} in {config_path} is not a positive "
            f"integer; fix the config file, or remove the line and set {where}.launch.num_processes"
        )
    if (
        launch.num_processes is None
        and launch.gpus_per_node == 0
        and declared is not None
        and declared > launch.processes
    ):
        # the launch passes --num_processes, which overrides the config: cpu_ddp would silently run 1 process
        raise LaunchError(
            f"{where}.launch: accelerate config {launch.accelerate_config!r} declares {declared} processes, but "
            f"the launch resolves to {launch.processes} (num_processes unset, gpus_per_node 0); set "
            f"{where}.launch.num_processes (e.g. {declared}) or gpus_per_node"
        )
    if config.get("use_cpu") is True and launch.gpus_per_node > 0:
        raise LaunchError(
            f"{where}.launch.gpus_per_node is {launch.gpus_per_node}, but accelerate config "
            f"{launch.accelerate_config!r} runs on the CPU (use_cpu: true), so the GPUs would sit idle; set "
            f"gpus_per_node: 0, or pick a GPU config (single_gpu, ddp, fsdp, zero2, zero3)"
        )
    if distributed == "NO" and launch.gpus_per_node == 0 and launch.processes > 1:
        raise LaunchError(
            f"{where}.launch resolves to {launch.processes} processes, but accelerate config "
            f"{launch.accelerate_config!r} is not distributed (distributed_type NO) and would run one; pick a "
            f"distributed config (cpu_ddp, cpu_fsdp, cpu_zero3) or set {where}.launch.num_processes: 1"
        )
    gpus = launch.gpus_per_node * launch.nodes
    if launch.gpus_per_node > 0 and launch.num_processes is not None and launch.num_processes > gpus:
        raise LaunchError(
            f"{where}.launch.num_processes ({launch.num_processes}) is more than the {gpus} GPUs the launch reserves "
            f"(gpus_per_node {launch.gpus_per_node} x nodes {launch.nodes}): two processes would share a GPU; "
            f"lower num_processes or raise gpus_per_node"
        )
    if launch.processes % launch.nodes:
        raise LaunchError(
            f"{where}.launch: {launch.processes} processes do not split evenly over {launch.nodes} nodes; set "
            f"num_processes to a multiple of nodes"
        )
    if zero3_without_full_weights(config_path):
        raise LaunchError(
            f"{where}.launch: accelerate config {launch.accelerate_config!r} runs DeepSpeed ZeRO-3 without "
            "gathering full weights on save, so the published model would hold none; set "
            "deepspeed_config.zero3_save_16bit_model: true (stage3_gather_16bit_weights_on_model_save in a "
            "deepspeed_config_file)"
        )
    return config_path


def validate_stage(
    stage: str, recipe: Recipe, tokenizer_vocab: int | None = None, env: Mapping[str, str] | None = None
) -> None:
    """Reject a stage recipe that would fail after launch, naming the field and the fix. `env`: the environment
    the launched process gets besides the recipe's `launch.env` (default: this process's)."""
    record = recipe.chain.stage(stage)
    section = recipe.section(record.section)
    if section is None:
        raise LaunchError(
            f"recipe {recipe.name!r} does not run stage {stage!r}: add a `{record.section}` section to run it"
        )
    validate_launch(section.launch, f"stages.{stage}")
    schema = trainer_schema(record.config_class)
    config_name = record.config_class.replace(":", ".")
    launched_env = {**(os.environ if env is None else env), **section.launch.env}
    if problems := tracker_problems(section.training.get("report_to"), f"stages.{stage}.training", launched_env):
        raise LaunchError("; ".join(problems))
    for key, value in section.training.items():
        if key == "report_to":
            continue  # checked above (the recipe models checked its value)
        if key in RUNNER_OWNED:
            raise LaunchError(f"stages.{stage}.training.{key} is set by the pipeline; remove it")
        if key not in schema:
            close = sorted(name for name in schema if name.split("_")[0] == key.split("_")[0])[:6]
            hint = f"; similar fields: {', '.join(close)}" if close else ""
            raise LaunchError(f"stages.{stage}.training.{key} is not a field of {config_name}{hint}")
        if problem := value_problem(value, schema[key]):
            raise LaunchError(
                f"stages.{stage}.training.{key} is {value!r}, but {config_name}.{key} {problem}; fix the value"
            )
    if problem := section.launch_problem():
        raise LaunchError(f"stages.{stage}: {problem}")
    check_initial_checkpoint(stage, section, recipe, tokenizer_vocab)
    if (
        tokenizer_vocab is not None
        and recipe.model.vocab_size != "tokenizer"
        and recipe.model.vocab_size < tokenizer_vocab
    ):
        raise LaunchError(
            f"model.vocab_size {recipe.model.vocab_size} is smaller than the tokenizer ({tokenizer_vocab} tokens); "
            f"set it to 'tokenizer' or at least {tokenizer_vocab}"
        )


def check_initial_checkpoint(stage: str, section, recipe: Recipe, tokenizer_vocab: int | None) -> None:
    """A stage that continues from a Hub id or a folder (`init_from`) gets a checkpoint of the recipe's
    architecture and vocabulary, or is refused naming both."""
    from doge_dagster.hub_models import HubModelError, check_checkpoint, is_hub_id, resolve_hub_model

    reference = getattr(section, "init_from", None)
    if not reference or (":" in reference and not Path(reference).exists()):
        return  # none, or a published `doge_base:<version>` of this partition (the same architecture)
    field = f"stages.{stage}.init_from"
    model = recipe.model.model_dump()
    if model["vocab_size"] == "tokenizer":
        model["vocab_size"] = tokenizer_vocab
    try:
        if is_hub_id(reference):
            folder = resolve_hub_model(reference, section.init_revision, field)
            check_checkpoint(folder, f"{reference!r} (commit {folder.name})", model, field)
        elif Path(reference).is_dir():
            check_checkpoint(Path(reference), repr(reference), model, field)
        else:
            raise HubModelError(f"{field} {reference!r} is neither a folder nor a Hub id (org/name)")
    except HubModelError as error:
        raise LaunchError(str(error)) from None


if __name__ == "__main__":
    print(json.dumps({name: config_class_schema(name) for name in sys.argv[1:]}))
