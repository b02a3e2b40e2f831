"""Malformed recipes are rejected before anything is launched or written: one table, one in-process materialization
per row.

Each row edits the tiny recipe (`tiny_raw` dotted-path edits, written with `write_tiny_recipe` into the row's own
recipes folder), materializes one asset of that folder in this process (`dg.materialize` on an ephemeral instance)
and asserts that the step fails with a message holding the row's texts: the field's dotted path and what to do
about it. Nothing may start or be written:

- no launch: `ProcessGroupSubprocessClient.run` (the local backend's launcher) is replaced by one that records
  the call and refuses, so a gap in the validation shows as a recorded launch instead of a training run;
- nothing in the artifact store: the store holds, before the run, only stand-in upstream artifacts (a manifest
  and one small file each, published for the versions the edited recipe plans, so a stage gets past "materialize
  X first" to its own checks); after the failure it holds exactly the same paths, so no artifact folder, no
  `.staging` leftover, no `.work` folder or launch spec, no lease (the store-wide lease lock file is the one
  thing allowed to appear).

No row trains or builds anything, so the whole table runs in seconds per row.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from helpers import DELETE, tiny_raw, write_tiny_recipe

from doge_dagster.artifacts import ArtifactStore
from doge_dagster.data.sources import SourceError
from doge_dagster.leases import LOCK_NAME
from doge_dagster.recipes import PROJECT_ROOT, RecipeError, RecipeFolder, parse_recipe
from doge_dagster.stages import CHAIN

PARTITION = "tiny"
TOKENIZER_VOCAB = 2052  # the stand-in tokenizer's size (the trained tiny BPE has about this many tokens)


@dataclass(frozen=True)
class File:
    """An edit value: a file with this text, written into the row's folder; the edit gets its path."""

    name: str
    text: str


@dataclass(frozen=True)
class Missing:
    """An edit value: the path of a file or folder, in the row's folder, that does not exist."""

    name: str


def sources(mixture: str, index: int, **changes: Any) -> list[dict[str, Any]]:
    """The tiny recipe's source list of `mixture` with entry `index` changed (a value DELETE removes the key)."""
    entries = copy.deepcopy(tiny_raw()["mixtures"][mixture]["sources"])
    for key, value in changes.items():
        if value is DELETE:
            entries[index].pop(key, None)
        else:
            entries[index][key] = value
    return entries


CPU_CONFIG = (PROJECT_ROOT / "recipes" / "accelerate" / "cpu.yaml").read_text()
CPU_DDP_CONFIG = (PROJECT_ROOT / "recipes" / "accelerate" / "cpu_ddp.yaml").read_text()


