"""Gates across runs, end to end: a GRPO run whose rewards carry no signal fails `reward_improves`, and a later
run that selects only the report on that model is refused before anything is launched, unless it carries the
override tag, which the new report's manifest then records.
"""

from __future__ import annotations

import pytest
from dagster_dev import CHAIN_TEST_TIMEOUT_S
from helpers import (
    cli_job_execute_command,
    dagster_env,
    planned_version,
    published_versions,
    read_manifest,
    run_cli_materialize,
    run_command,
    tail,
    write_tiny_recipe,
)

# A shorter GRPO (a new doge_reason version, so the chain's own is not reused), logging often enough to compare.
EDITS = {"stages.grpo.training.max_steps": 8, "stages.grpo.training.logging_steps": 2}


@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S)
def test_a_model_that_failed_its_gate_is_not_built_on_in_a_later_run(tiny_chain, tmp_path):
    root = tiny_chain.copy_store(tmp_path / "store")
    recipes = write_tiny_recipe(tmp_path / "recipes", EDITS)
    env = dagster_env(tmp_path / "home", root, recipes)
    reason, report = planned_version("doge_reason", EDITS), planned_version("reason_eval", EDITS)

    zeroed = run_cli_materialize("doge_reason", {**env, "DOGE_FAULT_ZERO_REWARDS": "1"}, timeout=900,
                                 log_path=tmp_path / "zeroed-grpo.log")  # fmt: skip
    metadata = read_manifest(root, "doge_reason", reason)["metadata"]
    passed, detail = metadata["checks"]["reward_improves"]
    assert not passed and "reward 0.000 -> 0.000" in detail, (detail, tail(zeroed.stdout))
    assert metadata["gate"] == "failed"

    refused = run_cli_materialize("reason_eval", env, timeout=600, log_path=tmp_path / "refused.log")
    assert refused.returncode != 0, tail(refused.stdout)
    assert "refusing to build reason_eval[tiny]" in refused.stdout, tail(refused.stdout)
    assert f"doge_reason version {reason} failed reward_improves" in refused.stdout, tail(refused.stdout)
    assert "doge/allow-failed-gates=true" in refused.stdout
    assert published_versions(root, "reason_eval") == published_versions(tiny_chain.artifact_root, "reason_eval")
    assert not (root / "reason_eval" / "tiny" / ".work" / report).exists(), "nothing may be launched"

    tags = {"dagster/partition": "tiny", "doge/allow-failed-gates": "true"}
    allowed = run_command(cli_job_execute_command("evaluation", tags), env, 900, log_path=tmp_path / "allowed.log")
    assert allowed.returncode == 0, tail(allowed.stdout)
    assert "building anyway (doge/allow-failed-gates=true)" in allowed.stdout
    override = read_manifest(root, "reason_eval", report)["metadata"]["gate_override"]
    assert override == [{"asset": "doge_reason", "version": reason, "checks": ["reward_improves"]}], override
