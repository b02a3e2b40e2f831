"""Scheduled retraining, the source-data sensor, the run-failure summary and the evaluation automation.

Nothing here starts multi-day training by itself: the schedule is stopped by default (and when on, launches
nothing unless a source or recipe changed), the data sensor only rebuilds data mixtures, and automation
conditions exist only on the evaluation reports.
"""

import json

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from doge_dagster.artifacts import ArtifactStore
from doge_dagster.data.sources import SourceError
from doge_dagster.gates import ALLOW_FAILED_GATES_TAG, failed_gates
from doge_dagster.plan import RELEASE_GROUP, ancestry, chain_nodes, plan_versions, source_versions
from doge_dagster.recipes import (
    OVERRIDE_TAG_PREFIX,
    RecipeError,
    RecipeFolder,
    apply_overrides,
    content_version,
    overrides_from_tags,
)
from doge_dagster.registry import DATASETS
from doge_dagster.stages import Chain
from resources.artifact_store import ArtifactStoreResource

DEFAULT_RETRAIN_CRON = "0 3 * * 0"  # weekly, Sunday 03:00
DEFAULT_RETRAIN_PARTITIONS = ("tiny",)


def init_from_tag(chain: Chain) -> str:
    """The run tag that continues pretraining (the chain's root stage) from a published model."""
    return f"{OVERRIDE_TAG_PREFIX}{chain.root_stage().section}.init_from"


def retrain_request(store: ArtifactStore, recipes: RecipeFolder, partition: str) -> dg.RunRequest | str:
    """The retraining run of one partition, or why there is nothing to run (a sentence for the tick's log).

    Pretraining continues from the newest base model whose gates passed (through its whole recorded lineage),
    and only when something it depends on changed: when the recipe and the sources are those that produced
    that base, its version is planned again (same `init_from`), so the run would be cached skips at best. Then
    the tick requests a run only if some downstream artifact is missing (a changed instruct or reason section),
    and otherwise nothing.
    """
    try:
        recipe = recipes.load(partition)
        base = recipe.chain.root_stage().asset
        passing = [
            manifest
            for manifest in reversed(store.manifests(base, partition))
            if not failed_gates(store, partition, {base: manifest})
        ]
        tags = {}
        if passing:
            newest = passing[0]
            continued = newest.upstream.get(base)  # the base it continued from, if it was a continuation
            same_tags = {init_from_tag(recipe.chain): f"{base}:{continued}"} if continued else {}
            unchanged = plan_versions(apply_overrides(recipe, overrides_from_tags(same_tags)), nodes=[base])
            if unchanged[base].version == newest.version:
                tags = same_tags
            else:
                tags = {init_from_tag(recipe.chain): f"{base}:{newest.version}"}
        # Releases are not retraining: a missing release never starts a run (they run from the `release` job).
        trained = [name for name, node in chain_nodes(recipe.chain).items() if node.group != RELEASE_GROUP]
        planned = plan_versions(apply_overrides(recipe, overrides_from_tags(tags)), nodes=trained)
    except (RecipeError, SourceError) as error:
        return f"{partition}: cannot plan the retraining now ({error})"
    manifests = {node: store.read_manifest(node, partition, info.version) for node, info in planned.items()}
    missing = [node for node, manifest in manifests.items() if manifest is None]
    if not missing:
        return (
            f"{partition}: nothing changed since the newest {base} with passing gates (version "
            f"{planned[base].version}): no source or recipe section differs and every artifact is published"
        )
    graph = chain_nodes(recipe.chain)
    blocked = sorted(
        {
            node
            for node, manifest in manifests.items()
            if manifest is not None
            and failed_gates(store, partition, {node: manifest})
            and any(node in ancestry(target, graph) for target in missing)
        }
    )
    if blocked:
        return (
            f"{partition}: {', '.join(blocked)} (current versions) failed blocking checks, so building "
            f"{', '.join(missing)} on them would be refused; fix the recipe or run with {ALLOW_FAILED_GATES_TAG}=true"
        )
    return dg.RunRequest(partition_key=partition, tags=tags)


def retrain_requests(
    artifact_store: ArtifactStoreResource, recipes: RecipeFolder, partitions: list[str]
) -> tuple[list[dg.RunRequest], list[str]]:
    """The retraining runs of `partitions` (see `retrain_request`) and why the others have none."""
    store = artifact_store.get_store()
    requests, skipped = [], []
    for partition in partitions:
        outcome = retrain_request(store, recipes, partition)
        (requests if isinstance(outcome, dg.RunRequest) else skipped).append(outcome)
    return requests, skipped


def build_retrain_schedule(recipes: RecipeFolder, cron: str, partitions: list[str]) -> dg.ScheduleDefinition:
    """The weekly (`cron`) retraining of `partitions`, stopped by default."""

    @dg.schedule(
        job_name="full_pipeline",
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="For each partition in DOGE_RETRAIN_PARTITIONS: when a source or a recipe section changed, "
        "continue pretraining from the newest base model whose gates passed (from its WSD stable-phase snapshot) "
        "on the current data, then rerun instruct, reason and evaluation; unchanged stages are cached skips. When "
        "nothing changed, the tick launches nothing and says so. Cron from DOGE_RETRAIN_CRON (default weekly).",
    )
    def retrain_schedule(context: dg.ScheduleEvaluationContext, artifact_store: ArtifactStoreResource):
        """Request the retraining runs; log why a partition has none."""
        requests, skipped = retrain_requests(artifact_store, recipes, partitions)
        for reason in skipped:
            context.log.info(reason)
        return requests or dg.SkipReason("; ".join(skipped))

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
    schedules = [build_retrain_schedule(recipes, retrain_cron, list(retrain_partitions))]
    sensors = [build_source_data_sensor(recipes), run_failure_summary, build_evaluate_new_models(recipes.chain)]
    return schedules, sensors
