"""Benchmark the out-of-core pretraining mixer at scale (issue 12): memory at N and 10N tokens, throughput on
every core against raw tokenization and the seed's method, and resuming a killed build.

    .venv/bin/python bench/bench_mixture_scale.py --record              # N = 20M tokens, about 12 minutes on 2 idle cores
    .venv/bin/python bench/bench_mixture_scale.py --only memory --tokens 2M --shard-rows 100   # the CI test's run

Every build runs `mixing.write_mixture(kind="pretrain")` (ratios 0.7/0.2/0.05/0.05, packed to 2048) in a
fresh process of its own, on a byte-level BPE (vocab 8192) trained on generated text, and:

1. memory: builds of N and of `--scale` x N tokens from endless generated sources (`generated.generate_rows`
   drawn lazily, text only: no row is kept), `dataset_num_proc` = the cores. The bench samples the build's
   process tree (the build process and its tokenizer workers) every 0.1 s from `/proc/PID/smaps_rollup` and
   keeps the peak of the summed RSS and of the summed anonymous PSS; the build also reports the kernel's exact
   high-water marks (its own `ru_maxrss` and the largest worker's, `RUSAGE_CHILDREN`). Requirement: the 10N
   build's peak RSS sum and high-water marks at most 1.2x the N build's (exit code 1 otherwise); the growth
   from N to 10N is also given against the bytes the extra tokens take, which a ratio would hide;
2. throughput, on the same documents: the mixer with texts in memory and every core, the mixer inline
   (`dataset_num_proc=1`), raw `encode_batch_fast` in batches of 512 (the mixer's batch and call) in one
   process with `TOKENIZERS_PARALLELISM=false` (one core), in one such process per core side by side, and
   with the library's thread pool, and the
   seed's `Dataset.from_list(...).map(tokenize) + map(pack)` (`bench_data.run_seed`, given exactly the
   documents the mixer used). Target: mixer >= raw one-core rate x cores x 0.8. Each measure also reports
   the CPU seconds of the process and of its workers, from which the bench prints where the limit is;
   `--profile` adds a cProfile of the mixer's main thread;
3. resume: a build of `--resume-tokens` from scratch, then the same build in another folder killed
   (SIGKILL to its process group) as soon as its checkpoint covers >= 80 % of the train rows, then
   resumed to the end; resume time against scratch time, and the two folders' files compared.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import ROOT, machine, report

sys.path.insert(0, str(ROOT))

RATIOS = {"fineweb-edu": 0.7, "cosmopedia-v2": 0.2, "python-edu": 0.05, "finemath": 0.05}
MAX_LENGTH, SEED, ROW_SEED, VOCAB = 2048, 233, 0, 8192
SAMPLE_SECONDS = 0.1
# Generated documents average 120-200 tokens: one row per 100 budget tokens leaves enough headroom.
TOKENS_PER_ROW = 100
TOTAL_ROWS = 10**15  # "endless": generate_rows is lazy


def parse_tokens(text: str) -> int:
    """`20M`, `2.5M`, `500k`, `1G` or a plain integer."""
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def cores() -> int:
    from doge_dagster.data.encoding import available_cores

    return available_cores()


# -- the child processes: one build or one measure each, result as JSON in a file ------------------------
def lazy_rows(name: str):
    """An endless stream of `name`'s generated rows, text only, made as they are read."""
    from doge_dagster.data.generated import generate_rows

    return ({"text": row["text"]} for row in generate_rows(name, TOTAL_ROWS, ROW_SEED))


def rows_in_memory(name: str, count: int) -> list[dict]:
    from doge_dagster.data.generated import generate_rows

    return [{"text": row["text"]} for row in generate_rows(name, count, ROW_SEED)]


