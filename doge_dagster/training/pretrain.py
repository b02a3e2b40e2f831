"""Pretraining: `DogeForCausalLM` from the recipe (or a checkpoint), HF `Trainer`, WSD schedule."""

from __future__ import annotations

from typing import Any

from doge_dagster.training.runner import StageContext


def build_model(ctx: StageContext):
    """A fresh Doge from the recipe's architecture, or the `init_from` checkpoint for continued pretraining."""
    from transformers import AutoModelForCausalLM, DogeConfig, DogeForCausalLM

    init_from = ctx.recipe.stages.pretrain.init_from
    if init_from:
        ctx.reporter.info(f"continued pretraining from {init_from}")
        return AutoModelForCausalLM.from_pretrained(ctx.resolve_model(init_from))
    fields = ctx.recipe.model.model_dump()
    fields["vocab_size"] = len(ctx.tokenizer) if fields["vocab_size"] == "tokenizer" else fields["vocab_size"]
    return DogeForCausalLM(DogeConfig(**fields, router_aux_loss_coef=0.0))


def training_defaults(ctx: StageContext) -> dict[str, Any]:
    """Nothing beyond the recipe: the seed's pretraining arguments are complete."""
    return {}


def training_forced(ctx: StageContext) -> dict[str, Any]:
    """Continued pretraining re-enters the WSD stable phase at the stable LR: no second warmup."""
    return {"warmup_steps": 0} if ctx.recipe.stages.pretrain.init_from else {}


def build_trainer(ctx: StageContext, model, args):
    """HF `Trainer` on packed rows; the collator masks pad (never EOS, which differs) from the loss."""
    from transformers import DataCollatorForLanguageModeling, Trainer

    return Trainer(
        model=model,
        args=args,
        train_dataset=ctx.data["train"],
        eval_dataset=ctx.eval_split(),
        data_collator=DataCollatorForLanguageModeling(ctx.tokenizer, mlm=False),
        processing_class=ctx.tokenizer,
        callbacks=ctx.callbacks,
    )
