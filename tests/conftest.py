"""Session fixtures shared by several test modules (a fixture defined here is computed once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster_dev import TinyChain, tiny_chain_session

pytest_plugins = ["forbid_skips", "pytester"]


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
    return tiny_chain_session(tmp_path_factory.mktemp("tiny-chain"))
