"""The asset graph as data, and the version of every node of a recipe.

A node's version hashes its code version, its recipe section and its upstream versions (sources
included), so it is a pure function of the recipe and the source data. Any process (a Dagster step,
a training node, the lineage CLI) computes the same versions without asking Dagster, and a stage never
reads an upstream artifact of a different version than the one its recipe implies.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from doge_dagster.recipe_sections import PretrainStage
from doge_dagster.recipes import (
    Recipe,
    SourceRef,
    SourceUse,
    StageRecipe,
    content_version,
    node_sources,
    recipe_sources,
)
from doge_dagster.stages import CHAIN, Chain


@dataclass(frozen=True)
class Node:
    """One artifact-producing asset: recipe sections it reads, upstream assets, code version."""

    name: str
    group: str
    sections: tuple[str, ...]
    upstream: tuple[str, ...]
    code_version: str
    description: str


RELEASE_GROUP = "release"  # outside `full_pipeline` and every automation: releasing is a user's decision

TOKENIZER = Node(
    name="tokenizer",
    group="data",
    sections=("tokenizer",),
    upstream=(),
    code_version="tokenizer-1",
    description="The recipe's tokenizer (trained BPE or loaded) with the chat template and <think> tokens.",
)


@functools.cache
def chain_nodes(chain: Chain) -> dict[str, Node]:
    """Every node of a chain by asset name: the tokenizer, then its mixtures, stages, reports and releases."""
    stages = {stage.name: stage for stage in chain.stages}
    reports = {report.name: report for report in chain.reports}
    nodes = {"tokenizer": TOKENIZER}
    for mixture in chain.mixtures:
        nodes[mixture.asset] = Node(
            mixture.asset, "data", (f"mixtures.{mixture.name}",), ("tokenizer",), "mixture-2", mixture.description
        )
    for stage in chain.stages:
        mixture = chain.mixture(stage.mixture).asset
        upstream = (stages[stage.parent].asset, mixture, "tokenizer") if stage.parent else ("tokenizer", mixture)
        sections = (*stage.sections, stage.section)
        nodes[stage.asset] = Node(stage.asset, stage.group, sections, upstream, stage.code_version, stage.description)
    for report in chain.reports:
        # A report also reads the report it compares with, to gate on regressions of shared tasks.
        compared = (reports[report.compares_with].asset,) if report.compares_with else ()
        upstream = (stages[report.model_stage].asset, "tokenizer", *compared)
        nodes[report.asset] = Node(
            report.asset, "evaluation", (report.section,), upstream, report.code_version, report.description
        )
    for release in chain.releases:
        # The report is an input, so the gates of its whole recorded lineage hold before anything is released;
        # the base release's section is read too, since its repo id is the card's `base_model`.
        upstream = (stages[release.model_stage].asset, reports[release.report].asset, "tokenizer")
        base = (chain.release(release.base_release).section,) if release.base_release else ()
        nodes[release.asset] = Node(
            release.asset, RELEASE_GROUP, (*base, release.section), upstream, release.code_version, release.description
        )
    return nodes


NODES = chain_nodes(CHAIN)


def ancestry(node: str, nodes: dict[str, Node] = NODES) -> list[str]:
    """`node` and every node it depends on, upstream first."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        for parent in nodes[name].upstream:
            visit(parent)
        if name not in ordered:
            ordered.append(name)

    visit(node)
    return ordered


def source_versions(recipe: Recipe, names: set[str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Each dataset's version (Hub commit or content hash) as the recipe reads it, and the datasets whose
    version cannot be determined now with the reason (e.g. the Hub unreachable for an unpinned source).
    `names` limits both to those datasets (default: every dataset the recipe reads)."""
    from doge_dagster.data.sources import SourceError, source_fingerprint

    versions, errors = {}, {}
    for name, use in recipe_sources(recipe).items():
        if names is not None and name not in names:
            continue
        try:
            versions[name] = source_fingerprint(use.ref, use.seed)
        except SourceError as error:
            errors[name] = str(error)
    return versions, errors


@dataclass(frozen=True)
class Planned:
    """A node's version and the versions (sources included) it was computed from."""

    node: str
    version: str
    upstream: dict[str, str] = field(default_factory=dict)
    section_version: str = ""


Fingerprint = Callable[[SourceRef, int], str]


def plan_versions(
    recipe: Recipe, fingerprint: Fingerprint | None = None, nodes: list[str] | None = None
) -> dict[str, Planned]:
    """Versions of `nodes` (default: all) and their ancestors for this recipe."""
    if fingerprint is None:
        from doge_dagster.data.sources import source_fingerprint as fingerprint
    source_versions: dict[str, str] = {}

    def source_version(use: SourceUse) -> str:
        if use.asset_name not in source_versions:
            source_versions[use.asset_name] = fingerprint(use.ref, use.seed)
        return source_versions[use.asset_name]

    planned: dict[str, Planned] = {}
    graph = chain_nodes(recipe.chain)

    def visit(name: str) -> Planned:
        if name in planned:
            return planned[name]
        node = graph[name]
        upstream = {parent: visit(parent).version for parent in node.upstream}
        upstream.update({use.asset_name: source_version(use) for use in node_sources(recipe, name)})
        stage_section = recipe.section(node.sections[-1])
        if isinstance(stage_section, StageRecipe) and (continued := stage_section.continues_from()):
            # A continued model's manifest records the checkpoint it started from, so its recorded
            # lineage goes back through every earlier version of it.
            upstream[name] = continued
        if isinstance(stage_section, PretrainStage) and (hub_id := stage_section.hub_model()):
            from doge_dagster.hub_models import HUB_MODEL_PREFIX, hub_commit

            # The commit the Hub id resolves to: a new checkpoint on that branch is a new version.
            field = f"{node.sections[-1]}.init_from"
            upstream[f"{HUB_MODEL_PREFIX}{hub_id}"] = hub_commit(hub_id, stage_section.init_revision, field)
        section = content_version(*(recipe.section(path) for path in node.sections))
        version = content_version(node.name, node.code_version, section, upstream)
        planned[name] = Planned(name, version, upstream, section)
        return planned[name]

    for name in nodes or list(graph):
        visit(name)
    return planned
