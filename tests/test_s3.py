"""The artifact store on a live S3 endpoint (moto server on 127.0.0.1).

- The whole tiny graph, on the mechanics recipe (a few steps per stage), materializes with the store on
  S3: every manifest is in the bucket, the evaluations read their models back from S3, the training processes reach S3 through their environment only, and the
  published models load from `store.local_path`.
- An upload cut in the middle of `publish` (the publisher SIGKILLed, or its connection dropped) leaves
  no manifest, so nothing reads it as an output, and the next publish completes it.
- The credentials appear in no Dagster event, run, compute log or metadata, in no manifest, spec file
  or work file, and in no object of the bucket.

A small TCP proxy sits between the publisher and moto for the interruption tests: it forwards a fixed
byte budget and then holds the traffic, so the cut always falls in the middle of the upload.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import (
    DATA_ASSETS,
    MECHANICS_EDITS,
    MODEL_ASSETS,
    PROJECT_ROOT,
    dagster_env,
    program_command,
    program_env,
    run_program,
    tail,
    wait_for,
    write_tiny_recipe,
)
from moto_s3 import ACCESS_KEY, BUCKET, REGION, SECRET_KEY, store_options
from tcp_proxy import TcpProxy  # forwards a byte budget of requests, then holds; stop() cuts

from doge_dagster.artifacts import MANIFEST_NAME, ArtifactMissingError, ArtifactStore

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

# Distinctive values, searched for in everything the pipeline writes (the moto server's, `moto_s3.py`).
CREDENTIALS = (ACCESS_KEY, SECRET_KEY)


def bucket_objects(client, prefix: str = "") -> dict[str, bytes]:
    """Every object under `prefix`: key -> body."""
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            objects[item["Key"]] = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
    return objects


def assert_no_credentials(label: str, data: bytes | str) -> None:
    data = data.encode() if isinstance(data, str) else data
    for secret in CREDENTIALS:
        assert secret.encode() not in data, f"credential {secret[:6]}... found in {label}"


# -- the resource hands the S3 settings to launched processes ----------------------------------------------------
def test_process_env_lets_a_bare_artifact_store_reach_s3(s3_server, tmp_path):
    """`ArtifactStore(root)` with no options, as a training process opens it, works from the env alone."""
    from resources.artifact_store import ArtifactStoreResource

    url, _ = s3_server
    resource = ArtifactStoreResource(
        root=f"s3://{BUCKET}/env",
        endpoint_url=url,
        region=REGION,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
    )
    env = resource.process_env()
    assert env == {
        "FSSPEC_S3_ENDPOINT_URL": url,
        "AWS_ENDPOINT_URL_S3": url,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    }
    assert ArtifactStoreResource(root=str(tmp_path)).process_env() == {}
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "a.txt").write_text("from the parent")
    published = resource.get_store().publish("thing", "tiny", "v1", staged)

    clean = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "FSSPEC_"))}
    read = run_program(
        "store_read",
        [f"s3://{BUCKET}/env", "thing", "tiny", "v1", "a.txt"],
        {**clean, **env, "TMPDIR": str(tmp_path)},
        120,
    )
    assert read.result == "from the parent"
    assert published.files[0].path == "a.txt"


# -- interrupted uploads ---------------------------------------------------------------------------------------
FILE_COUNT = 120
FILE_SIZE = 32 * 1024


def stage_files(folder: Path) -> dict[str, bytes]:
    """A staged artifact of many files, far larger than the proxy's budget."""
    files = {f"shard-{index:03d}.bin": bytes([index % 251]) * FILE_SIZE for index in range(FILE_COUNT)}
    files["config.json"] = b'{"model": "tiny"}'
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return files


def assert_republish_completes(
    store: ArtifactStore, client, prefix: str, staged: Path, files: dict[str, bytes]
) -> None:
    manifest = store.publish("model", "tiny", "v1", staged)
    objects = bucket_objects(client, prefix)
    assert json.loads(objects.pop(prefix + MANIFEST_NAME))["version"] == "v1"
    assert objects == {prefix + name: content for name, content in files.items()}
    assert store.read_manifest("model", "tiny", "v1") == manifest
    assert store.latest("model", "tiny") == manifest