# (id, edits of the tiny recipe, asset to materialize, texts the failure must contain)
CASES: list[tuple[str, dict[str, Any], str, tuple[str, ...]]] = [
    # -- wrong types ------------------------------------------------------------------------------------------
    ("type-model-hidden-size", {"model.hidden_size": "big"}, "doge_base",
     ("model.hidden_size: Input should be a valid integer",)),
    ("type-mixture-total-size", {"mixtures.sft.total_size": "lots"}, "sft_mixture",
     ("mixtures.sft.total_size: Input should be a valid integer",)),
    ("type-training-learning-rate", {"stages.sft.training.learning_rate": "fast"}, "doge_instruct_sft",
     ("stages.sft.training.learning_rate is 'fast'", "takes a number")),
    ("type-training-max-steps", {"stages.pretrain.training.max_steps": 12.5}, "doge_base",
     ("stages.pretrain.training.max_steps is 12.5", "takes an integer")),
    ("type-training-scheduler-name", {"stages.sft.training.lr_scheduler_type": "cosine_typo"}, "doge_instruct_sft",
     ("stages.sft.training.lr_scheduler_type is 'cosine_typo'", "one of: ", "cosine_with_min_lr")),
    ("type-training-not-a-mapping", {"stages.dpo.training": ["max_steps", 40]}, "doge_instruct",
     ("stages.dpo.training: Input should be a valid dictionary",)),
    ("type-oom-backoff", {"stages.sft.oom_backoff": "yes"}, "doge_instruct_sft",
     ("stages.sft.oom_backoff", "must be true, false or left out")),
    ("type-tokenizer-source", {"tokenizer.source": "download"}, "tokenizer",
     ("tokenizer.source: Input should be 'hub', 'path' or 'train_bpe'",)),
    # -- unknown fields -----------------------------------------------------------------------------------------
    ("unknown-top-level", {"colour": "blue"}, "tokenizer",
     ("colour: unknown field; allowed here: ", "mixtures", "stages")),
    ("unknown-in-mixture", {"mixtures.sft.max_len": 128}, "sft_mixture",
     ("mixtures.sft.max_len: unknown field; allowed here: ", "max_length")),
    ("unknown-in-model", {"model.num_layers": 4}, "doge_base",
     ("model.num_layers: unknown field; allowed here: ", "num_hidden_layers")),
    ("unknown-in-launch", {"stages.sft.launch.gpus": 1}, "doge_instruct_sft",
     ("stages.sft.launch.gpus: unknown field; allowed here: ", "gpus_per_node")),
    ("unknown-in-evaluation", {"evaluation.base.max_sample": 10}, "base_eval",
     ("evaluation.base.max_sample: unknown field; allowed here: ", "max_samples")),
    ("unknown-in-training", {"stages.sft.training.learning_rat": 1.0e-3}, "doge_instruct_sft",
     ("stages.sft.training.learning_rat is not a field of trl.SFTConfig", "similar fields: learning_rate")),
    ("training-field-the-pipeline-sets", {"stages.pretrain.training.run_name": "mine"}, "doge_base",
     ("stages.pretrain.training.run_name is set by the pipeline; remove it",)),
    ("training-report-to-unknown-tracker", {"stages.pretrain.training.report_to": "tensorbord"}, "doge_base",
     ("stages.pretrain.training: report_to 'tensorbord': 'tensorbord' is not a supported tracker",
      "use none, tensorboard, mlflow or wandb, or a list of them")),
    ("training-report-to-unknown-in-list", {"stages.sft.training.report_to": ["tensorboard", "comet_ml"]},
     "doge_instruct_sft", ("stages.sft.training: report_to", "'comet_ml' is not a supported tracker",
                           "use none, tensorboard, mlflow or wandb")),
    ("training-report-to-all", {"stages.dpo.training.report_to": "all"}, "doge_instruct",
     ("stages.dpo.training: report_to 'all'", "is not supported", "use none, tensorboard, mlflow or wandb")),
    ("training-report-to-none-and-a-tracker", {"stages.pretrain.training.report_to": ["none", "tensorboard"]},
     "doge_base", ("stages.pretrain.training: report_to", "lists none beside trackers",
                   "keep the trackers only, or none alone")),
    ("training-legacy-field", {"stages.pretrain.training.output_dir": "/tmp/out"}, "doge_base",
     ("stages.pretrain.training: `output_dir` is no longer supported; remove it",)),
    # -- ratios -------------------------------------------------------------------------------------------------
    ("ratio-negative", {"mixtures.pretrain.sources": sources("pretrain", 0, ratio=-0.1)}, "pretrain_mixture",
     ("mixtures.pretrain.sources.0.ratio: Input should be greater than 0",)),
    ("ratio-above-one", {"mixtures.sft.sources": sources("sft", 0, ratio=1.5)}, "sft_mixture",
     ("mixtures.sft.sources.0.ratio: Input should be less than or equal to 1",)),
    ("ratio-sum-not-one", {"mixtures.pretrain.sources": sources("pretrain", 3, ratio=0.04)}, "pretrain_mixture",
     ("mixtures.pretrain: source ratios sum to 0.99; they must sum to 1",)),
    ("ratio-unknown-source", {"mixtures.pretrain.sources": sources("pretrain", 0, dataset="fineweb-edux")},
     "pretrain_mixture", ("mixtures.pretrain.sources.0.dataset: unknown dataset 'fineweb-edux'; use one of",)),
    ("ratio-source-of-another-kind", {"mixtures.sft.sources": sources("sft", 0, dataset="fineweb-edu")},
     "sft_mixture", ("mixtures.sft.sources.0.dataset: 'fineweb-edu' holds text rows", "needs conversation")),
    ("ratio-source-twice", {"mixtures.pretrain.sources": sources("pretrain", 1, dataset="fineweb-edu")},
     "pretrain_mixture", ("mixtures.pretrain: dataset listed twice: fineweb-edu; merge the entries",)),
    # -- impossible sizes ------------------------------------------------------------------------------------------
    ("size-hidden-not-divisible-by-heads", {"model.hidden_size": 130}, "doge_base",
     ("model.hidden_size (130) must be divisible by model.num_attention_heads (4)", "e.g. 128")),
    ("size-heads-not-divisible-by-kv-heads", {"model.num_key_value_heads": 3}, "doge_base",
     ("model.num_attention_heads (4) must be divisible by model.num_key_value_heads (3)",)),
    ("size-zero-layers", {"model.num_hidden_layers": 0}, "doge_base",
     ("model.num_hidden_layers: Input should be greater than 0",)),
    ("size-max-length-above-positions", {"mixtures.pretrain.max_length": 1024}, "pretrain_mixture",
     ("mixtures.pretrain.max_length (1024) is above model.max_position_embeddings (512)",
      "lower max_length to at most 512")),
    ("size-vocab-below-tokenizer", {"model.vocab_size": 1000}, "doge_base",
     (f"model.vocab_size 1000 is smaller than the tokenizer ({TOKENIZER_VOCAB} tokens)",
      f"set it to 'tokenizer' or at least {TOKENIZER_VOCAB}")),
    ("size-tokenizer-vocab-tiny", {"tokenizer.vocab_size": 4}, "tokenizer",
     ("tokenizer.vocab_size: Input should be greater than 8",)),
    # -- missing files ------------------------------------------------------------------------------------------
    ("missing-local-source",
     {"mixtures.sft.sources": [{"dataset": "smoltalk", "ratio": 1.0, "kind": "local", "path": Missing("smoltalk")}]},
     "sft_mixture", ("mixtures.sft.sources.0.path", "does not exist on this machine",
                     "point it at a folder of the dataset's jsonl/parquet files")),
    ("missing-tokenizer-folder", {"tokenizer": {"source": "path", "name_or_path": Missing("tokenizer")}}, "tokenizer",
     ("tokenizer.name_or_path", "is not a folder (source: path)", "point it at a local folder with tokenizer.json")),
    ("missing-accelerate-config-file", {"stages.sft.launch.accelerate_config": Missing("mine.yaml")},
     "doge_instruct_sft", ("stages.sft.launch.accelerate_config", "mine.yaml': no such file",
                           "give an existing accelerate config file or a known config name")),
    # -- accelerate configs -----------------------------------------------------------------------------------------
    ("accelerate-unknown-name", {"stages.pretrain.launch.accelerate_config": "cpu_zero7"}, "doge_base",
     ("stages.pretrain.launch.accelerate_config 'cpu_zero7' is not a known config", "cpu_ddp")),
    ("accelerate-num-processes-text",
     {"stages.sft.launch.accelerate_config": File("two.yaml", CPU_CONFIG.replace("num_processes: 1", "num_processes: two"))},
     "doge_instruct_sft", ("stages.sft.launch.accelerate_config", "num_processes 'two'", "is not a positive integer")),
    ("accelerate-num-processes-zero",
     {"stages.sft.launch.accelerate_config": File("zero.yaml", CPU_CONFIG.replace("num_processes: 1", "num_processes: 0"))},
     "doge_instruct_sft", ("stages.sft.launch.accelerate_config", "num_processes 0", "is not a positive integer")),
    ("accelerate-distributed-type",
     {"stages.sft.launch.accelerate_config": File("tpu.yaml", CPU_CONFIG.replace("distributed_type: 'NO'", "distributed_type: MULTI_TPU"))},
     "doge_instruct_sft", ("stages.sft.launch.accelerate_config", "distributed_type 'MULTI_TPU'",
                           "is not one of accelerate's", "MULTI_GPU")),
    ("accelerate-not-yaml", {"stages.sft.launch.accelerate_config": File("broken.yaml", "distributed_type: [NO\n")},
     "doge_instruct_sft", ("stages.sft.launch.accelerate_config", "is not a readable YAML file")),
    ("accelerate-evaluation-unknown-name", {"evaluation.base.launch.accelerate_config": "nope"}, "base_eval",
     ("evaluation.base.launch.accelerate_config 'nope' is not a known config",)),
    # -- launch settings ----------------------------------------------------------------------------------------------
    ("launch-time-limit-negative", {"stages.sft.launch.time_limit": "-1:00:00"}, "doge_instruct_sft",
     ("stages.sft.launch.time_limit", "'-1:00:00' is not a positive Slurm duration", "e.g. '24:00:00'")),
    ("launch-time-limit-words", {"evaluation.reason.launch.time_limit": "forever"}, "reason_eval",
     ("evaluation.reason.launch.time_limit", "'forever' is not a positive Slurm duration")),
    ("launch-memory", {"stages.pretrain.launch.memory": "lots"}, "doge_base",
     ("stages.pretrain.launch.memory", "'lots' is not a size", "e.g. '64G'")),
    ("launch-cpus-zero", {"stages.sft.launch.cpus_per_task": 0}, "doge_instruct_sft",
     ("stages.sft.launch.cpus_per_task: Input should be greater than 0",)),
    ("launch-node-selector-list", {"stages.sft.launch.node_selector": ["gpu"]}, "doge_instruct_sft",
     ("stages.sft.launch.node_selector: Input should be a valid dictionary",)),
    ("launch-sbatch-extra-string", {"stages.sft.launch.sbatch_extra": "--qos=high"}, "doge_instruct_sft",
     ("stages.sft.launch.sbatch_extra: Input should be a valid list",)),
    ("launch-env-name", {"stages.sft.launch.env": {"1BAD": "x"}}, "doge_instruct_sft",
     ("stages.sft.launch.env", "'1BAD' is not an environment variable name")),
    ("launch-image-with-space", {"stages.sft.launch.image": "my image"}, "doge_instruct_sft",
     ("stages.sft.launch.image", "'my image' is not an image reference")),
    ("launch-gpus-on-a-cpu-config", {"stages.sft.launch": {"accelerate_config": "cpu", "gpus_per_node": 2}},
     "doge_instruct_sft", ("stages.sft.launch.gpus_per_node is 2", "runs on the CPU (use_cpu: true)",
                           "set gpus_per_node: 0")),
    ("launch-more-processes-than-gpus",
     {"stages.sft.launch": {"accelerate_config": "ddp", "gpus_per_node": 2, "num_processes": 4}}, "doge_instruct_sft",
     ("stages.sft.launch.num_processes (4) is more than the 2 GPUs",)),
    ("launch-processes-undeclared", {"stages.pretrain.launch.accelerate_config": "cpu_ddp"}, "doge_base",
     ("stages.pretrain.launch: accelerate config 'cpu_ddp' declares 2 processes",
      "set stages.pretrain.launch.num_processes")),
    ("launch-processes-on-a-single-process-config",
     {"stages.sft.launch": {"accelerate_config": "cpu", "num_processes": 2}}, "doge_instruct_sft",
     ("stages.sft.launch resolves to 2 processes", "distributed_type NO", "cpu_ddp")),
    ("launch-processes-uneven-over-nodes",
     {"stages.sft.launch": {"accelerate_config": "ddp", "nodes": 2, "gpus_per_node": 2, "num_processes": 3}},
     "doge_instruct_sft", ("stages.sft.launch: 3 processes do not split evenly over 2 nodes",)),
    ("launch-custom-config-gpus-mismatch",
     {"stages.sft.launch": {"accelerate_config": File("ddp2.yaml", CPU_DDP_CONFIG), "gpus_per_node": 0}},
     "doge_instruct_sft", ("declares 2 processes", "set stages.sft.launch.num_processes")),
    # -- GRPO -----------------------------------------------------------------------------------------------------
    ("grpo-batch-not-divisible", {"stages.grpo.training.num_generations": 5}, "doge_reason",
     ("stages.grpo:", "per_device_train_batch_size (16)", "not divisible by training.num_generations (5)")),
    ("grpo-one-generation", {"stages.grpo.training.num_generations": 1}, "doge_reason",
     ("stages.grpo: training.num_generations must be at least 2",)),
    ("grpo-unknown-reward", {"stages.grpo.rewards": ["accuracy", "length"]}, "doge_reason",
     ("stages.grpo.rewards.1: Input should be 'accuracy' or 'format'",)),
    ("grpo-reward-weights", {"stages.grpo.reward_weights": [1.0]}, "doge_reason",
     ("stages.grpo: reward_weights needs one weight per entry of `rewards`",)),
    # -- evaluation task lists --------------------------------------------------------------------------------------
    ("eval-no-tasks", {"evaluation.base.tasks": []}, "base_eval",
     ("evaluation.base.tasks: List should have at least 1 item",)),
    ("eval-task-not-a-list", {"evaluation.base.tasks": "custom|arithmetic_mc|0|0"}, "base_eval",
     ("evaluation.base.tasks: Input should be a valid list",)),
    ("eval-task-malformed", {"evaluation.instruct.tasks": ["arithmetic_mc"]}, "instruct_eval",
     ("evaluation.instruct.tasks", "'arithmetic_mc' is not of the form suite|task|fewshot|truncate")),
    ("eval-task-fewshot-not-a-number", {"evaluation.base.tasks": ["custom|arithmetic_mc|zero|0"]}, "base_eval",
     ("evaluation.base.tasks", "is not of the form suite|task|fewshot|truncate")),
    ("eval-task-unknown-suite", {"evaluation.reason.tasks": ["customs|arithmetic_gen|0|0"]}, "reason_eval",
     ("evaluation.reason.tasks", "unknown suite 'customs'", "custom")),
    ("eval-task-twice", {"evaluation.base.tasks": ["custom|arithmetic_mc|0|0", "custom|arithmetic_mc|0|0"]},
     "base_eval", ("evaluation.base.tasks", "task listed twice: custom|arithmetic_mc|0|0")),
    ("eval-max-samples-zero", {"evaluation.base.max_samples": 0}, "base_eval",
     ("evaluation.base.max_samples: Input should be greater than 0",)),
    ("eval-format-rate-above-one", {"evaluation.reason.min_format_rate": 1.5}, "reason_eval",
     ("evaluation.reason.min_format_rate: Input should be less than or equal to 1",)),
]  # fmt: skip


