"""The code location: every asset, check, job and resource of doge-dagster.

The only module of the core package that imports Dagster; heavy ML libraries load inside asset bodies.
Environment: DOGE_ARTIFACT_ROOT sets the artifact store root (default `.doge` in the project); for an
S3 root, DOGE_S3_ENDPOINT_URL and DOGE_S3_REGION set the endpoint, and DOGE_S3_ACCESS_KEY_ID /
DOGE_S3_SECRET_ACCESS_KEY the credentials (read at run time through `dg.EnvVar`, never stored).
DOGE_COMPUTE_BACKEND picks where training runs (local, slurm, kubernetes); see README "Compute".
"""

import os

import dagster as dg

from assets.data import DATA_ASSETS
from assets.evaluation import EVALUATION_ASSET_DEFS
from assets.training import TRAINING_ASSET_DEFS
from jobs import JOBS, SCHEDULES, SENSORS
from resources import ArtifactStoreResource, ComputeResource
from resources.compute import KubernetesSettings, SlurmSettings


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


defs = dg.Definitions(
    assets=[*DATA_ASSETS, *TRAINING_ASSET_DEFS, *EVALUATION_ASSET_DEFS],
    jobs=JOBS,
    schedules=SCHEDULES,
    sensors=SENSORS,
    resources={
        "artifact_store": artifact_store_from_env(),
        "compute": compute_from_env(),
    },
)