def child_usage(start: tuple[float, float]) -> dict:
    """CPU seconds of this process (all threads) and of its reaped children since `start`; peak RSS in MiB."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "cpu_self": own.ru_utime + own.ru_stime - start[0],
        "cpu_workers": children.ru_utime + children.ru_stime - start[1],
        "maxrss_self_mib": own.ru_maxrss / 1024,
        "maxrss_worker_mib": children.ru_maxrss / 1024,  # the largest reaped child, not a sum
    }


def cpu_now() -> tuple[float, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def child_build(spec: dict) -> dict:
    # Imported before the clock starts, as in a pipeline step (its sources are `datasets` streams): the
    # writer's first import of `datasets` would otherwise add about a second to every build.
    import importlib

    from transformers import AutoTokenizer

    from doge_dagster.data.mixing import write_mixture

    importlib.import_module("datasets.arrow_writer")
    importlib.import_module("datasets").disable_progress_bars()

    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    if spec["source"] == "memory":
        streams = {name: rows_in_memory(name, math.ceil(spec["tokens"] * ratio / TOKENS_PER_ROW) + 1000)
                   for name, ratio in RATIOS.items()}  # fmt: skip
    else:
        streams = {name: lazy_rows(name) for name in RATIOS}
    entries = [{"name": name, "ratio": ratio, "dataset": streams[name]} for name, ratio in RATIOS.items()]
    kwargs = {"kind": "pretrain", "max_length": MAX_LENGTH, "dataset_num_proc": spec["num_proc"], "seed": SEED,
              "test_size": 0.02, "shard_rows": spec["shard_rows"]}  # fmt: skip
    if spec.get("profile"):
        import cProfile
        import pstats

        profiler = cProfile.Profile()
    start, started = cpu_now(), time.perf_counter()
    if spec.get("profile"):
        stats = profiler.runcall(write_mixture, entries, spec["tokens"], tokenizer, spec["out"], **kwargs)
    else:
        stats = write_mixture(entries, spec["tokens"], tokenizer, spec["out"], **kwargs)
    wall = time.perf_counter() - started
    result = {"wall": wall, "tokens": spec["tokens"], **child_usage(start), "train_rows": stats.train_rows,
              "test_rows": stats.test_rows, "rows_used": {name: source.rows_used for name, source in stats.sources.items()}}  # fmt: skip
    if spec.get("profile"):
        profile = pstats.Stats(profiler)
        profile.sort_stats("cumulative").print_stats(25)
        profile.sort_stats("tottime").print_stats(20)
    return result


def child_raw(spec: dict) -> dict:
    """`encode_batch_fast` over the documents the mixer used, texts in memory, batches of the mixer's size."""
    from transformers import AutoTokenizer

    from doge_dagster.data.mixing import TOKENIZE_BATCH

    backend = AutoTokenizer.from_pretrained(spec["tokenizer"]).backend_tokenizer
    texts = [row["text"] for name, used in spec["rows_used"].items() for row in rows_in_memory(name, used)]
    if "part" in spec:  # one of `parts` processes started together: every parts-th document, from a common start
        texts = texts[spec["part"] :: spec["parts"]]
        Path(spec["go"] + f".ready{spec['part']}").touch()
        while not Path(spec["go"]).exists():
            time.sleep(0.005)
    start, started, epoch = cpu_now(), time.perf_counter(), time.time()
    tokens = len(texts)  # one EOS per document, as the mixer counts
    for index in range(0, len(texts), TOKENIZE_BATCH):
        tokens += sum(
            len(e.ids)
            for e in backend.encode_batch_fast(texts[index : index + TOKENIZE_BATCH], add_special_tokens=False)
        )
    return {
        "wall": time.perf_counter() - started,
        "tokens": tokens,
        "start": epoch,
        "end": time.time(),
        **child_usage(start),
    }


def child_seed(spec: dict) -> dict:
    """The seed's method (bench_data.run_seed) on exactly the documents the mixer used."""
    import datasets
    from bench_data import run_seed
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    datasets.disable_caching()
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    rows = {name: rows_in_memory(name, used) for name, used in spec["rows_used"].items()}
    start, started = cpu_now(), time.perf_counter()
    splits = run_seed(rows, tokenizer, spec["tokens"])
    wall = time.perf_counter() - started
    # the seed tokenizes all the documents given (the mixer's token count); it packs and keeps whole rows only
    return {
        "wall": wall,
        "tokens": spec["tokens"],
        "tokens_out": sum(map(len, splits.values())) * MAX_LENGTH,
        **child_usage(start),
    }


