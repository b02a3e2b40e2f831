"""The contract between the shared runner and a stage's trainer: what a stage gets, what it must provide.

A stage's trainer is a subclass of `StageTrainer` named by its record (`doge_dagster.stages`). The record
checks the class when it is built, so a stage missing a piece fails when the code location loads, naming
the stage, never hours into a run. Heavy libraries (torch, transformers, TRL) are imported inside the
methods: the orchestrator imports this module and the trainer classes only to check them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from doge_dagster.artifacts import ArtifactStore
    from doge_dagster.launching.reporting import Reporter
    from doge_dagster.launching.spec import LaunchSpec
    from doge_dagster.recipes import MixtureRecipe, Recipe
    from doge_dagster.stages import Stage

EVAL_ROWS = 256


@dataclass
class StageContext:
    """Inputs of a stage, loaded once on every rank."""

    spec: LaunchSpec
    recipe: Recipe
    store: ArtifactStore
    reporter: Reporter
    stage: Stage
    tokenizer: Any = None
    data: Any = None
    callbacks: list[Any] = field(default_factory=list)

    @property
    def section(self) -> Any:
        """This stage's recipe section (`stages.<name>`)."""
        return self.recipe.section(f"stages.{self.stage.name}")

    @property
    def mixture_recipe(self) -> MixtureRecipe:
        """The recipe section of the stage's mixture."""
        return self.recipe.section(f"mixtures.{self.stage.mixture}")

    def artifact_dir(self, asset: str) -> Path:
        """Local folder of an upstream artifact of the version the spec names."""
        manifest = self.store.require(asset, self.spec.partition, self.spec.upstream[asset])
        return self.store.local_path(manifest)

    def resolve_model(self, reference: str) -> str:
        """`<model asset>:<version>` of this partition -> that published artifact (its WSD stable-phase
        snapshot when the run kept one); a Hub id -> its snapshot at the commit the plan resolved; else a folder."""
        asset, _, version = reference.partition(":")
        if version and asset == self.stage.asset:
            folder = self.store.local_path(self.store.require(asset, self.spec.partition, version))
            stable = folder / "stable"
            return str(stable if stable.is_dir() else folder)
        from doge_dagster.hub_models import HUB_MODEL_PREFIX, download_checkpoint

        if (commit := self.spec.upstream.get(f"{HUB_MODEL_PREFIX}{reference}")) is not None:
            return download_checkpoint(reference, commit)  # the commit the orchestrator planned with
        return reference

    def eval_split(self, *drop: str):
        """A bounded slice of the test split (evaluation must not dominate small runs)."""
        test = self.data["test"]
        test = test.select(range(min(EVAL_ROWS, len(test))))
        return test.remove_columns(list(drop)) if drop else test


class StageTrainer:
    """What a stage's trainer provides. `build_trainer` is required; a stage without a parent model
    (it trains from scratch) also provides `build_model`; the other hooks are optional."""

    def build_trainer(self, ctx: StageContext, model: Any, args: Any) -> Any:
        """The transformers/TRL trainer for `model` with the resolved config `args`."""
        raise NotImplementedError

    def build_model(self, ctx: StageContext) -> Any:
        """The model to train, for stages that do not start from a parent stage's model."""
        raise NotImplementedError

    def training_defaults(self, ctx: StageContext) -> dict[str, Any]:
        """Trainer config fields the recipe may override (e.g. sequence length from the mixture)."""
        return {}

    def training_forced(self, ctx: StageContext) -> dict[str, Any]:
        """Trainer config fields that win over the recipe (e.g. no second warmup when continuing)."""
        return {}

    def callbacks(self, ctx: StageContext) -> list[Any]:
        """Extra `TrainerCallback`s."""
        return []

    def finalize(self, ctx: StageContext, staged: Path) -> None:
        """Add files to the staged model folder before it is published."""


def overrides(trainer_class: type, hook: str) -> bool:
    """True when `trainer_class` implements `hook` itself rather than inheriting the base's."""
    return getattr(trainer_class, hook) is not getattr(StageTrainer, hook)
