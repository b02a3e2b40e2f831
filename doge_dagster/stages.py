"""The chain, declared once: every mixture, training stage and report is one record here.

Vocabulary, used the same way in code, recipes, README and UI:
- a *mixture* is a dataset built from sources by ratio (`mixtures.<name>` in a recipe, asset `<name>_mixture`);
- a *stage* is one training step of the chain (`stages.<name>`), producing a model asset;
- a *report* is an evaluation of one stage's model (`evaluation.<name>`), producing a report asset;
- a *release* is one stage's model published once its report's gates passed (`releases.<name>`, asset
  `release_<name>`): a folder in the Hugging Face Hub's layout, pushed when the recipe names a repo.

Everything else derives from these records: the recipe schema, the plan and its versions, the Dagster assets,
their checks and gates, launch validation, the training runner and the jobs. A record checks itself when it
is built (its trainer class, its check names, the mixture and stages it names), so a stage missing a piece
fails when the code location loads, with the stage's name.

Extra stages (e.g. a KTO pass, or a second SFT pass) can live in your own package: a module that defines
`STAGES` (a list of `Stage` records, and optionally `MIXTURES` / `REPORTS` / `RELEASES`), named in the environment as
`DOGE_EXTRA_STAGES=my_package.my_stages` (comma-separated for several) where the code location runs. Each
launch spec names the same modules (`Chain.extra_modules`), so a launched trainer loads the same chain.
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass

from doge_dagster.model_checks import TRAINING_CHECKS
from doge_dagster.recipe_sections import GRPOStage, PretrainStage, StageRecipe
from doge_dagster.registry import DatasetKind
from doge_dagster.trainer_contract import StageTrainer, overrides

EXTRA_STAGES_ENV = "DOGE_EXTRA_STAGES"
MIXTURE_CHECKS = ("ratios_within_tolerance", "no_empty_split", "schema")
PACKED_CHECKS = ("token_ids_below_vocab",)
MODEL_CHECKS = ("vocab_matches_tokenizer", "loads_and_generates")
CHAT_MODEL_CHECKS = ("loss_finite_and_falling", *MODEL_CHECKS, "chat_template_reply")
# The gates a report can declare, in the order reports list them (`evaluation.report.gate_checks` computes them).
GATE_NAMES = ("scores_valid", "no_regression", "format_rate")


class ChainError(ValueError):
    """A record of the chain is incomplete or inconsistent; the message names the record and the fix."""


def _import(reference: str, what: str):
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ChainError(f"{what} {reference}: cannot import {module_name}: {error}") from None
    if not attribute:
        return module
    if not hasattr(module, attribute):
        raise ChainError(f"{what} {reference}: {module_name} has no {attribute}")
    return getattr(module, attribute)


@dataclass(frozen=True)
class Mixture:
    """A kind of mixture: which source datasets fit it and what its rows hold.

    `packed` mixtures count ratios and size in tokens and save packed `input_ids` rows (pretraining);
    the others count examples and save the columns their trainers read.
    """

    name: str
    dataset_kind: DatasetKind
    columns: tuple[str, ...]
    description: str
    packed: bool = False

    @property
    def asset(self) -> str:
        """The mixture's asset name."""
        return f"{self.name}_mixture"

    @property
    def checks(self) -> tuple[str, ...]:
        """The blocking checks of the mixture asset."""
        return MIXTURE_CHECKS + (PACKED_CHECKS if self.packed else ())


@dataclass(frozen=True)
class Stage:
    """A training stage: its asset, data, parent model, trainer, recipe section, checks and gates.

    `trainer` is `module:Class` of a `StageTrainer` subclass; `config_class` is `module:Class` of the
    transformers/TRL config its `training` fields are checked against. `gated_by` names reports whose
    blocking checks must pass before the stage runs (Dagster deps only: they do not change its version).
    `optional` stages may be left out of a recipe; materializing one there fails before launch, naming
    the missing section. `sections` are recipe sections besides `stages.<name>` its version hashes.
    """

    name: str
    asset: str
    group: str
    mixture: str
    parent: str | None
    trainer: str
    config_class: str
    code_version: str
    description: str
    checks: tuple[str, ...] = CHAT_MODEL_CHECKS
    recipe_model: type[StageRecipe] = StageRecipe
    sections: tuple[str, ...] = ()
    gated_by: tuple[str, ...] = ()
    optional: bool = False

    def __post_init__(self) -> None:
        unknown = [check for check in self.checks if check not in TRAINING_CHECKS]
        if unknown:
            raise ChainError(
                f"stage {self.name!r}: unknown check(s) {unknown}; known: {', '.join(sorted(TRAINING_CHECKS))}"
            )
        trainer = self.trainer_class()
        if not overrides(trainer, "build_trainer"):
            raise ChainError(f"stage {self.name!r}: trainer {self.trainer} does not implement build_trainer")
        if self.parent is None and not overrides(trainer, "build_model"):
            raise ChainError(
                f"stage {self.name!r} has no parent stage, so its trainer {self.trainer} must implement build_model"
            )

    def trainer_class(self) -> type[StageTrainer]:
        """The `StageTrainer` subclass named by `trainer`."""
        target = _import(self.trainer, f"stage {self.name!r}: trainer")
        if not (isinstance(target, type) and issubclass(target, StageTrainer)):
            raise ChainError(f"stage {self.name!r}: trainer {self.trainer} is not a StageTrainer subclass")
        return target

    @property
    def section(self) -> str:
        """The stage's recipe section path."""
        return f"stages.{self.name}"


