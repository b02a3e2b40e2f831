"""The evaluation process: run lighteval on a published model and publish the report like a training stage.

`python -m doge_dagster.evaluation REPORT --spec SPEC.json` (REPORT: base, instruct, reason), launched by the `compute`
resource exactly as training is (`accelerate launch`, Dagster Pipes on global rank 0), reads the model
artifact the spec names, evaluates it with lighteval's Python API (a `Pipeline` on a
`TransformersModelConfig` of the local model folder), and publishes `results.json`, per-sample details
and a markdown summary to the artifact store (manifest last), with the gates as check results.

Two lighteval behaviours are handled here rather than patched:
- Prediction cache. lighteval caches predictions under `cache_dir / model_name / hash(model config)`;
  for an absolute local `model_name` that is the model folder itself (our published artifact), and the
  key ignores the weights, so a re-trained model in the same place silently gets its old predictions.
  The model is therefore loaded through a *view*: a folder in the work dir named by the weights'
  sha256, holding links to the weight and config files and a copy of the tokenizer. The cache lands in
  the view, keyed by the weights, and is deleted with it once the report is published.
- End of turn. lighteval stops chat generation at `tokenizer.eos_token` only, not at the model's
  generation-config end ids, so a chat model would run on past `<|im_end|>` into invented turns. The
  view's tokenizer copy uses the model's chat end token (the generation config's other end id) as its
  eos token when the chat template is used.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doge_dagster.artifacts import ArtifactStore, Manifest, hash_file
from doge_dagster.evaluation import report as reports
from doge_dagster.gates import checks_record
from doge_dagster.launching.reporting import Reporter, global_rank, run_entrypoint
from doge_dagster.launching.spec import LaunchSpec
from doge_dagster.recipes import Recipe, parse_recipe
from doge_dagster.stages import Report, chain_for

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
MODEL_CONFIG_FILES = ("config.json", "generation_config.json")
CPU_BATCH_SIZE = 64


@dataclass(frozen=True)
class EvalSettings:
    """What one evaluation runs: recipe task strings, chat template, sample cap, system prompt."""

    tasks: tuple[str, ...]
    use_chat_template: bool = False
    max_samples: int | None = None
    system_prompt: str | None = None


def training_system_prompt(recipe: Recipe, report: Report) -> str | None:
    """The system prompt the report's model was trained with (its `prompt_mixture`'s formatter), so the
    evaluation asks in the form the model knows; None for a model trained without one (the base model)."""
    from doge_dagster.data.mixing import DEFAULT_IDENTITY_PROMPT, DEFAULT_THINKING_PROMPT

    if report.prompt_mixture is None:
        return None
    mixture = recipe.section(f"mixtures.{report.prompt_mixture}")
    defaults = {"identity": DEFAULT_IDENTITY_PROMPT, "thinking": DEFAULT_THINKING_PROMPT}
    return mixture.system_prompt or defaults.get(mixture.formatting)


def settings_for(report: Report, recipe: Recipe) -> EvalSettings:
    """The settings of the report's recipe section."""
    section = recipe.section(report.section)
    return EvalSettings(
        tasks=tuple(section.tasks),
        use_chat_template=section.use_chat_template,
        max_samples=section.max_samples,
        system_prompt=training_system_prompt(recipe, report) if section.use_chat_template else None,
    )


# -- the model as lighteval sees it -----------------------------------------------------------------------------
def _is_model_file(name: str) -> bool:
    return (
        (name.endswith(WEIGHT_SUFFIXES) and not name.startswith("training_args"))
        or name in MODEL_CONFIG_FILES
        or name.endswith(".index.json")
    )


def weights_fingerprint(model_dir: Path, manifest: Manifest | None = None) -> str:
    """sha256 over the model's weight and config files (their hashes from the manifest when given)."""
    if manifest is not None:
        entries = sorted((entry.path, entry.sha256) for entry in manifest.files if _is_model_file(entry.path))
    else:
        entries = sorted(
            (path.name, hash_file(path)) for path in model_dir.iterdir() if path.is_file() and _is_model_file(path.name)
        )
    if not any(path.endswith(WEIGHT_SUFFIXES) for path, _ in entries):
        raise FileNotFoundError(f"{model_dir}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) to evaluate")
    return hashlib.sha256("\n".join(f"{path} {digest}" for path, digest in entries).encode()).hexdigest()


