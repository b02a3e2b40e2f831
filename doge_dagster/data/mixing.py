"""Mix datasets by ratio into a train/test `DatasetDict` on disk, one function for every stage's data.

Fixes of the seed's mixer, each tested:
- seeded random sampling (a shuffled stream), never the first N rows;
- sampling before tokenizing: a source is read and tokenized only as far as its share needs;
- out of core: rows leave for Arrow shards on disk as they are made (`shards.MixtureWriter`), so memory
  does not grow with the mixture, and a killed build resumes from its last shard;
- every core: tokenizing runs in `dataset_num_proc` processes, with the same output for any count;
- the ratio unit is explicit and honoured: tokens for pretraining, examples for the other kinds;
- the caller's `datasets_and_ratios` is never mutated;
- packed pretraining rows put an EOS after every document, and pad differs from EOS, so EOS is trained;
- reasoning traces are kept (as `<think>` blocks) and GRPO prompts are message lists with the gold
  answer kept beside them for the reward functions.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import shutil
import tempfile
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any

from doge_dagster.data.encoding import BatchMapper, available_cores
from doge_dagster.data.shards import MixtureWriter, load_mixture
from doge_dagster.recipes import content_version
from doge_dagster.registry import dataset_spec

if TYPE_CHECKING:
    import pyarrow as pa
    from datasets import Dataset, DatasetDict
    from transformers import PreTrainedTokenizerBase

Row = dict[str, Any]
Formatter = Callable[[Row], Row]

DEFAULT_IDENTITY_PROMPT = "You are Doge, a small and helpful assistant trained by SmallDoge."
DEFAULT_THINKING_PROMPT = (
    "You are Doge, a helpful assistant. Think step by step inside <think> and </think>, "
    "then give the final answer after the closing tag."
)
TOKENIZE_BATCH = 512  # rows read from a source at a time
MIN_ENCODE = 64  # fewest texts tokenized in one call (see `DocumentSource`)
SHARD_ROWS = 10_000  # rows per shard on disk: the unit of resume and of the example shuffle
CHUNK_ROWS = 1_000  # rows handed to the writer at a time
PROGRESS_SECONDS = 60.0
STATS_FILE = "mixture_stats.json"
CARRY_FILE = "packer-carry.int32"  # packed tokens not yet in a row, saved with each checkpoint
STREAM_DIR = ".stream"  # the mixture's rows in stream order, shard by shard, before the split


class MixingError(ValueError):
    """The sources cannot provide what the mixture asks for."""


@dataclass
class SourceStats:
    """What one source contributed: rows taken from its stream (used plus dropped), rows and tokens used,
    rows dropped as too long, and its target in the mixture's unit."""

    rows_read: int = 0
    rows_used: int = 0
    tokens: int = 0
    dropped_too_long: int = 0
    target: int = 0
    blob_fetch: dict[str, int] | None = None  # python-edu fetched by blob id: fetched / cached / failed counts


