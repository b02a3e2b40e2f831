"""Publish a staged folder as version v1 of the asset `model`, partition `tiny`, into an artifact store.

Usage: `python -m programs.publish ROOT STAGED OPTIONS_JSON` (ROOT: the store's root URL, e.g. `s3://bucket/x`;
OPTIONS_JSON: the fsspec storage options).

`test_s3.py` runs it as a process of its own so that it can SIGKILL the publisher in the middle of the
upload (its temporary files go to the TMPDIR of the test). Result: the published manifest's version.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from doge_dagster.artifacts import ArtifactStore
from programs import emit


def main(argv: list[str]) -> None:
    root, staged, options = argv
    manifest = ArtifactStore(root, json.loads(options)).publish("model", "tiny", "v1", Path(staged))
    emit({"published": manifest.version})


if __name__ == "__main__":
    main(sys.argv[1:])
