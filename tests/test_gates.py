"""Gates across runs (pure logic on a local store) and the GRPO learning check.

End to end (a real GRPO run with zeroed rewards, then a later run refused on it): `test_gates_end_to_end.py`.
"""

from __future__ import annotations

import time

from doge_dagster.artifacts import ArtifactStore
from doge_dagster.gates import checks_record, failed_gates, override_allowed, refusal_message
from doge_dagster.model_checks import TrainedModel, reward_improves


def publish(store: ArtifactStore, asset: str, version: str, upstream=None, passed: bool = True):
    staged = store.staging_dir(asset, "tiny", version)
    (staged / "weights.bin").write_bytes(b"0")
    manifest = store.publish(asset, "tiny", version, staged, upstream or {},
                             checks_record({"loss_finite_and_falling": (passed, "loss 2.0 -> 1.0" if passed else "loss 2.0 -> 3.0")}))  # fmt: skip
    time.sleep(0.01)
    return manifest


def test_a_failed_check_anywhere_up_the_recorded_lineage_is_found_with_its_path(tmp_path):
    store = ArtifactStore(str(tmp_path))
    publish(store, "tokenizer", "t" * 16)
    base = publish(store, "doge_base", "b" * 16, {"tokenizer": "t" * 16, "source_x": "s" * 16}, passed=False)
    sft = publish(store, "doge_instruct_sft", "s" * 16, {"doge_base": base.version, "tokenizer": "t" * 16})
    assert sft.metadata["gate"] == "passed" and base.metadata["gate"] == "failed"

    failures = failed_gates(store, "tiny", {"doge_instruct_sft": sft})

    assert [(failure.asset, failure.version) for failure in failures] == [("doge_base", "b" * 16)]
    text = refusal_message("doge_instruct", "tiny", failures)
    assert "doge_base version bbbbbbbbbbbbbbbb failed loss_finite_and_falling (loss 2.0 -> 3.0)" in text
    assert "via doge_instruct_sft <- doge_base" in text and "doge/allow-failed-gates=true" in text


def test_a_clean_lineage_has_no_failed_gates_and_the_override_needs_an_explicit_true(tmp_path):
    store = ArtifactStore(str(tmp_path))
    base = publish(store, "doge_base", "b" * 16)
    assert failed_gates(store, "tiny", {"doge_base": base}) == []
    assert override_allowed({"doge/allow-failed-gates": "true"})
    assert not override_allowed({"doge/allow-failed-gates": "yes please"}) and not override_allowed({})


def trained_with(rewards: dict[str, list[float]]) -> TrainedModel:
    curves = {name: list(enumerate(values, start=1)) for name, values in rewards.items()}
    return TrainedModel(folder=None, tokenizer=None, curve=[], vocab_size=0, rewards=curves)


def test_zeroed_rewards_fail_the_grpo_learning_check():
    passed, detail = reward_improves(
        trained_with({"reward": [0.0] * 6, "accuracy_reward": [0.0] * 6, "format_reward": [0.0] * 6})
    )
    assert not passed and "no improvement" in detail and "not at its ceiling" in detail, detail


def test_a_rising_format_reward_passes_and_a_falling_one_does_not():
    rising = {
        "reward": [0.2, 0.2, 0.3, 0.5, 0.6, 0.6],
        "accuracy_reward": [0.1] * 6,
        "format_reward": [0.1, 0.1, 0.2, 0.4, 0.5, 0.5],
    }
    assert reward_improves(trained_with(rising))[0]
    falling = {name: list(reversed(values)) for name, values in rising.items()}
    assert not reward_improves(trained_with(falling))[0]


def test_a_format_reward_at_its_ceiling_from_the_start_passes_and_a_single_log_does_not():
    saturated = {
        "reward": [1.97, 1.96, 1.97, 1.96],
        "accuracy_reward": [0.98, 0.97, 0.98, 0.97],
        "format_reward": [0.99] * 4,
    }
    passed, detail = reward_improves(trained_with(saturated))
    assert passed and "ceiling" in detail, detail
    assert not reward_improves(trained_with({"reward": [1.0]}))[0]
