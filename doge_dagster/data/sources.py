"""Open a recipe's dataset source as a seeded, shuffled stream of rows, and fingerprint it.

Three kinds behind one interface:
- `hub`: `datasets.load_dataset(hub_id, config, streaming=True)`; with `path` set, the same call on a
  local mirror laid out as the Hub serves the repo (`{path}/{hub_id}/README.md` + data files).
- `local`: a folder of jsonl/parquet files in the Hub schema, or a local copy of the Hub repo.
- `generated`: deterministic offline data, written once in the Hub layout and then read exactly like
  a Hub mirror, so the tiny recipe runs the real loading code.

A source may read another Hub repo in the same schema (`repo`, `config`: e.g. a python-edu mirror that
carries `text`), and python-edu rows may get their `text` fetched by blob id (`contents`, see `blobs`).
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

    from doge_dagster.data.blobs import BlobFetchStats

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
    config = ref.config or spec.config or "default"
    repo = ref.repo or spec.hub_id
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
        location = str(Path(ref.path) / repo) if ref.path else repo
        return load_dataset(location, name=ref.config or spec.config, split=split, streaming=True, revision=ref.revision)
    except SourceError:
        raise
    except Exception as error:  # datasets raises many types; the user needs the source and the fix
        where = str(Path(ref.path) / repo) if ref.kind == "hub" and ref.path else ref.path or repo
        raise SourceError(
            f"dataset {ref.dataset!r} ({ref.kind}: {where}) could not be opened: {error}. "
            "For the Hub, check network access and HF_TOKEN; offline, use kind: local with a folder "
            "in the dataset's schema, or kind: hub with `path` pointing at a local mirror."
        ) from error


def open_source(
    ref: SourceRef,
    seed: int,
    shuffle_buffer: int = 10_000,
    split: str | None = None,
    *,
    blob_stats: BlobFetchStats | None = None,
) -> IterableDataset:
    """A shuffled stream of the source's rows (seeded: same seed, same order), schema-checked.

    With `ref.contents`, rows carry `blob_id` and get their `text` fetched batch by batch as the stream is read,
    after the shuffle: only the rows a mixture takes are fetched, in the order a source with text would give.
    Rows whose blob failed are dropped under on_error=skip; `blob_stats` (when given) receives the counts, which
    are also logged every `blobs.LOG_EVERY_ROWS` rows.
    """
    stream = _load_stream(ref, seed, split)
    check_columns(ref, stream)
    shuffled = stream.shuffle(seed=seed, buffer_size=shuffle_buffer)
    if ref.contents is None:
        return shuffled
    return _with_blob_texts(ref, shuffled, blob_stats)


def _with_blob_texts(ref: SourceRef, stream: IterableDataset, stats: BlobFetchStats | None) -> IterableDataset:
    """`stream` with `text` filled from `blob_id` (see `blobs.BlobFetcher.fill_batch`), features kept known so
    readers can still select the text column alone."""
    from datasets import Features, Value

    from doge_dagster.data.blobs import BlobFetcher

    assert ref.contents is not None
    fetcher = BlobFetcher(ref.contents, name=f"{ref.dataset} blobs", stats=stats)
    features = None
    if stream.features is not None:
        features = Features({name: value for name, value in stream.features.items() if name != "text"})
        features["text"] = Value("string")
    # a batch is as many blobs as are requested at once, at least a few hundred rows to keep the per-batch cost low
    batch_size = max(ref.contents.concurrency, 256)
    return stream.map(fetcher.fill_batch, batched=True, batch_size=batch_size, features=features)


def check_columns(ref: SourceRef, stream: IterableDataset) -> None:
    """Fail early, naming the missing columns, when a source lacks what the mixers read."""
    spec = dataset_spec(ref.dataset)
    columns = list(stream.features) if stream.features is not None else None
    if columns is None:
        first = next(iter(stream.take(1)), None)
        if first is None:
            raise SourceError(f"dataset {ref.dataset!r} ({ref.kind}) is empty")
        columns = list(first)
    required = spec.required_columns
    if ref.contents is not None:  # the text is fetched by blob id
        required = ("blob_id", *(column for column in required if column != "text"))
    missing = [column for column in required if column not in columns]
    if missing:
        hint = (
            " (python-edu on the Hub ships blob ids only: either add `contents: {}` to the source to fetch each "
            "file by blob_id from Software Heritage's S3 bucket (AWS credentials in the environment), or read a "
            "mirror that carries `text`: `repo: <hub mirror>` or kind: local)"
            if ref.dataset == "python-edu" and ref.contents is None
            else ""
        )
        raise SourceError(
            f"dataset {ref.dataset!r} ({ref.kind}) lacks column(s) {', '.join(missing)}; it has {', '.join(columns)}. "
            f"Rows must follow the {spec.hub_id} schema{hint}."
        )


def source_fingerprint(ref: SourceRef, seed: int) -> str:
    """The data version of a source: Hub commit, or a content hash of local or generated files.

    A `config` override and a blob store (`contents.store`) are part of it, since they change the rows; the
    other `contents` settings (concurrency, retries, cache) and the S3 endpoint and credentials are not.
    """
    rows = _rows_fingerprint(ref, seed)
    extra = []
    if ref.config is not None:
        extra.append({"config": ref.config})
    if ref.contents is not None:
        extra.append({"blob_store": ref.contents.store})
    return content_version(rows, *extra) if extra else rows


def _rows_fingerprint(ref: SourceRef, seed: int) -> str:
    spec = dataset_spec(ref.dataset)
    if ref.kind == "generated":
        from doge_dagster.data.generated import GENERATOR_VERSION

        return content_version("generated", ref.dataset, ref.num_rows, seed, GENERATOR_VERSION)
    if ref.kind == "local" or ref.path:
        folder = Path(ref.path or "")
        if ref.kind == "hub":
            folder = folder / (ref.repo or spec.hub_id)
        if not folder.is_dir():
            raise SourceError(f"source folder {folder} for dataset {ref.dataset!r} does not exist")
        return folder_fingerprint(folder)
    return hub_revision(spec, ref.revision, ref.repo)


def folder_fingerprint(folder: Path) -> str:
    """Content hash of every data file in a folder (names, sizes and bytes)."""
    from doge_dagster.artifacts import hash_file

    entries = [
        (path.relative_to(folder).as_posix(), path.stat().st_size, hash_file(path))
        for path in sorted(folder.rglob("*"))
        if path.is_file() and (path.suffix in DATA_SUFFIXES or path.name == "README.md")
    ]
    return content_version(entries)


def hub_revision(spec: DatasetSpec, revision: str | None, repo: str | None = None) -> str:
    """The Hub commit a revision points at (a full commit sha is returned as is, without network), in the
    registry's repo or in `repo` (a mirror in the same schema)."""
    if revision and COMMIT_SHA.match(revision):
        return revision
    from huggingface_hub import HfApi

    repo = repo or spec.hub_id
    try:
        return HfApi().dataset_info(repo, revision=revision).sha or ""
    except Exception as error:
        raise SourceError(
            f"cannot resolve the Hub revision of {repo} ({error}); pin `revision` to a commit sha, "
            "or use a local mirror with `path`"
        ) from error


def open_named_source(name: str, seed: int, cache_dir: str | None = None) -> IterableDataset:
    """Open a registry dataset by name alone, as the seed's `mix_datasets_by_radio` call expects.

    Where the rows come from is the environment's choice, so the seed's snippet runs unchanged anywhere:
    `DOGE_DATA_GENERATED=<rows>` generates that many rows in the dataset's schema (offline, as `tiny` does),
    `DOGE_DATA_MIRROR=<folder>` reads a local mirror laid out as the Hub serves the repos, and otherwise the
    Hub itself is streamed. `cache_dir` holds the generated files when given.
    """
    generated = os.environ.get("DOGE_DATA_GENERATED")
    if generated:
        if cache_dir:
            os.environ.setdefault("DOGE_GENERATED_CACHE", str(Path(cache_dir) / "generated"))
        ref = SourceRef(dataset=name, ratio=1.0, kind="generated", num_rows=int(generated))
    elif os.environ.get("DOGE_DATA_MIRROR"):
        ref = SourceRef(dataset=name, ratio=1.0, kind="hub", path=os.environ["DOGE_DATA_MIRROR"])
    else:
        ref = SourceRef(dataset=name, ratio=1.0)
    return open_source(ref, seed)
