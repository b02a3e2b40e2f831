"""The Kubernetes backend without a cluster.

Pod specs and the multi-node manifests are built from recipes and validated against the Kubernetes
API models (dagster-k8s `build_pod_body`, and a JSON round trip through the `kubernetes` client's
`ApiClient.deserialize`, which drops unknown fields). A fake cluster then runs the real
`PipesK8sClient` flow: its "kubelet" resolves env vars (secret references from its own Secrets), runs
the container command's Pipes part as a local process and serves its stderr as the pod log.
"""

import json
import os
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import dagster as dg
import pytest
from helpers import program_command, program_env

pytest.importorskip("dagster_k8s")
import kubernetes
from dagster_k8s.pipes import build_pod_body

from doge_dagster.launching.command import LaunchError
from doge_dagster.launching.spec import SPEC_ENV_VAR, LaunchSpec
from doge_dagster.recipes import PROJECT_ROOT, LaunchRecipe
from resources import kubernetes as k8s
from resources.compute import ComputeResource
from resources.kubernetes import KubernetesSettings, SecretKeyRef, Toleration

ACCESS_KEY = "AKIAK8STESTLITERAL0042"
SECRET_KEY = "k8s-literal-secret-value-3b1f9d"
HOST_ENV = {  # what ArtifactStoreResource.process_env() gives for an S3 store, plus a plain setting
    "FSSPEC_S3_ENDPOINT_URL": "http://minio.storage:9000",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "NCCL_DEBUG": "WARN",
}
SECRET_ENV = {
    "AWS_ACCESS_KEY_ID": SecretKeyRef(name="doge-s3", key="access_key_id"),
    "AWS_SECRET_ACCESS_KEY": SecretKeyRef(name="doge-s3", key="secret_access_key"),
}


def make_spec(
    work_dir: str = "/scratch/doge_base/tiny/v1", store_root: str = "s3://doge/artifacts", stage: str = "pretrain"
) -> LaunchSpec:
    return LaunchSpec(
        name=stage, asset="doge_base", partition="tiny", version="0123456789abcdef", upstream={"tokenizer": "aa", "pretrain_mixture": "bb"},
        recipe={"name": "tiny"}, store_root=store_root, work_dir=work_dir,
    )  # fmt: skip


def settings(**overrides) -> KubernetesSettings:
    values = {"namespace": "training", "image": "registry.example/doge:1", "secret_env": SECRET_ENV, **overrides}
    return KubernetesSettings(**values)


def gpu_launch(**overrides) -> LaunchRecipe:
    values = {
        "accelerate_config": "ddp",
        "gpus_per_node": 8,
        "cpus_per_task": 32,
        "memory": "512G",
        "time_limit": "2-00:00:00",
        "node_selector": {"gpu": "h100"},
        **overrides,
    }
    return LaunchRecipe(**values)


def api_model(manifest: dict, model: str):
    """Deserialize a camelCase manifest into the kubernetes client model and check nothing was dropped."""
    client = kubernetes.client.ApiClient()
    obj = client.deserialize(SimpleNamespace(data=json.dumps(manifest)), model)
    assert client.sanitize_for_serialization(obj) == manifest, f"{model}: unknown or misspelled fields"
    return obj


def pod_manifest(body: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "doge-test"}, "spec": body}


def everything(obj) -> str:
    if not isinstance(obj, (dict, list)):
        obj = kubernetes.client.ApiClient().sanitize_for_serialization(obj)
    return json.dumps(obj)


