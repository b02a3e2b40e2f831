"""Write a mixture to disk as it is produced: Arrow shards per split, checkpoints, and the `save_to_disk` layout.

Memory stays bounded whatever the mixture's size: rows are routed to `train` or `test` as they arrive and
leave in shards of `shard_rows` rows, written with `datasets`' own `ArrowWriter` (the file format
`save_to_disk` writes). When both splits are complete the folder gets the `dataset_dict.json`,
`state.json` and `dataset_info.json` files `datasets.load_from_disk` reads, and the returned dataset is
memory-mapped from the shards.

The split needs no pass over the whole mixture: rows are cut into blocks of `round(1 / test_size)` and one
row of each block, at a seeded position, goes to `test`. That is an even, seeded sample of the stream
(a hash of the row index would do too, but could leave a small mixture without any test row).

Example mixtures are shuffled without holding them: each shard is shuffled (seeded by its index) as it is
written, and the shards are listed in a seeded order at the end, on top of the sources' own shuffled streams.
Packed pretraining rows keep their order: documents run across row boundaries.

After every train shard the writer saves a checkpoint (the mixer's state and the shards so far) in
`.resume/`; a build started again in the same folder with the same key continues from there and writes the
same files an uninterrupted build writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa
    from datasets import DatasetDict

SPLITS = ("train", "test")
RESUME_DIR = ".resume"
PROGRESS_FILE = "progress.json"


class ResumeMismatchError(RuntimeError):
    """A checkpoint in the output folder belongs to another mixture."""


def split_test_stride(test_size: float) -> int:
    """Rows per block; one row of each block goes to the test split."""
    return max(2, round(1 / test_size))


def _block_test_position(seed: int, block: int, stride: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % stride


def split_test_mask(seed: int, first_row: int, count: int, stride: int) -> list[bool]:
    """Whether each of the rows `first_row .. first_row + count - 1` of the stream belongs to the test split."""
    mask = [False] * count
    block = first_row // stride
    while block * stride < first_row + count:
        index = block * stride + _block_test_position(seed, block, stride) - first_row
        if 0 <= index < count:
            mask[index] = True
        block += 1
    return mask


@dataclass
class SplitShards:
    """The shards written for one split so far."""

    files: list[str]
    rows: int = 0


class MixtureWriter:
    """Route rows to train/test, write shards, checkpoint after each train shard, finish the layout.

    `key` identifies the mixture (a checkpoint with another key is refused); `state()` of the caller is saved
    with each checkpoint and returned by `resume()`.
    """

    def __init__(self, folder: Path, key: str, seed: int, test_size: float, shard_rows: int, shuffle: bool):
        self.folder, self.key, self.seed = Path(folder), key, seed
        self.stride, self.shard_rows, self.shuffle = split_test_stride(test_size), shard_rows, shuffle
        self.rows_routed = 0
        self.shards = {split: SplitShards([]) for split in SPLITS}
        self._pending: dict[str, list[pa.Table]] = {split: [] for split in SPLITS}
        self._pending_rows = dict.fromkeys(SPLITS, 0)
        self._schema: pa.Schema | None = None
        self._features = None

    # -- resuming -----------------------------------------------------------------------------------------
    @property
    def resume_dir(self) -> Path:
        """Where checkpoints live (removed when the mixture is complete)."""
        return self.folder / RESUME_DIR

    def resume(self) -> dict[str, Any] | None:
        """The caller's state of the last checkpoint, after dropping shards written after it; None to start fresh.

        A folder without a checkpoint is emptied; a checkpoint with another key raises `ResumeMismatchError`.
        """
        progress = self.resume_dir / PROGRESS_FILE
        if not progress.is_file():
            self._reset()
            return None
        saved = json.loads(progress.read_text())
        if saved["key"] != self.key:
            raise ResumeMismatchError(
                f"{self.folder} holds a checkpoint of another mixture ({saved['key']}, not {self.key}); "
                "delete the folder to start over"
            )
        self.rows_routed = saved["rows_routed"]
        self.shards = {split: SplitShards(**saved["shards"][split]) for split in SPLITS}
        if saved.get("schema"):
            self._set_schema(_schema_from_json(saved["schema"]))
        for split in SPLITS:  # shards (and half-written temporaries) after the checkpoint go
            kept = set(self.shards[split].files)
            for path in sorted((self.folder / split).glob("*")) if (self.folder / split).is_dir() else []:
                if path.name not in kept:
                    path.unlink()
        return saved["state"]

    def _reset(self) -> None:
        for split in SPLITS:
            shutil.rmtree(self.folder / split, ignore_errors=True)
        shutil.rmtree(self.resume_dir, ignore_errors=True)

    def carry_path(self, name: str) -> Path:
        """A file the caller may write beside the checkpoint (for example the packer's leftover tokens)."""
        return self.resume_dir / name

    # -- writing ------------------------------------------------------------------------------------------
    def add(self, table: pa.Table) -> bool:
        """Route the rows of `table` (the next rows of the stream); True when a checkpoint is due."""
        import pyarrow as pa

        if self._schema is None:
            self._set_schema(table.schema)
        elif table.schema != self._schema:
            table = table.cast(self._schema)
        mask = pa.array(split_test_mask(self.seed, self.rows_routed, table.num_rows, self.stride))
        self.rows_routed += table.num_rows
        for split, rows in (("test", table.filter(mask)), ("train", table.filter(pa.compute.invert(mask)))):
            if rows.num_rows:
                self._pending[split].append(rows)
                self._pending_rows[split] += rows.num_rows
        return self._pending_rows["train"] >= self.shard_rows

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Write every pending row as shards, then record `state` with them (atomically)."""
        for split in SPLITS:
            self._flush(split)
        self.resume_dir.mkdir(parents=True, exist_ok=True)
        saved = {
            "key": self.key,
            "rows_routed": self.rows_routed,
            "shards": {split: vars(self.shards[split]) for split in SPLITS},
            "schema": _schema_to_json(self._schema) if self._schema is not None else None,
            "state": state,
        }
        _write_atomically(self.resume_dir / PROGRESS_FILE, json.dumps(saved))

    def _set_schema(self, schema: pa.Schema) -> None:
        from datasets import Features

        self._features = Features.from_arrow_schema(schema)
        self._schema = self._features.arrow_schema

    def _flush(self, split: str) -> None:
        import pyarrow as pa
        from datasets.arrow_writer import ArrowWriter

        if not self._pending_rows[split]:
            return
        table = pa.concat_tables(self._pending[split]).combine_chunks()
        self._pending[split], self._pending_rows[split] = [], 0
        index = len(self.shards[split].files)
        if self.shuffle:
            order = list(range(table.num_rows))
            random.Random(f"{self.seed}:{split}:{index}").shuffle(order)
            table = table.take(order)
        name = f"data-{index:05d}.arrow"
        folder = self.folder / split
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{name}.tmp"
        writer = ArrowWriter(features=self._features, path=str(temporary))
        try:
            writer.write_table(table)
            writer.finalize()
        finally:
            writer.close()
        os.replace(temporary, folder / name)
        self.shards[split].files.append(name)
        self.shards[split].rows += table.num_rows

    def finish(self) -> None:
        """Write the last shards and the `load_from_disk` layout; remove the checkpoint."""
        for split in SPLITS:
            self._flush(split)
        for split in SPLITS:
            files = list(self.shards[split].files)
            if self.shuffle:
                random.Random(f"{self.seed}:{split}:order").shuffle(files)
            _write_split_metadata(self.folder / split, files, self._features, f"{self.key}:{split}")
        (self.folder / "dataset_dict.json").write_text(json.dumps({"splits": list(SPLITS)}))
        shutil.rmtree(self.resume_dir, ignore_errors=True)

    def rows(self, split: str) -> int:
        """Rows written and pending in `split`."""
        return self.shards[split].rows + self._pending_rows[split]


def _write_split_metadata(folder: Path, files: list[str], features, fingerprint_source: str) -> None:
    """`state.json` and `dataset_info.json` as `Dataset.save_to_disk` writes them, listing `files` in order."""
    from datasets import DatasetInfo

    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "_data_files": [{"filename": name} for name in files],
        "_fingerprint": hashlib.blake2b(fingerprint_source.encode(), digest_size=8).hexdigest(),
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    DatasetInfo(features=features).write_to_directory(str(folder))


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
