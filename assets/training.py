"""Model assets, one per stage of the chain (doge_base -> doge_instruct_sft -> doge_instruct ->
doge_reason_distill -> doge_reason in the shipped chain).

One factory builds them all from the stage records; each launches `accelerate launch -m
doge_dagster.training STAGE` on the configured compute through Dagster Pipes. The training process
publishes the model itself (manifest last); the asset reports it from the manifest, so fresh and cached
runs show the same metadata.
"""

import os

import dagster as dg

from assets.launching import check_time_budget, launch_on_compute
from assets.versioned import BuildContext, BuildOutput, materialize_versioned, node_asset_arguments
from doge_dagster.launching.command import LaunchError
from doge_dagster.plan import chain_nodes
from doge_dagster.recipes import RecipeFolder
from doge_dagster.stages import Stage
from doge_dagster.training.tracking import tracking_env
from doge_dagster.training.validation import validate_stage
from resources.artifact_store import ArtifactStoreResource
from resources.compute import ComputeResource


def build_training_asset(stage: Stage, recipes: RecipeFolder) -> dg.AssetsDefinition:
    """The model asset of `stage`, launched on the `compute` resource.

    The reports in `stage.gated_by` are Dagster deps only (not in the plan, so versions do not change):
    a failing blocking check there stops the stage in the same run, and a published report with a failed
    gate refuses it in any later run.
    """
    node = chain_nodes(recipes.chain)[stage.asset]
    gates = [recipes.chain.report(name).asset for name in stage.gated_by]

    @dg.asset(
        **node_asset_arguments(stage.asset, recipes, stage.checks, deps=[*node.upstream, *gates]),
        pool="gpu",
        kinds={"pytorch"},
        op_tags={"dagster/priority": "1"},  # the chain's critical path: before reports and other mixtures
    )
    def training_asset(
        context: dg.AssetExecutionContext, artifact_store: ArtifactStoreResource, compute: ComputeResource
    ) -> dg.MaterializeResult:
        """Train this stage with `accelerate launch` on the configured compute and publish the model."""

        def launch(build: BuildContext) -> BuildOutput:
            vocab = build.upstream_manifests["tokenizer"].metadata.get("vocab_size")
            try:
                validate_stage(stage.name, build.recipe, vocab, env={**os.environ, **compute.env})
            except LaunchError as error:
                raise dg.Failure(description=str(error)) from None
            check_time_budget(context, build, compute, stage.name)
            section = build.recipe.section(stage.section)
            return launch_on_compute(
                context, artifact_store, compute, build, stage.name, stage.asset, section.launch,
                "doge_dagster.training", env=tracking_env(section.training.get("report_to")),
            )  # fmt: skip

        result = materialize_versioned(
            context, artifact_store, stage.asset, launch, recipes, publishes_itself=True, gated_by=tuple(gates)
        )
        return with_tensorboard_path(result)

    return training_asset


def with_tensorboard_path(result: dg.MaterializeResult) -> dg.MaterializeResult:
    """The model's TensorBoard event files (`report_to: tensorboard`) named by their full path:
    `tensorboard --logdir <tensorboard_logdir>`."""
    metadata = dict(result.metadata or {})
    folder, artifact = metadata.get("tensorboard_dir"), metadata.get("artifact_uri")
    if not isinstance(folder, str) or not isinstance(artifact, str):
        return result
    metadata["tensorboard_logdir"] = dg.MetadataValue.path(f"{artifact.rstrip('/')}/{folder}")
    return result._replace(metadata=metadata)


def build_training_assets(recipes: RecipeFolder) -> list[dg.AssetsDefinition]:
    """One model asset per stage of the recipes' chain."""
    return [build_training_asset(stage, recipes) for stage in recipes.chain.stages]
