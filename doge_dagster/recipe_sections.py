"""The sections a recipe is made of: sources and mixtures, tokenizer, model, launch, stage and report.

Every section forbids unknown fields and is immutable once validated; the recipe itself (which sections
exist, one per mixture, stage and report of the chain) is assembled in `doge_dagster.recipes`.
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from doge_dagster.registry import DATASETS
from doge_dagster.training.tracking import report_to_problem

log = logging.getLogger(__name__)


# Seed recipes use transformers 4.x / TRL 0.x names. Renamed ones are translated (with a log line);
# removed ones are rejected with the replacement named.
LEGACY_RENAMES = {
    "max_seq_length": "max_length",
    "evaluation_strategy": "eval_strategy",
    "no_cuda": "use_cpu",
    "gradient_checkpointing": "activation_checkpointing",  # transformers 5 renamed it
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}
LEGACY_REMOVED = {
    "overwrite_output_dir": "remove it: the artifact store picks a fresh versioned output folder",
    "logging_dir": "remove it: logs go to the run log and the artifact's metadata",
    "output_dir": "remove it: the artifact store decides where checkpoints go",
    "max_prompt_length": "remove it: TRL 1.x truncates with `max_length` only",
    "max_completion_length_dpo": "remove it",
    "vllm_device": "remove it: TRL 1.x configures vLLM with `vllm_mode`",
}


# `model_dump(context=WITH_SETTINGS)` keeps the settings fields (`Field(exclude=True)`: left out of the plain dump,
# so out of every version) in the dump: for launch specs and override round trips, which must not lose them.
WITH_SETTINGS = {"with_settings": True}


class Strict(BaseModel):
    """Base for every recipe section: unknown fields are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Fields added after recipes were published: left out of the dump while unset, so the sections of recipes
    # that do not use them keep their versions (a section is versioned by its dump).
    OMITTED_WHEN_UNSET: ClassVar[tuple[str, ...]] = ()
    # Settings kept inside a mapping field (field -> keys), e.g. `training.report_to`: left out of the plain dump,
    # so out of every version, like the `Field(exclude=True)` settings, and kept with WITH_SETTINGS.
    SETTING_KEYS: ClassVar[dict[str, tuple[str, ...]]] = {}

    @model_serializer(mode="wrap")
    def _with_settings(self, handler: Any, info: SerializationInfo) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for name in self.OMITTED_WHEN_UNSET:
                if data.get(name) is None:
                    data.pop(name, None)
        with_settings = isinstance(info.context, dict) and info.context.get("with_settings")
        if isinstance(data, dict) and not with_settings:
            for name, keys in self.SETTING_KEYS.items():
                if isinstance(data.get(name), dict):
                    data[name] = {key: value for key, value in data[name].items() if key not in keys}
        if isinstance(data, dict) and with_settings:
            for name, field in type(self).model_fields.items():
                if field.exclude:  # scalar settings only (numbers, strings)
                    data[name] = getattr(self, name)
        return data


BLOB_DATASETS = ("python-edu",)  # Hub configs that ship blob ids, whose contents live elsewhere


class BlobContents(Strict):
    """Where a source's rows get their `text`: fetched by `blob_id` from an S3 store (python-edu's Hub config
    ships blob ids only; the files are gzip-compressed in Software Heritage's bucket).

    The endpoint and credentials come from the environment only (AWS_ENDPOINT_URL(_S3), AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION), never from the recipe, so no version or manifest holds them.
    """

    store: str = Field("s3://softwareheritage/content", description="S3 prefix; a blob is read from <store>/<blob_id>")
    concurrency: int = Field(64, gt=0, description="parallel requests")
    retries: int = Field(5, ge=0, description="retries of a transient failure, with exponential backoff")
    on_error: Literal["skip", "fail"] = Field("skip", description="a blob that cannot be read: drop its row, or fail")
    max_failures: int = Field(1000, ge=0, description="with skip: fail once more blobs than this could not be read")
    cache_dir: str | None = Field(
        None, description="local cache of the texts by blob id (default: DOGE_BLOB_CACHE, else <tmp>/doge-blobs)"
    )

    @field_validator("store")
    @classmethod
    def _s3_prefix(cls, value: str) -> str:
        bucket = value.removeprefix("s3://").strip("/").split("/", 1)[0]
        if not value.startswith("s3://") or not bucket:
            raise ValueError(f"contents.store {value!r} must be an S3 prefix, s3://<bucket>[/<prefix>]")
        return value.rstrip("/")


