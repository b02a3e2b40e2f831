"""A parent process that starts `sleep SECONDS` in a session of its own and then waits, to be SIGKILLed.

Usage: `python -m programs.sleep_parent tied|untied SECONDS`.

It starts the child the way the local backend starts `accelerate launch` (`start_new_session=True`), wrapped
in `tied_to_this_process` when `tied` (so that the child dies with this process), prints the child's pid on
a line of its own (not a RESULT-JSON line: the test reads it while this process still runs) and sleeps until
it is killed (at most 600 s).
"""

from __future__ import annotations

import subprocess
import sys
import time

from doge_dagster.lifetime import tied_to_this_process


def main(argv: list[str]) -> None:
    mode, seconds = argv
    if mode not in ("tied", "untied"):
        raise SystemExit("usage: python -m programs.sleep_parent tied|untied SECONDS")
    command = ["sleep", seconds]
    if mode == "tied":
        command = tied_to_this_process(command)
    child = subprocess.Popen(command, start_new_session=True)
    print(child.pid, flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main(sys.argv[1:])
