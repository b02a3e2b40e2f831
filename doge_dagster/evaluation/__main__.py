"""`python -m doge_dagster.evaluation REPORT --spec SPEC.json`: evaluate one model for a report (under `accelerate launch`)."""

import argparse

from doge_dagster.lifetime import die_with_parent


def main() -> None:
    """Parse the command line and run the evaluation; it dies with the launcher that started it."""
    die_with_parent()
    parser = argparse.ArgumentParser(prog="python -m doge_dagster.evaluation", description=__doc__)
    parser.add_argument("report", help="the report to run, one of the spec's chain (doge_dagster/stages.py)")
    parser.add_argument("--spec", required=True, help="launch spec JSON written by the orchestrator")
    arguments = parser.parse_args()
    from doge_dagster.evaluation.runner import run_evaluation

    run_evaluation(arguments.report, arguments.spec)


if __name__ == "__main__":
    main()
