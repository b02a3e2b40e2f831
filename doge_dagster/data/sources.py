"""Open a recipe's dataset source as a seeded, shuffled stream of rows, and fingerprint it.

Three kinds behind one interface:
- `hub`: `datasets.load_dataset(hub_id, config, streaming=True)`; with `path` set, the same call on a
  local mirror laid out as the Hub serves the repo (`{path}/{hub_id}/README.md` + data files).
- `local`: a folder of jsonl/parquet files in the Hub schema, or a local copy of the Hub repo.
- `generated`: deterministic offline data, written once in the Hub layout and then read exactly like
  a Hub mirror, so the tiny recipe runs the real loading code.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from doge_dagster.recipes import SourceRef, content_version
from doge_dagster.registry import DatasetSpec, dataset_spec

if TYPE_CHECKING:
    from datasets import IterableDataset

DATA_SUFFIXES = (".parquet", ".jsonl", ".json")
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


class SourceError(ValueError):
    """A dataset source cannot be read as the recipe asks; the message says how to fix it."""


def generated_cache_root() -> Path:
    """Where generated datasets are written (override with DOGE_GENERATED_CACHE)."""
    default = Path(tempfile.gettempdir()) / "doge-generated"
    return Path(os.environ.get("DOGE_GENERATED_CACHE", default))


def generated_repo(ref: SourceRef, seed: int) -> Path:
    """Write (once) and return the Hub-layout folder of a generated source."""
    from doge_dagster.data.generated import GENERATOR_VERSION, write_hub_layout

    spec = dataset_spec(ref.dataset)
    key = f"{ref.dataset}-n{ref.num_rows}-s{seed}-v{GENERATOR_VERSION}"
    root = generated_cache_root() / key
    repo = root / spec.hub_id
    if not (root / ".complete").is_file():
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root.parent))
        write_hub_layout(ref.dataset, staging, num_rows=ref.num_rows or 0, seed=seed)
        (staging / ".complete").write_text(key)
        try:
            os.replace(staging, root)
        except OSError:  # another process finished first: its files are identical
            shutil.rmtree(staging, ignore_errors=True)
    return repo


def _local_data_files(folder: Path) -> list[str]:
    files = sorted(str(path) for path in folder.rglob("*") if path.suffix in DATA_SUFFIXES and path.is_file())
    if not files:
        raise SourceError(f"local source folder {folder} holds no {'/'.join(DATA_SUFFIXES)} files")
    return files


def _is_hub_layout(folder: Path) -> bool:
    return (folder / "README.md").is_file()


def _load_stream(ref: SourceRef, seed: int, split: str | None = None) -> IterableDataset:
    import datasets.config
    from datasets import load_dataset

    # datasets sleeps 5 s whenever a shuffled parquet stream is closed early (after its executor has
    # already joined its threads), i.e. once per source per mixture. We always stop early.
    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0

    spec = dataset_spec(ref.dataset)
    split = split or spec.split
    config = spec.config or "default"
    try:
        if ref.kind == "generated":
            return load_dataset(str(generated_repo(ref, seed)), name=config, split=split, streaming=True)
        if ref.kind == "local":
            folder = Path(ref.path or "")
            if not folder.is_dir():
                raise SourceError(f"local source path {folder} does not exist; point `path` at a folder of the dataset's files")
            if _is_hub_layout(folder):
                return load_dataset(str(folder), name=config, split=split, streaming=True)
            files = _local_data_files(folder)
            builder = "parquet" if files[0].endswith(".parquet") else "json"
            return load_dataset(builder, data_files=files, split="train", streaming=True)
        location = str(Path(ref.path) / spec.hub_id) if ref.path else spec.hub_id
        return load_dataset(location, name=spec.config, split=split, streaming=True, revision=ref.revision)
    except SourceError:
        raise
    except Exception as error:  # datasets raises many types; the user needs the source and the fix
        raise SourceError(
            f"dataset {ref.dataset!r} ({ref.kind}: {ref.path or spec.hub_id}) could not be opened: {error}. "
            "For the Hub, check network access and HF_TOKEN; offline, use kind: local with a folder "
            "in the dataset's schema, or kind: hub with `path` pointing at a local mirror."
        ) from error


def open_source(ref: SourceRef, seed: int, shuffle_buffer: int = 10_000, split: str | None = None) -> IterableDataset:
    """A shuffled stream of the source's rows (seeded: same seed, same order), schema-checked."""
    stream = _load_stream(ref, seed, split)
    check_columns(ref, stream)
    return stream.shuffle(seed=seed, buffer_size=shuffle_buffer)


def check_columns(ref: SourceRef, stream: IterableDataset) -> None:
    """Fail early, naming the missing columns, when a source lacks what the mixers read."""
    spec = dataset_spec(ref.dataset)
    columns = list(stream.features) if stream.features is not None else None
    if columns is None:
        first = next(iter(stream.take(1)), None)
        if first is None:
            raise SourceError(f"dataset {ref.dataset!r} ({ref.kind}) is empty")
        columns = list(first)
    missing = [column for column in spec.required_columns if column not in columns]
    if missing:
        hint = " (python-edu on the Hub ships blob ids only: fetch the file contents into `text` first)" if ref.dataset == "python-edu" else ""
        raise SourceError(
            f"dataset {ref.dataset!r} ({ref.kind}) lacks column(s) {', '.join(missing)}; it has {', '.join(columns)}. "
            f"Rows must follow the {spec.hub_id} schema{hint}."
        )


def source_fingerprint(ref: SourceRef, seed: int) -> str:
    """The data version of a source: Hub commit, or a content hash of local or generated files."""
    spec = dataset_spec(ref.dataset)
    if ref.kind == "generated":
        from doge_dagster.data.generated import GENERATOR_VERSION

        return content_version("generated", ref.dataset, ref.num_rows, seed, GENERATOR_VERSION)
    if ref.kind == "local" or ref.path:
        folder = Path(ref.path or "")
        if ref.kind == "hub":
            folder = folder / spec.hub_id
        if not folder.is_dir():
            raise SourceError(f"source folder {folder} for dataset {ref.dataset!r} does not exist")
        return folder_fingerprint(folder)
    return hub_revision(spec, ref.revision)


def folder_fingerprint(folder: Path) -> str:
    """Content hash of every data file in a folder (names, sizes and bytes)."""
    from doge_dagster.artifacts import hash_file

    entries = [
        (path.relative_to(folder).as_posix(), path.stat().st_size, hash_file(path))
        for path in sorted(folder.rglob("*"))
        if path.is_file() and (path.suffix in DATA_SUFFIXES or path.name == "README.md")
    ]
    return content_version(entries)


def hub_revision(spec: DatasetSpec, revision: str | None) -> str:
    """The Hub commit a revision points at (a full commit sha is returned as is, without network)."""
    if revision and COMMIT_SHA.match(revision):
        return revision
    from huggingface_hub import HfApi

    try:
        return HfApi().dataset_info(spec.hub_id, revision=revision).sha or ""
    except Exception as error:
        raise SourceError(
            f"cannot resolve the Hub revision of {spec.hub_id} ({error}); pin `revision` to a commit sha, "
            "or use a local mirror with `path`"
        ) from error
