"""Terminating a run from the UI stops its training processes and publishes nothing.

`dagster dev` runs the `pretrain` job for tiny (pretraining made long by a recipe edit, so it is surely
still training); once the trainer's first progress line is in the run log, the test sends the UI's
`terminateRun` mutation. The run must end CANCELED, every process of the launch (`accelerate launch` and
the trainer) must be gone, and doge_base must have no published version.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster_dev import CHAIN_TEST_TIMEOUT_S, processes_with_env, start_dagster_dev
from helpers import copy_artifacts, processes_mentioning, published_versions, wait_for, write_tiny_recipe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S)]


def launched_processes(dagster_home: Path) -> set[int]:
    """Live processes of this server whose command line is a training launch."""
    return set(processes_with_env(f"DAGSTER_HOME={dagster_home}")) & set(processes_mentioning("doge_dagster.training"))


def test_terminating_a_training_run_from_the_ui_stops_the_training_processes(tiny_chain, tmp_path):
    root = tmp_path / "artifacts"
    copy_artifacts(tiny_chain.artifact_root, root, ("tokenizer", "pretrain_mixture"))
    recipes = write_tiny_recipe(tmp_path / "recipes", {"stages.pretrain.training.max_steps": 20000})
    with start_dagster_dev(tmp_path / "dev", artifact_root=root, recipes_dir=recipes) as server:
        home = server.dagster_home
        run_id = server.client().submit_job_execution("pretrain", tags={"dagster/partition": "tiny"})
        wait_for(
            lambda: any(message.startswith("step ") for message in server.run_messages(run_id)),
            600, "the trainer's first progress line",
        )  # fmt: skip
        assert launched_processes(home), "no training process is running"
        server.terminate_run(run_id)
        assert server.wait_for_run(run_id, timeout=180) == "CANCELED", server.log_tail()
        wait_for(lambda: not launched_processes(home), 30, "the training processes to stop after the terminated run")
        assert any("stopping the launched process group" in message for message in server.run_messages(run_id))
    assert published_versions(root, "doge_base") == []