@dataclass
class MixtureStats:
    """Realised composition of a mixture, in the mixture's ratio unit."""

    unit: str
    requested_ratios: dict[str, float]
    sources: dict[str, SourceStats] = field(default_factory=dict)
    train_rows: int = 0
    test_rows: int = 0

    @property
    def realised_ratios(self) -> dict[str, float]:
        """Each source's share of the mixture, counted in `unit`."""
        key = "tokens" if self.unit == "tokens" else "rows_used"
        total = sum(getattr(stats, key) for stats in self.sources.values()) or 1
        return {name: getattr(stats, key) / total for name, stats in self.sources.items()}

    def max_ratio_error(self) -> float:
        """Largest absolute gap between requested and realised ratio."""
        realised = self.realised_ratios
        return max(abs(realised.get(name, 0.0) - ratio) for name, ratio in self.requested_ratios.items())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary for manifests and metadata."""
        return {
            "unit": self.unit,
            "requested_ratios": self.requested_ratios,
            "realised_ratios": self.realised_ratios,
            "sources": {name: vars(stats) for name, stats in self.sources.items()},
            "train_rows": self.train_rows,
            "test_rows": self.test_rows,
        }


# -- row converters: one per dataset kind, from the Hub schema to what the trainers read ------------------
def _messages(value: Sequence[Mapping[str, Any]]) -> list[Row]:
    return [{"role": str(turn["role"]), "content": str(turn["content"])} for turn in value]


def think_block(reasoning: str, answer: str) -> str:
    """The assistant format of every reasoning stage: `<think>` trace, then the answer."""
    return f"<think>\n{reasoning.strip()}\n</think>\n\n{answer.strip()}"


def openthoughts_to_messages(row: Row) -> list[Row]:
    """OpenThoughts `conversations` to chat messages, keeping the reasoning trace as a `<think>` block."""
    messages = []
    for turn in row["conversations"]:
        role = {"human": "user", "gpt": "assistant"}.get(turn["from"], turn["from"])
        content = str(turn["value"])
        if role == "assistant" and "<|begin_of_thought|>" in content:
            thought = content.split("<|begin_of_thought|>", 1)[1].split("<|end_of_thought|>", 1)[0]
            solution = content.split("<|begin_of_solution|>", 1)[-1].split("<|end_of_solution|>", 1)[0]
            content = think_block(thought, solution)
        messages.append({"role": role, "content": content})
    return messages


def convert_row(kind: str, row: Row) -> Row:
    """Map a Hub-schema row of `kind` to the columns its trainer reads."""
    if kind == "conversation":
        return {"messages": _messages(row["messages"])}
    if kind == "reasoning":
        return {"messages": openthoughts_to_messages(row)}
    if kind == "preference":
        chosen, rejected = _messages(row["chosen"]), _messages(row["rejected"])
        return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}
    if kind == "math_problem":
        return {
            "prompt": [{"role": "user", "content": str(row["problem"])}],
            "answer": str(row["answer"]),
            "solution": str(row.get("solution") or ""),
        }
    raise MixingError(f"no example converter for dataset kind {kind!r}")


def with_system_prompt(prompt: str) -> Formatter:
    """A formatter that puts `prompt` as the system turn of every conversation that has none."""

    def format_row(row: Row) -> Row:
        key = "messages" if "messages" in row else "prompt"
        turns = row[key]
        if turns and turns[0]["role"] == "system":
            return row
        return {**row, key: [{"role": "system", "content": prompt}, *turns]}

    return format_row


def formatter_for(name: str, system_prompt: str | None = None) -> Formatter | None:
    """The seed's formatting functions by recipe name: `identity`, `thinking` or `none`."""
    if name == "none":
        return with_system_prompt(system_prompt) if system_prompt else None
    if name == "identity":
        return with_system_prompt(system_prompt or DEFAULT_IDENTITY_PROMPT)
    if name == "thinking":
        return with_system_prompt(system_prompt or DEFAULT_THINKING_PROMPT)
    raise MixingError(f"unknown formatting {name!r}; use none, identity or thinking")


# -- sampling ---------------------------------------------------------------------------------------------
def split_counts(total: int, ratios: Mapping[str, float]) -> dict[str, int]:
    """Integer shares of `total` by ratio (largest remainder), summing exactly to `total`."""
    # Normalise: ratios may sum to 1 only within a tolerance, and large totals amplify the gap.
    scale = sum(ratios.values()) or 1.0
    raw = {name: total * ratio / scale for name, ratio in ratios.items()}
    counts = {name: min(int(value), total) for name, value in raw.items()}
    leftover = total - sum(counts.values())
    for name in sorted(raw, key=lambda key: raw[key] - counts[key], reverse=True)[:leftover]:
        counts[name] += 1
    return counts


