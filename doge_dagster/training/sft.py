"""Supervised fine-tuning and distillation SFT: TRL `SFTTrainer`, chat template, assistant-only loss."""

from __future__ import annotations

from typing import Any

from doge_dagster.training.runner import StageContext


def training_defaults(ctx: StageContext) -> dict[str, Any]:
    """Sequence length from the mixture unless the recipe sets it."""
    return {"max_length": ctx.mixture_recipe.max_length}


def build_trainer(ctx: StageContext, model, args):
    """`SFTTrainer` on `messages`; reasoning traces stay in the assistant turns as `<think>` blocks."""
    from trl import SFTTrainer

    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=ctx.data["train"].remove_columns("source"),
        eval_dataset=ctx.eval_split("source"),
        processing_class=ctx.tokenizer,
        callbacks=ctx.callbacks,
    )
