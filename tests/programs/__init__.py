"""Programs the tests run in a separate process (`python -m programs.<module> ...`, see `helpers.run_program`).

A test runs one of these instead of calling the code in its own process when the code
- reads its environment at import time: `DAGSTER_HOME` (the instance), `DOGE_RECIPES_DIR` (recipes are read
  when the code location is imported), `DOGE_ARTIFACT_ROOT`, `TMPDIR`..., so it needs fresh imports under
  the test's own environment;
- must be killed (a publisher SIGKILLed in the middle of an upload);
- or plays another machine's part (the container of a Kubernetes pod, whose stderr is the pod log).

Each module has a `main(argv)` and runs as `python -m programs.<module>`; `tests/` must be on PYTHONPATH
(`helpers.program_env` puts it there, so this works from any working directory). A program that has a
result prints it as one line, `RESULT-JSON <json>` (`emit`), the last such line of its stdout being the
result; `helpers.run_program` runs a program and parses that line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

RESULT_PREFIX = "RESULT-JSON "


def emit(result: Any, default: Callable[[Any], Any] | None = None) -> None:
    """Print `result` as the program's `RESULT-JSON <json>` line (one write, flushed)."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result, default=default) + "\n")
    sys.stdout.flush()
