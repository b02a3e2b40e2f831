"""`python -m doge_dagster.evaluation REPORT --spec SPEC.json`: evaluate one model for a report (under `accelerate launch`)."""

import argparse

from doge_dagster.lifetime import die_with_parent
from doge_dagster.stages import CHAIN


def main() -> None:
    """Parse the command line and run the evaluation; it dies with the launcher that started it."""
    die_with_parent()
    parser = argparse.ArgumentParser(prog="python -m doge_dagster.evaluation", description=__doc__)
    parser.add_argument("stage", choices=[report.name for report in CHAIN.reports])
    parser.add_argument("--spec", required=True, help="launch spec JSON written by the orchestrator")
    arguments = parser.parse_args()
    from doge_dagster.evaluation.runner import run_evaluation

    run_evaluation(arguments.stage, arguments.spec)


if __name__ == "__main__":
    main()
