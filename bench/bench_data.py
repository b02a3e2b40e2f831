"""Benchmark the pretraining data path and the code location's load time, in one run.

    .venv/bin/python bench/bench_data.py [--quick]

Measures, on a fixed generated corpus (four pretraining sources in the Hub layout, BPE tokenizer trained on it):
- mixer: `mixing.write_mixture(kind="pretrain")` from `open_source` streams to train/test shards on disk;
- limit: batch tokenization, `tokenizer(texts, add_special_tokens=False)`, of as many documents per source as
  the mixer used, texts already in memory (and, for reference, the Rust backend's `encode_batch_fast`);
- seed: the seed's way, `Dataset.from_list(rows).map(tokenize, batched=True)` over whole sources, then a
  second map that concatenates and chunks, `select` of the share, concatenate, shuffle, split;
- load: `python -c "import doge_dagster.definitions"` against `python -c "import dagster"`.
Prints a markdown table and appends it, dated, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import machine, report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from doge_dagster.data import generated, mixing, sources
from doge_dagster.data.tokenizer import train_bpe
from doge_dagster.recipes import SourceRef, TokenizerRecipe

RATIOS = {"fineweb-edu": 0.7, "cosmopedia-v2": 0.2, "python-edu": 0.05, "finemath": 0.05}
MAX_LENGTH, SEED, BATCH = 2048, 233, 1000
# Generated documents average 130-160 tokens: one row per 100 budget tokens leaves 30-60 % headroom.
TOKENS_PER_ROW = 100


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed_rounds(fns: dict, rounds: int) -> tuple[dict[str, float], dict[str, float], dict]:
    """Median wall and CPU seconds of each fn over `rounds` after one untimed warm-up round; each fn's last result.

    The fns run in turn within every round, so background load on the machine hits them alike; CPU time is
    the cross-check when other processes share the cores (it does not credit multithreading).
    """
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    results = {}
    for round_index in range(rounds + 1):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), cpu_seconds()
            results[name] = fn()
            if round_index:
                samples[name].append((time.perf_counter() - start, cpu_seconds() - start_cpu))
    medians = [{name: statistics.median(pair[i] for pair in pairs) for name, pairs in samples.items()} for i in (0, 1)]
    return medians[0], medians[1], results


def build_corpus(root: Path, total_tokens: int):
    """Write the four sources in the Hub layout; return their rows (in file order) and a trained tokenizer."""
    rows = {}
    for name, ratio in RATIOS.items():
        count = max(200, math.ceil(total_tokens * ratio / TOKENS_PER_ROW))
        generated.write_hub_layout(name, root, num_rows=count, seed=0)
        rows[name] = list(generated.generate_rows(name, count, seed=0))  # same rows as the parquet files
    sample = (row["text"] for name in RATIOS for row in rows[name][:5000])
    tokenizer = train_bpe(sample, TokenizerRecipe(source="train_bpe", vocab_size=8192))
    return rows, tokenizer


def run_mixer(root: Path, tokenizer, total_tokens: int) -> mixing.MixtureStats:
    """The mixer from fresh streams into a fresh folder, every core (a finished folder would be loaded, not built)."""

    def stream(name: str, ratio: float):
        return sources.open_source(SourceRef(dataset=name, ratio=ratio, kind="hub", path=str(root)), seed=SEED)

    entries = [{"name": name, "ratio": ratio, "dataset": stream(name, ratio)} for name, ratio in RATIOS.items()]
    with tempfile.TemporaryDirectory(prefix="mixture-", dir=root) as out:
        return mixing.write_mixture(
            entries, total_tokens, tokenizer, out, kind="pretrain", max_length=MAX_LENGTH, seed=SEED
        )


def run_limit(texts: list[str], encode) -> int:
    """Tokenize `texts` in batches; return the token count with one EOS per document, as the mixer counts."""
    return sum(sum(map(len, encode(texts[i : i + BATCH]))) for i in range(0, len(texts), BATCH)) + len(texts)


def run_seed(rows: dict[str, list[dict]], tokenizer, total_tokens: int):
    """The seed's pipeline: tokenize whole sources with datasets.map, pack with a second map, take the share."""
    from datasets import Dataset, concatenate_datasets

    eos = tokenizer.eos_token_id

    def tokenize(batch):  # as the seed: input_ids and attention_mask, EOS appended to both
        encoded = tokenizer(batch["text"], add_special_tokens=False)
        return {
            "input_ids": [ids + [eos] for ids in encoded["input_ids"]],
            "attention_mask": [mask + [1] for mask in encoded["attention_mask"]],
        }

    def group(batch):
        flat = [token for ids in batch["input_ids"] for token in ids]
        usable = len(flat) // MAX_LENGTH * MAX_LENGTH
        return {"input_ids": [flat[i : i + MAX_LENGTH] for i in range(0, usable, MAX_LENGTH)]}

    parts = []
    for name, ratio in RATIOS.items():
        dataset = Dataset.from_list(rows[name])
        dataset = dataset.map(tokenize, batched=True).select_columns(["input_ids"])
        dataset = dataset.map(group, batched=True)
        parts.append(dataset.select(range(min(len(dataset), math.ceil(total_tokens * ratio / MAX_LENGTH)))))
    mixed = concatenate_datasets(parts).shuffle(seed=SEED)
    return mixed.train_test_split(test_size=0.02, seed=SEED)


def run_python(code: str) -> None:
    """A fresh interpreter running `code` in the project root; its last stderr line on failure."""
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"`python -c {code!r}` failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")


