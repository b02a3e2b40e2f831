"""Scheduled retraining, the source-data sensor, the run-failure summary and the evaluation automation.

Nothing here starts multi-day training by itself: the schedule is stopped by default, the data sensor
only rebuilds data mixtures, and automation conditions exist only on the evaluation reports.
"""

import json

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from doge_dagster.plan import source_versions
from doge_dagster.recipes import OVERRIDE_TAG_PREFIX, RecipeError, RecipeFolder, content_version
from doge_dagster.registry import DATASETS
from doge_dagster.stages import Chain
from resources.artifact_store import ArtifactStoreResource

DEFAULT_RETRAIN_CRON = "0 3 * * 0"  # weekly, Sunday 03:00
DEFAULT_RETRAIN_PARTITIONS = ("tiny",)


def init_from_tag(chain: Chain) -> str:
    """The run tag that continues pretraining (the chain's root stage) from a published model."""
    return f"{OVERRIDE_TAG_PREFIX}{chain.root_stage().section}.init_from"


def retrain_requests(artifact_store: ArtifactStoreResource, partitions: list[str], chain: Chain) -> list[dg.RunRequest]:
    """One full-pipeline run per partition, continuing pretraining from its latest published base model."""
    base = chain.root_stage()
    store = artifact_store.get_store()
    requests = []
    for partition in partitions:
        latest = store.latest(base.asset, partition)
        tags = {init_from_tag(chain): f"{base.asset}:{latest.version}"} if latest else {}
        requests.append(dg.RunRequest(partition_key=partition, tags=tags))
    return requests


def build_retrain_schedule(chain: Chain, cron: str, partitions: list[str]) -> dg.ScheduleDefinition:
    """The weekly (`cron`) retraining of `partitions`, stopped by default."""

    @dg.schedule(
        job_name="full_pipeline",
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Continue pretraining each partition in DOGE_RETRAIN_PARTITIONS from its latest base model's "
        "WSD stable-phase snapshot on the current data, then rerun instruct, reason and evaluation. "
        "Cron from DOGE_RETRAIN_CRON (default weekly). Unchanged stages are cached skips.",
    )
    def retrain_schedule(context: dg.ScheduleEvaluationContext, artifact_store: ArtifactStoreResource):
        """Request the retraining runs."""
        return retrain_requests(artifact_store, partitions, chain)

    return retrain_schedule


def partition_source_versions(recipes: RecipeFolder, partition: str) -> dict[str, str] | None:
    """Each source's version for a partition, as its observable source asset reports it (None when the
    recipe is invalid or a source cannot be checked now: the next tick tries again)."""
    try:
        versions, errors = source_versions(recipes.load(partition))
    except RecipeError:
        return None
    return None if errors else versions


def build_source_data_sensor(recipes: RecipeFolder) -> dg.SensorDefinition:
    """The sensor that observes the sources of every recipe and rebuilds the mixtures of changed ones."""

    @dg.sensor(
        job_name="data",
        minimum_interval_seconds=3600,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Observes every source's data version (Hub commit or content hash) and rebuilds the data "
        "mixtures of partitions whose sources changed. Training is never started by this sensor.",
    )
    def source_data_sensor(context: dg.SensorEvaluationContext):
        """Compare each partition's source versions with the cursor; record the changed versions as
        observations of the source assets (so the UI flags mixtures built on older data) and request data runs."""
        return source_data_tick(recipes, context.cursor)

    return source_data_sensor


def source_data_tick(recipes: RecipeFolder, cursor: str | None) -> dg.SensorResult:
    """One tick of the source-data sensor from its cursor (partition -> version of its sources)."""
    previous = json.loads(cursor) if cursor else {}
    current = dict(previous)
    requests, observations = [], []
    for partition in recipes.names():
        versions = partition_source_versions(recipes, partition)
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


def build_evaluate_new_models(chain: Chain) -> dg.AutomationConditionSensorDefinition:
    """The sensor that evaluates the reports' automation conditions (stopped by default)."""
    return dg.AutomationConditionSensorDefinition(
        "evaluate_new_models",
        target=dg.AssetSelection.assets(*(report.asset for report in chain.reports)),
        default_status=dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=60,
        description=(
            "Evaluates the reports' automation conditions: a model (or the report it is compared with) that gets a "
            "new materialization is evaluated again, per partition. Targets only the three evaluation assets, so "
            "training never starts from here. Stopped by default; turn it on in the UI (Automation) or with "
            "`dagster sensor start evaluate_new_models`."
        ),
    )


def build_automation(
    recipes: RecipeFolder, retrain_cron: str = DEFAULT_RETRAIN_CRON, retrain_partitions=DEFAULT_RETRAIN_PARTITIONS
) -> tuple[list[dg.ScheduleDefinition], list[dg.SensorDefinition]]:
    """The retraining schedule and the sensors (source data, run failures, evaluation automation)."""
    schedules = [build_retrain_schedule(recipes.chain, retrain_cron, list(retrain_partitions))]
    sensors = [build_source_data_sensor(recipes), run_failure_summary, build_evaluate_new_models(recipes.chain)]
    return schedules, sensors