@dataclass(frozen=True)
class Report:
    """An evaluation of one stage's model with lighteval, and its gates.

    `compares_with` names the report whose shared tasks must not regress; `prompt_mixture` is the mixture
    whose system prompt the model was trained with (asked the same way when the chat template is used).
    """

    name: str
    asset: str
    model_stage: str
    code_version: str
    description: str
    compares_with: str | None = None
    prompt_mixture: str | None = None
    checks_format: bool = False

    @property
    def checks(self) -> tuple[str, ...]:
        """The blocking checks (gates) of the report asset."""
        return tuple(
            name
            for name, wanted in zip(GATE_NAMES, (True, self.compares_with is not None, self.checks_format), strict=True)
            if wanted
        )

    @property
    def section(self) -> str:
        """The report's recipe section path."""
        return f"evaluation.{self.name}"


# The seed's usage samples every model the same way; only the length differs (chat replies against reasoning traces).
RELEASE_SAMPLING = {"do_sample": True, "temperature": 0.8, "top_p": 0.9}


@dataclass(frozen=True)
class Release:
    """A released model: one stage's model, published only when every gate up the chain passed.

    `report` is the report the release is downstream of: an input of its version, so its recorded lineage (the
    model, the reports it compares with, back to the sources) is walked for failed gates before anything is
    built. `base_release` names the release of the model this one was trained from (its `repo_id` becomes the
    card's `base_model`); `max_new_tokens` is the generation limit of the release's `generation_config.json`
    (sampled with `RELEASE_SAMPLING`); `enabled` is what a recipe that does not set `releases.<name>.enabled` gets.
    """

    name: str
    asset: str
    model_stage: str
    report: str
    code_version: str
    description: str
    max_new_tokens: int = 100
    base_release: str | None = None
    enabled: bool = True

    @property
    def section(self) -> str:
        """The release's recipe section path."""
        return f"releases.{self.name}"

    @property
    def generation(self) -> dict[str, object]:
        """The sampling settings of the release's `generation_config.json`."""
        return {**RELEASE_SAMPLING, "max_new_tokens": self.max_new_tokens}


MIXTURES = (
    Mixture(
        "pretrain", "text", ("input_ids",), packed=True,
        description="Tokenized, packed pretraining rows mixed by token ratio (fineweb-edu / cosmopedia-v2 / python-edu / finemath).",
    ),
    Mixture(
        "sft", "conversation", ("messages", "source"),
        description="Chat conversations for supervised fine-tuning (smoltalk), templated length within max_length.",
    ),
    Mixture(
        "dpo", "preference", ("prompt", "chosen", "rejected", "source"),
        description="Preference pairs (ultrafeedback): prompt = chosen[:-1], chosen and rejected replies.",
    ),
    Mixture(
        "distill", "reasoning", ("messages", "source"),
        description="Reasoning conversations (OpenThoughts) with the traces kept as <think> blocks.",
    ),
    Mixture(
        "grpo", "math_problem", ("prompt", "answer", "solution", "source"),
        description="Math problems (OpenR1-Math) as message-list prompts with the gold answer kept for rewards.",
    ),
)  # fmt: skip

