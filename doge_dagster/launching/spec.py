"""The launch spec: everything a launched process needs, written by the orchestrator as one JSON file.

Secrets never go in here: object-store credentials reach the nodes through the environment
(AWS_* variables and FSSPEC_S3_* settings), which s3fs reads by itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# `--spec env:NAME` reads the spec JSON from the environment variable NAME instead of a file: for
# backends without a filesystem shared with the Dagster host (Kubernetes pods get DOGE_SPEC_JSON).
SPEC_ENV_PREFIX = "env:"
SPEC_ENV_VAR = "DOGE_SPEC_JSON"


@dataclass(frozen=True)
class LaunchSpec:
    """One launch: `python -m MODULE NAME --spec F` produces `asset` from the upstream versions named.

    `name` is the stage (training) or the report (evaluation) the entry point runs.
    """

    name: str
    asset: str
    partition: str
    version: str
    upstream: dict[str, str]
    recipe: dict[str, Any]
    store_root: str
    work_dir: str
    module: str = "doge_dagster.training"
    env: dict[str, str] = field(default_factory=dict)
    # Modules of extra stages the recipe's chain was built with (DOGE_EXTRA_STAGES on the Dagster side).
    extra_stages: str = ""
    # Recorded in the published manifest as is: code version, recipe sections, a gate override (see assets/versioned.py).
    manifest_metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The spec as JSON text (what `write` writes)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def write(self, path: Path) -> Path:
        """Write the spec as JSON."""
        path.write_text(self.to_json())
        return path

    @classmethod
    def read(cls, path: str | Path) -> LaunchSpec:
        """Read a spec written by `write`, or from an environment variable given as `env:NAME`."""
        location = str(path)
        if location.startswith(SPEC_ENV_PREFIX):
            name = location.removeprefix(SPEC_ENV_PREFIX)
            if name not in os.environ:
                raise FileNotFoundError(f"--spec {location}: environment variable {name} is not set")
            return cls(**json.loads(os.environ[name]))
        return cls(**json.loads(Path(path).read_text()))
