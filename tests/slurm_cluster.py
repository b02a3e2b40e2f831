"""A real single-node Slurm cluster (Debian slurmctld + slurmd + munge) for the Slurm backend tests.

Started once per test session as root, with every state, spool, pid and log file in one fresh
temporary folder. Clients find it through `SLURM_CONF`, which the fixture
sets in `os.environ` for the session, so the backend's `sbatch` / `scontrol` / `scancel` calls inherit it.
Without the Debian packages the tests skip with the install command.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGES = "slurmctld slurmd slurm-client munge"
INSTALL = f"apt-get update && apt-get install -y {PACKAGES}"


@dataclass
class SlurmCluster:
    """A running cluster: its state folder, config, client environment and a shared folder for jobs."""

    root: Path
    conf: Path
    shared_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *command: str, check: bool = True) -> str:
        """Run a Slurm client command against this cluster and return its stdout."""
        result = subprocess.run(
            command, check=False, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=30
        )
        if check and result.returncode:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def queue(self) -> list[str]:
        """`squeue -h` lines: jobs still pending or running."""
        return [line for line in self.run("squeue", "-h", "-o", "%i %T").splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _write_config(root: Path, cpus: int) -> Path:
    conf = root / "slurm.conf"
    conf.write_text(
        f"""ClusterName=doge-test
SlurmctldHost=localhost
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket.2
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
MinJobAge=3600
KillWait=5
ReturnToService=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
    )
    return conf


def _stop(pidfiles: list[Path], grace_s: float = 3.0) -> None:
    """TERM each daemon by pid file, KILL the ones still alive after `grace_s` (slurmd can ignore TERM)."""
    pids = []
    for pidfile in pidfiles:
        try:
            pids.append(int(pidfile.read_text().strip()))
        except (OSError, ValueError):
            continue
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.1)
        if not pids:
            return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start_cluster() -> SlurmCluster:
    """Start munged, slurmctld and slurmd in a fresh folder and wait until the node is idle."""
    if shutil.which("slurmctld") is None or shutil.which("munged") is None:
        pytest.skip(f"Slurm is not installed; install it with: {INSTALL}")
    if os.geteuid() != 0:
        pytest.skip("the test Slurm cluster runs its daemons as root")
    # Not under pytest's tmp_path: that is mode 700 and munged (user munge) must reach its socket.
    root = Path(tempfile.mkdtemp(prefix="doge-slurm-"))
    root.chmod(0o755)
    for name in ("state", "spool", "shared"):
        (root / name).mkdir()
    munge = root / "munge"
    munge.mkdir(mode=0o755)
    shutil.chown(munge, "munge", "munge")
    key = munge / "munge.key"
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
    shutil.chown(key, "munge", "munge")
    key.chmod(0o600)
    subprocess.run(
        ["runuser", "-u", "munge", "--", "munged", f"--socket={munge}/munge.socket.2", f"--key-file={key}",
         f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log", f"--seed-file={munge}/munged.seed"],
        check=True, capture_output=True,
    )  # fmt: skip
    conf = _write_config(root, os.cpu_count() or 1)
    env = {"SLURM_CONF": str(conf)}
    full_env = {**os.environ, **env}
    cluster = SlurmCluster(root=root, conf=conf, shared_dir=root / "shared", env=env)
    try:
        subprocess.run(["slurmctld", "-f", str(conf)], check=True, env=full_env, capture_output=True)
        subprocess.run(["slurmd", "-f", str(conf), "-N", "localhost"], check=True, env=full_env, capture_output=True)
        deadline = time.monotonic() + 30
        while cluster.run("sinfo", "-h", "-o", "%T", check=False).strip() != "idle":
            if time.monotonic() > deadline:
                logs = "\n".join(
                    (root / name).read_text()[-2000:]
                    for name in ("slurmctld.log", "slurmd.log")
                    if (root / name).exists()
                )
                raise RuntimeError(f"Slurm node did not become idle within 30 s:\n{logs}")
            time.sleep(0.1)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def stop_cluster(cluster: SlurmCluster) -> None:
    """Cancel every job, stop the daemons (TERM, then KILL) and remove the state folder."""
    if cluster.conf.exists() and (cluster.root / "slurmctld.pid").exists():
        cluster.run("scancel", "--full", "--user=root", check=False)
    _stop([cluster.root / name for name in ("slurmd.pid", "slurmctld.pid")])
    _stop([cluster.root / "munge" / "munged.pid"])
    shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node Slurm cluster; `SLURM_CONF` is set in `os.environ` while it runs."""
    cluster = start_cluster()
    previous = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
