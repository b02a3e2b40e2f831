"""The Kubernetes backend: one GPU pod per stage through dagster-k8s `PipesK8sClient`, or an indexed Job
for multi-node stages.

The pod runs the same command as every backend (`accelerate launch ... -m doge_dagster.training STAGE
--spec env:DOGE_SPEC_JSON`). The spec travels in the `DOGE_SPEC_JSON` variable, as the pod shares no
filesystem with the Dagster host; the artifact store must therefore be remote (`s3://...`).

What the pod gets from where:
- image: the recipe's `launch.image`, else `compute.kubernetes.image`;
- GPUs: `resources.limits["nvidia.com/gpu"] = launch.gpus_per_node`; CPU and memory from
  `launch.cpus_per_task` / `launch.memory` (Slurm units such as `64G` become `64Gi`);
- `/dev/shm`: an in-memory emptyDir (NCCL and dataloader workers need more than the 64 MB default);
- checkpoints: `spec.work_dir` on an emptyDir, or on `scratch_volume_claim` (a PVC) so a retried
  materialization resumes from the last checkpoint;
- placement: `node_selector` (settings, then the recipe's) and `tolerations`;
- secrets: only by reference (`secret_env` -> `valueFrom.secretKeyRef`, `env_from_secrets` -> `envFrom`).
  A variable whose name looks secret (`*SECRET*`, `*TOKEN*`, `*ACCESS_KEY*`, ...) and has a literal
  value (e.g. the artifact store's credentials from `ArtifactStoreResource.process_env()`) is never
  written into a pod spec; without a reference for it the launch fails before anything is created;
- run time: `activeDeadlineSeconds` from `launch.time_limit`; the Dagster side waits
  `pod_wait_timeout_s` (7 days by default; the client's default is 24 h).

Termination: `PipesK8sClient.run` deletes the pod in a `finally` block, so a terminated Dagster run
(the step sees `DagsterExecutionInterruptedError`) removes its pod; the multi-node path deletes its Job
(foreground propagation: the pods go with it) and its Service the same way.

Multi-node (`launch.nodes > 1`): an indexed Job of `nodes` pods (`completionMode: Indexed`) plus a
headless Service. Pod `i` runs `accelerate launch --machine_rank $(DOGE_MACHINE_RANK)` (the pod's
completion index) with `--main_process_ip {job}-0.{service}`, the stable DNS name of pod 0, which
hosts the rendezvous. Pod 0 is global rank 0 and the only one that opens Dagster Pipes; its log
carries the messages. A JobSet (jobset.x-k8s.io) with one replicated Job is the same pod template;
`indexed_job_manifests` gives the manifests to inspect or to apply by hand.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from doge_dagster.launching.command import LaunchError, accelerate_command
from doge_dagster.launching.spec import SPEC_ENV_PREFIX, SPEC_ENV_VAR, LaunchSpec
from doge_dagster.recipes import PROJECT_ROOT, LaunchRecipe
from doge_dagster.throughput import time_limit_seconds


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


CONTAINER_NAME = "dagster-pipes-execution"  # PipesK8sClient's name for the first container
SHM_VOLUME = "dshm"
SCRATCH_VOLUME = "scratch"
GPU_RESOURCE = "nvidia.com/gpu"
RANK_ENV = "DOGE_MACHINE_RANK"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
SECRET_NAME = re.compile(
    r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|API_KEY|PRIVATE_KEY|SESSION_KEY", re.IGNORECASE
)
LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]")


# -- pieces of the pod ----------------------------------------------------------------------------------------
def resolve_image(settings: KubernetesSettings, launch: LaunchRecipe, stage: str) -> str:
    """The recipe's image, else the cluster default; an error naming both when neither is set."""
    image = launch.image or settings.image
    if not image:
        raise LaunchError(
            f"stages.{stage}.launch.image is not set and compute.kubernetes.image has no default: "
            "set launch.image in the recipe (an image with this project installed) or kubernetes.image on the compute resource"
        )
    return image


def looks_secret(name: str) -> bool:
    """Whether an environment variable name suggests a credential (never written into a pod spec by value)."""
    return bool(SECRET_NAME.search(name))


