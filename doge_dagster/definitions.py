"""The code location: every asset, check, job and resource of doge-dagster.

The only module of the core package that imports Dagster; heavy ML libraries load inside asset bodies.
Environment: DOGE_ARTIFACT_ROOT sets the artifact store root (default `.doge` in the project); for an
S3 root, DOGE_S3_ENDPOINT_URL and DOGE_S3_REGION set the endpoint, and DOGE_S3_ACCESS_KEY_ID /
DOGE_S3_SECRET_ACCESS_KEY the credentials (read at run time through `dg.EnvVar`, never stored).
DOGE_COMPUTE_BACKEND picks where training runs (local, slurm, kubernetes); see README "Compute".
DOGE_MAX_CONCURRENT_STEPS sets how many steps of a run execute at once (see `executor_from_env`).
DOGE_RECIPES_DIR is the recipes folder (one partition per recipe), DOGE_EXTRA_STAGES adds stages of your own
(`doge_dagster.stages`), DOGE_RETRAIN_CRON / DOGE_RETRAIN_PARTITIONS configure the retraining schedule,
DOGE_RELEASE_IN_FULL_PIPELINE=true adds the releases to `full_pipeline` (and so to the retraining schedule).
`build_definitions` builds the same for any recipes folder and chain.
"""

import os
from pathlib import Path

import dagster as dg

from assets.data import build_data_assets
from assets.evaluation import build_evaluation_assets
from assets.release import build_release_assets
from assets.training import build_training_assets
from doge_dagster.recipes import RECIPES_DIR, RecipeFolder
from doge_dagster.stages import CHAIN, Chain
from jobs import build_automation, build_jobs
from jobs.automation import DEFAULT_RETRAIN_CRON, DEFAULT_RETRAIN_PARTITIONS
from resources import ArtifactStoreResource, ComputeResource
from resources.kubernetes import KubernetesSettings
from resources.slurm import SlurmSettings


def artifact_store_from_env() -> ArtifactStoreResource:
    """The artifact store configured by the DOGE_* environment variables."""
    secrets = {
        field: dg.EnvVar(name)
        for field, name in (
            ("access_key_id", "DOGE_S3_ACCESS_KEY_ID"),
            ("secret_access_key", "DOGE_S3_SECRET_ACCESS_KEY"),
        )
        if name in os.environ
    }
    return ArtifactStoreResource(
        root=os.environ.get("DOGE_ARTIFACT_ROOT", ".doge"),
        endpoint_url=os.environ.get("DOGE_S3_ENDPOINT_URL"),
        region=os.environ.get("DOGE_S3_REGION"),
        **secrets,
    )


def compute_from_env() -> ComputeResource:
    """The compute backend chosen by DOGE_COMPUTE_BACKEND (local, slurm, kubernetes) and its DOGE_* settings."""
    env = os.environ
    slurm = {
        key: env[name]
        for key, name in (
            ("shared_dir", "DOGE_SLURM_SHARED_DIR"),
            ("partition", "DOGE_SLURM_PARTITION"),
            ("account", "DOGE_SLURM_ACCOUNT"),
        )
        if name in env
    }
    kubernetes = {
        key: env[name]
        for key, name in (
            ("namespace", "DOGE_K8S_NAMESPACE"),
            ("image", "DOGE_K8S_IMAGE"),
            ("service_account", "DOGE_K8S_SERVICE_ACCOUNT"),
        )
        if name in env
    }
    if env.get("DOGE_K8S_ENV_FROM_SECRETS"):  # e.g. the Secret holding the S3 keys: pods get them by reference
        kubernetes["env_from_secrets"] = [
            name.strip() for name in env["DOGE_K8S_ENV_FROM_SECRETS"].split(",") if name.strip()
        ]
    return ComputeResource(
        backend=env.get("DOGE_COMPUTE_BACKEND", "local"),
        scratch_dir=env.get("DOGE_SCRATCH_DIR", "/tmp/doge-work"),
        slurm=SlurmSettings(**slurm),
        kubernetes=KubernetesSettings(**kubernetes),
    )