STAGES = (
    Stage(
        "pretrain", "doge_base", "pretrain", mixture="pretrain", parent=None,
        trainer="doge_dagster.training.pretrain:PretrainTrainer", config_class="transformers:TrainingArguments",
        code_version="pretrain-2", recipe_model=PretrainStage, sections=("model",),
        checks=("loss_finite_and_falling", *MODEL_CHECKS),
        description="Doge base model: pretraining from scratch (or continued) with the WSD schedule.",
    ),
    Stage(
        "sft", "doge_instruct_sft", "instruct", mixture="sft", parent="pretrain",
        trainer="doge_dagster.training.chat:SFTStageTrainer", config_class="trl:SFTConfig", code_version="sft-2",
        description="Supervised fine-tuning of doge_base on conversations, assistant tokens only.",
    ),
    Stage(
        "dpo", "doge_instruct", "instruct", mixture="dpo", parent="sft",
        trainer="doge_dagster.training.chat:DPOStageTrainer", config_class="trl:DPOConfig", code_version="dpo-2",
        description="Doge instruct model: DPO (sigmoid, implicit reference) of the SFT model on preference pairs.",
    ),
    Stage(
        "distill", "doge_reason_distill", "reason", mixture="distill", parent="dpo",
        trainer="doge_dagster.training.chat:SFTStageTrainer", config_class="trl:SFTConfig", code_version="distill-2",
        gated_by=("instruct",),
        description="Distillation SFT of the instruct model on reasoning traces kept as <think> blocks.",
    ),
    Stage(
        "grpo", "doge_reason", "reason", mixture="grpo", parent="distill",
        trainer="doge_dagster.training.grpo:GRPOStageTrainer", config_class="trl:GRPOConfig", code_version="grpo-3",
        recipe_model=GRPOStage, checks=("loss_finite", "reward_improves", *MODEL_CHECKS, "chat_template_reply"),
        description="Doge reason model: GRPO with accuracy (math-verify) and format rewards.",
    ),
)  # fmt: skip

REPORTS = (
    Report(
        "base", "base_eval", model_stage="pretrain", code_version="eval-2",
        description="lighteval report on doge_base, beside the published SmallDoge scores for real sizes.",
    ),
    Report(
        "instruct", "instruct_eval", model_stage="dpo", compares_with="base", prompt_mixture="sft", code_version="eval-2",
        description="lighteval report on doge_instruct (chat template); gate: no regression vs base_eval on shared tasks.",
    ),
    Report(
        "reason", "reason_eval", model_stage="grpo", compares_with="instruct", prompt_mixture="distill",
        checks_format=True, code_version="eval-2",
        description="lighteval report on doge_reason (chat template); gates: no regression vs instruct_eval, think format rate.",
    ),
)  # fmt: skip

RELEASES = (
    Release(
        "base", "release_base", model_stage="pretrain", report="base", code_version="release-1", enabled=False,
        description="doge_base as a Hub release (off unless releases.base.enabled): weights, tokenizer, sampling "
        "generation config and a model card with lineage, data, training metrics and base_eval's scores.",
    ),
    Release(
        "instruct", "release_instruct", model_stage="dpo", report="instruct", code_version="release-1",
        base_release="base",
        description="doge_instruct as a Hub release once every gate up to instruct_eval passed: weights, tokenizer "
        "with chat template, sampling generation config (100 new tokens) and a model card; pushed when "
        "releases.instruct.repo_id is set, else a dry run.",
    ),
    Release(
        "reason", "release_reason", model_stage="grpo", report="reason", code_version="release-1",
        base_release="instruct", max_new_tokens=1000,
        description="doge_reason as a Hub release once every gate up to reason_eval passed: weights, tokenizer "
        "with chat template, sampling generation config (1000 new tokens) and a model card; pushed when "
        "releases.reason.repo_id is set, else a dry run.",
    ),
)  # fmt: skip


