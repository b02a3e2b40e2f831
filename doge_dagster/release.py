"""Releases: one stage's model as a folder in the Hugging Face Hub's layout, validated for real, then pushed.

A release folder holds what a Hub user loads and nothing else: the safetensors weights and `config.json` as
trained, the tokenizer files saved with the model (chat template included), a `generation_config.json` with the
seed's sampling settings (`Release.generation`: temperature 0.8, top-p 0.9, 100 new tokens, 1000 for reasoning
models) and a model card (`README.md`) whose YAML front matter `huggingface_hub.ModelCard` parses: license,
datasets, base_model, tags and a `model-index` with the report's scores. The card's body is written from the
recorded manifests: the lineage back to the sources, the recipe sections, the mixtures with their realised
ratios, the training metrics of every stage and the evaluation table.

The trained model artifacts keep their own greedy `generation_config.json` (what their checks and the
evaluation reports used); only the release carries the sampling one, so no training version changes.

Nothing here imports Dagster; `assets/release.py` runs it as the `release_<name>` assets. The Hub token is read
from HF_TOKEN when a push starts and only handed to `huggingface_hub`, which sends it in the Authorization
header: it is never logged, returned or recorded.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from doge_dagster.artifacts import ArtifactStore, Manifest, hash_file
from doge_dagster.lineage import Lineage, recorded_lineage
from doge_dagster.plan import Node, chain_nodes
from doge_dagster.recipe_sections import ReleaseRecipe
from doge_dagster.recipes import Recipe, content_version
from doge_dagster.registry import DATASETS
from doge_dagster.stages import Release

TOKEN_ENV = "HF_TOKEN"
ENDPOINT_ENV = "HF_ENDPOINT"
DEFAULT_ENDPOINT = "https://huggingface.co"
CARD_NAME = "README.md"
GENERATION_CONFIG = "generation_config.json"
# What a release carries from the model artifact besides its weights (`*.safetensors`, and the index of
# sharded ones); training leftovers (training_args.bin, the loss plot, the stable-phase snapshot) stay behind.
MODEL_FILES = (
    "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt",
)  # fmt: skip
CARD_TAGS = ("doge", "doge-dagster")
VALIDATION_PROMPT = "What is 2 + 3?"


class ReleaseError(ValueError):
    """A release cannot be built, validated or pushed; the message names what failed and the fix."""


# -- the token ---------------------------------------------------------------------------------------------------
def hub_token(release: Release, section: ReleaseRecipe) -> str | None:
    """The Hub token of a push, read from HF_TOKEN now; None for a dry run (no `repo_id`).

    Raises before anything is built when a repo is configured but the token is missing or huggingface_hub is
    offline. The token is only ever handed to `huggingface_hub`; callers must not log or record it.
    """
    if section.repo_id is None:
        return None
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ReleaseError(
            f"{release.section}.repo_id is {section.repo_id!r}, but the environment variable {TOKEN_ENV} is not "
            f"set: export {TOKEN_ENV} (a Hub token with write access to {section.repo_id.split('/')[0]}) where the "
            f"run executes, or remove {release.section}.repo_id for a dry run. Nothing was built."
        )
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise ReleaseError(
            f"{release.section}.repo_id is {section.repo_id!r}, but huggingface_hub is in offline mode "
            "(HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set): unset it for the run that pushes, or remove "
            f"{release.section}.repo_id for a dry run. Nothing was built."
        )
    return token


def hub_endpoint() -> str:
    """The Hub's URL: HF_ENDPOINT at run time (a mirror, or a stand-in in tests), else huggingface.co."""
    return (os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")


def release_tag(partition: str, version: str) -> str:
    """The Hub tag of a release: the recipe and the release's artifact version, e.g. `20M-0123456789abcdef`."""
    return f"{partition}-{version}"


def recorded_sections(manifest: Manifest, recipe: Recipe, nodes: dict[str, Node]) -> dict[str, Any] | None:
    """The recipe sections an artifact was built from: as its manifest recorded them, or, for an artifact
    published before manifests recorded them, the current recipe's when they give exactly its version (the
    version hashes them with the recorded inputs, so they are the same); else None."""
    recorded = manifest.metadata.get("recipe_sections")
    if isinstance(recorded, dict):
        return recorded
    node = nodes.get(manifest.asset)
    if node is None:
        return None
    sections = [recipe.section(path) for path in node.sections]
    if any(section is None for section in sections):
        return None
    version = content_version(node.name, node.code_version, content_version(*sections), manifest.upstream)
    if version != manifest.version:
        return None
    return {path: section.model_dump(mode="json") for path, section in zip(node.sections, sections, strict=True)}


# -- what the card says ------------------------------------------------------------------------------------------
def report_scores(report: Manifest) -> list[dict[str, Any]]:
    """The report's scores, one entry per task (task, key, metric, score, stderr, samples), as published."""
    tasks = report.metadata.get("tasks")
    if isinstance(tasks, list) and tasks:
        return [
            {key: task.get(key) for key in ("task", "key", "metric", "score", "stderr", "samples")} for task in tasks
        ]
    # Reports published before per-task entries were recorded: the scores by key, metric unknown.
    return [
        {"task": key, "key": key, "metric": "score", "score": score, "stderr": None, "samples": None}
        for key, score in sorted(report.metadata.get("scores", {}).items())
    ]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def model_index_entries(report: Manifest) -> dict[tuple[str, str], float]:
    """(lighteval task, metric) -> score: what the card's model-index must hold, from the report."""
    return {
        (task["task"], task["metric"]): task["score"] for task in report_scores(report) if _is_number(task["score"])
    }


def hub_datasets(mixture_sections: list[dict[str, Any]]) -> list[str]:
    """The Hub dataset repos the mixtures read (the registry's, or a source's `repo`), for the card's `datasets`.

    Generated and `local` sources are not Hub datasets, so they are named in the card's body only.
    """
    found: list[str] = []
    for section in mixture_sections:
        for source in section.get("sources", []):
            if source.get("kind", "hub") != "hub" or source.get("dataset") not in DATASETS:
                continue
            repo = source.get("repo") or DATASETS[source["dataset"]].hub_id
            if repo not in found:
                found.append(repo)
    return sorted(found)


def source_origin(dataset: str, source: dict[str, Any] | None) -> str:
    """Where a mixture's source rows came from, for the card: the Hub repo (and revision), local files, or
    generated rows in a Hub dataset's schema."""
    hub_id = DATASETS[dataset].hub_id if dataset in DATASETS else dataset
    if source is None:
        return f"{hub_id} (source settings not recorded)"
    repo = source.get("repo") or hub_id
    if source.get("kind") == "generated":
        return f"generated rows in the schema of {repo}"
    if source.get("kind") == "local":
        return "local files"
    revision = f"@{source['revision']}" if source.get("revision") else ""
    return f"Hub {repo}{revision}" + (" (local mirror)" if source.get("path") else "")


@dataclass(frozen=True)
class CardFacts:
    """What a release's model card states, gathered before it is written (and checked against it after)."""

    title: str
    license: str
    datasets: list[str]
    base_model: str | None
    tags: list[str]
    model_index: dict[tuple[str, str], float]


def card_facts(
    release: Release, section: ReleaseRecipe, base_model: str | None, report: Manifest, datasets: list[str], title: str
) -> CardFacts:
    """The card's metadata for this release."""
    tags = list(dict.fromkeys([*CARD_TAGS, release.name, *section.tags]))
    return CardFacts(title, section.license, datasets, base_model, tags, model_index_entries(report))


def card_metadata(facts: CardFacts) -> Any:
    """The card's YAML front matter as `huggingface_hub.ModelCardData` (model-index from the report's scores)."""
    from huggingface_hub import EvalResult, ModelCardData

    results = [
        EvalResult(
            task_type="text-generation",
            task_name="Text Generation",
            dataset_type=task,
            dataset_name=task,
            metric_type=metric,
            metric_value=value,
        )
        for (task, metric), value in facts.model_index.items()
    ]
    return ModelCardData(
        license=facts.license,
        library_name="transformers",
        pipeline_tag="text-generation",
        datasets=facts.datasets or None,
        base_model=facts.base_model,
        tags=facts.tags,
        model_name=facts.title,
        eval_results=results or None,
    )


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return str(value).replace("|", "\\|")

    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(cell(value) for value in row) + " |" for row in rows),
    ]


