"""The device check: the real training entrypoint and the throughput bench on one GPU, within a hard time budget.

  bash bench/gpu_check.sh              # a GPU machine: about 5-6 minutes expected, never more than 8 (--budget 480)
  bash bench/gpu_check.sh --cpu        # reduced sizes on the CPU (automatic without CUDA): 1.5-2 minutes on 2 cores

Parts, in this order, each a process (group) of its own with its own timeout, all inside one deadline:

1. **bench**: `bench_gpu.bench` (raw loop, bf16, fused AdamW) for Doge-20M/60M/160M/320M at the shipped layout,
   8 sequences of 2048 tokens per step: tokens/s, MFU, peak memory. Needs only torch, transformers, pydantic, yaml.
2. **setup**: the data artifacts the stages read, built by the pipeline's own code (`data.build.build_tokenizer`,
   `build_mixture`) from generated rows in the seed datasets' schemas, published to a scratch store under the
   versions `plan_versions` gives the check's recipes. The real recipes load SmallDoge/Doge-tokenizer from the Hub;
   here a byte-level BPE is trained on the generated text (`tokenizer.source: train_bpe`, as `tiny`) and the model
   keeps its vocabulary of 32,768 (the embedding padded beyond the tokenizer, which the checks allow).
3. **pretrain Doge-20M / Doge-160M**, then **sft**, **dpo** and **grpo** of Doge-20M, each through the real
   entrypoint, `accelerate launch --config_file recipes/accelerate/single_gpu.yaml ... -m doge_dagster.training
   STAGE --spec spec.json` (the command the local backend runs), with the recipes' training sections (per-device
   batch, bf16, fused AdamW, LR schedule, SFT packing, GRPO generations and completion length) except what a check
   must change: `max_steps` (and the WSD warmup / decay scaled to it), no checkpoints, logging every few steps, and
   pretraining's gradient accumulation 1 (the recipes' 32 would make one step 256 sequences; the per-device batch,
   which decides throughput, is the recipe's), and one process on one GPU (160M's recipe launches DDP on 8; the
   rate per GPU is what `doge-dagster plan` uses). GRPO starts from the DPO model, published as the distillation
   stage's model (distillation is SFT on longer rows: measured by the sft row). The runner publishes each model
   with its tokens/s and MFU (`doge_dagster.throughput`'s device table), which the rows report.

Results go under `--out` (default `$OUT`, else a new temporary folder): `results.json`, `RESULTS-section.md` and
`parts.log` (every part's output), rewritten after every part, so a run cut short still leaves what it measured.
The scratch store (mixtures, models) lives in a temporary folder outside the checkout, removed at the end
(`--keep` keeps it). `--record` (the default on a GPU) appends the section to bench/RESULTS.md when the checkout is
writable. Exit status: 0 when every part passed, 1 otherwise (the results are written either way).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "RESULTS.md"
RESULT_PREFIX = "RESULT-JSON "
LOG_TAIL_BYTES = 400_000  # of each part, in parts.log
END_RESERVE_S = 20  # kept back from the budget: stopping a part at the deadline (at most 8 s) and writing the results
MIN_PART_S = 10  # a part that would get less is skipped
CHAT_STAGES = ("sft", "dpo", "grpo")
BENCH_SIZES = ("20M", "60M", "160M", "320M")
PRETRAIN_SIZES = ("20M", "160M")
# What a stage row needs besides torch and transformers (the bench rows need only pydantic and yaml besides).
STAGE_MODULES = (
    "pydantic",
    "yaml",
    "accelerate",
    "datasets",
    "trl",
    "dagster_pipes",
    "fsspec",
    "matplotlib",
    "pyarrow",
    "math_verify",
)


@dataclass(frozen=True)
class Mode:
    """Sizes of one kind of run: `gpu` (the real shapes) or `cpu` (the same code path, tiny)."""

    name: str
    budget_s: int
    accelerate_config: str
    bench: dict  # bench_gpu.bench arguments
    bench_sizes: tuple[str, ...]
    sequence: int  # pretraining rows (tokens)
    pretrain_steps: dict[str, int]
    chat_steps: dict[str, int]
    data: dict[str, int]  # rows per mixture
    caps: dict[str, int]  # seconds per part, at most
    model: dict | None = None  # architecture override (None: the recipe's)
    chat_lengths: dict[str, int] = field(default_factory=dict)  # mixture max_length overrides
    training: dict[str, dict] = field(default_factory=dict)  # further training overrides per stage


MODES = {
    "gpu": Mode(
        name="gpu",
        budget_s=480,
        accelerate_config="single_gpu",
        bench={"batch": 8, "seq": 2048, "steps": 10, "warmup": 3},
        bench_sizes=BENCH_SIZES,
        sequence=2048,
        pretrain_steps={"20M": 300, "160M": 200},
        chat_steps={"sft": 2, "dpo": 2, "grpo": 2},
        data={"pretrain": 512, "sft": 1200, "dpo": 300, "grpo": 120},
        # Expected (module docstring): bench 45 s, setup 15, pretrain 50 / 85, sft 40, dpo 40, grpo 70: about 350 s.
        caps={"bench": 120, "setup": 60, "pretrain 20M": 110, "pretrain 160M": 130, "sft": 75, "dpo": 70, "grpo": 100},
    ),
    "cpu": Mode(
        name="cpu",
        budget_s=600,  # about 90 s on 2 cores; the caps leave room for a machine several times slower
        accelerate_config="cpu",
        bench={"batch": 1, "seq": 16, "steps": 1, "warmup": 1},
        bench_sizes=("20M", "60M"),
        sequence=64,
        pretrain_steps={"20M": 6, "160M": 4},
        chat_steps={"sft": 1, "dpo": 1, "grpo": 1},
        data={"pretrain": 120, "sft": 150, "dpo": 100, "grpo": 60},
        caps={
            "bench": 150,
            "setup": 120,
            "pretrain 20M": 150,
            "pretrain 160M": 150,
            "sft": 150,
            "dpo": 150,
            "grpo": 150,
        },
        # A small Doge (vocabulary kept at 32,768), full precision (bf16 autocast is slow on CPUs without it).
        model={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
        },
        chat_lengths={"sft": 256, "dpo": 256, "grpo": 128},
        training={
            "pretrain": {"bf16": False},
            "sft": {"bf16": False, "gradient_accumulation_steps": 2},
            "dpo": {"bf16": False, "gradient_accumulation_steps": 2},
            "grpo": {"bf16": False, "max_completion_length": 16},
        },
    ),
}


@dataclass
class Row:
    """One line of the result table."""

    part: str
    what: str
    status: str = "not run"
    seconds: float | None = None
    steps: str | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    peak_gib: float | None = None
    note: str = ""

    def markdown(self) -> str:
        """The row in the section's table."""
        rate = f"{self.tokens_per_s:,.0f}" if self.tokens_per_s is not None else "n/a"
        mfu = f"{self.mfu:.1%}" if self.mfu is not None else "n/a"
        peak = f"{self.peak_gib:.1f}" if self.peak_gib is not None else "n/a"
        seconds = f"{self.seconds:.0f}" if self.seconds is not None else ""
        cells = [self.part, self.what, self.status, self.steps or "", rate, mfu, peak, seconds, self.note]
        return "| " + " | ".join(cells) + " |"