@dataclass(frozen=True)
class Chain:
    """Every mixture, stage, report and release of the pipeline, checked for consistency."""

    mixtures: tuple[Mixture, ...]
    stages: tuple[Stage, ...]
    reports: tuple[Report, ...]
    releases: tuple[Release, ...] = ()
    extra_modules: str = ""  # the DOGE_EXTRA_STAGES modules it was loaded with: launched processes load the same

    def __post_init__(self) -> None:
        kinds = (
            ("mixture", self.mixtures),
            ("stage", self.stages),
            ("report", self.reports),
            ("release", self.releases),
        )
        for kind, records in kinds:
            names = [record.name for record in records]
            if duplicates := sorted({name for name in names if names.count(name) > 1}):
                raise ChainError(f"{kind} name(s) declared twice: {', '.join(duplicates)}")
        mixtures = {mixture.name for mixture in self.mixtures}
        stages = {stage.name for stage in self.stages}
        reports = {report.name for report in self.reports}
        for stage in self.stages:
            if stage.mixture not in mixtures:
                raise ChainError(
                    f"stage {stage.name!r}: mixture {stage.mixture!r} is not declared ({', '.join(sorted(mixtures))})"
                )
            if stage.parent is not None and stage.parent not in stages:
                raise ChainError(f"stage {stage.name!r}: parent stage {stage.parent!r} is not declared")
            if missing := [name for name in stage.gated_by if name not in reports]:
                raise ChainError(f"stage {stage.name!r}: gated by undeclared report(s) {missing}")
        for report in self.reports:
            if report.model_stage not in stages:
                raise ChainError(f"report {report.name!r}: stage {report.model_stage!r} is not declared")
            if report.compares_with is not None and report.compares_with not in reports:
                raise ChainError(f"report {report.name!r}: compares with undeclared report {report.compares_with!r}")
            if report.prompt_mixture is not None and report.prompt_mixture not in mixtures:
                raise ChainError(f"report {report.name!r}: prompt mixture {report.prompt_mixture!r} is not declared")
        self._check_releases(stages, reports)
        assets = [
            *(mixture.asset for mixture in self.mixtures),
            *(s.asset for s in self.stages),
            *(r.asset for r in self.reports),
            *(r.asset for r in self.releases),
        ]
        if duplicates := sorted({asset for asset in assets if assets.count(asset) > 1}):
            raise ChainError(f"asset name(s) used twice: {', '.join(duplicates)}")

    def _check_releases(self, stages: set[str], reports: set[str]) -> None:
        releases = {release.name for release in self.releases}
        for release in self.releases:
            if release.model_stage not in stages:
                raise ChainError(f"release {release.name!r}: stage {release.model_stage!r} is not declared")
            if release.report not in reports:
                raise ChainError(f"release {release.name!r}: report {release.report!r} is not declared")
            evaluated = self.report(release.report).model_stage
            if evaluated != release.model_stage:
                raise ChainError(
                    f"release {release.name!r} releases stage {release.model_stage!r}, but its report "
                    f"{release.report!r} evaluates stage {evaluated!r}; name the report of the released model"
                )
            if release.base_release is not None and release.base_release not in releases:
                raise ChainError(f"release {release.name!r}: base release {release.base_release!r} is not declared")
            if release.max_new_tokens < 1:
                raise ChainError(f"release {release.name!r}: max_new_tokens must be at least 1")

    def mixture(self, name: str) -> Mixture:
        """The mixture record called `name`."""
        return next(mixture for mixture in self.mixtures if mixture.name == name)

    def stage(self, name: str) -> Stage:
        """The stage record called `name`."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ChainError(f"no stage {name!r}; the chain's stages: {', '.join(s.name for s in self.stages)}")

    def report(self, name: str) -> Report:
        """The report record called `name`."""
        for report in self.reports:
            if report.name == name:
                return report
        raise ChainError(f"no report {name!r}; the chain's reports: {', '.join(r.name for r in self.reports)}")

    def release(self, name: str) -> Release:
        """The release record called `name`."""
        for release in self.releases:
            if release.name == name:
                return release
        raise ChainError(f"no release {name!r}; the chain's releases: {', '.join(r.name for r in self.releases)}")

    def root_stage(self) -> Stage:
        """The stage that trains from scratch (pretraining), which every other stage descends from."""
        return next(stage for stage in self.stages if stage.parent is None)


@functools.cache
def _cached_chain(extra_modules: str) -> Chain:
    return load_chain(extra_modules)


def chain_for(extra_modules: str) -> Chain:
    """The chain with these extra modules (`""`: the shipped one), built once per process."""
    return CHAIN if extra_modules == CHAIN.extra_modules else _cached_chain(extra_modules)


def load_chain(extra_modules: str | None = None) -> Chain:
    """The shipped records plus those of the modules in `extra_modules` (default: $DOGE_EXTRA_STAGES)."""
    mixtures, stages, reports, releases = list(MIXTURES), list(STAGES), list(REPORTS), list(RELEASES)
    raw = os.environ.get(EXTRA_STAGES_ENV, "") if extra_modules is None else extra_modules
    for name in filter(None, (part.strip() for part in raw.split(","))):
        module = _import(name, EXTRA_STAGES_ENV)
        mixtures += getattr(module, "MIXTURES", [])
        stages += getattr(module, "STAGES", [])
        reports += getattr(module, "REPORTS", [])
        releases += getattr(module, "RELEASES", [])
    return Chain(tuple(mixtures), tuple(stages), tuple(reports), tuple(releases), raw)


CHAIN = load_chain()
