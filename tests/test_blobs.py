"""python-edu read for real: `text` fetched by blob id from an S3 store (moto on 127.0.0.1), or a mirror with text.

- A local python-edu source with blob ids only, `contents` pointing at a bucket of gzipped blobs: the stream
  yields the original texts, in the order of the same source with text; a second read comes from the cache.
- Missing blobs are skipped and counted, or fail the read (on_error: fail, or past max_failures), naming the blob.
- Transient connection failures (a TCP proxy in front of moto that resets the first connections) are retried.
- The credentials appear in no fingerprint and no log line; the endpoint is redacted from error messages.
- A Hub mirror of another repo in the same schema (`repo`, `config`) and a local folder with text need no fetching.
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import struct
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from doge_dagster.data import blobs
from doge_dagster.data.blobs import BlobFetchError, BlobFetchStats
from doge_dagster.data.generated import arrow_schema, generate_rows, write_hub_layout
from doge_dagster.data.sources import SourceError, folder_fingerprint, open_source, source_fingerprint
from doge_dagster.recipe_sections import BlobContents
from doge_dagster.recipes import SourceRef

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

REGION = "eu-west-1"
BUCKET = "doge-blob-tests"
ACCESS_KEY = "AKIADOGEBLOBKEY8815QZ"
SECRET_KEY = "doge-blob-secret-3e7f1a9c5d2b4e6f8a0c"
ROWS = 40
SEED = 7


# -- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on 127.0.0.1 with one bucket; yields (host, port, boto3 client)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
    try:
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    except client.exceptions.BucketAlreadyOwnedByYou:  # moto's state is per process: another module's server made it
        pass
    yield host, port, client
    server.stop()


@pytest.fixture(scope="module")
def python_edu_rows() -> list[dict]:
    return list(generate_rows("python-edu", ROWS, seed=SEED))


@pytest.fixture
def store(s3_server, python_edu_rows, monkeypatch, request) -> str:
    """Every generated blob gzipped under `<prefix>/<blob_id>` (a fresh prefix per test); the S3 settings in
    the environment only, as in production. Returns the `contents.store` URL."""
    host, port, client = s3_server
    prefix = f"content-{request.node.name}".replace("[", "-").replace("]", "")
    for row in python_edu_rows:
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{row['blob_id']}", Body=gzip.compress(row["text"].encode()))
    set_s3_env(monkeypatch, f"http://{host}:{port}")
    return f"s3://{BUCKET}/{prefix}"


def set_s3_env(monkeypatch, endpoint: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


@pytest.fixture(autouse=True)
def private_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("DOGE_GENERATED_CACHE", str(tmp_path / "generated"))
    monkeypatch.setenv("DOGE_BLOB_CACHE", str(tmp_path / "blob-cache"))
    monkeypatch.setattr(blobs, "BACKOFF_BASE_S", 0.01)


def write_parquet(folder: Path, rows: list[dict], files: int = 2, text: bool = True) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema("python-edu")
    if not text:
        schema = schema.remove(schema.get_field_index("text"))
        rows = [{key: value for key, value in row.items() if key != "text"} for row in rows]
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(files):
        pq.write_table(pa.Table.from_pylist(rows[index::files], schema=schema), folder / f"part-{index}.parquet")
    return folder


def blob_source(tmp_path: Path, rows: list[dict], store: str, **contents) -> SourceRef:
    folder = write_parquet(tmp_path / "python-edu-ids", rows, text=False)
    return SourceRef(
        dataset="python-edu", ratio=1.0, kind="local", path=str(folder), contents=BlobContents(store=store, **contents)
    )


def text_source(tmp_path: Path, rows: list[dict]) -> SourceRef:
    folder = write_parquet(tmp_path / "python-edu-text", rows)
    return SourceRef(dataset="python-edu", ratio=1.0, kind="local", path=str(folder))


def s3_error(status: bytes, code: str, message: str) -> bytes:
    """A raw S3 error response, as the service sends it."""
    body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
    head = b"HTTP/1.1 %s\r\nContent-Type: application/xml\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
    return head % (status, len(body)) + body


SLOW_DOWN = s3_error(b"503 Slow Down", "SlowDown", "Please reduce your request rate.")
ACCESS_DENIED = s3_error(b"403 Forbidden", "AccessDenied", "Access Denied")


class FlakyProxy:
    """A TCP proxy to `target` with real failures: it resets its first `drop` connections, answers the next
    `refuse` requests with `answer` (S3's 503 SlowDown by default), then forwards everything."""

    def __init__(self, target: tuple[str, int], drop: int = 0, refuse: int = 0, answer: bytes = SLOW_DOWN):
        self.target, self.drop, self.refuse, self.answer, self.accepted = target, drop, refuse, answer, 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            if self.accepted <= self.drop:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
                conn.close()
                continue
            if self.accepted <= self.drop + self.refuse:
                threading.Thread(target=self._refuse, args=(conn,), daemon=True).start()
                continue
            upstream = socket.create_connection(self.target)
            for source, sink in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _refuse(self, conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request and (data := conn.recv(65536)):
                request += data
            conn.sendall(self.answer)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()


# -- (a) fetch by blob id ---------------------------------------------------------------------------------------
def test_blob_texts_arrive_in_the_order_of_a_source_with_text(tmp_path, store, python_edu_rows):
    stats = BlobFetchStats()
    ref = blob_source(tmp_path, python_edu_rows, store)
    fetched = list(open_source(ref, seed=3, shuffle_buffer=16, blob_stats=stats))
    expected = list(open_source(text_source(tmp_path, python_edu_rows), seed=3, shuffle_buffer=16))
    assert fetched == expected
    assert [row["text"] for row in fetched] != [row["text"] for row in python_edu_rows]  # shuffled
    assert (stats.rows, stats.fetched, stats.cached, stats.failed) == (ROWS, ROWS, 0, 0)
    # the features stay known, so a reader can select the text column alone (as the mixers do)
    stream = open_source(ref, seed=3, shuffle_buffer=16)
    assert "text" in stream.column_names and "blob_id" in stream.column_names
    texts = [text for batch in stream.select_columns(["text"]).iter(batch_size=7) for text in batch["text"]]
    assert texts == [row["text"] for row in expected]


def test_a_second_read_comes_from_the_cache_without_the_store(tmp_path, store, python_edu_rows, s3_server, monkeypatch):
    ref = blob_source(tmp_path, python_edu_rows, store, cache_dir=str(tmp_path / "recipe-cache"))
    first = list(open_source(ref, seed=1))
    cached = sorted(path.name for path in (tmp_path / "recipe-cache").rglob("*") if path.is_file())
    assert cached == sorted(f"{row['blob_id']}.txt" for row in python_edu_rows)  # keyed by blob id, no temp files left
    _, _, client = s3_server
    prefix = store.removeprefix(f"s3://{BUCKET}/")
    client.delete_objects(
        Bucket=BUCKET, Delete={"Objects": [{"Key": f"{prefix}/{row['blob_id']}"} for row in python_edu_rows]}
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # nothing listens there
    stats = BlobFetchStats()
    assert list(open_source(ref, seed=1, blob_stats=stats)) == first
    assert (stats.fetched, stats.cached, stats.failed) == (0, ROWS, 0)


def test_texts_keep_their_bytes_through_the_cache(tmp_path, s3_server, monkeypatch):
    """CRLF line ends, non-ASCII text and invalid UTF-8 (dropped, as the dataset card decodes) survive the cache."""
    host, port, client = s3_server
    raw = b"line one\r\nna\xc3\xafve \xff\xfe caf\xc3\xa9\r\n"
    client.put_object(Bucket=BUCKET, Key="odd/blob-crlf", Body=gzip.compress(raw))
    set_s3_env(monkeypatch, f"http://{host}:{port}")
    settings = BlobContents(store=f"s3://{BUCKET}/odd", cache_dir=str(tmp_path / "cache"))
    expected = raw.decode("utf-8", errors="ignore")
    assert blobs.BlobFetcher(settings).texts(["blob-crlf"]) == [expected]
    again = blobs.BlobFetcher(settings)
    assert again.texts(["blob-crlf"]) == [expected] and again.stats.cached == 1


def test_missing_blobs_are_skipped_and_counted(tmp_path, store, python_edu_rows, caplog):
    ghosts = [{**row, "blob_id": f"{index:040x}"} for index, row in enumerate(python_edu_rows[:3])]
    stats = BlobFetchStats()
    ref = blob_source(tmp_path, python_edu_rows + ghosts, store)
    with caplog.at_level(logging.WARNING, logger=blobs.__name__):
        rows = list(open_source(ref, seed=2, blob_stats=stats))
    assert sorted(row["blob_id"] for row in rows) == sorted(row["blob_id"] for row in python_edu_rows)
    assert all(
        row["text"] == next(r["text"] for r in python_edu_rows if r["blob_id"] == row["blob_id"]) for row in rows
    )
    assert (stats.fetched, stats.failed) == (ROWS, 3)
    assert stats.last_failure.split(":")[0] in {ghost["blob_id"] for ghost in ghosts}
    assert "FileNotFoundError" in stats.last_failure
    assert sum("skipping blob" in record.getMessage() for record in caplog.records) == 3


def test_on_error_fail_names_the_blob(tmp_path, store, python_edu_rows):
    ghost = {**python_edu_rows[0], "blob_id": "f" * 40}
    ref = blob_source(tmp_path, [*python_edu_rows[:5], ghost], store, on_error="fail")
    with pytest.raises(BlobFetchError, match=rf"blob {'f' * 40} could not be read .*on_error: skip"):
        list(open_source(ref, seed=2))


def test_more_failures_than_max_failures_fail_the_read(tmp_path, store, python_edu_rows):
    ghosts = [{**row, "blob_id": f"{index:040x}"} for index, row in enumerate(python_edu_rows[:4])]
    ref = blob_source(tmp_path, python_edu_rows[:10] + ghosts, store, max_failures=3)
    with pytest.raises(BlobFetchError, match=r"4 blobs could not be read.*max_failures \(3\); the last: 0{37}"):
        list(open_source(ref, seed=2))
    stats = BlobFetchStats()
    ref = blob_source(tmp_path, python_edu_rows[:10] + ghosts, store, max_failures=4)
    assert len(list(open_source(ref, seed=2, blob_stats=stats))) == 10 and stats.failed == 4


@pytest.mark.parametrize("fault", ["reset", "throttle"])
def test_transient_failures_are_retried(tmp_path, store, python_edu_rows, s3_server, monkeypatch, fault):
    host, port, _ = s3_server
    # aiohttp repeats a GET once by itself when its connection is reset, so 8 resets fail at least 4 requests
    proxy = FlakyProxy((host, port), drop=8) if fault == "reset" else FlakyProxy((host, port), refuse=5)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        stats = BlobFetchStats()
        ref = blob_source(tmp_path, python_edu_rows, store, concurrency=4)
        rows = list(open_source(ref, seed=4, blob_stats=stats))
        assert proxy.accepted > ROWS, "the requests went through the proxy"
        assert 4 <= stats.retried <= 8 if fault == "reset" else stats.retried == 5
        assert (stats.fetched, stats.failed) == (ROWS, 0)
        assert sorted(row["text"] for row in rows) == sorted(row["text"] for row in python_edu_rows)
    finally:
        proxy.close()


def test_without_retries_a_transient_failure_counts(tmp_path, store, python_edu_rows, s3_server, monkeypatch):
    host, port, _ = s3_server
    proxy = FlakyProxy((host, port), refuse=2)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        stats = BlobFetchStats()
        ref = blob_source(tmp_path, python_edu_rows, store, concurrency=2, retries=0)
        rows = list(open_source(ref, seed=4, blob_stats=stats))
        assert stats.retried == 0 and stats.failed == 2 and len(rows) == ROWS - 2
        assert "SlowDown" in stats.last_failure or "reduce your request rate" in stats.last_failure
    finally:
        proxy.close()


def test_error_messages_name_no_endpoint(tmp_path, store, python_edu_rows, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # nothing listens there
    stats = BlobFetchStats()
    ref = blob_source(tmp_path, python_edu_rows[:3], store, retries=0)
    assert list(open_source(ref, seed=4, blob_stats=stats)) == [] and stats.failed == 3
    assert "<endpoint>" in stats.last_failure and "127.0.0.1" not in stats.last_failure
    assert blobs.redact("connect to http://user:pw@10.0.0.1:9000/bucket/key failed") == (
        "connect to <endpoint>/bucket/key failed"
    )


def test_refused_credentials_fail_at_once_with_the_fix(tmp_path, store, python_edu_rows, s3_server, monkeypatch):
    """A store that denies every blob before any was read is a credentials problem, not 40 missing blobs; once
    blobs were read, a denied one is just a failed blob (S3 answers 403 for a missing key without ListBucket)."""
    host, port, _ = s3_server
    proxy = FlakyProxy((host, port), refuse=1000, answer=ACCESS_DENIED)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        with pytest.raises(BlobFetchError, match=r"refused every blob.*AWS_ACCESS_KEY_ID.*mirror"):
            list(open_source(blob_source(tmp_path, python_edu_rows, store), seed=1))
    finally:
        proxy.close()
    proxy = FlakyProxy((host, port), refuse=0, answer=ACCESS_DENIED)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        fetcher = blobs.BlobFetcher(BlobContents(store=store, cache_dir=str(tmp_path / "cache")))
        assert fetcher.texts([python_edu_rows[0]["blob_id"]]) == [python_edu_rows[0]["text"]]
        proxy.refuse, proxy.drop = 1000, proxy.accepted
        assert fetcher.texts([python_edu_rows[1]["blob_id"]]) == [None]
        assert fetcher.stats.failed == 1 and "PermissionError" in fetcher.stats.last_failure
    finally:
        proxy.close()


def test_anonymous_access_when_no_credentials_are_configured(tmp_path, monkeypatch):
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    assert blobs.anonymous_access()
    (tmp_path / "none").write_text("[default]\n")
    assert not blobs.anonymous_access()
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "still-none"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    assert not blobs.anonymous_access()


def test_the_environment_endpoint_reaches_the_client(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    fs = blobs.s3_filesystem(8)
    assert fs.client_kwargs == {"endpoint_url": "http://127.0.0.1:9"} and fs.retries == 1


def test_credentials_never_appear_in_fingerprints_or_logs(tmp_path, store, python_edu_rows, caplog):
    ghost = {**python_edu_rows[0], "blob_id": "e" * 40}
    ref = blob_source(tmp_path, [*python_edu_rows, ghost], store)
    # everything logged at INFO and above, and all of our own logging (botocore's DEBUG lines show the key id)
    with caplog.at_level(logging.INFO), caplog.at_level(logging.DEBUG, logger="doge_dagster"):
        stats = BlobFetchStats()
        list(open_source(ref, seed=5, blob_stats=stats))
        blobs.log.info("%s", stats.summary())
        fingerprint = source_fingerprint(ref, 5)
    written = [fingerprint, stats.summary(), stats.last_failure, ref.model_dump_json(), caplog.text]
    written += [
        path.read_text(errors="ignore")
        for path in Path(tmp_path).rglob("*")
        if path.is_file() and path.suffix == ".txt"
    ]
    assert caplog.text and stats.failed == 1
    for secret in (ACCESS_KEY, SECRET_KEY):
        assert not any(secret in text for text in written)


def test_the_fingerprint_follows_the_store_only(tmp_path, python_edu_rows):
    folder = write_parquet(tmp_path / "ids", python_edu_rows, text=False)
    plain = SourceRef(dataset="python-edu", ratio=1.0, kind="local", path=str(folder))
    fetched = plain.model_copy(update={"contents": BlobContents()})
    elsewhere = plain.model_copy(update={"contents": BlobContents(store="s3://mirror-bucket/blobs")})
    tuned = plain.model_copy(
        update={"contents": BlobContents(concurrency=8, retries=1, on_error="fail", max_failures=3, cache_dir="/x")}
    )
    assert source_fingerprint(plain, 1) == folder_fingerprint(folder)  # unchanged without contents
    assert len({source_fingerprint(plain, 1), source_fingerprint(fetched, 1), source_fingerprint(elsewhere, 1)}) == 3
    assert source_fingerprint(tuned, 1) == source_fingerprint(fetched, 1)


def test_a_source_with_contents_needs_blob_ids(tmp_path, python_edu_rows):
    folder = tmp_path / "fineweb-like"
    folder.mkdir()
    (folder / "part.jsonl").write_text("".join(json.dumps({"text": row["text"]}) + "\n" for row in python_edu_rows))
    ref = SourceRef(dataset="python-edu", ratio=1.0, kind="local", path=str(folder), contents=BlobContents())
    with pytest.raises(SourceError, match=r"lacks column\(s\) blob_id"):
        open_source(ref, seed=1)


def test_without_contents_the_error_names_both_ways(tmp_path, python_edu_rows):
    folder = write_parquet(tmp_path / "ids", python_edu_rows, text=False)
    ref = SourceRef(dataset="python-edu", ratio=1.0, kind="local", path=str(folder))
    with pytest.raises(SourceError, match=r"lacks column\(s\) text.*blob ids.*`contents: \{\}`.*`repo: "):
        open_source(ref, seed=1)


# -- recipe validation -----------------------------------------------------------------------------------------
def test_contents_is_refused_for_a_dataset_with_text():
    with pytest.raises(ValidationError, match=r"`contents`.*only for python-edu.*'fineweb-edu'.*remove `contents`"):
        SourceRef(dataset="fineweb-edu", ratio=1.0, contents={})
    with pytest.raises(ValidationError, match=r"`contents` is not for kind 'generated'"):
        SourceRef(dataset="python-edu", ratio=1.0, kind="generated", num_rows=5, contents={})


def test_contents_settings_are_checked():
    ref = SourceRef(dataset="python-edu", ratio=1.0, contents={"store": "s3://swh/content/", "concurrency": 8})
    assert ref.contents.store == "s3://swh/content" and ref.contents.on_error == "skip"
    with pytest.raises(ValidationError, match=r"contents.store 'https://swh' must be an S3 prefix"):
        SourceRef(dataset="python-edu", ratio=1.0, contents={"store": "https://swh"})
    with pytest.raises(ValidationError, match=r"on_error"):
        SourceRef(dataset="python-edu", ratio=1.0, contents={"on_error": "ignore"})
    with pytest.raises(ValidationError, match=r"Extra inputs are not permitted"):
        SourceRef(dataset="python-edu", ratio=1.0, contents={"endpoint_url": "http://x"})


def test_unset_reading_options_leave_the_recipe_versions_alone():
    """Sections are versioned by their dump: a source without repo/config/contents dumps as it did before them."""
    plain = SourceRef(dataset="python-edu", ratio=1.0, path="/mirror")
    assert set(plain.model_dump(mode="json")) == {"dataset", "ratio", "kind", "path", "revision", "num_rows"}
    full = SourceRef(dataset="python-edu", ratio=1.0, repo="someone/mirror", config="default", contents={})
    assert SourceRef.model_validate(full.model_dump(mode="json")) == full


def test_repo_and_config_are_checked():
    with pytest.raises(ValidationError, match=r"`repo` is only for kind 'hub'"):
        SourceRef(dataset="python-edu", ratio=1.0, kind="local", path="/x", repo="someone/python-edu-text")
    with pytest.raises(ValidationError, match=r"`config` is not for kind 'generated'"):
        SourceRef(dataset="python-edu", ratio=1.0, kind="generated", num_rows=5, config="default")


# -- (b) a mirror that carries text --------------------------------------------------------------------------------
MIRROR_REPO = "someone/python-edu-with-text"


def mirror_of_another_repo(tmp_path: Path) -> Path:
    """A Hub-layout mirror root holding `someone/python-edu-with-text` (the registry's schema, text included),
    with the registry's config name; returns the root."""
    root = tmp_path / "hub-mirror"
    repo = write_hub_layout("python-edu", tmp_path / "staging", num_rows=ROWS, seed=SEED)
    (root / MIRROR_REPO).parent.mkdir(parents=True)
    repo.rename(root / MIRROR_REPO)
    return root


def test_a_hub_mirror_of_another_repo(tmp_path, python_edu_rows):
    root = mirror_of_another_repo(tmp_path)
    ref = SourceRef(dataset="python-edu", ratio=1.0, kind="hub", path=str(root), repo=MIRROR_REPO)
    rows = list(open_source(ref, seed=1))
    assert sorted(json.dumps(row, sort_keys=True) for row in rows) == sorted(
        json.dumps(row, sort_keys=True) for row in python_edu_rows
    )
    assert source_fingerprint(ref, 1) == folder_fingerprint(root / MIRROR_REPO)
    registry = SourceRef(dataset="python-edu", ratio=1.0, kind="hub", path=str(root))
    with pytest.raises(SourceError, match="does not exist"):  # the registry's repo is not in this mirror
        source_fingerprint(registry, 1)


def test_a_mirror_config_override(tmp_path):
    root = mirror_of_another_repo(tmp_path)
    ref = SourceRef(
        dataset="python-edu", ratio=1.0, kind="hub", path=str(root), repo=MIRROR_REPO, config="no-such-config"
    )
    with pytest.raises(SourceError, match=r"someone/python-edu-with-text.*could not be opened.*no-such-config"):
        open_source(ref, seed=1)
    other = ref.model_copy(update={"config": "python-edu"})
    assert len(list(open_source(other, seed=1))) == ROWS
    assert source_fingerprint(other, 1) != source_fingerprint(other.model_copy(update={"config": None}), 1)


def test_a_hub_repo_override_resolves_its_own_revision(monkeypatch):
    from huggingface_hub import HfApi

    asked = []

    def dataset_info(self, repo_id, revision=None):
        asked.append((repo_id, revision))
        return type("Info", (), {"sha": "c" * 40})()

    monkeypatch.setattr(HfApi, "dataset_info", dataset_info)
    ref = SourceRef(dataset="python-edu", ratio=1.0, repo=MIRROR_REPO, revision="main")
    assert source_fingerprint(ref, 1) == "c" * 40 and asked == [(MIRROR_REPO, "main")]


def test_a_local_folder_with_text(tmp_path, python_edu_rows):
    ref = text_source(tmp_path, python_edu_rows)
    rows = list(open_source(ref, seed=1))
    assert sorted(row["blob_id"] for row in rows) == sorted(row["blob_id"] for row in python_edu_rows)
    assert all(row["text"] for row in rows)