TABLE_HEADER = [
    "| part | what | status | steps | tokens/s | MFU | peak GiB | wall s | note |",
    "|---|---|---|---|---|---|---|---|---|",
]


# -- the check's recipes and data (the setup part, in a child process) ------------------------------------------
def check_recipe(size: str, mode: Mode) -> dict:
    """The shipped recipe `size` as the check runs it (module docstring): generated data, short runs."""
    from doge_dagster.recipe_sections import WITH_SETTINGS
    from doge_dagster.recipes import load_recipe

    raw = load_recipe(size).model_dump(mode="json", context=WITH_SETTINGS)
    raw["tokenizer"] = {"source": "train_bpe", "vocab_size": 32768, "train_samples": 1500, "min_frequency": 2}
    if mode.model:
        raw["model"].update(mode.model)
    rows = mode.data
    # Generated rows of about 100 tokens (pretraining sources) or one example each: 1.5x what a mixture takes.
    pretrain = raw["mixtures"]["pretrain"]
    pretrain_tokens = rows["pretrain"] * mode.sequence
    pretrain.update(total_size=pretrain_tokens, max_length=mode.sequence, test_size=0.02, dataset_num_proc=None)
    pretrain["sources"] = [
        {"dataset": source["dataset"], "ratio": source["ratio"], "kind": "generated",
         "num_rows": max(50, int(pretrain_tokens * source["ratio"] / 100 * 1.5))}
        for source in pretrain["sources"]
    ]  # fmt: skip
    for kind, dataset in (
        ("sft", "smoltalk"),
        ("dpo", "ultrafeedback"),
        ("distill", "openthoughts"),
        ("grpo", "openr1-math"),
    ):
        mixture = raw["mixtures"][kind]
        total = rows.get(kind, 50)
        mixture.update(total_size=total, test_size=0.02, dataset_num_proc=None)
        mixture["sources"] = [{"dataset": dataset, "ratio": 1.0, "kind": "generated", "num_rows": total * 2}]
        if kind in mode.chat_lengths:
            mixture["max_length"] = mode.chat_lengths[kind]
    stages = raw["stages"]
    steps = mode.pretrain_steps[size]
    training = stages["pretrain"]["training"]
    ramp = max(1, steps // 10)
    training.update(max_steps=steps, warmup_steps=ramp, gradient_accumulation_steps=1, save_steps=10**6,
                    logging_steps=max(1, steps // 6))  # fmt: skip
    training["lr_scheduler_kwargs"] = {**training.get("lr_scheduler_kwargs", {}), "num_decay_steps": ramp}
    for stage in ("pretrain", *CHAT_STAGES, "distill"):
        section = stages[stage]
        if stage != "pretrain":
            section["training"].update(max_steps=mode.chat_steps.get(stage, 1), logging_steps=1, save_steps=10**6)
        section["training"].update(mode.training.get(stage, {}))
        if mode.name == "cpu":
            section["launch"] = {"accelerate_config": mode.accelerate_config, "num_processes": 1}
        else:  # one GPU: 160M's and 320M's pretraining launch DDP on 8; tokens/s per GPU is what plans use
            section["launch"] = {**section["launch"], "accelerate_config": mode.accelerate_config, "gpus_per_node": 1,
                                 "num_processes": 1}  # fmt: skip
    return raw


def setup(work: Path, mode: Mode) -> dict:
    """Build and publish the data artifacts for every launch; write each launch's spec; return the plan."""
    from doge_dagster.artifacts import ArtifactStore
    from doge_dagster.data.build import build_mixture, build_tokenizer
    from doge_dagster.launching.spec import LaunchSpec
    from doge_dagster.plan import plan_versions
    from doge_dagster.recipe_sections import WITH_SETTINGS
    from doge_dagster.recipes import parse_recipe

    store = ArtifactStore(str(work / "store"))
    launches: dict[str, dict] = {}
    built: dict[str, Path] = {}  # data asset -> a published folder of it (the sizes share their data)
    for size in PRETRAIN_SIZES:
        recipe = parse_recipe(check_recipe(size, mode), source=f"device check {size}")
        partition = recipe.name
        stages = ("pretrain", *CHAT_STAGES) if size == "20M" else ("pretrain",)
        assets = [recipe.chain.stage(stage).asset for stage in stages]
        planned = plan_versions(recipe, nodes=[*assets, recipe.chain.stage("distill").asset])
        data = ["tokenizer"] + [recipe.chain.mixture(recipe.chain.stage(stage).mixture).asset for stage in stages]
        for asset in data:
            version = planned[asset].version
            staged = store.staging_dir(asset, partition, version)
            if asset in built:
                shutil.rmtree(staged)
                shutil.copytree(built[asset], staged, ignore=shutil.ignore_patterns("manifest.json"))
                metadata = {"copied_from": str(built[asset])}
            elif asset == "tokenizer":
                started = time.perf_counter()
                metadata = build_tokenizer(recipe, staged)
                print(
                    f"tokenizer: {metadata['vocab_size']} tokens in {time.perf_counter() - started:.1f} s", flush=True
                )
            else:
                started = time.perf_counter()
                kind = next(mixture for mixture in recipe.chain.mixtures if mixture.asset == asset)
                stats, _ = build_mixture(recipe, kind, built["tokenizer"], staged, resume_key=version)
                metadata = {"train_rows": stats.train_rows, "test_rows": stats.test_rows}
                print(f"{asset}: {metadata} in {time.perf_counter() - started:.1f} s", flush=True)
            store.publish(asset, partition, version, staged, planned[asset].upstream, metadata)
            built.setdefault(asset, Path(store.url(asset, partition, version)))
        for stage, asset in zip(stages, assets):
            record = recipe.chain.stage(stage)
            work_dir = work / "store" / asset / partition / ".work" / planned[asset].version
            work_dir.mkdir(parents=True, exist_ok=True)
            spec = LaunchSpec(
                name=stage, asset=asset, partition=partition, version=planned[asset].version,
                upstream=planned[asset].upstream, recipe=recipe.model_dump(mode="json", context=WITH_SETTINGS),
                store_root=str(work / "store"), work_dir=str(work_dir), extra_stages=recipe.chain.extra_modules,
            )  # fmt: skip
            launch = recipe.section(record.section).launch
            launches[f"{stage} {size}"] = {
                "spec": str(spec.write(work_dir / "spec.json")),
                "launch": launch.model_dump(mode="json"),
                "asset": asset,
                "partition": partition,
                "version": planned[asset].version,
            }
        if size == "20M":  # GRPO's parent: the DPO model, published as the distillation stage's (docstring)
            distill = recipe.chain.stage("distill").asset
            launches["grpo 20M"]["parent"] = {
                "from": [recipe.chain.stage("dpo").asset, partition, planned[recipe.chain.stage("dpo").asset].version],
                "to": [distill, partition, planned[distill].version],
                "upstream": planned[distill].upstream,
            }
    return {"store": str(work / "store"), "launches": launches}


def promote(store_root: str, parent: dict) -> None:
    """Publish a copy of a published model as another asset's version (GRPO's parent, see the docstring)."""
    from doge_dagster.artifacts import ArtifactStore

    store = ArtifactStore(store_root)
    asset, partition, version = parent["from"]
    target_asset, target_partition, target_version = parent["to"]
    source = Path(store.url(asset, partition, version))
    staged = store.staging_dir(target_asset, target_partition, target_version)
    shutil.rmtree(staged)
    shutil.copytree(source, staged, ignore=shutil.ignore_patterns("manifest.json"))
    store.publish(target_asset, target_partition, target_version, staged, parent["upstream"],
                  {"device_check": f"a copy of {asset} {version}"})  # fmt: skip


# -- the bench part (a child process) ---------------------------------------------------------------------------
def bench_rows(sizes: list[str], device: str, batch: int, seq: int, steps: int, warmup: int) -> None:
    """`bench_gpu.bench` for each size, one RESULT-JSON line as each finishes (a timeout keeps the earlier rows)."""
    import gc

    import torch

    sys.path.insert(0, str(BENCH))
    import bench_gpu

    for size in sizes:
        started = time.perf_counter()
        row = bench_gpu.bench(size, device, batch, seq, steps, warmup, False, None)
        row["seconds"] = time.perf_counter() - started
        print(RESULT_PREFIX + json.dumps(row), flush=True)
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()


# -- the parent: parts, budget, results -------------------------------------------------------------------------
def environment(device_mode: str) -> dict:
    """Card, driver and library versions (the section's header)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "mode": device_mode}
    if device_mode == "gpu":
        info["card"] = torch.cuda.get_device_name()
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=False)  # fmt: skip
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else "?"
        except (OSError, subprocess.SubprocessError):
            info["driver"] = "? (no nvidia-smi)"
    else:
        info["card"] = "cpu"
        info["driver"] = "n/a"
    libraries = {}
    for name in ("transformers", "trl", "accelerate", "datasets"):
        try:
            libraries[name] = version(name)
        except PackageNotFoundError:
            libraries[name] = "missing"
    info["libraries"] = libraries
    info["cores"] = len(os.sched_getaffinity(0))
    return info


class Check:
    """Runs the parts in order inside one deadline and keeps the results written."""

    def __init__(self, mode: Mode, out: Path, work: Path, budget: float, started: float, env_info: dict):
        self.mode, self.out, self.work, self.env_info = mode, out, work, env_info
        self.started = started  # when the process started: the budget counts from there
        self.deadline = started + budget - END_RESERVE_S
        self.budget = budget
        self.rows: list[Row] = []
        self.running: subprocess.Popen | None = None
        self.interrupted = False
        self.log = out / "parts.log"
        self.log.write_text("")
        self.child_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                          "HF_HOME": str(work / "hf"), "MPLCONFIGDIR": str(work / "mpl"),
                          "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}  # fmt: skip

    def left(self) -> float:
        """Seconds left before the deadline (none once interrupted)."""
        return 0.0 if self.interrupted else self.deadline - time.monotonic()

    def run_part(self, name: str, command: list[str], cap: str | None = None) -> tuple[str, float | None, str]:
        """Run one part in its own process group: (status, seconds, output). The status is `ok`, `failed (rc N)`,
        `timeout after N s` or `skipped: ...`."""
        timeout = min(self.mode.caps[cap or name], self.left())
        if self.interrupted:
            return "skipped: interrupted", None, ""
        if timeout < MIN_PART_S:
            return f"skipped: {max(0.0, self.left()):.0f} s left of the budget", None, ""
        print(f"[{self.elapsed():5.0f} s] {name}: started, timeout {timeout:.0f} s", flush=True)
        part_log = self.work / f"part-{re.sub(r'[^A-Za-z0-9]+', '-', name)}.log"
        started = time.monotonic()
        with open(part_log, "w") as handle:
            self.running = subprocess.Popen(command, cwd=ROOT, env=self.child_env, stdout=handle,
                                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            try:
                returncode = self.running.wait(timeout=timeout)
                status = "ok" if returncode == 0 else f"failed (rc {returncode})"
            except subprocess.TimeoutExpired:
                status = f"timeout after {timeout:.0f} s"
            except KeyboardInterrupt:  # SIGTERM (the wrapper's backstop) or Ctrl+C: keep what the part printed
                status, self.interrupted = "interrupted", True
            finally:
                self.stop_running()
        seconds = time.monotonic() - started
        output = part_log.read_text(errors="replace")
        with self.log.open("a") as handle:
            tail = output[-LOG_TAIL_BYTES:]
            handle.write(f"\n===== {name}: {status}, {seconds:.1f} s: {' '.join(command)}\n{tail}\n")
        print(f"[{self.elapsed():5.0f} s] {name}: {status} ({seconds:.0f} s)", flush=True)
        return status, seconds, output

    def stop_running(self) -> None:
        """End the running part's whole process group (launcher, trainer, data workers)."""
        process, self.running = self.running, None
        if process is None:
            return
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # the group may outlive its leader (a trainer in the launcher's group): kill what is left
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def elapsed(self) -> float:
        """Seconds since the check started."""
        return time.monotonic() - self.started

    def add(self, row: Row) -> Row:
        """Record a row and rewrite the results."""
        self.rows.append(row)
        self.write()
        return row

    # -- the parts ----------------------------------------------------------------------------------------
    def bench(self) -> None:
        sizes, settings = list(self.mode.bench_sizes), self.mode.bench
        device = "cuda" if self.mode.name == "gpu" else "cpu"
        command = [sys.executable, __file__, "--child", "bench", "--device", device, "--sizes", *sizes,
                   *[f"--{key}={value}" for key, value in settings.items()]]  # fmt: skip
        status, _, output = self.run_part("bench", command)
        results = {row["size"]: row for row in results_of(output)}
        shape = f"{settings['batch']} x {settings['seq']}"
        for size in sizes:
            row = Row("bench", f"Doge-{size}", note=f"bench_gpu.py raw loop, {shape}")
            if size in results:
                result = results[size]
                row.status, row.seconds = "ok", result["seconds"]
                row.steps = f"{settings['steps']} (+{settings['warmup']} warm-up)"
                row.tokens_per_s, row.mfu, row.peak_gib = result["tokens_per_s"], result["mfu"], result["peak_gb"]
                row.note += f", {result['attention']}"
            else:
                row.status = status if status != "ok" else "no result"
            self.add(row)

    def setup(self) -> dict | None:
        plan_path = self.work / "plan.json"
        command = [sys.executable, __file__, "--child", "setup", "--mode", self.mode.name, "--work", str(self.work),
                   "--plan", str(plan_path)]  # fmt: skip
        missing = missing_modules(STAGE_MODULES)
        if missing:
            self.add(Row("setup", "data artifacts", f"skipped: missing {', '.join(missing)}"))
            return None
        status, seconds, _ = self.run_part("setup", command)
        rows = self.mode.data
        note = (f"generated rows: pretrain {rows['pretrain']} x {self.mode.sequence} tokens, sft {rows['sft']}, "
                f"dpo {rows['dpo']}, grpo {rows['grpo']}; BPE tokenizer, model vocab 32768")  # fmt: skip
        self.add(Row("setup", "data artifacts", status, seconds, note=note))
        return json.loads(plan_path.read_text()) if status == "ok" else None

    def stage(self, plan: dict | None, stage: str, size: str, depends_on: Row | None) -> Row:
        name = f"{stage} {size}"
        row = Row(stage, f"Doge-{size}")
        if plan is None:
            row.status = "skipped: no data (setup did not finish)"
            return self.add(row)
        if depends_on is not None and depends_on.status != "ok":
            row.status = f"skipped: {depends_on.part} {depends_on.what} did not finish"
            return self.add(row)
        from doge_dagster.launching.command import accelerate_command
        from doge_dagster.recipes import LaunchRecipe

        launch = plan["launches"][name]
        try:
            if "parent" in launch:
                promote(plan["store"], launch["parent"])
            command = accelerate_command(stage, launch["spec"], LaunchRecipe(**launch["launch"]))
        except Exception as error:  # noqa: BLE001 - a row that says why, and the next parts still run
            row.status = f"failed before launch: {type(error).__name__}: {error}"[:300]
            return self.add(row)
        status, seconds, output = self.run_part(name, command, cap=name if name in self.mode.caps else stage)
        row.status, row.seconds = status, seconds
        manifest = Path(plan["store"]) / launch["asset"] / launch["partition"] / launch["version"] / "manifest.json"
        if status == "ok" and manifest.is_file():
            metadata = json.loads(manifest.read_text())["metadata"]
            row.steps = str(metadata.get("global_step"))
            row.tokens_per_s = metadata.get("tokens_per_second") or None
            row.mfu = metadata.get("mfu")
            row.peak_gib = metadata.get("peak_memory_gb") if self.mode.name == "gpu" else None
            losses = [metadata.get(key, float("nan")) for key in ("first_train_loss", "final_train_loss")]
            notes = [f"loss {losses[0]:.2f} -> {losses[1]:.2f}", f"train {metadata.get('train_runtime_s', 0):.0f} s"]
            if stage == "pretrain" and (steady := steady_rate(output)) is not None:
                rate, first, last = steady
                mfu = f", MFU {row.mfu * rate / row.tokens_per_s:.1%}" if row.mfu and row.tokens_per_s else ""
                notes.append(f"steps {first}-{last}: {rate:,.0f} tokens/s{mfu}")
            if "final_reward" in metadata:
                notes.append(f"reward {metadata['final_reward']}")
            if row.mfu is None and "mfu_note" in metadata and self.mode.name == "gpu":  # e.g. a card not in the table
                notes.append(metadata["mfu_note"])
            unpassed = [check for check, (passed, _) in metadata.get("checks", {}).items() if not passed]
            if unpassed:  # a model trained for a few steps is not expected to pass its learning checks
                notes.append(f"checks not passed after {row.steps} steps: {', '.join(unpassed)}")
            row.note = "; ".join(notes)
        else:
            if status == "ok":
                row.status = "no manifest"
            progress = PROGRESS.findall(output)
            if progress:  # what the trainer had logged before it ended
                step, total, rate = progress[-1]
                row.steps, row.tokens_per_s = f"{step}/{total}", float(rate.replace(",", ""))
                row.note = "from the last progress line"
            errors = [line for line in output.splitlines() if re.search(r"Error|error:", line)]
            if errors:
                row.note = (row.note + "; " if row.note else "") + errors[-1].strip()[:200]
        return self.add(row)

    def run(self) -> None:
        self.bench()
        plan = self.setup()
        base = self.stage(plan, "pretrain", "20M", None)
        self.stage(plan, "pretrain", "160M", None)
        previous = base
        for stage in CHAT_STAGES:
            previous = self.stage(plan, stage, "20M", previous)

    # -- results ------------------------------------------------------------------------------------------
    def section(self) -> str:
        info = self.env_info
        libraries = ", ".join(f"{name} {value}" for name, value in info["libraries"].items())
        when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        header = (f"### Device check (`bench/gpu_check.sh`, {self.mode.name} mode), {when}, {info['card']}, "
                  f"driver {info['driver']}")  # fmt: skip
        lines = [
            header,
            "",
            (
                f"torch {info['torch']} (CUDA {info['cuda']}), {libraries}; {info['cores']} CPU cores. Budget "
                f"{self.budget:.0f} s, used {self.elapsed():.0f} s. Stage rows: `accelerate launch ... -m "
                "doge_dagster.training STAGE --spec` with the recipe's training settings on generated data "
                "(bench/gpu_check.py); tokens/s and MFU are the runner's (the whole run, first steps included; "
                "pretraining's note gives the rate from its first to its last logged step)."
            ),
            "",
            *TABLE_HEADER,
            *(row.markdown() for row in self.rows),
        ]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        (self.out / "RESULTS-section.md").write_text(self.section())
        payload = {"environment": self.env_info, "mode": asdict(self.mode), "elapsed_s": round(self.elapsed(), 1),
                   "rows": [asdict(row) for row in self.rows]}  # fmt: skip
        (self.out / "results.json").write_text(json.dumps(payload, indent=2))


PROGRESS = re.compile(r"step (\d+)/(\d+) \|.*?tokens/s ([\d,]+)")
TRAIN_PROGRESS = re.compile(r"step (\d+)/(\d+) \| loss [^|]*\|.*?tokens/s ([\d,]+)")  # training steps' lines


def steady_rate(output: str) -> tuple[float, int, int] | None:
    """Tokens/s between the first and the last progress line of a run with a fixed number of tokens per step
    (packed pretraining): the runner's lines give the average since training began, r_k = k x T / t_k, so the
    rate between steps a and b is (b - a) / (b / r_b - a / r_a), without the first steps' warm-up."""
    rates: dict[int, float] = {}
    for step, _, rate in TRAIN_PROGRESS.findall(output):
        rates.setdefault(int(step), float(rate.replace(",", "")))
    lines = sorted((step, rate) for step, rate in rates.items() if rate > 0)
    if len(lines) < 2 or lines[-1][0] <= lines[0][0]:
        return None
    (first, first_rate), (last, last_rate) = lines[0], lines[-1]
    seconds_per_token_step = last / last_rate - first / first_rate
    return ((last - first) / seconds_per_token_step, first, last) if seconds_per_token_step > 0 else None


def results_of(output: str) -> list[dict]:
    """The RESULT-JSON lines a child printed."""
    return [
        json.loads(line.removeprefix(RESULT_PREFIX)) for line in output.splitlines() if line.startswith(RESULT_PREFIX)
    ]


def missing_modules(names) -> list[str]:
    """The modules of `names` this interpreter cannot import."""
    import importlib.util

    return [name for name in names if importlib.util.find_spec(name) is None]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="reduced sizes on the CPU (automatic without CUDA)")
    parser.add_argument(
        "--out", default=os.environ.get("OUT") or None, help="results folder (default: $OUT, else a temp dir)"
    )
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole check (gpu 480, cpu 600)")
    parser.add_argument("--record", action=argparse.BooleanOptionalAction, default=None,
                        help="append the section to bench/RESULTS.md (default: on a GPU)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the scratch store (printed at the end)")
    parser.add_argument("--child", choices=("bench", "setup"), help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=tuple(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", nargs="+", help=argparse.SUPPRESS)
    for key in ("batch", "seq", "steps", "warmup"):
        parser.add_argument(f"--{key}", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "bench":
        bench_rows(args.sizes, args.device, args.batch, args.seq, args.steps, args.warmup)
        return 0
    if args.child == "setup":
        plan = setup(Path(args.work), MODES[args.mode])
        Path(args.plan).write_text(json.dumps(plan, indent=2))
        return 0

    started = time.monotonic()
    import torch

    mode = MODES["cpu" if args.cpu or not torch.cuda.is_available() else "gpu"]
    if not args.cpu and mode.name == "cpu":
        print("no CUDA device: running the reduced CPU mode", flush=True)
    budget = args.budget or mode.budget_s
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="doge-gpu-check-out-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="doge-gpu-check-"))
    check = Check(mode, out, work, budget, started, environment(mode.name))
    print(
        f"device check, {mode.name} mode, {check.env_info['card']}, budget {budget:.0f} s; results in {out}", flush=True
    )

    def interrupted(signum, frame):  # the wrapper's backstop or Ctrl+C: stop the part, keep what was measured
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    try:
        check.run()
    except KeyboardInterrupt:
        check.interrupted = True
        check.stop_running()
    finally:
        check.write()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    section = check.section()
    print("\n" + section)
    record = args.record if args.record is not None else mode.name == "gpu"
    if record:
        try:
            with RESULTS.open("a") as handle:
                handle.write("\n" + section)
            print(f"appended to {RESULTS}")
        except OSError as error:
            print(f"could not append to {RESULTS} ({error}); the section is in {out / 'RESULTS-section.md'}")
    print(
        f"results: {out} (RESULTS-section.md, results.json, parts.log)"
        + (f"; scratch store kept in {work}" if args.keep else "")
    )
    return 0 if all(row.status == "ok" for row in check.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
