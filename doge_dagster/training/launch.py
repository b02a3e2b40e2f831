"""Build and check the `accelerate launch` command of a stage before anything is launched.

Everything here is cheap and Dagster-free, so the orchestrator can reject bad input (unknown
accelerate config, unknown training field, GRPO batch not divisible by generations) in milliseconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

from doge_dagster.recipes import ACCELERATE_CONFIGS_DIR, LaunchRecipe, Recipe

CONFIG_CLASSES = {
    "pretrain": "transformers:TrainingArguments",
    "sft": "trl:SFTConfig",
    "distill": "trl:SFTConfig",
    "dpo": "trl:DPOConfig",
    "grpo": "trl:GRPOConfig",
}
FIELD_CACHE_DIR = Path.home() / ".cache" / "doge-dagster"


class LaunchError(ValueError):
    """The stage cannot be launched as configured; the message names the field and the fix."""


def accelerate_config_path(name: str) -> Path:
    """Resolve an accelerate config name (`cpu`, `ddp`, ...) or path, listing the known names on error."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    path = ACCELERATE_CONFIGS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in ACCELERATE_CONFIGS_DIR.glob("*.yaml")))
        raise LaunchError(f"launch.accelerate_config {name!r} is not a known config ({known}) or an existing YAML file")
    return path


def declared_processes(config_path: Path) -> int | None:
    """`num_processes` of an accelerate config file (None when it sets none or is unreadable)."""
    import yaml

    try:
        value = (yaml.safe_load(config_path.read_text()) or {}).get("num_processes")
        return int(value) if value is not None else None
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
        return None


def trainer_fields(stage: str) -> set[str]:
    """Field names of the stage's trainer config class, cached per installed transformers/TRL version
    (importing them costs seconds, checking a recipe should not)."""
    versions = "-".join(package_metadata.version(name) for name in ("transformers", "trl"))
    cache = FIELD_CACHE_DIR / f"trainer-fields-{versions}.json"
    if cache.is_file():
        return set(json.loads(cache.read_text())[stage])
    script = (
        "import dataclasses, importlib, json, sys\n"
        f"classes = {CONFIG_CLASSES!r}\n"
        "out = {}\n"
        "for stage, target in classes.items():\n"
        "    module, name = target.split(':')\n"
        "    cls = getattr(importlib.import_module(module), name)\n"
        "    out[stage] = sorted(f.name for f in dataclasses.fields(cls))\n"
        "print(json.dumps(out))\n"
    )
    output = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    fields = json.loads(output.strip().splitlines()[-1])
    cache.parent.mkdir(parents=True, exist_ok=True)
    temporary = cache.with_suffix(f".{id(fields)}.tmp")
    temporary.write_text(json.dumps(fields))
    temporary.replace(cache)
    return set(fields[stage])


# Fields the runner sets itself; a recipe must not override where outputs go or how we report.
RUNNER_OWNED = {"output_dir", "report_to", "logging_dir", "run_name", "push_to_hub", "hub_model_id"}


def validate_stage(stage: str, recipe: Recipe, tokenizer_vocab: int | None = None) -> None:
    """Reject a stage recipe that would fail after launch, naming the field and the fix."""
    section = recipe.section(f"stages.{stage}")
    launch: LaunchRecipe = section.launch
    try:
        config_path = accelerate_config_path(launch.accelerate_config)
    except LaunchError as error:  # name the stage: a recipe has five launch sections
        raise LaunchError(f"stages.{stage}.{error}") from None
    declared = declared_processes(config_path)
    if launch.num_processes is None and launch.gpus_per_node == 0 and declared is not None and declared > launch.processes:
        # the launch passes --num_processes, which overrides the config: cpu_ddp would silently run 1 process
        raise LaunchError(
            f"stages.{stage}.launch: accelerate config {launch.accelerate_config!r} declares {declared} processes, but "
            f"the stage resolves to {launch.processes} (num_processes unset, gpus_per_node 0); set "
            f"stages.{stage}.launch.num_processes (e.g. {declared}) or gpus_per_node"
        )
    known = trainer_fields(stage)
    for key in section.training:
        if key in RUNNER_OWNED:
            raise LaunchError(f"stages.{stage}.training.{key} is set by the pipeline; remove it")
        if key not in known:
            close = sorted(name for name in known if name.split("_")[0] == key.split("_")[0])[:6]
            hint = f"; similar fields: {', '.join(close)}" if close else ""
            raise LaunchError(
                f"stages.{stage}.training.{key} is not a field of {CONFIG_CLASSES[stage].replace(':', '.')}{hint}"
            )
    if stage == "grpo":
        training = section.training
        generations = int(training.get("num_generations", 8))
        per_device = int(training.get("per_device_train_batch_size", 8))
        steps = int(training.get("steps_per_generation") or training.get("gradient_accumulation_steps", 1))
        batch = per_device * launch.processes * steps
        if batch % generations:
            raise LaunchError(
                f"stages.grpo: the generation batch per_device_train_batch_size ({per_device}) x processes "
                f"({launch.processes}) x steps_per_generation ({steps}) = {batch} is not divisible by "
                f"training.num_generations ({generations}); change one of them"
            )
    if tokenizer_vocab is not None and recipe.model.vocab_size != "tokenizer" and recipe.model.vocab_size < tokenizer_vocab:
        raise LaunchError(
            f"model.vocab_size {recipe.model.vocab_size} is smaller than the tokenizer ({tokenizer_vocab} tokens); "
            f"set it to 'tokenizer' or at least {tokenizer_vocab}"
        )


def accelerate_command(
    stage: str,
    spec_path: str,
    launch: LaunchRecipe,
    machine_rank: str | None = None,
    main_process_ip: str | None = None,
    main_process_port: int = 29500,
    python: str | None = None,
    module: str = "doge_dagster.training",
) -> list[str]:
    """`accelerate launch --config_file CFG ... -m MODULE STAGE --spec SPEC` (MODULE: doge_dagster.training,
    or doge_dagster.evaluation for evaluations: `StageSpec.module`).

    Multi-node launches pass `machine_rank` (e.g. `$SLURM_NODEID`) and the first node's address.
    """
    python = python or sys.executable
    command = [
        python, "-m", "accelerate.commands.launch",
        "--config_file", str(accelerate_config_path(launch.accelerate_config)),
        "--num_processes", str(launch.processes),
        "--num_machines", str(launch.nodes),
    ]  # fmt: skip
    if launch.nodes > 1:
        if machine_rank is None or main_process_ip is None:
            raise LaunchError("a multi-node launch needs machine_rank and main_process_ip")
        command += ["--machine_rank", machine_rank, "--main_process_ip", main_process_ip, "--main_process_port", str(main_process_port)]
    return command + ["-m", module, stage, "--spec", spec_path]


def describe_command(command: list[str]) -> dict[str, Any]:
    """The launch as metadata: the command line a user can rerun by hand."""
    return {"command": " ".join(command)}
