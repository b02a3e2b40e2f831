"""CPU generation speed of the seed Doge shapes: tokens/s of `generate` at batch 1, next to the seed's figures.

  python bench/bench_cpu_generation.py [--record]     # Doge-20M/60M/160M/320M, 100 new tokens, 3 repetitions
  python bench/bench_cpu_generation.py --quick        # Doge-20M, 10 new tokens: a smoke run (the test's)

The seed's model cards give tokens/s on an Intel i7-11 CPU: 142 / 62 / 28 / 16 for Doge-20M / 60M / 160M / 320M.
Each shape is built from its recipe's model section (`bench_gpu.model_for`, as `doge_base` builds it) with random
weights, fp32, transformers' default attention, and generates greedily (`use_cache=True`) from a short prompt of
random token ids: exactly `--tokens` new tokens (`min_new_tokens` equal to `max_new_tokens`, so a random model's
EOS cannot end a run early). The rate is new tokens over the whole `generate` call (the prompt's prefill
included), the median of `--repeats` timed calls after an untimed warm-up call, with the threads torch picks
by itself and with 1 thread, interleaved round by round so background load hits both alike. The last column,
others' cores, is how many cores other processes kept busy during those calls (/proc/stat less this process's CPU
time): on a shared machine it tells a measured row from a contended one.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from pathlib import Path

import torch
import transformers
from bench_gpu import model_for
from measure import machine, report

# tokens/s on an Intel i7-11 CPU, from the seed's model cards (SmallDoges/small-doge docs/Doge-20M.md)
SEED_TOKENS_PER_S = {"20M": 142, "60M": 62, "160M": 28, "320M": 16}
PROMPT_TOKENS = 8  # about the seed's usage prompt, "Hey how are you doing?"
WARMUP_TOKENS = 16
COLUMNS = ("model", "parameters", "attention", "threads", "tokens/s", "range", "seed (i7-11)", "ratio to seed",
           "others' cores")  # fmt: skip


def busy_seconds() -> float:
    """CPU seconds every process of the machine has spent so far (/proc/stat: all but idle and iowait)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def generate_seconds(model, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """Wall seconds of one greedy `generate` of exactly `new_tokens` tokens (raises if it made another count), and
    the cores other processes kept busy meanwhile (the machine's CPU time less this process's, over the wall time;
    /proc/stat counts in ticks of 10 ms, so short calls read coarsely)."""
    machine_before, own_before = busy_seconds(), time.process_time()
    started = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            use_cache=True,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=model.config.pad_token_id or 0,
        )
    seconds = time.perf_counter() - started
    others = (busy_seconds() - machine_before) - (time.process_time() - own_before)
    made = output.shape[1] - prompt.shape[1]
    if made != new_tokens:
        raise RuntimeError(f"generate made {made} new tokens, not {new_tokens}")
    return seconds, max(others, 0.0) / seconds


def bench(size: str, thread_counts: list[int], new_tokens: int, repeats: int) -> list[dict]:
    """Rows for one shape: the median tokens/s of `repeats` timed calls per thread count, after a warm-up each."""
    torch.manual_seed(0)
    model = model_for(size).eval()
    parameters = sum(parameter.numel() for parameter in model.parameters())
    prompt = torch.randint(3, model.config.vocab_size, (1, PROMPT_TOKENS))
    for threads in thread_counts:
        torch.set_num_threads(threads)
        generate_seconds(model, prompt, WARMUP_TOKENS)
    seconds: dict[int, list[tuple[float, float]]] = {threads: [] for threads in thread_counts}
    for _ in range(repeats):  # interleaved: each round times every thread count once
        for threads in thread_counts:
            torch.set_num_threads(threads)
            seconds[threads].append(generate_seconds(model, prompt, new_tokens))
    torch.set_num_threads(thread_counts[0])
    rows = []
    for threads in thread_counts:
        rates = [new_tokens / elapsed for elapsed, _ in seconds[threads]]
        median = statistics.median(rates)
        rows.append({
            "size": size,
            "parameters": parameters,
            "attention": model.config._attn_implementation,
            "threads": threads,
            "tokens_per_s": median,
            "min": min(rates),
            "max": max(rates),
            "seed": SEED_TOKENS_PER_S[size],
            "ratio": median / SEED_TOKENS_PER_S[size],
            "others": statistics.median(others for _, others in seconds[threads]),
        })  # fmt: skip
    return rows


def table(rows: list[dict], args: argparse.Namespace, default_threads: int, loads: tuple[float, float]) -> str:
    """The dated markdown section: machine, settings, load average and one row per shape and thread count."""
    mode = "quick" if args.quick else "full"
    capability = torch.backends.cpu.get_cpu_capability()
    lines = [
        f"## {datetime.datetime.now():%Y-%m-%d %H:%M}: CPU generation speed ({mode}, `bench/bench_cpu_generation.py`)",
        "",
        f"Machine: {machine()}; ATen CPU capability {capability}; torch picks {default_threads} threads.",
        "",
        (
            f"Batch 1, fp32, random weights, greedy, `use_cache=True`, a {PROMPT_TOKENS}-token prompt, exactly "
            f"{args.tokens} new tokens per `generate` (prefill included); median (and range) of {args.repeats} timed "
            f"calls after a {WARMUP_TOKENS}-token warm-up, thread counts interleaved round by round. Seed: the model "
            "cards' tokens/s on an Intel i7-11 CPU. Others' cores: the median of the cores other processes kept busy "
            "during the timed calls (/proc/stat less this process), the load this run shared the machine with. "
            f"1-min load average at start / end: {loads[0]:.2f} / {loads[1]:.2f} ({os.cpu_count()} cores)."
        ),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        lines.append(
            f"| Doge-{row['size']} | {row['parameters'] / 1e6:.1f}M | {row['attention']} | {row['threads']} | "
            f"{row['tokens_per_s']:.1f} | {row['min']:.1f}-{row['max']:.1f} | {row['seed']} | {row['ratio']:.2f}x | "
            f"{row['others']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, measure each shape, print (and with --record append) the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=list(SEED_TOKENS_PER_S), default=None)
    parser.add_argument("--tokens", type=int, default=None, help="new tokens per generate call (100; --quick 10)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per thread count (median)")
    parser.add_argument("--quick", action="store_true", help="Doge-20M only, 10 new tokens")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()
    args.sizes = args.sizes or (["20M"] if args.quick else list(SEED_TOKENS_PER_S))
    args.tokens = args.tokens or (10 if args.quick else 100)
    transformers.logging.set_verbosity_error()  # the "Setting pad_token_id" notes would interleave the table
    default_threads = torch.get_num_threads()  # as torch picks them: the cores it may use
    thread_counts = [default_threads] if default_threads == 1 else [default_threads, 1]
    load_start = os.getloadavg()[0]
    rows = [row for size in args.sizes for row in bench(size, thread_counts, args.tokens, args.repeats)]
    report(table(rows, args, default_threads, (load_start, os.getloadavg()[0])), args.record)


if __name__ == "__main__":
    main()
