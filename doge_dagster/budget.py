"""What a stage will cost before it runs, and what it did cost after: the plan, the time-limit check, run metrics.

A stage's estimate is its tokens divided by a rate: tokens/s of one process (one GPU) for that stage, model shape
and device, times the processes (linear scaling assumed: DDP overlaps the gradient all-reduce with the backward
pass, but no multi-GPU run was measured here). The rate comes from, in order:

1. `launch.expected_tokens_per_second` in the stage's launch section (per process; e.g. from a device check);
2. the last published run of the stage with the same throughput key (model, device, batch layout, precision)
   in the artifact store: every training run records its `tokens_per_second_per_process` and that key;
3. `MEASURED`, the rates `bench/bench_gpu.py` measured (seeded from bench/RESULTS.md, pretraining only).

Only packed pretraining with `max_steps` has an exact token count before its data exists (steps x sequences x
sequence length). A launch whose exact estimate exceeds its `time_limit` is refused before anything is submitted,
unless the run carries the tag `doge/allow-over-time-limit=true`; with no known rate the launch gets a warning.

The SFT, distillation and DPO stages' tokens depend on their examples' lengths, so they get an upper bound instead:
every example at the mixture's `max_length` (DPO: a chosen and a rejected sequence per pair), epochs x examples.
Their rate, when neither the launch section nor an earlier run gives one, is derived from `MEASURED` (a
pretraining rate of the same model, device and compile setting with the same tokens per micro-batch: SFT packs
its rows to `max_length` too), scaled to the stage's sequence length at the same MFU when the rows are longer
(attention FLOPs grow with the sequence; shorter rows keep the rate, since a smaller micro-batch does not run
faster per token on these small models), and for DPO divided by 4/3 (the frozen reference model's forward pass
adds a third to a training step's FLOPs). A bound that exceeds the limit says "may not fit" and warns; it is not
refused. GRPO's time is spent generating completions, which no pretraining rate predicts: it needs a
measurement (`launch.expected_tokens_per_second` or an earlier run).
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from typing import Any

from doge_dagster.recipes import Recipe, content_version, parse_recipe
from doge_dagster.throughput import (
    device_key,
    duration,
    flops_per_token,
    is_cpu,
    run_throughput,
    slurm_time,
    time_limit_seconds,
)

ALLOW_OVER_TIME_LIMIT_TAG = "doge/allow-over-time-limit"
TIGHT_SHARE = 0.8  # an estimate above this share of the time limit is marked tight: no room for slow nodes or restarts
RECOMMENDED_MARGIN = 1.25  # a suggested time limit: the estimate plus a quarter

# The seed shapes (recipes/20M..320M.yaml, the SmallDoge guide): hidden, intermediate, layers, heads, kv heads.
SEED_SHAPES = {
    "Doge-20M": (256, 512, 8, 2, 1),
    "Doge-60M": (512, 1024, 16, 4, 2),
    "Doge-160M": (768, 1536, 24, 6, 3),
    "Doge-320M": (1024, 2048, 32, 8, 4),
}
SEED_VOCAB, SEED_SEQUENCE = 32768, 2048
# Their parameter counts (tied embeddings), as `DogeForCausalLM` builds them (tests/test_budget.py checks).
SEED_PARAMETERS = {"Doge-20M": 13_118_728, "Doge-60M": 54_571_552, "Doge-160M": 152_676_168,
                   "Doge-320M": 335_750_272}  # fmt: skip
# A DPO step per token: the policy's forward and backward (3 units) and the reference model's forward (1 unit).
DPO_COST_PER_TOKEN = 4 / 3


@dataclass(frozen=True)
class MeasuredRate:
    """Pretraining tokens/s of ONE device through HF `Trainer` (the pretraining stage's trainer), bf16,
    sequence 2048, no activation checkpointing, for a seed model shape and per-device batch."""

    model: str
    device: str
    per_device_batch: int
    torch_compile: bool
    tokens_per_second: float
    source: str


_TRAINER = (
    "`bench/bench_gpu.py --trainer ACC` on an NVIDIA H200, 2026-11-26 (bench/RESULTS.md, 'Pretraining batch layout "
    "through HF Trainer'): HF Trainer with the recipe's optimizer, bf16, sequence 2048, 10 timed steps"
)
# The Trainer ran 2-19% below the raw training loop at the same shape (20M: 285,780 / 350,812 = 0.815; 160M:
# 59,504 / 60,356 = 0.986). 60M and 320M were measured with the raw loop only; their rates are that measurement
# times the lower ratio, 0.815 (so on the safe side).
TRAINER_PER_RAW = 285_780 / 350_812
_RAW = (
    "derived: {raw:,} tokens/s measured with the raw loop (`bench/bench_gpu.py`, bf16, batch 8 x 2048, NVIDIA H200, "
    "2026-11-26, bench/RESULTS.md) x 0.815, the lower Trainer/raw ratio measured (Doge-20M)"
)
MEASURED: tuple[MeasuredRate, ...] = (
    MeasuredRate("Doge-20M", "H200", 1, False, 41_044, _TRAINER + ", 1 sequence x 16 accumulation (the seed layout)"),
    MeasuredRate("Doge-20M", "H200", 8, False, 285_780, _TRAINER + ", 8 sequences x 2 accumulation"),
    MeasuredRate("Doge-20M", "H200", 8, True, 665_166, _TRAINER + ", 8 sequences x 2 accumulation, torch_compile"),
    MeasuredRate("Doge-60M", "H200", 8, False, round(129_873 * TRAINER_PER_RAW), _RAW.format(raw=129_873)),
    MeasuredRate("Doge-160M", "H200", 1, False, 16_183, _TRAINER + ", 1 sequence x 16 accumulation (the seed layout)"),
    MeasuredRate("Doge-160M", "H200", 8, False, 59_504, _TRAINER + ", 8 sequences x 2 accumulation"),
    MeasuredRate("Doge-160M", "H200", 8, True, 110_075, _TRAINER + ", 8 sequences x 2 accumulation, torch_compile"),
    MeasuredRate("Doge-320M", "H200", 8, False, round(34_595 * TRAINER_PER_RAW), _RAW.format(raw=34_595)),
)


def seed_model(recipe: Recipe) -> str | None:
    """`Doge-160M` etc. when the recipe's architecture is a seed shape (what `MEASURED` is keyed by)."""
    model = recipe.model
    shape = (model.hidden_size, model.intermediate_size, model.num_hidden_layers, model.num_attention_heads,
             model.num_key_value_heads)  # fmt: skip
    if model.vocab_size != SEED_VOCAB:
        return None
    return next((name for name, seed in SEED_SHAPES.items() if seed == shape), None)


def _int(value: Any, default: int) -> int:
    return int(value) if value is not None else default


@dataclass(frozen=True)
class Layout:
    """How a stage trains: what its throughput depends on besides the model and the device."""

    per_device_batch: int
    accumulation: int
    processes: int
    sequence: int
    packed: bool
    torch_compile: bool
    bf16: bool
    activation_checkpointing: bool

    @property
    def global_batch(self) -> int:
        """Sequences (examples) per optimizer step."""
        return self.per_device_batch * self.accumulation * self.processes


def stage_layout(recipe: Recipe, stage: str) -> Layout:
    """The stage's batch layout, precision and processes from its recipe section (HF defaults where unset)."""
    record = recipe.chain.stage(stage)
    section = recipe.section(record.section)
    training = section.training
    mixture = recipe.chain.mixture(record.mixture)
    return Layout(
        per_device_batch=_int(training.get("per_device_train_batch_size"), 8),
        accumulation=_int(training.get("gradient_accumulation_steps"), 1),
        processes=section.launch.processes,
        sequence=recipe.section(f"mixtures.{mixture.name}").max_length,
        packed=mixture.packed,
        torch_compile=bool(training.get("torch_compile", False)),
        bf16=bool(training.get("bf16", False)),
        activation_checkpointing=bool(training.get("activation_checkpointing", False)),
    )


def throughput_key(recipe: Recipe, stage: str, device: str | None) -> str:
    """What a per-process rate depends on: stage, model, device, per-device batch, sequence, precision, compile.
    A run records it, and a later estimate uses that run's rate only under the same key."""
    layout = stage_layout(recipe, stage)
    return content_version(
        {
            "stage": stage,
            "model": recipe.model,
            "device": device_key(device),
            "per_device_batch": layout.per_device_batch,
            "sequence": layout.sequence,
            "torch_compile": layout.torch_compile,
            "bf16": layout.bf16,
            "activation_checkpointing": layout.activation_checkpointing,
        }
    )


@dataclass(frozen=True)
class StageEstimate:
    """One stage's tokens, steps, processes and expected rate, and what follows: wall time, GPU-hours, cost."""

    stage: str
    tokens: int | None
    tokens_detail: str
    steps: int | None
    steps_detail: str
    processes: int
    device: str | None
    rate: float | None  # tokens/s of one process
    rate_source: str  # where the rate comes from, or why there is none and how to get one
    time_limit: str
    price: float | None = None
    # tokens unknown before the data exists, but at most this many (every example at max_length): `wall_s` and
    # the verdict are then upper bounds, never a reason to refuse a launch
    tokens_bound: int | None = None

    @property
    def bounded(self) -> bool:
        """True when the time estimate is an upper bound (from `tokens_bound`), not an estimate."""
        return self.tokens is None and self.tokens_bound is not None

    @property
    def time_limit_s(self) -> int:
        """The time limit in seconds."""
        return time_limit_seconds(self.time_limit)

    @property
    def total_rate(self) -> float | None:
        """Tokens/s of all processes together (linear scaling)."""
        return self.rate * self.processes if self.rate is not None else None

    @property
    def wall_s(self) -> float | None:
        """Expected training time (training only: loading, evaluation and checkpoint saves come on top)."""
        tokens = self.tokens if self.tokens is not None else self.tokens_bound
        if tokens is None or self.total_rate is None:
            return None
        return tokens / self.total_rate

    @property
    def gpu_hours(self) -> float | None:
        """Expected wall time x processes (on CPU: process-hours)."""
        return None if self.wall_s is None else self.wall_s / 3600 * self.processes

    @property
    def cost(self) -> float | None:
        """GPU-hours x `launch.gpu_hour_price`, when both are known."""
        return None if self.gpu_hours is None or self.price is None else self.gpu_hours * self.price

    @property
    def share(self) -> float | None:
        """Expected wall time as a share of the time limit."""
        return None if self.wall_s is None else self.wall_s / self.time_limit_s

    @property
    def verdict(self) -> str:
        """`fits`, `tight` (over TIGHT_SHARE of the limit), `DOES NOT FIT`, or `unknown`; an upper bound
        (`bounded`) over the limit `may not fit`."""
        if self.share is None:
            return "unknown"
        if self.share > 1:
            return "may not fit" if self.bounded else "DOES NOT FIT"
        return "tight" if self.share > TIGHT_SHARE else "fits"

    def over_limit_problem(self) -> str | None:
        """The refusal message when the estimate exceeds the time limit: the numbers and the fixes (else None)."""
        if self.verdict != "DOES NOT FIT":
            return None
        assert self.wall_s is not None and self.total_rate is not None and self.rate is not None
        needed = math.ceil(self.processes * self.wall_s / self.time_limit_s)
        on = "process" if is_cpu(self.device) else "GPU"
        return (
            f"stages.{self.stage}: expected training time {duration(self.wall_s)} exceeds "
            f"stages.{self.stage}.launch.time_limit {self.time_limit} ({duration(self.time_limit_s)}) "
            f"{self.share:.1f}x: {self.tokens:,} tokens ({self.tokens_detail}) at {self.rate:,.0f} tokens/s per "
            f"{on} x {self.processes} process(es) = {self.total_rate:,.0f} tokens/s ({self.rate_source}). "
            f"Fix one of: run on more GPUs (at least {needed} processes at this rate: "
            f"stages.{self.stage}.launch.gpus_per_node / nodes, dividing training.gradient_accumulation_steps to "
            f"keep the global batch); raise stages.{self.stage}.launch.time_limit to at least "
            f"{slurm_time(self.wall_s * RECOMMENDED_MARGIN)} (the estimate plus 25%); or launch anyway with the run "
            f"tag {ALLOW_OVER_TIME_LIMIT_TAG}=true (logged)."
        )

    def summary(self) -> str:
        """One line for the run log: the estimate against the limit, or why there is none."""
        if self.wall_s is None:
            unknown_tokens = self.tokens is None and self.tokens_bound is None
            what = "tokens unknown before the data exists" if unknown_tokens else self.rate_source
            return f"stages.{self.stage}: no time estimate ({what}); time_limit {self.time_limit} not checked"
        cost = f", cost {self.cost:,.2f}" if self.cost is not None else ""
        if self.bounded:
            return (
                f"stages.{self.stage}: at most {duration(self.wall_s)} ({self.gpu_hours:,.1f} GPU-hours{cost}) of "
                f"time_limit {self.time_limit}, {self.share:.0%} ({self.verdict}): at most {self.tokens_bound:,} "
                f"tokens at {self.total_rate:,.0f} tokens/s ({self.processes} x {self.rate:,.0f}; {self.rate_source})"
            )
        return (
            f"stages.{self.stage}: expected {duration(self.wall_s)} ({self.gpu_hours:,.1f} GPU-hours{cost}) of "
            f"time_limit {self.time_limit}, {self.share:.0%}: {self.tokens:,} tokens at {self.total_rate:,.0f} "
            f"tokens/s ({self.processes} x {self.rate:,.0f}; {self.rate_source})"
        )


def _sequences_per_example(recipe: Recipe, stage: str) -> int | None:
    """Sequences a stage trains on per example (DPO: chosen and rejected), or None when its cost is not
    proportional to its examples' tokens (GRPO generates its completions)."""
    config = recipe.chain.stage(stage).config_class
    return {"trl:DPOConfig": 2, "trl:GRPOConfig": None}.get(config, 1)


def _training_examples(recipe: Recipe, stage: str) -> tuple[int, float]:
    """The stage's train-split rows (the split keeps one row of every round(1 / test_size) for test) and epochs."""
    record = recipe.chain.stage(stage)
    mixture = recipe.section(f"mixtures.{record.mixture}")
    examples = mixture.total_size - mixture.total_size // max(1, round(1 / mixture.test_size))
    return examples, float(recipe.section(record.section).training.get("num_train_epochs", 3))


def _tokens_and_steps(recipe: Recipe, stage: str, layout: Layout) -> tuple[int | None, str, int | None, str]:
    training = recipe.section(recipe.chain.stage(stage).section).training
    max_steps = _int(training.get("max_steps"), -1)
    batch = f"{layout.per_device_batch} x {layout.accumulation} accumulation x {layout.processes} process(es)"
    if max_steps > 0 and layout.packed:
        tokens = max_steps * layout.global_batch * layout.sequence
        return tokens, f"{max_steps:,} steps x {batch} x {layout.sequence:,} tokens", max_steps, "max_steps"
    if max_steps > 0:
        bound = max_steps * layout.global_batch * layout.sequence
        return None, f"at most {bound:,} (examples up to {layout.sequence:,} tokens)", max_steps, "max_steps"
    examples, epochs = _training_examples(recipe, stage)  # epoch-based
    per_step = layout.global_batch
    generations = training.get("num_generations")
    if generations is not None:  # GRPO: the batch counts completions, num_generations per prompt
        per_step = max(1, layout.global_batch // int(generations))
    steps = math.ceil(epochs * math.ceil(examples / per_step))
    packing = " (fewer with the trainer's packing)" if training.get("packing") else ""
    detail = f"about {epochs:g} epoch(s) x {examples:,} examples / {per_step} per step{packing}"
    return None, f"depends on example lengths ({examples:,} examples up to {layout.sequence:,} tokens)", steps, detail


def tokens_bound(recipe: Recipe, stage: str, layout: Layout) -> int | None:
    """At most this many tokens: every example (DPO: both sequences of a pair) at the mixture's `max_length`, for
    each epoch (or `max_steps` x global batch). None for GRPO (generation) and for exactly known stages."""
    sequences = _sequences_per_example(recipe, stage)
    training = recipe.section(recipe.chain.stage(stage).section).training
    max_steps = _int(training.get("max_steps"), -1)
    if sequences is None or (max_steps > 0 and layout.packed):
        return None
    if max_steps > 0:
        return max_steps * layout.global_batch * layout.sequence * sequences
    examples, epochs = _training_examples(recipe, stage)
    return math.ceil(epochs * examples) * layout.sequence * sequences


def _derived_rate(recipe: Recipe, stage: str, device: str, layout: Layout) -> tuple[float, str] | None:
    """A chat stage's per-process rate from a measured pretraining rate (module docstring), or None."""
    model = seed_model(recipe)
    sequences = _sequences_per_example(recipe, stage)
    if model is None or sequences is None or not layout.bf16 or layout.activation_checkpointing:
        return None
    micro_batch_tokens = layout.per_device_batch * layout.sequence
    for measured in MEASURED:
        same_shape = (measured.model, measured.device, measured.torch_compile) == (model, device, layout.torch_compile)
        if same_shape and measured.per_device_batch * SEED_SEQUENCE == micro_batch_tokens:
            break
    else:
        return None
    shape = SEED_SHAPES[model]

    def flops(sequence: int) -> float:
        return flops_per_token(SEED_PARAMETERS[model], SEED_VOCAB, shape[0], shape[2], sequence)

    longer = min(1.0, flops(SEED_SEQUENCE) / flops(layout.sequence))
    cost = DPO_COST_PER_TOKEN if sequences == 2 else 1.0
    rate = measured.tokens_per_second * longer / cost
    measured_layout = f"{measured.per_device_batch} x {SEED_SEQUENCE} tokens per micro-batch ({measured.source})"
    how = [f"{measured.tokens_per_second:,.0f} tokens/s for pretraining {model} on {device}, {measured_layout}"]
    if longer < 1:
        how.append(f"x {longer:.2f} for {layout.sequence:,}-token rows (attention FLOPs, same MFU)")
    if cost != 1:
        how.append("/ 4/3 for DPO's reference forward pass")
    return rate, "derived: " + " ".join(how)


def _last_run_rate(store: Any, asset: str, partition: str, key: str) -> tuple[float, str] | None:
    try:
        manifests = list(reversed(store.manifests(asset, partition)))
    except Exception:  # noqa: BLE001 -- an unreachable store only means no history
        return None
    for manifest in manifests:
        metadata = manifest.metadata
        rate = metadata.get("tokens_per_second_per_process")
        if metadata.get("throughput_key") == key and rate:
            created = datetime.datetime.fromtimestamp(manifest.created).strftime("%Y-%m-%d %H:%M")
            return float(rate), (
                f"the last run on {metadata.get('device')}: {asset}[{partition}] version {manifest.version}, "
                f"published {created}"
            )
    return None


def _no_measurement(recipe: Recipe, stage: str, device: str | None, layout: Layout) -> str:
    setting = f"stages.{stage}.launch.expected_tokens_per_second"
    if device is None:
        return (
            f"no measurement: the GPU is unknown; set stages.{stage}.launch.device (e.g. H200) to use the measured "
            f"rates, or {setting}"
        )
    size = seed_model(recipe)
    compiled = ", torch_compile" if layout.torch_compile else ""
    what = f"{size or 'this model'}'s {stage} stage on {device} ({layout.per_device_batch} per device{compiled})"
    if is_cpu(device):
        how = f"CPU rates depend on the machine: set {setting} (e.g. the tokens/s an earlier run of it logged)"
    elif layout.packed and size:
        how = (
            f"measure it on that GPU (the device check: `python bench/bench_gpu.py --sizes {size.removeprefix('Doge-')} "
            f"--trainer 2 --batch {layout.per_device_batch}`) and set {setting}, or materialize the stage once: its "
            "run records tokens/s, which later plans read from the artifact store"
        )
    else:
        how = (
            f"materialize the stage once on that GPU (its run records tokens/s, which later plans read from the "
            f"artifact store), or set {setting}"
        )
    return f"no measurement for {what}: {how}"


def estimate_stage(
    recipe: Recipe, stage: str, store: Any = None, partition: str | None = None, device: str | None = None
) -> StageEstimate:
    """The stage's estimate. `device` (e.g. a GPU detected on the local machine) wins over `launch.device`;
    a CPU launch (`gpus_per_node: 0` and a `cpu*` accelerate config) runs on `cpu`."""
    record = recipe.chain.stage(stage)
    section = recipe.section(record.section)
    launch = section.launch
    layout = stage_layout(recipe, stage)
    cpu_launch = launch.gpus_per_node == 0 and launch.accelerate_config.startswith("cpu")
    device = device_key(device or launch.device or ("cpu" if cpu_launch else None))
    tokens, tokens_detail, steps, steps_detail = _tokens_and_steps(recipe, stage, layout)
    rate: float | None = None
    source = ""
    if launch.expected_tokens_per_second is not None:
        rate, source = launch.expected_tokens_per_second, f"stages.{stage}.launch.expected_tokens_per_second"
    elif device is not None and not is_cpu(device):
        if store is not None and partition is not None:
            found = _last_run_rate(store, record.asset, partition, throughput_key(recipe, stage, device))
            if found:
                rate, source = found
        # The table holds pretraining through HF Trainer: packed 2048-token rows, bf16, no activation checkpointing.
        wanted = (seed_model(recipe), device, layout.per_device_batch, layout.torch_compile)
        table_applies = layout.packed and layout.sequence == SEED_SEQUENCE and layout.bf16
        table_applies = rate is None and table_applies and not layout.activation_checkpointing
        for measured in MEASURED if table_applies else ():
            if (measured.model, measured.device, measured.per_device_batch, measured.torch_compile) == wanted:
                rate, source = measured.tokens_per_second, f"{measured.model} on {measured.device}: {measured.source}"
        bound = tokens_bound(recipe, stage, layout)
        if rate is None and bound is not None and (derived := _derived_rate(recipe, stage, device, layout)):
            rate, source = derived
    if rate is None:
        source = _no_measurement(recipe, stage, device, layout)
    return StageEstimate(
        stage=stage, tokens=tokens, tokens_detail=tokens_detail, steps=steps, steps_detail=steps_detail,
        processes=layout.processes, device=device, rate=rate, rate_source=source, time_limit=launch.time_limit,
        price=launch.gpu_hour_price, tokens_bound=None if tokens is not None else tokens_bound(recipe, stage, layout),
    )  # fmt: skip


def plan_lines(recipe: Recipe, store: Any = None, partition: str | None = None) -> list[str]:
    """`doge-dagster plan`: per training stage tokens, optimizer steps, processes, expected rate, wall time and
    GPU-hours against the time limit, then where each rate comes from."""
    estimates = [
        estimate_stage(recipe, stage.name, store, partition)
        for stage in recipe.chain.stages
        if recipe.section(stage.section) is not None
    ]
    priced = any(estimate.price is not None for estimate in estimates)
    header = ["stage", "tokens", "steps", "procs", "device", "tokens/s", "wall time", "GPU-hours"]
    header += ["cost"] if priced else []
    header += ["time limit", "verdict"]
    rows = []
    for estimate in estimates:
        row = [
            estimate.stage,
            f"{estimate.tokens:,}"
            if estimate.tokens is not None
            else (f"<= {estimate.tokens_bound:,}" if estimate.tokens_bound is not None else "unknown"),
            f"{estimate.steps:,}" if estimate.steps_detail == "max_steps" else f"~{estimate.steps:,}",
            str(estimate.processes),
            estimate.device or "?",
            f"{estimate.total_rate:,.0f}" if estimate.total_rate is not None else "no measurement",
            ("<= " if estimate.bounded else "") + duration(estimate.wall_s) if estimate.wall_s is not None else "-",
            "-"
            if estimate.gpu_hours is None
            else ("<= " if estimate.bounded else "")
            + f"{estimate.gpu_hours:,.1f}"
            + (" (CPU)" if is_cpu(estimate.device) else ""),
        ]
        if priced:
            row.append(f"{estimate.cost:,.2f}" if estimate.cost is not None else "-")
        share = "" if estimate.share is None else f" ({'<= ' if estimate.bounded else ''}{estimate.share:.0%})"
        verdict = estimate.verdict + share
        if estimate.verdict in ("DOES NOT FIT", "may not fit"):
            verdict = f"<< {verdict} >>"
        rows.append([*row, f"{estimate.time_limit} ({duration(estimate.time_limit_s)})", verdict])
    widths = [max(len(line[column]) for line in [header, *rows]) for column in range(len(header))]
    table = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *rows]
    ]
    lines = [
        (
            f"{recipe.name}: training stages against their time limits. tokens/s: all processes together "
            "(per-process rate x processes, linear scaling assumed); wall time: training only (loading, evaluation "
            "and checkpoint saves come on top); `<=`: an upper bound, every example at its mixture's max_length."
        ),
        "",
        *table,
        "",
    ]
    for estimate in estimates:
        if estimate.rate is not None:
            lines.append(
                f"{estimate.stage}: {estimate.rate:,.0f} tokens/s per process x {estimate.processes}; {estimate.rate_source}"
            )
        else:
            lines.append(f"{estimate.stage}: {estimate.rate_source}")
        lines.append(f"  tokens: {estimate.tokens_detail}; steps: {estimate.steps_detail}")
        if problem := estimate.over_limit_problem():
            lines.append(f"  {problem}")
    return lines


