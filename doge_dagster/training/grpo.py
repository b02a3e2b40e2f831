"""GRPO: TRL `GRPOTrainer` with the recipe's verifiable rewards (accuracy via math-verify, format)."""

from __future__ import annotations

from typing import Any

from doge_dagster.trainer_contract import StageContext, StageTrainer
from doge_dagster.training import rewards


class GRPOStageTrainer(StageTrainer):
    """`GRPOTrainer` on message-list prompts; the gold `answer` column reaches the reward functions."""

    def training_defaults(self, ctx: StageContext) -> dict[str, Any]:
        """Reward weights from the recipe; TRL logs the mean reward we chart."""
        return {"reward_weights": ctx.section.reward_weights} if ctx.section.reward_weights else {}

    def build_trainer(self, ctx: StageContext, model, args):
        """`GRPOTrainer` with the reward functions the recipe names."""
        from trl import GRPOTrainer

        return GRPOTrainer(
            model=model,
            reward_funcs=[rewards.reward_function(name) for name in ctx.section.rewards],
            args=args,
            train_dataset=ctx.data["train"].remove_columns("source"),
            processing_class=ctx.tokenizer,
            callbacks=ctx.callbacks,
        )