def env_entries(settings: KubernetesSettings, env: Mapping[str, str], stage: str) -> list[dict[str, Any]]:
    """Container `env`: plain variables by value, secrets by `secretKeyRef` only.

    A secret-looking variable with a literal value is dropped; if no `secret_env` entry and no
    `env_from_secrets` Secret can provide it, the launch fails naming the variable and the fix.
    """
    entries: list[dict[str, Any]] = []
    missing = []
    for name, value in env.items():
        if name in settings.secret_env:
            continue  # the reference below wins over the host's value
        if looks_secret(name):
            if not settings.env_from_secrets:
                missing.append(name)
            continue
        entries.append({"name": name, "value": str(value)})
    if missing:
        raise LaunchError(
            f"stage {stage}: {', '.join(sorted(missing))} would reach the pod only as a literal value, which is never "
            "written into a pod spec; create a Kubernetes Secret and reference it with compute.kubernetes.secret_env "
            "(e.g. {"
            + f"{missing[0]!r}: "
            + "{'name': 'doge-s3', 'key': '...'}}) or compute.kubernetes.env_from_secrets "
            "(environment: DOGE_K8S_ENV_FROM_SECRETS=doge-s3)"
        )
    for name, ref in settings.secret_env.items():
        entries.append({"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return entries


def memory_quantity(memory: str) -> str:
    """A Slurm-style memory size (`64G`, `512M`, `4096` = MB) as a Kubernetes quantity (`64Gi`); k8s forms pass."""
    match = re.fullmatch(r"(\d+)([KMGTkmgt]?)", memory.strip())
    if not match:
        return memory.strip()
    unit = (match[2] or "M").upper()
    return f"{match[1]}{unit}i"


def container_command(
    settings: KubernetesSettings,
    spec: LaunchSpec,
    launch: LaunchRecipe,
    machine_rank: str | None = None,
    main_process_ip: str | None = None,
) -> list[str]:
    """The accelerate launch inside the image: its python, its project checkout, the spec from the env."""
    command = accelerate_command(
        spec.name, SPEC_ENV_PREFIX + SPEC_ENV_VAR, launch, machine_rank=machine_rank,
        main_process_ip=main_process_ip, main_process_port=settings.main_process_port, python=settings.python,
        module=spec.module,
    )  # fmt: skip
    index = command.index("--config_file") + 1
    config = Path(command[index])
    if config.is_relative_to(PROJECT_ROOT):
        command[index] = f"{settings.project_dir.rstrip('/')}/{config.relative_to(PROJECT_ROOT).as_posix()}"
    if launch.setup:
        script = "\n".join(["set -e", *launch.setup, "exec " + shlex.join(command)])
        return ["/bin/sh", "-c", script]
    return command


def labels(spec: LaunchSpec) -> dict[str, str]:
    """Pod labels naming the artifact (values cleaned to the label syntax)."""

    def clean(value: str) -> str:
        return LABEL_VALUE.sub("-", value)[:63].strip("-_.") or "none"

    return {
        "app.kubernetes.io/name": "doge-dagster",
        "doge-dagster/asset": clean(spec.asset),
        "doge-dagster/partition": clean(spec.partition),
        "doge-dagster/version": clean(spec.version),
    }


def pod_spec(
    settings: KubernetesSettings,
    spec: LaunchSpec,
    launch: LaunchRecipe,
    env: Mapping[str, str],
    machine_rank: str | None = None,
    main_process_ip: str | None = None,
) -> dict[str, Any]:
    """The PodSpec (camelCase dict) of one stage pod: image, command, GPUs, /dev/shm, scratch, placement, env."""
    if "://" not in spec.store_root:
        raise LaunchError(
            f"the kubernetes backend needs a remote artifact store, but artifact_store.root is the local folder "
            f"{spec.store_root}; set it to an s3:// URL (endpoint and credentials as in the README)"
        )
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if launch.gpus_per_node:
        limits[GPU_RESOURCE] = str(launch.gpus_per_node)
    if launch.cpus_per_task:
        requests["cpu"] = str(launch.cpus_per_task)
    if launch.memory:
        requests["memory"] = limits["memory"] = memory_quantity(launch.memory)
    shm: dict[str, Any] = {"medium": "Memory"}
    if settings.shm_size:
        shm["sizeLimit"] = settings.shm_size
    if settings.scratch_volume_claim:
        scratch_volume = {"name": SCRATCH_VOLUME, "persistentVolumeClaim": {"claimName": settings.scratch_volume_claim}}
        scratch_mount = {
            "name": SCRATCH_VOLUME,
            "mountPath": spec.work_dir,
            "subPath": f"{spec.asset}/{spec.partition}/{spec.version}",
        }
    else:
        scratch_volume = {"name": SCRATCH_VOLUME, "emptyDir": {}}
        scratch_mount = {"name": SCRATCH_VOLUME, "mountPath": spec.work_dir}
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": resolve_image(settings, launch, spec.name),
        "command": container_command(settings, spec, launch, machine_rank, main_process_ip),
        "workingDir": settings.project_dir,
        "env": [{"name": SPEC_ENV_VAR, "value": spec.to_json()}, *env_entries(settings, env, spec.name)],
        "resources": {key: value for key, value in (("limits", limits), ("requests", requests)) if value},
        "volumeMounts": [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}, scratch_mount],
    }
    if settings.env_from_secrets:
        container["envFrom"] = [{"secretRef": {"name": name}} for name in settings.env_from_secrets]
    body: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [{"name": SHM_VOLUME, "emptyDir": shm}, scratch_volume],
        "activeDeadlineSeconds": time_limit_seconds(launch.time_limit),
    }
    node_selector = {**settings.node_selector, **launch.node_selector}
    if node_selector:
        body["nodeSelector"] = node_selector
    if settings.tolerations:
        body["tolerations"] = [
            {_camel(key): value for key, value in toleration.model_dump().items() if value is not None}
            for toleration in settings.tolerations
        ]
    if settings.service_account:
        body["serviceAccountName"] = settings.service_account
    if settings.image_pull_secrets:
        body["imagePullSecrets"] = [{"name": name} for name in settings.image_pull_secrets]
    return body


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


