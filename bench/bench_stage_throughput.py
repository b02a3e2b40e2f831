"""Training tokens/s of each stage alone, with the pipeline's trainer defaults against TRL's, on this CPU.

  python bench/bench_stage_throughput.py --store .doge [--avx2] [--steps 12] [--record]

Needs a store holding a materialized tiny chain (the README quick start). Each measurement runs in a
fresh process: the stage's own trainer, built by the pipeline's runner (`runner.build_args`, the stage
trainer's `build_trainer`) from the stage's parent model and mixture, trains --steps steps after 4 warm-up
steps, and tokens/s (input tokens, padding included) are timed over the measured steps only. `TRL
defaults` adds what TRL's configs switch on when a recipe says nothing (`bf16` autocast, activation
checkpointing); `pipeline` is what the pipeline runs (fp32, no checkpointing, unless the recipe asks).
`--avx2` restricts PyTorch, oneDNN and MKL to AVX2 kernels, as on a CPU without AVX-512, where bf16 has
no native instructions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import AVX2_ENV, ROOT, machine, report

STAGES = ("pretrain", "sft", "dpo", "distill")
TRL_DEFAULTS = {"bf16": True, "activation_checkpointing": True}
WARMUP_STEPS = 4


def measure(store: str, stage: str, extra: dict, steps: int) -> dict:
    """In this process: train `stage` for WARMUP_STEPS + steps and time the last `steps`."""
    sys.path.insert(0, str(ROOT))
    from transformers import TrainerCallback, set_seed

    from doge_dagster.artifacts import ArtifactStore
    from doge_dagster.launching.spec import LaunchSpec
    from doge_dagster.recipes import load_recipe
    from doge_dagster.training.runner import build_args, initial_model, stage_context

    artifacts = ArtifactStore(store)
    recipe = load_recipe("tiny")
    record = recipe.chain.stage(stage)
    parent = recipe.chain.stage(record.parent).asset if record.parent else None
    needed = ["tokenizer", recipe.chain.mixture(record.mixture).asset, *([parent] if parent else [])]
    latest = {asset: artifacts.latest(asset, "tiny") for asset in needed}
    missing = [asset for asset, manifest in latest.items() if manifest is None]
    if missing:
        raise SystemExit(f"{store} has no published {missing}: materialize the tiny chain first (README quick start)")
    work = Path(tempfile.mkdtemp(prefix="doge-stage-bench-"))
    spec = LaunchSpec(stage, record.asset, "tiny", "bench", {asset: m.version for asset, m in latest.items()},
                      recipe.model_dump(mode="json"), store, str(work))  # fmt: skip
    ctx = stage_context(spec)
    stage_trainer = record.trainer_class()()
    set_seed(42)
    model = initial_model(ctx, stage_trainer)
    # As if the recipe said so: the pipeline's own build_args then turns the section into the trainer config.
    ctx.section.training.update(extra, max_steps=WARMUP_STEPS + steps, save_steps=10_000, logging_steps=1000)
    args = build_args(ctx, stage_trainer, work / "checkpoints")
    timing = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == WARMUP_STEPS:
                timing.update(start=time.perf_counter(), tokens=state.num_input_tokens_seen)

        def on_train_end(self, args, state, control, **kwargs):
            seconds = time.perf_counter() - timing["start"]
            timing.update(seconds_per_step=seconds / steps, tokens_per_second=(state.num_input_tokens_seen - timing["tokens"]) / seconds)

    trainer = stage_trainer.build_trainer(ctx, model, args)
    trainer.add_callback(Timer())
    try:
        trainer.train()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"bf16": args.bf16, "checkpointing": args.activation_checkpointing, **timing}


def run_child(store: str, stage: str, trl_defaults: bool, steps: int, avx2: bool) -> dict:
    """One measurement in a fresh process (the kernel settings are read at import)."""
    env = {**os.environ, **(AVX2_ENV if avx2 else {}), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, __file__, "--child", stage, "--store", store, "--steps", str(steps)]
    command += ["--trl-defaults"] if trl_defaults else []
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT-JSON ")]
    if result.returncode or not lines:
        raise RuntimeError(f"{stage} failed (rc {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT-JSON "))


def main() -> None:
    """Measure every stage both ways and print (and optionally record) a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=str(ROOT / ".doge"), help="artifact root holding a tiny chain")
    parser.add_argument("--steps", type=int, default=12, help="measured steps after the warm-up")
    parser.add_argument("--avx2", action="store_true", help="AVX2 kernels only (a CPU without AVX-512)")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    parser.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--trl-defaults", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT-JSON " + json.dumps(measure(args.store, args.child, TRL_DEFAULTS if args.trl_defaults else {}, args.steps)))
        return
    rows = ["| stage | trainer defaults | bf16 | checkpointing | s/step | tokens/s | pipeline / TRL |", "|---|---|---|---|---|---|---|"]
    pretrain_rate = None
    for stage in STAGES:
        ours = run_child(args.store, stage, False, args.steps, args.avx2)
        pretrain_rate = pretrain_rate or ours["tokens_per_second"]
        variants = [("pipeline", ours)]
        if stage != "pretrain":  # HF Trainer's own defaults are already the pipeline's
            variants.append(("TRL defaults", run_child(args.store, stage, True, args.steps, args.avx2)))
        for label, row in variants:
            speedup = f"{ours['tokens_per_second'] / row['tokens_per_second']:.2f}x" if label != "pipeline" else ""
            rows.append(f"| {stage} | {label} | {row['bf16']} | {row['checkpointing']} | {row['seconds_per_step']:.3f} | "
                        f"{row['tokens_per_second']:,.0f} | {speedup} |")  # fmt: skip
        print(rows[-1], flush=True)
    kernels = "AVX2 kernels only (ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA / MKL)" if args.avx2 else "default kernels"
    report("\n".join([
        f"### Stage throughput alone, {datetime.datetime.now():%Y-%m-%d %H:%M}, {kernels}, {machine()}", "",
        (f"{args.steps} steps timed after {WARMUP_STEPS} warm-up steps, one fresh process per row, the tiny "
         "recipe's batch and lengths; tokens are input tokens, padding included."), "", *rows,
    ]), args.record)  # fmt: skip


if __name__ == "__main__":
    main()
