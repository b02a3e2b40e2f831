"""Build the data artifacts of a recipe into a staging folder: the tokenizer and the five mixtures.

These are the bodies of the data assets, free of Dagster so they run (and are tested) anywhere.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from doge_dagster.data.blobs import BlobFetchStats
from doge_dagster.data.mixing import STATS_FILE, MixtureStats, formatter_for, write_mixture
from doge_dagster.data.shards import load_mixture
from doge_dagster.data.sources import open_source
from doge_dagster.data.tokenizer import check_against_model, load_tokenizer, train_bpe, training_texts
from doge_dagster.recipes import Recipe, node_sources
from doge_dagster.registry import dataset_spec
from doge_dagster.stages import Mixture

PREVIEW_ROWS = 5


class DataBuildError(ValueError):
    """A data artifact cannot be built as the recipe asks."""


def build_tokenizer(recipe: Recipe, out_dir: Path) -> dict[str, Any]:
    """Train or load the tokenizer, check it fits the model recipe, save it; return its summary."""
    if recipe.tokenizer.source == "train_bpe":
        samples = recipe.tokenizer.train_samples
        rows_by_source = [_text_columns(use, samples) for use in node_sources(recipe, "tokenizer")]
        tokenizer = train_bpe(training_texts(rows_by_source), recipe.tokenizer)
    else:
        tokenizer = load_tokenizer(recipe.tokenizer)
    problems = check_against_model(tokenizer, recipe.model)
    if problems:
        raise DataBuildError("tokenizer and model recipe disagree: " + "; ".join(problems))
    tokenizer.save_pretrained(out_dir)
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "think_tokens_special": any(token in tokenizer.all_special_tokens for token in ("<think>", "</think>")),
        "sample_encoding": tokenizer.tokenize("What is 3 + 4? <think>3 + 4 = 7</think> 7"),
    }


def _text_columns(use, samples: int):
    columns = dataset_spec(use.ref.dataset).required_columns
    for row in itertools.islice(open_source(use.ref, use.seed), samples):
        yield {column: row[column] for column in columns}


def load_saved_tokenizer(folder: Path):
    """Load a tokenizer artifact (plain `AutoTokenizer`, no remote code)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def build_mixture(
    recipe: Recipe, kind: Mixture, tokenizer_dir: Path, out_dir: Path, resume_key: str, log: Callable[[str], None] | None = None
) -> tuple[MixtureStats, list[dict]]:
    """Mix the sources of mixture `kind` into `out_dir` (a train/test `DatasetDict` and its stats), continuing a
    checkpoint of the same `resume_key` found there; return the stats and a preview."""
    mixture = recipe.section(f"mixtures.{kind.name}")
    tokenizer = load_saved_tokenizer(tokenizer_dir)
    uses = node_sources(recipe, kind.asset)
    blob_stats = {use.ref.dataset: BlobFetchStats() for use in uses if use.ref.contents is not None}
    entries = [
        {
            "name": use.ref.dataset,
            "ratio": use.ref.ratio,
            "dataset": open_source(use.ref, mixture.seed, mixture.shuffle_buffer, blob_stats=blob_stats.get(use.ref.dataset)),
        }
        for use in uses
    ]
    stats = write_mixture(
        entries,
        total_sample_size=mixture.total_size,
        processing_class=tokenizer,
        output_dir=out_dir,
        kind="pretrain" if kind.packed else kind.name,
        max_length=mixture.max_length,
        formatting_func=formatter_for(mixture.formatting, mixture.system_prompt),
        dataset_num_proc=mixture.dataset_num_proc,
        seed=mixture.seed,
        test_size=mixture.test_size,
        shard_rows=mixture.shard_rows,
        resume_key=resume_key,
        log=log,
    )
    for name, counts in blob_stats.items():
        stats.sources[name].blob_fetch = {key: value for key, value in vars(counts).items() if key != "last_failure"}
    return stats, preview_rows(load_mixture(out_dir)["train"], tokenizer, kind.packed)


def preview_rows(dataset, tokenizer, packed: bool, count: int = PREVIEW_ROWS) -> list[dict]:
    """A few decoded rows for the UI: what the model will actually read."""
    rows = []
    for row in dataset.select(range(min(count, len(dataset)))):
        if packed:
            text = tokenizer.decode(row["input_ids"][:96])
            rows.append({"source": "packed", "text": text})
        elif "messages" in row:
            rows.append(
                {"source": row["source"], "text": tokenizer.apply_chat_template(row["messages"], tokenize=False)}
            )
        elif "chosen" in row:
            rows.append(
                {
                    "source": row["source"],
                    "text": f"{row['prompt'][-1]['content']} | chosen: {row['chosen'][0]['content']} | rejected: {row['rejected'][0]['content']}",
                }
            )
        else:
            rows.append({"source": row["source"], "text": f"{row['prompt'][-1]['content']} | answer: {row['answer']}"})
    return rows


def check_mixture(folder: Path, kind: Mixture, vocab_size: int, ratio_tolerance: float) -> dict[str, tuple[bool, str]]:
    """The mixture's asset checks (`kind.checks`), computed from the saved artifact: name -> (passed, description)."""
    from datasets import load_from_disk

    splits = load_from_disk(str(folder))
    stats = json.loads((folder / STATS_FILE).read_text())
    results: dict[str, tuple[bool, str]] = {}
    error = max(
        abs(stats["realised_ratios"].get(name, 0.0) - ratio) for name, ratio in stats["requested_ratios"].items()
    )
    results["ratios_within_tolerance"] = (
        error <= ratio_tolerance,
        f"largest ratio error {error:.4f} ({stats['unit']}) against tolerance {ratio_tolerance}",
    )
    sizes = {name: len(split) for name, split in splits.items()}
    results["no_empty_split"] = (
        set(sizes) == {"train", "test"} and all(sizes.values()),
        f"split sizes {sizes}",
    )
    expected = kind.columns
    actual = {name: sorted(split.column_names) for name, split in splits.items()}
    results["schema"] = (
        all(columns == sorted(expected) for columns in actual.values()),
        f"columns {actual}, expected {sorted(expected)}",
    )
    if "token_ids_below_vocab" in kind.checks:
        top = max(max(max(ids) for ids in split["input_ids"]) for split in splits.values())
        results["token_ids_below_vocab"] = (top < vocab_size, f"largest token id {top}, vocab size {vocab_size}")
    return {name: results[name] for name in kind.checks}
