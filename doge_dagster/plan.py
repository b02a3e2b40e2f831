"""The asset graph as data, and the version of every node of a recipe.

A node's version hashes its code version, its recipe section and its upstream versions (sources
included), so it is a pure function of the recipe and the source data. Any process (a Dagster step,
a training node, the lineage CLI) computes the same versions without asking Dagster, and a stage never
reads an upstream artifact of a different version than the one its recipe implies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from doge_dagster.data.registry import dataset_spec
from doge_dagster.recipes import MIXTURE_KINDS, Recipe, SourceRef, content_version


@dataclass(frozen=True)
class Node:
    """One artifact-producing asset: recipe sections it reads, upstream assets, code version."""

    name: str
    group: str
    sections: tuple[str, ...]
    upstream: tuple[str, ...]
    code_version: str
    description: str


MIXTURE_DESCRIPTIONS = {
    "pretrain": "Tokenized, packed pretraining rows mixed by token ratio (fineweb-edu / cosmopedia-v2 / python-edu / finemath).",
    "sft": "Chat conversations for supervised fine-tuning (smoltalk), templated length within max_length.",
    "dpo": "Preference pairs (ultrafeedback): prompt = chosen[:-1], chosen and rejected replies.",
    "distill": "Reasoning conversations (OpenThoughts) with the traces kept as <think> blocks.",
    "grpo": "Math problems (OpenR1-Math) as message-list prompts with the gold answer kept for rewards.",
}

NODES: dict[str, Node] = {
    "tokenizer": Node(
        name="tokenizer",
        group="data",
        sections=("tokenizer",),
        upstream=(),
        code_version="tokenizer-1",
        description="The recipe's tokenizer (trained BPE or loaded) with the chat template and <think> tokens.",
    ),
    **{
        f"{stage}_mixture": Node(
            name=f"{stage}_mixture",
            group="data",
            sections=(f"mixtures.{stage}",),
            upstream=("tokenizer",),
            code_version="mixture-1",
            description=description,
        )
        for stage, description in MIXTURE_DESCRIPTIONS.items()
    },
    "doge_base": Node(
        name="doge_base",
        group="pretrain",
        sections=("model", "stages.pretrain"),
        upstream=("tokenizer", "pretrain_mixture"),
        code_version="pretrain-2",
        description="Doge base model: pretraining from scratch (or continued) with the WSD schedule.",
    ),
    "doge_instruct_sft": Node(
        name="doge_instruct_sft",
        group="instruct",
        sections=("stages.sft",),
        upstream=("doge_base", "sft_mixture", "tokenizer"),
        code_version="sft-2",
        description="Supervised fine-tuning of doge_base on conversations, assistant tokens only.",
    ),
    "doge_instruct": Node(
        name="doge_instruct",
        group="instruct",
        sections=("stages.dpo",),
        upstream=("doge_instruct_sft", "dpo_mixture", "tokenizer"),
        code_version="dpo-2",
        description="Doge instruct model: DPO (sigmoid, implicit reference) of the SFT model on preference pairs.",
    ),
    "doge_reason_distill": Node(
        name="doge_reason_distill",
        group="reason",
        sections=("stages.distill",),
        upstream=("doge_instruct", "distill_mixture", "tokenizer"),
        code_version="distill-2",
        description="Distillation SFT of the instruct model on reasoning traces kept as <think> blocks.",
    ),
    "doge_reason": Node(
        name="doge_reason",
        group="reason",
        sections=("stages.grpo",),
        upstream=("doge_reason_distill", "grpo_mixture", "tokenizer"),
        code_version="grpo-2",
        description="Doge reason model: GRPO with accuracy (math-verify) and format rewards.",
    ),
    # Evaluations: lighteval reports on each model. instruct_eval / reason_eval also read the previous
    # stage's report, to compare shared tasks and gate on regressions.
    "base_eval": Node(
        name="base_eval",
        group="evaluation",
        sections=("evaluation.base",),
        upstream=("doge_base", "tokenizer"),
        code_version="eval-1",
        description="lighteval report on doge_base, beside the published SmallDoge scores for real sizes.",
    ),
    "instruct_eval": Node(
        name="instruct_eval",
        group="evaluation",
        sections=("evaluation.instruct",),
        upstream=("doge_instruct", "tokenizer", "base_eval"),
        code_version="eval-1",
        description="lighteval report on doge_instruct (chat template); gate: no regression vs base_eval on shared tasks.",
    ),
    "reason_eval": Node(
        name="reason_eval",
        group="evaluation",
        sections=("evaluation.reason",),
        upstream=("doge_reason", "tokenizer", "instruct_eval"),
        code_version="eval-1",
        description="lighteval report on doge_reason (chat template); gates: no regression vs instruct_eval, think format rate.",
    ),
}

# Training stage name -> model asset it produces.
TRAINING_ASSETS = {
    "pretrain": "doge_base",
    "sft": "doge_instruct_sft",
    "dpo": "doge_instruct",
    "distill": "doge_reason_distill",
    "grpo": "doge_reason",
}

# Evaluation name (`python -m doge_dagster.evaluation NAME`) -> report asset, and the model it evaluates.
EVALUATION_ASSETS = {"base": "base_eval", "instruct": "instruct_eval", "reason": "reason_eval"}
EVALUATED_MODELS = {"base": "doge_base", "instruct": "doge_instruct", "reason": "doge_reason"}


def ancestry(node: str) -> list[str]:
    """`node` and every node it depends on, upstream first."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        for parent in NODES[name].upstream:
            visit(parent)
        if name not in ordered:
            ordered.append(name)

    visit(node)
    return ordered


