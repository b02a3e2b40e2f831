"""Preference tuning with TRL's `DPOTrainer`: sigmoid loss, implicit reference model (a frozen copy of the
start model), on `prompt` / `chosen` / `rejected` message lists."""

from __future__ import annotations

from typing import Any

from doge_dagster.trainer_contract import StageContext, StageTrainer


class DPOStageTrainer(StageTrainer):
    """`DPOTrainer` on the mixture's preference pairs; sequence length from the mixture unless the recipe sets it."""

    def training_defaults(self, ctx: StageContext) -> dict[str, Any]:
        """Sequence length from the mixture unless the recipe sets it."""
        return {"max_length": ctx.mixture_recipe.max_length}

    def build_trainer(self, ctx: StageContext, model, args):
        """`DPOTrainer` on conversational preference rows."""
        from trl import DPOTrainer

        return DPOTrainer(
            model=model,
            args=args,
            train_dataset=ctx.data["train"].remove_columns("source"),
            eval_dataset=ctx.eval_split("source"),
            processing_class=ctx.tokenizer,
            callbacks=ctx.callbacks,
        )
