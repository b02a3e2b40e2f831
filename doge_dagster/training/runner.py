"""The one runner every training stage shares: load inputs, build the model, train (resuming), save, check, publish.

What differs between stages is in their records (`doge_dagster.stages`) and their trainer classes
(`doge_dagster.trainer_contract.StageTrainer`): how to build the model and the trainer, extra callbacks.
"""

from __future__ import annotations

import importlib
import json
import re
import resource
import shutil
import time
from pathlib import Path
from typing import Any

from doge_dagster.artifacts import ArtifactStore
from doge_dagster.budget import stage_run_metrics
from doge_dagster.gates import checks_record
from doge_dagster.launching.reporting import Reporter, global_rank, run_entrypoint
from doge_dagster.launching.spec import LaunchSpec
from doge_dagster.model_checks import TrainedModel, run_checks
from doge_dagster.recipes import parse_recipe
from doge_dagster.stages import chain_for
from doge_dagster.trainer_contract import StageContext, StageTrainer
from doge_dagster.training.memory import OutOfMemoryBackoff, injected_faults
from doge_dagster.training.progress import progress_callback
from doge_dagster.training.sharding import enable_fsdp_on_cpu, save_full_model, whole_model_loading
from doge_dagster.training.tracking import Tracking, report_targets, run_name

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# TRL's configs default to bf16 autocast and activation (gradient) checkpointing, transformers'
# `TrainingArguments` to neither. Every stage starts from the same plain defaults, so precision and memory
# are the recipe's explicit choice: on a CPU without native bf16 (AVX2), TRL's defaults ran the chat stages
# about 9x slower per token than pretraining, and their rounding changed the trained weights.
TRAINER_DEFAULTS = {"bf16": False, "activation_checkpointing": False}


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint whose trainer state was written (a kill mid-save leaves an incomplete one)."""
    if not folder.is_dir():
        return None
    candidates = sorted(
        (int(match[1]), path) for path in folder.iterdir() if (match := CHECKPOINT.match(path.name)) and path.is_dir()
    )
    for step, path in reversed(candidates):
        state = path / "trainer_state.json"
        try:
            if json.loads(state.read_text()).get("global_step") == step:
                return path
        except (OSError, ValueError):
            pass
    return None


def build_args(ctx: StageContext, trainer: StageTrainer, checkpoints: Path, batch: dict[str, Any] | None = None):
    """The trainer config: plain defaults, the stage's defaults, the recipe's fields, the stage's forced
    fields, the batch an out-of-memory backoff settled on (`batch`), and the fields the pipeline owns
    (`report_to` is the recipe's trackers, `run_name` what every tracker calls the run: tracking.py)."""
    module, _, name = ctx.stage.config_class.partition(":")
    config_class = getattr(importlib.import_module(module), name)
    training = {
        **TRAINER_DEFAULTS,
        **trainer.training_defaults(ctx),
        **ctx.section.training,
        **trainer.training_forced(ctx),
        **(batch or {}),
    }
    report_to = report_targets(training.pop("report_to", None)) or "none"
    import torch

    return config_class(
        **training,
        output_dir=str(checkpoints),
        report_to=report_to,
        run_name=run_name(ctx.spec.asset, ctx.spec.partition, ctx.spec.version),
        logging_first_step=True,
        disable_tqdm=True,
        save_strategy="steps",
        save_total_limit=training.get("save_total_limit", 2),
        include_num_input_tokens_seen=True,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=training.get("dataloader_num_workers", 0),
    )


def run_stage(stage: str, spec_path: str) -> None:
    """Entry point of `python -m doge_dagster.training STAGE --spec SPEC` (under `accelerate launch`)."""
    run_entrypoint(stage, spec_path, _run)


def stage_context(spec: LaunchSpec, reporter: Reporter | None = None) -> StageContext:
    """The stage's context with its tokenizer and mixture loaded (the spec's recipe decides the chain)."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    recipe = parse_recipe(
        spec.recipe, source=f"spec {spec.asset}[{spec.partition}]", chain=chain_for(spec.extra_stages)
    )
    stage = recipe.chain.stage(spec.name)
    ctx = StageContext(spec, recipe, ArtifactStore(spec.store_root), reporter, stage)
    ctx.tokenizer = AutoTokenizer.from_pretrained(str(ctx.artifact_dir("tokenizer")))
    ctx.data = load_from_disk(str(ctx.artifact_dir(recipe.chain.mixture(stage.mixture).asset)))
    return ctx


def parent_asset(ctx: StageContext) -> str | None:
    """The model asset this stage starts from (None for a stage that builds its own model)."""
    return ctx.recipe.chain.stage(ctx.stage.parent).asset if ctx.stage.parent else None


def initial_model(ctx: StageContext, trainer: StageTrainer):
    """The parent stage's published model, or the trainer's own (e.g. a fresh Doge)."""
    from transformers import AutoModelForCausalLM

    parent = parent_asset(ctx)
    if parent is None:
        return trainer.build_model(ctx)
    model = AutoModelForCausalLM.from_pretrained(str(ctx.artifact_dir(parent)))
    model.config.router_aux_loss_coef = 0.0
    return model


def _run(spec: LaunchSpec, reporter: Reporter, started: float) -> None:
    ctx = stage_context(spec, reporter)
    # TensorBoard, MLflow, W&B (`report_to`): rank 0 owns the one MLflow run, ended however the stage ends
    tracking = Tracking.start(spec, ctx.section.training, main=global_rank() == 0)
    succeeded = False
    try:
        _train(ctx, spec, reporter, started, tracking)
        succeeded = True
    finally:
        tracking.end(succeeded)


def _train(ctx: StageContext, spec: LaunchSpec, reporter: Reporter, started: float, tracking: Tracking) -> None:
    from transformers import set_seed

    recipe, store = ctx.recipe, ctx.store
    enable_fsdp_on_cpu()  # an FSDP launch without CUDA stays FSDP (accelerate would make it DDP)
    stage_trainer = ctx.stage.trainer_class()()
    progress = progress_callback(reporter)
    ctx.callbacks = [progress, *stage_trainer.callbacks(ctx), *injected_faults()]
    checkpoints = Path(spec.work_dir) / "checkpoints"
    from transformers import PrinterCallback

    def build_trainer(batch: dict[str, Any]):
        # The Trainer seeds itself only after the model exists: seed first, or a new model's initial
        # weights (and so every later stage) change from run to run (and from one OOM backoff to the next).
        set_seed(int(ctx.section.training.get("seed", 42)))
        model = initial_model(ctx, stage_trainer)
        trainer = stage_trainer.build_trainer(ctx, model, build_args(ctx, stage_trainer, checkpoints, batch))
        trainer.remove_callback(PrinterCallback)  # the progress callback already logs every step
        tracking.adopt(trainer)
        return trainer

    backoff = OutOfMemoryBackoff(ctx, checkpoints, build_trainer, last_complete_checkpoint)
    resume = last_complete_checkpoint(checkpoints)
    start_step = int(resume.name.split("-")[1]) if resume else 0
    parameters = sum(p.numel() for p in backoff.trainer.model.parameters())
    reporter.info(
        f"{spec.asset}[{spec.partition}] version {spec.version}: {parameters:,} parameters, world size "
        f"{backoff.trainer.args.world_size}, " + (f"resuming from {resume.name}" if resume else "starting at step 0")
    )
    result = backoff.train()  # on out of memory: a smaller per-device batch, more accumulation (memory.py)
    trainer = backoff.trainer
    eval_metrics = trainer.evaluate() if trainer.eval_dataset is not None else {}
    tracking.trained(trainer)
    staged = Path(spec.work_dir) / "final"
    save_full_model(trainer, staged)  # collective under FSDP / ZeRO-3 (gathers the full weights); rank 0 writes
    if global_rank() != 0:
        return
    ctx.tokenizer.save_pretrained(str(staged))
    stage_trainer.finalize(ctx, staged)
    metrics = _metrics(spec, trainer, result, eval_metrics, progress, start_step, parameters, started)
    metrics.update(backoff.metadata())
    metrics.update(tracking.metadata())
    tracking.add_to(staged)  # TensorBoard's event files, published with the model (tensorboard/)
    _write_generation_config(staged, ctx.tokenizer)
    plot_curves(staged / "loss_curve.png", spec.asset, progress.curve, progress.eval_losses, progress.rewards)
    rewards = {"reward": progress.rewards, **progress.reward_parts} if progress.rewards else {}
    ceiling = getattr(ctx.section, "reward_ceiling", 0.95)
    trained = TrainedModel(staged, ctx.tokenizer, progress.curve, recipe.model.vocab_size, rewards, ceiling)
    with whole_model_loading():  # rank 0 alone loads the saved model (not partitioned by ZeRO-3's zero.Init)
        checks = run_checks(ctx.stage.checks, trained)
    _write_model_card(staged, spec, recipe.name, ctx.section, metrics)
    manifest = store.publish(
        spec.asset, spec.partition, spec.version, staged, spec.upstream,
        {**spec.manifest_metadata, **metrics, **checks_record(checks)},
    )  # fmt: skip
    shutil.rmtree(checkpoints, ignore_errors=True)
    shutil.rmtree(tracking.tensorboard_dir, ignore_errors=True)
    metrics["artifact_uri"] = store.url(manifest.asset, manifest.partition, manifest.version)
    reporter.info(f"published {metrics['artifact_uri']} (final loss {metrics.get('final_train_loss')})")


def _metrics(spec, trainer, result, eval_metrics, progress, start_step, parameters, started) -> dict[str, Any]:
    import torch

    curve = progress.curve
    metrics: dict[str, Any] = {
        "version": spec.version,
        "parameters": parameters,
        "global_step": trainer.state.global_step,
        "resumed_from_step": start_step,
        "world_size": trainer.args.world_size,
        "train_loss_curve": [[step, round(loss, 5)] for step, loss in curve],
        "first_train_loss": curve[0][1] if curve else float("nan"),
        "final_train_loss": curve[-1][1] if curve else float("nan"),
        "tokens_seen": int(trainer.state.num_input_tokens_seen or 0),
        "tokens_per_second": round(progress.tokens_per_second(), 1),
        "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 2),
        "wall_time_s": round(time.monotonic() - started, 2),
    }
    if "eval_loss" in eval_metrics:
        metrics["eval_loss"] = round(float(eval_metrics["eval_loss"]), 5)
    if progress.rewards:
        metrics["reward_curve"] = [[step, round(value, 4)] for step, value in progress.rewards]
        metrics["reward_curves"] = {
            name: [[step, round(value, 4)] for step, value in points] for name, points in progress.reward_parts.items()
        }
        metrics["final_reward"] = progress.rewards[-1][1]
    if torch.cuda.is_available():
        metrics["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    else:
        metrics["peak_memory_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    # tokens/s per process, MFU (or why not), GPU-hours and cost: doge_dagster/budget.py, throughput.py
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    config = trainer.accelerator.unwrap_model(trainer.model).config
    metrics.update(stage_run_metrics(spec, config, parameters, metrics["tokens_per_second"],
                                     metrics["wall_time_s"], metrics["world_size"], device))  # fmt: skip
    return metrics


def plot_curves(path: Path, title: str, losses, eval_losses, rewards) -> None:
    """A small PNG of the training (and eval) loss, and the GRPO reward, to see convergence at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    panels = 2 if rewards else 1
    figure, axes = pyplot.subplots(1, panels, figsize=(4.5 * panels, 3), dpi=80, squeeze=False)
    loss_axis = axes[0][0]
    if losses:
        loss_axis.plot(*zip(*losses), label="train loss")
    if eval_losses:
        loss_axis.plot(*zip(*eval_losses), "o", label="eval loss")
    loss_axis.set_xlabel("step")
    loss_axis.set_title(f"{title}: loss")
    loss_axis.legend()
    if rewards:
        axes[0][1].plot(*zip(*rewards), color="tab:green")
        axes[0][1].set_xlabel("step")
        axes[0][1].set_title("mean reward")
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


def _write_generation_config(folder: Path, tokenizer) -> None:
    # Greedy and short on purpose: the model checks generate with it, and editing it would change what new trained
    # artifacts hold without changing their versions. Releases carry the seed's sampling (doge_dagster/release.py).
    from transformers import GenerationConfig

    end_ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[token for token in end_ids if token is not None],
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=64,
        do_sample=False,
    ).save_pretrained(str(folder))


def _write_model_card(folder: Path, spec: LaunchSpec, recipe_name: str, section, metrics: dict[str, Any]) -> None:
    lines = [
        f"# {spec.asset} ({recipe_name})",
        "",
        f"Doge model produced by the doge-dagster `{spec.name}` stage. Version `{spec.version}`.",
        "Load it with `AutoModelForCausalLM.from_pretrained(path)` (native transformers Doge, no remote code).",
        "",
        "## Lineage",
        "",
        *[f"- `{asset}`: `{version}`" for asset, version in sorted(spec.upstream.items())],
        "",
        "## Recipe section",
        "",
        "```json",
        json.dumps(section.model_dump(mode="json"), indent=2),
        "```",
        "",
        "## Metrics",
        "",
        *[f"- {key}: {value}" for key, value in metrics.items() if not isinstance(value, list)],
        "",
    ]
    (folder / "README.md").write_text("\n".join(lines))
