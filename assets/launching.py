"""Launching a stage or a report on the `compute` resource: the launch spec, its work folder, the run.

Shared by the training and the evaluation assets; the launched process publishes the artifact itself.
"""

from pathlib import Path

from assets.versioned import BuildContext, BuildOutput
from doge_dagster.launching.spec import LaunchSpec
from doge_dagster.recipes import LaunchRecipe
from resources.artifact_store import ArtifactStoreResource
from resources.compute import ComputeResource


def work_dir(store, compute: ComputeResource, asset: str, partition: str, version: str) -> Path:
    """Checkpoints of one version: beside the artifacts for a local store, else on the compute's scratch.

    Same version means same data and recipe, so a retry resumes from here and never onto other data.
    """
    if store.is_local:
        return Path(store.root) / asset / partition / ".work" / version
    return Path(compute.scratch_dir) / asset / partition / version


def launch_on_compute(
    context,
    artifact_store: ArtifactStoreResource,
    compute: ComputeResource,
    build: BuildContext,
    name: str,
    asset: str,
    launch: LaunchRecipe,
    module: str,
) -> BuildOutput:
    """Write the launch spec of stage or report `name` (producing `asset`) and run
    `python -m MODULE NAME --spec F` on the compute backend; the process publishes the artifact itself."""
    spec = LaunchSpec(
        name=name,
        asset=asset,
        partition=context.partition_key,
        version=build.planned.version,
        upstream=build.planned.upstream,
        recipe=build.recipe.model_dump(mode="json"),
        store_root=build.store.root_url,
        work_dir=str(work_dir(build.store, compute, asset, context.partition_key, build.planned.version)),
        module=module,
        extra_stages=build.recipe.chain.extra_modules,
    )
    compute.run_stage(context, spec, launch, extra_env=artifact_store.process_env())
    return BuildOutput()