def executor_from_env() -> dg.ExecutorDefinition:
    """How a run executes its steps: one at a time in the run's own process on the local backend, in
    parallel processes (Dagster's multiprocess executor) when stages run on a cluster.

    On the local backend every launched stage trains or evaluates on this machine's CPUs or GPUs, so two at
    once compete for them: on a 2-core machine SFT beside an evaluation ran 2.3x slower, and the graph
    took longer than running every step in turn. Running in the run's process also saves starting a Python
    process per step (about 2.5 s each there). DOGE_MAX_CONCURRENT_STEPS=N (N > 1) runs up to N steps at
    once in separate processes, for a machine with room for several stages (e.g. one GPU each).
    """
    raw = os.environ.get("DOGE_MAX_CONCURRENT_STEPS", "")
    if raw and not (raw.isdigit() and int(raw) > 0):
        raise ValueError(f"DOGE_MAX_CONCURRENT_STEPS={raw!r}: set a whole number of steps, at least 1, or unset it")
    steps = int(raw) if raw else (1 if os.environ.get("DOGE_COMPUTE_BACKEND", "local") == "local" else None)
    if steps == 1:
        return dg.in_process_executor
    return dg.multiprocess_executor.configured({"max_concurrent": steps}) if steps else dg.multiprocess_executor


def release_in_full_pipeline_from_env() -> bool:
    """Whether DOGE_RELEASE_IN_FULL_PIPELINE turns releasing on in `full_pipeline` (true/false, default false)."""
    raw = os.environ.get("DOGE_RELEASE_IN_FULL_PIPELINE", "").strip().lower()
    if raw not in ("", "true", "false", "1", "0"):
        raise ValueError(f"DOGE_RELEASE_IN_FULL_PIPELINE={raw!r}: set true or false, or unset it")
    return raw in ("true", "1")


def build_definitions(
    recipes_dir: Path | str = RECIPES_DIR,
    chain: Chain = CHAIN,
    artifact_store: ArtifactStoreResource | None = None,
    compute: ComputeResource | None = None,
    executor: dg.ExecutorDefinition | None = None,
    retrain_cron: str = DEFAULT_RETRAIN_CRON,
    retrain_partitions: tuple[str, ...] | list[str] = DEFAULT_RETRAIN_PARTITIONS,
    release_in_full_pipeline: bool = False,
) -> dg.Definitions:
    """The code location for one recipes folder (a partition per recipe) and one chain of stages.

    Every asset, job, schedule and sensor is built from the chain's records and the folder's recipes; the
    resources default to the environment's (DOGE_* variables), so a test or a script can build the definitions
    of any recipes folder in its own process. The module-level `defs` is this with the environment's settings.
    Releases run from the `release` job, or in `full_pipeline` too with `release_in_full_pipeline`.
    """
    recipes = RecipeFolder(Path(recipes_dir), chain)
    schedules, sensors = build_automation(recipes, retrain_cron, retrain_partitions)
    return dg.Definitions(
        assets=[
            *build_data_assets(recipes),
            *build_training_assets(recipes),
            *build_evaluation_assets(recipes),
            *build_release_assets(recipes),
        ],
        jobs=build_jobs(recipes, release_in_full_pipeline),
        schedules=schedules,
        sensors=sensors,
        executor=executor or executor_from_env(),
        resources={
            "artifact_store": artifact_store or artifact_store_from_env(),
            "compute": compute or compute_from_env(),
        },
    )


defs = build_definitions(
    retrain_cron=os.environ.get("DOGE_RETRAIN_CRON", DEFAULT_RETRAIN_CRON),
    retrain_partitions=os.environ.get("DOGE_RETRAIN_PARTITIONS", ",".join(DEFAULT_RETRAIN_PARTITIONS)).split(","),
    release_in_full_pipeline=release_in_full_pipeline_from_env(),
)