TRAINING_COLUMNS = (
    ("parameters", "parameters"), ("global_step", "steps"), ("tokens_seen", "tokens"), ("gpu_hours", "GPU-hours"),
    ("cpu_process_hours", "CPU process-hours"), ("device", "device"), ("processes", "processes"),
    ("wall_time_s", "wall time (s)"), ("final_train_loss", "final train loss"), ("eval_loss", "eval loss"),
)  # fmt: skip


def card_body(
    release: Release,
    recipe: Recipe,
    partition: str,
    version: str,
    facts: CardFacts,
    lineage: Lineage,
    inputs: dict[str, Manifest],
    repo_id: str | None,
) -> str:
    """The card's markdown: usage, evaluation, training metrics, data, lineage and recipe sections."""
    chain = recipe.chain
    nodes = chain_nodes(chain)
    stage = chain.stage(release.model_stage)
    model, report = inputs[stage.asset], inputs[chain.report(release.report).asset]
    where = repo_id or "path/to/this/folder"
    lines = [
        f"# {facts.title}",
        "",
        (
            f"{stage.description} Recipe `{recipe.name}`, released by doge-dagster as `{release.asset}` version "
            f"`{version}` from `{model.asset}` version `{model.version}`, after every blocking check of its lineage "
            f"passed (`{report.asset}` version `{report.version}` included)."
        ),
        "",
        "## Usage",
        "",
        "Native transformers Doge (no remote code). `generation_config.json` samples as the SmallDoge models do: "
        + ", ".join(f"{key}={value}" for key, value in release.generation.items())
        + ".",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        f'model = AutoModelForCausalLM.from_pretrained("{where}")',
        'conversation = [{"role": "user", "content": "Hi, how are you doing today?"}]',
        (
            'inputs = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt", '
            "return_dict=True)"
        ),
        "outputs = model.generate(**inputs)  # sampling settings from generation_config.json",
        'print(tokenizer.decode(outputs[0][inputs["input_ids"].shape[-1]:], skip_special_tokens=True))',
        "```",
        "",
        "## Evaluation",
        "",
        f"lighteval through `{report.asset}` version `{report.version}`"
        + (
            f" (at most {report.metadata['max_samples']} samples per task)"
            if report.metadata.get("max_samples")
            else ""
        )
        + ":",
        "",
        *_table(
            ["task", "metric", "score", "stderr", "samples"],
            [[t["task"], t["metric"], t["score"], t["stderr"], t["samples"]] for t in report_scores(report)],
        ),
        "",
        "Gates (blocking checks) of the report:",
        "",
        *_table(
            ["check", "passed", "detail"],
            [[name, bool(value[0]), value[1]] for name, value in sorted(report.metadata.get("checks", {}).items())],
        ),
        "",
        "## Training",
        "",
        "Every training stage of the lineage, from its manifest:",
        "",
    ]
    stage_assets = {record.asset: record for record in chain.stages}
    trained = lineage.of_assets(set(stage_assets), order=list(stage_assets))
    lines += _table(
        ["stage", "asset", "version", *(label for _, label in TRAINING_COLUMNS)],
        [
            [stage_assets[m.asset].name, m.asset, m.version, *(m.metadata.get(key) for key, _ in TRAINING_COLUMNS)]
            for m in trained
        ],
    )
    totals = {
        key: sum(m.metadata.get(key) or 0 for m in trained) for key in ("global_step", "tokens_seen", "gpu_hours")
    }
    lines += [
        "",
        (
            f"In all: {totals['global_step']:,} optimizer steps, {totals['tokens_seen']:,} tokens, "
            f"{totals['gpu_hours']:.4g} GPU-hours."
        ),
        "",
        "## Data",
        "",
    ]
    mixtures = {mixture.asset: mixture for mixture in chain.mixtures}
    for manifest in lineage.of_assets(set(mixtures), order=list(mixtures)):
        kind = mixtures[manifest.asset]
        sections = recorded_sections(manifest, recipe, nodes) or {}
        sources = {source["dataset"]: source for source in sections.get(f"mixtures.{kind.name}", {}).get("sources", [])}
        requested = manifest.metadata.get("requested_ratios", {})
        realised = manifest.metadata.get("realised_ratios", {})
        unit = manifest.metadata.get("unit", "tokens" if kind.packed else "examples")
        size = manifest.metadata.get("total_tokens") if kind.packed else manifest.metadata.get("train_rows")
        lines += [
            f"`{manifest.asset}` version `{manifest.version}` ({kind.description.rstrip('.')}): ratios in {unit}"
            + (f", {size:,} {'tokens' if kind.packed else 'training rows'}" if isinstance(size, int) else "")
            + ".",
            "",
            *_table(
                ["dataset", "read from", "requested ratio", "realised ratio"],
                [
                    [name, source_origin(name, sources.get(name)), requested.get(name), realised.get(name)]
                    for name in sorted(set(requested) | set(realised))
                ],
            ),
            "",
        ]
    lines += [
        "## Lineage",
        "",
        "Every artifact behind this release as the manifests recorded it (sources first; `<-` its inputs):",
        "",
        "```",
        *(f"{name:<24} {value}" for name, value in lineage.sources.items()),
        *(
            f"{m.asset:<24} {m.version}  <- " + ", ".join(f"{a}@{v[:8]}" for a, v in sorted(m.upstream.items()))
            for m in lineage.manifests
        ),
        *(f"{asset:<24} {value}  [no manifest: inputs unknown]" for asset, value in lineage.missing),
        "```",
        "",
        "## Recipe",
        "",
        "The recipe sections each artifact was built from:",
        "",
    ]
    for manifest in lineage.manifests:
        sections = recorded_sections(manifest, recipe, nodes)
        lines += [f"### `{manifest.asset}` `{manifest.version}`", ""]
        if sections is None:
            lines += ["not recorded (published before manifests recorded their recipe sections)", ""]
            continue
        lines += ["```yaml", yaml.safe_dump(sections, sort_keys=True, width=120).rstrip(), "```", ""]
    own = {path: recipe.section(path).model_dump(mode="json") for path in nodes[release.asset].sections}
    lines += [
        f"### `{release.asset}` `{version}`",
        "",
        "```yaml",
        yaml.safe_dump(own, sort_keys=True).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


# -- the folder --------------------------------------------------------------------------------------------------
def model_files(model_dir: Path) -> list[str]:
    """The files of a model artifact a release carries: weights (safetensors), config, tokenizer files."""
    names = sorted(
        path.name
        for path in model_dir.iterdir()
        if path.is_file()
        and (path.name in MODEL_FILES or path.name.endswith((".safetensors", ".safetensors.index.json")))
    )
    if not any(name.endswith(".safetensors") for name in names):
        raise ReleaseError(
            f"{model_dir} holds no safetensors weights; a release publishes safetensors only. Retrain the stage "
            "with the current code (save_pretrained writes safetensors)"
        )
    if "config.json" not in names or "tokenizer.json" not in names:
        raise ReleaseError(f"{model_dir} lacks config.json or tokenizer.json; it is not a complete model artifact")
    return names


def write_generation_config(model_dir: Path, out_dir: Path, release: Release) -> dict[str, Any]:
    """The release's `generation_config.json`: the model's special token ids with the seed's sampling settings."""
    from transformers import AutoConfig, GenerationConfig

    if (model_dir / GENERATION_CONFIG).is_file():
        config = GenerationConfig.from_pretrained(str(model_dir))
    else:
        config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(str(model_dir)))
    config.update(**release.generation)
    config.validate(strict=True)
    config.save_pretrained(str(out_dir))
    return {key: getattr(config, key) for key in (*release.generation, "eos_token_id", "pad_token_id")}


