"""The chat stages on TRL: SFT and distillation SFT (`SFTTrainer`, chat template, assistant-only loss)
and DPO (`DPOTrainer`, sigmoid loss, implicit reference model: a frozen copy of the start model)."""

from __future__ import annotations

from typing import Any

from doge_dagster.training.runner import StageContext

TRAINERS = {"sft": "SFTTrainer", "distill": "SFTTrainer", "dpo": "DPOTrainer"}


def training_defaults(ctx: StageContext) -> dict[str, Any]:
    """Sequence length from the mixture unless the recipe sets it."""
    return {"max_length": ctx.mixture_recipe.max_length}


def build_trainer(ctx: StageContext, model, args):
    """The stage's TRL trainer on conversational columns (`messages`, or `prompt`/`chosen`/`rejected`);
    reasoning traces stay in the assistant turns as `<think>` blocks."""
    import trl

    trainer_class = getattr(trl, TRAINERS[ctx.spec.stage])
    return trainer_class(
        model=model,
        args=args,
        train_dataset=ctx.data["train"].remove_columns("source"),
        eval_dataset=ctx.eval_split("source"),
        processing_class=ctx.tokenizer,
        callbacks=ctx.callbacks,
    )
