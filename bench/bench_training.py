"""Orchestration overhead and the whole tiny graph, measured in one run on this machine.

  python bench/bench_training.py [--repeats 2] [--record]

1. doge_base[tiny] materialized through Dagster (CLI) against the same `accelerate launch` command run
   by hand on the same spec (goal: at most 1.10x).
2. The whole tiny graph (tokenizer and everything downstream) from an empty store (goal: <= 5 min).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = Path(__file__).with_name("RESULTS.md")


def materialize(selection: str, env: dict[str, str]) -> float:
    """Wall seconds of `dagster asset materialize --select SELECTION --partition tiny`."""
    started = time.perf_counter()
    subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "doge_dagster.definitions", "--select", selection, "--partition", "tiny"],
        cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - started


def by_hand(spec: Path, env: dict[str, str]) -> float:
    """Wall seconds of the accelerate command a user would type for the same spec."""
    from doge_dagster.recipes import load_recipe
    from doge_dagster.training.launch import accelerate_command

    command = accelerate_command("pretrain", str(spec), load_recipe("tiny").stages.pretrain.launch)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def machine() -> str:
    """CPU model and core count."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return f"{model}, {os.cpu_count()} cores"


def main() -> None:
    """Run both measurements and print (and optionally record) a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="doge-bench-"))
    store, home = work / "store", work / "home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "DOGE_ARTIFACT_ROOT": str(store)}

    graph_seconds = materialize("tokenizer*", env)
    base = next((store / "doge_base" / "tiny").glob("[!.]*"))
    spec = store / "doge_base" / "tiny" / ".work" / base.name / "spec.json"
    dagster_runs, hand_runs = [], []
    for _ in range(args.repeats):
        shutil.rmtree(base)
        dagster_runs.append(materialize("doge_base", env))
        shutil.rmtree(base)
        hand_runs.append(by_hand(spec, env))
    assert json.loads((base / "manifest.json").read_text())["version"] == base.name

    dagster_s, hand_s = statistics.median(dagster_runs), statistics.median(hand_runs)
    table = "\n".join([
        f"### Training orchestration, {datetime.date.today()}, {machine()}",
        "",
        "| measurement | seconds | ratio | goal |",
        "|---|---|---|---|",
        f"| doge_base[tiny] by hand (`accelerate launch`), median of {args.repeats} | {hand_s:.1f} | 1.00x | |",
        f"| doge_base[tiny] through Dagster (CLI materialize), median of {args.repeats} | {dagster_s:.1f} | {dagster_s / hand_s:.2f}x | <= 1.10x |",
        f"| whole tiny graph from an empty store (`tokenizer*`) | {graph_seconds:.1f} | | <= 300 s |",
    ])  # fmt: skip
    print(table)
    if args.record:
        with RESULTS.open("a") as handle:
            handle.write("\n" + table + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