@dataclass(frozen=True)
class ReleaseFolder:
    """A written release folder and what it must hold."""

    path: Path
    files: list[str]
    copied: list[str]  # the files taken unchanged from the model artifact
    generation: dict[str, Any]
    facts: CardFacts
    card: str


def write_release_folder(
    out_dir: Path,
    release: Release,
    recipe: Recipe,
    partition: str,
    version: str,
    store: ArtifactStore,
    inputs: dict[str, Manifest],
    dirs: dict[str, Path],
) -> ReleaseFolder:
    """Write the release folder of `release` into `out_dir` from its inputs (model, report, tokenizer manifests
    and local folders): weights, config and tokenizer as trained, the sampling generation config, the card."""
    chain = recipe.chain
    model_asset, report_asset = chain.stage(release.model_stage).asset, chain.report(release.report).asset
    model_dir = dirs[model_asset]
    copied = model_files(model_dir)
    for name in copied:
        shutil.copy2(model_dir / name, out_dir / name)
    generation = write_generation_config(model_dir, out_dir, release)
    section = recipe.section(release.section)
    base_model = recipe.section(chain.release(release.base_release).section).repo_id if release.base_release else None
    lineage = recorded_lineage(store, partition, inputs)
    nodes = chain_nodes(chain)
    mixture_assets = {mixture.asset for mixture in chain.mixtures}
    mixture_sections = [
        section_dump
        for manifest in lineage.of_assets(mixture_assets)
        for section_dump in (recorded_sections(manifest, recipe, nodes) or {}).values()
    ]
    title = section.repo_id.split("/")[1] if section.repo_id else f"{model_asset} ({recipe.name})"
    facts = card_facts(release, section, base_model, inputs[report_asset], hub_datasets(mixture_sections), title)
    body = card_body(release, recipe, partition, version, facts, lineage, inputs, section.repo_id)
    from huggingface_hub import ModelCard

    card = ModelCard(f"---\n{card_metadata(facts).to_yaml()}\n---\n\n{body}")
    card.save(str(out_dir / CARD_NAME))
    return ReleaseFolder(out_dir, sorted([*copied, GENERATION_CONFIG, CARD_NAME]), copied, generation, facts, body)


