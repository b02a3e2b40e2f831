"""Launching a stage or a report on the `compute` resource: the launch spec, its work folder, the run.

Shared by the training and the evaluation assets; the launched process publishes the artifact itself.
"""

from collections.abc import Mapping
from pathlib import Path

import dagster as dg

from assets.versioned import BuildContext, BuildOutput
from doge_dagster.budget import ALLOW_OVER_TIME_LIMIT_TAG, estimate_stage
from doge_dagster.launching.spec import LaunchSpec
from doge_dagster.recipe_sections import WITH_SETTINGS
from doge_dagster.recipes import LaunchRecipe
from doge_dagster.throughput import detect_local_gpu, device_key
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
    env: Mapping[str, str] | None = None,
) -> BuildOutput:
    """Write the launch spec of stage or report `name` (producing `asset`) and run
    `python -m MODULE NAME --spec F` on the compute backend; the process publishes the artifact itself.
    `env` (e.g. the trackers' MLFLOW_* variables) reaches the process environment, never the spec."""
    spec = LaunchSpec(
        name=name,
        asset=asset,
        partition=context.partition_key,
        version=build.planned.version,
        upstream=build.planned.upstream,
        recipe=build.recipe.model_dump(mode="json", context=WITH_SETTINGS),  # with launch.peak_tflops etc.
        store_root=build.store.root_url,
        work_dir=str(work_dir(build.store, compute, asset, context.partition_key, build.planned.version)),
        module=module,
        extra_stages=build.recipe.chain.extra_modules,
        manifest_metadata=build.recorded,
    )
    compute.run_stage(context, spec, launch, extra_env={**(env or {}), **artifact_store.process_env()})
    return BuildOutput()


def check_time_budget(context, build: BuildContext, compute: ComputeResource, stage: str) -> None:
    """Refuse a training launch whose estimate exceeds its `time_limit` before anything is submitted (the numbers
    and the fixes in the failure), unless the run carries `doge/allow-over-time-limit=true` (then a warning).
    Without a known rate for that device and model, or when only an upper bound exceeds the limit, there is no
    refusal, only a warning (how to get a rate; the bound against the limit)."""
    launch = build.recipe.section(build.recipe.chain.stage(stage).section).launch
    detected = detect_local_gpu() if compute.backend == "local" and launch.gpus_per_node > 0 else None
    if detected and launch.device and device_key(detected) != device_key(launch.device):
        context.log.warning(f"stages.{stage}.launch.device is {launch.device}, but this machine's GPU is {detected}: "
                            "the estimate uses the GPU found here")  # fmt: skip
    estimate = estimate_stage(build.recipe, stage, build.store, context.partition_key, detected)
    problem = estimate.over_limit_problem()
    if problem is None:
        quiet = estimate.rate is not None and estimate.verdict != "may not fit"
        (context.log.info if quiet else context.log.warning)(estimate.summary())
        return
    allowed = str(context.run.tags.get(ALLOW_OVER_TIME_LIMIT_TAG, "")).strip().lower() == "true"
    if not allowed:
        raise dg.Failure(description=problem)
    context.log.warning(f"launching over the time limit ({ALLOW_OVER_TIME_LIMIT_TAG}=true): {problem}")
