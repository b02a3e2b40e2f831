"""Where training runs: one `compute` resource whose backend is chosen by configuration alone.

Every backend runs the same command (`accelerate launch ... -m doge_dagster.training STAGE --spec F`)
through Dagster Pipes, so assets never change when a stage moves from a laptop to a cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from doge_dagster.recipes import PROJECT_ROOT, LaunchRecipe
from doge_dagster.training.launch import accelerate_command
from doge_dagster.training.spec import StageSpec


class ComputeResource(dg.ConfigurableResource):
    """Launches training stages with `accelerate launch` through Dagster Pipes.

    `backend`: `local` (a subprocess on this machine), `slurm` or `kubernetes` (see README, "Compute").
    `scratch_dir` holds checkpoints when the artifact store is remote; with a local store they live
    beside the artifacts, so a retried materialization resumes from them.
    """

    backend: Literal["local", "slurm", "kubernetes"] = Field(default="local", description="Where stages run.")
    scratch_dir: str = Field(default="/tmp/doge-work", description="Checkpoint folder for remote artifact stores.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for training processes.")

    def run_stage(
        self, context: dg.AssetExecutionContext, spec: StageSpec, launch: LaunchRecipe
    ) -> dg.PipesClientCompletedInvocation:
        """Write the spec, launch the stage, stream its logs into the run, and wait for it."""
        work_dir = Path(spec.work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        spec_path = spec.write(work_dir / "spec.json")
        if self.backend != "local":
            raise dg.Failure(f"compute backend {self.backend!r} is configured but not available in this build; use 'local'")
        command = accelerate_command(spec.stage, str(spec_path), launch)
        context.log.info("launching: " + " ".join(command))
        client = dg.PipesSubprocessClient(cwd=str(PROJECT_ROOT), env={**self.env, **launch.env})
        return client.run(context=context, command=command)
