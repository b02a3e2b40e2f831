"""Kill points: SIGKILL at seeded random points of a publish and of an evaluation run, and the S3 endpoint gone in
the middle of a trained model's upload. After every fault the store's readers (`read_manifest`, `manifests`,
`latest`, `require`) see no artifact for the interrupted version, and the rerun publishes a valid one (manifest
present, every file's size and sha256 as listed).

The kill points are drawn from `random.Random(f"{seed}-{test}")` and printed (`-s` shows them; a failure message
repeats them). The seed is DOGE_FAULT_SEED when set (to replay a failure), else new each session.

Mixture builds and training stages are killed in `test_data_assets.py` and `test_training.py`
(`test_a_mixture_build_killed_mid_way_...`, `test_killed_pretraining_resumes_...`); they are not repeated here.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest
from dagster_dev import CHAIN_TEST_TIMEOUT_S
from helpers import (
    PROJECT_ROOT,
    cli_materialize_command,
    copy_artifacts,
    dagster_env,
    kill_group,
    planned_version,
    processes_mentioning,
    program_command,
    program_env,
    run_cli_materialize,
    tail,
    tiny_recipe,
    wait_for,
    write_tiny_recipe,
)
from moto_s3 import ACCESS_KEY, BUCKET, REGION, SECRET_KEY, store_options  # the `s3_server` fixture: conftest
from programs import RESULT_PREFIX
from programs.kill_publish import ASSET, PARTITION, file_contents, file_name
from tcp_proxy import TcpProxy

from doge_dagster.artifacts import MANIFEST_NAME, ArtifactMissingError, ArtifactStore
from doge_dagster.plan import plan_versions

SEED = int(os.environ.get("DOGE_FAULT_SEED") or time.time_ns() % 1_000_000)
FILES, FILE_SIZE = 12, 48 * 1024  # one publish: 12 files of 48 KiB


def rng_for(test: str) -> random.Random:
    """The seeded random source of one test (independent of the other tests' draws)."""
    return random.Random(f"{SEED}-{test}")


def announce(test: str, point: str) -> str:
    """Print and return the kill point, with the seed that replays it."""
    line = f"fault campaign: DOGE_FAULT_SEED={SEED} {test}: {point}"
    print(line, flush=True)
    return line


# -- what readers see ---------------------------------------------------------------------------------------------
def assert_not_readable(store: ArtifactStore, asset: str, version: str, what: str) -> None:
    """No reader of the store sees `version` of `asset` (an interrupted publish or run)."""
    store.fs.invalidate_cache()
    assert store.read_manifest(asset, PARTITION, version) is None, f"{what}: a manifest was read"
    assert version not in [manifest.version for manifest in store.manifests(asset, PARTITION)], what
    latest = store.latest(asset, PARTITION)
    assert latest is None or latest.version != version, f"{what}: latest() returned the interrupted version"
    with pytest.raises(ArtifactMissingError):
        store.require(asset, PARTITION, version)


def assert_valid_artifact(store: ArtifactStore, asset: str, version: str, expected: dict[str, bytes] | None = None):
    """The manifest is there and every file it lists has its size and sha256 (and `expected`'s bytes); returns it."""
    store.fs.invalidate_cache()
    manifest = store.read_manifest(asset, PARTITION, version)
    assert manifest is not None, f"{asset} {version}: no manifest after the rerun"
    assert version in [entry.version for entry in store.manifests(asset, PARTITION)]
    if expected is not None:
        assert sorted(entry.path for entry in manifest.files) == sorted(expected)
    folder = store.url(asset, PARTITION, version)
    for entry in manifest.files:
        data = store.fs.cat_file(f"{folder}/{entry.path}")
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry.size, entry.sha256), f"{folder}/{entry.path}"
        if expected is not None:
            assert data == expected[entry.path], f"{folder}/{entry.path}: other bytes than written"
    assert manifest.total_bytes > 0
    return manifest