def chat_end_token(model_dir: Path, tokenizer) -> str | None:
    """The token that ends a chat turn: the generation config's end id other than the tokenizer's eos."""
    path = model_dir / "generation_config.json"
    if not path.is_file():
        return None
    end_ids = json.loads(path.read_text()).get("eos_token_id")
    end_ids = end_ids if isinstance(end_ids, list) else [end_ids]
    others = [token_id for token_id in end_ids if token_id is not None and token_id != tokenizer.eos_token_id]
    return tokenizer.convert_ids_to_tokens(others[0]) if others else None


def model_view(model_dir: Path, work_dir: Path, fingerprint: str, chat: bool) -> Path:
    """A folder `work_dir/models/<weights hash>` lighteval loads the model from (see the module doc).

    Links to the weight and config files, a copy of the tokenizer (eos = the chat end token when
    `chat`); reused when it exists, since the same weights give the same predictions.
    """
    from transformers import AutoTokenizer

    view = work_dir / "models" / f"{fingerprint[:16]}{'-chat' if chat else ''}"
    if view.is_dir():
        return view
    staging = view.with_name(f"{view.name}.{uuid.uuid4().hex[:8]}.part")
    staging.mkdir(parents=True)
    for path in model_dir.iterdir():
        if path.is_file() and _is_model_file(path.name):
            (staging / path.name).symlink_to(path.resolve())
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if chat and (end := chat_end_token(model_dir, tokenizer)):
        tokenizer.eos_token = end
    tokenizer.save_pretrained(str(staging))
    os.replace(staging, view)
    return view


# -- lighteval --------------------------------------------------------------------------------------------------
@dataclass
class EvalOutcome:
    """What one lighteval run gave: scores per recipe task, lighteval's results, per-sample details."""

    scores: list[reports.TaskScore]
    results: dict[str, Any]
    details: dict[str, list[dict[str, Any]]]
    seconds: float
    fingerprint: str = ""
    applied_fixes: list[str] = field(default_factory=list)


def _plain(value: Any) -> Any:
    """JSON-able copy of numpy / torch values in details."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _detail_row(detail) -> dict[str, Any]:
    doc, response = detail.doc, detail.model_response
    return _plain({
        "id": doc.id, "query": doc.query, "choices": doc.choices, "gold_index": doc.gold_index,
        "input": response.input if isinstance(response.input, str) else None,
        "response": response.text, "response_post_processed": response.text_post_processed,
        "logprobs": response.logprobs, "metrics": detail.metric,
    })  # fmt: skip


def resolve_subtasks(registry, tasks) -> dict[str, list[str]]:
    """Recipe task -> the lighteval tasks it runs (`custom|arc|5|0` -> `custom|arc:easy|5`, `custom|arc:challenge|5`),
    expanded as lighteval's registry expands supersets."""
    subtasks = {}
    for task in tasks:
        suite, name, fewshot = reports.lighteval_task(task).split("|")
        names = set()
        for expanded in registry._expand_task_definition(f"{suite}|{name}"):  # lighteval 0.11's own expansion
            names.update(
                c.full_name for c in registry.task_to_configs.get(expanded, []) if c.num_fewshots == int(fewshot)
            )
        subtasks[task] = sorted(names)
    return subtasks


