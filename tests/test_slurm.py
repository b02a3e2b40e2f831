"""The Slurm backend: sbatch script rendering (fast), and real jobs on a single-node cluster (slow).

The end-to-end tests materialize through Dagster in a subprocess, because `DOGE_RECIPES_DIR` (a copy
of the tiny recipe with few steps) is read when `doge_dagster` is imported.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
import yaml
from helpers import program_command, program_env
from slurm_cluster import slurm_cluster  # noqa: F401  (the session fixture)

from doge_dagster.recipes import PROJECT_ROOT, LaunchRecipe
from resources.slurm import (
    LogTail,
    SlurmError,
    SlurmJob,
    SlurmSettings,
    jobcomp_status,
    render_script,
    submit,
    wait_for_job,
)

INJECTION = "x; touch {marker}; $(touch {marker}) `touch {marker}` '\"; touch {marker}"


def tiny_recipes(folder: Path, training: dict | None = None, launch: dict | None = None) -> Path:
    """A recipes folder holding only `tiny.yaml`, with its pretrain stage shortened and edited."""
    raw = yaml.safe_load((PROJECT_ROOT / "recipes" / "tiny.yaml").read_text())
    pretrain = raw["stages"]["pretrain"]
    short = {"max_steps": 8, "warmup_steps": 1, "logging_steps": 2, "save_steps": 4, "per_device_train_batch_size": 4}
    pretrain["training"].update(
        short, lr_scheduler_kwargs={"num_decay_steps": 2, "min_lr_ratio": 0.0}, **(training or {})
    )
    pretrain["launch"].update(launch or {})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder


def start_driver(recipes: Path, store: Path, shared: Path, out: Path, selection: list[str], backend="slurm", env=None):
    """Start `programs/slurm_materialize.py`, which writes its report to `out` (`env`: the compute resource's extra
    environment)."""
    args = {"store": str(store), "shared_dir": str(shared), "out": str(out), "selection": selection}
    args.update(backend=backend, env=env or {})
    env = {**os.environ, "DOGE_RECIPES_DIR": str(recipes)}
    return subprocess.Popen(
        program_command("slurm_materialize", json.dumps(args)), cwd=PROJECT_ROOT, env=program_env(env)
    )


def run_driver(*args, timeout: float = 600, **kwargs) -> dict:
    """Materialize and return the driver's JSON report."""
    out = args[3]
    process = start_driver(*args, **kwargs)
    assert process.wait(timeout=timeout) == 0, "driver crashed"
    return json.loads(Path(out).read_text())


def echo_settings(**overrides) -> SlurmSettings:
    """Settings whose "python" is `echo`, so running a rendered script prints the launch argv."""
    return SlurmSettings(python="echo", chdir="/srv/project", **overrides)


