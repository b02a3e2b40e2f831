"""The eight datasets of the SmallDoge recipe: where they live on the Hub and what their rows look like.

Every source kind (`hub`, `local`, `generated`) yields rows in exactly these schemas, so the mixing code
never needs to know where a row came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DatasetKind = Literal["text", "conversation", "preference", "reasoning", "math_problem"]


@dataclass(frozen=True)
class DatasetSpec:
    """A seed dataset: Hub location plus the columns the pipeline reads.

    `required_columns` are the columns the mixers use; a source missing one of them is rejected before
    any work starts. `columns` lists the full Hub schema, which generated data reproduces.
    """

    name: str
    hub_id: str
    config: str | None
    split: str
    test_split: str | None
    kind: DatasetKind
    required_columns: tuple[str, ...]
    columns: tuple[str, ...]
    description: str

    @property
    def asset_name(self) -> str:
        """Name of the observable source asset for this dataset."""
        return "source_" + self.name.replace("-", "_")


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="fineweb-edu",
            hub_id="HuggingFaceTB/smollm-corpus",
            config="fineweb-edu-dedup",
            split="train",
            test_split=None,
            kind="text",
            required_columns=("text",),
            columns=("text", "id", "metadata"),
            description="Educational web pages (FineWeb-Edu, deduplicated).",
        ),
        DatasetSpec(
            name="cosmopedia-v2",
            hub_id="HuggingFaceTB/smollm-corpus",
            config="cosmopedia-v2",
            split="train",
            test_split=None,
            kind="text",
            required_columns=("text",),
            columns=("prompt", "text", "token_length", "audience", "format", "seed_data"),
            description="Synthetic textbooks and stories (Cosmopedia v2).",
        ),
        DatasetSpec(
            name="python-edu",
            hub_id="HuggingFaceTB/smollm-corpus",
            config="python-edu",
            split="train",
            test_split=None,
            kind="text",
            # The Hub config ships blob ids only (see the smollm-corpus card): a source fills `text` by
            # fetching each blob (`contents`, doge_dagster.data.blobs) or reads a mirror that carries it
            # (`repo`, kind: local). A source without `text` and without `contents` is rejected with that advice.
            required_columns=("text",),
            columns=("blob_id", "repo_name", "path", "length_bytes", "score", "int_score", "text"),
            description="Educational Python files (Stack-Edu python); needs the `text` column filled.",
        ),
        DatasetSpec(
            name="finemath",
            hub_id="HuggingFaceTB/finemath",
            config="finemath-4plus",
            split="train",
            test_split=None,
            kind="text",
            required_columns=("text",),
            columns=("url", "text", "token_count", "score", "int_score"),
            description="Mathematical web pages scored 4+ (FineMath).",
        ),
        DatasetSpec(
            name="smoltalk",
            hub_id="HuggingFaceTB/smoltalk",
            config="all",
            split="train",
            test_split="test",
            kind="conversation",
            required_columns=("messages",),
            columns=("messages", "source"),
            description="Instruction conversations (SmolTalk, all subsets).",
        ),
        DatasetSpec(
            name="ultrafeedback",
            hub_id="HuggingFaceH4/ultrafeedback_binarized",
            config=None,
            split="train_prefs",
            test_split="test_prefs",
            kind="preference",
            required_columns=("chosen", "rejected"),
            columns=("prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"),
            description="Preference pairs (UltraFeedback, binarized).",
        ),
        DatasetSpec(
            name="openthoughts",
            hub_id="open-thoughts/OpenThoughts-114k",
            config="default",
            split="train",
            test_split=None,
            kind="reasoning",
            required_columns=("conversations",),
            columns=("system", "conversations"),
            description="Reasoning traces distilled from DeepSeek-R1 (OpenThoughts-114k).",
        ),
        DatasetSpec(
            name="openr1-math",
            hub_id="open-r1/OpenR1-Math-220k",
            config="default",
            split="train",
            test_split=None,
            kind="math_problem",
            required_columns=("problem", "answer"),
            columns=("problem", "solution", "answer", "problem_type", "question_type", "source", "uuid"),
            description="Math problems with verifiable answers (OpenR1-Math-220k).",
        ),
    )
}


def dataset_spec(name: str) -> DatasetSpec:
    """Look up a seed dataset by name, with the list of known names in the error."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}") from None
