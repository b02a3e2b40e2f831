"""Model assets: doge_base -> doge_instruct_sft -> doge_instruct -> doge_reason_distill -> doge_reason.

One factory builds all five; each launches `accelerate launch -m doge_dagster.training STAGE` on the
configured compute through Dagster Pipes. The training process publishes the model itself (manifest
last); the asset reports it from the manifest, so fresh and cached runs show the same metadata.
"""

from pathlib import Path

import dagster as dg

from assets.partitions import RECIPE_PARTITIONS
from assets.versioned import BuildContext, BuildOutput, materialize_versioned, node_code_version
from doge_dagster.plan import NODES, TRAINING_ASSETS
from doge_dagster.training.launch import LaunchError, validate_stage
from doge_dagster.training.spec import StageSpec
from resources.artifact_store import ArtifactStoreResource
from resources.compute import ComputeResource

PARTITIONS = RECIPE_PARTITIONS.get_partition_keys()
COMMON_CHECKS = ("vocab_matches_tokenizer", "loads_and_generates")
STAGE_CHECKS = {
    "pretrain": ("loss_finite_and_falling", *COMMON_CHECKS),
    "sft": ("loss_finite_and_falling", *COMMON_CHECKS, "chat_template_reply"),
    "dpo": ("loss_finite_and_falling", *COMMON_CHECKS, "chat_template_reply"),
    "distill": ("loss_finite_and_falling", *COMMON_CHECKS, "chat_template_reply"),
    "grpo": ("loss_finite", *COMMON_CHECKS, "chat_template_reply"),
}


# Assets a stage waits for without reading them: Dagster deps only, not in NODES, so versions do not
# change; a failing blocking check there stops the stage. doge_reason_distill waits for instruct_eval's
# no-regression gate (assets/evaluation.py).
GATED_BY = {"doge_reason_distill": ("instruct_eval",)}


def work_dir(store, compute: ComputeResource, asset: str, partition: str, version: str) -> Path:
    """Checkpoints of one version: beside the artifacts for a local store, else on the compute's scratch.

    Same version means same data and recipe, so a retry resumes from here and never onto other data.
    """
    if store.is_local:
        return Path(store.root) / asset / partition / ".work" / version
    return Path(compute.scratch_dir) / asset / partition / version


def launch_on_compute(context, artifact_store, compute, build: BuildContext, stage: str, launch, **spec_fields) -> BuildOutput:
    """Write the stage's launch spec and run it on the compute backend; the process publishes the artifact
    itself. Shared by training and evaluation assets (`spec_fields`: e.g. asset_name, module)."""
    name = spec_fields.get("asset_name") or TRAINING_ASSETS[stage]
    spec = StageSpec(
        stage=stage,
        partition=context.partition_key,
        version=build.planned.version,
        upstream=build.planned.upstream,
        recipe=build.recipe.model_dump(mode="json"),
        store_root=build.store.root_url,
        work_dir=str(work_dir(build.store, compute, name, context.partition_key, build.planned.version)),
        **spec_fields,
    )
    compute.run_stage(context, spec, launch, extra_env=artifact_store.process_env())
    return BuildOutput()


def build_training_asset(stage: str) -> dg.AssetsDefinition:
    """The model asset of `stage`, launched on the `compute` resource."""
    name = TRAINING_ASSETS[stage]
    node = NODES[name]

    @dg.asset(
        name=name,
        group_name=node.group,
        partitions_def=RECIPE_PARTITIONS,
        deps=[*node.upstream, *GATED_BY.get(name, ())],
        code_version=node_code_version(name, PARTITIONS),
        description=node.description,
        check_specs=[dg.AssetCheckSpec(check, asset=name, blocking=True) for check in STAGE_CHECKS[stage]],
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
                validate_stage(stage, build.recipe, vocab)
            except LaunchError as error:
                raise dg.Failure(description=str(error)) from None
            launch_recipe = build.recipe.section(f"stages.{stage}").launch
            return launch_on_compute(context, artifact_store, compute, build, stage, launch_recipe)

        return materialize_versioned(context, artifact_store, name, launch, publishes_itself=True)

    return training_asset


TRAINING_ASSET_DEFS = [build_training_asset(stage) for stage in TRAINING_ASSETS]