def child_skip(spec: dict) -> dict:
    """What skipping costs a resumed build with these sources: producing and dropping the rows consumed."""
    from itertools import islice

    started = time.perf_counter()
    for name, count in spec["consumed"].items():
        for _ in islice(lazy_rows(name), count):
            pass
    return {"wall": time.perf_counter() - started, "rows": sum(spec["consumed"].values())}


CHILDREN = {"build": child_build, "raw": child_raw, "seed": child_seed, "skip": child_skip}


# -- the parent: run a child, sample its process tree --------------------------------------------------------
def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (via /proc/PID/task/TID/children)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    queue.extend(int(child) for child in handle.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


MEMORY_FIELDS = ("Rss", "Anonymous", "Pss", "Pss_Anon")  # lines of /proc/PID/smaps_rollup, in KiB


def tree_memory(pid: int) -> dict[str, int]:
    """`MEMORY_FIELDS` summed over the tree (KiB), and its process count (processes gone mid-read: skipped)."""
    total = dict.fromkeys((*MEMORY_FIELDS, "processes"), 0)
    prefixes = tuple(f"{field}:" for field in MEMORY_FIELDS)
    for process in descendants(pid):
        try:
            with open(f"/proc/{process}/smaps_rollup") as handle:
                fields = dict(line.split(":", 1) for line in handle if line.startswith(prefixes))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if len(fields) == len(MEMORY_FIELDS):
            for key, value in fields.items():
                total[key] += int(value.split()[0])
            total["processes"] += 1
    return total


def run_child(kind: str, spec: dict, env: dict | None = None, kill_when=None) -> dict:
    """Run one child measure, sampling its tree's memory; its result plus peak_pss_mib / peak_rss_mib.

    `kill_when()` is polled at each sample: when true the child's process group gets SIGKILL and the result
    holds `killed_after` (seconds) instead of the child's own figures.
    """
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_path = Path(handle.name)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        json.dumps({**spec, "result": str(result_path)}),
    ]
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})}, start_new_session=True)
    peak = dict.fromkeys((*MEMORY_FIELDS, "processes"), 0)
    killed = None
    try:
        while child.poll() is None:
            for key, value in tree_memory(child.pid).items():
                peak[key] = max(peak[key], value)
            if kill_when is not None and kill_when():
                os.killpg(child.pid, signal.SIGKILL)
                killed = time.perf_counter() - started
                break
            time.sleep(SAMPLE_SECONDS)
        child.wait()
        if killed is not None:
            time.sleep(0.5)  # let the killed group go before anything else starts
            return {"killed_after": killed}
        if child.returncode:
            raise RuntimeError(f"{kind} child failed with exit code {child.returncode}: {spec}")
        result = {**json.loads(result_path.read_text()), "process_wall": time.perf_counter() - started}
        result["load_end"] = os.getloadavg()[0]  # 1-min load average as it ended, the child included
    finally:
        result_path.unlink(missing_ok=True)
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    sampled = {
        "peak_rss_mib": peak["Rss"] / 1024,
        "peak_rss_anon_mib": peak["Anonymous"] / 1024,
        "peak_pss_mib": peak["Pss"] / 1024,
        "peak_anon_mib": peak["Pss_Anon"] / 1024,
    }
    return {**result, **sampled, "processes": peak["processes"]}


def run_together(spec: dict, parts: int, env: dict) -> dict:
    """`parts` raw children at once, each on every parts-th document, started together: the rate independent
    one-core tokenizers reach side by side on this machine (no mixer, no data exchanged)."""
    with tempfile.TemporaryDirectory(prefix="bench-go-") as folder:
        go = Path(folder) / "go"
        procs, paths = [], []
        for part in range(parts):
            paths.append(Path(folder) / f"result{part}.json")
            command = [sys.executable, str(Path(__file__).resolve()), "--child", "raw",
                       json.dumps({**spec, "part": part, "parts": parts, "go": str(go), "result": str(paths[-1])})]  # fmt: skip
            procs.append(subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}))
        while not all(Path(f"{go}.ready{part}").exists() for part in range(parts)):
            if any(proc.poll() for proc in procs):
                break
            time.sleep(0.01)
        go.touch()
        if any(proc.wait() for proc in procs):
            raise RuntimeError("a raw child failed")
        results = [json.loads(path.read_text()) for path in paths]
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {"wall": wall, "tokens": sum(r["tokens"] for r in results), "cpu_self": sum(r["cpu_self"] for r in results),
            "cpu_workers": 0.0, "peak_pss_mib": math.nan}  # fmt: skip