# -- validation --------------------------------------------------------------------------------------------------
def validate_release_folder(folder: ReleaseFolder, release: Release, model: Manifest, chat: bool) -> dict[str, Any]:
    """Check the folder as a Hub user would meet it; raise `ReleaseError` naming every problem.

    The weights and tokenizer files equal the model artifact's (sha256), the model and tokenizer load with
    `AutoModelForCausalLM` / `AutoTokenizer` (no remote code) and generate with the folder's generation config
    (through the chat template for chat models), and `huggingface_hub.ModelCard` parses the card into the
    intended license, datasets, base_model, tags and model-index (every score equal to the report's).
    """
    problems: list[str] = []
    path = folder.path
    listed = {entry.path: entry.sha256 for entry in model.files}
    for name in folder.copied:
        if hash_file(path / name) != listed.get(name):
            problems.append(f"{name} differs from {model.asset} version {model.version}'s copy")
    present = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    if present != folder.files:
        problems.append(f"the folder holds {present}, expected {folder.files}")

    import torch
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    loaded: dict[str, Any] = {}
    try:
        model_object = AutoModelForCausalLM.from_pretrained(str(path))
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        generation = GenerationConfig.from_pretrained(str(path))
    except Exception as error:  # any loading failure is a broken release, reported with the others
        raise ReleaseError(f"the release folder {path} does not load: {type(error).__name__}: {error}") from error
    for key, wanted in release.generation.items():
        if getattr(generation, key) != wanted:
            problems.append(f"{GENERATION_CONFIG}: {key} is {getattr(generation, key)!r}, expected {wanted!r}")
    if not tokenizer.chat_template:
        problems.append("the tokenizer has no chat template")
    prompt = (
        tokenizer.apply_chat_template(
            [{"role": "user", "content": VALIDATION_PROMPT}], add_generation_prompt=True, tokenize=False
        )
        if chat and tokenizer.chat_template
        else VALIDATION_PROMPT
    )
    inputs = tokenizer(prompt, return_tensors="pt")
    short = copy.deepcopy(generation)  # the release's sampling, a few tokens only
    short.max_new_tokens = 8
    torch.manual_seed(0)
    with torch.no_grad():
        output = model_object.generate(**inputs, generation_config=short)
    new_tokens = output[0][inputs["input_ids"].shape[-1] :]
    if len(new_tokens) == 0:
        problems.append("the model generated no token with the release's generation config")
    loaded.update(
        parameters=sum(parameter.numel() for parameter in model_object.parameters()),
        vocab_size=len(tokenizer),
        sample=tokenizer.decode(new_tokens, skip_special_tokens=False)[:120],
        chat_template=bool(tokenizer.chat_template),
    )

    card = ModelCard.load(str(path / CARD_NAME))
    data, facts = card.data, folder.facts
    expected = {
        "license": facts.license,
        "datasets": facts.datasets or None,
        "base_model": facts.base_model,
        "tags": facts.tags,
        "pipeline_tag": "text-generation",
        "library_name": "transformers",
    }
    for key, wanted in expected.items():
        if getattr(data, key, None) != wanted:
            problems.append(f"card metadata {key} is {getattr(data, key, None)!r}, expected {wanted!r}")
    parsed = {(result.dataset_type, result.metric_type): result.metric_value for result in data.eval_results or []}
    if parsed != facts.model_index:
        problems.append(f"card model-index {parsed} differs from the report's scores {facts.model_index}")
    if problems:
        raise ReleaseError(f"the release folder {path} failed validation:\n" + "\n".join(f"  - {p}" for p in problems))
    return {**loaded, "card_model_index_entries": len(parsed), "files": len(folder.files)}


