"""The launch spec: everything a training process needs, written by the orchestrator as one JSON file.

Secrets never go in here: object-store credentials reach the nodes through the environment
(AWS_* variables and FSSPEC_S3_* settings), which s3fs reads by itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from doge_dagster.plan import NODES, TRAINING_ASSETS


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

    @property
    def asset(self) -> str:
        """The model asset this stage produces."""
        return TRAINING_ASSETS[self.stage]

    @property
    def parent_model(self) -> str | None:
        """The upstream model asset to start from (None for pretraining)."""
        parents = [name for name in NODES[self.asset].upstream if name in TRAINING_ASSETS.values()]
        return parents[0] if parents else None

    @property
    def mixture(self) -> str:
        """The upstream mixture asset."""
        return next(name for name in NODES[self.asset].upstream if name.endswith("_mixture"))

    def write(self, path: Path) -> Path:
        """Write the spec as JSON."""
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        return path

    @classmethod
    def read(cls, path: str | Path) -> StageSpec:
        """Read a spec written by `write`."""
        return cls(**json.loads(Path(path).read_text()))
