"""Check a stage's recipe section before anything is launched, naming the field and the fix.

Everything here is cheap and Dagster-free, so the orchestrator rejects bad input (unknown accelerate config,
unknown training field, a launch the stage's own rules refuse) in milliseconds.
`python -m doge_dagster.training.validation MODULE:CLASS...` prints the config classes' field names as JSON.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
from importlib import metadata as package_metadata
from pathlib import Path

from doge_dagster.launching.command import LaunchError, accelerate_config_path, declared_processes
from doge_dagster.recipes import LaunchRecipe, Recipe
from doge_dagster.training.sharding import zero3_without_full_weights

FIELD_CACHE_DIR = Path.home() / ".cache" / "doge-dagster"


def trainer_fields(config_class: str) -> set[str]:
    """Field names of a trainer config class (`trl:SFTConfig`), cached per installed transformers/TRL version
    and class (importing them costs seconds, checking a recipe should not)."""
    versions = "-".join(package_metadata.version(name) for name in ("transformers", "trl"))
    cache = FIELD_CACHE_DIR / f"trainer-config-fields-{versions}.json"
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if config_class not in known:
        command = [sys.executable, "-m", "doge_dagster.training.validation", config_class]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        known.update(json.loads(output.strip().splitlines()[-1]))
        cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache.with_suffix(f".{id(known)}.tmp")
        temporary.write_text(json.dumps(known))
        temporary.replace(cache)
    return set(known[config_class])


def config_class_fields(config_class: str) -> list[str]:
    """Field names of `module:Class` (imports the class)."""
    module, _, name = config_class.partition(":")
    return sorted(field.name for field in dataclasses.fields(getattr(importlib.import_module(module), name)))


# Fields the runner sets itself; a recipe must not override where outputs go or how we report.
RUNNER_OWNED = {"output_dir", "report_to", "logging_dir", "run_name", "push_to_hub", "hub_model_id"}


def validate_stage(stage: str, recipe: Recipe, tokenizer_vocab: int | None = None) -> None:
    """Reject a stage recipe that would fail after launch, naming the field and the fix."""
    record = recipe.chain.stage(stage)
    section = recipe.section(record.section)
    if section is None:
        raise LaunchError(
            f"recipe {recipe.name!r} does not run stage {stage!r}: add a `{record.section}` section to run it"
        )
    launch: LaunchRecipe = section.launch
    try:
        config_path = accelerate_config_path(launch.accelerate_config)
    except LaunchError as error:  # name the stage: a recipe has five launch sections
        raise LaunchError(f"stages.{stage}.{error}") from None
    declared = declared_processes(config_path)
    if (
        launch.num_processes is None
        and launch.gpus_per_node == 0
        and declared is not None
        and declared > launch.processes
    ):
        # the launch passes --num_processes, which overrides the config: cpu_ddp would silently run 1 process
        raise LaunchError(
            f"stages.{stage}.launch: accelerate config {launch.accelerate_config!r} declares {declared} processes, but "
            f"the stage resolves to {launch.processes} (num_processes unset, gpus_per_node 0); set "
            f"stages.{stage}.launch.num_processes (e.g. {declared}) or gpus_per_node"
        )
    if zero3_without_full_weights(config_path):
        raise LaunchError(
            f"stages.{stage}.launch: accelerate config {launch.accelerate_config!r} runs DeepSpeed ZeRO-3 without "
            "gathering full weights on save, so the published model would hold none; set "
            "deepspeed_config.zero3_save_16bit_model: true (stage3_gather_16bit_weights_on_model_save in a "
            "deepspeed_config_file)"
        )
    known = trainer_fields(record.config_class)
    for key in section.training:
        if key in RUNNER_OWNED:
            raise LaunchError(f"stages.{stage}.training.{key} is set by the pipeline; remove it")
        if key not in known:
            close = sorted(name for name in known if name.split("_")[0] == key.split("_")[0])[:6]
            hint = f"; similar fields: {', '.join(close)}" if close else ""
            raise LaunchError(
                f"stages.{stage}.training.{key} is not a field of {record.config_class.replace(':', '.')}{hint}"
            )
    if problem := section.launch_problem():
        raise LaunchError(f"stages.{stage}: {problem}")
    if (
        tokenizer_vocab is not None
        and recipe.model.vocab_size != "tokenizer"
        and recipe.model.vocab_size < tokenizer_vocab
    ):
        raise LaunchError(
            f"model.vocab_size {recipe.model.vocab_size} is smaller than the tokenizer ({tokenizer_vocab} tokens); "
            f"set it to 'tokenizer' or at least {tokenizer_vocab}"
        )


if __name__ == "__main__":
    print(json.dumps({name: config_class_fields(name) for name in sys.argv[1:]}))
