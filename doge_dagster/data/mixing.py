"""Mix datasets by ratio into a train/test `DatasetDict`, one function for every stage's data.

Fixes of the seed's mixer, each tested:
- seeded random sampling (a shuffled stream), never the first N rows;
- sampling before tokenizing: a source is read and tokenized only as far as its share needs, so
  memory stays flat however large the source is;
- the ratio unit is explicit and honoured: tokens for pretraining, examples for the other kinds;
- the caller's `datasets_and_ratios` is never mutated;
- packed pretraining rows put an EOS after every document, and pad differs from EOS, so EOS is trained;
- reasoning traces are kept (as `<think>` blocks) and GRPO prompts are message lists with the gold
  answer kept beside them for the reward functions.
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from doge_dagster.registry import dataset_spec

if TYPE_CHECKING:
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
MIN_ENCODE = 64  # fewest texts tokenized in one call (see `_document_stream`)
MATERIALISE_ROWS = 10_000  # rows per Arrow table while the mixture is built


class MixingError(ValueError):
    """The sources cannot provide what the mixture asks for."""


@dataclass
class SourceStats:
    """What one source contributed: rows read, rows/tokens used, rows dropped as too long."""

    rows_read: int = 0
    rows_used: int = 0
    tokens: int = 0
    dropped_too_long: int = 0
    target: int = 0


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


def _batch_encoder(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[str]], list[list[int]]]:
    """`texts -> token ids` without special tokens, the same ids as `tokenizer(texts, add_special_tokens=False)`.

    For a plain fast tokenizer, whose `__call__` comes down to the Rust backend's `encode_batch`, the backend is
    called directly (`encode_batch_fast`, no offsets): the per-text `BatchEncoding` conversion cost about a third
    of the tokenizing time. Anything else (subclasses with their own encoding, backend truncation or padding
    left on) goes through `__call__`.
    """
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

    def call(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    cls, backend = type(tokenizer), getattr(tokenizer, "backend_tokenizer", None)
    plain = (
        isinstance(tokenizer, PreTrainedTokenizerFast)
        and cls.__call__ is PreTrainedTokenizerBase.__call__
        and cls._encode_plus is PreTrainedTokenizerFast._encode_plus
        and not hasattr(tokenizer, "_switch_to_input_mode")
        and backend is not None
        and backend.truncation is None
        and backend.padding is None
        and backend.encode_special_tokens == bool(tokenizer.split_special_tokens)
    )
    if not plain:
        return call
    encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)

    def direct(texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in encode_batch(texts, add_special_tokens=False)]

    return direct


def _document_stream(
    name: str, rows: Iterable[Row], text_field: str, tokenizer: PreTrainedTokenizerBase, budget: int, stats: SourceStats
) -> Iterator[list[int]]:
    """Token ids of documents (EOS appended), tokenized batch by batch, until `budget` tokens are out.

    Rows are read `TOKENIZE_BATCH` at a time, but tokenized only as far as the budget is likely to need:
    a first slice of `MIN_ENCODE` texts, then the rows the rest of the budget needs at the source's mean
    document length so far, plus a fifth; so the last batch of a source is not tokenized in vain.
    """
    eos = tokenizer.eos_token_id
    encode = _batch_encoder(tokenizer)
    remaining = budget
    for texts in _text_batches(rows, text_field, TOKENIZE_BATCH):
        stats.rows_read += len(texts)
        start = 0
        while start < len(texts):
            needed = math.ceil(1.2 * remaining * stats.rows_used / stats.tokens) if stats.tokens else 0
            stop = start + max(MIN_ENCODE, needed)
            for ids in encode(texts[start:stop]):
                ids.append(eos)
                if len(ids) >= remaining:
                    ids = ids[:remaining]
                remaining -= len(ids)
                stats.rows_used += 1
                stats.tokens += len(ids)
                yield ids
                if remaining == 0:
                    return
            start = stop
    raise MixingError(
        f"source {name!r} ran out after {stats.rows_read} rows and {stats.tokens} tokens of the "
        f"{budget} it must contribute; lower total_size or give the source more rows"
    )


def _pack(documents: Iterable[list[int]], max_length: int, pad_id: int) -> Iterator[Dataset]:
    """Concatenate documents (each ends with EOS) and cut rows of exactly `max_length`; pad the last.

    Tokens gather in a flat C int buffer (not Python lists) and leave as `input_ids` datasets of up to
    `MATERIALISE_ROWS` rows, built straight from Arrow buffers.
    """
    rows_per_part = max(1, min(MATERIALISE_ROWS, (2**31 - 1) // max_length))  # int32 list offsets
    part_tokens = rows_per_part * max_length
    buffer = array("i")
    for ids in documents:
        buffer.extend(ids)
        if len(buffer) >= part_tokens:
            yield _packed_dataset(buffer[:part_tokens], max_length)
            del buffer[:part_tokens]
    if buffer:
        buffer.extend([pad_id] * (-len(buffer) % max_length))
        yield _packed_dataset(buffer, max_length)


def _packed_dataset(tokens: array, max_length: int) -> Dataset:
    """An `input_ids` dataset of rows of `max_length` tokens, typed list<int32> as `Dataset.from_list` types it."""
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    values = pa.array(np.frombuffer(tokens, dtype=np.intc))
    offsets = pa.array(np.arange(0, len(tokens) + 1, max_length, dtype=np.int32))
    table = pa.Table.from_arrays([pa.ListArray.from_arrays(offsets, values)], names=["input_ids"])
    return Dataset(InMemoryTable(table))


def _interleave(streams: dict[str, Iterator[list[int]]], weights: dict[str, int], seed: int) -> Iterator[list[int]]:
    """Draw documents from the sources at random, weighted by their token budgets (seeded)."""
    rng = random.Random(seed)
    live = dict(streams)
    names = list(live)
    # `choices(weights=w)` accumulates `w` on every call; passing the sums draws exactly the same.
    cum_weights = list(accumulate(weights[n] for n in names))
    while live:
        name = rng.choices(names, cum_weights=cum_weights)[0]
        try:
            yield next(live[name])
        except StopIteration:
            del live[name]
            names = list(live)
            cum_weights = list(accumulate(weights[n] for n in names))


def mix_datasets_by_ratio(
    datasets_and_ratios: Sequence[Mapping[str, Any]],
    total_sample_size: int,
    processing_class: PreTrainedTokenizerBase,
    kind: str = "pretrain",
    dataset_text_field: str = "text",
    max_length: int = 2048,
    packing: bool = True,
    formatting_func: Formatter | None = None,
    dataset_num_proc: int | None = None,
    seed: int = 233,
    cache_dir: str | None = None,
    test_size: float = 0.02,
) -> tuple[DatasetDict, MixtureStats]:
    """Mix datasets by ratio into a `DatasetDict` with `train` and `test` splits.

    `datasets_and_ratios` holds entries `{"name": str, "dataset": iterable of rows, "ratio": float}`
    (or the seed's `{name: ratio}` plus `"dataset"`); rows follow the Hub schema of `name` (a key of
    the dataset registry) and should already be shuffled (see `sources.open_source`).
    `dataset_num_proc` and `cache_dir` are accepted for the seed's signature; streaming makes them moot.
    `kind` is `pretrain` (ratios and `total_sample_size` in tokens, packed rows of `max_length`) or
    `sft`, `dpo`, `distill`, `grpo` (ratios and size in examples; examples longer than `max_length`
    tokens after the chat template are dropped and replaced). Returns the splits and the realised stats.
    """
    entries = [_normalise_entry(entry) for entry in datasets_and_ratios]
    ratios = {entry["name"]: float(entry["ratio"]) for entry in entries}
    if abs(sum(ratios.values()) - 1.0) > 1e-6:
        raise MixingError(f"ratios sum to {sum(ratios.values()):g}, they must sum to 1: {ratios}")
    if total_sample_size <= 0:
        raise MixingError(f"total_sample_size must be positive, got {total_sample_size}")
    if processing_class.pad_token_id is None or processing_class.pad_token_id == processing_class.eos_token_id:
        raise MixingError("the tokenizer's pad token must exist and differ from EOS, or EOS is never trained")
    stats = MixtureStats(unit="tokens" if kind == "pretrain" else "examples", requested_ratios=ratios)
    targets = split_counts(total_sample_size, ratios)
    if kind == "pretrain":
        parts = _pretrain_parts(entries, targets, stats, processing_class, dataset_text_field, max_length, seed)
    else:
        rows = _example_rows(entries, targets, stats, processing_class, kind, max_length, formatting_func, seed)
        parts = _example_parts(rows)
    dataset = _materialise(parts)
    splits = dataset.train_test_split(test_size=test_size, seed=seed) if len(dataset) > 1 else None
    if splits is None or len(splits["test"]) == 0 or len(splits["train"]) == 0:
        raise MixingError(f"the mixture has {len(dataset)} row(s): too few for a train and a test split; raise total_size")
    stats.train_rows, stats.test_rows = len(splits["train"]), len(splits["test"])
    return splits, stats


def _normalise_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    if "name" in entry and "ratio" in entry:
        return {"name": entry["name"], "ratio": entry["ratio"], "dataset": entry["dataset"]}
    names = [key for key in entry if key != "dataset"]
    if len(names) != 1 or "dataset" not in entry:
        raise MixingError(f"each entry needs name, ratio and dataset; got keys {sorted(entry)}")
    return {"name": names[0], "ratio": entry[names[0]], "dataset": entry["dataset"]}


def _pretrain_parts(entries, targets, stats, tokenizer, text_field, max_length, seed) -> Iterator[Dataset]:
    streams = {}
    for entry in entries:
        name = entry["name"]
        stats.sources[name] = SourceStats(target=targets[name])
        if targets[name] > 0:
            streams[name] = _document_stream(name, entry["dataset"], text_field, tokenizer, targets[name], stats.sources[name])
    documents = _interleave(streams, targets, seed)
    return _pack(documents, max_length, tokenizer.pad_token_id)


def _example_rows(entries, targets, stats, tokenizer, kind, max_length, formatting_func, seed) -> Iterator[Row]:
    chosen: list[Row] = []
    for entry in entries:
        name = entry["name"]
        spec = dataset_spec(name)
        source_stats = stats.sources[name] = SourceStats(target=targets[name])
        # Stop right after the batch that meets the target: checking before pulling the next batch
        # read (and, for a Hub stream, downloaded) a whole extra batch for nothing.
        for batch in _batched(entry["dataset"] if targets[name] > 0 else (), TOKENIZE_BATCH):
            source_stats.rows_read += len(batch)
            examples = [convert_row(spec.kind, row) for row in batch]
            if formatting_func is not None:
                examples = [formatting_func(example) for example in examples]
            for example, length in zip(examples, _example_lengths(tokenizer, examples)):
                if source_stats.rows_used >= targets[name]:
                    break
                if length > max_length:
                    source_stats.dropped_too_long += 1
                    continue
                source_stats.rows_used += 1
                source_stats.tokens += length
                chosen.append({**example, "source": name})
            if source_stats.rows_used >= targets[name]:
                break
        if source_stats.rows_used < targets[name]:
            raise MixingError(
                f"source {name!r} gave {source_stats.rows_used} usable examples of the {targets[name]} asked "
                f"({source_stats.dropped_too_long} longer than max_length {max_length}); lower total_size, raise "
                "max_length or give the source more rows"
            )
    random.Random(seed).shuffle(chosen)
    return iter(chosen)


def _example_lengths(tokenizer: PreTrainedTokenizerBase, examples: list[Row]) -> list[int]:
    """Token length of each example as its trainer will see it (longest sequence for preference pairs)."""
    if "messages" in examples[0]:
        conversations = [example["messages"] for example in examples]
    elif "chosen" in examples[0]:
        conversations = [example["prompt"] + example[side] for example in examples for side in ("chosen", "rejected")]
    else:
        conversations = [example["prompt"] for example in examples]
    texts = tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt="answer" in examples[0])
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    if "chosen" in examples[0]:
        return [max(lengths[index], lengths[index + 1]) for index in range(0, len(lengths), 2)]
    return lengths


def _example_parts(rows: Iterator[Row]) -> Iterator[Dataset]:
    """Datasets of up to `MATERIALISE_ROWS` examples, so rows never pile up as Python objects."""
    from datasets import Dataset

    for batch in _batched(rows, MATERIALISE_ROWS):
        yield Dataset.from_list(batch)


def _materialise(parts: Iterator[Dataset]) -> Dataset:
    """One dataset from the mixture's parts, in order."""
    from datasets import concatenate_datasets

    tables = list(parts)
    if not tables:
        raise MixingError("the mixture is empty: every source contributed nothing")
    return concatenate_datasets(tables) if len(tables) > 1 else tables[0]
