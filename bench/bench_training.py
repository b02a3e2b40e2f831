"""Orchestration overhead, the whole tiny graph and its evaluation steps, measured in one run on this machine.

  python bench/bench_training.py [--repeats 2] [--record]

1. The whole tiny graph (tokenizer and everything downstream) from an empty store (goal: <= 5 min), with
   the wall time of every training and evaluation step from the run's event log.
2. doge_base[tiny] materialized through Dagster (CLI) against the same `accelerate launch` command run
   by hand on the same spec, interleaved, each from scratch (no checkpoint to resume) (goal: <= 1.10x).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from measure import ROOT, machine, materialize, report, step_timings

REPORTED_STEPS = ("doge_base", "doge_instruct_sft", "doge_instruct", "doge_reason_distill", "doge_reason",
                  "base_eval", "instruct_eval", "reason_eval")  # fmt: skip


def by_hand(spec: Path, env: dict[str, str]) -> float:
    """Wall seconds of the accelerate command a user would type for the same spec."""
    from doge_dagster.launching.command import accelerate_command
    from doge_dagster.recipes import load_recipe

    command = accelerate_command("pretrain", str(spec), load_recipe("tiny").stages.pretrain.launch)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def forget_doge_base(base: Path, work: Path) -> None:
    """Remove the published model and every checkpoint, keeping the spec: the next run trains from step 0."""
    shutil.rmtree(base, ignore_errors=True)
    for child in work.iterdir():
        if child.name != "spec.json":
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def main() -> None:
    """Run the measurements and print (and optionally record) a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="doge-bench-"))
    store, home = work / "store", work / "home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "DOGE_ARTIFACT_ROOT": str(store)}
    load_start = os.getloadavg()[0]

    graph_seconds = materialize("tokenizer*", env)
    steps = step_timings(home)
    base = next((store / "doge_base" / "tiny").glob("[!.]*"))
    base_work = store / "doge_base" / "tiny" / ".work" / base.name
    dagster_runs, hand_runs = [], []
    for _ in range(args.repeats):
        forget_doge_base(base, base_work)
        dagster_runs.append(materialize("doge_base", env))
        forget_doge_base(base, base_work)
        hand_runs.append(by_hand(base_work / "spec.json", env))
    assert json.loads((base / "manifest.json").read_text())["version"] == base.name

    dagster_s, hand_s = statistics.median(dagster_runs), statistics.median(hand_runs)
    evals = sum(steps[name].whole for name in ("base_eval", "instruct_eval", "reason_eval"))
    table = "\n".join([
        f"### Training orchestration, {datetime.date.today()}, {machine()}",
        "",
        f"1-min load average at start / end: {load_start:.2f} / {os.getloadavg()[0]:.2f}.",
        "",
        "| measurement | seconds | ratio | goal |",
        "|---|---|---|---|",
        f"| whole tiny graph from an empty store (`tokenizer*`) | {graph_seconds:.1f} | | <= 300 s |",
        *(f"| - step `{name}` in that run | {steps[name].whole:.1f} | | |" for name in REPORTED_STEPS),
        f"| - the three evaluation steps together | {evals:.1f} | | |",
        f"| doge_base[tiny] by hand (`accelerate launch`), median of {args.repeats} | {hand_s:.1f} | 1.00x | |",
        f"| doge_base[tiny] through Dagster (CLI materialize), median of {args.repeats} | {dagster_s:.1f} | {dagster_s / hand_s:.2f}x | <= 1.10x |",
    ])  # fmt: skip
    report(table, args.record)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