def evaluate(
    model_dir: Path,
    work_dir: Path,
    settings: EvalSettings,
    fingerprint: str | None = None,
    log: Callable[[str], None] = print,
) -> EvalOutcome | None:
    """Evaluate the model in `model_dir` on the settings' tasks; None on ranks other than the main one."""
    started = time.monotonic()
    from doge_dagster.evaluation import compat

    applied = compat.apply()
    import torch
    from lighteval.logging.evaluation_tracker import EvaluationTracker
    from lighteval.models.transformers.transformers_model import TransformersModelConfig
    from lighteval.pipeline import ParallelismManager, Pipeline, PipelineParameters

    from doge_dagster.evaluation import tasks as custom_tasks

    fingerprint = fingerprint or weights_fingerprint(model_dir)
    data_dir = custom_tasks.write_arithmetic_data(work_dir / "data" / "arithmetic", chat=settings.use_chat_template)
    view = model_view(model_dir, work_dir, fingerprint, settings.use_chat_template)
    gpu = torch.cuda.is_available()
    config = TransformersModelConfig(
        model_name=str(view),
        device="cuda" if gpu else "cpu",
        batch_size=None if gpu else CPU_BATCH_SIZE,
        override_chat_template=settings.use_chat_template,
        system_prompt=settings.system_prompt,
        cache_dir=str(work_dir / "lighteval-cache"),
    )
    tracker = EvaluationTracker(output_dir=str(work_dir / "lighteval"), save_details=False)
    parameters = PipelineParameters(
        launcher_type=ParallelismManager.ACCELERATE,
        custom_tasks_directory=custom_tasks.tasks_module(data_dir),
        max_samples=settings.max_samples,
    )
    log(f"lighteval on {view.name}: {', '.join(settings.tasks)} (chat template {settings.use_chat_template}, "
        f"max_samples {settings.max_samples}; compatibility fixes {applied or 'none'})")  # fmt: skip
    pipeline = Pipeline(
        tasks=",".join(reports.lighteval_task(task) for task in settings.tasks),
        pipeline_parameters=parameters,
        evaluation_tracker=tracker,
        model_config=config,
    )
    pipeline.evaluate()
    if not pipeline.is_main_process():
        return None
    subtasks = resolve_subtasks(pipeline.registry, settings.tasks)
    primary = {}
    for full_name, task in pipeline.tasks_dict.items():
        metric_name = task.metrics[0].metric_name
        primary[full_name] = metric_name[0] if isinstance(metric_name, list) else metric_name
    samples = {full_name: len(docs) for full_name, docs in pipeline.documents_dict.items()}
    scores = reports.collect_scores(
        list(settings.tasks), subtasks, tracker.metrics_logger.metric_aggregated, primary, samples
    )
    details = {name: [_detail_row(detail) for detail in rows] for name, rows in pipeline.get_details().items()}
    return EvalOutcome(
        scores, _plain(pipeline.get_results()), details, time.monotonic() - started, fingerprint, applied
    )


# -- the process ------------------------------------------------------------------------------------------------
def build_report(
    spec: LaunchSpec,
    recipe: Recipe,
    settings: EvalSettings,
    outcome: EvalOutcome,
    model_manifest: Manifest,
    previous: Manifest | None,
) -> tuple[dict[str, Any], str, reports.Checks]:
    """Manifest metadata, markdown summary and gate checks of one evaluation."""
    report = recipe.chain.report(spec.name)
    section = recipe.section(report.section)
    previous_asset = previous.asset if previous is not None else None
    comparison = reports.compare(outcome.scores, previous.metadata.get("tasks", [])) if previous is not None else None
    rate = reports.format_rate(outcome.scores)
    checks = reports.gate_checks(
        report.checks, outcome.scores, comparison, section.regression_tolerance, previous_asset, rate,
        section.min_format_rate,
    )  # fmt: skip
    # The published SmallDoge scores sit beside the report of the model trained from scratch.
    model_stage = recipe.chain.stage(report.model_stage)
    published = reports.published_rows(spec.partition, outcome.scores) if model_stage.parent is None else []
    model_asset = model_stage.asset
    from importlib.metadata import version as package_version

    header = [
        (
            f"Model: `{model_asset}` version `{model_manifest.version}` (weights sha256 `{outcome.fingerprint[:16]}`), "
            f"recipe `{recipe.name}`."
        ),
        (
            f"lighteval {package_version('lighteval')}; max_samples {settings.max_samples or 'all'}; chat template "
            f"{'yes' if settings.use_chat_template else 'no'}; system prompt {settings.system_prompt!r}; "
            f"evaluation took {outcome.seconds:.1f} s."
        ),
    ]
    if any(score.task.startswith("custom|arithmetic") for score in outcome.scores):
        header.append("Arithmetic questions are generated held-out data (own seed): no training row holds one of them.")
    summary = reports.summary_markdown(
        f"{spec.asset} ({spec.partition})", header, outcome.scores, comparison, previous_asset, published, checks, rate
    )
    metadata: dict[str, Any] = {
        **{f"score/{score.key}": score.score for score in outcome.scores},
        "scores": {score.key: score.score for score in outcome.scores},
        "tasks": [score.to_dict() for score in outcome.scores],
        "score_table": reports.score_table(outcome.scores),
        "summary": summary,
        "model": model_asset,
        "model_version": model_manifest.version,
        "weights_sha256": outcome.fingerprint,
        "use_chat_template": settings.use_chat_template,
        "max_samples": settings.max_samples or 0,
        "eval_wall_time_s": round(outcome.seconds, 2),
        "lighteval_fixes": outcome.applied_fixes,
    }
    if rate is not None:
        metadata["format_rate"] = rate
    if comparison is not None:
        metadata["compared_with"] = f"{previous_asset}@{previous.version}"
        metadata["comparison"] = comparison
        metadata["comparison_table"] = (
            reports.markdown_table(comparison, ["task", "metric", "previous", "current", "delta"])
            if comparison
            else "(no shared task)"
        )
    if published:
        metadata["published_scores"] = published
    return metadata, summary, checks


