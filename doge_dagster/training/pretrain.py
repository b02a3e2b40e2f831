"""Pretraining: `DogeForCausalLM` from the recipe (or a checkpoint), HF `Trainer`, WSD schedule."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from doge_dagster.trainer_contract import StageContext, StageTrainer

STABLE_DIR = "stable"


def stable_phase_end(training: dict[str, Any]) -> int | None:
    """The last step before the WSD decay starts (None for other schedules or epoch-based runs)."""
    max_steps = int(training.get("max_steps", -1))
    if training.get("lr_scheduler_type") != "warmup_stable_decay" or max_steps <= 0:
        return None
    decay = int(training.get("lr_scheduler_kwargs", {}).get("num_decay_steps", 0))
    return max_steps - decay if 0 < decay < max_steps else None


class PretrainTrainer(StageTrainer):
    """HF `Trainer` on packed rows of a fresh Doge (or a checkpoint), keeping the WSD stable-phase model."""

    def build_model(self, ctx: StageContext):
        """A fresh Doge from the recipe's architecture, or the `init_from` checkpoint for continued pretraining."""
        from transformers import AutoModelForCausalLM, DogeConfig, DogeForCausalLM

        init_from = ctx.section.init_from
        if init_from:
            ctx.reporter.info(f"continued pretraining from {init_from}")
            return AutoModelForCausalLM.from_pretrained(ctx.resolve_model(init_from))
        fields = ctx.recipe.model.model_dump()
        fields["vocab_size"] = len(ctx.tokenizer) if fields["vocab_size"] == "tokenizer" else fields["vocab_size"]
        return DogeForCausalLM(DogeConfig(**fields, router_aux_loss_coef=0.0))

    def training_forced(self, ctx: StageContext) -> dict[str, Any]:
        """Continued pretraining re-enters the WSD stable phase at the stable LR: no second warmup."""
        return {"warmup_steps": 0} if ctx.section.init_from else {}

    def build_trainer(self, ctx: StageContext, model, args):
        """HF `Trainer` on packed rows; the collator masks pad (never EOS, which differs) from the loss."""
        from transformers import DataCollatorForLanguageModeling, Trainer

        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=ctx.data["train"],
            eval_dataset=ctx.eval_split(),
            data_collator=DataCollatorForLanguageModeling(ctx.tokenizer, mlm=False),
            processing_class=ctx.tokenizer,
            callbacks=ctx.callbacks,
        )
        for callback in ctx.callbacks:  # the snapshot gathers sharded weights through the trainer's accelerator
            if hasattr(callback, "bind_trainer"):
                callback.bind_trainer(trainer)
        return trainer

    def callbacks(self, ctx: StageContext) -> list:
        """Keep the model at the end of the WSD stable phase: continued pretraining starts from it.

        Every rank takes part in the save (under FSDP and ZeRO-3 it gathers the sharded weights); rank 0 writes
        the full weights to a partial folder and renames it, so a kill mid-save leaves no half snapshot.
        """
        from transformers import TrainerCallback

        from doge_dagster.training.sharding import save_full_model

        end = stable_phase_end(ctx.section.training)
        target = Path(ctx.spec.work_dir) / STABLE_DIR
        if end is None:
            return []

        class StablePhaseSnapshot(TrainerCallback):
            trainer = None

            def bind_trainer(self, trainer) -> None:
                self.trainer = trainer

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step != end:
                    return
                partial = target.with_name(f"{STABLE_DIR}.partial")
                if state.is_world_process_zero:
                    shutil.rmtree(partial, ignore_errors=True)
                save_full_model(self.trainer, partial)
                if state.is_world_process_zero:
                    shutil.rmtree(target, ignore_errors=True)
                    partial.rename(target)
                    ctx.reporter.info(f"saved the stable-phase model (step {end}) for continued pretraining")

        return [StablePhaseSnapshot()]

    def finalize(self, ctx: StageContext, staged: Path) -> None:
        """Publish the stable-phase snapshot inside the model artifact, under `stable/`."""
        snapshot = Path(ctx.spec.work_dir) / STABLE_DIR
        if snapshot.is_dir():
            shutil.move(str(snapshot), str(staged / STABLE_DIR))
