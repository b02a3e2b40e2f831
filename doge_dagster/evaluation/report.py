"""The evaluation report from lighteval's numbers: scores per task, comparison, published scores, gates, markdown.

Pure Python on plain data (no lighteval, no Dagster): the runner feeds it what lighteval aggregated, and
the tests feed it hand-made numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

# The SmallDoge base models' published scores (percent, from their model cards), by recipe.
PUBLISHED_BASE_SCORES: dict[str, dict[str, float]] = {
    "20M": {"mmlu": 25.4, "arc": 29.8, "piqa": 58.4, "hellaswag": 27.3, "winogrande": 50.2},
    "60M": {"mmlu": 26.4, "arc": 37.9, "piqa": 61.4, "hellaswag": 31.5, "winogrande": 50.8},
    "160M": {"mmlu": 29.2, "arc": 44.4, "piqa": 70.1, "hellaswag": 43.4, "winogrande": 52.2},
    "320M": {"mmlu": 35.6, "arc": 55.4, "piqa": 73.9, "hellaswag": 52.7, "winogrande": 59.3},
}
FORMAT_METRIC = "think_format"

Checks = dict[str, tuple[bool, str]]


def lighteval_task(task: str) -> str:
    """`suite|task|fewshot|truncate` -> `suite|task|fewshot`: lighteval 0.11 ignores (and deprecates) the
    truncate field, so it gets the three-field form; reports keep the recipe's string."""
    return "|".join(task.split("|")[:3])


def task_name(task: str) -> str:
    """`custom|arc|5|0` -> `arc`."""
    return task.split("|")[1]


@dataclass
class TaskScore:
    """One recipe task's score: its primary metric, averaged over its subtasks (e.g. the 57 MMLU subjects)."""

    task: str
    key: str
    metric: str
    score: float
    stderr: float | None
    subtasks: list[str] = field(default_factory=list)
    samples: int = 0
    format_rate: float | None = None

    @property
    def lighteval_id(self) -> str:
        """`suite|task|fewshot`: what makes two reports' tasks the same task."""
        return lighteval_task(self.task)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for manifests."""
        return {**asdict(self), "lighteval_id": self.lighteval_id}


def task_keys(tasks: list[str]) -> dict[str, str]:
    """Metadata keys (`score/<key>`): the task name, with `|<fewshot>` added where a name repeats."""
    names = [task_name(task) for task in tasks]
    return {
        task: name if names.count(name) == 1 else f"{name}|{task.split('|')[2]}" for task, name in zip(tasks, names)
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def collect_scores(
    tasks: list[str],
    subtasks: dict[str, list[str]],
    aggregated: dict[str, dict[str, float]],
    primary_metric: dict[str, str],
    samples: dict[str, int],
) -> list[TaskScore]:
    """Scores of the recipe's `tasks` from lighteval's aggregated metrics.

    `subtasks`: recipe task -> lighteval full names it expanded to (`custom|mmlu:anatomy|5`, ...);
    `aggregated`: full name -> {metric: value, metric_stderr: value}; `primary_metric`: full name -> the
    task's first metric (the one it is scored by); `samples`: full name -> evaluated samples. A superset's
    score is the mean over its subtasks (macro average); a missing metric scores NaN (the gate catches it).
    """
    keys = task_keys(tasks)
    scores = []
    for task in tasks:
        names = subtasks.get(task, [])
        values, errors, formats, format_weights = [], [], [], []
        metric = primary_metric.get(names[0], "?") if names else "?"
        for name in names:
            results = aggregated.get(name, {})
            values.append(float(results.get(primary_metric.get(name, metric), float("nan"))))
            stderr = results.get(f"{primary_metric.get(name, metric)}_stderr")
            errors.append(float(stderr) if stderr is not None else float("nan"))
            if FORMAT_METRIC in results:
                formats.append(float(results[FORMAT_METRIC]))
                format_weights.append(samples.get(name, 1))
        stderr = (
            math.sqrt(sum(e * e for e in errors)) / len(errors)
            if errors and all(math.isfinite(e) for e in errors)
            else None
        )
        format_rate = sum(f * w for f, w in zip(formats, format_weights)) / sum(format_weights) if formats else None
        scores.append(
            TaskScore(
                task,
                keys[task],
                metric,
                _mean(values),
                stderr,
                list(names),
                sum(samples.get(n, 0) for n in names),
                format_rate,
            )
        )
    return scores


def format_rate(scores: list[TaskScore]) -> float | None:
    """Share of replies with a well-formed think block, over every task that measures it (sample-weighted)."""
    measured = [(score.format_rate, max(score.samples, 1)) for score in scores if score.format_rate is not None]
    if not measured:
        return None
    return sum(rate * weight for rate, weight in measured) / sum(weight for _, weight in measured)


def compare(scores: list[TaskScore], previous: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for the tasks this report shares with the previous stage's (same `suite|task|fewshot`)."""
    before = {row["lighteval_id"]: row for row in previous}
    rows = []
    for score in scores:
        old = before.get(score.lighteval_id)
        if old is None:
            continue
        rows.append({
            "task": score.lighteval_id, "key": score.key, "metric": score.metric, "previous": old["score"],
            "current": score.score, "delta": score.score - float(old["score"]),
        })  # fmt: skip
    return rows


