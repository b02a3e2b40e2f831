"""The GPU benchmark keeps working where no GPU is: its CPU smoke runs, raw loop and HF Trainer, print a row.

Numbers are not asserted (benchmarks measure, tests do not time); the rows must name the shape and the
attention implementation the model was built with.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import PROJECT_ROOT, tail

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
