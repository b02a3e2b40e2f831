"""The tiny chain under perturbation: other training seeds and the AVX2 kernel path must pass every gate.

  python bench/bench_robustness.py [--seeds 0 1 2] [--no-avx2] [--record]

CPU kernels round differently from one instruction set to the next, and a different seed perturbs training
as much, so a recipe that only converges on the machine it was tuned on fails its gates elsewhere. This
runs the README quick start (`tokenizer*`, partition `tiny`) once per variant, each in a store and
DAGSTER_HOME of its own:

- `seed+K` for each K in --seeds: every stage's training seed shifted by K (K = 0 is the shipped recipe);
- `avx2`: the shipped recipe with PyTorch, oneDNN and MKL restricted to AVX2 kernels
  (`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`), as on a CPU
  without AVX-512.

The mixtures do not depend on training seeds, so the first variant's data artifacts are copied into the
others' stores (reported `cached`). The table gives every report's scores, the smallest margin to a gate,
the pretraining tokens/s (to scale the times to another machine) and the spread of each score; the run
exits 1 if any variant failed a check.
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

import yaml
from measure import AVX2_ENV, ROOT, machine, report

sys.path.insert(0, str(ROOT))
from doge_dagster.stages import CHAIN

DATA_ASSETS = ("tokenizer", *(mixture.asset for mixture in CHAIN.mixtures))
MODELS = tuple(stage.asset for stage in CHAIN.stages)
REPORTS = tuple(report.asset for report in CHAIN.reports)
TRAINER_SEED = 42  # what transformers and TRL use when a stage sets no seed
COLUMNS = (("base_eval", "arithmetic_mc"), ("base_eval", "arithmetic_gen"), ("instruct_eval", "arithmetic_mc"),
           ("instruct_eval", "arithmetic_gen"), ("reason_eval", "arithmetic_gen"), ("reason_eval", "arithmetic_think"),
           ("reason_eval", "format_rate"))  # fmt: skip


def seeded_recipes(folder: Path, offset: int) -> Path:
    """`folder/tiny.yaml`: the shipped tiny recipe with every stage's training seed shifted by `offset`."""
    raw = yaml.safe_load((ROOT / "recipes" / "tiny.yaml").read_text())
    for section in raw["stages"].values():
        section["training"]["seed"] = int(section["training"].get("seed", TRAINER_SEED)) + offset
    folder.mkdir(parents=True)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder


def manifests(store: Path, asset: str) -> list[dict]:
    """Every published manifest of `asset[tiny]` in a store."""
    return [json.loads(path.read_text()) for path in sorted((store / asset / "tiny").glob("[!.]*/manifest.json"))]


