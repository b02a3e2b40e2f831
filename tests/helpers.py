"""Shared test helpers: edited copies of the tiny recipe, subprocesses, and the programs of `tests/programs/`.

Recipes are read from DOGE_RECIPES_DIR when the code location is imported, so a test that needs an
edited recipe writes it as `tiny.yaml` into its own folder and materializes in a subprocess
(`dg_materialize`, which runs `programs/materialize.py` with `run_program`).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from programs import RESULT_PREFIX

TESTS_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = TESTS_DIR.parent
PROGRAMS_PACKAGE = "programs"  # tests/programs/, run with `python -m programs.<module>`
TINY_RECIPE = PROJECT_ROOT / "recipes" / "tiny.yaml"
DAGSTER_BIN = Path(sys.executable).with_name("dagster")
DATA_ASSETS = ("tokenizer", "pretrain_mixture", "sft_mixture", "dpo_mixture", "distill_mixture", "grpo_mixture")
MODEL_ASSETS = ("doge_base", "doge_instruct_sft", "doge_instruct", "doge_reason_distill", "doge_reason")
DELETE = object()


# -- recipes ----------------------------------------------------------------------------------------------------
def tiny_raw(edits: dict[str, Any] | None = None) -> dict[str, Any]:
    """The tiny recipe as parsed YAML, with `{"dotted.path": value}` edits applied (value DELETE removes a key)."""
    raw = copy.deepcopy(yaml.safe_load(TINY_RECIPE.read_text()))
    for dotted, value in (edits or {}).items():
        *parents, leaf = dotted.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = copy.deepcopy(value)
    return raw


def _short_stage(stage: str, steps: int, **extra: Any) -> dict[str, Any]:
    log = max(1, steps // 3)
    return {
        f"stages.{stage}.training.max_steps": steps,
        f"stages.{stage}.training.logging_steps": log,
        f"stages.{stage}.training.save_steps": steps,
        **{f"stages.{stage}.training.{key}": value for key, value in extra.items()},
    }


# The mechanics recipe: the tiny graph with a few steps per stage and 10 questions per report, for tests of
# plumbing (a store, a backend, a launch, lineage) rather than of learning. Its models are undertrained,
# so the reports' gates are opened (any regression tolerated, no minimum format rate); everything else,
# the checks included, runs as in the shipped recipe. The session's `tiny_chain` is the one that learns.
MECHANICS_EDITS: dict[str, Any] = {
    **_short_stage("pretrain", 40, warmup_steps=4, lr_scheduler_kwargs={"num_decay_steps": 8, "min_lr_ratio": 0.0}),
    # The chat template's tokens are new to a barely pretrained model: 9 SFT steps raised its loss.
    **_short_stage("sft", 30),
    **_short_stage("dpo", 8, learning_rate=1.0e-4),
    **_short_stage("distill", 20),
    **_short_stage("grpo", 3),
    "stages.grpo.reward_ceiling": 0.0,  # 3 GRPO steps on a barely distilled model learn nothing measurable
    **{f"evaluation.{report}.max_samples": 10 for report in ("base", "instruct", "reason")},
    **{f"evaluation.{report}.regression_tolerance": 1.0 for report in ("instruct", "reason")},
    "evaluation.reason.min_format_rate": DELETE,
}


def tiny_recipe(edits: dict[str, Any] | None = None):
    """A validated `Recipe` of the edited tiny recipe."""
    from doge_dagster.recipes import parse_recipe

    return parse_recipe(tiny_raw(edits), source="tiny (edited in a test)")


def write_tiny_recipe(folder: Path, edits: dict[str, Any] | None = None) -> Path:
    """Write the edited recipe as `folder/tiny.yaml` (for DOGE_RECIPES_DIR=folder); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(tiny_raw(edits), sort_keys=False))
    return folder


def planned_version(asset: str, edits: dict[str, Any] | None = None) -> str:
    """The version the pipeline will give `asset` for the edited tiny recipe."""
    from doge_dagster.plan import plan_versions

    return plan_versions(tiny_recipe(edits), nodes=[asset])[asset].version


# -- artifact roots ---------------------------------------------------------------------------------------------
def published_versions(root: Path, asset: str, partition: str = "tiny") -> list[str]:
    """Version folders of `asset` that hold a manifest (complete artifacts)."""
    folder = root / asset / partition
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and (p / "manifest.json").is_file())


def read_manifest(root: Path, asset: str, version: str, partition: str = "tiny") -> dict[str, Any]:
    """A published manifest as a dict."""
    return json.loads((root / asset / partition / version / "manifest.json").read_text())


def copy_artifacts(source_root: Path, target_root: Path, assets=DATA_ASSETS, partition: str = "tiny") -> None:
    """Copy the complete versions of `assets` (not staging or work folders) into another artifact root."""
    for asset in assets:
        for version in published_versions(source_root, asset, partition):
            shutil.copytree(source_root / asset / partition / version, target_root / asset / partition / version)


