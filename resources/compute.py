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


class SlurmSettings(dg.Config):
    """How to reach Slurm: the folder shared by the Dagster host and the nodes, polling, extra sbatch lines."""

    shared_dir: str = Field(default="/tmp/doge-slurm", description="Folder on the shared filesystem for scripts, logs and Pipes files.")
    poll_interval_s: float = Field(default=2.0, description="Seconds between job state polls.")
    python: str | None = Field(default=None, description="Python on the nodes (default: this interpreter).")
    partition: str | None = Field(default=None, description="Partition when the recipe names none (default: the cluster's).")
    account: str | None = Field(default=None, description="Account when the recipe names none.")
    sbatch_extra: list[str] = Field(default_factory=list, description="Site-wide #SBATCH options (e.g. --qos=high), before the recipe's.")
    chdir: str | None = Field(default=None, description="Working directory of the job on the nodes (default: the project root).")
    main_process_port: int = Field(default=29500, description="Rendezvous port of multi-node launches on the first node.")


class KubernetesSettings(dg.Config):
    """How to run pods: namespace, image, service account and how long to wait for a pod."""

    namespace: str = Field(default="default", description="Namespace of the training pods.")
    image: str | None = Field(default=None, description="Default image when the recipe names none.")
    service_account: str | None = Field(default=None, description="Service account of the pods.")
    pod_wait_timeout_s: float = Field(default=7 * 24 * 3600, description="Longest wait for a pod (multi-day runs).")


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
        self, context: dg.AssetExecutionContext, spec: StageSpec, launch: LaunchRecipe
    ) -> dg.PipesClientCompletedInvocation:
        """Write the spec, launch the stage, stream its logs into the run, and wait for it."""
        work_dir = Path(spec.work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        spec_path = spec.write(work_dir / "spec.json")
        env = {**self.env, **launch.env}
        if self.backend == "slurm":
            from resources.slurm import run_on_slurm

            return run_on_slurm(context, self.slurm, spec, spec_path, launch, env)
        if self.backend == "kubernetes":
            from resources.kubernetes import run_on_kubernetes

            return run_on_kubernetes(context, self.kubernetes, spec, spec_path, launch, env)
        command = accelerate_command(spec.stage, str(spec_path), launch)
        context.log.info("launching: " + " ".join(command))
        client = dg.PipesSubprocessClient(cwd=str(PROJECT_ROOT), env=env)
        return client.run(context=context, command=command)
