"""Import lighteval's task registry offline, with or without the compatibility fixes of `evaluation.compat`.

Usage: `python -m programs.lighteval_import [--apply]`, with HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1.

With `--apply`, `compat.apply()` runs first and its return value (the fixes applied) is printed. Then the
registry is imported and `imported` printed. Without the fixes the import fails (it reaches for the network
at import time), which the test expects as long as the fixes are needed. A fresh process: the import is the
subject, and lighteval must not have been imported before.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from doge_dagster.evaluation import compat


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m programs.lighteval_import", description=__doc__.splitlines()[0])
    parser.add_argument("--apply", action="store_true", help="apply the compatibility fixes first")
    args = parser.parse_args(argv)
    if args.apply:
        print(compat.apply())
    importlib.import_module("lighteval.tasks.registry")
    print("imported")


if __name__ == "__main__":
    main(sys.argv[1:])
