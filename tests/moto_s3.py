"""A live S3 endpoint for tests: a moto server on 127.0.0.1 with one bucket, shared by the S3 test modules.

`tests/conftest.py` loads this module as a plugin, so any test can ask for `s3_server`; each test module gets its
own server (module scope), but moto keeps its buckets per process, so the modules of one session share them.
moto accepts any credentials; these distinctive ones are searched for in what the pipeline writes (`test_s3.py`).
"""

from __future__ import annotations

import pytest

REGION = "eu-west-1"  # not us-east-1: s3fs bucket creation there fails with InvalidLocationConstraint
BUCKET = "doge-s3-tests"
ACCESS_KEY = "AKIADOGETESTKEY4711XQ"
SECRET_KEY = "doge-s3-secret-9f3c1e7a5b2d4c6e8a0b"


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on 127.0.0.1 with one bucket; yields (endpoint URL, boto3 client)."""
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = boto3.client(
        "s3", endpoint_url=url, region_name=REGION, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY
    )
    try:
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass  # moto keeps its state per process: an earlier module's server already made the bucket
    yield url, client
    server.stop()


def store_options(endpoint: str, **extra) -> dict:
    """fsspec storage options of an `ArtifactStore` on the moto endpoint."""
    return {
        "key": ACCESS_KEY,
        "secret": SECRET_KEY,
        "client_kwargs": {"endpoint_url": endpoint, "region_name": REGION},
        **extra,
    }
