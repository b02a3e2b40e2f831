"""Progress and results from a launched process: Dagster Pipes on global rank 0, plain logs elsewhere.

Only rank 0 opens Pipes: every rank's "closed" message would otherwise end the session early and the
step fails with "returned an output multiple times".
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any


def global_rank() -> int:
    """The process's global rank under accelerate/torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


class Reporter:
    """Progress lines into the Dagster run log (rank 0 under Pipes) and stderr; silent on other ranks."""

    def __init__(self, pipes: Any | None):
        self.pipes = pipes

    @property
    def is_main(self) -> bool:
        """True on global rank 0."""
        return global_rank() == 0

    def info(self, message: str) -> None:
        """A progress line in the run log."""
        if not self.is_main:
            return
        if self.pipes is not None:
            self.pipes.log.info(message)
        else:
            print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def open_reporter() -> Iterator[Reporter]:
    """A reporter; opens Dagster Pipes only on rank 0 of a process launched through Pipes."""
    if global_rank() != 0:
        yield Reporter(None)
        return
    from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, open_dagster_pipes

    if DAGSTER_PIPES_CONTEXT_ENV_VAR not in os.environ:  # launched by hand, not through Dagster
        yield Reporter(None)
        return
    with open_dagster_pipes() as pipes:
        yield Reporter(pipes)


def run_entrypoint(name: str, spec_path: str, body) -> None:
    """Shared entry point of every launch (a training stage or a report): read the spec, apply its
    environment, open the reporter, run `body(spec, reporter, started)`, end the process group cleanly."""
    from doge_dagster.launching.spec import LaunchSpec

    started = time.monotonic()
    spec = LaunchSpec.read(spec_path)
    if spec.name != name:
        raise SystemExit(f"spec {spec_path} is for {spec.name!r}, not {name!r}")
    os.environ.update(spec.env)
    with open_reporter() as reporter:
        try:
            body(spec, reporter, started)
        finally:
            end_process_group()


def end_process_group() -> None:
    """End the process group cleanly; otherwise one rank can abort at exit and the launcher returns 1."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
