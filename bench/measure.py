"""What every benchmark script shares: the machine's description and timed `dagster` materializations.

The scripts run as `python bench/<script>.py`, so this module is imported by its plain name.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = Path(__file__).with_name("RESULTS.md")
# PyTorch, oneDNN and MKL restricted to AVX2 kernels: the float path (and bf16 emulation) of a CPU without AVX-512.
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def machine() -> str:
    """CPU model (from /proc/cpuinfo), core counts, Python and the versions of the libraries measured."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    names = ("torch", "transformers", "trl", "datasets", "tokenizers", "dagster")
    versions = ", ".join(f"{name} {version(name)}" for name in names)
    cores = f"{os.cpu_count()} cores (affinity {len(os.sched_getaffinity(0))})"
    return f"{models[0] if models else platform.processor()}, {cores}, Python {platform.python_version()}, {versions}"


def materialize(selection: str, env: dict[str, str]) -> float:
    """Wall seconds of `dagster asset materialize --select SELECTION --partition tiny` (raises on failure)."""
    started = time.perf_counter()
    result = subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "doge_dagster.definitions", "--select", selection, "--partition", "tiny"],
        check=False, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    if result.returncode:
        raise RuntimeError(f"materializing {selection} failed:\n{result.stdout[-4000:]}")
    return time.perf_counter() - started


@dataclass
class StepTiming:
    """Seconds from a step's start to the trainer's first progress line (None if none) and to its success."""

    first_progress: float | None
    whole: float


def step_timings(dagster_home: Path) -> dict[str, StepTiming]:
    """Per step of the home's latest run, from the run's event log (sub-second timestamps)."""
    import dagster as dg

    starts: dict[str, float] = {}
    progress: dict[str, float] = {}
    timings: dict[str, StepTiming] = {}
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        [run] = instance.get_runs(limit=1)
        for entry in instance.all_logs(run.run_id):
            event, step = entry.dagster_event, entry.step_key
            if event is not None and event.event_type_value == "STEP_START":
                starts[step] = entry.timestamp
            elif event is None and step in starts and step not in progress and entry.user_message.startswith("step "):
                progress[step] = entry.timestamp
            elif event is not None and event.event_type_value == "STEP_SUCCESS":
                first = progress[step] - starts[step] if step in progress else None
                timings[step] = StepTiming(first, entry.timestamp - starts[step])
    return timings


def report(table: str, record: bool) -> None:
    """Print a result table and, with `record`, append it to bench/RESULTS.md."""
    print(table)
    if record:
        with RESULTS.open("a") as handle:
            handle.write("\n" + table + "\n")