# -- (a) a publish killed while files are written -------------------------------------------------------------------
class Publisher:
    """`programs.kill_publish` in its own process group, its output read line by line."""

    def __init__(self, root: str, options: dict, version: str, pause_at: str, tmp: Path):
        self.lines: list[str] = []
        self.paused = threading.Event()
        self.process = subprocess.Popen(
            program_command("kill_publish", root, json.dumps(options), version, str(FILES), str(FILE_SIZE), pause_at),
            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env=program_env({**os.environ, "TMPDIR": str(tmp)}),
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("PAUSED "):
                self.paused.set()

    def kill(self) -> None:
        """SIGKILL the whole group and reap it."""
        kill_group(self.process.pid)
        self.process.wait(timeout=30)


def publish_points(rng: random.Random, remote: bool) -> list[str]:
    """One kill point per phase of a publish, each at a random step: a file being staged, hashed, uploaded (remote),
    the moment before the manifest, and (remote) a byte offset inside the upload's requests."""
    phases = ["write", "hash", *(["upload"] if remote else [])]
    points = [f"{phase} {rng.randrange(FILES)}" for phase in phases] + ["manifest"]
    if remote:
        points.append(f"bytes {rng.randrange(FILE_SIZE // 2, FILES * FILE_SIZE)}")
    rng.shuffle(points)
    return points


def run_publish_campaign(test: str, root: str, options: dict, tmp_path: Path, s3_port: int | None = None) -> None:
    """Kill a publish at each drawn point, check readers see nothing of it, republish, check the artifact."""
    store = ArtifactStore(root, options, cache_dir=str(tmp_path / "reader-cache"))
    for number, point in enumerate(publish_points(rng_for(test), remote=s3_port is not None)):
        version = f"kill{number}"
        line = announce(test, f"{version}: SIGKILL at {point}")
        expected = {file_name(index): file_contents(version, index, FILE_SIZE) for index in range(FILES)}
        proxy = None
        if point.startswith("bytes"):  # through a proxy that holds the requests after that many bytes
            proxy = TcpProxy(s3_port, budget=int(point.split()[1]))
            publisher = Publisher(root, store_options(proxy.url), version, "none", tmp_path)
            reached = proxy.saturated
        else:
            publisher = Publisher(root, options, version, point, tmp_path)
            reached = publisher.paused
        try:
            wait_for(
                lambda reached=reached, process=publisher.process: reached.is_set() or process.poll() is not None,
                120,
                f"{line} to be reached",
            )
            if proxy is not None:
                time.sleep(0.3)  # the held request stays held
            assert publisher.process.poll() is None, f"{line}: the publish ended first:\n" + "\n".join(publisher.lines)
        finally:
            publisher.kill()
            if proxy is not None:
                proxy.stop()
        assert publisher.process.returncode == -9, line
        store.fs.invalidate_cache()
        folder = store.url(ASSET, PARTITION, version)
        arrived = len(store.fs.find(folder)) if store.fs.exists(folder) else 0
        announce(test, f"{version}: killed with {arrived} of {FILES} files in the version's folder")
        assert not any(entry.startswith(RESULT_PREFIX) for entry in publisher.lines), f"{line}: it published"
        assert_not_readable(store, ASSET, version, line)

        again = Publisher(root, options, version, "none", tmp_path)
        again.process.wait(timeout=120)
        time.sleep(0.1)  # the reader thread takes the last lines
        assert again.process.returncode == 0, f"{line}: the rerun failed:\n" + "\n".join(again.lines[-30:])
        manifest = assert_valid_artifact(store, ASSET, version, expected)
        assert manifest.upstream == {"data": "d1"} and manifest.metadata == {"files": FILES}, line


@pytest.mark.slow
def test_a_local_publish_killed_at_random_points_is_never_read_and_a_rerun_completes(tmp_path):
    """A publish to a local folder, SIGKILLed while a file is staged, hashed, or just before the manifest."""
    run_publish_campaign("local publish", str(tmp_path / "store"), {}, tmp_path)


@pytest.mark.slow
def test_an_s3_publish_killed_at_random_points_is_never_read_and_a_rerun_completes(s3_server, tmp_path, request):
    """A publish to S3 (moto), SIGKILLed while a file is staged, hashed or uploaded, before the manifest, or with
    its requests held at a random byte offset by a proxy."""
    url, _ = s3_server
    port = int(url.rsplit(":", 1)[1])
    run_publish_campaign("s3 publish", f"s3://{BUCKET}/{request.node.name}", store_options(url), tmp_path, port)


# -- (b) an evaluation killed mid-run, through the CLI ------------------------------------------------------------
EVAL_EDITS = {"evaluation.base.max_samples": 20}  # a new base_eval version on the chain's doge_base


@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S + 1200)
def test_an_evaluation_killed_mid_run_is_never_read_and_a_rerun_completes(tiny_chain, tmp_path):
    """`dagster asset materialize --select base_eval` SIGKILLed (the whole group: CLI, launcher, evaluator) twice, at
    two of its milestones drawn at random plus a random delay; then materialized again to the end."""
    test = "evaluation"
    version = planned_version("base_eval", EVAL_EDITS)
    assert version != planned_version("base_eval")
    root = tmp_path / "artifacts"
    upstream = plan_versions(tiny_recipe(EVAL_EDITS), nodes=["base_eval"])["base_eval"].upstream
    copy_artifacts(tiny_chain.artifact_root, root, (*upstream, "base_eval"))  # the chain's report: another version
    env = dagster_env(tmp_path / "home", root, write_tiny_recipe(tmp_path / "recipes", EVAL_EDITS))
    work = root / "base_eval" / PARTITION / ".work" / version
    store = ArtifactStore(str(root))
    milestones = {  # log lines of the run, in order
        "the launch": "launching: ",
        "the evaluator's start": f"base_eval[{PARTITION}] version {version}: doge_base version",
        "lighteval's start": "lighteval on ",
    }
    rng = rng_for(test)
    for number, milestone in enumerate(rng.sample(sorted(milestones), 2)):
        delay = round(rng.uniform(0.0, 2.0), 2)
        line = announce(test, f"run {number + 1}: SIGKILL {delay} s after {milestone}")
        log = tmp_path / f"killed-{number}.log"
        with open(log, "w") as out:
            process = subprocess.Popen(cli_materialize_command("base_eval"), cwd=PROJECT_ROOT, env=env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            wait_for(
                lambda log=log, text=milestones[milestone], process=process: (
                    text in log.read_text() or process.poll() is not None
                ),
                900,
                line,
            )
            time.sleep(delay)
            assert process.poll() is None, f"{line}: the run ended first:\n{tail(log.read_text())}"
            assert store.read_manifest("base_eval", PARTITION, version) is None, f"{line}: published before the kill"
        finally:
            kill_group(process.pid)
            process.wait(timeout=30)
        wait_for(lambda: processes_mentioning(str(work)) == [], 30, f"{line}: the evaluator to die with its run")
        assert_not_readable(store, "base_eval", version, line)
        assert store.latest("base_eval", PARTITION) is not None, "the chain's own report stays readable"

    completed = run_cli_materialize("base_eval", env, timeout=900, log_path=tmp_path / "rerun.log")
    assert completed.returncode == 0, f"the rerun failed:\n{tail(completed.stdout, 80)}"
    manifest = assert_valid_artifact(store, "base_eval", version)
    assert manifest.metadata["max_samples"] == 20 and manifest.metadata["scores"], manifest.metadata
    assert manifest.upstream == upstream


# -- (c) the S3 endpoint gone in the middle of a trained model's upload ---------------------------------------------
SFT_EDITS = {
    "stages.sft.training.max_steps": 4,
    "stages.sft.training.logging_steps": 2,
    "stages.sft.training.save_steps": 4,
}


def upload_artifact(store: ArtifactStore, local_root: Path, asset: str, version: str) -> None:
    """Copy a published local artifact onto the store: its files, then its manifest."""
    folder = local_root / asset / PARTITION / version
    files = [path for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST_NAME]
    target = store.url(asset, PARTITION, version)
    store.fs.put([str(path) for path in files], [f"{target}/{path.relative_to(folder).as_posix()}" for path in files])
    store.fs.put_file(str(folder / MANIFEST_NAME), f"{target}/{MANIFEST_NAME}")


def s3_materialize(env: dict[str, str], asset: str, log: Path) -> subprocess.Popen:
    """`programs.s3_chain` materializing `asset` with the store on S3, started in its own process group."""
    out = open(log, "w")  # noqa: SIM115 - closed by the caller through `finish`
    return subprocess.Popen(
        program_command("s3_chain", json.dumps([asset])), cwd=PROJECT_ROOT, env=program_env(env), stdout=out,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def finish(process: subprocess.Popen, log: Path, timeout: float) -> dict:
    """Wait for an `s3_materialize` process (its group killed on timeout) and return its RESULT."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process.pid)
        raise AssertionError(f"no result after {timeout:.0f} s:\n{tail(log.read_text())}") from None
    finally:
        kill_group(process.pid, wait_s=5)
    lines = [line for line in log.read_text().splitlines() if line.startswith(RESULT_PREFIX)]
    assert lines, f"no result (rc {process.returncode}):\n{tail(log.read_text())}"
    return json.loads(lines[-1].removeprefix(RESULT_PREFIX))


@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S + 1800)
def test_s3_endpoint_stopped_mid_upload_fails_clearly_and_a_rerun_completes(tiny_chain, s3_server, tmp_path):
    """doge_instruct_sft (4 steps) on an S3 store reached through a proxy: once the trained model's upload has begun
    (its first PUT seen, 256 KiB let through), the proxy stops, as if the endpoint died. The step fails naming the
    store and endpoint, and no manifest exists; with the endpoint back (same URL), the rerun completes."""
    url, client = s3_server
    root = f"s3://{BUCKET}/outage"
    version = planned_version("doge_instruct_sft", SFT_EDITS)
    store = ArtifactStore(root, store_options(url), cache_dir=str(tmp_path / "reader-cache"))
    upstream = plan_versions(tiny_recipe(SFT_EDITS), nodes=["doge_instruct_sft"])["doge_instruct_sft"].upstream
    for asset, upstream_version in upstream.items():
        upload_artifact(store, tiny_chain.artifact_root, asset, upstream_version)

    prefix = f"/{BUCKET}/outage/doge_instruct_sft/{PARTITION}/{version}/"
    proxy = TcpProxy(int(url.rsplit(":", 1)[1]), budget=256 * 1024, trigger=f"PUT {prefix}".encode())
    env = dagster_env(
        tmp_path / "home", tmp_path / "unused-local-root", write_tiny_recipe(tmp_path / "recipes", SFT_EDITS),
        TEST_S3_ROOT=root, TEST_S3_ENDPOINT=proxy.url, TEST_S3_REGION=REGION, TEST_SCRATCH=str(tmp_path / "scratch"),
        DOGE_TEST_S3_ACCESS_KEY_ID=ACCESS_KEY, DOGE_TEST_S3_SECRET_ACCESS_KEY=SECRET_KEY, TMPDIR=str(tmp_path / "tmp"),
    )  # fmt: skip
    for key in [key for key in env if key.startswith(("AWS_", "FSSPEC_"))]:
        env.pop(key)
    # A lease left behind by the cut-off run is taken over once stale: 20 s here instead of 90.
    env.update(DOGE_LEASE_TTL_S="20", DOGE_LEASE_REFRESH_S="5")
    (tmp_path / "tmp").mkdir()
    announce("s3 outage", f"stop the endpoint after the first 256 KiB of the upload to {prefix}")

    log = tmp_path / "cut.log"
    process = s3_materialize(env, "doge_instruct_sft", log)
    try:
        wait_for(lambda: proxy.saturated.is_set() or process.poll() is not None, 1200, "the model's upload to start")
        assert process.poll() is None, f"the run ended before its upload:\n{tail(log.read_text())}"
        partial = [key for key in (item["Key"] for item in client.list_objects_v2(
            Bucket=BUCKET, Prefix=prefix.lstrip("/").removeprefix(f"{BUCKET}/")).get("Contents", []))]  # fmt: skip
        print(f"fault campaign: {len(partial)} object(s) complete when the endpoint stopped: {partial}", flush=True)
        assert not any(key.endswith(MANIFEST_NAME) for key in partial)
    finally:
        proxy.stop()
    result = finish(process, log, 900)
    assert not result["success"], "the run succeeded without its endpoint"
    text = "\n".join(result["failures"])
    for part in (
        f"uploading doge_instruct_sft[{PARTITION}] version {version} to {root}/doge_instruct_sft/{PARTITION}/{version}",
        f"(endpoint {proxy.url})",
        "No manifest was written",
        "materialize doge_instruct_sft for partition tiny again",
    ):
        assert part in text, f"{part!r} is not in the failure:\n{text[-6000:]}"
    assert_not_readable(store, "doge_instruct_sft", version, "after the endpoint stopped")

    proxy.start()  # the endpoint is back, at the same URL
    try:
        log = tmp_path / "rerun.log"
        result = finish(s3_materialize(env, "doge_instruct_sft", log), log, 1200)
    finally:
        proxy.stop()
    assert result["success"], "\n".join(result["failures"]) or tail(log.read_text())
    manifest = assert_valid_artifact(store, "doge_instruct_sft", version)
    # The cut-off run had trained to the end: the rerun resumes from its last checkpoint instead of retraining.
    assert manifest.upstream == upstream and manifest.metadata["resumed_from_step"] == 4, manifest.metadata
    assert all(passed for passed, _ in manifest.metadata["checks"].values()), manifest.metadata["checks"]
    assert {"config.json", "model.safetensors"} <= {entry.path for entry in manifest.files}
