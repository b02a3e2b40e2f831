"""Partitioned asset jobs: the full pipeline and one job per stage group."""

import dagster as dg

from assets.partitions import RECIPE_PARTITIONS
from doge_dagster.stages import CHAIN


def group_descriptions() -> dict[str, str]:
    """One job per asset group, described by what it materializes (taken from the chain's records)."""
    groups: dict[str, list[str]] = {}
    for stage in CHAIN.stages:
        groups.setdefault(stage.group, []).append(f"{stage.name} ({stage.asset})")
    return {
        "data": "The tokenizer and the mixtures of one recipe: " + ", ".join(m.asset for m in CHAIN.mixtures) + ".",
        **{group: "Training stages in order: " + " then ".join(stages) + "." for group, stages in groups.items()},
        "evaluation": "lighteval reports: "
        + ", ".join(f"{r.asset} on {CHAIN.stage(r.model_stage).asset}" for r in CHAIN.reports)
        + ".",
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
        dg.define_asset_job(
            group, selection=dg.AssetSelection.groups(group), partitions_def=RECIPE_PARTITIONS, description=text
        )
        for group, text in group_descriptions().items()
    ),
]