# -- the push ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PushedRelease:
    """Where a release was pushed: the repo, the tag and the commit it points to."""

    endpoint: str
    repo_id: str
    tag: str
    commit_sha: str
    commit_url: str
    private: bool
    deleted: list[str]

    def metadata(self) -> dict[str, Any]:
        """What the release's manifest records about the push (no credentials)."""
        return {
            "pushed": True,
            "repo_id": self.repo_id,
            "revision": self.tag,
            "commit_sha": self.commit_sha,
            "commit_url": self.commit_url,
            "tag_url": f"{self.endpoint}/{self.repo_id}/tree/{self.tag}",
            "private": self.private,
            "removed_from_repo": self.deleted,
        }


def push_release(
    folder: Path,
    repo_id: str,
    private: bool,
    tag: str,
    token: str,
    message: str,
    description: str,
    log: Callable[[str], None],
) -> PushedRelease:
    """Push the folder to `repo_id` in one commit on `main` (files the release no longer has are removed, the
    repo's `.gitattributes` kept), tag that commit `tag`, and return where it went.

    The repo is created with `private` when it does not exist; an existing public repo for a private release
    is refused before anything is uploaded. Re-pushing the same release is safe: the tag is kept if it exists.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    log(f"pushing {len(files)} files to {endpoint}/{repo_id} ({'private' if private else 'public'}), tag {tag}")
    api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
    info = api.repo_info(repo_id, repo_type="model")
    if private and info.private is False:
        raise ReleaseError(
            f"{endpoint}/{repo_id} exists and is public, but the release is private (`private: true`, the "
            "default); make the repo private on the Hub first, or set `private: false` to publish it. Nothing "
            "was uploaded."
        )
    stale = sorted(
        sibling.rfilename
        for sibling in info.siblings or []
        if sibling.rfilename not in files and sibling.rfilename != ".gitattributes"
    )
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
    operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
    commit = api.create_commit(
        repo_id, operations, commit_message=message, commit_description=description, repo_type="model"
    )
    api.create_tag(repo_id, tag=tag, revision=commit.oid, tag_message=message, repo_type="model", exist_ok=True)
    log(f"pushed {commit.commit_url} and tagged it {tag}")
    return PushedRelease(endpoint, repo_id, tag, commit.oid, commit.commit_url, bool(info.private), stale)
