"""Typed recipes: one YAML file per model family (partition), validated before any work starts.

A recipe holds everything a family needs: the tokenizer, one section per mixture, the model architecture,
per stage the training arguments and launch settings, and per report the evaluation tasks. Which mixture,
stage and report sections exist comes from the chain's records (`doge_dagster.stages`); each section's
model is in `doge_dagster.recipe_sections`. Every model forbids unknown fields, and every error names the
file, the field path and the fix.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, model_validator

from doge_dagster.recipe_sections import (
    WITH_SETTINGS,
    EvalRecipe,
    LaunchRecipe,
    MixtureRecipe,
    ModelRecipe,
    ReleaseRecipe,
    SourceRef,
    StageRecipe,
    Strict,
    TokenizerRecipe,
)
from doge_dagster.registry import DATASETS, dataset_spec
from doge_dagster.stages import CHAIN, Chain

__all__ = ["LaunchRecipe", "MixtureRecipe", "Recipe", "RecipeError", "SourceRef", "StageRecipe"]

YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: 10x faster
PROJECT_ROOT = Path(__file__).resolve().parents[1]
RECIPES_DIR = Path(os.environ.get("DOGE_RECIPES_DIR", PROJECT_ROOT / "recipes"))
ACCELERATE_CONFIGS_DIR = PROJECT_ROOT / "recipes" / "accelerate"


class RecipeError(ValueError):
    """A recipe failed validation; the message names the file, each field path and the fix."""


def _required_mixtures(chain: Chain) -> set[str]:
    return {stage.mixture for stage in chain.stages if not stage.optional}


def _section_fields(records, model_of, required) -> dict[str, Any]:
    """pydantic fields, one per record: required, or optional (None when a recipe leaves it out)."""
    return {
        record.name: (model_of(record), ...) if required(record) else (model_of(record) | None, None)
        for record in records
    }


def release_model(release) -> type[ReleaseRecipe]:
    """The section model of one release: `ReleaseRecipe` with the record's default for `enabled`."""
    return create_model(
        f"{release.name.title()}Release", __base__=ReleaseRecipe,
        __doc__=f"releases.{release.name}: {release.description}",
        enabled=(bool, Field(release.enabled, exclude=True, description=ReleaseRecipe.model_fields["enabled"].description)),
    )  # fmt: skip


@functools.cache
def recipe_model(chain: Chain) -> type[Strict]:
    """The `Recipe` model of a chain: a section per mixture, stage and report, in chain order."""
    needed = _required_mixtures(chain)
    mixtures = create_model(
        "Mixtures", __base__=Strict, __doc__="The recipe's mixtures, one per mixture of the chain.",
        **_section_fields(chain.mixtures, lambda _: MixtureRecipe, lambda mixture: mixture.name in needed),
    )  # fmt: skip
    stages = create_model(
        "Stages", __base__=Strict, __doc__="Training stages in chain order.",
        **_section_fields(chain.stages, lambda stage: stage.recipe_model, lambda stage: not stage.optional),
    )  # fmt: skip
    evaluations = create_model(
        "Evaluations", __base__=Strict, __doc__="One report per evaluated model.",
        **_section_fields(chain.reports, lambda _: EvalRecipe, lambda _: True),
    )  # fmt: skip
    release_sections = create_model(
        "Releases", __base__=Strict, __doc__="One release per released model; a recipe may leave any out.",
        **{release.name: (model, model()) for release, model in zip(chain.releases, map(release_model, chain.releases))},
    )  # fmt: skip

    class Recipe(Strict):
        """Everything one partition needs, from tokenizer to evaluation."""

        name: str
        description: str = ""
        tokenizer: TokenizerRecipe
        mixtures: mixtures  # type: ignore[valid-type]
        model: ModelRecipe
        stages: stages  # type: ignore[valid-type]
        evaluation: evaluations  # type: ignore[valid-type]
        releases: release_sections = Field(default_factory=release_sections)  # type: ignore[valid-type]

        @model_validator(mode="after")
        def _source_kinds(self) -> Recipe:
            for mixture in chain.mixtures:
                section = getattr(self.mixtures, mixture.name)
                for index, source in enumerate(section.sources if section is not None else ()):
                    actual = DATASETS[source.dataset].kind
                    if actual != mixture.dataset_kind:
                        raise ValueError(
                            f"mixtures.{mixture.name}.sources.{index}.dataset: {source.dataset!r} holds {actual} "
                            f"rows, but the {mixture.name} mixture needs {mixture.dataset_kind} datasets"
                        )
                positions = self.model.max_position_embeddings
                # Pretraining fixes the context the model declares; later stages may go beyond it on purpose (the
                # seed distils at 4096 tokens on 2048 RoPE positions), so only packed pretraining rows are checked.
                if section is not None and mixture.packed and section.max_length > positions:
                    raise ValueError(
                        f"mixtures.{mixture.name}.max_length ({section.max_length}) is above "
                        f"model.max_position_embeddings ({positions}): the model would be pretrained on positions "
                        f"it does not declare; lower max_length to at most {positions} or raise "
                        "model.max_position_embeddings"
                    )
                if section is not None and section.packing is not None and section.packing != mixture.packed:
                    raise ValueError(
                        f"mixtures.{mixture.name}.packing: pretraining rows are always packed; set it to true"
                        if mixture.packed
                        else f"mixtures.{mixture.name}.packing: the {mixture.name} mixture stores whole examples (the "
                        "trainer packs them when its `packing` training setting is on); set it to false"
                    )
            return self

        def section(self, dotted: str) -> Any:
            """Return a sub-section by dotted path, e.g. `mixtures.sft` or `stages.pretrain` (None for an
            optional stage the recipe leaves out)."""
            node: Any = self
            for part in dotted.split("."):
                node = getattr(node, part)
            return node

    Recipe.chain = chain  # what the recipe's sections mean: plan, assets and runner read the records from here
    return Recipe