def train_tokenizer(folder: Path) -> Path:
    from doge_dagster.data.generated import generate_rows
    from doge_dagster.data.tokenizer import train_bpe
    from doge_dagster.recipes import TokenizerRecipe

    sample = (row["text"] for name in RATIOS for row in generate_rows(name, 5000, seed=1))
    train_bpe(sample, TokenizerRecipe(source="train_bpe", vocab_size=VOCAB)).save_pretrained(folder)
    return folder


def checkpoint(folder: Path) -> tuple[int, dict] | None:
    """Rows covered by the build's last checkpoint in `folder` and the mixer's saved state; None before the first.

    Found wherever the writer keeps it (`.resume/progress.json`, in the output folder or below it), with the
    rows of the shards before the split, or of the train and test shards, whichever the checkpoint records.
    """
    for progress in sorted(folder.glob("**/.resume/progress.json")):
        try:
            saved = json.loads(progress.read_text())
            shards = saved["shards"]
            rows = shards["rows"] if "rows" in shards else sum(split["rows"] for split in shards.values())
            return rows, saved["state"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
            continue
    return None


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def mixer_version() -> str:
    """The commit measured, and whether the data code differed from it (a working tree being edited)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    edited = git("status", "--porcelain", "--", "doge_dagster/data")
    return f"commit {commit}" + (" with uncommitted changes in doge_dagster/data" if edited else "")


def millions(tokens: float) -> str:
    return f"{tokens / 1e6:g}M"


# -- the three measures ------------------------------------------------------------------------------------
def measure_memory(
    work: Path, tokenizer: Path, tokens: int, scale: int, shard_rows: int
) -> tuple[list[str], list[str], bool, dict]:
    """Rows of the memory table, notes, whether the 1.2x requirement holds, and the figures."""
    results = {}
    for size in (tokens, tokens * scale):
        out = work / f"memory-{size}"
        spec = {"tokenizer": str(tokenizer), "out": str(out), "tokens": size, "num_proc": cores(),
                "shard_rows": shard_rows, "source": "generate"}  # fmt: skip
        results[size] = run_child("build", spec)
        subprocess.run(["rm", "-rf", str(out)], check=True)
    small, large = results[tokens], results[tokens * scale]
    keys = ("peak_rss_anon_mib", "peak_rss_mib", "peak_anon_mib", "peak_pss_mib")
    rows = [
        (
            "| build | tokens/s (generated on the fly) | **peak heap, tree** (anonymous RSS) | peak RSS, tree "
            "| peak physical heap, tree (anonymous PSS) | ru_maxrss, build process + largest worker | processes |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for size, label in ((tokens, "N"), (tokens * scale, f"{scale}N")):
        result = results[size]
        rows.append(
            f"| {label} = {millions(size)} tokens | {result['tokens'] / result['wall'] / 1e6:.2f}M ({result['wall']:.1f} s) "
            f"| {result['peak_rss_anon_mib']:.0f} MiB | {result['peak_rss_mib']:.0f} MiB | {result['peak_anon_mib']:.0f} MiB "
            f"| {result['maxrss_self_mib']:.0f} + {result['maxrss_worker_mib']:.0f} MiB | {result['processes']} |"
        )
    ratios = {key: large[key] / small[key] for key in keys}
    maxrss = [
        small["maxrss_self_mib"] + small["maxrss_worker_mib"],
        large["maxrss_self_mib"] + large["maxrss_worker_mib"],
    ]
    ratios["ru_maxrss"] = maxrss[1] / maxrss[0]
    # A ratio hides a leak behind a large baseline (libraries, counted once per process); the growth against
    # the bytes of the extra tokens does not.
    extra_mib = (scale - 1) * tokens * 4 / 2**20
    growth = {key: large[key] - small[key] for key in keys}
    growth["ru_maxrss"] = maxrss[1] - maxrss[0]
    met = ratios["peak_rss_anon_mib"] <= 1.2 and growth["peak_rss_anon_mib"] <= 0.25 * extra_mib
    rows.append(
        f"| **{scale}N / N** (goal <= 1.2x on the heap: {'yes' if met else 'NO'}) | "
        f"| **{ratios['peak_rss_anon_mib']:.2f}x** | {ratios['peak_rss_mib']:.2f}x | {ratios['peak_anon_mib']:.2f}x "
        f"| {ratios['ru_maxrss']:.2f}x | |"
    )
    rows.append(
        f"| {scale}N - N, against the {extra_mib:.0f} MiB the extra tokens take as int32 | | "
        + " | ".join(f"{growth[key]:+.0f} MiB ({growth[key] / extra_mib:.0%})" for key in (*keys[:3], "ru_maxrss"))
        + " | |"
    )
    shard_tokens = shard_rows * MAX_LENGTH
    notes = [
        (
            "Measured: every 0.1 s the bench reads `/proc/PID/smaps_rollup` of the build process and of every process "
            "below it (the tokenizer workers) and sums over the tree: the heap, `Anonymous` (each process's resident "
            "anonymous pages: Python objects, Arrow buffers, token arrays; a page the forked workers still share with "
            "the build process counts once per process, so an upper bound); RSS (`Rss`: the heap plus resident file "
            "pages, libraries and the memory-mapped Arrow files the build reads back, which the kernel can drop at any "
            "time); the physical heap (`Pss_Anon`: a page shared by k processes counted 1/k in each, so each page "
            "once). The table gives each sum's peak. `ru_maxrss`: the kernel's high-water marks of the build process "
            "and of the largest worker (`RUSAGE_CHILDREN`: a maximum, not a sum), file pages included. The goal is "
            "judged on the heap: at most 1.2x, and grown by at most a quarter of the extra tokens' int32 bytes (a "
            "mixer that kept its rows would fail the second at any baseline)."
        ),
        (
            "RSS and `ru_maxrss` also count the pages of memory-mapped files a process has read: a build that reads "
            "its written stream back through `mmap` (the split) shows the mixture's size there, though that memory is "
            "page cache, not the build's. The physical heap can grow with a build's duration, not its size: the "
            "workers are forked from the build process and share its heap (transformers, datasets, pyarrow loaded: "
            "about 200 MiB) copy-on-write until a full garbage collection in a process writes to every object header "
            "it traverses and the touched pages are copied; a short build can end before that. It is bounded by the "
            "heap sum, which counts every page as copied."
        ),
        (
            f"One shard is {shard_rows:,} rows x {MAX_LENGTH} = {millions(shard_tokens)} tokens "
            f"({shard_tokens * 4 / 2**20:.0f} MiB of int32): the writer holds up to a shard of rows before writing it "
            f"(and a second copy while writing it: `concat_tables(...).combine_chunks()`), so the heap grows with a "
            f"build until it is one shard long, then stops ({millions(tokens)} tokens is {tokens / shard_tokens:.2f} "
            f"shards)."
        ),
    ]
    data = {"N": small, f"{scale}N": large, "ratios": ratios, "growth_mib": growth, "extra_tokens_mib": extra_mib,
            "met": met}  # fmt: skip
    return rows, notes, met, data


def measure_throughput(
    work: Path, tokenizer: Path, tokens: int, shard_rows: int, repeats: int, profile: bool
) -> tuple[list[str], list[str], bool, dict]:
    """Rows of the throughput table, notes (where the limit is), whether the target is met, and the figures."""
    n = cores()
    base = {"tokenizer": str(tokenizer), "tokens": tokens, "shard_rows": shard_rows, "source": "memory"}
    first = run_child("build", {**base, "out": str(work / "rows-used"), "num_proc": n})  # warm-up; gives rows used
    subprocess.run(["rm", "-rf", str(work / "rows-used")], check=True)
    used = {"tokenizer": str(tokenizer), "tokens": tokens, "rows_used": first["rows_used"]}
    one_core = {"TOKENIZERS_PARALLELISM": "false"}
    measures = {
        "mixer": lambda: run_child("build", {**base, "out": str(work / "mixer"), "num_proc": n}),
        "mixer1": lambda: run_child("build", {**base, "out": str(work / "mixer1"), "num_proc": 1}),
        "raw1": lambda: run_child("raw", used, one_core),
        "rawN": lambda: run_together(used, n, one_core),
        "rawT": lambda: run_child("raw", used, {"TOKENIZERS_PARALLELISM": "true"}),
        "seed": lambda: run_child("seed", used),
    }
    samples: dict[str, list[dict]] = {name: [] for name in measures}
    for _ in range(repeats):  # interleaved: background load hits every measure alike
        for name, measure in measures.items():
            samples[name].append(measure())
            subprocess.run(["rm", "-rf", str(work / "mixer"), str(work / "mixer1")], check=True)
    result = {name: min(runs, key=lambda run: run["wall"]) for name, runs in samples.items()}  # best of the rounds
    rate = {name: run["tokens"] / run["wall"] for name, run in result.items()}
    target = rate["raw1"] * n * 0.8
    labels = {
        "mixer": f"**mixer** `write_mixture`, `dataset_num_proc={n}` (texts in memory)",
        "mixer1": "mixer, `dataset_num_proc=1` (inline, no workers)",
        "raw1": "**raw** `encode_batch_fast`, one process, `TOKENIZERS_PARALLELISM=false` (one core)",
        "rawN": f"raw, {n} such processes side by side, each on 1/{n} of the documents",
        "rawT": "raw `encode_batch_fast`, one process, the library's thread pool",
        "seed": "**seed** `from_list` + `map` tokenize + `map` pack (same documents)",
    }
    rows = ["| measure | tokens/s | wall | CPU, process | CPU, workers | peak heap, tree | vs raw one core |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, label in labels.items():
        run = result[name]
        memory = f"{run['peak_rss_anon_mib']:.0f} MiB" if "peak_rss_anon_mib" in run else "-"
        rows.append(
            f"| {label} | {rate[name] / 1e6:.2f}M | {run['wall']:.1f} s | {run['cpu_self']:.1f} s | {run['cpu_workers']:.1f} s "
            f"| {memory} | {rate[name] / rate['raw1']:.2f}x |"
        )
    met = rate["mixer"] >= target
    rows.append(f"| **target: raw one core x {n} cores x 0.8** | {target / 1e6:.2f}M | | | | | "
                f"**{n * 0.8:.2f}x** (met: {'yes' if met else 'NO'}) |")  # fmt: skip
    rows.append(
        f"| mixer / raw side by side (what this machine gave {n} processes) | {rate['mixer'] / rate['rawN']:.2f}x | | | | | |"
    )
    rows.append(f"| mixer / seed | {rate['mixer'] / rate['seed']:.2f}x | | | | | |")
    # Where the time goes. The one-core raw run's CPU is the tokenizing itself; side by side, the same work costs
    # what the hardware makes it cost; the mixer's workers and its build process add the rest.
    mixer, raw, side = result["mixer"], result["raw1"], result["rawN"]
    tokenize = raw["cpu_self"]
    side_extra = side["cpu_self"] / tokenize - 1
    workers_extra = mixer["cpu_workers"] / tokenize - 1
    parent_share = mixer["cpu_self"] / tokenize
    bound = n * tokenize / (mixer["cpu_workers"] + mixer["cpu_self"])
    idle = mixer["wall"] - (mixer["cpu_workers"] + mixer["cpu_self"]) / n
    loads = [run["load_end"] for runs in samples.values() for run in runs if "load_end" in run]
    notes = [
        (
            f"Documents: {sum(first['rows_used'].values()):,} ({', '.join(f'{k} {v:,}' for k, v in first['rows_used'].items())}), "
            f"{millions(tokens)} tokens with EOS; best wall time of {repeats} interleaved round(s) after a warm-up build "
            f"(1-min load average as the measures ended: {min(loads):.1f}-{max(loads):.1f}, theirs included). CPU "
            f"columns: user + system seconds of the process (all threads) and of its reaped children (the tokenizer workers)."
        ),
        (
            f"Where the limit is: tokenizing these documents takes {tokenize:.1f} CPU s in one process alone. {n} one-core "
            f"processes side by side spend {side['cpu_self']:.1f} CPU s on the same work ({side_extra:+.0%}): what running "
            f"every core at once costs on this machine (shared caches, memory bandwidth, clocks, the hypervisor), so no "
            f"{n} processes can pass {n / (1 + side_extra):.2f}x the one-core rate here; their wall time gave "
            f"{rate['rawN'] / rate['raw1']:.2f}x (lower when other processes hold a core: see the load). In the mixer the "
            f"workers spend {mixer['cpu_workers']:.1f} CPU s ({workers_extra:+.0%} over tokenizing alone: the side-by-side "
            f"cost, plus receiving texts, building int32 arrays and sending them back) and the build process "
            f"{mixer['cpu_self']:.1f} CPU s ({parent_share:.0%} of the tokenizing: reading the source, pickling batches (the "
            f"executor's threads), unpickling results, interleaving, packing, splitting, writing shards), on the same {n} "
            f"cores. With every core busy all the time the mixer could reach at most {n} x {tokenize:.1f} / "
            f"({mixer['cpu_workers']:.1f} + {mixer['cpu_self']:.1f}) = {bound:.2f}x the one-core rate; it reached "
            f"{rate['mixer'] / rate['raw1']:.2f}x ({rate['mixer'] / rate['raw1'] / bound:.0%} of that bound): "
            f"{idle:.1f} s of its {mixer['wall']:.1f} s had a core idle (forking the workers, the first batches, the last "
            f"shard and the split, stopping the workers; or another process holding a core). The build process's work "
            f"is serial: it caps the mixer at {tokenize / mixer['cpu_self']:.0f}x the one-core rate whatever the cores "
            f"(with this source, which costs nothing to read)."
        ),
    ]
    if profile:
        run_child("build", {**base, "out": str(work / "profiled"), "num_proc": n, "profile": True})
        subprocess.run(["rm", "-rf", str(work / "profiled")], check=True)
    return rows, notes, met, {"runs": result, "tokens_per_s": rate, "target": target, "met": met}


def measure_resume(
    work: Path, tokenizer: Path, tokens: int, shard_rows: int
) -> tuple[list[str], list[str], bool, dict]:
    base = {
        "tokenizer": str(tokenizer),
        "tokens": tokens,
        "num_proc": cores(),
        "shard_rows": shard_rows,
        "source": "generate",
    }
    scratch = run_child("build", {**base, "out": str(work / "scratch")})
    total = scratch["train_rows"] + scratch["test_rows"]
    threshold = 0.8 * total - shard_rows / 2  # the checkpoint nearest 80 %: checkpoints come a shard apart

    def checkpoint_near_80() -> bool:
        found = checkpoint(work / "resumed")
        return found is not None and found[0] >= threshold

    killed = run_child("build", {**base, "out": str(work / "resumed")}, kill_when=checkpoint_near_80)
    if "killed_after" not in killed:
        raise RuntimeError(
            "the build finished before its checkpoint reached 80 %; use more --resume-tokens or fewer --shard-rows"
        )
    done, state = checkpoint(work / "resumed")
    consumed = {name: source["consumed"] for name, source in state["sources"].items()}
    resumed = run_child("build", {**base, "out": str(work / "resumed")})
    skip = run_child("skip", {"consumed": consumed})
    same = folder_digest(work / "scratch") == folder_digest(work / "resumed")
    for folder in ("scratch", "resumed"):
        subprocess.run(["rm", "-rf", str(work / folder)], check=True)
    left = 1 - done / total
    rows = [
        "| run | `write_mixture` wall | share of scratch | whole process (start, tokenizer load, build) |",
        "|---|---|---|---|",
        f"| from scratch, {millions(tokens)} tokens | {scratch['wall']:.1f} s | 1.00x | {scratch['process_wall']:.1f} s |",
        (
            f"| killed (SIGKILL to the process group) once its checkpoint held {done:,} of the {total:,} rows "
            f"({1 - left:.0%}) | | | {killed['killed_after']:.1f} s to the kill |"
        ),
        (
            f"| **resume to the end** | **{resumed['wall']:.1f} s** | **{resumed['wall'] / scratch['wall']:.2f}x** "
            f"| {resumed['process_wall']:.1f} s ({resumed['process_wall'] / scratch['process_wall']:.2f}x) |"
        ),
        f"| resumed folder identical to the scratch build, file by file | {'yes' if same else 'NO'} | | |",
    ]
    overhead = resumed["wall"] - left * scratch["wall"]
    notes = [
        (
            f"The resumed build had {left:.0%} of the rows left: {left * scratch['wall']:.1f} s at the scratch build's "
            f"pace. The other {overhead:.1f} s are the cost of resuming. Skipping what the sources already gave: "
            f"a plain iterable (these generated sources) is read through from its start and the {skip['rows']:,} rows "
            f"consumed dropped (`itertools.islice`), which alone takes {skip['wall']:.1f} s here (generating them, "
            f"measured in a process of its own); a `datasets` stream skips in its own reader. The rest is starting the "
            f"workers, reading the checkpoint and the packer's carried tokens. A kill between two checkpoints also "
            f"loses the work since the last one: at most one shard ({shard_rows:,} rows, "
            f"{millions(shard_rows * MAX_LENGTH)} tokens)."
        )
    ]
    data = {"scratch": scratch, "killed": killed, "resumed": resumed, "skip": skip, "checkpointed_rows": done,
            "identical": same}  # fmt: skip
    return rows, notes, same, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--tokens", default="20M", help="N: the small memory build and the throughput measures (default 20M)"
    )
    parser.add_argument("--scale", type=int, default=10, help="the large memory build is scale x N tokens (default 10)")
    parser.add_argument("--resume-tokens", default=None, help="size of the resume measure (default 5 x N)")
    parser.add_argument("--throughput-tokens", default=None, help="size of the throughput measures (default N)")
    parser.add_argument("--shard-rows", type=int, default=None, help="rows per shard (default: the mixer's, 10,000)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved throughput rounds (best reported)")
    parser.add_argument(
        "--only", nargs="+", choices=("memory", "throughput", "resume"), default=("memory", "throughput", "resume")
    )
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the mixer's main thread")
    parser.add_argument("--record", action="store_true", help="append the tables to bench/RESULTS.md")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, spec = args.child[0], json.loads(args.child[1])
        Path(spec["result"]).write_text(json.dumps(CHILDREN[kind](spec)))
        return
    from doge_dagster.data.mixing import SHARD_ROWS

    tokens = parse_tokens(args.tokens)
    shard_rows = args.shard_rows or SHARD_ROWS
    started, start_load = time.perf_counter(), os.getloadavg()[0]
    sections, failed, figures = [], False, {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="bench-mixture-") as tmp:
        work = Path(tmp)
        tokenizer = train_tokenizer(work / "tokenizer")
        if "memory" in args.only:
            rows, notes, met, figures["memory"] = measure_memory(work, tokenizer, tokens, args.scale, shard_rows)
            sections += [
                f"**P5 memory** (N = {millions(tokens)} tokens, {cores()} tokenizer workers):",
                "",
                *rows,
                "",
                *notes,
                "",
            ]
            failed |= not met
        if "throughput" in args.only:
            size = parse_tokens(args.throughput_tokens) if args.throughput_tokens else tokens
            rows, notes, _, figures["throughput"] = measure_throughput(
                work, tokenizer, size, shard_rows, args.repeats, args.profile
            )
            sections += [f"**P1 throughput** ({millions(size)} tokens):", "", *rows, "", *notes, ""]
        if "resume" in args.only:
            size = parse_tokens(args.resume_tokens) if args.resume_tokens else 5 * tokens
            rows, notes, same, figures["resume"] = measure_resume(work, tokenizer, size, shard_rows)
            sections += [f"**Resume** ({millions(size)} tokens, generated on the fly):", "", *rows, "", *notes, ""]
            failed |= not same
    when = f"{datetime.datetime.now():%Y-%m-%d %H:%M}"
    load = f"{start_load:.2f} / {os.getloadavg()[0]:.2f}"
    header = [
        f"### Mixer at scale (`bench/bench_mixture_scale.py`), {when}", "",
        (f"Machine: {machine()}. Ratios 0.7/0.2/0.05/0.05 in one run, packed to {MAX_LENGTH}, BPE vocab {VOCAB}, "
        f"shards of {shard_rows:,} rows; mixer at {mixer_version()}; every build in its own process. 1-min load average at start / end: {load}; "
        f"{time.perf_counter() - started:.0f} s in all."), "",
    ]  # fmt: skip
    report("\n".join([*header, *sections]).rstrip(), args.record)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
