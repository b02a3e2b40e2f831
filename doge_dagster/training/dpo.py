"""DPO: TRL `DPOTrainer`, sigmoid loss, implicit reference model (a frozen copy of the start model)."""

from __future__ import annotations

from typing import Any

from doge_dagster.training.runner import StageContext


def training_defaults(ctx: StageContext) -> dict[str, Any]:
    """Sequence length from the mixture unless the recipe sets it."""
    return {"max_length": ctx.mixture_recipe.max_length}


def build_trainer(ctx: StageContext, model, args):
    """`DPOTrainer` on conversational prompt / chosen / rejected columns."""
    from trl import DPOTrainer

    return DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=ctx.data["train"].remove_columns("source"),
        eval_dataset=ctx.eval_split("source"),
        processing_class=ctx.tokenizer,
        callbacks=ctx.callbacks,
    )
