"""Read a file of a published artifact through `ArtifactStore(root)` opened with no options, as a training process.

Usage: `python -m programs.store_read ROOT ASSET PARTITION VERSION FILE`.

A training process gets the store's endpoint, region and credentials through its environment only
(`ArtifactStoreResource.process_env()`): this process, started with such an environment, shows that the store
opens from it. Result: the text of FILE in the local copy of ASSET/PARTITION/VERSION.
"""

from __future__ import annotations

import sys

from doge_dagster.artifacts import ArtifactStore
from programs import emit


def main(argv: list[str]) -> None:
    root, asset, partition, version, name = argv
    store = ArtifactStore(root)
    manifest = store.require(asset, partition, version)
    emit(store.local_path(manifest).joinpath(name).read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
