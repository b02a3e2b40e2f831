"""Where training runs: one `compute` resource whose backend is chosen by configuration alone.

Every backend runs the same command (`accelerate launch ... -m doge_dagster.training STAGE --spec F`)
through Dagster Pipes, so assets never change when a stage moves from a laptop to a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from doge_dagster.launching.command import accelerate_command
from doge_dagster.launching.spec import LaunchSpec
from doge_dagster.recipes import PROJECT_ROOT, LaunchRecipe
from resources.kubernetes import KubernetesSettings, run_on_kubernetes
from resources.local import ProcessGroupSubprocessClient
from resources.slurm import SlurmSettings, run_on_slurm


class ComputeResource(dg.ConfigurableResource):
    """Launches training stages with `accelerate launch` through Dagster Pipes.

    `backend`: `local` (a subprocess on this machine), `slurm` or `kubernetes` (see README, "Compute").
    `scratch_dir` holds checkpoints when the artifact store is remote; with a local store they live
    beside the artifacts, so a retried materialization resumes from them.
    """

    backend: Literal["local", "slurm", "kubernetes"] = Field(default="local", description="Where stages run.")
    scratch_dir: str = Field(default="/tmp/doge-work", description="Checkpoint folder for remote artifact stores.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for training processes.")
    slurm: SlurmSettings = Field(default_factory=SlurmSettings, description="Slurm settings (backend=slurm).")
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings, description="Kubernetes settings (backend=kubernetes).")

    def run_stage(
        self,
        context: dg.AssetExecutionContext,
        spec: LaunchSpec,
        launch: LaunchRecipe,
        extra_env: Mapping[str, str] | None = None,
    ) -> dg.PipesClientCompletedInvocation:
        """Write the spec, launch the stage, stream its logs into the run, and wait for it.

        `extra_env` (e.g. `ArtifactStoreResource.process_env()`: S3 endpoint and credentials) reaches
        the process environment only, never the spec file; `env` and the recipe's `launch.env` win over it.
        """
        work_dir = Path(spec.work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        spec_path = spec.write(work_dir / "spec.json")
        env = {**(extra_env or {}), **self.env, **launch.env}
        if self.backend == "slurm":
            return run_on_slurm(context, self.slurm, spec, spec_path, launch, env)
        if self.backend == "kubernetes":
            return run_on_kubernetes(context, self.kubernetes, spec, spec_path, launch, env)
        command = accelerate_command(spec.name, str(spec_path), launch, module=spec.module)
        context.log.info("launching: " + " ".join(command))
        return ProcessGroupSubprocessClient(cwd=str(PROJECT_ROOT), env=env).run(context=context, command=command)
