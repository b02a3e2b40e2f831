"""The local backend's Pipes client: the launched command runs in its own process group.

Why not plain `dg.PipesSubprocessClient`: on a terminated run it sends SIGINT to the launcher's PID only.
`accelerate launch` with one process does not forward signals to the trainer it starts (its
`simple_launcher` just waits on it), so the trainer would be orphaned and keep training. Signalling the
whole group reaches the launcher, every rank, and their data-loader workers, on Linux and macOS alike.
The group must not outlive a Dagster process killed with SIGKILL: the launcher dies with its parent, and the
trainers with the launcher (`doge_dagster.lifetime`).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError, DagsterPipesExecutionError

from doge_dagster.lifetime import tied_to_this_process


def stop_process_group(process: subprocess.Popen, grace_seconds: float) -> None:
    """SIGINT the process's group (ranks exit like on Ctrl+C), then SIGKILL what is left after `grace_seconds`."""
    try:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            pass
        # Also when the leader is gone: ranks it started may still be shutting down in the same group.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


class ProcessGroupSubprocessClient(dg.PipesSubprocessClient):
    """`PipesSubprocessClient` whose command runs in a new session; an interrupted run stops the whole group."""

    def run(  # type: ignore[override]
        self,
        *,
        context: dg.OpExecutionContext | dg.AssetExecutionContext,
        command: str | Sequence[str],
        extras: Mapping | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> dg.PipesClientCompletedInvocation:
        """Run `command` in a Pipes session and wait; on interruption stop its process group, then re-raise."""
        with dg.open_pipes_session(
            context=context, context_injector=self.context_injector, message_reader=self.message_reader, extras=extras
        ) as session:
            reported = _record_reported_exceptions(session)
            process = subprocess.Popen(
                tied_to_this_process([command] if isinstance(command, str) else command),
                cwd=cwd or self.cwd,
                env={**os.environ, **self.env, **(env or {}), **session.get_bootstrap_env_vars()},
                start_new_session=True,
            )
            try:
                process.wait()
            except BaseException as error:
                if isinstance(error, (DagsterExecutionInterruptedError, KeyboardInterrupt)):
                    context.log.info("run interrupted: stopping the launched process group")
                stop_process_group(process, self.termination_timeout_seconds)
                raise
        # Raised once the session is closed: by then every message of the process (its exception too) is read.
        if process.returncode != 0:
            why = f": {' | '.join(reported)}" if reported else ""
            raise DagsterPipesExecutionError(f"External execution process failed with code {process.returncode}{why}")
        return dg.PipesClientCompletedInvocation(session)


def _record_reported_exceptions(session) -> list[str]:
    """The exceptions the launched process reports when it closes Pipes (`ArtifactUploadError: ...`), collected so
    the step's failure says why the process failed instead of only its exit code. Dagster logs them as an engine
    event only; without its (private) handler hook the list stays empty and the failure names the exit code."""
    reported: list[str] = []
    handler = getattr(session, "message_handler", None)
    original = getattr(handler, "_handle_closed", None)
    if original is None:
        return reported

    def handle_closed(params):
        exception = (params or {}).get("exception")
        if exception:
            reported.append(str(exception.get("message") or exception.get("name") or "").strip())
        return original(params)

    handler._handle_closed = handle_closed
    return reported
