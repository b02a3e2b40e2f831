"""Scheduled retraining, the source-data sensor, the run-failure summary and the evaluation automation.

Nothing here starts multi-day training by itself: the schedule is stopped by default, the data sensor
only rebuilds data mixtures, and automation conditions exist only on the evaluation reports.
"""

import json
import os

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from assets.partitions import RECIPE_PARTITIONS
from doge_dagster.plan import source_versions
from doge_dagster.recipes import OVERRIDE_TAG_PREFIX, RecipeError, content_version, load_recipe
from doge_dagster.registry import DATASETS
from doge_dagster.stages import CHAIN
from jobs.pipelines import full_pipeline
from resources.artifact_store import ArtifactStoreResource

RETRAIN_CRON = os.environ.get("DOGE_RETRAIN_CRON", "0 3 * * 0")
RETRAIN_PARTITIONS = os.environ.get("DOGE_RETRAIN_PARTITIONS", "tiny").split(",")
BASE = CHAIN.root_stage()  # pretraining: the stage that continues from its own latest model
INIT_FROM_TAG = f"{OVERRIDE_TAG_PREFIX}{BASE.section}.init_from"


def retrain_requests(artifact_store: ArtifactStoreResource, partitions: list[str]) -> list[dg.RunRequest]:
    """One full-pipeline run per partition, continuing pretraining from its latest published base model."""
    store = artifact_store.get_store()
    requests = []
    for partition in partitions:
        latest = store.latest(BASE.asset, partition)
        tags = {INIT_FROM_TAG: f"{BASE.asset}:{latest.version}"} if latest else {}
        requests.append(dg.RunRequest(partition_key=partition, tags=tags))
    return requests


@dg.schedule(
    job=full_pipeline,
    cron_schedule=RETRAIN_CRON,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Continue pretraining each partition in DOGE_RETRAIN_PARTITIONS from its latest base model's "
    "WSD stable-phase snapshot on the current data, then rerun instruct, reason and evaluation. "
    "Cron from DOGE_RETRAIN_CRON (default weekly). Unchanged stages are cached skips.",
)
def retrain_schedule(context: dg.ScheduleEvaluationContext, artifact_store: ArtifactStoreResource):
    """Request the retraining runs."""
    return retrain_requests(artifact_store, RETRAIN_PARTITIONS)


def partition_source_versions(partition: str) -> dict[str, str] | None:
    """Each source's version for a partition, as its observable source asset reports it (None when the
    recipe is invalid or a source cannot be checked now: the next tick tries again)."""
    try:
        versions, errors = source_versions(load_recipe(partition))
    except RecipeError:
        return None
    return None if errors else versions


@dg.sensor(
    job_name="data",
    minimum_interval_seconds=3600,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Observes every source's data version (Hub commit or content hash) and rebuilds the data "
    "mixtures of partitions whose sources changed. Training is never started by this sensor.",
)
def source_data_sensor(context: dg.SensorEvaluationContext):
    """Compare each partition's source versions with the cursor; record the changed versions as observations
    of the source assets (so the UI flags mixtures built on older data) and request data runs."""
    previous = json.loads(context.cursor) if context.cursor else {}
    current = dict(previous)
    requests, observations = [], []
    for partition in RECIPE_PARTITIONS.get_partition_keys():
        versions = partition_source_versions(partition)
        if versions is None:
            continue
        version = content_version(versions)
        current[partition] = version
        if previous.get(partition) == version:
            continue
        observations += [
            dg.AssetObservation(DATASETS[name].asset_name, partition=partition, tags={DATA_VERSION_TAG: fingerprint})
            for name, fingerprint in sorted(versions.items())
        ]
        if partition in previous:
            requests.append(dg.RunRequest(partition_key=partition, run_key=f"{partition}-{version}"))
    cursor = json.dumps(current, sort_keys=True)
    if not (requests or observations):
        return dg.SensorResult(skip_reason="no source changed since the last check", cursor=cursor)
    return dg.SensorResult(run_requests=requests, asset_events=observations, cursor=cursor)


def failure_summary(run: dg.DagsterRun, error: str | None, step_errors: dict[str, str] | None = None) -> dict:
    """The facts a user needs first about a failed run: which run, job and partition, and why.

    `error` is the run failure message ("Steps failed: [...]"); `step_errors` (step key -> root cause)
    says why, so the summary leads with those when there are any.
    """
    step_errors = dict(step_errors or {})
    reason = "\n".join(f"{step}: {message}" for step, message in step_errors.items()) or (error or "")
    return {
        "run_id": run.run_id,
        "job": run.job_name,
        "partition": run.tags.get("dagster/partition"),
        "overrides": {key: value for key, value in run.tags.items() if key.startswith(OVERRIDE_TAG_PREFIX)},
        "error": reason.strip()[:2000],
        "run_error": (error or "").strip()[:500],
        "failed_steps": {step: message[:2000] for step, message in step_errors.items()},
    }


def step_failure_causes(context: dg.RunFailureSensorContext) -> dict[str, str]:
    """Step key -> the innermost error message (dg.Failure description first) of each failed step."""
    causes = {}
    for event in context.get_step_failure_events():
        data = event.step_failure_data
        message = ""
        if data.user_failure_data is not None and data.user_failure_data.description:
            message = data.user_failure_data.description
        error = data.error
        while not message and error is not None:
            # Dagster wraps user errors ("Error occurred while executing op ..."); the cause says why.
            if error.cause is None:
                message = error.message.strip()  # "module.ErrorClass: text"
            error = error.cause
        causes[event.step_key or "?"] = message.strip()
    return causes


@dg.run_failure_sensor(
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Writes a one-screen summary of every failed run to the artifact store (`_failures/`) and the log.",
)
def run_failure_summary(context: dg.RunFailureSensorContext, artifact_store: ArtifactStoreResource):
    """Record which run failed, on which partition, and why."""
    error = context.failure_event.message if context.failure_event else None
    summary = failure_summary(context.dagster_run, error, step_failure_causes(context))
    store = artifact_store.get_store()
    path = f"{store.root}/_failures/{summary['run_id']}.json"
    store.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with store.fs.open(path, "w") as handle:
        handle.write(json.dumps(summary, indent=2))
    context.log.error(
        f"run {summary['run_id']} ({summary['job']}[{summary['partition']}]) failed: {summary['error'][:300]}"
    )


evaluate_new_models = dg.AutomationConditionSensorDefinition(
    "evaluate_new_models",
    target=dg.AssetSelection.assets(*(report.asset for report in CHAIN.reports)),
    default_status=dg.DefaultSensorStatus.STOPPED,
    minimum_interval_seconds=60,
    description=(
        "Evaluates the reports' automation conditions: a model (or the report it is compared with) that gets a "
        "new materialization is evaluated again, per partition. Targets only the three evaluation assets, so "
        "training never starts from here. Stopped by default; turn it on in the UI (Automation) or with "
        "`dagster sensor start evaluate_new_models`."
    ),
)
