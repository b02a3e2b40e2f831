"""The one runner every training stage shares: load inputs, build the model, train (resuming), save, check, publish.

Stage modules (`pretrain`, `sft`, `dpo`, `grpo`) only say how to build their model and trainer.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doge_dagster.artifacts import ArtifactStore
from doge_dagster.recipes import MixtureRecipe, Recipe, parse_recipe
from doge_dagster.training.reporting import Reporter, global_rank, progress_callback, run_entrypoint
from doge_dagster.training.spec import StageSpec

STAGE_MODULES = {"pretrain": "pretrain", "sft": "sft", "distill": "sft", "dpo": "sft", "grpo": "grpo"}
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
EVAL_ROWS = 256
CHECK_QUESTION = "What is 3 + 4?"
# TRL's configs default to bf16 autocast and activation (gradient) checkpointing, transformers'
# `TrainingArguments` to neither. Every stage starts from the same plain defaults, so precision and memory
# are the recipe's explicit choice: on a CPU without native bf16 (AVX2), TRL's defaults ran the chat stages
# about 9x slower per token than pretraining, and their rounding changed the trained weights.
TRAINER_DEFAULTS = {"bf16": False, "activation_checkpointing": False}


@dataclass
class StageContext:
    """Inputs of a stage, loaded once on every rank."""

    spec: StageSpec
    recipe: Recipe
    store: ArtifactStore
    reporter: Reporter
    tokenizer: Any = None
    data: Any = None
    callbacks: list[Any] = field(default_factory=list)

    @property
    def mixture_recipe(self) -> MixtureRecipe:
        """The recipe section of the stage's mixture."""
        return self.recipe.section(f"mixtures.{self.spec.mixture.removesuffix('_mixture')}")

    def artifact_dir(self, asset: str) -> Path:
        """Local folder of an upstream artifact of the version the spec names."""
        manifest = self.store.require(asset, self.spec.partition, self.spec.upstream[asset])
        return self.store.local_path(manifest)

    def resolve_model(self, reference: str) -> str:
        """`doge_base:<version>` -> that published artifact; anything else is a Hub id or folder."""
        asset, _, version = reference.partition(":")
        if version and asset == "doge_base":
            folder = self.store.local_path(self.store.require(asset, self.spec.partition, version))
            stable = folder / "stable"  # the WSD stable-phase snapshot, when the run kept one
            return str(stable if stable.is_dir() else folder)
        return reference

    def eval_split(self, *drop: str):
        """A bounded slice of the test split (evaluation must not dominate small runs)."""
        test = self.data["test"]
        test = test.select(range(min(EVAL_ROWS, len(test))))
        return test.remove_columns(list(drop)) if drop else test


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


