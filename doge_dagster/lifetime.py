"""Tie a process's life to its parent's, so that a launcher killed with SIGKILL takes its trainers with it.

Why: the local backend starts `accelerate launch` in a process group of its own, so that a terminated run can
stop every rank (see `resources/local.py`). That group would outlive a Dagster process that is itself killed
with SIGKILL (`kill -9`, the OOM killer, a crashed run worker), leaving orphaned trainers writing into the
version's work folder. Linux's `PR_SET_PDEATHSIG` has the kernel send SIGKILL when the parent exits. Nothing in
the standard library or our dependencies exposes it, hence this ctypes call. Elsewhere (macOS) it is a no-op.

`python -m doge_dagster.lifetime PARENT_PID COMMAND...` sets it and then execs COMMAND (the setting survives
exec), which is how the local backend starts `accelerate launch`: safer than a `preexec_fn`, which runs
between fork and exec while the Pipes reader threads hold locks.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(None, use_errno=True).prctl


_PRCTL = _load_prctl()


def die_with_parent(expected_parent: int | None = None) -> None:
    """Have the kernel SIGKILL this process when its parent exits (Linux; a no-op elsewhere).

    `expected_parent` is the PID the caller knows its parent to be; if the parent is already gone (the process
    was re-parented before the call took effect), exit at once instead of running on as an orphan.
    """
    if _PRCTL is None:
        return
    parent = os.getppid() if expected_parent is None else expected_parent
    if _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(error)}")
    if os.getppid() != parent:
        os._exit(128 + signal.SIGKILL)


def tied_to_this_process(command: Sequence[str]) -> list[str]:
    """`command` wrapped so that it is SIGKILLed when the calling process exits, however that happens."""
    return [sys.executable, "-m", "doge_dagster.lifetime", str(os.getpid()), *command]


def main(arguments: Sequence[str]) -> None:
    """`PARENT_PID COMMAND...`: die with PARENT_PID, then become COMMAND (same PID, same process group)."""
    if len(arguments) < 2 or not arguments[0].isdigit():
        raise SystemExit("usage: python -m doge_dagster.lifetime PARENT_PID COMMAND [ARGUMENT...]")
    die_with_parent(int(arguments[0]))
    os.execvp(arguments[1], list(arguments[1:]))


if __name__ == "__main__":
    main(sys.argv[1:])
