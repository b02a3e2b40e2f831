"""The Slurm backend: one sbatch script per stage, Dagster Pipes through files on the shared filesystem.

Our own small client (dagster-slurm is alpha and SSH-bound): render the script from the stage's `LaunchRecipe`,
submit it with `sbatch --parsable --export=ALL`, poll `scontrol show job -o`, stream the job's log into the run,
`scancel` the job when the step is interrupted. Values entering the script are quoted with `shlex.quote`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

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


# Every other state ends the job; only COMPLETED counts as success (FAILED, CANCELLED, TIMEOUT, NODE_FAIL, ...).
RUNNING = set("PENDING CONFIGURING RUNNING COMPLETING SUSPENDED REQUEUED REQUEUE_HOLD RESIZING STAGE_OUT".split())  # noqa: SIM905
NODE_RANK, MASTER = "__DOGE_SLURM_NODEID__", "__DOGE_SLURM_MASTER__"  # replaced by shell variables in srun
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_POLL_ERRORS = 30


@dataclass(frozen=True)
class SlurmJob:
    """What Slurm says about a job: state, `exit:signal` code and reason."""

    job_id: str
    state: str
    exit_code: str = "?"
    reason: str = ""

    def describe(self) -> str:
        """`STATE (reason)`."""
        return self.state + (f" ({self.reason})" if self.reason not in ("", "None") else "")


class SlurmError(RuntimeError):
    """A Slurm command failed (controller unreachable, submission rejected)."""


def _one_line(value: object, what: str) -> str:
    text = str(value)
    if any(char in text for char in "\n\r\0"):
        raise dg.Failure(description=f"Slurm: {what} must be a single line, got {text!r}")
    return text


def render_script(
    launch: LaunchRecipe, spec_path: str, stage: str, job_name: str, log_path: str,
    env: dict[str, str], settings, module: str = "doge_dagster.training",
) -> str:  # fmt: skip
    """The sbatch script of one stage: `#SBATCH` directives, `setup` lines, `env` exports, the launch.

    Multi-node launches run one `accelerate launch` per node through `srun`, each with its node's
    `$SLURM_NODEID` as machine rank and the job's first host as main process address.
    """
    quote = shlex.quote
    directives = {
        "job-name": job_name, "nodes": launch.nodes, "ntasks-per-node": 1,
        "partition": launch.partition or settings.partition, "account": launch.account or settings.account,
        "gres": f"gpu:{launch.gpus_per_node}" if launch.gpus_per_node > 0 else None,
        "cpus-per-task": launch.cpus_per_task, "mem": launch.memory, "time": launch.time_limit,
        "output": log_path, "chdir": settings.chdir or str(PROJECT_ROOT),
    }  # fmt: skip
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH --{key}={quote(_one_line(val, key))}" for key, val in directives.items() if val is not None]
    for extra in [*settings.sbatch_extra, *launch.sbatch_extra]:
        try:
            tokens = shlex.split(_one_line(extra, "sbatch_extra").strip().removeprefix("#SBATCH"))
        except ValueError as error:
            raise dg.Failure(description=f"Slurm: sbatch_extra {extra!r} is not valid shell words: {error}") from None
        lines.append("#SBATCH " + shlex.join(tokens))
    lines += ["set -eo pipefail", *launch.setup]
    for name, value in env.items():
        if not ENV_NAME.fullmatch(name):
            raise dg.Failure(description=f"Slurm: environment variable name {name!r} is not a shell identifier")
        lines.append(f"export {name}={quote(_one_line(value, f'env {name}'))}")
    if launch.nodes == 1:
        lines.append(shlex.join(accelerate_command(stage, spec_path, launch, python=settings.python, module=module)))
    else:
        argv = accelerate_command(
            stage, spec_path, launch, machine_rank=NODE_RANK, main_process_ip=MASTER,
            main_process_port=settings.main_process_port, python=settings.python, module=module,
        )  # fmt: skip
        inner = " ".join({NODE_RANK: '"$SLURM_NODEID"', MASTER: '"$MASTER"'}.get(arg, quote(arg)) for arg in argv)
        # `sed -n 1p`, not `head -n1`: head exits early and, under pipefail, scontrol's SIGPIPE fails the job.
        lines += [
            'MASTER="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)"',
            "export MASTER",
            f"srun --nodes={launch.nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c {quote(inner)}",
        ]
    return "\n".join(lines) + "\n"


def _slurm(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def submit(script_path: Path, env: dict[str, str] | None = None) -> str:
    """`sbatch --parsable --export=ALL SCRIPT` with `env` added to this process's environment; the job id."""
    result = _slurm("sbatch", "--parsable", "--export=ALL", str(script_path), env=env)
    if result.returncode:
        raise SlurmError(f"sbatch {script_path} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip().split(";")[0]


def _fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(?:^|\s)(JobState|ExitCode|Reason)=(\S*)", line)[::-1])


def job_status(job_id: str) -> SlurmJob | None:
    """The job's state from `scontrol show job -o`; None once Slurm has forgotten it (MinJobAge)."""
    result = _slurm("scontrol", "show", "job", "-o", job_id)
    if result.returncode:
        if "Invalid job id" in result.stderr:
            return None
        raise SlurmError(f"scontrol show job {job_id} failed ({result.returncode}): {result.stderr.strip()}")
    fields = _fields(result.stdout)
    return SlurmJob(job_id, fields.get("JobState", "UNKNOWN"), fields.get("ExitCode", "?"), fields.get("Reason", ""))


def jobcomp_status(job_id: str) -> SlurmJob | None:
    """The job's final record in the `jobcomp/filetxt` file, when the cluster keeps one."""
    config = dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", _slurm("scontrol", "show", "config").stdout, re.MULTILINE))
    if config.get("JobCompType") != "jobcomp/filetxt" or not config.get("JobCompLoc"):
        return None
    path = Path(config["JobCompLoc"])
    text = path.read_text(errors="replace") if path.is_file() else ""
    for line in reversed(text.splitlines()):  # the last record: job ids restart when a cluster's state is wiped
        if line.startswith(f"JobId={job_id} "):
            fields = _fields(line)
            return SlurmJob(job_id, fields.get("JobState", "UNKNOWN"), fields.get("ExitCode", "?"), "jobcomp record")
    return None


def cancel(job_id: str) -> None:
    """`scancel JOB` (errors are ignored: the job may be gone already)."""
    _slurm("scancel", job_id)


class LogTail:
    """New complete lines of a growing log file, read from the last offset on each call."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = path, 0, b""

    def read(self, final: bool = False) -> list[str]:
        """Lines appended since the last call (with `final`, also an unterminated last line)."""
        try:
            with open(self.path, "rb") as stream:
                stream.seek(self.offset)
                data = stream.read()
        except OSError:
            return []
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        if final and self.partial:
            lines, self.partial = [*lines, self.partial], b""
        return [line.decode(errors="replace").rstrip("\r") for line in lines]


def log_tail(path: Path, count: int = 40) -> str:
    """The last `count` lines of the job's log."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-count:])
    except OSError:
        return f"(no log at {path})"


def wait_for_job(context, job_id: str, log_path: Path, poll_interval_s: float) -> SlurmJob:
    """Poll until the job ends, streaming new log lines into the run log; the final `SlurmJob`."""
    tail, last, errors = LogTail(log_path), None, 0
    while True:
        try:
            job, errors = job_status(job_id), 0
        except (SlurmError, subprocess.TimeoutExpired) as error:  # a busy or restarting controller: retry
            errors += 1
            if errors >= MAX_POLL_ERRORS:
                raise
            context.log.warning(f"Slurm job {job_id}: polling failed ({errors}/{MAX_POLL_ERRORS}): {error}")
            job = last or SlurmJob(job_id, "PENDING")
        if job is None:
            gone = SlurmJob(job_id, "UNKNOWN", "?", "job left scontrol (MinJobAge), no jobcomp/filetxt record names it")
            job = jobcomp_status(job_id) or gone
        done = job.state not in RUNNING
        for line in tail.read(final=done):
            context.log.info(f"[slurm {job_id}] {line}")
        if last is None or (job.state, job.reason) != (last.state, last.reason):
            context.log.info(f"Slurm job {job_id}: {job.describe()}")
        last = job
        if done:
            return job
        time.sleep(poll_interval_s)


def run_on_slurm(
    context, settings, spec: LaunchSpec, spec_path: Path, launch: LaunchRecipe, env: dict[str, str]
) -> dg.PipesClientCompletedInvocation:
    """Run one stage as a Slurm batch job through Dagster Pipes and wait for it.

    Scripts, the job log and the Pipes files live in a fresh folder under `settings.shared_dir`, which
    the Dagster host and the nodes must share. `env` (it may hold credentials) reaches the job through
    sbatch's environment only; the script exports the recipe's `launch.env` and the Pipes variables.
    COMPLETED returns the Pipes invocation; any other end state raises `dg.Failure` with the job id,
    state, exit code and log tail; an interrupted or failing wait cancels the job before re-raising.
    """
    job_name = re.sub(r"[^A-Za-z0-9._-]", "_", f"doge-{spec.name}-{spec.partition}")
    job_dir = Path(settings.shared_dir) / f"{job_name}-{spec.version}-{uuid.uuid4().hex[:8]}"
    job_dir.mkdir(parents=True, mode=0o700)
    log_path, script_path = job_dir / "job.log", job_dir / "job.sbatch"
    with dg.open_pipes_session(
        context=context,
        context_injector=dg.PipesFileContextInjector(str(job_dir / "pipes-context.json")),
        message_reader=dg.PipesFileMessageReader(str(job_dir / "pipes-messages.jsonl")),
    ) as session:
        exports = {**launch.env, **session.get_bootstrap_env_vars()}
        script_path.write_text(
            render_script(launch, str(spec_path), spec.name, job_name, str(log_path), exports, settings, spec.module)
        )
        try:
            job_id = submit(script_path, env)
        except SlurmError as error:
            raise dg.Failure(description=str(error), metadata={"script": str(script_path)}) from None
        context.log.info(f"submitted Slurm job {job_id} ({job_name}): script {script_path}, log {log_path}")
        try:
            job = wait_for_job(context, job_id, log_path, settings.poll_interval_s)
        except BaseException:  # interrupted step (DagsterExecutionInterruptedError, KeyboardInterrupt), lost controller
            cancel(job_id)
            context.log.warning(f"cancelled Slurm job {job_id}")
            raise
        if job.state != "COMPLETED":
            raise dg.Failure(
                description=(
                    f"Slurm job {job_id} ({job_name}) ended {job.describe()}, exit code {job.exit_code}; "
                    f"last 40 lines of {log_path}:\n{log_tail(log_path)}"
                ),
                metadata={"job_id": job_id, "state": job.state, "exit_code": job.exit_code, "log": str(log_path)},
            )
    return dg.PipesClientCompletedInvocation(session)
