"""Continued pretraining from a Hub checkpoint, offline: `stages.pretrain.init_from: <org>/<name>` read through
`huggingface_hub`'s cache exactly as online (`models--<org>--<name>/snapshots/<sha>/`, `refs/main`) with
HF_HUB_OFFLINE=1. The resolved commit is an upstream of the model; a checkpoint of another architecture is
refused before launch, naming both.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dagster_dev import CHAIN_TEST_TIMEOUT_S
from helpers import (
    copy_artifacts,
    dagster_env,
    published_versions,
    read_manifest,
    run_cli_materialize,
    tail,
    write_tiny_recipe,
)
from hub_cache import offline_hub_env

from doge_dagster.artifacts import ArtifactStore

SHA = "89abcdef0123456789abcdef0123456789abcdef"
BASE_ID, WIDE_ID = "SmallDoge/Doge-tiny-base", "SmallDoge/Doge-tiny-wide"


def lay_out(cache: Path, repo_id: str, files: Path, config_edits: dict | None = None) -> None:
    """A checkpoint as `hf download` leaves it in the Hub cache (files straight in the snapshot)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / SHA
    shutil.copytree(files, snapshot, ignore=shutil.ignore_patterns("manifest.json", "stable", "*.png"))
    if config_edits:
        config = json.loads((snapshot / "config.json").read_text())
        (snapshot / "config.json").write_text(json.dumps({**config, **config_edits}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)


@pytest.fixture
def hub_setup(tiny_chain, tmp_path):
    """A store with the tiny data artifacts, a Hub cache holding the tiny base model under two ids (one with a
    wider hidden size in its config), and the CLI environment reading that cache offline."""
    store = ArtifactStore(str(tiny_chain.artifact_root))
    base = store.local_path(store.latest("doge_base", "tiny"))
    cache = tmp_path / "hf" / "hub"
    lay_out(cache, BASE_ID, base)
    lay_out(cache, WIDE_ID, base, {"hidden_size": 256})
    root = tmp_path / "artifacts"
    copy_artifacts(tiny_chain.artifact_root, root)
    return root, cache


def env_for(tmp_path: Path, root: Path, cache: Path, edits: dict) -> dict[str, str]:
    recipes = write_tiny_recipe(tmp_path / "recipes", edits)
    return {**dagster_env(tmp_path / "home", root, recipes), **offline_hub_env(cache)}


@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S)
def test_a_checkpoint_of_another_architecture_is_refused_before_launch(hub_setup, tmp_path):
    root, cache = hub_setup
    env = env_for(tmp_path, root, cache, {"stages.pretrain.init_from": WIDE_ID})
    completed = run_cli_materialize("doge_base", env, timeout=600, log_path=tmp_path / "refused.log")
    assert completed.returncode != 0
    assert f"stages.pretrain.init_from '{WIDE_ID}' (commit {SHA}) does not fit" in completed.stdout, tail(
        completed.stdout
    )
    assert "hidden_size: checkpoint 256, recipe model.hidden_size 128" in completed.stdout
    assert not (root / "doge_base").exists(), "refused before launch: no spec, no checkpoint, no lease left"

    missing = env_for(tmp_path / "b", root, cache, {"stages.pretrain.init_from": "SmallDoge/Doge-not-downloaded"})
    completed = run_cli_materialize("doge_base", missing, timeout=600)
    assert completed.returncode != 0 and "hf download SmallDoge/Doge-not-downloaded" in completed.stdout, tail(
        completed.stdout
    )


@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S)
def test_pretraining_continues_from_a_hub_checkpoint_and_records_its_commit(hub_setup, tmp_path):
    root, cache = hub_setup
    edits = {
        "stages.pretrain.init_from": BASE_ID,
        "stages.pretrain.training.max_steps": 12,
        # A trained model continued at the from-scratch rate (3e-3) first gets worse, failing "loss falling".
        "stages.pretrain.training.learning_rate": 3.0e-4,
        "stages.pretrain.training.logging_steps": 1,
        "stages.pretrain.training.lr_scheduler_kwargs": {"num_decay_steps": 2, "min_lr_ratio": 0.0},
    }
    env = env_for(tmp_path, root, cache, edits)
    completed = run_cli_materialize("doge_base", env, timeout=900, log_path=tmp_path / "continued.log")
    assert completed.returncode == 0, tail(completed.stdout)
    assert f"continued pretraining from {BASE_ID}" in completed.stdout
    [version] = published_versions(root, "doge_base")
    manifest = read_manifest(root, "doge_base", version)
    assert manifest["upstream"][f"hub_model:{BASE_ID}"] == SHA, manifest["upstream"]
    metadata = manifest["metadata"]
    stable_lr = 3.0e-4
    assert metadata["global_step"] == 12
    assert metadata["first_train_loss"] < 3.0, f"a trained checkpoint starts low: {metadata['first_train_loss']}"
    assert f"learning_rate {stable_lr:.4g}" in completed.stdout, "continued in the stable phase: no second warmup"