# -- the pod spec ------------------------------------------------------------------------------------------------
def test_pod_spec_is_a_valid_gpu_pod_with_the_launch_command():
    spec = make_spec()
    body = k8s.pod_spec(settings(shm_size="64Gi"), spec, gpu_launch(), HOST_ENV)
    pod = api_model(pod_manifest(body), "V1Pod")
    built = build_pod_body("doge-test", None, None, {"DAGSTER_PIPES_CONTEXT": "x"}, {"labels": k8s.labels(spec)}, body)
    assert isinstance(built, kubernetes.client.V1Pod)  # dagster-k8s accepts it as base_pod_spec

    container = pod.spec.containers[0]
    assert container.name == k8s.CONTAINER_NAME and container.image == "registry.example/doge:1"
    assert container.command == [
        "python", "-m", "accelerate.commands.launch", "--config_file", "/app/recipes/accelerate/ddp.yaml",
        "--num_processes", "8", "--num_machines", "1", "-m", "doge_dagster.training", "pretrain", "--spec", "env:DOGE_SPEC_JSON",
    ]  # fmt: skip
    assert container.working_dir == "/app"
    env = {entry.name: entry for entry in container.env}
    assert LaunchSpec(**json.loads(env[SPEC_ENV_VAR].value)) == spec
    assert container.resources.limits == {"nvidia.com/gpu": "8", "memory": "512Gi"}
    assert container.resources.requests == {"cpu": "32", "memory": "512Gi"}
    mounts = {mount.mount_path: mount.name for mount in container.volume_mounts}
    volumes = {volume.name: volume for volume in pod.spec.volumes}
    assert volumes[mounts["/dev/shm"]].empty_dir.medium == "Memory"
    assert volumes[mounts["/dev/shm"]].empty_dir.size_limit == "64Gi"
    assert volumes[mounts[spec.work_dir]].empty_dir is not None
    assert pod.spec.restart_policy == "Never"
    assert pod.spec.active_deadline_seconds == 2 * 24 * 3600
    assert pod.spec.node_selector == {"gpu": "h100"}


def test_secrets_go_by_reference_and_no_literal_value_reaches_the_pod():
    body = k8s.pod_spec(settings(), make_spec(), gpu_launch(), HOST_ENV)
    pod = api_model(pod_manifest(body), "V1Pod")
    env = {entry.name: entry for entry in pod.spec.containers[0].env}
    for name, ref in SECRET_ENV.items():
        assert env[name].value is None
        assert (env[name].value_from.secret_key_ref.name, env[name].value_from.secret_key_ref.key) == (
            ref.name,
            ref.key,
        )
    assert env["FSSPEC_S3_ENDPOINT_URL"].value == "http://minio.storage:9000"
    assert env["NCCL_DEBUG"].value == "WARN"
    text = everything(body) + everything(pod)
    assert ACCESS_KEY not in text and SECRET_KEY not in text


def test_a_secret_without_a_reference_fails_before_anything_is_created():
    with pytest.raises(LaunchError, match=r"AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.*secret_env") as error:
        k8s.pod_spec(settings(secret_env={}), make_spec(), gpu_launch(), HOST_ENV)
    assert SECRET_KEY not in str(error.value) and ACCESS_KEY not in str(error.value)
    with pytest.raises(LaunchError, match="HF_TOKEN"):
        k8s.pod_spec(settings(), make_spec(), gpu_launch(), {"HF_TOKEN": "hf_literal"})
    # a whole Secret as envFrom may provide them: the literal values are still dropped
    body = k8s.pod_spec(settings(secret_env={}, env_from_secrets=["doge-s3"]), make_spec(), gpu_launch(), HOST_ENV)
    pod = api_model(pod_manifest(body), "V1Pod")
    assert [source.secret_ref.name for source in pod.spec.containers[0].env_from] == ["doge-s3"]
    assert "AWS_SECRET_ACCESS_KEY" not in {entry.name for entry in pod.spec.containers[0].env}
    assert SECRET_KEY not in everything(body)


def test_image_comes_from_the_recipe_then_the_settings_and_is_required():
    assert (
        k8s.pod_spec(settings(), make_spec(), gpu_launch(image="recipe/image:2"), HOST_ENV)["containers"][0]["image"]
        == "recipe/image:2"
    )
    with pytest.raises(LaunchError, match=r"stages\.pretrain\.launch\.image"):
        k8s.pod_spec(settings(image=None), make_spec(), gpu_launch(), HOST_ENV)


def test_a_local_artifact_store_is_rejected():
    with pytest.raises(LaunchError, match=r"artifact_store\.root.*s3://"):
        k8s.pod_spec(settings(), make_spec(store_root="/home/me/.doge"), gpu_launch(), HOST_ENV)