def build_args(ctx: StageContext, stage_module, stage: str, checkpoints: Path):
    """The trainer config: recipe fields, stage overrides, and the fields the pipeline owns."""
    target = {"pretrain": ("transformers", "TrainingArguments"), "dpo": ("trl", "DPOConfig"), "grpo": ("trl", "GRPOConfig")}
    module, name = target.get(stage, ("trl", "SFTConfig"))
    config_class = getattr(importlib.import_module(module), name)
    forced = getattr(stage_module, "training_forced", lambda _: {})(ctx)
    training = {
        **TRAINER_DEFAULTS,
        **stage_module.training_defaults(ctx),
        **ctx.recipe.section(f"stages.{stage}").training,
        **forced,
    }
    import torch

    return config_class(
        **training,
        output_dir=str(checkpoints),
        report_to="none",
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


def _run(spec: StageSpec, reporter: Reporter, started: float) -> None:
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    stage_module = importlib.import_module(f"doge_dagster.training.{STAGE_MODULES[spec.stage]}")
    recipe = parse_recipe(spec.recipe, source=f"spec {spec.asset}[{spec.partition}]")
    store = ArtifactStore(spec.store_root)
    ctx = StageContext(spec, recipe, store, reporter)
    ctx.tokenizer = AutoTokenizer.from_pretrained(str(ctx.artifact_dir("tokenizer")))
    ctx.data = load_from_disk(str(ctx.artifact_dir(spec.mixture)))
    progress = progress_callback(reporter)
    ctx.callbacks = [progress, *getattr(stage_module, "callbacks", lambda _: [])(ctx)]
    # The Trainer seeds itself only after the model exists: seed first, or a new model's initial
    # weights (and so every later stage) change from run to run.
    set_seed(int(recipe.section(f"stages.{spec.stage}").training.get("seed", 42)))
    if spec.parent_model:
        model = AutoModelForCausalLM.from_pretrained(str(ctx.artifact_dir(spec.parent_model)))
        model.config.router_aux_loss_coef = 0.0
    else:
        model = stage_module.build_model(ctx)
    checkpoints = Path(spec.work_dir) / "checkpoints"
    args = build_args(ctx, stage_module, spec.stage, checkpoints)
    trainer = stage_module.build_trainer(ctx, model, args)
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the progress callback already logs every step
    resume = last_complete_checkpoint(checkpoints)
    start_step = int(resume.name.split("-")[1]) if resume else 0
    parameters = sum(p.numel() for p in model.parameters())
    reporter.info(
        f"{spec.asset}[{spec.partition}] version {spec.version}: {parameters:,} parameters, world size "
        f"{args.world_size}, " + (f"resuming from {resume.name}" if resume else "starting at step 0")
    )
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    eval_metrics = trainer.evaluate() if trainer.eval_dataset is not None else {}
    staged = Path(spec.work_dir) / "final"
    trainer.save_model(str(staged))  # collective under FSDP / ZeRO-3; only rank 0 writes
    if global_rank() != 0:
        return
    ctx.tokenizer.save_pretrained(str(staged))
    getattr(stage_module, "finalize", lambda *_: None)(ctx, staged)
    metrics = _metrics(spec, trainer, result, eval_metrics, progress, start_step, parameters, started)
    _write_generation_config(staged, ctx.tokenizer)
    plot_curves(staged / "loss_curve.png", spec.asset, progress.curve, progress.eval_losses, progress.rewards)
    checks = _checks(spec, staged, ctx.tokenizer, progress.curve, recipe)
    _write_model_card(staged, spec, recipe, metrics)
    manifest = store.publish(
        spec.asset, spec.partition, spec.version, staged, spec.upstream,
        {**metrics, "checks": {name: list(value) for name, value in checks.items()}},
    )  # fmt: skip
    shutil.rmtree(checkpoints, ignore_errors=True)
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
        metrics["final_reward"] = progress.rewards[-1][1]
    if torch.cuda.is_available():
        metrics["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        metrics["mfu"] = _mfu(parameters, metrics["tokens_per_second"])
    else:
        metrics["peak_memory_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    return metrics


def _mfu(parameters: int, tokens_per_second: float) -> float | None:
    """Model FLOPs utilization: 6·N FLOPs per token against the GPU's bf16 dense peak."""
    import torch

    peaks = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12, "A10": 125e12}
    name = torch.cuda.get_device_name()
    peak = next((value for key, value in peaks.items() if key in name), None)
    if peak is None:
        return None
    return round(6 * parameters * tokens_per_second / (peak * torch.cuda.device_count()), 4)


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
    from transformers import GenerationConfig

    end_ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[token for token in end_ids if token is not None],
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=64,
        do_sample=False,
    ).save_pretrained(str(folder))


def _checks(spec: StageSpec, folder: Path, tokenizer, curve, recipe: Recipe) -> dict[str, tuple[bool, str]]:
    """Asset checks of a published model: finite falling loss, loads and generates, vocab, chat reply."""
    import torch
    from transformers import AutoModelForCausalLM

    checks: dict[str, tuple[bool, str]] = {}
    losses = [loss for _, loss in curve]
    finite = bool(losses) and all(math.isfinite(loss) for loss in losses)
    if spec.stage == "grpo":
        checks["loss_finite"] = (finite, f"{len(losses)} logged losses, all finite: {finite}")
    else:
        falling = finite and losses[-1] < losses[0]
        detail = f"loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "no loss logged"
        checks["loss_finite_and_falling"] = (falling, detail)
    model = AutoModelForCausalLM.from_pretrained(str(folder))  # native Doge: no remote code
    expected_vocab = len(tokenizer) if recipe.model.vocab_size == "tokenizer" else recipe.model.vocab_size
    checks["vocab_matches_tokenizer"] = (
        model.config.vocab_size == expected_vocab and model.config.vocab_size >= len(tokenizer),
        f"model vocab {model.config.vocab_size}, tokenizer {len(tokenizer)} tokens, recipe {recipe.model.vocab_size}",
    )
    prompt = tokenizer("The number", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    new_tokens = generated.shape[1] - prompt["input_ids"].shape[1]
    checks["loads_and_generates"] = (
        new_tokens > 0,
        f"AutoModelForCausalLM loaded without remote code; generated {tokenizer.decode(generated[0][-new_tokens:])!r}",
    )
    if spec.stage != "pretrain":
        reply = chat_reply(model, tokenizer, CHECK_QUESTION)
        checks["chat_template_reply"] = (bool(reply.strip()), f"{CHECK_QUESTION!r} -> {reply!r}")
    return checks


def chat_reply(model, tokenizer, question: str, max_new_tokens: int = 32) -> str:
    """Greedy reply of a chat model to one user message, through the chat template."""
    import torch

    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def _write_model_card(folder: Path, spec: StageSpec, recipe: Recipe, metrics: dict[str, Any]) -> None:
    lines = [
        f"# {spec.asset} ({recipe.name})",
        "",
        f"Doge model produced by the doge-dagster `{spec.stage}` stage. Version `{spec.version}`.",
        "Load it with `AutoModelForCausalLM.from_pretrained(path)` (native transformers Doge, no remote code).",
        "",
        "## Lineage",
        "",
        *[f"- `{asset}`: `{version}`" for asset, version in sorted(spec.upstream.items())],
        "",
        "## Recipe section",
        "",
        "```json",
        json.dumps(recipe.section(f"stages.{spec.stage}").model_dump(mode="json"), indent=2),
        "```",
        "",
        "## Metrics",
        "",
        *[f"- {key}: {value}" for key, value in metrics.items() if not isinstance(value, list)],
        "",
    ]
    (folder / "README.md").write_text("\n".join(lines))
