"""Partitioned asset jobs: the full pipeline and one job per stage group."""

import dagster as dg

from assets.partitions import RECIPE_PARTITIONS

GROUP_JOBS = {
    "data": "Tokenizer and the five data mixtures of one recipe.",
    "pretrain": "Pretraining: doge_base.",
    "instruct": "Instruction tuning: SFT then DPO (doge_instruct_sft, doge_instruct).",
    "reason": "Reasoning tuning: distillation SFT then GRPO (doge_reason_distill, doge_reason).",
    "evaluation": "lighteval reports of the base, instruct and reason models.",
}

full_pipeline = dg.define_asset_job(
    "full_pipeline",
    selection=dg.AssetSelection.all() - dg.AssetSelection.groups("sources"),
    partitions_def=RECIPE_PARTITIONS,
    description="Every asset of a recipe partition, from the tokenizer to the evaluation reports. "
    "Stages whose version did not change are reported cached.",
)

JOBS = [
    full_pipeline,
    *(
        dg.define_asset_job(group, selection=dg.AssetSelection.groups(group), partitions_def=RECIPE_PARTITIONS, description=text)
        for group, text in GROUP_JOBS.items()
    ),
]