def test_publisher_killed_mid_upload_leaves_no_manifest_and_a_rerun_completes(s3_server, tmp_path, request):
    url, client = s3_server
    root = f"s3://{BUCKET}/{request.node.name}"
    prefix = f"{request.node.name}/model/tiny/v1/"
    files = stage_files(tmp_path / "staged")
    proxy = TcpProxy(int(url.rsplit(":", 1)[1]), budget=4 * FILE_SIZE)
    options = store_options(proxy.url)
    publisher = subprocess.Popen(
        program_command("publish", root, str(tmp_path / "staged"), json.dumps(options)),
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env=program_env({**os.environ, "TMPDIR": str(tmp_path)}),
    )  # fmt: skip
    try:
        wait_for(lambda: proxy.saturated.is_set() and bucket_objects(client, prefix), 120, "the first uploaded files")
        assert publisher.poll() is None, publisher.communicate()[0]
        os.killpg(publisher.pid, signal.SIGKILL)
        publisher.wait(timeout=30)
    finally:
        if publisher.poll() is None:
            os.killpg(publisher.pid, signal.SIGKILL)
        proxy.stop()
    partial = bucket_objects(client, prefix)
    assert 0 < len(partial) < len(files), f"{len(partial)} objects: the kill did not fall mid-upload"
    assert prefix + MANIFEST_NAME not in partial

    store = ArtifactStore(root, store_options(url), cache_dir=str(tmp_path / "cache"))
    assert store.read_manifest("model", "tiny", "v1") is None
    assert store.latest("model", "tiny") is None
    with pytest.raises(ArtifactMissingError):
        store.require("model", "tiny", "v1")
    assert_republish_completes(store, client, prefix, tmp_path / "staged", files)


def test_connection_dropped_mid_upload_fails_the_publish_without_a_manifest(s3_server, tmp_path, request):
    url, client = s3_server
    root = f"s3://{BUCKET}/{request.node.name}"
    prefix = f"{request.node.name}/model/tiny/v1/"
    staged = tmp_path / "staged"
    files = stage_files(staged)
    proxy = TcpProxy(int(url.rsplit(":", 1)[1]), budget=4 * FILE_SIZE)
    # Few retries: the endpoint is gone for good, the test only needs the publish to give up.
    flaky = ArtifactStore(
        root,
        store_options(
            proxy.url, config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2, "read_timeout": 5}
        ),
        cache_dir=str(tmp_path / "c1"),
    )
    outcome: dict = {}

    def publish() -> None:
        try:
            outcome["manifest"] = flaky.publish("model", "tiny", "v1", staged)
        except BaseException as error:  # noqa: BLE001 - the test inspects it
            outcome["error"] = error

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        wait_for(lambda: proxy.saturated.is_set() and bucket_objects(client, prefix), 120, "the first uploaded files")
    finally:
        proxy.stop()
    thread.join(timeout=180)
    assert not thread.is_alive(), "publish did not give up after the connection dropped"
    assert "manifest" not in outcome and isinstance(outcome.get("error"), Exception), outcome
    partial = bucket_objects(client, prefix)
    assert 0 < len(partial) < len(files) and prefix + MANIFEST_NAME not in partial
    assert staged.is_dir() and len(list(staged.iterdir())) == len(files), "a failed publish must keep the staged folder"

    store = ArtifactStore(root, store_options(url), cache_dir=str(tmp_path / "c2"))
    assert store.read_manifest("model", "tiny", "v1") is None
    assert store.latest("model", "tiny") is None
    assert_republish_completes(store, client, prefix, staged, files)


# -- the tiny chain with the store on S3 --------------------------------------------------------------------------
# The whole tiny graph of the shipped recipe, as the README's quick start materializes it.
CHAIN_ASSETS = [*DATA_ASSETS, *MODEL_ASSETS, "base_eval", "instruct_eval", "reason_eval"]


@pytest.fixture(scope="module")
def s3_chain(s3_server, tmp_path_factory):
    """The whole tiny graph, on the mechanics recipe (a few steps per stage: this tests the store, not learning),
    materialized once with the store on S3, in a subprocess (own DAGSTER_HOME)."""
    url, client = s3_server
    base = tmp_path_factory.mktemp("s3chain")
    root = f"s3://{BUCKET}/chain"
    recipes = write_tiny_recipe(base / "recipes", MECHANICS_EDITS)
    env = dagster_env(
        base / "dagster_home", base / "unused-local-root", recipes,
        TEST_S3_ROOT=root, TEST_S3_ENDPOINT=url, TEST_S3_REGION=REGION, TEST_SCRATCH=str(base / "scratch"),
        DOGE_TEST_S3_ACCESS_KEY_ID=ACCESS_KEY, DOGE_TEST_S3_SECRET_ACCESS_KEY=SECRET_KEY,
        TMPDIR=str(base / "tmp"),  # the artifact cache and staging folders of every process
    )  # fmt: skip
    for key in list(env):
        if key.startswith(("AWS_", "FSSPEC_")):
            env.pop(key)
    (base / "tmp").mkdir()
    started = time.monotonic()
    completed = run_program("s3_chain", [json.dumps(CHAIN_ASSETS)], env, 1500, check=False, log_path=base / "chain.log")
    result = completed.result
    result["seconds"] = time.monotonic() - started
    return {
        "base": base,
        "root": root,
        "url": url,
        "client": client,
        "result": result,
        "log": completed.output,
    }