# -- the harness --------------------------------------------------------------------------------------------------
def resolve(value: Any, folder: Path) -> Any:
    """An edit value with `File` written into `folder` and `Missing` turned into a path there (recursively)."""
    if isinstance(value, File):
        path = folder / value.name
        path.write_text(value.text)
        return str(path)
    if isinstance(value, Missing):
        return str(folder / value.name)
    if isinstance(value, dict):
        return {key: resolve(item, folder) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, folder) for item in value]
    return value


def asset_of(name: str, recipes: RecipeFolder) -> dg.AssetsDefinition:
    """The one asset `name` of the code location, built on the recipes folder (as `definitions.py` builds it)."""
    from assets.data import build_mixture_asset, build_tokenizer_asset
    from assets.evaluation import build_evaluation_asset
    from assets.training import build_training_asset

    if name == "tokenizer":
        return build_tokenizer_asset(recipes)
    for mixture in CHAIN.mixtures:
        if mixture.asset == name:
            return build_mixture_asset(mixture, recipes)
    for stage in CHAIN.stages:
        if stage.asset == name:
            return build_training_asset(stage, recipes)
    for report in CHAIN.reports:
        if report.asset == name:
            return build_evaluation_asset(report, recipes)
    raise AssertionError(f"no asset {name!r} in the chain")