# -- subprocess environment -------------------------------------------------------------------------------------
def dagster_env(
    dagster_home: Path, artifact_root: Path, recipes_dir: Path | None = None, **extra: str
) -> dict[str, str]:
    """Environment of a CLI or `dg.materialize` subprocess."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DAGSTER_PIPES_", "PYTEST_"))}
    env.pop("DOGE_RECIPES_DIR", None)
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():  # telemetry off: nothing may try the network
        (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env.update(
        DAGSTER_HOME=str(dagster_home),
        DOGE_ARTIFACT_ROOT=str(artifact_root),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    if recipes_dir is not None:
        env["DOGE_RECIPES_DIR"] = str(recipes_dir)
    env.update(extra)
    return env


def cli_materialize_command(selection: str, partition: str = "tiny") -> list[str]:
    """`dagster asset materialize -m doge_dagster.definitions --select SEL --partition P`."""
    return [
        str(DAGSTER_BIN),
        "asset",
        "materialize",
        "-m",
        "doge_dagster.definitions",
        "--select",
        selection,
        "--partition",
        partition,
    ]


def cli_job_execute_command(job: str, tags: dict[str, str]) -> list[str]:
    """`dagster job execute -m doge_dagster.definitions -j JOB --tags JSON` (a run as a schedule would start it)."""
    return [str(DAGSTER_BIN), "job", "execute", "-m", "doge_dagster.definitions", "-j", job, "--tags", json.dumps(tags)]


def run_cli_materialize(
    selection: str, env: dict[str, str], timeout: float, log_path: Path | None = None
) -> subprocess.CompletedProcess:
    """Run the CLI materialization in its own process group; kill the whole group on timeout."""
    return run_command(cli_materialize_command(selection), env, timeout, log_path=log_path)


def run_command(
    args: Sequence[str], env: dict[str, str], timeout: float, log_path: Path | None = None, cwd: Path = PROJECT_ROOT
) -> subprocess.CompletedProcess:
    """Run a command in its own process group (stdout and stderr together); kill the group on timeout."""
    started = time.monotonic()
    process = subprocess.Popen(
        list(args),
        cwd=cwd,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process.pid)
        output, _ = process.communicate()
        if log_path:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(output)
        raise AssertionError(f"`{' '.join(args)}` timed out after {timeout:.0f}s:\n{tail(output)}") from None
    finally:
        kill_group(process.pid, wait_s=5)  # nothing of it may outlive the command
    if log_path:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(
            f"$ {' '.join(args)}\n# {time.monotonic() - started:.1f}s, rc {process.returncode}\n{output}"
        )
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


def tail(text: str, lines: int = 60) -> str:
    """The end of a long log, for assertion messages."""
    return "\n".join(text.splitlines()[-lines:])


# -- process groups ---------------------------------------------------------------------------------------------
def processes_in_group(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (e.g. a work folder), whatever their group."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def kill_group(pgid: int, wait_s: float = 20.0) -> None:
    """SIGKILL a process group and wait until none of its processes is alive."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait_s
    while processes_in_group(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll `condition` until it returns a truthy value (returned) or fail after `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# -- programs in a subprocess ----------------------------------------------------------------------------------
@dataclass
class ProgramRun:
    """A finished `python -m programs.<module>`: its parsed RESULT-JSON line, exit status and output."""

    result: Any
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout then stderr, for assertion messages and searches."""
        return self.stdout + self.stderr


def program_command(module: str, *args: str) -> list[str]:
    """The command line of `tests/programs/<module>.py` (run it with `program_env`)."""
    return [sys.executable, "-m", f"{PROGRAMS_PACKAGE}.{module}", *args]


def program_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with `tests/` first on PYTHONPATH, so `-m programs.X` imports from any cwd."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_program(
    module: str,
    args: Sequence[str],
    env: Mapping[str, str],
    timeout: float,
    *,
    check: bool = True,
    log_path: Path | None = None,
    cwd: Path = PROJECT_ROOT,
) -> ProgramRun:
    """Run `python -m programs.<module> ARGS` in its own process group and parse its last RESULT-JSON line.

    The group is killed on timeout (an AssertionError with the output's tail) and once the program has exited
    (nothing of it may outlive it). With `check`, a non-zero exit status fails too; with `log_path`, the
    command, its duration, stdout and stderr are written there.
    """
    command = program_command(module, *args)
    shown = " ".join(["python", *command[1:]])
    started = time.monotonic()
    process = subprocess.Popen(
        command, cwd=cwd, env=program_env(env), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def write_log(stdout: str, stderr: str) -> None:
        if log_path:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(
                f"$ {shown}\n# {time.monotonic() - started:.1f}s, rc {process.returncode}\n"
                f"{stdout}\n--- stderr ---\n{stderr}"
            )

    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process.pid)
        stdout, stderr = process.communicate()
        write_log(stdout, stderr)
        raise AssertionError(f"`{shown}` timed out after {timeout:.0f}s:\n{tail(stdout)}\n{tail(stderr)}") from None
    finally:
        kill_group(process.pid, wait_s=5)
    write_log(stdout, stderr)
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if check and process.returncode != 0:
        problem = f"exited with {process.returncode}"
    elif not lines:
        problem = f"printed no {RESULT_PREFIX.strip()} line (rc {process.returncode})"
    else:
        problem = None
    assert problem is None, f"`{shown}` {problem}:\n{tail(stdout)}\n--- stderr ---\n{tail(stderr)}"
    return ProgramRun(json.loads(lines[-1].removeprefix(RESULT_PREFIX)), process.returncode, stdout, stderr)


def dg_materialize(
    selection: str, env: dict[str, str], timeout: float = 180, partition: str = "tiny", tags: dict | None = None
) -> dict[str, Any]:
    """`dg.materialize` of `selection` in a subprocess (fresh imports, so DOGE_RECIPES_DIR applies).

    `tags` are the run's tags. Returns `success`, step `failures` (error text and `dg.Failure` description), the number of
    local-backend launches (`ProcessGroupSubprocessClient.run`), and the event messages
    (see `programs/materialize.py`).
    """
    return run_program("materialize", [selection, partition, json.dumps(tags or {})], env, timeout, check=False).result
