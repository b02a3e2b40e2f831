"""Session fixtures shared by several test modules (a fixture defined here is computed once per session)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from dagster_dev import TinyChain, tiny_chain_session

# Development only (CI never sets it): a folder where the tiny chain is built once and copied from in later
# sessions, so iterating on one test does not retrain the chain each time. Delete the folder after changing code.
REUSE_CHAIN_ENV = "DOGE_TEST_REUSE_TINY_CHAIN"

pytest_plugins = ["forbid_skips", "pytester", "moto_s3"]  # moto_s3: the `s3_server` fixture


@pytest.fixture(scope="session")
def torch_extensions_dir(tmp_path_factory) -> Path:
    """One JIT cache for the session: DeepSpeed on CPU builds its shm comm op once (g++/ninja, 40 s or more)."""
    return tmp_path_factory.mktemp("torch-extensions")


@pytest.fixture(scope="session")
def tiny_chain(tmp_path_factory) -> TinyChain:
    """The whole tiny graph materialized once with the README quick-start command (a few minutes).

    Its artifact store and DAGSTER_HOME are shared read-mostly: tests that add runs or artifacts of other
    versions use copies of the home (see `test_unsynced.py`), never edit what is there.
    """
    target = tmp_path_factory.mktemp("tiny-chain")
    reuse = os.environ.get(REUSE_CHAIN_ENV)
    if not reuse:
        return tiny_chain_session(target)
    built = Path(reuse)
    if not (built / "output.log").is_file():
        shutil.rmtree(built, ignore_errors=True)
        chain = tiny_chain_session(built)
        (built / "output.log").write_text(chain.output)
    shutil.copytree(built / "dagster_home", target / "dagster_home")
    shutil.copytree(built / "artifacts", target / "artifacts")
    output = (built / "output.log").read_text()
    return TinyChain(target / "dagster_home", target / "artifacts", [], output, 0.0)