Recipe = recipe_model(CHAIN)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal content gives equal text."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_json_default)


def _json_default(value: Any) -> Any:
    # Models nested in lists or dicts are dumped as data too (str() would follow dict insertion order).
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return str(value)


def content_version(*parts: Any) -> str:
    """A stable 16-hex-digit version for any JSON-able content (recipe sections, version dicts)."""
    return hashlib.sha256("\n".join(canonical_json(part) for part in parts).encode()).hexdigest()[:16]


def available_recipes(directory: Path | None = None) -> list[str]:
    """Recipe names found in a recipes folder (default: DOGE_RECIPES_DIR), in the family's size order (tiny first)."""
    directory = directory or RECIPES_DIR
    names = [path.stem for path in directory.glob("*.yaml")]

    def size_key(name: str) -> tuple[int, float, str]:
        match = re.fullmatch(r"(\d+(?:\.\d+)?)([MB])", name)
        if not match:
            return (0, 0.0, name)
        return (1, float(match[1]) * (1000 if match[2] == "B" else 1), name)

    return sorted(names, key=size_key)


@dataclasses.dataclass(frozen=True)
class RecipeFolder:
    """The recipes of one folder read under one chain: the partitions a code location serves.

    A recipe name (`tiny`) resolves to `<directory>/tiny.yaml`; a path to a YAML file is read as is.
    """

    directory: Path
    chain: Chain = CHAIN

    def names(self) -> list[str]:
        """The recipe names in the folder, tiny first."""
        return available_recipes(self.directory)

    def path(self, name_or_path: str | Path) -> Path:
        """Resolve a recipe name (`tiny`) or a path to a YAML file."""
        candidate = Path(name_or_path)
        if candidate.suffix in (".yaml", ".yml"):
            return candidate
        return self.directory / f"{name_or_path}.yaml"

    def load(self, name_or_path: str | Path) -> Recipe:
        """Load and validate a recipe by name or path; raise `RecipeError` naming file, field and fix."""
        path = self.path(name_or_path)
        if not path.is_file():
            known = ", ".join(self.names()) or "none"
            raise RecipeError(f"recipe {str(name_or_path)!r} not found at {path}; known recipes: {known}")
        stat = path.stat()
        return _load_file(str(path.resolve()), stat.st_mtime_ns, stat.st_size, self.chain)


def default_recipes() -> RecipeFolder:
    """The recipes folder of this environment: DOGE_RECIPES_DIR (default `recipes/`), under the environment's chain."""
    return RecipeFolder(RECIPES_DIR)


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load and validate a recipe of the environment's folder by name, or any recipe file by path."""
    return default_recipes().load(name_or_path)


@functools.lru_cache(maxsize=64)
def _load_file(path: str, mtime_ns: int, size: int, chain: Chain) -> Recipe:
    """Parse once per file content (keyed by modification time and size) and chain: the code location loads
    every recipe for every asset's code version, and a recipe is immutable once validated."""
    try:
        raw = yaml.load(Path(path).read_text(), Loader=YAML_LOADER)
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: malformed YAML: {error}") from None
    return parse_recipe(raw, source=path, chain=chain)