def test_placement_service_account_scratch_claim_setup_and_cpu_pods():
    custom = settings(
        node_selector={"pool": "gpu", "gpu": "any"},
        tolerations=[Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule"), Toleration(key="spot", operator="Equal", value="true", effect="NoExecute", toleration_seconds=600)],
        service_account="doge-trainer", image_pull_secrets=["regcred"], scratch_volume_claim="doge-scratch",
        python="/opt/venv/bin/python", project_dir="/srv/doge",
    )  # fmt: skip
    spec = make_spec()
    launch = gpu_launch(setup=["nvidia-smi", "export NCCL_IB_DISABLE=1"])
    pod = api_model(pod_manifest(k8s.pod_spec(custom, spec, launch, HOST_ENV)), "V1Pod")
    assert pod.spec.node_selector == {"pool": "gpu", "gpu": "h100"}  # the recipe wins
    assert [(t.key, t.operator, t.effect, t.toleration_seconds) for t in pod.spec.tolerations] == [
        ("nvidia.com/gpu", "Exists", "NoSchedule", None), ("spot", "Equal", "NoExecute", 600),
    ]  # fmt: skip
    assert pod.spec.service_account_name == "doge-trainer"
    assert [secret.name for secret in pod.spec.image_pull_secrets] == ["regcred"]
    scratch = next(volume for volume in pod.spec.volumes if volume.name == k8s.SCRATCH_VOLUME)
    assert scratch.persistent_volume_claim.claim_name == "doge-scratch"
    mount = next(mount for mount in pod.spec.containers[0].volume_mounts if mount.name == k8s.SCRATCH_VOLUME)
    assert (mount.mount_path, mount.sub_path) == (spec.work_dir, "doge_base/tiny/0123456789abcdef")
    command = pod.spec.containers[0].command
    assert command[:2] == ["/bin/sh", "-c"]
    assert command[2].startswith(
        "set -e\nnvidia-smi\nexport NCCL_IB_DISABLE=1\nexec /opt/venv/bin/python -m accelerate.commands.launch"
    )
    assert "/srv/doge/recipes/accelerate/ddp.yaml" in command[2]

    cpu = api_model(pod_manifest(k8s.pod_spec(settings(), spec, LaunchRecipe(), {})), "V1Pod")
    assert cpu.spec.containers[0].resources.limits is None  # no GPU asked, none requested
    assert "--config_file" in cpu.spec.containers[0].command


@pytest.mark.parametrize(
    ("limit", "seconds"),
    [("30", 1800), ("10:30", 630), ("24:00:00", 86400), ("2-12", 216000), ("1-00:30", 88200), ("3-01:02:03", 262_923)],
)
def test_slurm_time_limits_become_deadlines(limit, seconds):
    assert k8s.time_limit_seconds(limit) == seconds


def test_memory_sizes():
    assert [k8s.memory_quantity(value) for value in ("64G", "512M", "4096", "1T", "80Gi")] == [
        "64Gi",
        "512Mi",
        "4096Mi",
        "1Ti",
        "80Gi",
    ]


# -- multi-node: indexed Job + headless Service ------------------------------------------------------------------
def test_indexed_job_manifests_for_a_multi_node_stage():
    spec = make_spec()
    launch = gpu_launch(nodes=4, accelerate_config="fsdp")
    service, job = k8s.indexed_job_manifests(
        settings(), spec, launch, HOST_ENV, "doge-pretrain-abc", {"DAGSTER_PIPES_CONTEXT": "ctx"}
    )
    service_model = api_model(service, "V1Service")
    job_model = api_model(job, "V1Job")
    assert service_model.spec.cluster_ip == "None" and service_model.spec.publish_not_ready_addresses
    assert job_model.spec.completion_mode == "Indexed"
    assert job_model.spec.completions == job_model.spec.parallelism == 4
    assert job_model.spec.backoff_limit == 0
    assert job_model.spec.active_deadline_seconds == 2 * 24 * 3600
    template = job_model.spec.template
    assert service_model.spec.selector.items() <= template.metadata.labels.items()
    assert template.spec.subdomain == "doge-pretrain-abc" and template.spec.restart_policy == "Never"
    container = template.spec.containers[0]
    command = container.command
    assert command[command.index("--num_machines") + 1] == "4"
    assert command[command.index("--num_processes") + 1] == "32"
    assert command[command.index("--machine_rank") + 1] == "$(DOGE_MACHINE_RANK)"  # expanded by the kubelet
    assert command[command.index("--main_process_ip") + 1] == "doge-pretrain-abc-0.doge-pretrain-abc"
    assert command[command.index("--main_process_port") + 1] == "29500"
    env = {entry.name: entry for entry in container.env}
    assert (
        env["DOGE_MACHINE_RANK"].value_from.field_ref.field_path
        == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    assert [entry.name for entry in container.env].index("DOGE_MACHINE_RANK") == 0
    assert env["DAGSTER_PIPES_CONTEXT"].value == "ctx"
    assert container.resources.limits["nvidia.com/gpu"] == "8"
    assert SECRET_KEY not in everything(job) and ACCESS_KEY not in everything(job)


# -- the PipesK8sClient flow against a fake cluster --------------------------------------------------------------
class FakeCluster:
    """Enough of the Kubernetes API for PipesK8sClient and the indexed-Job path; pods run `programs.k8s_pod` locally."""

    SECRETS: ClassVar[dict] = {
        ("doge-s3", "access_key_id"): "AKIA-FROM-K8S",
        ("doge-s3", "secret_access_key"): "from-the-k8s-secret",
    }

    def __init__(self, interrupt: bool = False):
        self.interrupt = interrupt
        self.created: list = []
        self.deleted: list[str] = []
        self.waits: list[tuple[str, dict]] = []
        self.logs: dict[str, list[bytes]] = {}
        self.core_api = self
        self.lock = threading.Lock()

    # kubelet: resolve env, run the Pipes part of the container, keep its stderr as the log
    def _run_pod(self, name: str, container, annotations: dict[str, str]) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "DAGSTER_PIPES"))}
        for entry in container.env:
            if entry.value is not None:
                env[entry.name] = entry.value
            elif entry.value_from.secret_key_ref is not None:
                ref = entry.value_from.secret_key_ref
                env[entry.name] = self.SECRETS[(ref.name, ref.key)]
            elif entry.value_from.field_ref is not None:
                env[entry.name] = annotations[k8s.COMPLETION_INDEX_ANNOTATION]
        completed = subprocess.run(
            program_command("k8s_pod"),
            check=False,
            cwd=PROJECT_ROOT,
            env=program_env(env),
            capture_output=True,
            timeout=120,
        )
        assert completed.returncode == 0, completed.stderr.decode()
        self.logs[name] = [
            f"2026-01-01T00:00:{index:02d}.000001Z ".encode() + line + b"\n"
            for index, line in enumerate(completed.stderr.splitlines())
        ]

    # CoreV1Api
    def create_namespaced_pod(self, namespace, body):
        self.created.append(body)
        self._run_pod(body.metadata.name, body.spec.containers[0], {})

    def read_namespaced_pod_log(self, name, namespace, **kwargs):
        return iter(self.logs[name])

    def delete_namespaced_pod(self, name, namespace, **kwargs):
        self.deleted.append(name)

    def create_namespaced_service(self, namespace, body):
        self.created.append(api_model(body, "V1Service"))

    def delete_namespaced_service(self, name, namespace, **kwargs):
        self.deleted.append(f"service/{name}")

    def list_namespaced_pod(self, namespace, label_selector):
        job = next(obj for obj in self.created if isinstance(obj, kubernetes.client.V1Job))
        assert label_selector == f"job-name={job.metadata.name}"
        pods = [
            SimpleNamespace(
                metadata=SimpleNamespace(
                    name=f"{job.metadata.name}-{index}-x", annotations={k8s.COMPLETION_INDEX_ANNOTATION: str(index)}
                )
            )
            for index in range(job.spec.completions)
        ]
        return SimpleNamespace(items=list(reversed(pods)))

    # BatchV1Api
    def create_namespaced_job(self, namespace, body):
        job = api_model(body, "V1Job")
        self.created.append(job)
        self._run_pod(
            f"{job.metadata.name}-0-x", job.spec.template.spec.containers[0], {k8s.COMPLETION_INDEX_ANNOTATION: "0"}
        )

    def read_namespaced_job_status(self, name, namespace):
        return SimpleNamespace(
            status=SimpleNamespace(
                succeeded=2, failed=None, active=None, conditions=[SimpleNamespace(type="Complete", status="True")]
            )
        )

    def delete_namespaced_job(self, name, namespace, propagation_policy=None):
        self.deleted.append(f"job/{name}:{propagation_policy}")

    # DagsterKubernetesClient
    def wait_for_pod(self, pod_name, namespace, wait_for_state=None, **kwargs):
        self.waits.append((str(wait_for_state), kwargs))
        if self.interrupt and "TERMINATED" in str(wait_for_state).upper():
            raise dg.DagsterExecutionInterruptedError("run terminated")