def mixture_stage(node_name: str) -> str:
    """`sft_mixture` -> `sft`."""
    return node_name.removesuffix("_mixture")


@dataclass(frozen=True)
class SourceUse:
    """A dataset as a recipe uses it, with the seed its generated rows (if any) come from."""

    ref: SourceRef
    seed: int

    @property
    def asset_name(self) -> str:
        """The observable source asset this use belongs to."""
        return dataset_spec(self.ref.dataset).asset_name


def recipe_sources(recipe: Recipe) -> dict[str, SourceUse]:
    """Every dataset the recipe reads, keyed by dataset name."""
    uses = {}
    for stage in MIXTURE_KINDS:
        mixture = getattr(recipe.mixtures, stage)
        for ref in mixture.sources:
            uses[ref.dataset] = SourceUse(ref, mixture.seed)
    return uses


def node_sources(recipe: Recipe, node: str) -> list[SourceUse]:
    """The sources a node reads directly: its mixture's, or all of them for a trained tokenizer."""
    uses = recipe_sources(recipe)
    if node == "tokenizer":
        return list(uses.values()) if recipe.tokenizer.source == "train_bpe" else []
    if node.endswith("_mixture"):
        return [uses[ref.dataset] for ref in getattr(recipe.mixtures, mixture_stage(node)).sources]
    return []


@dataclass(frozen=True)
class Planned:
    """A node's version and the versions (sources included) it was computed from."""

    node: str
    version: str
    upstream: dict[str, str] = field(default_factory=dict)
    section_version: str = ""


Fingerprint = Callable[[SourceRef, int], str]


def plan_versions(recipe: Recipe, fingerprint: Fingerprint | None = None, nodes: list[str] | None = None) -> dict[str, Planned]:
    """Versions of `nodes` (default: all) and their ancestors for this recipe."""
    if fingerprint is None:
        from doge_dagster.data.sources import source_fingerprint as fingerprint
    source_versions: dict[str, str] = {}

    def source_version(use: SourceUse) -> str:
        if use.asset_name not in source_versions:
            source_versions[use.asset_name] = fingerprint(use.ref, use.seed)
        return source_versions[use.asset_name]

    planned: dict[str, Planned] = {}

    def visit(name: str) -> Planned:
        if name in planned:
            return planned[name]
        node = NODES[name]
        upstream = {parent: visit(parent).version for parent in node.upstream}
        upstream.update({use.asset_name: source_version(use) for use in node_sources(recipe, name)})
        if name == "doge_base" and (init_version := recipe.stages.pretrain.init_base_version()):
            # A continued base model's manifest records the checkpoint it started from, so its recorded
            # lineage goes back through every earlier base model.
            upstream["doge_base"] = init_version
        section = content_version(*(recipe.section(path) for path in node.sections))
        version = content_version(node.name, node.code_version, section, upstream)
        planned[name] = Planned(name, version, upstream, section)
        return planned[name]

    for name in nodes or list(NODES):
        visit(name)
    return planned