class SourceRef(Strict):
    """One dataset of a mixture and its share.

    `kind` says where rows come from: `hub` (the real Hub dataset, streamed), `local` (a folder of
    jsonl/parquet files in the Hub schema, or a local copy of the Hub repo) or `generated`
    (deterministic offline data in the same schema, for the `tiny` recipe and tests). `repo`/`config`
    read another Hub repo in the same schema (a mirror); `contents` fills python-edu's `text` from its
    blob ids.
    """

    dataset: str
    ratio: float = Field(gt=0, le=1)
    kind: Literal["hub", "local", "generated"] = "hub"
    path: str | None = Field(None, description="local folder (kind=local), or a Hub mirror root (kind=hub)")
    revision: str | None = Field(None, description="Hub revision to pin (kind=hub)")
    num_rows: int | None = Field(None, gt=0, description="rows to generate (kind=generated)")
    repo: str | None = Field(
        None,
        description="a Hub dataset repo to read instead of the registry's (kind=hub), in the same schema, "
        "e.g. a mirror of python-edu that carries `text`; with `path`, the folder `{path}/{repo}`",
    )
    config: str | None = Field(None, description="the Hub config to read instead of the registry's (kind=hub/local)")
    contents: BlobContents | None = Field(None, description="fetch `text` by `blob_id` (python-edu)")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value not in DATASETS:
            raise ValueError(f"unknown dataset {value!r}; use one of: {', '.join(sorted(DATASETS))}")
        return value

    @model_validator(mode="after")
    def _kind_fields(self) -> SourceRef:
        if self.kind == "local" and not self.path:
            raise ValueError("kind 'local' needs `path`: the folder holding the dataset files")
        if self.kind == "generated" and self.num_rows is None:
            raise ValueError("kind 'generated' needs `num_rows`: how many rows to generate")
        if self.kind != "generated" and self.num_rows is not None:
            raise ValueError("`num_rows` is only for kind 'generated'; remove it")
        if self.repo is not None and self.kind != "hub":
            raise ValueError("`repo` is only for kind 'hub' (a local folder is named by `path`); remove it")
        if self.config is not None and self.kind == "generated":
            raise ValueError("`config` is not for kind 'generated' (it writes the registry's config); remove it")
        if self.contents is not None and self.dataset not in BLOB_DATASETS:
            raise ValueError(
                f"`contents` (fetch text by blob id) is only for {', '.join(BLOB_DATASETS)}, whose rows carry "
                f"blob ids; dataset {self.dataset!r} has its text already: remove `contents`"
            )
        if self.contents is not None and self.kind == "generated":
            raise ValueError("`contents` is not for kind 'generated': generated rows carry their text; remove it")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_reading_options(self, handler: Any) -> Any:
        # Sections are versioned by their dump: leaving these later options out while unset keeps the versions
        # of the recipes that do not use them.
        data = handler(self)
        if isinstance(data, dict):
            for name in ("repo", "config", "contents"):
                if data.get(name) is None:
                    data.pop(name, None)
        return data


