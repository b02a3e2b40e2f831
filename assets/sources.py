"""Observable source assets, one per seed dataset, whose data version is the Hub commit or a content hash."""

import warnings

import dagster as dg

from assets.partitions import recipe_partitions
from doge_dagster.plan import source_versions
from doge_dagster.recipes import RecipeError, RecipeFolder
from doge_dagster.registry import DATASETS, DatasetSpec


def build_source_asset(spec: DatasetSpec, recipes: RecipeFolder) -> dg.SourceAsset:
    """An observable source asset for `spec`, versioned per recipe partition."""

    @dg.observable_source_asset(
        name=spec.asset_name,
        group_name="sources",
        partitions_def=recipe_partitions(recipes),
        description=f"{spec.description} Hub: {spec.hub_id} ({spec.config or 'default'}, {spec.split}). "
        "Each recipe reads it from the Hub, a local folder or generated data; observing records its version.",
        metadata={"hub_id": spec.hub_id, "config": spec.config or "default", "kind": spec.kind},
    )
    def observe(context: dg.AssetExecutionContext) -> dg.DataVersionsByPartition:
        versions = {}
        for partition in recipes.names():
            try:
                found, errors = source_versions(recipes.load(partition), {spec.name})
            except RecipeError as error:  # one invalid recipe must not hide the other partitions' versions
                context.log.warning(f"{spec.name}[{partition}]: {error}")
                continue
            if spec.name in errors:
                context.log.warning(f"{spec.name}[{partition}]: {errors[spec.name]}")
            if spec.name in found:
                versions[partition] = found[spec.name]
        return dg.DataVersionsByPartition(versions)

    return observe


def build_source_assets(recipes: RecipeFolder) -> list[dg.SourceAsset]:
    """One observable source asset per seed dataset."""
    with warnings.catch_warnings():
        # observable_source_asset is beta in Dagster 1.13; the API we use is the documented one.
        warnings.simplefilter("ignore", dg.BetaWarning)
        return [build_source_asset(spec, recipes) for spec in DATASETS.values()]
