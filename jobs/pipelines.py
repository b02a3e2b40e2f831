"""Partitioned asset jobs: the full pipeline and one job per asset group (data, stage groups, evaluation, release).

Releases are left out of `full_pipeline` (and so of the retraining schedule, which runs it) unless the code
location is built with `release_in_full_pipeline` (DOGE_RELEASE_IN_FULL_PIPELINE=true): releasing is a user's
decision, made by running the `release` job or materializing a release asset.
"""

import dagster as dg

from assets.partitions import recipe_partitions
from doge_dagster.plan import RELEASE_GROUP
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
        **(
            {
                RELEASE_GROUP: "Releases (a dry run without `releases.<name>.repo_id`, a push with one; disabled ones "
                "skip), each once every gate up its chain passed: "
                + ", ".join(f"{r.asset} of {chain.stage(r.model_stage).asset}" for r in chain.releases)
                + "."
            }
            if chain.releases
            else {}
        ),
    }


def build_jobs(recipes: RecipeFolder, release_in_full_pipeline: bool = False) -> list:
    """`full_pipeline` and one job per asset group, partitioned by recipe; `full_pipeline` releases only with
    `release_in_full_pipeline`."""
    partitions = recipe_partitions(recipes)
    selection = dg.AssetSelection.all() - dg.AssetSelection.groups("sources")
    if not release_in_full_pipeline:
        selection = selection - dg.AssetSelection.groups(RELEASE_GROUP)
    full_pipeline = dg.define_asset_job(
        "full_pipeline",
        selection=selection,
        partitions_def=partitions,
        description="Every asset of a recipe partition, from the tokenizer to the evaluation reports"
        + (" and the releases" if release_in_full_pipeline else " (releases: the `release` job)")
        + ". Stages whose version did not change are reported cached.",
    )
    groups = [
        dg.define_asset_job(
            group, selection=dg.AssetSelection.groups(group), partitions_def=partitions, description=text
        )
        for group, text in group_descriptions(recipes.chain).items()
    ]
    return [full_pipeline, *groups]