def run_variant(name: str, work: Path, env_extra: dict[str, str], recipes: Path | None, data_from: Path | None):
    """One quick start; returns its row: result, seconds, scores, gate margin, failed checks, tokens/s."""
    store, home = work / "store", work / "home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    if data_from is not None:
        for asset in DATA_ASSETS:
            shutil.copytree(data_from / asset, store / asset)
    env = {**os.environ, **env_extra, "DAGSTER_HOME": str(home), "DOGE_ARTIFACT_ROOT": str(store),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    env.pop("DOGE_RECIPES_DIR", None)
    if recipes is not None:
        env["DOGE_RECIPES_DIR"] = str(recipes)
    command = [str(Path(sys.executable).with_name("dagster")), "asset", "materialize", "-m",
               "doge_dagster.definitions", "--select", "tokenizer*", "--partition", "tiny"]  # fmt: skip
    started = time.perf_counter()
    with (work / "chain.log").open("w") as log:
        returncode = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    seconds = time.perf_counter() - started
    row = {"variant": name, "rc": returncode, "seconds": seconds, "failed": [], "scores": {}, "margin": None}
    margins = []
    for asset in (*MODELS, *REPORTS):
        found = manifests(store, asset)
        if not found:
            row["failed"].append(f"{asset}: not published")
            continue
        metadata = found[-1]["metadata"]
        row["failed"] += [f"{asset}:{check}" for check, (passed, _) in metadata.get("checks", {}).items() if not passed]
        if asset == "doge_base":
            row["tokens_per_second"] = metadata.get("tokens_per_second")
        if asset in REPORTS:
            row["scores"].update({(asset, key): value for key, value in metadata.get("scores", {}).items()})
            if metadata.get("format_rate") is not None:
                row["scores"][(asset, "format_rate")] = metadata["format_rate"]
            margins += [gate_margin(asset, metadata)]
    row["margin"] = min((m for m in margins if m is not None), default=None)
    return row


def gate_margin(asset: str, metadata: dict) -> float | None:
    """How far the report is from failing its gates: the smallest of (delta + tolerance) and (format - minimum)."""
    from doge_dagster.recipes import load_recipe

    stage = asset.removesuffix("_eval")
    settings = load_recipe("tiny").evaluation.model_dump()[stage]
    candidates = []
    for row in metadata.get("comparison") or []:
        candidates.append(row["delta"] + settings["regression_tolerance"])
    if settings.get("min_format_rate") is not None and metadata.get("format_rate") is not None:
        candidates.append(metadata["format_rate"] - settings["min_format_rate"])
    return min(candidates, default=None)


def table(rows: list[dict], started: str) -> str:
    """Markdown: one row per variant, then the spread (min - max) of each score."""
    head = ["variant", "result", *(f"{asset.removesuffix('_eval')} {key}" for asset, key in COLUMNS),
            "gate margin", "pretrain tok/s", "graph s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        result = "pass" if row["rc"] == 0 and not row["failed"] else "FAIL: " + ", ".join(row["failed"] or ["rc"])
        scores = [f"{row['scores'][column]:.2f}" if column in row["scores"] else "-" for column in COLUMNS]
        margin = f"{row['margin']:+.2f}" if row["margin"] is not None else "-"
        rate = f"{row.get('tokens_per_second') or 0:,.0f}"
        lines.append(f"| {row['variant']} | {result} | " + " | ".join(scores) + f" | {margin} | {rate} | {row['seconds']:.0f} |")
    spread = []
    for column in COLUMNS:
        values = [row["scores"][column] for row in rows if column in row["scores"]]
        spread.append(f"{min(values):.2f}-{max(values):.2f}" if values else "-")
    margins = [row["margin"] for row in rows if row["margin"] is not None]
    lines.append("| spread | | " + " | ".join(spread) + f" | {min(margins, default=0):+.2f} (smallest) | | |")
    return "\n".join([
        f"### Tiny chain robustness, {started}, {machine()}", "",
        ("Each variant is the README quick start from an empty store (data copied from the first). Scores on 50 "
         "held-out questions each; the gate margin is the smallest distance of any report to failing its gate "
         "(regression tolerance or minimum format rate)."), "", *lines,
    ])  # fmt: skip


def throughput_table(work: Path, variants: list[str]) -> str:
    """Markdown: each training stage's tokens/s (input tokens, padding included) per variant, from its manifest."""
    lines = ["| variant | " + " | ".join(MODELS) + " |", "|" + "---|" * (len(MODELS) + 1)]
    for name in variants:
        rates = []
        for asset in MODELS:
            found = manifests(work / name / "store", asset)
            rate = found[-1]["metadata"].get("tokens_per_second") if found else None
            rates.append(f"{rate:,.0f}" if rate else "-")
        lines.append(f"| {name} | " + " | ".join(rates) + " |")
    return "\n".join(["", "Training throughput, tokens/s of each stage (input tokens, padding included):", "", *lines])


def main() -> None:
    """Run the variants and print (and optionally record) the table; exit 1 if any variant failed a check."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="training seed offsets")
    parser.add_argument("--no-avx2", dest="avx2", action="store_false", help="skip the AVX2 kernel variant")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the stores and logs (path printed)")
    parser.add_argument("--throughput-from", type=Path, help="only print the throughput table of a kept run's folder")
    args = parser.parse_args()
    if args.throughput_from:
        print(throughput_table(args.throughput_from, sorted(p.name for p in args.throughput_from.iterdir() if p.is_dir())))
        return
    work = Path(tempfile.mkdtemp(prefix="doge-robustness-"))
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    variants = ([("avx2", AVX2_ENV, 0)] if args.avx2 else []) + [(f"seed+{k}", {}, k) for k in args.seeds]
    rows, data_from = [], None
    for name, env_extra, offset in variants:
        folder = work / name
        recipes = seeded_recipes(folder / "recipes", offset) if offset else None
        row = run_variant(name, folder, env_extra, recipes, data_from)
        print(f"{name}: rc {row['rc']}, {row['seconds']:.0f}s, failed {row['failed']}, margin {row['margin']}", flush=True)
        rows.append(row)
        if data_from is None and (folder / "store" / "grpo_mixture").is_dir():
            data_from = folder / "store"
    report(table(rows, started) + "\n" + throughput_table(work, [row["variant"] for row in rows]), args.record)
    print(f"stores and logs: {work}" if args.keep else "", end="")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if all(row["rc"] == 0 and not row["failed"] for row in rows) else 1)


if __name__ == "__main__":
    main()
