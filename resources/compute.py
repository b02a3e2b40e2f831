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


class SecretKeyRef(dg.Config):
    """One key of a Kubernetes Secret, passed to the pods by reference (`valueFrom.secretKeyRef`)."""

    name: str = Field(description="Name of the Secret in the pods' namespace.")
    key: str = Field(description="Key inside the Secret.")


class Toleration(dg.Config):
    """A pod toleration (e.g. of the GPU nodes' taint)."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: str | None = Field(default=None, description="NoSchedule, PreferNoSchedule or NoExecute (empty: all effects).")
    toleration_seconds: int | None = None


class KubernetesSettings(dg.Config):
    """How to run pods: namespace, image, service account and how long to wait for a pod.

    Secrets reach the pods only by reference: `secret_env` (one variable per Secret key) and
    `env_from_secrets` (every key of a Secret); a secret-looking variable with a literal value is
    never written into a pod spec (see resources/kubernetes.py).
    """

    namespace: str = Field(default="default", description="Namespace of the training pods.")
    image: str | None = Field(default=None, description="Default image when the recipe names none.")
    service_account: str | None = Field(default=None, description="Service account of the pods.")
    pod_wait_timeout_s: float = Field(default=7 * 24 * 3600, description="Longest wait for a pod (multi-day runs).")
    python: str = Field(default="python", description="Python interpreter inside the image.")
    project_dir: str = Field(default="/app", description="The project checkout inside the image (working directory; accelerate configs).")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Cluster-wide node selector; the recipe's launch.node_selector wins.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Pod tolerations, e.g. of a GPU taint.")
    secret_env: dict[str, SecretKeyRef] = Field(default_factory=dict, description="Env var name -> Secret key, e.g. AWS_SECRET_ACCESS_KEY.")
    env_from_secrets: list[str] = Field(default_factory=list, description="Secrets whose every key becomes an env var (envFrom).")
    image_pull_secrets: list[str] = Field(default_factory=list, description="Secrets for pulling the image.")
    shm_size: str | None = Field(default=None, description="Size limit of the in-memory /dev/shm volume (e.g. 16Gi).")
    scratch_volume_claim: str | None = Field(default=None, description="PVC for checkpoints (resume across pods); default an emptyDir.")
    main_process_port: int = Field(default=29500, description="Rendezvous port of multi-node launches.")
    poll_interval_s: float = Field(default=10.0, description="Seconds between pod state polls.")
    kubeconfig_file: str | None = Field(default=None, description="kubeconfig (default: in-cluster config or ~/.kube/config).")
    kube_context: str | None = Field(default=None, description="kubeconfig context.")


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
            from resources.slurm import run_on_slurm

            return run_on_slurm(context, self.slurm, spec, spec_path, launch, env)
        if self.backend == "kubernetes":
            from resources.kubernetes import run_on_kubernetes

            return run_on_kubernetes(context, self.kubernetes, spec, spec_path, launch, env)
        command = accelerate_command(spec.stage, str(spec_path), launch, module=spec.module)
        context.log.info("launching: " + " ".join(command))
        from resources.local import ProcessGroupSubprocessClient

        return ProcessGroupSubprocessClient(cwd=str(PROJECT_ROOT), env=env).run(context=context, command=command)
