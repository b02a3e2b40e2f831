"""The launch spec: everything a training process needs, written by the orchestrator as one JSON file.

Secrets never go in here: object-store credentials reach the nodes through the environment
(AWS_* variables and FSSPEC_S3_* settings), which s3fs reads by itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from doge_dagster.plan import NODES, TRAINING_ASSETS

# `--spec env:NAME` reads the spec JSON from the environment variable NAME instead of a file: for
# backends without a filesystem shared with the Dagster host (Kubernetes pods get DOGE_SPEC_JSON).
SPEC_ENV_PREFIX = "env:"
SPEC_ENV_VAR = "DOGE_SPEC_JSON"


@dataclass(frozen=True)
class StageSpec:
    """One stage launch: which artifact to produce, from which upstream versions, with which recipe."""

    stage: str
    partition: str
    version: str
    upstream: dict[str, str]
    recipe: dict[str, Any]
    store_root: str
    work_dir: str
    env: dict[str, str] = field(default_factory=dict)
    # Launches other than training (evaluation): the asset produced and the entrypoint package run as
    # `python -m MODULE STAGE --spec F`. Training specs leave both at their defaults.
    asset_name: str | None = None
    module: str = "doge_dagster.training"

    @property
    def asset(self) -> str:
        """The asset this launch produces (the stage's model for training)."""
        return self.asset_name or TRAINING_ASSETS[self.stage]

    @property
    def parent_model(self) -> str | None:
        """The upstream model asset to start from (None for pretraining)."""
        parents = [name for name in NODES[self.asset].upstream if name in TRAINING_ASSETS.values()]
        return parents[0] if parents else None

    @property
    def mixture(self) -> str:
        """The upstream mixture asset."""
        return next(name for name in NODES[self.asset].upstream if name.endswith("_mixture"))

    def to_json(self) -> str:
        """The spec as JSON text (what `write` writes)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def write(self, path: Path) -> Path:
        """Write the spec as JSON."""
        path.write_text(self.to_json())
        return path

    @classmethod
    def read(cls, path: str | Path) -> StageSpec:
        """Read a spec written by `write`, or from an environment variable given as `env:NAME`."""
        location = str(path)
        if location.startswith(SPEC_ENV_PREFIX):
            name = location.removeprefix(SPEC_ENV_PREFIX)
            if name not in os.environ:
                raise FileNotFoundError(f"--spec {location}: environment variable {name} is not set")
            return cls(**json.loads(os.environ[name]))
        return cls(**json.loads(Path(path).read_text()))