def _batched(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _skip(rows: Iterable[Row], count: int) -> Iterable[Row]:
    """`rows` without the first `count` (a `datasets` stream skips in its own reader)."""
    if count == 0:
        return rows
    if hasattr(rows, "skip"):
        return rows.skip(count)
    return itertools.islice(rows, count, None)


def _text_batches(rows: Iterable[Row], text_field: str, size: int) -> Iterator[list[str]]:
    """The `text_field` of `rows`, `size` rows at a time, in row order.

    A `datasets` dataset (a stream from `open_source`) is read in Arrow batches of its text column only, so
    no Python dict is built per row; any other iterable of rows is batched row by row.
    """
    from datasets import Dataset, IterableDataset

    if isinstance(rows, (Dataset, IterableDataset)):
        columns = rows.column_names
        if columns is not None and text_field in columns and len(columns) > 1:
            rows = rows.select_columns([text_field])
        for batch in rows.iter(batch_size=size):
            yield batch[text_field]
        return
    for batch in _batched(rows, size):
        yield [row[text_field] for row in batch]


class DocumentSource:
    """Token ids of one source's documents (EOS appended), in stream order, until its token budget is out.

    Rows are tokenized only as far as the budget is likely to need: after a first slice of `MIN_ENCODE`
    texts, each slice holds the rows the rest of the budget needs at the mean document length so far, plus a
    fifth, so the end of a source is not tokenized in vain. `consumed` counts the rows taken so far: the
    position a resumed build skips to.
    """

    def __init__(self, name: str, rows: Iterable[Row], text_field: str, eos: int, budget: int, stats: SourceStats,
                 mapper: BatchMapper, consumed: int = 0):
        self.name, self.rows, self.text_field, self.eos = name, rows, text_field, eos
        self.budget, self.stats, self.mapper, self.consumed = budget, stats, mapper, consumed

    def _slices(self) -> Iterator[tuple[list[str], int]]:
        for texts in _text_batches(_skip(self.rows, self.consumed), self.text_field, TOKENIZE_BATCH):
            start = 0
            while start < len(texts):
                remaining = self.budget - self.stats.tokens
                needed = math.ceil(1.2 * remaining * self.stats.rows_used / self.stats.tokens) if self.stats.tokens else 0
                stop = start + min(TOKENIZE_BATCH, max(MIN_ENCODE, needed))
                yield texts[start:stop], self.eos
                start = stop

    def __iter__(self) -> Iterator[array]:
        remaining = self.budget - self.stats.tokens
        if remaining <= 0:
            return
        for flat, lengths in self.mapper.map("documents", self._slices()):
            offset = 0
            for length in lengths:
                ids = flat[offset : offset + min(length, remaining)]
                offset += length
                remaining -= len(ids)
                self.consumed += 1
                self.stats.rows_read += 1
                self.stats.rows_used += 1
                self.stats.tokens += len(ids)
                yield ids
                if remaining == 0:
                    return
        raise MixingError(
            f"source {self.name!r} ran out after {self.stats.rows_read} rows and {self.stats.tokens} tokens of the "
            f"{self.budget} it must contribute; lower total_size or give the source more rows"
        )


class ExampleSource:
    """One source's examples in the trainers' columns, too-long ones dropped and counted, until its target."""

    def __init__(self, name: str, rows: Iterable[Row], target: int, stats: SourceStats, mapper: BatchMapper,
                 max_length: int, formatting_func: Formatter | None, consumed: int = 0):
        self.name, self.rows, self.target, self.stats, self.mapper = name, rows, target, stats, mapper
        self.max_length, self.formatting_func, self.consumed = max_length, formatting_func, consumed

    def __iter__(self) -> Iterator[Row]:
        if self.stats.rows_used >= self.target:
            return
        kind = dataset_spec(self.name).kind
        in_flight: deque[list[Row]] = deque()

        def batches() -> Iterator[list[Row]]:
            for batch in _batched(_skip(self.rows, self.consumed), TOKENIZE_BATCH):
                examples = [convert_row(kind, row) for row in batch]
                if self.formatting_func is not None:
                    examples = [_as_example(self.formatting_func(example)) for example in examples]
                in_flight.append(examples)
                yield examples

        for lengths in self.mapper.map("example_lengths", batches()):
            for example, length in zip(in_flight.popleft(), lengths):
                self.consumed += 1
                self.stats.rows_read += 1
                if length > self.max_length:
                    self.stats.dropped_too_long += 1
                    continue
                self.stats.rows_used += 1
                self.stats.tokens += length
                yield {**example, "source": self.name}
                if self.stats.rows_used >= self.target:
                    return
        raise MixingError(
            f"source {self.name!r} gave {self.stats.rows_used} usable examples of the {self.target} asked "
            f"({self.stats.dropped_too_long} longer than max_length {self.max_length}); lower total_size, raise "
            "max_length or give the source more rows"
        )


def _as_example(row: Row) -> Row:
    """A formatted row in the trainers' columns: the seed's formatters return `{"conversation": [...]}`."""
    if "conversation" in row and "messages" not in row:
        rest = {key: value for key, value in row.items() if key != "conversation"}
        return {**rest, "messages": _messages(row["conversation"])}
    return row


class Interleaver:
    """Draw items from the sources at random, weighted by their targets (seeded); its state survives a restart."""

    def __init__(self, weights: dict[str, int], seed: int, saved: dict[str, Any] | None = None):
        self.weights = weights
        self.rng = random.Random(seed)
        self.live = [name for name, weight in weights.items() if weight > 0]
        if saved:
            version, internal, gauss = saved["rng"]
            self.rng.setstate((version, tuple(internal), gauss))
            self.live = list(saved["live"])

    def draw(self, streams: dict[str, Iterator]) -> Iterator:
        """The next item of a randomly chosen live stream, until every stream is exhausted."""
        # `choices(weights=w)` accumulates `w` on every call; passing the sums draws exactly the same.
        cum_weights = list(accumulate(self.weights[name] for name in self.live))
        while self.live:
            name = self.rng.choices(self.live, cum_weights=cum_weights)[0]
            try:
                yield next(streams[name])
            except StopIteration:
                self.live.remove(name)
                cum_weights = list(accumulate(self.weights[name] for name in self.live))

    def state(self) -> dict[str, Any]:
        """JSON-able state: the generator's internals and the live sources."""
        return {"rng": self.rng.getstate(), "live": list(self.live)}


class Packer:
    """Concatenate documents (each ends with EOS) and cut rows of exactly `max_length`; pad the last.

    Tokens gather in a flat C int buffer (not Python lists) and leave as `input_ids` tables of `chunk_rows`
    rows built straight from the buffer.
    """

    def __init__(self, max_length: int, pad_id: int, chunk_rows: int, carry: array | None = None):
        self.max_length, self.pad_id = max_length, pad_id
        self.chunk_tokens = max(1, min(chunk_rows, (2**31 - 1) // max_length)) * max_length  # int32 offsets
        self.buffer = carry if carry is not None else array("i")

    def add(self, ids: array) -> None:
        """Append one document."""
        self.buffer.extend(ids)

    def chunks(self) -> Iterator[pa.Table]:
        """Full chunks of rows, as long as the buffer holds one."""
        while len(self.buffer) >= self.chunk_tokens:
            table = _packed_table(self.buffer[: self.chunk_tokens], self.max_length)
            del self.buffer[: self.chunk_tokens]
            yield table

    def finish(self) -> Iterator[pa.Table]:
        """The rest of the buffer as rows, the last one padded."""
        if self.buffer:
            self.buffer.extend([self.pad_id] * (-len(self.buffer) % self.max_length))
            table = _packed_table(self.buffer, self.max_length)
            self.buffer = array("i")
            yield table


def _packed_table(tokens: array, max_length: int) -> pa.Table:
    """An `input_ids` table of rows of `max_length` tokens, typed list<int32> as `Dataset.from_list` types it."""
    import numpy as np
    import pyarrow as pa

    values = pa.array(np.frombuffer(tokens, dtype=np.intc))
    offsets = pa.array(np.arange(0, len(tokens) + 1, max_length, dtype=np.int32))
    return pa.Table.from_arrays([pa.ListArray.from_arrays(offsets, values)], names=["input_ids"])


class Progress:
    """Done, rate and ETA per source in the log, every `interval` seconds."""

    def __init__(self, stats: MixtureStats, log: Callable[[str], None] | None, interval: float = PROGRESS_SECONDS):
        self.stats, self.log, self.interval = stats, log, interval
        self.started = self.last = time.monotonic()
        self.done_at_start = {name: self._done(source) for name, source in stats.sources.items()}

    def _done(self, source: SourceStats) -> int:
        return source.tokens if self.stats.unit == "tokens" else source.rows_used

    def tick(self, force: bool = False) -> None:
        """Log a progress line when the interval has passed (or when forced)."""
        now = time.monotonic()
        if self.log is None or (not force and now - self.last < self.interval):
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        parts = []
        for name, source in self.stats.sources.items():
            done = self._done(source)
            rate = (done - self.done_at_start[name]) / elapsed
            left = max(source.target - done, 0)
            eta = f"{left / rate:,.0f} s" if rate > 0 else ("done" if not left else "unknown")
            parts.append(f"{name} {done:,}/{source.target:,} {self.stats.unit} ({rate:,.0f}/s, ETA {eta})")
        self.log("mixture progress: " + "; ".join(parts))


def write_mixture(
    datasets_and_ratios: Sequence[Mapping[str, Any]],
    total_sample_size: int,
    processing_class: PreTrainedTokenizerBase,
    output_dir: str | Path,
    kind: str = "pretrain",
    dataset_text_field: str = "text",
    max_length: int = 2048,
    formatting_func: Formatter | None = None,
    dataset_num_proc: int | None = None,
    seed: int = 233,
    test_size: float = 0.02,
    shard_rows: int = SHARD_ROWS,
    resume_key: str | None = None,
    log: Callable[[str], None] | None = None,
) -> MixtureStats:
    """Mix datasets by ratio into `output_dir` (the `save_to_disk` layout of a train/test `DatasetDict`).

    `datasets_and_ratios` holds entries `{"name": str, "dataset": iterable of rows, "ratio": float}` (or the
    seed's `{name: ratio, "dataset": ...}`); rows follow the Hub schema of `name` (a key of the dataset
    registry) and should already be shuffled (see `sources.open_source`). `kind` is `pretrain` (ratios and
    `total_sample_size` in tokens, packed rows of `max_length`) or `sft`, `dpo`, `distill`, `grpo` (ratios and
    size in examples; examples longer than `max_length` tokens after the chat template are dropped and
    replaced). Tokenizing runs in `dataset_num_proc` processes (default: the cores available). A folder
    holding a checkpoint of the same mixture (`resume_key`, by default derived from the arguments) is
    continued from its last shard. Returns the realised stats, also saved as `mixture_stats.json`.
    """
    entries = [_normalise_entry(entry) for entry in datasets_and_ratios]
    ratios = {entry["name"]: float(entry["ratio"]) for entry in entries}
    if abs(sum(ratios.values()) - 1.0) > 1e-6:
        raise MixingError(f"ratios sum to {sum(ratios.values()):g}, they must sum to 1: {ratios}")
    if total_sample_size <= 0:
        raise MixingError(f"total_sample_size must be positive, got {total_sample_size}")
    if processing_class.pad_token_id is None or processing_class.pad_token_id == processing_class.eos_token_id:
        raise MixingError("the tokenizer's pad token must exist and differ from EOS, or EOS is never trained")
    if not 0 < test_size < 1:
        raise MixingError(f"test_size must be between 0 and 1, got {test_size}")
    targets = split_counts(total_sample_size, ratios)
    pretrain = kind == "pretrain"
    key = resume_key or content_version(
        "mixture", sorted(ratios.items()), total_sample_size, kind, dataset_text_field, max_length, seed, test_size,
        shard_rows, _tokenizer_fingerprint(processing_class),
    )
    writer = MixtureWriter(Path(output_dir) / STREAM_DIR, key, seed, shard_rows)
    saved = writer.resume() or {}
    if saved and log:
        log(f"resuming the mixture from its checkpoint: {writer.rows():,} rows already written")
    stats = MixtureStats(unit="tokens" if pretrain else "examples", requested_ratios=ratios)
    for entry in entries:
        name = entry["name"]
        previous = saved.get("sources", {}).get(name)
        stats.sources[name] = SourceStats(**previous["stats"]) if previous else SourceStats(target=targets[name])
    num_proc = dataset_num_proc or available_cores()
    with BatchMapper(processing_class, num_proc, needs_full_tokenizer=not pretrain) as mapper:
        consumed = {name: saved.get("sources", {}).get(name, {}).get("consumed", 0) for name in ratios}
        if pretrain:
            sources = {
                entry["name"]: DocumentSource(entry["name"], entry["dataset"], dataset_text_field, processing_class.eos_token_id,
                                              targets[entry["name"]], stats.sources[entry["name"]], mapper, consumed[entry["name"]])
                for entry in entries
            }
        else:
            sources = {
                entry["name"]: ExampleSource(entry["name"], entry["dataset"], targets[entry["name"]], stats.sources[entry["name"]],
                                             mapper, max_length, formatting_func, consumed[entry["name"]])
                for entry in entries
            }
        # Pretraining draws documents from the sources at random; examples are taken source after source and
        # shuffled as a whole (`_split`), so they need no interleaving state.
        interleaver = Interleaver(targets, seed, saved.get("interleave")) if pretrain else None
        progress = Progress(stats, log)

        def checkpoint(carry: array | None = None) -> None:
            if carry is not None:
                writer.carry_path(CARRY_FILE).parent.mkdir(parents=True, exist_ok=True)
                writer.carry_path(CARRY_FILE).write_bytes(carry.tobytes())
            writer.checkpoint({
                "sources": {name: {"consumed": source.consumed, "stats": vars(stats.sources[name])} for name, source in sources.items()},
                "interleave": interleaver.state() if interleaver else None,
            })

        streams = {name: iter(source) for name, source in sources.items()}
        if pretrain:
            carry = array("i")
            if saved and writer.carry_path(CARRY_FILE).is_file():
                carry.frombytes(writer.carry_path(CARRY_FILE).read_bytes())
            packer = Packer(max_length, processing_class.pad_token_id, min(CHUNK_ROWS, shard_rows), carry)
            _write_packed(interleaver.draw(streams), packer, writer, lambda: checkpoint(packer.buffer), progress)
        else:
            # Sources one after the other: the rows are shuffled as a whole below.
            _write_examples(itertools.chain.from_iterable(streams.values()), writer, checkpoint, progress,
                            min(CHUNK_ROWS, shard_rows))
    progress.tick(force=True)
    splits = _split(writer.finish(), seed, test_size, shuffle=not pretrain)
    stats.train_rows, stats.test_rows = len(splits["train"]), len(splits["test"])
    splits.save_to_disk(str(output_dir))
    del splits
    for split in ("train", "test"):  # datasets fingerprints by file path: make the saved files path-independent
        state_file = Path(output_dir) / split / "state.json"
        state = json.loads(state_file.read_text())
        state["_fingerprint"] = content_version(key, split)[:16]
        state_file.write_text(json.dumps(state, indent=2, sort_keys=True))
    shutil.rmtree(Path(output_dir) / STREAM_DIR, ignore_errors=True)
    (Path(output_dir) / STATS_FILE).write_text(json.dumps(stats.to_dict(), indent=2))
    return stats


def _split(stream: Dataset, seed: int, test_size: float, shuffle: bool) -> DatasetDict:
    """The train/test splits of the written stream, by index permutations over its memory-mapped shards.

    Example mixtures are shuffled as a whole (`random.Random(seed).shuffle` of the row indices: 8 bytes a row,
    never the rows); then `datasets`' seeded `train_test_split`. Only index arrays are held, and the rows are
    copied once, in that order, when the splits are saved.
    """
    rows = len(stream)
    if shuffle:
        order = list(range(rows))
        random.Random(seed).shuffle(order)
        stream = stream.select(order)
    if rows < 2 or math.ceil(test_size * rows) >= rows:
        raise MixingError(f"the mixture has {rows} row(s): too few for a train and a test split; raise total_size")
    return stream.train_test_split(test_size=test_size, seed=seed)


def _write_packed(documents: Iterator[array], packer: Packer, writer: MixtureWriter, checkpoint, progress: Progress) -> None:
    def hand_over(tables: Iterator[pa.Table]) -> None:
        for table in tables:
            if writer.add(table):
                checkpoint()
            progress.tick()

    hand_over(packer.chunks())  # a resumed build's carried tokens first
    for ids in documents:
        packer.add(ids)
        hand_over(packer.chunks())
    hand_over(packer.finish())


def _write_examples(examples: Iterator[Row], writer: MixtureWriter, checkpoint, progress: Progress, chunk_rows: int) -> None:
    import pyarrow as pa

    for chunk in _batched(examples, chunk_rows):
        if writer.add(pa.Table.from_pylist(chunk)):
            checkpoint()
        progress.tick()


def _tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    content = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    return content_version(content, getattr(tokenizer, "chat_template", None))


def mix_datasets_by_ratio(
    datasets_and_ratios: Sequence[Mapping[str, Any]],
    total_sample_size: int,
    processing_class: PreTrainedTokenizerBase,
    dataset_text_field: str = "text",
    max_length: int = 2048,
    packing: bool = True,
    formatting_func: Formatter | None = None,
    dataset_num_proc: int | None = None,
    seed: int = 233,
    cache_dir: str | None = None,
    kind: str | None = None,
    test_size: float = 0.02,
) -> DatasetDict:
    """The seed's call: mix named datasets by ratio and return a train/test `DatasetDict` (memory-mapped).

    Works as the SmallDoge guide writes it: `datasets_and_ratios=[{"fineweb-edu": 0.7}, ...]` names datasets
    of the registry, and the library opens them itself (see `sources.open_named_source`: the Hub, a local
    mirror from `DOGE_DATA_MIRROR`, or generated data with `DOGE_DATA_GENERATED=<rows>`); an entry may also
    bring its own rows as `"dataset"`. `kind` defaults to `pretrain` with `packing=True` and to the kind of
    the named datasets otherwise. The mixture is written under `cache_dir` (default: a temporary folder), so
    a repeated or interrupted call continues from what is there. Save it with `save_to_disk` as usual.
    """
    from doge_dagster.data.sources import open_named_source

    entries = []
    for entry in datasets_and_ratios:
        normalised = _normalise_entry(entry, require_dataset=False)
        if normalised["dataset"] is None:
            normalised["dataset"] = open_named_source(normalised["name"], seed, cache_dir)
        entries.append(normalised)
    kind = kind or _default_kind([entry["name"] for entry in entries], packing)
    base = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "doge-mixtures"
    key = content_version(
        "mixture", [(entry["name"], float(entry["ratio"])) for entry in entries], total_sample_size, kind,
        dataset_text_field, max_length, seed, test_size, _tokenizer_fingerprint(processing_class),
        getattr(formatting_func, "__qualname__", None),
    )
    folder = base / "mixtures" / key
    if not (folder / STATS_FILE).is_file():
        write_mixture(
            entries, total_sample_size, processing_class, folder, kind=kind, dataset_text_field=dataset_text_field,
            max_length=max_length, formatting_func=formatting_func, dataset_num_proc=dataset_num_proc, seed=seed,
            test_size=test_size, resume_key=key, log=print,
        )
    return load_mixture(folder)


mix_datasets_by_radio = mix_datasets_by_ratio  # the seed's spelling


def _default_kind(names: list[str], packing: bool) -> str:
    kinds = {dataset_spec(name).kind for name in names}
    if kinds == {"text"}:
        if not packing:
            raise MixingError("text datasets are pretraining data: they are always packed; pass packing=True")
        return "pretrain"
    by_dataset_kind = {"conversation": "sft", "preference": "dpo", "reasoning": "distill", "math_problem": "grpo"}
    if len(kinds) != 1 or next(iter(kinds)) not in by_dataset_kind:
        raise MixingError(f"datasets of different kinds cannot be mixed: {sorted(kinds)}")
    return by_dataset_kind[next(iter(kinds))]


def _normalise_entry(entry: Mapping[str, Any], require_dataset: bool = True) -> dict[str, Any]:
    if "name" in entry and "ratio" in entry and ("dataset" in entry or not require_dataset):
        return {"name": entry["name"], "ratio": entry["ratio"], "dataset": entry.get("dataset")}
    names = [key for key in entry if key != "dataset"]
    if len(names) != 1 or ("dataset" not in entry and require_dataset):
        raise MixingError(f"each entry needs name, ratio and dataset; got keys {sorted(entry)}")
    return {"name": names[0], "ratio": entry[names[0]], "dataset": entry.get("dataset")}


