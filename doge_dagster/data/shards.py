"""Write a mixture's rows to disk as they are produced: Arrow shards, and a checkpoint after each.

Memory stays bounded whatever the mixture's size: rows leave in shards of `shard_rows` rows, written with
`datasets`' own `ArrowWriter` (the file format `save_to_disk` writes), and `finish` returns them as one
memory-mapped `Dataset` in stream order. The split and the shuffle are index permutations over it (see
`mixing._split`): no pass holds the rows.

After every shard the writer saves a checkpoint (the mixer's state and the shards so far) in `.resume/`; a
build started again in the same folder with the same key continues from there and writes the same files an
uninterrupted build writes.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa
    from datasets import Dataset, DatasetDict

RESUME_DIR = ".resume"
PROGRESS_FILE = "progress.json"


class ResumeMismatchError(RuntimeError):
    """A checkpoint in the output folder belongs to another mixture."""


@dataclass
class SplitShards:
    """The shards written so far."""

    files: list[str]
    rows: int = 0


class MixtureWriter:
    """Write the stream's rows as shards, checkpoint after each shard, and hand back the whole stream.

    `key` identifies the mixture (a checkpoint with another key is refused); the caller's `state` is saved with
    each checkpoint and returned by `resume()`.
    """

    def __init__(self, folder: Path, key: str, seed: int, shard_rows: int):
        self.folder, self.key, self.seed, self.shard_rows = Path(folder), key, seed, shard_rows
        self.shards = SplitShards([])
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._schema: pa.Schema | None = None
        self._features = None

    # -- resuming -----------------------------------------------------------------------------------------
    @property
    def resume_dir(self) -> Path:
        """Where checkpoints live."""
        return self.folder / RESUME_DIR

    def resume(self) -> dict[str, Any] | None:
        """The caller's state of the last checkpoint, after dropping shards written after it; None to start fresh.

        A folder without a checkpoint is emptied; a checkpoint with another key raises `ResumeMismatchError`.
        """
        progress = self.resume_dir / PROGRESS_FILE
        if not progress.is_file():
            shutil.rmtree(self.folder, ignore_errors=True)
            return None
        saved = json.loads(progress.read_text())
        if saved["key"] != self.key:
            raise ResumeMismatchError(
                f"{self.folder} holds a checkpoint of another mixture ({saved['key']}, not {self.key}); "
                "delete the folder to start over"
            )
        self.shards = SplitShards(**saved["shards"])
        if saved.get("schema"):
            self._set_schema(_schema_from_json(saved["schema"]))
        kept = set(self.shards.files)  # shards (and half-written temporaries) after the checkpoint go
        for path in sorted(self.folder.glob("*")):
            if path.is_file() and path.name not in kept:
                path.unlink()
        return saved["state"]

    def carry_path(self, name: str) -> Path:
        """A file the caller may write beside the checkpoint (for example the packer's leftover tokens)."""
        return self.resume_dir / name

    # -- writing ------------------------------------------------------------------------------------------
    def add(self, table: pa.Table) -> bool:
        """Append the rows of `table` (the next rows of the stream); True when a checkpoint is due."""
        if self._schema is None:
            self._set_schema(table.schema)
        elif table.schema != self._schema:
            table = table.cast(self._schema)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        return self._pending_rows >= self.shard_rows

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Write the pending rows as a shard, then record `state` with the shards (atomically)."""
        self._flush()
        self.resume_dir.mkdir(parents=True, exist_ok=True)
        saved = {
            "key": self.key,
            "shards": vars(self.shards),
            "schema": _schema_to_json(self._schema) if self._schema is not None else None,
            "state": state,
        }
        _write_atomically(self.resume_dir / PROGRESS_FILE, json.dumps(saved))

    def _set_schema(self, schema: pa.Schema) -> None:
        from datasets import Features

        self._features = Features.from_arrow_schema(schema)
        self._schema = self._features.arrow_schema

    def _flush(self) -> None:
        import pyarrow as pa
        from datasets.arrow_writer import ArrowWriter

        if not self._pending_rows:
            return
        table = pa.concat_tables(self._pending).combine_chunks()
        self._pending, self._pending_rows = [], 0
        name = f"data-{len(self.shards.files):05d}.arrow"
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.folder / f".{name}.tmp"
        writer = ArrowWriter(features=self._features, path=str(temporary))
        try:
            writer.write_table(table)
            writer.finalize()
        finally:
            writer.close()
        os.replace(temporary, self.folder / name)
        self.shards.files.append(name)
        self.shards.rows += table.num_rows

    def finish(self) -> Dataset:
        """Write the last shard; the whole stream as one memory-mapped `Dataset`, in order."""
        from datasets import Dataset, concatenate_datasets

        self._flush()
        if not self.shards.files:
            raise ValueError("the mixture is empty: every source contributed nothing")
        parts = [Dataset.from_file(str(self.folder / name)) for name in self.shards.files]
        return concatenate_datasets(parts) if len(parts) > 1 else parts[0]

    def rows(self) -> int:
        """Rows written and pending."""
        return self.shards.rows + self._pending_rows


def load_mixture(folder: Path) -> DatasetDict:
    """The mixture's `DatasetDict`, memory-mapped from its shards."""
    from datasets import load_from_disk

    return load_from_disk(str(folder))


def _schema_to_json(schema: pa.Schema) -> str:
    import base64

    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def _schema_from_json(text: str) -> pa.Schema:
    import base64

    import pyarrow as pa

    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
