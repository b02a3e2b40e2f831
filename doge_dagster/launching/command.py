"""The `accelerate launch` command of a stage or report, and the checks on its accelerate config."""

from __future__ import annotations

import sys
from pathlib import Path

from doge_dagster.recipes import ACCELERATE_CONFIGS_DIR, LaunchRecipe


class LaunchError(ValueError):
    """The stage cannot be launched as configured; the message names the field and the fix."""


def accelerate_config_path(name: str) -> Path:
    """Resolve an accelerate config name (`cpu`, `ddp`, ...) or path, listing the known names on error."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    known = ", ".join(sorted(p.stem for p in ACCELERATE_CONFIGS_DIR.glob("*.yaml")))
    if candidate.suffix in (".yaml", ".yml"):
        raise LaunchError(
            f"launch.accelerate_config {name!r}: no such file (from {Path.cwd()}); give an existing accelerate "
            f"config file or a known config name ({known})"
        )
    path = ACCELERATE_CONFIGS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise LaunchError(f"launch.accelerate_config {name!r} is not a known config ({known}) or an existing YAML file")
    return path


def read_accelerate_config(config_path: Path) -> dict:
    """The settings of an accelerate config file; a LaunchError saying what is wrong when it is not a YAML mapping."""
    import yaml

    try:
        config = yaml.safe_load(config_path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise LaunchError(f"{config_path} is not a readable YAML file ({error}); fix or replace it") from None
    if not isinstance(config, dict):
        raise LaunchError(f"{config_path} holds {type(config).__name__}, not accelerate settings; fix or replace it")
    return config


def declared_processes(config_path: Path) -> int | None:
    """`num_processes` of an accelerate config file (None when it sets none or is unreadable)."""
    try:
        value = read_accelerate_config(config_path).get("num_processes")
        return int(value) if value is not None else None
    except (LaunchError, ValueError, TypeError):
        return None


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
    or doge_dagster.evaluation for evaluations: `LaunchSpec.module`).

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
        command += [
            "--machine_rank",
            machine_rank,
            "--main_process_ip",
            main_process_ip,
            "--main_process_port",
            str(main_process_port),
        ]
    return command + ["-m", module, stage, "--spec", spec_path]