@pytest.fixture
def fake_cluster(monkeypatch):
    def install(interrupt: bool = False) -> FakeCluster:
        cluster = FakeCluster(interrupt)
        monkeypatch.setattr(
            "dagster_k8s.pipes.DagsterKubernetesClient.production_client", staticmethod(lambda *a, **k: cluster)
        )
        monkeypatch.setattr(
            "dagster_k8s.client.DagsterKubernetesClient.production_client", staticmethod(lambda *a, **k: cluster)
        )
        monkeypatch.setattr("dagster_k8s.pipes.PipesK8sClient._load_k8s_config", lambda self: None)
        monkeypatch.setattr(k8s, "_load_kube_config", lambda settings: None)
        monkeypatch.setattr(kubernetes.client, "BatchV1Api", lambda *a, **k: cluster)
        return cluster

    return install


def run_stage_asset(tmp_path: Path, launch: LaunchRecipe, compute_settings: KubernetesSettings):
    """Materialize an asset that calls `ComputeResource(backend="kubernetes").run_stage` like the training assets."""
    spec = make_spec(work_dir=str(tmp_path / "work"))

    @dg.asset
    def stage(context: dg.AssetExecutionContext, compute: ComputeResource) -> dg.MaterializeResult:
        compute.run_stage(context, spec, launch, extra_env=HOST_ENV)
        return dg.MaterializeResult()  # as the training assets do: the artifact is reported from its manifest

    compute = ComputeResource(backend="kubernetes", kubernetes=compute_settings)
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([stage], resources={"compute": compute}, instance=instance, raise_on_error=False)
    events = instance.all_logs(result.run_id)
    return result, events, spec


