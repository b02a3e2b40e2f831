"""Out-of-memory backoff: a training step that runs out of memory goes on with a smaller per-device batch and
more gradient accumulation, so the global batch, the LR schedule and the data order stay the same.

`stages.<name>.oom_backoff` turns it on or off; unset, it is on when the stage trains on a GPU and off on CPU.
On an out-of-memory error the runner frees the trainer, divides `per_device_train_batch_size` by its smallest
factor (halves it when even) and multiplies `gradient_accumulation_steps` by the same factor, builds a fresh
trainer and model and resumes from the last complete checkpoint (from the start, with the same seeded initial
weights, when there is none): no optimizer step is repeated or skipped. Each backoff is logged through the
stage's reporter (the Dagster run log) and recorded in the model's metadata (`per_device_train_batch_size`,
`gradient_accumulation_steps`: the batch that worked; `oom_backoffs`: what happened). The batch that worked is
also kept beside the checkpoints, so a process resuming the same version later starts with it. At a
per-device batch of 1 the stage stops with `StageOutOfMemory`, naming the stage and the fixes.

The setting changes no version (it is left out of the sections' dump, kept in launch specs): a backoff trains
the same rows per step with the same global batch and schedule, only the float summation order differs, and
whether one happens depends on the GPU, not on the recipe.

Why not transformers' `auto_find_batch_size` (accelerate's `find_executable_batch_size`): it retries with a
smaller `per_device_train_batch_size` but the same `gradient_accumulation_steps`, so every optimizer step sees
fewer samples: the global batch shrinks, `max_steps` then covers less data (or, by epochs, more steps stretch
the LR schedule), and the run trains another model than the recipe describes. It also restarts from the
checkpoint `train()` was given rather than the last one saved. The recipe validation refuses it unless
`oom_backoff: false`.

Why the data order stays the same (transformers 5.24, accelerate 1.15): the Trainer samples with a
`RandomSampler` that `accelerator.prepare` turns into a `SeedableRandomSampler` (seeded by `args.seed`, or
`data_seed`, plus the epoch): the permutation of row indices does not depend on the batch size. The DataLoader
cuts it into consecutive batches and each optimizer step takes `gradient_accumulation_steps` of them
(`Trainer.get_batch_samples`), so step k trains on rows [k*a*b, (k+1)*a*b) of the permutation for b x a as
for b/2 x 2a. The Trainer accumulates itself (it gives accelerate `num_steps=1`), and a resume skips
`global_step * gradient_accumulation_steps` batches of the new size: the same rows. With several processes
(`split_batches` false) a step still takes the next a*b*n rows; only which rank computes which row changes,
and the all-reduced gradient is the same sum. The loss: Doge and TRL's SFT normalize by `num_items_in_batch`
(the tokens of the whole accumulated batch), so each step's gradient is mathematically the same and differs
only by float rounding of the summation order (in fp32 of the order of 1e-7 relative per step; more in bf16).
Exceptions: the last, partial step of an epoch under several processes (`even_batches` pads differently) and
losses averaged per micro-batch over unequal micro-batches. GRPO keeps its generation batch (a recipe's
`steps_per_generation` scales with the accumulation).

Several processes: every rank backs off by itself, which works when they all run out of memory in the same
step (the usual case with same-shaped batches such as packed rows); a rank that does not waits in the step's
collective until the process group's timeout ends the run.

Testing on a CPU: `DOGE_FAULT_OOM_ABOVE_BATCH=N` makes every training forward with more than N rows raise
`torch.OutOfMemoryError` (from the `DOGE_FAULT_OOM_FROM_STEP=S`th completed optimizer step on, default 0).
The runner installs that hook only when the variable is set.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FAULT_ENV = "DOGE_FAULT_OOM_ABOVE_BATCH"
FAULT_FROM_STEP_ENV = "DOGE_FAULT_OOM_FROM_STEP"
STATE_FILE = "oom_backoff.json"  # beside the checkpoints (removed with them once the model is published)


class StageOutOfMemory(RuntimeError):
    """Out of memory at a per-device batch of 1: nothing left to shrink; the message names the stage and fixes."""


@dataclass(frozen=True)
class Batch:
    """A per-device batch and its gradient accumulation (their product per process is the global batch's share)."""

    per_device: int
    accumulation: int

    def smaller(self) -> Batch | None:
        """The next batch to try: per-device divided by its smallest factor, accumulation multiplied by it (None
        at 1). Halving an odd batch would change the global batch, so 12 goes 6, 3, 1."""
        if self.per_device <= 1:
            return None
        factor = next(f for f in range(2, self.per_device + 1) if self.per_device % f == 0)
        return Batch(self.per_device // factor, self.accumulation * factor)

    def fields(self) -> dict[str, int]:
        return {"per_device_train_batch_size": self.per_device, "gradient_accumulation_steps": self.accumulation}

    def __str__(self) -> str:
        return f"per_device_train_batch_size {self.per_device} x gradient_accumulation_steps {self.accumulation}"


def is_out_of_memory(error: BaseException) -> bool:
    """A device (or CPU allocator) out-of-memory error, as accelerate recognizes them."""
    import torch
    from accelerate.utils.memory import should_reduce_batch_size

    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, Exception) and should_reduce_batch_size(error)
    )