def assert_chain_ran(s3_chain) -> None:
    result = s3_chain["result"]
    assert result["success"], "\n\n".join(result["failures"]) or tail(s3_chain["log"])
    failed_checks = sorted(name for name, passed in result["checks"].items() if not passed)
    assert len(result["checks"]) >= 20 and not failed_checks, result["checks"]
    assert sorted(result["metadata"]) == sorted(CHAIN_ASSETS), tail(s3_chain["log"])


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_tiny_chain_materializes_with_the_store_on_s3(s3_chain):
    result, client = s3_chain["result"], s3_chain["client"]
    assert_chain_ran(s3_chain)
    for asset in CHAIN_ASSETS:
        assert result["metadata"][asset]["artifact_uri"].startswith(f"{s3_chain['root']}/{asset}/tiny/"), result[
            "metadata"
        ][asset]
        assert result["metadata"][asset]["cached"] == "False"

    store = ArtifactStore(
        s3_chain["root"], store_options(s3_chain["url"]), cache_dir=str(s3_chain["base"] / "verify-cache")
    )
    keys = set(bucket_objects(client, "chain/"))
    for asset in CHAIN_ASSETS:
        manifest = store.latest(asset, "tiny")
        assert manifest is not None, f"{asset}: no manifest on S3"
        assert f"chain/{asset}/tiny/{manifest.version}/{MANIFEST_NAME}" in keys
        assert {f"chain/{asset}/tiny/{manifest.version}/{entry.path}" for entry in manifest.files} <= keys
    assert not any("/checkpoint-" in key or key.endswith("spec.json") for key in keys), "checkpoints belong on scratch"
    base_manifest = store.latest("doge_base", "tiny")
    sft_manifest = store.latest("doge_instruct_sft", "tiny")
    assert sft_manifest.upstream["doge_base"] == base_manifest.version
    reason_report = store.latest("reason_eval", "tiny")  # the evaluations read their models back from S3
    assert reason_report.upstream["doge_reason"] == store.latest("doge_reason", "tiny").version
    assert reason_report.metadata["scores"], reason_report.metadata
    assert base_manifest.metadata["checks"]["loss_finite_and_falling"][0]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    for manifest in (base_manifest, sft_manifest):
        folder = store.local_path(manifest)
        model = AutoModelForCausalLM.from_pretrained(str(folder))
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        assert model.config.vocab_size == len(tokenizer)
        output = model.generate(**tokenizer("The number", return_tensors="pt"), max_new_tokens=4, do_sample=False)
        assert output.shape[1] > 0


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_tiny_chain_on_s3_leaks_no_credentials(s3_chain):
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef
    from dagster_shared.serdes import serialize_value

    base, client = s3_chain["base"], s3_chain["client"]
    assert_chain_ran(s3_chain)
    assert_no_credentials("the chain's output", s3_chain["log"])
    assert_no_credentials("materialization metadata", json.dumps(s3_chain["result"]))

    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(base / "dagster_home")))
    try:
        runs = instance.get_runs()
        assert [run.run_id for run in runs] == [s3_chain["result"]["run_id"]]
        for run in runs:
            assert_no_credentials("the run record", serialize_value(run))
            events = instance.all_logs(run.run_id)
            assert len(events) > 20
            for event in events:
                assert_no_credentials(f"event {event.dagster_event_type}", serialize_value(event))
        records = instance.fetch_materializations(dg.AssetKey("doge_base"), limit=10).records
        assert records
        for record in records:
            assert_no_credentials("a materialization record", serialize_value(record))
    finally:
        instance.dispose()

    specs = list((base / "scratch").rglob("spec.json"))
    assert len(specs) == len(CHAIN_ASSETS) - len(DATA_ASSETS), (
        "one spec per launched stage (5 trainings, 3 evaluations)"
    )
    scanned = 0
    for folder in (base / "dagster_home", base / "scratch", base / "tmp"):
        for path in folder.rglob("*"):
            if path.is_file():
                assert_no_credentials(str(path), path.read_bytes())
                scanned += 1
    assert scanned > 20
    objects = bucket_objects(client)
    assert any(key.endswith(MANIFEST_NAME) for key in objects)
    for key, body in objects.items():
        assert_no_credentials(f"s3://{BUCKET}/{key}", body)
