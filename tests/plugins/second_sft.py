"""An extra training stage declared outside the project, as a user adds one: a record plus its trainer.

`DOGE_EXTRA_STAGES=plugins.second_sft` (with `tests/` on PYTHONPATH) adds it to every process of a run.
It is a second, gentler SFT pass of the SFT model on the SFT mixture: it reuses an existing mixture kind,
so this record and the trainer class below are all it takes.
"""

from __future__ import annotations

from typing import Any

from doge_dagster.stages import Stage
from doge_dagster.trainer_contract import StageContext
from doge_dagster.training.chat import SFTStageTrainer

SECOND_PASS_LEARNING_RATE = 2.0e-4


class SecondPassTrainer(SFTStageTrainer):
    """SFT again, at a lower learning rate unless the recipe sets one."""

    def training_defaults(self, ctx: StageContext) -> dict[str, Any]:
        """The SFT defaults and a lower learning rate."""
        return {**super().training_defaults(ctx), "learning_rate": SECOND_PASS_LEARNING_RATE}


STAGES = [
    Stage(
        "sft_again", "doge_instruct_sft_again", "instruct", mixture="sft", parent="sft",
        trainer="plugins.second_sft:SecondPassTrainer", config_class="trl:SFTConfig", code_version="sft-again-1",
        optional=True, description="A second SFT pass of the SFT model on the SFT mixture, at a lower learning rate.",
    )
]  # fmt: skip