def published_rows(partition: str, scores: list[TaskScore]) -> list[dict[str, Any]]:
    """This run beside the seed's published base scores (percent), for the recipes that have them."""
    published = PUBLISHED_BASE_SCORES.get(partition)
    if not published:
        return []
    ours = {task_name(score.task): score for score in scores}
    rows = []
    for name, value in published.items():
        score = ours.get(name)
        rows.append({
            "task": name, "this_run": round(100 * score.score, 1) if score and math.isfinite(score.score) else None,
            "task_string": score.task if score else None, "metric": score.metric if score else None, "published": value,
        })  # fmt: skip
    return rows


def gate_checks(
    names: tuple[str, ...],
    scores: list[TaskScore],
    comparison: list[dict[str, Any]] | None,
    tolerance: float,
    previous_asset: str | None,
    format_rate_value: float | None,
    min_format_rate: float | None,
) -> Checks:
    """The blocking checks a report declares (`names`, from its record), computed from its scores:

    - `scores_valid`: every task has a result, every score a number in [0, 1];
    - `no_regression`: no task shared with the previous report (`comparison`) lost more than `tolerance`;
    - `format_rate`: the share of well-formed `<think>` replies is above `min_format_rate` (passes, saying
      so, when the recipe sets no minimum).
    """
    gates = {  # keyed by doge_dagster.stages.GATE_NAMES
        "scores_valid": lambda: _scores_valid(scores),
        "no_regression": lambda: _no_regression(comparison or [], tolerance, previous_asset),
        "format_rate": lambda: _format_rate(format_rate_value, min_format_rate),
    }
    return {name: gates[name]() for name in names}


def _scores_valid(scores: list[TaskScore]) -> tuple[bool, str]:
    bad = [
        f"{score.key}={score.score!r}"
        for score in scores
        if not (math.isfinite(score.score) and 0.0 <= score.score <= 1.0)
    ]
    missing = [score.task for score in scores if not score.subtasks]
    problems = bad + [f"{task}: no result" for task in missing]
    return (
        not problems and bool(scores),
        "; ".join(problems) if problems else f"{len(scores)} task scores, all numbers in [0, 1]",
    )


def _no_regression(comparison: list[dict[str, Any]], tolerance: float, previous_asset: str | None) -> tuple[bool, str]:
    # A small epsilon: with 50 samples one sample is exactly 0.02, and 0.88 - 0.90 is -0.0200000000000000018.
    regressions = [row for row in comparison if row["delta"] < -tolerance - 1e-9]
    if regressions:
        detail = "; ".join(
            f"{row['task']} ({row['metric']}): {row['previous']:.3f} -> {row['current']:.3f}, delta {row['delta']:+.3f} "
            f"beyond tolerance {tolerance}"
            for row in regressions
        )
        return False, f"regression vs {previous_asset}: {detail}"
    if comparison:
        worst = min(comparison, key=lambda row: row["delta"])
        return True, (
            f"{len(comparison)} task(s) shared with {previous_asset}; smallest delta {worst['delta']:+.3f} "
            f"({worst['task']}), tolerance {tolerance}"
        )
    return True, f"no task shared with {previous_asset}: nothing to compare"


def _format_rate(format_rate_value: float | None, min_format_rate: float | None) -> tuple[bool, str]:
    if min_format_rate is None:
        rate = "none measured" if format_rate_value is None else f"{format_rate_value:.3f}"
        return True, f"format rate {rate}; the recipe sets no min_format_rate"
    if format_rate_value is None:
        return False, f"min_format_rate {min_format_rate} is set, but no task measures the think format"
    return (
        format_rate_value > min_format_rate,
        (
            f"format rate {format_rate_value:.3f} (share of replies with a well-formed <think> block), "
            f"minimum {min_format_rate}"
        ),
    )


# -- markdown --------------------------------------------------------------------------------------------------
def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None, max_cell: int | None = None) -> str:
    """A markdown table (numbers to 4 decimals, None as a dash, cells one line, at most `max_cell` characters)."""
    if not rows:
        return "(none)"
    columns = columns or list(rows[0])

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4f}"
        text = str(value).replace("|", "\\|").replace("\n", " ")
        return text if max_cell is None or len(text) <= max_cell else text[: max_cell - 3] + "..."

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def score_table(scores: list[TaskScore]) -> str:
    """task / metric / score / stderr."""
    return markdown_table(
        [
            {"task": s.task, "metric": s.metric, "score": s.score, "stderr": s.stderr, "samples": s.samples}
            for s in scores
        ]
    )


def summary_markdown(
    title: str,
    header: list[str],
    scores: list[TaskScore],
    comparison: list[dict[str, Any]] | None,
    previous_asset: str | None,
    published: list[dict[str, Any]],
    checks: Checks,
    format_rate_value: float | None,
) -> str:
    """The report as markdown: what was evaluated, scores, comparison, published scores, gates."""
    lines = [f"# {title}", "", *header, "", "## Scores", "", score_table(scores), ""]
    if format_rate_value is not None:
        lines += [f"Format rate (replies with a well-formed `<think>` block): {format_rate_value:.3f}", ""]
    if comparison is not None:
        lines += [f"## Compared with {previous_asset}", ""]
        lines += [
            markdown_table(comparison, ["task", "metric", "previous", "current", "delta"])
            if comparison
            else "No shared task.",
            "",
        ]
    if published:
        lines += [
            "## Published SmallDoge scores (percent)",
            "",
            markdown_table(published, ["task", "task_string", "metric", "this_run", "published"]),
            "",
        ]
    lines += ["## Gates", ""]
    lines += [f"- {'PASS' if passed else 'FAIL'} `{name}`: {detail}" for name, (passed, detail) in checks.items()]
    return "\n".join(lines) + "\n"
