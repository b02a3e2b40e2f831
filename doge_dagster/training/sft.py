"""Supervised fine-tuning on conversations with TRL's `SFTTrainer`: chat template, assistant-only loss.

Serves every stage that fine-tunes on `messages` rows: SFT on chat data, and distillation on reasoning
traces kept in the assistant turns as `<think>` blocks.
"""

from __future__ import annotations

from typing import Any

from doge_dagster.trainer_contract import StageContext, StageTrainer


class SFTStageTrainer(StageTrainer):
    """`SFTTrainer` on the mixture's `messages`; sequence length from the mixture unless the recipe sets it."""

    def training_defaults(self, ctx: StageContext) -> dict[str, Any]:
        """Sequence length from the mixture unless the recipe sets it."""
        return {"max_length": ctx.mixture_recipe.max_length}

    def build_trainer(self, ctx: StageContext, model, args):
        """`SFTTrainer` on conversational rows."""
        from trl import SFTTrainer

        return SFTTrainer(
            model=model,
            args=args,
            train_dataset=ctx.data["train"].remove_columns("source"),
            eval_dataset=ctx.eval_split("source"),
            processing_class=ctx.tokenizer,
            callbacks=ctx.callbacks,
        )