# -- one node: PipesK8sClient ---------------------------------------------------------------------------------
def pipes_client(settings: KubernetesSettings):
    """The dagster-k8s Pipes client: kubeconfig or in-cluster config, polling interval from settings."""
    from dagster_k8s import PipesK8sClient

    return PipesK8sClient(
        kubeconfig_file=settings.kubeconfig_file,
        kube_context=settings.kube_context,
        poll_interval=settings.poll_interval_s,
    )


def run_on_kubernetes(
    context: dg.AssetExecutionContext,
    settings: KubernetesSettings,
    spec: LaunchSpec,
    spec_path: Path,
    launch: LaunchRecipe,
    env: Mapping[str, str],
) -> dg.PipesClientCompletedInvocation:
    """Run the stage in a pod (or an indexed Job for multi-node), streaming Pipes messages from its log.

    `spec_path` (the spec file on the Dagster host) stays there for reference; the pod gets the spec
    in `DOGE_SPEC_JSON`.
    """
    if launch.nodes > 1:
        return run_indexed_job(context, settings, spec, launch, env)
    try:
        body = pod_spec(settings, spec, launch, env)
    except LaunchError as error:
        raise dg.Failure(description=str(error)) from None
    container = body["containers"][0]
    context.log.info(
        f"kubernetes: pod in namespace {settings.namespace}, image {container['image']}, "
        f"{launch.gpus_per_node} GPU(s); spec {spec_path}; command: {shlex.join(container['command'])}"
    )
    return pipes_client(settings).run(
        context=context,
        namespace=settings.namespace,
        base_pod_meta={"labels": labels(spec)},
        base_pod_spec=body,
        pod_wait_timeout=settings.pod_wait_timeout_s,
    )


# -- several nodes: an indexed Job and a headless Service ------------------------------------------------------
def job_name_for(context_run_id: str, spec: LaunchSpec) -> str:
    """A DNS-1123 name, unique per run and stage (pod hostnames add `-<index>`)."""
    base = re.sub(r"[^a-z0-9-]", "-", f"doge-{spec.name}-{context_run_id[:8]}".lower())
    return base[:50].strip("-")


