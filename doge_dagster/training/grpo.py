"""GRPO: TRL `GRPOTrainer` with the recipe's verifiable rewards (accuracy via math-verify, format)."""

from __future__ import annotations

from typing import Any

from doge_dagster.training import rewards
from doge_dagster.training.runner import StageContext


def training_defaults(ctx: StageContext) -> dict[str, Any]:
    """Reward weights from the recipe; TRL logs the mean reward we chart."""
    stage = ctx.recipe.stages.grpo
    return {"reward_weights": stage.reward_weights} if stage.reward_weights else {}


def build_trainer(ctx: StageContext, model, args):
    """`GRPOTrainer` on message-list prompts; the gold `answer` column reaches the reward functions."""
    from trl import GRPOTrainer

    return GRPOTrainer(
        model=model,
        reward_funcs=[rewards.REWARDS[name] for name in ctx.recipe.stages.grpo.rewards],
        args=args,
        train_dataset=ctx.data["train"].remove_columns("source"),
        processing_class=ctx.tokenizer,
        callbacks=ctx.callbacks,
    )
