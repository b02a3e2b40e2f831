"""A launch tied to its parent dies when the parent is killed with SIGKILL (Linux's PR_SET_PDEATHSIG).

The parent is a real Python process (`programs/sleep_parent.py`) that starts `sleep` in a session of its own,
the way the local backend starts `accelerate launch`; the control case shows that without the tie the child
outlives its parent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from helpers import processes_mentioning, program_command, program_env, wait_for

from doge_dagster.lifetime import tied_to_this_process

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")


def start_parent_of_a_sleep(mode: str, marker: str) -> tuple[subprocess.Popen, int]:
    parent = subprocess.Popen(
        program_command("sleep_parent", mode, marker), env=program_env(), stdout=subprocess.PIPE, text=True
    )
    child_pid = int(parent.stdout.readline())
    wait_for(lambda: child_pid in processes_mentioning(f"sleep {marker}"), 30, "the child to exec `sleep`")
    return parent, child_pid


def test_a_tied_child_in_its_own_session_dies_with_its_killed_parent():
    parent, child = start_parent_of_a_sleep("tied", "311.5")
    assert os.getsid(child) == child, "the child should lead a session of its own, out of its parent's group"
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    wait_for(lambda: child not in processes_mentioning("sleep 311.5"), 30, "the tied child to die with its parent")


def test_an_untied_child_outlives_its_killed_parent():
    parent, child = start_parent_of_a_sleep("untied", "312.5")
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        assert child in processes_mentioning("sleep 312.5"), "control case: an untied child should survive"
    finally:
        os.kill(child, signal.SIGKILL)


def test_the_tie_keeps_the_command_and_names_the_parent():
    command = tied_to_this_process(["accelerate", "launch", "-m", "doge_dagster.training"])
    assert command[:4] == [sys.executable, "-m", "doge_dagster.lifetime", str(os.getpid())]
    assert command[4:] == ["accelerate", "launch", "-m", "doge_dagster.training"]


def test_the_wrapper_runs_the_command_with_its_exit_status():
    result = subprocess.run(
        tied_to_this_process(["/bin/sh", "-c", "echo ran; exit 3"]),
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 3 and result.stdout.strip() == "ran", result


def test_the_wrapper_explains_its_usage():
    result = subprocess.run(
        [sys.executable, "-m", "doge_dagster.lifetime", "not-a-pid", "true"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "usage: python -m doge_dagster.lifetime PARENT_PID COMMAND" in result.stderr
