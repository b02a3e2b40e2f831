"""The chat stages on TRL: supervised fine-tuning (`SFTTrainer`: chat template, assistant-only loss) and
preference tuning (`DPOTrainer`: sigmoid loss, implicit reference model, a frozen copy of the start model).

Both train on the mixture's conversational columns (`messages`, or `prompt` / `chosen` / `rejected`) with the
sequence length of the mixture unless the recipe sets one; reasoning traces stay in the assistant turns as
`<think>` blocks, so distillation is SFT on the reasoning mixture.
"""

from __future__ import annotations

from typing import Any, ClassVar

from doge_dagster.trainer_contract import StageContext, StageTrainer


class ChatStageTrainer(StageTrainer):
    """A TRL trainer (`trl_trainer`, a class name of `trl`) on the mixture's conversational rows."""

    trl_trainer: ClassVar[str]

    def training_defaults(self, ctx: StageContext) -> dict[str, Any]:
        """Sequence length from the mixture unless the recipe sets it."""
        return {"max_length": ctx.mixture_recipe.max_length}

    def build_trainer(self, ctx: StageContext, model, args):
        """The TRL trainer on the train split, evaluated on a bounded slice of the test split."""
        import trl

        return getattr(trl, self.trl_trainer)(
            model=model,
            args=args,
            train_dataset=ctx.data["train"].remove_columns("source"),
            eval_dataset=ctx.eval_split("source"),
            processing_class=ctx.tokenizer,
            callbacks=ctx.callbacks,
        )


class SFTStageTrainer(ChatStageTrainer):
    """`SFTTrainer`: chat template, assistant-only loss (SFT and distillation)."""

    trl_trainer = "SFTTrainer"


class DPOStageTrainer(ChatStageTrainer):
    """`DPOTrainer`: sigmoid loss, implicit reference model."""

    trl_trainer = "DPOTrainer"