def measure_data(total: int, repeats: int) -> tuple[dict, dict, dict, str]:
    """Wall and CPU seconds and tokens out of mixer, limit, backend limit and seed; a line describing the run."""
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        root = Path(tmp)
        rows, tokenizer = build_corpus(root, total)
        # A first mixer run gives the documents used per source (the same every run: seeded).
        stats = run_mixer(root, tokenizer, total)
        assert sum(s.tokens for s in stats.sources.values()) == total and stats.max_ratio_error() < 1e-3
        texts = [row["text"] for name, s in stats.sources.items() for row in rows[name][: s.rows_used]]
        backend = tokenizer.backend_tokenizer
        measures = {
            "mixer": lambda: run_mixer(root, tokenizer, total),
            "limit": lambda: run_limit(texts, lambda batch: tokenizer(batch, add_special_tokens=False)["input_ids"]),
            "backend": lambda: run_limit(
                texts, lambda batch: [e.ids for e in backend.encode_batch_fast(batch, add_special_tokens=False)]
            ),
            "seed": lambda: run_seed(rows, tokenizer, total),
        }
        wall, cpu, results = timed_rounds(measures, repeats)
    seed_tokens = sum(map(len, results["seed"].values())) * MAX_LENGTH
    tokens = {"mixer": total, "limit": results["limit"], "backend": results["backend"], "seed": seed_tokens}
    rows_read = sum(s.rows_read for s in stats.sources.values())
    note = (
        f"Mixer: {total:,} tokens, ratios 0.7/0.2/0.05/0.05, packed to {MAX_LENGTH}; it read {rows_read:,} of the "
        f"{sum(map(len, rows.values())):,} generated rows, which the seed pipeline tokenizes whole ({seed_tokens:,} "
        f"tokens out). Medians of {repeats} interleaved rounds after a warm-up round"
    )
    return wall, cpu, tokens, note


def measure_load() -> tuple[dict, dict]:
    """Wall and CPU seconds of fresh interpreters importing the code location, and dagster alone (NaN if broken)."""
    try:
        imports = {"load": "import doge_dagster.definitions", "bare": "import dagster"}
        wall, cpu, _ = timed_rounds({key: lambda code=code: run_python(code) for key, code in imports.items()}, 5)
        return wall, cpu
    except RuntimeError as error:  # the code location is broken: report it, keep the data numbers
        print(error, file=sys.stderr)
        return {"load": math.nan, "bare": math.nan}, {"load": math.nan, "bare": math.nan}


def table(wall: dict, cpu: dict, tokens: dict) -> list[str]:
    """Markdown rows: throughputs and ratios by wall and by CPU time; goals judged on wall time."""

    def rate(label: str, key: str) -> str:
        return (
            f"| {label} | {tokens[key] / wall[key] / 1e6:.2f}M tok/s | {tokens[key] / cpu[key] / 1e6:.2f}M tok/s | | |"
        )

    def ratio(label: str, top: str, bottom: str, goal: str = "", check=None) -> str:
        # throughput ratio for token measures, time ratio for the imports
        values = [
            (tokens[top] / s[top]) / (tokens[bottom] / s[bottom]) if top in tokens else s[top] / s[bottom]
            for s in (wall, cpu)
        ]
        met = "" if check is None else "failed" if math.isnan(values[0]) else "yes" if check(values[0]) else "NO"
        return f"| {label} | {values[0]:.2f}x | {values[1]:.2f}x | {goal} | {met} |"

    return [
        "| measure | wall time | CPU time | goal | met (wall) |",
        "|---|---|---|---|---|",
        rate("mixer `write_mixture` (stream, tokenize on every core, pack, split, write shards)", "mixer"),
        rate("limit `tokenizer(texts)`, same doc count, in memory", "limit"),
        rate("limit, Rust backend `encode_batch_fast` (reference)", "backend"),
        rate("seed `from_list` + `map` tokenize + `map` pack", "seed"),
        ratio("**mixer / limit**", "mixer", "limit", ">= 0.8x", lambda value: value >= 0.8),
        ratio("mixer / backend limit (reference)", "mixer", "backend"),
        ratio("**mixer / seed**", "mixer", "seed", ">= 2x", lambda value: value >= 2),
        f"| `import doge_dagster.definitions` | {wall['load']:.2f} s | {cpu['load']:.2f} s | | |",
        f"| `import dagster` | {wall['bare']:.2f} s | {cpu['bare']:.2f} s | | |",
        ratio("**load / bare**", "load", "bare", "<= 1.5x", lambda value: value <= 1.5),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1M tokens instead of 5M")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
    parser.add_argument("--no-write", action="store_true", help="print only, do not append to bench/RESULTS.md")
    args = parser.parse_args()
    total = 1_000_000 if args.quick else 5_000_000
    import datasets

    datasets.disable_progress_bars()
    datasets.disable_caching()
    start_load = os.getloadavg()[0]
    wall, cpu, tokens, note = measure_data(total, args.repeats)
    load_wall, load_cpu = measure_load()
    wall.update(load_wall)
    cpu.update(load_cpu)
    when = f"{datetime.datetime.now():%Y-%m-%d %H:%M} ({'quick, 1M' if args.quick else 'full, 5M'} tokens)"
    load_avg = f"{start_load:.2f} / {os.getloadavg()[0]:.2f}"
    summary = f"{note}; imports: medians of 5 fresh interpreters each, interleaved. 1-min load average at start / end: {load_avg}."
    report(
        "\n".join([f"## {when}", "", f"Machine: {machine()}.", "", summary, "", *table(wall, cpu, tokens)]),
        not args.no_write,
    )


if __name__ == "__main__":
    main()
