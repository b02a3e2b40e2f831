"""The code location: every asset, check, job and resource of doge-dagster.

The only module of the core package that imports Dagster; heavy ML libraries load inside asset bodies.
Environment: DOGE_ARTIFACT_ROOT sets the artifact store root (default `.doge` in the project).
"""

import os

import dagster as dg

from assets.data import DATA_ASSETS
from assets.evaluation import EVALUATION_ASSET_DEFS
from assets.training import TRAINING_ASSET_DEFS
from jobs import JOBS, SCHEDULES, SENSORS
from resources import ArtifactStoreResource, ComputeResource

defs = dg.Definitions(
    assets=[*DATA_ASSETS, *TRAINING_ASSET_DEFS, *EVALUATION_ASSET_DEFS],
    jobs=JOBS,
    schedules=SCHEDULES,
    sensors=SENSORS,
    resources={
        "artifact_store": ArtifactStoreResource(root=os.environ.get("DOGE_ARTIFACT_ROOT", ".doge")),
        "compute": ComputeResource(),
    },
)
