"""Evaluate any model, without Dagster: `doge-dagster evaluate MODEL --suite base|instruct|reason`.

The counterpart of the seed's `eval_downstream_tasks.sh` (a `MODEL` and an `OUTPUT_DIR`): MODEL is a folder
or a Hub id (resolved through `huggingface_hub`'s cache, so `HF_HUB_OFFLINE=1` reads a cached snapshot), and
the run is the evaluation assets' own: the same lighteval runner (`runner.evaluate`), the suite's tasks, chat
template and system prompt from a recipe's `evaluation.<suite>` section, and the same report files
(`results.json`, `details/`, `README.md` with the score table) plus `scores.json`. The suite's gates that need
no earlier report (valid scores, the think format rate) decide the exit status.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from doge_dagster.evaluation import report as reports
from doge_dagster.evaluation.runner import evaluate, settings_for, write_report_files
from doge_dagster.recipes import load_recipe

DEFAULT_RECIPE = "20M"  # the real recipes evaluate the seed's task list
STANDALONE_GATES = ("scores_valid", "format_rate")  # no_regression needs the previous stage's report


class ModelNotFoundError(FileNotFoundError):
    """MODEL is neither a folder nor a Hub id that can be resolved now."""


def resolve_model(model: str, revision: str | None = None) -> tuple[Path, str]:
    """A local folder for `model` (a folder, or a Hub id through the Hub cache) and how it was resolved."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        return folder.resolve(), f"folder {folder.resolve()}"
    if model.count("/") != 1 or folder.exists():
        raise ModelNotFoundError(f"MODEL {model!r}: no such folder, and not a Hub id of the form <org>/<name>")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(model, revision=revision))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise ModelNotFoundError(
            f"MODEL {model!r}: cannot resolve it on the Hub or in the Hub cache ({error}); download it first "
            "(`hf download MODEL`) or pass a folder"
        ) from None
    return snapshot, f"Hub {model} at commit {snapshot.name}"


def read_tasks_file(path: Path) -> tuple[str, ...]:
    """One task per line as the recipes write them (`suite|task|few_shot|truncate`, e.g. `lighteval|arc:easy|0|0`,
    the seed's task list format); `#` starts a comment."""
    lines = [(number, line.split("#", 1)[0].strip()) for number, line in enumerate(path.read_text().splitlines(), 1)]
    tasks = tuple(line for _, line in lines if line)
    if not tasks:
        raise ValueError(f"--tasks {path}: no task in the file (one task per line)")
    for number, line in lines:
        if line and len(line.split("|")) not in (3, 4):
            raise ValueError(f"--tasks {path} line {number}: {line!r} is not suite|task|few_shot|truncate "
                             "(e.g. custom|arithmetic_mc|0|0)")  # fmt: skip
    return tasks


def evaluate_any_model(
    model: str,
    suite: str,
    output: Path,
    recipe_name: str = DEFAULT_RECIPE,
    tasks_file: Path | None = None,
    revision: str | None = None,
    log=print,
) -> int:
    """Evaluate `model` on the `suite` report's settings of `recipe_name`, write the report into `output`,
    and return 0 when the standalone gates pass, 1 otherwise."""
    recipe = load_recipe(recipe_name)
    report = recipe.chain.report(suite)
    settings = settings_for(report, recipe)
    if tasks_file is not None:
        settings = replace(settings, tasks=read_tasks_file(tasks_file))
    model_dir, resolved = resolve_model(model, revision)
    output.mkdir(parents=True, exist_ok=True)
    work = output / ".work"
    log(f"evaluating {resolved} with the {suite} suite of recipe {recipe_name}: {', '.join(settings.tasks)}")
    outcome = evaluate(model_dir, work, settings, log=log)
    if outcome is None:  # not the main process of a multi-process launch
        return 0
    rate = reports.format_rate(outcome.scores)
    section = recipe.section(report.section)
    names = tuple(name for name in report.checks if name in STANDALONE_GATES)
    checks = reports.gate_checks(names, outcome.scores, None, section.regression_tolerance, None, rate,
                                 section.min_format_rate)  # fmt: skip
    header = [
        f"Model: {resolved} (weights sha256 `{outcome.fingerprint[:16]}`); suite `{suite}` of recipe `{recipe_name}`.",
        (
            f"Chat template {'yes' if settings.use_chat_template else 'no'}; system prompt {settings.system_prompt!r}; "
            f"max_samples {settings.max_samples or 'all'}; evaluation took {outcome.seconds:.1f} s."
        ),
    ]
    summary = reports.summary_markdown(f"{model} ({suite})", header, outcome.scores, None, None, [], checks, rate)
    write_report_files(output, outcome, summary)
    (output / "scores.json").write_text(json.dumps({
        "model": model, "resolved": resolved, "suite": suite, "recipe": recipe_name,
        "scores": {score.key: score.score for score in outcome.scores},
        "checks": {name: list(result) for name, result in checks.items()},
    }, indent=2))  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    log(reports.score_table(outcome.scores))
    failed = [name for name, (passed, _) in checks.items() if not passed]
    log(f"report written to {output}" + (f"; failing gates: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