def write_report_files(folder: Path, outcome: EvalOutcome, summary: str) -> None:
    """`results.json`, `details/<task>.jsonl` (one sample per line) and `README.md` into `folder`."""
    (folder / "results.json").write_text(json.dumps(outcome.results, indent=2, sort_keys=True, default=str))
    details = folder / "details"
    details.mkdir(exist_ok=True)
    for name, rows in outcome.details.items():
        safe = name.replace("|", "_").replace(":", "-").replace("/", "-")
        (details / f"{safe}.jsonl").write_text("".join(json.dumps(row, default=str) + "\n" for row in rows))
    (folder / "README.md").write_text(summary)


def run_evaluation(report: str, spec_path: str) -> None:
    """Entry point of `python -m doge_dagster.evaluation REPORT --spec SPEC` (under `accelerate launch`)."""
    run_entrypoint(report, spec_path, _run)


def _run(spec: LaunchSpec, reporter: Reporter, started: float) -> None:
    recipe = parse_recipe(
        spec.recipe, source=f"spec {spec.asset}[{spec.partition}]", chain=chain_for(spec.extra_stages)
    )
    report = recipe.chain.report(spec.name)
    settings = settings_for(report, recipe)
    store = ArtifactStore(spec.store_root)
    model_asset = recipe.chain.stage(report.model_stage).asset
    model_manifest = store.require(model_asset, spec.partition, spec.upstream[model_asset])
    previous_asset = recipe.chain.report(report.compares_with).asset if report.compares_with else None
    previous = store.require(previous_asset, spec.partition, spec.upstream[previous_asset]) if previous_asset else None
    model_dir = store.local_path(model_manifest)
    work = Path(spec.work_dir)
    reporter.info(
        f"{spec.asset}[{spec.partition}] version {spec.version}: {model_asset} version {model_manifest.version}"
    )
    outcome = evaluate(model_dir, work, settings, weights_fingerprint(model_dir, model_manifest), reporter.info)
    if outcome is None or global_rank() != 0:
        return
    metadata, summary, checks = build_report(spec, recipe, settings, outcome, model_manifest, previous)
    metadata["wall_time_in_process_s"] = round(time.monotonic() - started, 2)
    with store.writing(spec.asset, spec.partition, spec.version, spec.upstream) as staged:  # manifest last
        write_report_files(staged.path, outcome, summary)
        staged.metadata = {**spec.manifest_metadata, **metadata, **checks_record(checks)}
    manifest = staged.manifest
    for scratch in ("models", "data", "lighteval", "lighteval-cache"):
        shutil.rmtree(work / scratch, ignore_errors=True)
    scores = ", ".join(f"{score.key} {score.score:.3f}" for score in outcome.scores)
    failed = [name for name, (passed, _) in checks.items() if not passed]
    reporter.info(f"published {store.url(manifest.asset, manifest.partition, manifest.version)}: {scores}"
                  + (f"; failing gates: {', '.join(failed)}" if failed else ""))  # fmt: skip