class MixtureRecipe(Strict):
    """A data mixture: sources by ratio, how much, how long, and how to split.

    `total_size` counts tokens for the pretraining mixture and examples for every other mixture.
    """

    sources: list[SourceRef] = Field(min_length=1)
    total_size: int = Field(gt=0)
    max_length: int = Field(gt=0)
    packing: bool | None = Field(None, description="true for pretraining (always packed), false for example mixtures")
    seed: int = 233
    test_size: float = Field(0.02, gt=0, lt=0.5)
    ratio_tolerance: float = Field(0.05, gt=0, lt=1)
    formatting: Literal["none", "identity", "thinking"] = "none"
    system_prompt: str | None = None
    shuffle_buffer: int = Field(10_000, gt=0)
    shard_rows: int = Field(
        10_000,
        gt=0,
        description="rows per shard on disk: what a killed build resumes from, and the example shuffle's unit",
    )
    # Excluded from the dump, so from versions: the output is the same for any number of processes.
    dataset_num_proc: int | None = Field(
        None, gt=0, exclude=True, description="tokenizing processes (default: the cores available)"
    )

    @model_validator(mode="after")
    def _ratios(self) -> MixtureRecipe:
        total = sum(source.ratio for source in self.sources)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"source ratios sum to {total:g}; they must sum to 1")
        names = [source.dataset for source in self.sources]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"dataset listed twice: {', '.join(duplicates)}; merge the entries")
        return self


class TokenizerRecipe(Strict):
    """Where the tokenizer comes from: the Hub, a local folder, or a BPE trained on the pretraining sources."""

    source: Literal["hub", "path", "train_bpe"]
    name_or_path: str | None = None
    revision: str | None = None
    vocab_size: int = Field(32768, gt=8)
    train_samples: int = Field(20_000, gt=0, description="documents per pretraining source used for BPE")
    min_frequency: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _location(self) -> TokenizerRecipe:
        if self.source in ("hub", "path") and not self.name_or_path:
            raise ValueError(f"source {self.source!r} needs `name_or_path` (a Hub id or a local folder)")
        return self


class ModelRecipe(Strict):
    """The Doge architecture (transformers `DogeConfig` fields we set; others keep their defaults)."""

    vocab_size: int | Literal["tokenizer"] = 32768
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_hidden_layers: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(gt=0)
    max_position_embeddings: int = Field(2048, gt=0)
    keep_window_size: int = Field(2048, gt=0)
    rope_theta: float = Field(10000.0, gt=0)
    tie_word_embeddings: bool = True
    hidden_act: str = "silu"
    rms_norm_eps: float = Field(1e-6, gt=0)
    initializer_range: float = Field(0.02, gt=0)
    hidden_dropout: float = Field(0.0, ge=0, lt=1)
    attention_dropout: float = Field(0.0, ge=0, lt=1)
    bos_token_id: int = 0
    eos_token_id: int = 1
    pad_token_id: int = 2

    @model_validator(mode="after")
    def _shapes(self) -> ModelRecipe:
        if self.hidden_size % self.num_attention_heads:
            heads = self.num_attention_heads
            raise ValueError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_attention_heads ({heads}); "
                f"set hidden_size to a multiple of {heads} (e.g. {max(heads, self.hidden_size // heads * heads)}) "
                "or change num_attention_heads"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"model.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"model.num_key_value_heads ({self.num_key_value_heads}); set num_key_value_heads to a divisor of "
                f"num_attention_heads"
            )
        if self.pad_token_id == self.eos_token_id:
            raise ValueError("pad_token_id must differ from eos_token_id, or every EOS is masked from the loss")
        return self