def indexed_job_manifests(
    settings: KubernetesSettings,
    spec: LaunchSpec,
    launch: LaunchRecipe,
    env: Mapping[str, str],
    job_name: str,
    pipes_env: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Service, Job) for a multi-node stage: `launch.nodes` indexed pods, pod 0 hosting the rendezvous.

    `pipes_env` (the Pipes bootstrap variables) goes into every pod; only global rank 0 opens Pipes.
    """
    body = pod_spec(
        settings, spec, launch, env, machine_rank=f"$({RANK_ENV})", main_process_ip=f"{job_name}-0.{job_name}"
    )
    container = body["containers"][0]
    container["env"] = [
        {
            "name": RANK_ENV,
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}},
        },
        *({"name": name, "value": value} for name, value in (pipes_env or {}).items()),
        *container["env"],
    ]
    container["ports"] = [{"name": "rendezvous", "containerPort": settings.main_process_port}]
    body["subdomain"] = job_name
    deadline = body.pop("activeDeadlineSeconds")
    pod_labels = {**labels(spec), "doge-dagster/job": job_name}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": job_name, "namespace": settings.namespace, "labels": pod_labels},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # DNS of pod 0 before every pod is ready
            "selector": {"doge-dagster/job": job_name},
            "ports": [{"name": "rendezvous", "port": settings.main_process_port}],
        },
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name, "namespace": settings.namespace, "labels": pod_labels},
        "spec": {
            "completionMode": "Indexed",
            "completions": launch.nodes,
            "parallelism": launch.nodes,
            "backoffLimit": 0,  # a failed node fails the stage; a retried materialization resumes from checkpoints
            "activeDeadlineSeconds": deadline,
            "template": {"metadata": {"labels": pod_labels}, "spec": body},
        },
    }
    return service, job


def _load_kube_config(settings: KubernetesSettings) -> None:
    import kubernetes

    if settings.kubeconfig_file or settings.kube_context:
        kubernetes.config.load_kube_config(config_file=settings.kubeconfig_file, context=settings.kube_context)
    elif os.getenv("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config()
    else:
        kubernetes.config.load_kube_config()


def run_indexed_job(
    context: dg.AssetExecutionContext,
    settings: KubernetesSettings,
    spec: LaunchSpec,
    launch: LaunchRecipe,
    env: Mapping[str, str],
) -> dg.PipesClientCompletedInvocation:
    """Create the Service and indexed Job, stream Pipes from pod 0's log, wait for the Job, delete both."""
    import kubernetes
    from dagster_k8s.client import DagsterKubernetesClient, WaitForPodState
    from dagster_k8s.pipes import PipesK8sPodLogsMessageReader

    _load_kube_config(settings)
    client = DagsterKubernetesClient.production_client()
    batch = kubernetes.client.BatchV1Api()
    namespace = settings.namespace
    job_name = job_name_for(context.run_id, spec)
    reader = PipesK8sPodLogsMessageReader()
    with dg.open_pipes_session(
        context=context, context_injector=dg.PipesEnvContextInjector(), message_reader=reader
    ) as session:
        try:
            service, job = indexed_job_manifests(
                settings, spec, launch, env, job_name, session.get_bootstrap_env_vars()
            )
        except LaunchError as error:
            raise dg.Failure(description=str(error)) from None
        context.log.info(
            f"kubernetes: indexed Job {namespace}/{job_name}, {launch.nodes} nodes x {launch.gpus_per_node} GPU(s); "
            f"command: {shlex.join(job['spec']['template']['spec']['containers'][0]['command'])}"
        )
        client.core_api.create_namespaced_service(namespace, service)
        try:
            batch.create_namespaced_job(namespace, job)
            deadline = time.monotonic() + settings.pod_wait_timeout_s
            pod_name = _rank0_pod(client.core_api, namespace, job_name, deadline, settings.poll_interval_s)
            client.wait_for_pod(
                pod_name, namespace, wait_for_state=WaitForPodState.Ready, wait_time_between_attempts=settings.poll_interval_s,
                pod_launch_timeout=settings.pod_wait_timeout_s, wait_timeout=settings.pod_wait_timeout_s,
            )  # fmt: skip
            reader.consume_pod_logs(context=context, core_api=client.core_api, pod_name=pod_name, namespace=namespace)
            _wait_for_job(batch, namespace, job_name, launch.nodes, deadline, settings.poll_interval_s)
        finally:
            batch.delete_namespaced_job(job_name, namespace, propagation_policy="Foreground")
            client.core_api.delete_namespaced_service(job_name, namespace)
    return dg.PipesClientCompletedInvocation(session)


def _rank0_pod(core_api, namespace: str, job_name: str, deadline: float, poll_s: float) -> str:
    while True:
        pods = core_api.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items
        for pod in pods:
            if (pod.metadata.annotations or {}).get(COMPLETION_INDEX_ANNOTATION) == "0":
                return pod.metadata.name
        if time.monotonic() > deadline:
            raise dg.Failure(description=f"kubernetes: pod 0 of Job {namespace}/{job_name} did not appear in time")
        time.sleep(poll_s)


def _wait_for_job(batch, namespace: str, job_name: str, completions: int, deadline: float, poll_s: float) -> None:
    while True:
        status = batch.read_namespaced_job_status(job_name, namespace).status
        conditions = {condition.type: condition.status for condition in status.conditions or []}
        if conditions.get("Complete") == "True" or (status.succeeded or 0) >= completions:
            return
        if conditions.get("Failed") == "True" or status.failed:
            raise dg.Failure(
                description=f"kubernetes: Job {namespace}/{job_name} failed ({status.failed} pod(s) failed)"
            )
        if time.monotonic() > deadline:
            raise dg.Failure(
                description=f"kubernetes: Job {namespace}/{job_name} still running after pod_wait_timeout_s"
            )
        time.sleep(poll_s)