def stage_run_metrics(
    spec: Any,
    model_config: Any,
    parameters: int,
    tokens_per_second: float,
    wall_time_s: float,
    world_size: int,
    device_name: str,
) -> dict[str, Any]:
    """What a finished training run reports besides its losses (`throughput.run_throughput`), plus the key a
    later estimate matches its rate by, and a note when it ran on another GPU than `launch.device` says."""
    from doge_dagster.stages import chain_for

    recipe = parse_recipe(
        spec.recipe, source=f"spec {spec.asset}[{spec.partition}]", chain=chain_for(spec.extra_stages)
    )
    record = recipe.chain.stage(spec.name)
    launch = recipe.section(record.section).launch
    layout = stage_layout(recipe, spec.name)
    flops = flops_per_token(
        parameters, model_config.vocab_size, model_config.hidden_size, model_config.num_hidden_layers,
        layout.sequence, bool(getattr(model_config, "tie_word_embeddings", True)),
    )  # fmt: skip
    report = run_throughput(
        device_name=device_name, processes=world_size, tokens_per_second=tokens_per_second, wall_time_s=wall_time_s,
        flops_per_token=flops, peak_tflops=launch.peak_tflops, gpu_hour_price=launch.gpu_hour_price,
    )  # fmt: skip
    report["throughput_key"] = throughput_key(recipe, spec.name, device_name)
    planned = device_key(launch.device)
    if planned and planned != device_key(device_name):
        report["device_note"] = (
            f"ran on {device_name}, but stages.{spec.name}.launch.device says {launch.device}: plans of this stage "
            "used that device's rate"
        )
    return report