def publish_stand_in_upstream(raw: dict[str, Any], asset: str, root: Path) -> None:
    """Publish a stand-in artifact for every upstream version the edited recipe plans for `asset` (nothing when
    the recipe does not parse or reads a missing local source: it fails before any upstream is looked for)."""
    from doge_dagster.plan import plan_versions

    try:
        planned = plan_versions(parse_recipe(raw, source="edited tiny"), nodes=[asset])[asset]
    except (RecipeError, SourceError):  # a missing local source has no version: the asset fails before upstream
        return
    store = ArtifactStore(str(root))
    for parent, version in planned.upstream.items():
        if store.read_manifest(parent, PARTITION, version) is not None:
            continue
        staged = store.staging_dir(parent, PARTITION, version)
        (staged / "stand-in.txt").write_text(f"a stand-in {parent} for a malformed-recipe test\n")
        metadata = {"vocab_size": TOKENIZER_VOCAB} if parent == "tokenizer" else {}
        store.publish(parent, PARTITION, version, staged, metadata=metadata)


def store_paths(root: Path) -> set[str]:
    """Every file and folder under the store root but the store-wide lease lock (`.leases.lock`): a released
    lease removes its file and the folders it made, so a refused build leaves the store as it found it."""
    if not root.exists():
        return set()
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.name != LOCK_NAME}