def backoff_enabled(setting: bool | None) -> bool:
    """The recipe's setting, or (unset) on when the stage trains on a GPU."""
    if setting is not None:
        return setting
    import torch

    return torch.cuda.is_available()


def checkpoint_step(checkpoint: Path | None) -> int:
    return int(checkpoint.name.split("-")[1]) if checkpoint else 0


class OutOfMemoryBackoff:
    """Builds the stage's trainer and trains it, backing off the batch on out-of-memory errors.

    `build(fields)` returns a new trainer for a fresh (seeded) initial model whose config has `fields`
    (`per_device_train_batch_size`, `gradient_accumulation_steps`, ...) over the recipe's. The current trainer
    is `self.trainer`; only this object holds it, so a backoff can free it.
    """

    def __init__(self, ctx, checkpoints: Path, build: Callable[[dict[str, Any]], Any], last_checkpoint) -> None:
        self.ctx = ctx
        self.checkpoints = checkpoints
        self.build = build
        self.last_checkpoint = last_checkpoint
        self.enabled = backoff_enabled(ctx.section.oom_backoff)
        self.trainer = build({})
        args = self.trainer.args
        self.configured = Batch(args.per_device_train_batch_size, args.gradient_accumulation_steps)
        self.batch = self.configured
        self.events: list[dict[str, Any]] = []
        saved = self._read_state() if self.enabled else None
        if saved and Batch(**saved["batch"]) != self.batch:
            self.batch, self.events = Batch(**saved["batch"]), saved["events"]
            self._release()
            self.trainer = build(self.fields())
            ctx.reporter.info(f"{self.where}: resuming with {self.batch}, the batch that fit after out of memory")

    @property
    def where(self) -> str:
        spec = self.ctx.spec
        return f"stages.{self.ctx.stage.name} ({spec.asset}[{spec.partition}])"

    def fields(self) -> dict[str, Any]:
        """Trainer config fields of the current batch (GRPO's `steps_per_generation` scaled with accumulation)."""
        fields: dict[str, Any] = self.batch.fields()
        per_generation = self.ctx.section.training.get("steps_per_generation")
        if per_generation is not None:
            fields["steps_per_generation"] = (
                int(per_generation) * self.batch.accumulation // self.configured.accumulation
            )
        return fields

    def train(self):
        """`trainer.train()` from the last complete checkpoint, backing off until a batch fits; its result."""
        while True:
            resume = self.last_checkpoint(self.checkpoints)
            try:
                return self.trainer.train(resume_from_checkpoint=str(resume) if resume else None)
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                failed_step = self.trainer.state.global_step + 1
                if not self.enabled:
                    self.ctx.reporter.info(
                        f"{self.where}: out of memory at step {failed_step} with {self.batch}; set "
                        f"stages.{self.ctx.stage.name}.oom_backoff: true to go on with a smaller per-device batch "
                        "and more accumulation (the same global batch)"
                    )
                    raise
                smaller = self.batch.smaller()
                if smaller is None:
                    message = self._stuck_message(failed_step)
                    self.ctx.reporter.info(message)
                    raise StageOutOfMemory(message) from error
            # Outside the `except`: the traceback, and the tensors its frames hold, are gone.
            self._release()
            resume = self.last_checkpoint(self.checkpoints)
            self.events.append(
                {"step": failed_step, "from": self.batch.fields(), "to": smaller.fields(),
                 "resumed_from_step": checkpoint_step(resume)}
            )  # fmt: skip
            self.ctx.reporter.info(
                f"{self.where}: out of memory at step {failed_step} with {self.batch}; retrying with {smaller} "
                f"(same global batch, LR schedule and data order) "
                + (f"from {resume.name}" if resume else "from step 0 (no checkpoint yet)")
            )
            self.batch = smaller
            self._write_state()
            self._rewind(self.ctx.callbacks, checkpoint_step(resume))
            self.trainer = self.build(self.fields())

    def metadata(self) -> dict[str, Any]:
        """What the model's metadata records: the batch that worked and the backoffs on the way."""
        return {**self.batch.fields(), "oom_backoff": self.enabled, "oom_backoffs": self.events}

    def _stuck_message(self, step: int) -> str:
        name = self.ctx.stage.name
        return (
            f"{self.where}: out of memory at step {step} with {self.batch}: the per-device batch cannot shrink "
            f"further. Fix: turn on activation checkpointing (stages.{name}.training.activation_checkpointing: "
            f"true) and bf16 (bf16: true), shorten the rows (mixtures.{self.ctx.stage.mixture}.max_length), shard "
            f"the model (stages.{name}.launch.accelerate_config: fsdp or zero3) or use GPUs with more memory"
        )

    def _release(self) -> None:
        """Drop the trainer, its model and optimizer, and hand their device memory back."""
        from accelerate.utils.memory import clear_device_cache

        trainer, self.trainer = self.trainer, None
        if trainer is not None:
            trainer.accelerator.free_memory()  # the accelerator's references to the prepared model, optimizer...
            del trainer
        gc.collect()
        clear_device_cache(garbage_collection=True)

    @staticmethod
    def _rewind(callbacks, step: int) -> None:
        """Forget curve points past the resume step: those steps run again (`ProgressCallback`'s lists)."""
        for callback in callbacks:
            for name in ("curve", "eval_losses", "rewards"):
                points = getattr(callback, name, None)
                if isinstance(points, list):
                    points[:] = [point for point in points if point[0] <= step]

    def _state_path(self) -> Path:
        return self.checkpoints / STATE_FILE

    def _read_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self._state_path().read_text())
        except (OSError, ValueError):
            return None

    def _write_state(self) -> None:
        if not self.ctx.reporter.is_main:
            return
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        temporary = self._state_path().with_suffix(".tmp")
        temporary.write_text(json.dumps({"batch": {"per_device": self.batch.per_device,
                                                   "accumulation": self.batch.accumulation},
                                         "events": self.events}))  # fmt: skip
        temporary.replace(self._state_path())


def injected_faults() -> list:
    """Test-only: when DOGE_FAULT_OOM_ABOVE_BATCH is set, a callback whose forward hook raises
    `torch.OutOfMemoryError` in training forwards of more rows than that (none otherwise)."""
    limit = os.environ.get(FAULT_ENV)
    if not limit:
        return []
    import torch
    from transformers import TrainerCallback

    above, from_step = int(limit), int(os.environ.get(FAULT_FROM_STEP_ENV, "0"))

    class InjectedOutOfMemory(TrainerCallback):
        step = 0

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.step = state.global_step
            if model is not None and not getattr(model, "_doge_injected_oom", False):
                model._doge_injected_oom = True  # each backoff builds a new model: hook every one once
                model.register_forward_pre_hook(self.check, with_kwargs=True)

        def on_step_begin(self, args, state, control, **kwargs):
            self.step = state.global_step

        def check(self, module, args, kwargs):
            rows = next((value.shape[0] for value in (*args, *kwargs.values()) if torch.is_tensor(value)), 0)
            if module.training and rows > above and self.step >= from_step:
                raise torch.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate a batch of {rows} rows ({FAULT_ENV}={above})"
                )

    return [InjectedOutOfMemory()]