# Slurm time limits (`doge_dagster.throughput.time_limit_seconds` reads the same): days, hours, minutes, seconds.
TIME_LIMIT = re.compile(r"(?:(\d+)-(\d+)(?::(\d+)(?::(\d+))?)?|(\d+)(?::(\d+))?|(\d+):(\d+):(\d+))")
# Slurm (`64G`, `4096` = MB) and Kubernetes (`64Gi`, `1.5G`) memory sizes.
MEMORY = re.compile(r"\d+(\.\d+)?([KMGTPEkmgtpe]i?)?[Bb]?")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class LaunchRecipe(Strict):
    """Where and how a stage runs: accelerate config, processes, and scheduler settings per backend."""

    accelerate_config: str = "cpu"
    num_processes: int | None = Field(None, gt=0, description="default: gpus_per_node x nodes, or 1 on CPU")
    nodes: int = Field(1, gt=0)
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_task: int | None = Field(None, gt=0)
    memory: str | None = None
    time_limit: str = "24:00:00"
    partition: str | None = None
    account: str | None = None
    sbatch_extra: list[str] = Field(default_factory=list)
    setup: list[str] = Field(default_factory=list, description="shell lines run before the launch")
    image: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    # Planning and reporting settings: excluded from the dump, so from versions (they change no model), kept in
    # launch specs (WITH_SETTINGS). See doge_dagster/budget.py and doge_dagster/throughput.py.
    device: str | None = Field(
        None,
        exclude=True,
        description="the GPU the stage runs on (e.g. H200, 'NVIDIA H100 80GB HBM3'): picks the measured rate for "
        "`doge-dagster plan` and the time-limit check (a local GPU detected by nvidia-smi wins)",
    )
    expected_tokens_per_second: float | None = Field(
        None,
        gt=0,
        exclude=True,
        description="tokens/s of ONE process (GPU) for this stage, e.g. from a device check: wins over the "
        "measured rates; the launch's rate is this x processes",
    )
    peak_tflops: float | None = Field(
        None,
        gt=0,
        exclude=True,
        description="dense bf16 peak TFLOP/s of one device for MFU (default: the table in throughput.py by device name)",
    )
    gpu_hour_price: float | None = Field(
        None, ge=0, exclude=True, description="price of one GPU-hour (any currency) for the run's estimated cost"
    )

    @field_validator("time_limit")
    @classmethod
    def _slurm_time(cls, value: str) -> str:
        # Slurm's formats; anything else would be misread (a leading `-` is taken as a day separator) or fail late.
        match = TIME_LIMIT.fullmatch(value.strip())
        total = sum(int(part or 0) for part in match.groups()) if match else 0
        if not match or total == 0:
            raise ValueError(
                f"time_limit {value!r} is not a positive Slurm duration; write MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM "
                "or D-HH:MM:SS, e.g. '24:00:00' or '2-00:00:00'"
            )
        return value

    @field_validator("memory")
    @classmethod
    def _memory_size(cls, value: str | None) -> str | None:
        if value is not None and not MEMORY.fullmatch(value.strip()):
            raise ValueError(
                f"memory {value!r} is not a size; write a number with an optional unit, e.g. '64G' (Slurm) or "
                "'64Gi' (Kubernetes); a bare number is megabytes"
            )
        return value

    @field_validator("image")
    @classmethod
    def _image_reference(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(char.isspace() for char in value)):
            raise ValueError(
                f"image {value!r} is not an image reference (no spaces), e.g. registry.example.com/doge-dagster:0.1.0"
            )
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not ENV_NAME.fullmatch(name):
                raise ValueError(
                    f"env: {name!r} is not an environment variable name (letters, digits and _, not starting with a "
                    "digit); rename it"
                )
        return value

    @property
    def processes(self) -> int:
        """Total processes across nodes."""
        if self.num_processes is not None:
            return self.num_processes
        return max(1, self.gpus_per_node) * self.nodes