def messages(events) -> str:
    return "\n".join(event.message or "" for event in events)


def test_pipes_k8s_client_runs_the_pod_with_the_raised_timeout_and_deletes_it(fake_cluster, tmp_path):
    cluster = fake_cluster()
    result, events, spec = run_stage_asset(tmp_path, gpu_launch(), settings())
    assert result.success, messages(events)
    text = messages(events)
    assert f"pod: doge_base[tiny] {spec.version} rank -" in text  # Pipes messages from the pod's log
    assert "secret from the cluster matches: True" in text
    (pod,) = cluster.created
    assert isinstance(pod, kubernetes.client.V1Pod) and pod.metadata.namespace is None
    assert pod.metadata.labels["doge-dagster/asset"] == "doge_base"
    env_names = [entry.name for entry in pod.spec.containers[0].env]
    assert {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES", SPEC_ENV_VAR, "AWS_SECRET_ACCESS_KEY"} <= set(env_names)
    terminated = [kwargs for state, kwargs in cluster.waits if "TERMINATED" in state.upper()]
    assert terminated and terminated[0]["wait_timeout"] == 7 * 24 * 3600 > 24 * 3600
    assert cluster.deleted == [pod.metadata.name]
    leaked = everything(pod) + "".join(str(event) for event in events)
    assert SECRET_KEY not in leaked and ACCESS_KEY not in leaked
    assert (tmp_path / "work" / "spec.json").is_file()  # the host keeps its copy for reference


def test_a_terminated_run_deletes_its_pod(fake_cluster, tmp_path):
    cluster = fake_cluster(interrupt=True)
    result, _, _ = run_stage_asset(tmp_path, gpu_launch(), settings(pod_wait_timeout_s=3600.0))
    assert not result.success
    (pod,) = cluster.created
    assert cluster.deleted == [pod.metadata.name]


def test_a_launch_error_fails_the_step_with_the_fix_and_creates_nothing(fake_cluster, tmp_path):
    cluster = fake_cluster()
    result, events, _ = run_stage_asset(tmp_path, gpu_launch(), settings(secret_env={}))
    assert not result.success
    assert "compute.kubernetes.secret_env" in messages(events) + "".join(str(event) for event in events)
    assert cluster.created == [] and cluster.deleted == []


def test_multi_node_runs_an_indexed_job_and_cleans_it_up(fake_cluster, tmp_path):
    cluster = fake_cluster()
    result, events, spec = run_stage_asset(tmp_path, gpu_launch(nodes=2), settings())
    assert result.success, messages(events)
    assert f"pod: doge_base[tiny] {spec.version} rank 0" in messages(events)
    service, job = cluster.created
    assert isinstance(service, kubernetes.client.V1Service) and isinstance(job, kubernetes.client.V1Job)
    assert job.spec.completions == 2
    assert cluster.deleted == [f"job/{job.metadata.name}:Foreground", f"service/{service.metadata.name}"]
    ready = [kwargs for state, kwargs in cluster.waits if "READY" in state.upper()]
    assert ready[0]["pod_launch_timeout"] == ready[0]["wait_timeout"] == 7 * 24 * 3600


def test_the_pipes_client_settings():
    client = k8s.pipes_client(settings(poll_interval_s=2.5, kubeconfig_file="/etc/kube/config", kube_context="gpu"))
    assert (client.poll_interval, client.kubeconfig_file, client.kube_context) == (2.5, "/etc/kube/config", "gpu")
    assert KubernetesSettings().pod_wait_timeout_s > 24 * 3600  # above PipesK8sClient's 24 h default


def test_evaluation_launches_run_their_own_entrypoint():
    spec = LaunchSpec(
        **{
            **json.loads(make_spec().to_json()),
            "name": "base",
            "asset": "base_eval",
            "module": "doge_dagster.evaluation",
        }
    )
    body = k8s.pod_spec(settings(), spec, LaunchRecipe(gpus_per_node=1, accelerate_config="single_gpu"), HOST_ENV)
    pod = api_model(pod_manifest(body), "V1Pod")
    assert pod.spec.containers[0].command[-5:] == [
        "-m",
        "doge_dagster.evaluation",
        "base",
        "--spec",
        "env:DOGE_SPEC_JSON",
    ]
    assert k8s.labels(spec)["doge-dagster/asset"] == "base_eval"


# -- choosing the backend from the environment (doge_dagster.definitions.compute_from_env) --------------------------
def test_the_environment_alone_selects_and_configures_each_backend(monkeypatch):
    from doge_dagster.definitions import compute_from_env

    for name in [key for key in os.environ if key.startswith(("DOGE_K8S_", "DOGE_SLURM_", "DOGE_COMPUTE_"))]:
        monkeypatch.delenv(name)
    assert compute_from_env().backend == "local"

    monkeypatch.setenv("DOGE_COMPUTE_BACKEND", "slurm")
    monkeypatch.setenv("DOGE_SLURM_SHARED_DIR", "/shared/doge")
    monkeypatch.setenv("DOGE_SLURM_PARTITION", "gpu")
    slurm = compute_from_env()
    assert slurm.backend == "slurm" and (slurm.slurm.shared_dir, slurm.slurm.partition) == ("/shared/doge", "gpu")

    monkeypatch.setenv("DOGE_COMPUTE_BACKEND", "kubernetes")
    monkeypatch.setenv("DOGE_K8S_NAMESPACE", "training")
    monkeypatch.setenv("DOGE_K8S_IMAGE", "registry.example.com/doge-dagster:0.1.0")
    bare = compute_from_env()
    assert bare.backend == "kubernetes" and bare.kubernetes.namespace == "training"
    with pytest.raises(LaunchError, match="DOGE_K8S_ENV_FROM_SECRETS=doge-s3"):
        k8s.env_entries(bare.kubernetes, HOST_ENV, "pretrain")  # S3 keys, and no way to pass them by reference

    monkeypatch.setenv("DOGE_K8S_ENV_FROM_SECRETS", "doge-s3, doge-hub")
    configured = compute_from_env()
    assert configured.kubernetes.env_from_secrets == ["doge-s3", "doge-hub"]
    entries = k8s.env_entries(configured.kubernetes, HOST_ENV, "pretrain")
    assert not any(ACCESS_KEY in json.dumps(entry) or SECRET_KEY in json.dumps(entry) for entry in entries)
    assert {"name": "NCCL_DEBUG", "value": "WARN"} in entries
