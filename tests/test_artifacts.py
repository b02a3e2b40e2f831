"""Artifact store: atomic publish (files first, manifest last), reading only complete versions, local and S3."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from doge_dagster.artifacts import (
    MANIFEST_NAME,
    STAGING_DIR,
    ArtifactIntegrityError,
    ArtifactMissingError,
    ArtifactStore,
    Manifest,
)

FILES = {"config.json": b'{"a": 1}', "train/data-00000.arrow": b"\x00\x01" * 5000, "train/state.json": b"{}", "empty.txt": b""}


def fill(folder: Path, files: dict[str, bytes] = FILES) -> None:
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def read_tree(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def assert_manifest_describes(manifest: Manifest, files: dict[str, bytes]) -> None:
    assert [entry.path for entry in manifest.files] == sorted(files)
    for entry in manifest.files:
        assert entry.size == len(files[entry.path])
        assert entry.sha256 == sha(files[entry.path])
    assert manifest.total_bytes == sum(len(content) for content in files.values())


@pytest.fixture
def store(tmp_path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "artifacts"))


def publish(store: ArtifactStore, version: str, files: dict[str, bytes] = FILES, **kwargs) -> Manifest:
    staged = store.staging_dir("thing", "tiny", version)
    fill(staged, files)
    return store.publish("thing", "tiny", version, staged, **kwargs)


# -- local root ----------------------------------------------------------------------------------------------
def test_publish_moves_files_and_writes_the_manifest_last(store, tmp_path):
    manifest = publish(store, "v1", upstream={"tokenizer": "abc"}, metadata={"rows": 3})
    final = tmp_path / "artifacts" / "thing" / "tiny" / "v1"
    on_disk = read_tree(final)
    assert on_disk.pop(MANIFEST_NAME)
    assert on_disk == FILES
    written = Manifest.from_json((final / MANIFEST_NAME).read_text())
    assert written == manifest == store.read_manifest("thing", "tiny", "v1")
    assert (written.asset, written.partition, written.version) == ("thing", "tiny", "v1")
    assert written.upstream == {"tokenizer": "abc"} and written.metadata == {"rows": 3}
    assert_manifest_describes(written, FILES)
    # the manifest is the newest file of the folder: written after every data file
    manifest_time = (final / MANIFEST_NAME).stat().st_mtime_ns
    assert all((final / name).stat().st_mtime_ns <= manifest_time for name in FILES)
    # nothing is left in staging, and no temporary manifest lingers
    assert not any((tmp_path / "artifacts" / "thing" / "tiny" / STAGING_DIR).iterdir())
    assert [path.name for path in final.iterdir() if path.name.endswith(".tmp")] == []
    assert store.url("thing", "tiny", "v1") == str(final)
    assert store.local_path(manifest) == final


def test_files_are_in_place_before_the_manifest_is_written(store, monkeypatch):
    seen = {}
    write_manifest = store._write_manifest

    def spy(final, manifest):
        seen.update(read_tree(Path(final)))
        write_manifest(final, manifest)

    monkeypatch.setattr(store, "_write_manifest", spy)
    publish(store, "v1")
    assert seen == FILES  # every file, and no manifest yet


def test_a_crash_before_the_manifest_leaves_no_output_and_a_rerun_completes(store, monkeypatch):
    def crash(final, manifest):
        raise KeyboardInterrupt  # the process dies between the files and the manifest

    with monkeypatch.context() as patch:
        patch.setattr(store, "_write_manifest", crash)
        with pytest.raises(KeyboardInterrupt):
            publish(store, "v1", files={"stale.bin": b"old", **FILES})
    assert (Path(store.root) / "thing" / "tiny" / "v1" / "stale.bin").is_file()
    assert store.read_manifest("thing", "tiny", "v1") is None and store.latest("thing", "tiny") is None
    manifest = publish(store, "v1")
    assert store.read_manifest("thing", "tiny", "v1") == manifest
    assert not (Path(store.root) / "thing" / "tiny" / "v1" / "stale.bin").exists()


def test_manifest_sizes_and_hashes_match_the_published_bytes(store):
    manifest = publish(store, "v1")
    folder = store.local_path(manifest)
    for entry in manifest.files:
        data = (folder / entry.path).read_bytes()
        assert (entry.size, entry.sha256) == (len(data), sha(data))
    assert json.loads((folder / MANIFEST_NAME).read_text())["files"][0].keys() == {"path", "size", "sha256"}


def test_unpublished_version_reads_as_none(store):
    assert store.read_manifest("thing", "tiny", "never") is None
    assert store.manifests("thing", "tiny") == []
    assert store.latest("thing", "tiny") is None


def test_interrupted_publish_is_not_an_output(store, tmp_path):
    # files were moved into place but the process died before the manifest was written
    partial = tmp_path / "artifacts" / "thing" / "tiny" / "v1"
    partial.mkdir(parents=True)
    fill(partial)
    # and a writer died while filling its staging folder
    staged = store.staging_dir("thing", "tiny", "v2")
    fill(staged)
    assert store.read_manifest("thing", "tiny", "v1") is None
    assert store.read_manifest("thing", "tiny", "v2") is None
    assert store.manifests("thing", "tiny") == []
    assert store.latest("thing", "tiny") is None
    with pytest.raises(ArtifactMissingError):
        store.require("thing", "tiny", "v1")


def test_republish_replaces_a_leftover_partial_folder(store, tmp_path):
    partial = tmp_path / "artifacts" / "thing" / "tiny" / "v1"
    partial.mkdir(parents=True)
    fill(partial, {"stale.bin": b"old", "config.json": b"half-writ"})
    manifest = publish(store, "v1")
    on_disk = read_tree(partial)
    on_disk.pop(MANIFEST_NAME)
    assert on_disk == FILES  # stale.bin is gone, config.json is the new one
    assert_manifest_describes(manifest, FILES)


def test_writing_publishes_when_the_block_succeeds(store):
    with store.writing("thing", "tiny", "v1", upstream={"up": "1"}) as staged:
        fill(staged.path)
        staged.metadata["rows"] = 7
        staging_path = staged.path
        assert store.read_manifest("thing", "tiny", "v1") is None  # not visible while writing
    assert not staging_path.exists()
    assert staged.manifest == store.read_manifest("thing", "tiny", "v1")
    assert staged.manifest.metadata == {"rows": 7} and staged.manifest.upstream == {"up": "1"}
    assert_manifest_describes(staged.manifest, FILES)


def test_writing_discards_everything_when_the_block_raises(store, tmp_path):
    with pytest.raises(RuntimeError, match="boom"), store.writing("thing", "tiny", "v1") as staged:
        fill(staged.path)
        raise RuntimeError("boom")
    assert not staged.path.exists()
    assert staged.manifest is None
    assert store.read_manifest("thing", "tiny", "v1") is None
    assert not (tmp_path / "artifacts" / "thing" / "tiny" / "v1").exists()
    assert not list((tmp_path / "artifacts").rglob(MANIFEST_NAME))
    assert [path for path in (tmp_path / "artifacts").rglob("*") if path.is_file()] == []


def test_latest_is_the_newest_complete_version(store, tmp_path):
    publish(store, "b-older")
    time.sleep(0.01)
    newest = publish(store, "a-newer", files={"x": b"new"})
    (tmp_path / "artifacts" / "thing" / "tiny" / "z-partial").mkdir()  # no manifest: ignored
    assert [manifest.version for manifest in store.manifests("thing", "tiny")] == ["b-older", "a-newer"]
    assert store.latest("thing", "tiny") == newest
    assert store.latest("thing", "other") is None


def test_require_names_asset_partition_and_what_to_materialize(store):
    manifest = publish(store, "v1")
    assert store.require("thing", "tiny", "v1") == manifest
    with pytest.raises(ArtifactMissingError) as info:
        store.require("tokenizer", "60M", "0123abcd")
    message = str(info.value)
    assert "tokenizer[60M]" in message and "0123abcd" in message and store.root_url in message
    assert "materialize tokenizer for partition 60M first" in message
    assert isinstance(info.value, FileNotFoundError)


def test_manifest_json_roundtrip():
    manifest = Manifest("a", "p", "v", {"u": "1"}, [], 1.5, {"k": [1, 2]})
    assert Manifest.from_json(manifest.to_json()) == manifest


# -- a real S3 endpoint (moto server) ------------------------------------------------------------------------
REGION = "eu-west-1"
BUCKET = "doge-artifacts"


@pytest.fixture(scope="module")
def s3_endpoint():
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = boto3.client(
        "s3", endpoint_url=url, region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    yield url, client
    server.stop()


@pytest.fixture
def s3_store(s3_endpoint, tmp_path, request) -> ArtifactStore:
    url, _ = s3_endpoint
    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": url, "region_name": REGION}}
    store = ArtifactStore(f"s3://{BUCKET}/{request.node.name}", storage_options=options, cache_dir=str(tmp_path / "cache"))
    assert not store.is_local
    return store


def _remote_keys(client, prefix: str) -> dict[str, bytes]:
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {item["Key"][len(prefix):]: client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read() for item in listing}


def test_s3_publish_read_and_download(s3_store, s3_endpoint, request, tmp_path):
    _, client = s3_endpoint
    assert s3_store.read_manifest("thing", "tiny", "v1") is None
    manifest = publish(s3_store, "v1", upstream={"up": "1"})
    prefix = f"{request.node.name}/thing/tiny/v1/"
    remote = _remote_keys(client, prefix)
    assert Manifest.from_json(remote.pop(MANIFEST_NAME).decode()) == manifest
    assert remote == FILES  # nested folders and empty files included
    assert s3_store.read_manifest("thing", "tiny", "v1") == manifest
    assert s3_store.require("thing", "tiny", "v1") == manifest
    assert s3_store.url("thing", "tiny", "v1") == f"s3://{BUCKET}/{request.node.name}/thing/tiny/v1"

    local = s3_store.local_path(manifest)
    assert local.is_relative_to(tmp_path / "cache")
    on_disk = read_tree(local)
    assert Manifest.from_json(on_disk.pop(MANIFEST_NAME).decode()) == manifest
    assert on_disk == FILES
    assert s3_store.local_path(manifest) == local  # second call: the verified cache copy
    # staging for a remote store is local and is cleaned up after the upload
    assert not any(path.is_file() for path in (tmp_path / "cache" / ".staging").rglob("*"))


def test_s3_files_are_uploaded_before_the_manifest(s3_store, s3_endpoint, request, monkeypatch):
    _, client = s3_endpoint
    seen = {}
    write_manifest = s3_store._write_manifest

    def spy(final, manifest):
        seen.update(_remote_keys(client, f"{request.node.name}/thing/tiny/v1/"))
        write_manifest(final, manifest)

    monkeypatch.setattr(s3_store, "_write_manifest", spy)
    publish(s3_store, "v1")
    assert seen == FILES


def test_s3_download_is_verified_against_the_manifest(s3_store, s3_endpoint, request, tmp_path):
    _, client = s3_endpoint
    manifest = publish(s3_store, "v1")
    client.put_object(Bucket=BUCKET, Key=f"{request.node.name}/thing/tiny/v1/train/state.json", Body=b'{"x": 1}')
    with pytest.raises(ArtifactIntegrityError, match="train/state.json"):
        s3_store.local_path(manifest)
    assert not (tmp_path / "cache" / "thing" / "tiny" / "v1").exists()
    assert not list((tmp_path / "cache" / "thing" / "tiny").glob("*.part"))


def test_s3_interrupted_publish_is_ignored_and_replaced(s3_store, s3_endpoint, request):
    _, client = s3_endpoint
    prefix = f"{request.node.name}/thing/tiny/v1/"
    client.put_object(Bucket=BUCKET, Key=prefix + "stale.bin", Body=b"old")
    client.put_object(Bucket=BUCKET, Key=prefix + "config.json", Body=b"half")
    assert s3_store.read_manifest("thing", "tiny", "v1") is None
    assert s3_store.latest("thing", "tiny") is None
    with pytest.raises(ArtifactMissingError, match=r"thing\[tiny\]"):
        s3_store.require("thing", "tiny", "v1")
    manifest = publish(s3_store, "v1")
    remote = _remote_keys(client, prefix)
    remote.pop(MANIFEST_NAME)
    assert "stale.bin" not in remote and remote["config.json"] == FILES["config.json"]
    assert s3_store.read_manifest("thing", "tiny", "v1") == manifest


def test_s3_writing_discards_on_error_and_latest_sees_new_versions(s3_store, s3_endpoint, request):
    _, client = s3_endpoint
    with pytest.raises(ValueError), s3_store.writing("thing", "tiny", "v0") as staged:
        fill(staged.path)
        raise ValueError("no")
    assert _remote_keys(client, f"{request.node.name}/") == {}
    assert not staged.path.exists()
    first = publish(s3_store, "v1")
    assert s3_store.latest("thing", "tiny") == first  # lists the prefix
    time.sleep(0.01)
    with s3_store.writing("thing", "tiny", "v2") as staged:
        fill(staged.path, {"only.txt": b"2"})
    assert s3_store.latest("thing", "tiny") == staged.manifest  # the listing is not stale
    assert [manifest.version for manifest in s3_store.manifests("thing", "tiny")] == ["v1", "v2"]
    assert read_tree(s3_store.local_path(staged.manifest)) == {"only.txt": b"2", MANIFEST_NAME: staged.manifest.to_json().encode()}


def test_artifact_store_resource_builds_s3_options(s3_endpoint):
    from resources.artifact_store import ArtifactStoreResource

    url, _ = s3_endpoint
    resource = ArtifactStoreResource(
        root=f"s3://{BUCKET}/resource", endpoint_url=url, region=REGION, access_key_id="testing", secret_access_key="testing"
    )
    store = resource.get_store()
    manifest = publish(store, "v1", files={"a.txt": b"a"})
    assert ArtifactStore(f"s3://{BUCKET}/resource", resource.storage_options()).read_manifest("thing", "tiny", "v1") == manifest


def test_artifact_store_resource_local_root_is_inside_the_project(tmp_path):
    from doge_dagster.recipes import PROJECT_ROOT
    from resources.artifact_store import ArtifactStoreResource

    assert ArtifactStoreResource().root_url == str(PROJECT_ROOT / ".doge")
    assert ArtifactStoreResource(root=str(tmp_path)).root_url == str(tmp_path)
    assert ArtifactStoreResource(root=str(tmp_path)).storage_options() == {}
    assert ArtifactStoreResource(root=str(tmp_path)).get_store().is_local
