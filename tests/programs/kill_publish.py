"""Write and publish an artifact step by step, announcing each step, and optionally stop at one to be SIGKILLed.

Usage: `python -m programs.kill_publish ROOT OPTIONS_JSON VERSION FILES FILE_SIZE PAUSE_AT`
(ROOT: the store's root URL; OPTIONS_JSON: fsspec storage options; PAUSE_AT: an event name, or `none`).

The program stages FILES files of FILE_SIZE bytes (`file_contents`) through `ArtifactStore.writing` as version
VERSION of the asset `model`, partition `tiny`, and prints one line `EVENT <name>` after each step of the
publish, in this order:

- `write <i>`: file i written into the staging folder;
- `hash <i>`: file i hashed for the manifest (`describe_folder`);
- `upload <i>` (remote stores): file i uploaded (`_put_file` of the filesystem returned);
- `manifest`: every file is in place and the manifest is about to be written.

At the event named PAUSE_AT it prints `PAUSED <name>` and waits to be killed (`test_fault_campaign.py`), so the
kill falls exactly there; with `none` it publishes and prints the manifest's version as its RESULT line.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from programs import emit

ASSET, PARTITION = "model", "tiny"


def file_contents(version: str, index: int, size: int) -> bytes:
    """The bytes of file `index` of `version`: distinct per file and version, so a mix-up shows in the hashes."""
    block = hashlib.sha256(f"{version}/{index}".encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def file_name(index: int) -> str:
    """The name of file `index` (sorted order is index order: hashing follows it)."""
    return f"shard-{index:03d}.bin"


def main(argv: list[str]) -> None:
    """Stage, announce and publish (see the module doc); pause at PAUSE_AT until killed."""
    from doge_dagster import artifacts

    root, options, version, files, size, pause_at = argv
    files, size = int(files), int(size)

    def event(name: str) -> None:
        print(f"EVENT {name}", flush=True)
        if name == pause_at:
            print(f"PAUSED {name}", flush=True)
            time.sleep(3600)  # until the test's SIGKILL

    hashed = iter(range(files))
    original_hash = artifacts.hash_file

    def announcing_hash(path: Path, *args, **kwargs) -> str:
        digest = original_hash(path, *args, **kwargs)
        event(f"hash {next(hashed)}")
        return digest

    artifacts.hash_file = announcing_hash
    store = artifacts.ArtifactStore(root, json.loads(options))
    original_manifest = store._write_manifest

    def announcing_manifest(final: str, manifest) -> None:
        event("manifest")
        original_manifest(final, manifest)

    store._write_manifest = announcing_manifest
    if not store.is_local:
        uploaded = iter(range(files))
        original_put = store.fs._put_file

        async def announcing_put(*args, **kwargs):
            result = await original_put(*args, **kwargs)
            event(f"upload {next(uploaded)}")
            return result

        store.fs._put_file = announcing_put
    with store.writing(ASSET, PARTITION, version, upstream={"data": "d1"}) as staged:
        for index in range(files):
            (staged.path / file_name(index)).write_bytes(file_contents(version, index, size))
            event(f"write {index}")
        staged.metadata = {"files": files}
    emit({"published": staged.manifest.version})


if __name__ == "__main__":
    main(sys.argv[1:])
