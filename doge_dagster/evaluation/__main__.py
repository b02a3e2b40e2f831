"""`python -m doge_dagster.evaluation {base,instruct,reason} --spec SPEC.json`: evaluate one model (under `accelerate launch`)."""

import argparse

from doge_dagster.lifetime import die_with_parent
from doge_dagster.plan import EVALUATION_ASSETS


def main() -> None:
    """Parse the command line and run the evaluation; it dies with the launcher that started it."""
    die_with_parent()
    parser = argparse.ArgumentParser(prog="python -m doge_dagster.evaluation", description=__doc__)
    parser.add_argument("stage", choices=sorted(EVALUATION_ASSETS))
    parser.add_argument("--spec", required=True, help="launch spec JSON written by the orchestrator")
    arguments = parser.parse_args()
    from doge_dagster.evaluation.runner import run_evaluation

    run_evaluation(arguments.stage, arguments.spec)


if __name__ == "__main__":
    main()