def run_script(script: str, folder: Path, env: dict[str, str] | None = None) -> str:
    """Run a rendered script with bash (the #SBATCH lines are comments) and return its stdout."""
    path = folder / "job.sbatch"
    path.write_text(script)
    result = subprocess.run(
        ["bash", str(path)], check=False, capture_output=True, text=True, cwd=folder, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def sbatch_options(script: str) -> list[list[str]]:
    """The #SBATCH lines split as sbatch splits them (shell words)."""
    return [shlex.split(line.removeprefix("#SBATCH")) for line in script.splitlines() if line.startswith("#SBATCH")]


def test_script_quotes_every_value_and_injection_stays_inert(tmp_path):
    marker = tmp_path / "pwned"
    evil = INJECTION.format(marker=marker)
    launch = LaunchRecipe(partition=evil, account=evil, sbatch_extra=[shlex.join([f"--comment={evil}"])])
    with pytest.raises(ValueError, match="is not a size"):  # a recipe cannot carry it in `memory` any more...
        LaunchRecipe(memory=evil)
    launch = launch.model_copy(update={"memory": evil})  # ...and the script would still quote it
    script = render_script(
        launch,
        f"/shared/{evil}/spec.json",
        "pretrain",
        "doge-pretrain-tiny",
        "/shared/job.log",
        {"EVIL": evil},
        echo_settings(),
    )
    options = sbatch_options(script)
    assert ["--partition=" + evil] in options and ["--account=" + evil] in options and ["--comment=" + evil] in options
    assert (
        ["--job-name=doge-pretrain-tiny"] in options
        and ["--ntasks-per-node=1"] in options
        and ["--chdir=/srv/project"] in options
    )
    assert not any(option[0].startswith("--gres") for option in options)
    output = run_script(script + 'printf "%s" "$EVIL" > env.txt\n', tmp_path)
    assert not marker.exists()
    assert (tmp_path / "env.txt").read_text() == evil
    assert output == " ".join(["-m", "accelerate.commands.launch", "--config_file", str(PROJECT_ROOT / "recipes/accelerate/cpu.yaml"),
                              "--num_processes", "1", "--num_machines", "1", "-m", "doge_dagster.training", "pretrain",
                              "--spec", f"/shared/{evil}/spec.json"]) + "\n"  # fmt: skip
    with pytest.raises(dg.Failure, match="single line"):
        render_script(
            LaunchRecipe(partition="gpu\ntouch /tmp/x"), "/s.json", "pretrain", "j", "/l", {}, echo_settings()
        )
    with pytest.raises(dg.Failure, match="sbatch_extra"):
        render_script(
            LaunchRecipe(sbatch_extra=["--comment='open"]), "/s.json", "pretrain", "j", "/l", {}, echo_settings()
        )
    with pytest.raises(dg.Failure, match="shell identifier"):
        render_script(LaunchRecipe(), "/s.json", "pretrain", "j", "/l", {"A=1; touch x": "v"}, echo_settings())


def test_script_gres_resources_setup_and_extra_lines(tmp_path):
    launch = LaunchRecipe(
        gpus_per_node=4, cpus_per_task=16, memory="200G", time_limit="7-00:00:00", partition="gpu", account="lm",
        sbatch_extra=["--qos=high", "#SBATCH --constraint='a100&nvlink'"], setup=["module load cuda", "echo set-up"],
        env={"NCCL_DEBUG": "INFO"},
    )  # fmt: skip
    settings = echo_settings(sbatch_extra=["--exclusive"], partition="ignored-when-recipe-names-one")
    script = render_script(
        launch, "/s.json", "sft", "doge-sft-20M", "/shared/job.log", {"NCCL_DEBUG": "INFO"}, settings
    )
    options = sbatch_options(script)
    for expected in ("--gres=gpu:4", "--cpus-per-task=16", "--mem=200G", "--time=7-00:00:00", "--partition=gpu",
                     "--account=lm", "--output=/shared/job.log", "--nodes=1"):  # fmt: skip
        assert [expected] in options
    assert options[-3:] == [["--exclusive"], ["--qos=high"], ["--constraint=a100&nvlink"]]
    body = script.split("\n")
    assert body.index("module load cuda") < body.index("export NCCL_DEBUG=INFO") < len(body) - 2
    assert "--num_processes 4" in body[-2]  # gpus_per_node x nodes
    fallback = sbatch_options(
        render_script(LaunchRecipe(), "/s.json", "sft", "j", "/l", {}, echo_settings(partition="cpu", account="me"))
    )
    assert ["--partition=cpu"] in fallback and ["--account=me"] in fallback


def test_multi_node_script_runs_one_launch_per_node_with_its_rank(tmp_path):
    launch = LaunchRecipe(accelerate_config="ddp", nodes=2, gpus_per_node=8)
    script = render_script(launch, "/s.json", "pretrain", "j", "/l", {}, echo_settings(main_process_port=29999))
    assert "srun --nodes=2 --ntasks-per-node=1" in script
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # Fake scontrol and srun: two hosts; srun runs its command once per node with that node's SLURM_NODEID.
    (bin_dir / "scontrol").write_text(
        '#!/bin/bash\n[ "$*" = "show hostnames node[01-02]" ] && printf "node01\\nnode02\\n"\n'
    )
    (bin_dir / "srun").write_text('#!/bin/bash\nfor n in 0 1; do SLURM_NODEID=$n "${@:4}"; done\n')
    for tool in ("scontrol", "srun"):
        (bin_dir / tool).chmod(0o755)
    output = run_script(
        script,
        tmp_path,
        {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node[01-02]", "SLURM_NODEID": "7"},
    )
    lines = output.strip().splitlines()
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        words = line.split()
        assert words[words.index("--machine_rank") + 1] == str(rank)
        assert words[words.index("--main_process_ip") + 1] == "node01"
        assert words[words.index("--main_process_port") + 1] == "29999"
        assert words[words.index("--num_processes") + 1] == "16" and words[words.index("--num_machines") + 1] == "2"


def test_log_tail_returns_complete_lines_only(tmp_path):
    path = tmp_path / "job.log"
    tail = LogTail(path)
    assert tail.read() == []
    path.write_text("step 1\nstep 2\npart")
    assert tail.read() == ["step 1", "step 2"]
    with open(path, "a") as stream:
        stream.write("ial\nlast")
    assert tail.read() == ["partial"]
    assert tail.read(final=True) == ["last"]


@pytest.mark.slow
def test_sbatch_rejects_injected_partition_without_running_it(slurm_cluster, tmp_path):  # noqa: F811
    marker = tmp_path / "pwned"
    script = render_script(LaunchRecipe(partition=INJECTION.format(marker=marker)), "/s.json", "pretrain", "j",
                           str(tmp_path / "job.log"), {}, echo_settings())  # fmt: skip
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    with pytest.raises(SlurmError, match="invalid partition"):
        submit(path)
    assert not marker.exists() and not slurm_cluster.queue()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """An artifact store holding the tiny tokenizer and pretrain mixture (built locally, no Slurm)."""
    root = tmp_path_factory.mktemp("slurm-e2e")
    report = run_driver(tiny_recipes(root / "recipes"), root / "store", root / "shared", root / "data.json",
                        ["tokenizer", "pretrain_mixture"], backend="local")  # fmt: skip
    assert report["success"], report["failures"]
    return root / "store"


@pytest.mark.slow
def test_tiny_pretrain_runs_through_sbatch_with_pipes(slurm_cluster, tiny_data, tmp_path):  # noqa: F811
    secret = "s3cr3t-value"  # the compute env (credentials) reaches the job, never the script file
    recipes = tiny_recipes(tmp_path / "recipes", launch={"setup": ['echo "secret-length ${#DOGE_TEST_SECRET}"']})
    shared = slurm_cluster.shared_dir
    report = run_driver(
        recipes, tiny_data, shared, tmp_path / "out.json", ["doge_base"], env={"DOGE_TEST_SECRET": secret}
    )
    assert report["success"], report["failures"]
    logs = "\n".join(report["logs"])
    assert f"secret-length {len(secret)}" in logs
    assert all(secret not in path.read_text() for path in shared.rglob("*") if path.is_file())
    assert "submitted Slurm job" in logs and "COMPLETED" in logs
    assert any(message.startswith("step ") for message in report["logs"]), logs  # Pipes messages from rank 0
    assert "[slurm " in logs  # the job's own log file, streamed
    assert list(tiny_data.glob("doge_base/tiny/*/manifest.json"))
    assert not slurm_cluster.queue()


@pytest.mark.slow
def test_interrupting_the_step_cancels_the_job(slurm_cluster, tiny_data, tmp_path):  # noqa: F811
    recipes = tiny_recipes(tmp_path / "recipes", training={"max_steps": 100000, "save_steps": 100000})
    process = start_driver(recipes, tiny_data, slurm_cluster.shared_dir, tmp_path / "out.json", ["doge_base"])
    try:
        deadline = time.monotonic() + 120
        while not any(line.endswith("RUNNING") for line in slurm_cluster.queue()):
            assert process.poll() is None and time.monotonic() < deadline, "the job never started running"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 10
        while slurm_cluster.queue():
            assert time.monotonic() < deadline, f"job still queued after the interrupt: {slurm_cluster.queue()}"
            time.sleep(0.2)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    report = json.loads((tmp_path / "out.json").read_text())
    assert not report["success"] and "DagsterExecutionInterruptedError" in report["failures"][0]
    assert any(message.startswith("cancelled Slurm job") for message in report["logs"])


@pytest.mark.slow
def test_a_job_past_its_time_limit_fails_the_step_as_timeout(slurm_cluster, tiny_data, tmp_path):  # noqa: F811
    recipes = tiny_recipes(
        tmp_path / "recipes", training={"max_steps": 100000, "save_steps": 10}, launch={"time_limit": "00:01:00"}
    )
    report = run_driver(recipes, tiny_data, slurm_cluster.shared_dir, tmp_path / "out.json", ["doge_base"], timeout=400)
    assert not report["success"]
    failure = "\n".join(report["failures"])
    assert "ended TIMEOUT" in failure and "last 40 lines of" in failure, failure
    assert "DUE TO TIME LIMIT" in failure, "the log tail should show Slurm's own time-limit message"
    assert not slurm_cluster.queue()
    # The killed job kept its checkpoints: a re-materialization (with a longer limit) resumes from them.
    checkpoints = list(tiny_data.glob("doge_base/tiny/.work/*/checkpoints/checkpoint-*/trainer_state.json"))
    assert checkpoints, "no complete checkpoint survived the time limit"


class FakeLog:
    """Collects what the backend logs into a Dagster run."""

    def __init__(self):
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)

    warning = info


@pytest.mark.slow
def test_job_state_from_scontrol_then_jobcomp_once_forgotten(slurm_cluster, tmp_path):  # noqa: F811
    log = tmp_path / "job.log"
    script = tmp_path / "job.sbatch"
    script.write_text(f"#!/bin/bash\n#SBATCH --output={log}\necho first\necho second\nexit 2\n")
    job_id = submit(script)
    context = SimpleNamespace(log=FakeLog())
    job = wait_for_job(context, job_id, log, poll_interval_s=0.2)
    assert (job.state, job.exit_code) == ("FAILED", "2:0")
    assert f"[slurm {job_id}] first" in context.log.lines and f"[slurm {job_id}] second" in context.log.lines
    assert jobcomp_status(job_id) == SlurmJob(job_id, "FAILED", "2:0", "jobcomp record")
    # A job scontrol no longer knows and jobcomp never recorded: failed, with the reason said.
    gone = wait_for_job(SimpleNamespace(log=FakeLog()), "987654", tmp_path / "none.log", poll_interval_s=0.2)
    assert gone.state == "UNKNOWN" and "MinJobAge" in gone.reason


@pytest.mark.slow
def test_failing_job_reports_state_exit_code_and_log_tail(slurm_cluster, tiny_data, tmp_path):  # noqa: F811
    recipes = tiny_recipes(tmp_path / "recipes", launch={"setup": ["echo boom-marker >&2; exit 3"]})
    report = run_driver(recipes, tiny_data, slurm_cluster.shared_dir, tmp_path / "out.json", ["doge_base"])
    assert not report["success"]
    failure = "\n".join(report["failures"])
    assert "ended FAILED" in failure and "exit code 3:0" in failure and "boom-marker" in failure, failure
    assert not slurm_cluster.queue()
