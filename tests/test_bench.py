"""Benchmarks that double as tests.

The GPU benchmark keeps working where no GPU is: its CPU smoke runs, raw loop and HF Trainer, print a row.
Numbers are not asserted (benchmarks measure, tests do not time); the rows must name the shape and the
attention implementation the model was built with.

The CPU generation benchmark's quick run prints its rows for Doge-20M, beside the seed's CPU figure.

The mixture benchmark's memory measure, at a small size, is the test that a mixture's memory does not grow
with its size: a ratio of two real builds' peak memory, not a timing.

The device check (bench/gpu_check.sh) runs in its reduced CPU mode: every part through the same code as on a GPU
(the bench rows, the data setup, each stage through `accelerate launch -m doge_dagster.training`), each row printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from helpers import PROJECT_ROOT, tail

DEVICE_CHECK_ROWS = [("bench", "Doge-20M"), ("bench", "Doge-60M"), ("setup", "data artifacts"), ("pretrain", "Doge-20M"),
                     ("pretrain", "Doge-160M"), ("sft", "Doge-20M"), ("dpo", "Doge-20M"), ("grpo", "Doge-20M")]  # fmt: skip

SMOKE = ["--device", "cpu", "--sizes", "20M", "--seq", "32", "--batch", "1", "--steps", "1", "--warmup", "1"]


def bench_gpu(*extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "bench/bench_gpu.py", *SMOKE, *extra],
        check=False, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def run_bench_gpu(*extra: str) -> str:
    result = bench_gpu(*extra)
    assert result.returncode == 0, tail(result.stdout + result.stderr)
    return result.stdout


def test_the_raw_loop_smoke_run_prints_a_row():
    output = run_bench_gpu("--attn", "eager")
    assert "raw loop" in output
    assert "| Doge-20M | eager | 1 x 32 |" in output, output


@pytest.mark.slow
def test_the_trainer_smoke_run_prints_a_row():
    output = run_bench_gpu("--trainer", "2")
    assert "HF Trainer, recipe optimizer" in output
    assert "| Doge-20M | sdpa | 1 x 2 acc x 32 |" in output, output


def test_attention_override_is_refused_with_the_trainer():
    result = bench_gpu("--trainer", "2", "--attn", "eager")
    assert result.returncode == 2 and "--attn applies to the raw loop only" in result.stderr


def test_the_cpu_generation_bench_quick_run_prints_its_rows():
    """`bench/bench_cpu_generation.py --quick` (about 10 s): Doge-20M generates exactly 10 new tokens per call (the
    script fails otherwise) with the threads torch picks and with 1 thread, each row beside the seed's 142 tokens/s
    and its ratio, the machine and load average named, and nothing appended to bench/RESULTS.md without --record."""
    heading = "CPU generation speed ("
    results_md = PROJECT_ROOT / "bench" / "RESULTS.md"
    sections = results_md.read_text().count(heading)
    result = subprocess.run([sys.executable, "bench/bench_cpu_generation.py", "--quick"], check=False,
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, tail(result.stdout + result.stderr)
    output = result.stdout
    assert "CPU generation speed (quick, `bench/bench_cpu_generation.py`)" in output, output
    assert "ATen CPU capability" in output and "1-min load average at start / end" in output, output
    assert "exactly 10 new tokens per `generate`" in output, output
    # model | parameters | attention | threads | tokens/s | range | seed | ratio to seed | others' cores
    row = r"^\| Doge-20M \| 13\.1M \| \w+ \| (\d+) \| ([\d.]+) \| [\d.]+-[\d.]+ \| 142 \| ([\d.]+)x \| [\d.]+ \|$"
    rows = re.findall(row, output, flags=re.MULTILINE)
    assert rows and rows[-1][0] == "1" and len(rows) == len({threads for threads, _, _ in rows}) <= 2, output
    assert all(float(rate) > 0 and abs(float(ratio) - float(rate) / 142) < 0.01 for _, rate, ratio in rows), rows
    assert results_md.read_text().count(heading) == sections, "the quick run recorded into RESULTS.md"


def test_mixture_memory_does_not_grow_with_its_size(tmp_path):
    """Two real pretraining mixtures, 2M and 20M tokens of generated text, each built in a process of its own on
    every core: the peak heap of the build's process tree (build process and tokenizer workers: anonymous RSS
    summed from /proc every 0.1 s) is at most 1.2x larger for the 10x larger mixture.

    Shards of 100 rows (0.2M tokens) make both builds many shards long, as real mixtures are (the writer holds
    one shard before writing it; the bench's full run keeps the mixer's 10,000-row shards at 20M / 200M tokens).
    """
    figures = tmp_path / "figures.json"
    command = [sys.executable, "bench/bench_mixture_scale.py", "--only", "memory", "--tokens", "2M", "--scale", "10",
               "--shard-rows", "100", "--json", str(figures)]  # fmt: skip
    result = subprocess.run(command, check=False, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, tail(result.stdout + result.stderr)
    memory = json.loads(figures.read_text())["memory"]
    small, large = memory["N"], memory["10N"]
    assert small["tokens"] == 2_000_000 and large["tokens"] == 20_000_000
    # the tokenizer workers were there and measured: the build process plus one per core (none on one core)
    cores = len(os.sched_getaffinity(0))
    assert small["processes"] == large["processes"] == (1 + cores if cores > 1 else 1)
    assert large["cpu_workers"] > 5 * small["cpu_workers"] if cores > 1 else large["cpu_workers"] == 0
    # the heap of the tree (anonymous RSS summed from /proc): at most 1.2x, and against a baseline of 300-500 MiB
    # (libraries' data, counted once per process) grown by under a quarter of the extra tokens' int32 bytes
    # (17 MiB here; a few MiB measured), which a mixer keeping every row it wrote (+70 MiB) would fail
    assert large["peak_rss_anon_mib"] <= 1.2 * small["peak_rss_anon_mib"], result.stdout
    assert memory["growth_mib"]["peak_rss_anon_mib"] < 0.25 * memory["extra_tokens_mib"], result.stdout


@pytest.mark.slow
@pytest.mark.timeout(960)
def test_the_device_check_runs_every_part_in_its_cpu_mode(tmp_path):
    """`bash bench/gpu_check.sh --cpu` (85-140 s here, idle to loaded): every row printed and passed, the results written under
    $OUT (the table, the JSON, every part's log), nothing appended to bench/RESULTS.md, no scratch store left."""
    out = tmp_path / "out"
    results_md = PROJECT_ROOT / "bench" / "RESULTS.md"
    sections = results_md.read_text().count("### Device check")
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu"], check=False, cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, tail(result.stdout + result.stderr)
    section = (out / "RESULTS-section.md").read_text()
    assert section.startswith("### Device check (`bench/gpu_check.sh`, cpu mode), "), section
    for part, what in DEVICE_CHECK_ROWS:
        row = f"| {part} | {what} | ok |"
        assert row in result.stdout and row in section, f"{row} missing:\n{tail(result.stdout)}"
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(row["part"], row["what"]) for row in rows] == DEVICE_CHECK_ROWS
    assert all(row["tokens_per_s"] for row in rows if row["part"] != "setup"), rows
    log = (out / "parts.log").read_text()
    assert log.count("===== ") == 7 and "-m doge_dagster.training grpo --spec" in log
    assert results_md.read_text().count("### Device check") == sections, "the CPU mode recorded into RESULTS.md"
    assert not list(tmp_path.glob("doge-gpu-check-*")), "the scratch store was left behind"
