"""`python -m doge_dagster.training STAGE --spec SPEC.json`: run one training stage (under `accelerate launch`)."""

import argparse

from doge_dagster.lifetime import die_with_parent
from doge_dagster.training.runner import run_stage


def main() -> None:
    """Parse the command line and run the stage; the stage dies with the launcher that started it."""
    die_with_parent()
    parser = argparse.ArgumentParser(prog="python -m doge_dagster.training", description=__doc__)
    parser.add_argument("stage", help="the stage to run, one of the spec's chain (doge_dagster/stages.py)")
    parser.add_argument(
        "--spec", required=True, help="launch spec JSON written by the orchestrator, or env:NAME to read it from $NAME"
    )
    arguments = parser.parse_args()
    run_stage(arguments.stage, arguments.spec)


if __name__ == "__main__":
    main()