@pytest.fixture
def refuse_launches(monkeypatch) -> list[Any]:
    """Replace the local launcher by one that records the command and refuses: no row may train."""
    from resources.local import ProcessGroupSubprocessClient

    launches: list[Any] = []

    def refuse(self, *args, **kwargs):
        launches.append(kwargs.get("command"))
        raise AssertionError(f"a launch was attempted: {kwargs.get('command')}")

    monkeypatch.setattr(ProcessGroupSubprocessClient, "run", refuse)
    return launches


def failure_text(result: dg.ExecuteInJobResult) -> str:
    """Every step failure's error (with its cause) and `dg.Failure` description."""
    texts = []
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        texts.append(data.error.to_string() if data.error else "")
        if data.user_failure_data and data.user_failure_data.description:
            texts.append(data.user_failure_data.description)
    return "\n".join(texts)


def test_the_table_covers_every_kind_of_fault():
    """At least 30 rows, every category the campaign names, ids unique, every asset of the chain reachable."""
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 30, len(ids)
    categories = {case_id.split("-", 1)[0] for case_id in ids}
    assert {"type", "unknown", "ratio", "size", "missing", "accelerate", "launch", "grpo", "eval"} <= categories


@pytest.mark.parametrize(("edits", "asset", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_malformed_recipe_is_rejected_before_launch_naming_the_field(
    edits, asset, expected, tmp_path, refuse_launches, monkeypatch
):
    """The step fails naming the field and the fix; nothing was launched, nothing was written to the store."""
    from resources.artifact_store import ArtifactStoreResource
    from resources.compute import ComputeResource

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    files = tmp_path / "files"
    files.mkdir()
    resolved = {dotted: resolve(value, files) for dotted, value in edits.items()}
    recipes = write_tiny_recipe(tmp_path / "recipes", resolved)
    root = tmp_path / "artifacts"
    publish_stand_in_upstream(tiny_raw(resolved), asset, root)
    before = store_paths(root)

    result = dg.materialize(
        [asset_of(asset, RecipeFolder(recipes))],
        partition_key=PARTITION,
        resources={
            "artifact_store": ArtifactStoreResource(root=str(root)),
            "compute": ComputeResource(scratch_dir=str(tmp_path / "scratch")),
        },
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )

    assert not result.success, f"{asset} materialized with the malformed recipe"
    text = failure_text(result)
    for part in expected:
        assert part in text, f"{part!r} is not in the failure of {asset}:\n{text}"
    assert "a launch was attempted" not in text and refuse_launches == [], f"launched: {refuse_launches}"
    written = sorted(store_paths(root) - before)
    assert written == [], f"the rejected recipe wrote to the artifact store: {written}"
    assert sorted(store_paths(root) ^ before) == [], "the artifact store changed"
    held = sorted(str(path) for path in root.rglob(".leases/*.json")) if root.exists() else []
    assert held == [], f"a lease is still held: {held}"
    assert not (tmp_path / "scratch").exists(), "a work folder was made on the scratch"