def parse_recipe(raw: Any, source: str = "<recipe>", chain: Chain | None = None) -> Recipe:
    """Validate a recipe from already-parsed YAML data (against `chain`'s sections, default: the environment's)."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of sections, got {type(raw).__name__}")
    model = recipe_model(chain or CHAIN)
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise RecipeError(format_validation_error(error, source, model)) from None


def format_validation_error(error: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    """One line per problem: `file: field.path: message`, listing allowed fields for unknown ones."""
    lines = [f"{source}: invalid recipe ({error.error_count()} problem(s))"]
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"]) or "<root>"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            allowed = _allowed_fields(model or Recipe, problem["loc"][:-1])
            message = f"unknown field; allowed here: {', '.join(allowed)}" if allowed else "unknown field"
        elif problem["type"] == "missing":
            message = "required field is missing"
        lines.append(f"  {location}: {message}")
    return "\n".join(lines)


def _allowed_fields(model: type[BaseModel], location: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in location:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return []
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


OVERRIDE_TAG_PREFIX = "doge/override/"


def apply_overrides(recipe: Recipe, overrides: dict[str, Any]) -> Recipe:
    """A copy of `recipe` with dotted-path fields replaced (e.g. `stages.pretrain.init_from`), revalidated.

    Runs carry overrides as tags `doge/override/<dotted.path>` (values parsed as YAML), which is how
    scheduled retraining continues pretraining without editing the recipe file.
    """
    if not overrides:
        return recipe
    data = recipe.model_dump(mode="json", context=WITH_SETTINGS)  # settings (excluded from versions) kept
    for dotted, value in sorted(overrides.items()):
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node, dict) or part not in node:
                raise RecipeError(f"override {dotted!r}: no section {part!r} in the recipe")
            node = node[part]
        node[leaf] = yaml.safe_load(value) if isinstance(value, str) else value
    return parse_recipe(data, source=f"recipe {recipe.name} with overrides {sorted(overrides)}", chain=recipe.chain)


def overrides_from_tags(tags: dict[str, str]) -> dict[str, str]:
    """The recipe overrides carried by a run's tags."""
    return {
        key.removeprefix(OVERRIDE_TAG_PREFIX): value
        for key, value in tags.items()
        if key.startswith(OVERRIDE_TAG_PREFIX)
    }


# -- which datasets a recipe reads ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
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
    for kind in recipe.chain.mixtures:
        mixture = getattr(recipe.mixtures, kind.name)
        for ref in mixture.sources if mixture is not None else ():
            uses[ref.dataset] = SourceUse(ref, mixture.seed)
    return uses


def missing_local_paths(recipe: Recipe, node: str) -> list[str]:
    """The local folders `node` reads that do not exist on this machine, one line each naming the field and the
    fix: a `path` tokenizer, and the local sources (or Hub mirrors) of its mixture, or of every mixture for a
    trained tokenizer. Checked before a build starts, so a typo fails in milliseconds and writes nothing."""
    problems = []
    if node == "tokenizer" and recipe.tokenizer.source == "path":
        folder = recipe.tokenizer.name_or_path or ""
        if not Path(folder).is_dir():
            problems.append(
                f"tokenizer.name_or_path {folder!r} is not a folder (source: path); point it at a local folder with "
                "tokenizer.json, or use source: hub for a Hub id, or source: train_bpe"
            )
    for kind in recipe.chain.mixtures:
        mixture = getattr(recipe.mixtures, kind.name)
        reads = node == kind.asset or (node == "tokenizer" and recipe.tokenizer.source == "train_bpe")
        for index, ref in enumerate(mixture.sources if mixture is not None and reads else ()):
            if ref.path is None:
                continue
            # a Hub mirror holds the repo as a subfolder: {path}/{repo}
            folder = (
                Path(ref.path)
                if ref.kind == "local"
                else Path(ref.path) / (ref.repo or dataset_spec(ref.dataset).hub_id)
            )
            if not folder.is_dir():
                what = "a folder of the dataset's jsonl/parquet files" if ref.kind == "local" else "a local Hub mirror"
                problems.append(
                    f"mixtures.{kind.name}.sources.{index}.path {ref.path!r} does not exist on this machine"
                    + ("" if folder == Path(ref.path) else f" (no folder {folder})")
                    + f"; point it at {what} (dataset {ref.dataset!r}, kind {ref.kind})"
                )
    return problems


def node_sources(recipe: Recipe, node: str) -> list[SourceUse]:
    """The sources a node reads directly: its mixture's, or all of them for a trained tokenizer."""
    uses = recipe_sources(recipe)
    if node == "tokenizer":
        return list(uses.values()) if recipe.tokenizer.source == "train_bpe" else []
    for kind in recipe.chain.mixtures:
        if node == kind.asset:
            mixture = getattr(recipe.mixtures, kind.name)
            return [uses[ref.dataset] for ref in mixture.sources] if mixture is not None else []
    return []
