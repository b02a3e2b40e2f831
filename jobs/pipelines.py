"""Partitioned asset jobs: the full pipeline and one job per stage group."""

import dagster as dg

from assets.partitions import recipe_partitions
from doge_dagster.recipes import RecipeFolder
from doge_dagster.stages import Chain


def group_descriptions(chain: Chain) -> dict[str, str]:
    """One job per asset group, described by what it materializes (taken from the chain's records)."""
    groups: dict[str, list[str]] = {}
    for stage in chain.stages:
        groups.setdefault(stage.group, []).append(f"{stage.name} ({stage.asset})")
    return {
        "data": "The tokenizer and the mixtures of one recipe: " + ", ".join(m.asset for m in chain.mixtures) + ".",
        **{group: "Training stages in order: " + " then ".join(stages) + "." for group, stages in groups.items()},
        "evaluation": "lighteval reports: "
        + ", ".join(f"{r.asset} on {chain.stage(r.model_stage).asset}" for r in chain.reports)
        + ".",
    }


def build_jobs(recipes: RecipeFolder) -> list:
    """`full_pipeline` and one job per asset group, partitioned by recipe."""
    partitions = recipe_partitions(recipes)
    full_pipeline = dg.define_asset_job(
        "full_pipeline",
        selection=dg.AssetSelection.all() - dg.AssetSelection.groups("sources"),
        partitions_def=partitions,
        description="Every asset of a recipe partition, from the tokenizer to the evaluation reports. "
        "Stages whose version did not change are reported cached.",
    )
    groups = [
        dg.define_asset_job(group, selection=dg.AssetSelection.groups(group), partitions_def=partitions, description=text)
        for group, text in group_descriptions(recipes.chain).items()
    ]
    return [full_pipeline, *groups]