class StageRecipe(Strict):
    """A training stage: arguments for its trainer config and its launch settings.

    `training` keys are fields of transformers `TrainingArguments` (pretraining) or of the TRL config
    of the stage; they are checked against that class before launch.
    """

    # `training.report_to` (TensorBoard, MLflow, W&B; doge_dagster/training/tracking.py) says where the metrics go,
    # not what is trained: a setting, so out of every version.
    SETTING_KEYS: ClassVar[dict[str, tuple[str, ...]]] = {"training": ("report_to",)}

    training: dict[str, Any] = Field(default_factory=dict)
    launch: LaunchRecipe = Field(default_factory=LaunchRecipe)
    # A stage setting, not a `launch` one: launch settings are shared with reports, which never back off.
    # Excluded from the dump, so from versions (kept in launch specs, WITH_SETTINGS): a backoff trains on the same
    # rows per step with the same global batch and LR schedule, only the float summation order differs, and
    # whether it happens depends on the GPU, not the recipe. The batch that ran is in the model's metadata.
    oom_backoff: bool | None = Field(
        None,
        exclude=True,
        description="on out of memory, halve per_device_train_batch_size and double gradient_accumulation_steps "
        "(same global batch, LR schedule and data order) and go on from the last checkpoint; default (unset): "
        "on when the stage trains on a GPU, off on CPU (doge_dagster.training.memory)",
    )

    @field_validator("oom_backoff", mode="before")
    @classmethod
    def _oom_backoff_is_bool(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"oom_backoff must be true, false or left out (on for GPU launches), not {value!r}")
        return value

    @model_validator(mode="after")
    def _one_batch_finder(self) -> StageRecipe:
        if self.training.get("auto_find_batch_size") and self.oom_backoff is not False:
            raise ValueError(
                "training.auto_find_batch_size halves per_device_train_batch_size without doubling "
                "gradient_accumulation_steps, which changes the global batch and the LR schedule; remove it "
                "(oom_backoff, on by default on GPU, keeps both) or set oom_backoff: false to use it anyway"
            )
        return self

    def continues_from(self) -> str | None:
        """The published version of the stage's own model this run continues from (None: the stage starts
        from its parent's model, or from scratch)."""
        return None

    def launch_problem(self) -> str | None:
        """Why the section cannot launch as configured, naming the fields (None when it can)."""
        return None

    @field_validator("training", mode="before")
    @classmethod
    def _translate_legacy(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        # PyYAML reads `3e-3` (no dot) as a string; trainers need the number.
        translated = {key: _number_or_text(item) for key, item in value.items()}
        for old, reason in LEGACY_REMOVED.items():
            if old in translated:
                raise ValueError(f"`{old}` is no longer supported; {reason}")
        for old, new in LEGACY_RENAMES.items():
            if old in translated:
                if new in translated:
                    raise ValueError(f"both `{old}` and its replacement `{new}` given; keep only `{new}`")
                log.info("recipe: translated legacy training field %s -> %s", old, new)
                translated[new] = translated.pop(old)
        if "warmup_ratio" in translated:
            # transformers 5 dropped warmup_ratio: a warmup_steps below 1 is read as a ratio.
            ratio = translated.pop("warmup_ratio")
            if "warmup_steps" in translated:
                raise ValueError("both `warmup_ratio` and `warmup_steps` given; keep only `warmup_steps`")
            if not 0 <= float(ratio) < 1:
                raise ValueError("`warmup_ratio` must be in [0, 1)")
            log.info("recipe: translated warmup_ratio=%s -> warmup_steps=%s", ratio, ratio)
            translated["warmup_steps"] = float(ratio)
        if "report_to" in translated and (problem := report_to_problem(translated["report_to"])):
            raise ValueError(problem)
        return translated


FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _number_or_text(value: Any) -> Any:
    return float(value) if isinstance(value, str) and FLOAT_TEXT.match(value) else value


class PretrainStage(StageRecipe):
    """Pretraining from scratch, or continued from `init_from`: a Hub id, a local folder, or a published
    `doge_base:<version>` of the same partition (its WSD stable-phase snapshot when it kept one)."""

    OMITTED_WHEN_UNSET: ClassVar[tuple[str, ...]] = ("init_revision",)

    init_from: str | None = None
    # For a Hub id: the branch, tag or commit to continue from (default main). The commit it resolves to is an
    # upstream of the model, so a new checkpoint on that branch gives a new version.
    init_revision: str | None = None

    @field_validator("init_from")
    @classmethod
    def _pinned_base(cls, value: str | None) -> str | None:
        # The reference is part of doge_base's version: a moving target such as `latest` would make a new
        # base model look cached. The retraining schedule resolves the newest version before each run.
        asset, separator, version = (value or "").partition(":")
        if separator and asset == "doge_base" and not re.fullmatch(r"[0-9a-f]{16}", version):
            raise ValueError(
                f"init_from {value!r}: name a published version, doge_base:<16 hex digits> "
                "(`doge-dagster versions --partition P` lists them)"
            )
        return value

    def continues_from(self) -> str | None:
        """The `doge_base` version this run continues from, when `init_from` names a published one."""
        asset, _, version = (self.init_from or "").partition(":")
        return version if asset == "doge_base" and version else None

    def hub_model(self) -> str | None:
        """The Hub id this run continues from, when `init_from` names one (not a folder, not a published base)."""
        from doge_dagster.hub_models import is_hub_id

        return self.init_from if is_hub_id(self.init_from) else None

    @model_validator(mode="after")
    def _revision_needs_a_hub_id(self) -> PretrainStage:
        if self.init_revision and not self.hub_model():
            raise ValueError(f"init_revision {self.init_revision!r} applies to a Hub id in init_from, and init_from is "
                             f"{self.init_from!r}; remove init_revision or name a Hub id (org/name)")  # fmt: skip
        return self


class GRPOStage(StageRecipe):
    """GRPO with verifiable rewards; `rewards` names functions of `doge_dagster.training.rewards`."""

    rewards: list[Literal["accuracy", "format"]] = Field(default_factory=lambda: ["accuracy", "format"])
    reward_weights: list[float] | None = None
    reward_ceiling: float = Field(
        0.95,
        ge=0,
        le=1,
        description="the `reward_improves` check passes when the format reward over the last logged steps is at "
        "least this (a model that already answers in the think format has nothing left to learn there), or when "
        "the reward rose; 0 turns the learning check into a no-op (for runs that test mechanics, not learning)",
    )

    @model_validator(mode="after")
    def _generations(self) -> GRPOStage:
        generations = self.training.get("num_generations", 8)
        if int(generations) < 2:
            raise ValueError("training.num_generations must be at least 2: one completion per prompt has no signal")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ValueError("reward_weights needs one weight per entry of `rewards`")
        return self

    def launch_problem(self) -> str | None:
        """TRL samples `num_generations` completions per prompt from one generation batch, so the batch
        (per device x processes x steps per generation) must divide into whole groups."""
        generations = int(self.training.get("num_generations", 8))
        per_device = int(self.training.get("per_device_train_batch_size", 8))
        steps = int(self.training.get("steps_per_generation") or self.training.get("gradient_accumulation_steps", 1))
        batch = per_device * self.launch.processes * steps
        if batch % generations:
            return (
                f"the generation batch per_device_train_batch_size ({per_device}) x processes "
                f"({self.launch.processes}) x steps_per_generation ({steps}) = {batch} is not divisible by "
                f"training.num_generations ({generations}); change one of them"
            )
        return None


# lighteval 0.11's suites (`lighteval.tasks.registry.DEFAULT_SUITES`; importing lighteval costs seconds, so copied).
LIGHTEVAL_SUITES = (
    "helm", "bigbench", "harness", "leaderboard", "lighteval", "original", "extended", "custom", "test",
    "community", "multilingual",
)  # fmt: skip
TASK_PATTERN = re.compile(r"^[\w.-]+\|[\w.:/-]+\|\d+\|[01]$")


class EvalRecipe(Strict):
    """A lighteval report: task strings `suite|task|fewshot|truncate` and the gates on its scores."""

    tasks: list[str] = Field(min_length=1)
    use_chat_template: bool = False
    max_samples: int | None = Field(None, gt=0)
    regression_tolerance: float = Field(0.02, ge=0)
    min_format_rate: float | None = Field(None, ge=0, le=1)
    launch: LaunchRecipe = Field(default_factory=LaunchRecipe)

    @field_validator("tasks")
    @classmethod
    def _task_strings(cls, tasks: list[str]) -> list[str]:
        for task in tasks:
            if not TASK_PATTERN.match(task):
                raise ValueError(
                    f"task {task!r} is not of the form suite|task|fewshot|truncate (e.g. lighteval|piqa|0|0)"
                )
            suite = task.split("|", 1)[0]
            if suite not in LIGHTEVAL_SUITES:
                raise ValueError(
                    f"task {task!r}: unknown suite {suite!r}; use one of {', '.join(LIGHTEVAL_SUITES)} "
                    "(the project's own tasks are in `custom`)"
                )
        repeated = sorted({task for task in tasks if tasks.count(task) > 1})
        if repeated:
            raise ValueError(f"task listed twice: {', '.join(repeated)}; list each task once")
        return tasks


# The Hub's repo ids: `<org or user>/<name>`, letters, digits, `-`, `_`, `.`; no `--` or `..`, no `-`/`.` at the ends.
HUB_NAME = re.compile(r"(?!.*(--|\.\.))[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?")
HUB_LICENSE = re.compile(r"[a-z0-9][a-z0-9.+-]*")


class ReleaseRecipe(Strict):
    """A release of one stage's model (`releases.<name>`): where it goes, who sees it, its licence and tags.

    Without `repo_id` the release is a dry run: the folder is built, validated and published to the artifact
    store, and nothing leaves the machine. With it, the folder is pushed to `<org>/<name>` on the Hub (token
    from HF_TOKEN at run time), tagged with the release's artifact version.
    """

    # A setting, not content: excluded from the dump, so turning a release on or off changes no version.
    enabled: bool = Field(
        True, exclude=True, description="build this release when its asset is materialized; false: the step skips"
    )
    repo_id: str | None = Field(None, description="`<org>/<name>` on the Hub; unset: a dry run (built, not pushed)")
    private: bool = Field(True, description="create the Hub repo private; an existing public repo is refused")
    license: str = Field(
        "apache-2.0", description="a Hub license id (https://huggingface.co/docs/hub/repositories-licenses)"
    )
    tags: list[str] = Field(default_factory=list, description="extra Hub tags of the model card")

    @field_validator("repo_id")
    @classmethod
    def _hub_repo(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = value.split("/")
        if len(parts) != 2 or not all(HUB_NAME.fullmatch(part) for part in parts):
            raise ValueError(
                f"repo_id {value!r} is not a Hub repo id; write <org>/<name> (letters, digits, '-', '_', '.'), "
                "e.g. SmallDoge/Doge-20M-Instruct, or leave it out for a dry run"
            )
        return value

    @field_validator("license")
    @classmethod
    def _hub_license(cls, value: str) -> str:
        if not HUB_LICENSE.fullmatch(value):
            raise ValueError(
                f"license {value!r} is not a Hub license id; write one in lower case, e.g. apache-2.0 or mit "
                "(https://huggingface.co/docs/hub/repositories-licenses)"
            )
        return value

    @field_validator("tags")
    @classmethod
    def _distinct_tags(cls, tags: list[str]) -> list[str]:
        if bad := [tag for tag in tags if not tag.strip() or tag != tag.strip()]:
            raise ValueError(f"tags {bad!r}: a tag is a non-empty word without surrounding spaces")
        if repeated := sorted({tag for tag in tags if tags.count(tag) > 1}):
            raise ValueError(f"tag listed twice: {', '.join(repeated)}; list each tag once")
        return tags
