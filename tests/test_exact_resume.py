"""Exact resume: a training run killed with SIGKILL at a random step and materialized again trains exactly what an
uninterrupted run of the same version trains (the same logged losses and bitwise the same weights on the same
CPU and thread count), and a checkpoint of another version (another mixture) is never resumed.

Every run goes through the CLI (`dagster asset materialize`) on a store holding copies of the upstream artifacts
of the session's `tiny_chain`, with a short schedule logging every step and saving a checkpoint every 2 steps.
The reference (uninterrupted) run of the same recipe is trained in the same test, on the same machine and
thread count, in a store of its own. Kill steps come from a random generator seeded with `KILL_SEED` and are
printed (pytest shows them with a failure, and they are in the assertion messages with the checkpoints each run
resumed from): the same seed picks the same steps again; how far past its step a kill lands depends on timing.

What a resume restores (transformers 5.24, TRL 1.16; see README, *Artifacts, versions, caching, resume*): the
weights, the optimizer and LR scheduler, the trainer state (step, `num_input_tokens_seen`, log history), the
RNG states (`rng_state.pth`, loaded once the skipped batches are drawn) and the data order (the seeded sampler's
permutation, the first `global_step x gradient_accumulation_steps` batches skipped). The runner's progress
callback starts its curves from the checkpoint's log history, so a resumed run publishes the whole curve.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import time
from pathlib import Path

import pytest
from dagster_dev import CHAIN_TEST_TIMEOUT_S
from helpers import (
    PROJECT_ROOT,
    cli_materialize_command,
    copy_artifacts,
    dagster_env,
    kill_group,
    planned_version,
    processes_mentioning,
    published_versions,
    read_manifest,
    run_cli_materialize,
    tail,
    tiny_raw,
    wait_for,
    write_tiny_recipe,
)

from doge_dagster.training.runner import last_complete_checkpoint

PARTITION = "tiny"
KILL_SEED = 20261130  # change it to kill at other steps; a failure prints the steps it killed at
SAVE_STEPS = 2
RUN_TIMEOUT_S = 900  # one materialization here: 10-40 s on an idle 2-core machine, 2-3 minutes on a busy one
# The session's chain may be built in this test's setup (pytest-timeout counts it), and one test runs 2-5
# materializations: 1-2 minutes on an idle 2-core machine, 5-9 on one shared with other jobs.
TEST_TIMEOUT_S = CHAIN_TEST_TIMEOUT_S + 2400
# The environment of every run here. Bitwise equality holds for one machine and one thread count, so every run
# gets the same one. One thread: on a 2-core machine shared with other jobs, a 2-thread trainer waits on its
# descheduled second thread at every op (measured: 36 pretraining steps in 12 s with one thread, 2 minutes with
# two, under the same load); the resumes are as exact with two threads (checked by hand with the default count).
# A killed run leaves its artifact's lease behind (doge_dagster/leases.py); the next run takes it over once it is
# stale: after 4 s here, not the default 90 s.
RUN_ENV = {"OMP_NUM_THREADS": "1", "DOGE_LEASE_TTL_S": "4", "DOGE_LEASE_REFRESH_S": "1", "DOGE_LEASE_POLL_S": "0.5"}

# Pretraining: 36 WSD steps, 10 of warmup and 10 of decay. A checkpoint at step N resumes with step N + 1,
# trained at the scheduler's LR for N: warmup for N < 10, stable for 10 <= N < 26, decay from 26 on.
PRETRAIN_STEPS, WARMUP, DECAY = 36, 10, 10
PRETRAIN_EDITS = {
    "stages.pretrain.training.max_steps": PRETRAIN_STEPS,
    "stages.pretrain.training.warmup_steps": WARMUP,
    "stages.pretrain.training.lr_scheduler_kwargs": {"num_decay_steps": DECAY, "min_lr_ratio": 0.0},
    "stages.pretrain.training.logging_steps": 1,
    "stages.pretrain.training.save_steps": SAVE_STEPS,
}
# Checkpoint steps that resume in each phase: (first, last).
PHASES = {
    "warmup": (SAVE_STEPS, WARMUP - 1),
    "stable": (WARMUP, PRETRAIN_STEPS - DECAY - 1),
    "decay": (PRETRAIN_STEPS - DECAY, PRETRAIN_STEPS - 1),
}


def short_stage(stage: str, steps: int) -> dict:
    """Recipe edits: `steps` optimizer steps of `stage`, every step logged, a checkpoint every SAVE_STEPS."""
    training = f"stages.{stage}.training"
    return {f"{training}.max_steps": steps, f"{training}.logging_steps": 1, f"{training}.save_steps": SAVE_STEPS}


def kill_steps(name: str, ranges: list[tuple[int, int]]) -> list[int]:
    """One seeded random step in each (first, last) range, printed so that a failure shows them."""
    generator = random.Random(f"{KILL_SEED}:{name}")
    steps = [generator.randint(first, last) for first, last in ranges]
    print(f"{name}: killing after the checkpoints at or past steps {steps} (KILL_SEED={KILL_SEED})")
    return steps


def store_with(tiny_chain, folder: Path, assets: tuple[str, ...]) -> Path:
    """A new artifact root at `folder` holding copies of the chain's published `assets`."""
    root = folder / "artifacts"
    copy_artifacts(tiny_chain.artifact_root, root, assets)
    return root


def work_folder(root: Path, asset: str, version: str) -> Path:
    """The version's work folder (launch spec, checkpoints) in the store at `root`."""
    return root / asset / PARTITION / ".work" / version


def checkpoint_step(work: Path) -> int:
    """The step of the newest complete checkpoint in the version's work folder (0: none)."""
    checkpoint = last_complete_checkpoint(work / "checkpoints")
    return int(checkpoint.name.split("-")[1]) if checkpoint else 0


def materialize_and_kill(asset: str, env: dict[str, str], root: Path, version: str, after: int, log: Path) -> int:
    """Materialize `asset` through the CLI and SIGKILL its process group as soon as a complete checkpoint at step
    `after` or later exists; returns the step of the newest complete checkpoint left (where a resume starts)."""
    work = work_folder(root, asset, version)
    with open(log, "w") as out:
        process = subprocess.Popen(
            cli_materialize_command(asset), cwd=PROJECT_ROOT, env=env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while checkpoint_step(work) < after:
            assert process.poll() is None, (
                f"{asset} ended before a checkpoint at step {after}:\n{tail(log.read_text())}"
            )
            assert time.monotonic() < deadline, f"no {asset} checkpoint at step {after}:\n{tail(log.read_text())}"
            time.sleep(0.02)
    finally:
        kill_group(process.pid)
        process.wait(timeout=30)
    # The trainers die with their launcher (PR_SET_PDEATHSIG): wait for it before reading where the kill left them.
    wait_for(lambda: processes_mentioning(str(work)) == [], 60, f"the killed {asset} run's trainers to die")
    assert published_versions(root, asset) == [], f"{asset} was published before the kill: raise `after`"
    return checkpoint_step(work)


def assert_resumed_from(output: str, asset: str, version: str, step: int) -> None:
    """The run's output says it resumed `asset` of `version` from checkpoint-`step`."""
    line = f"{asset}[{PARTITION}] version {version}: "
    lines = [text for text in output.splitlines() if line in text and "parameters" in text]
    assert lines and lines[0].endswith(f"resuming from checkpoint-{step}"), (
        f"{asset} should resume from checkpoint-{step}: {lines}\n{tail(output)}"
    )


def max_difference(weights: dict, reference: dict) -> float:
    """The largest absolute difference between two state dicts with the same tensor names."""
    return max(((weights[name] - reference[name]).abs().max().item() for name in reference), default=0.0)


def assert_same_training(resumed: Path, reference: Path, asset: str, version: str, what: str) -> None:
    """The published `asset` of `version` in two stores: the same logged losses (and rewards), the same step and
    token counts, and bitwise the same tensors in every `model.safetensors` (the WSD stable snapshot included)."""
    from safetensors.torch import load_file

    ours = read_manifest(resumed, asset, version)["metadata"]
    theirs = read_manifest(reference, asset, version)["metadata"]
    for key in ("global_step", "tokens_seen"):
        assert ours[key] == theirs[key], f"{what}: {key} {ours[key]} != {theirs[key]} uninterrupted"
    steps = [step for step, _ in theirs["train_loss_curve"]]
    assert steps == list(range(1, theirs["global_step"] + 1)), f"the reference should log every step: {steps}"
    for key in ("train_loss_curve", "reward_curve", "reward_curves"):  # the rewards: GRPO's
        mine, other = (points(metadata.get(key)) for metadata in (ours, theirs))
        differing = [(a, b) for a, b in zip(mine, other) if a != b]
        assert mine == other, (
            f"{what}: {key} differs from the uninterrupted run's; (resumed, uninterrupted) at the first differing "
            f"points: {differing[:5]}; {len(mine)} and {len(other)} points"
        )
    folders = [root / asset / PARTITION / version for root in (resumed, reference)]
    files = sorted(path.relative_to(folders[1]) for path in folders[1].rglob("model.safetensors"))
    assert files, f"no model.safetensors in {folders[1]}"
    for file in files:
        weights, uninterrupted = (load_file(str(folder / file)) for folder in folders)
        assert weights.keys() == uninterrupted.keys(), f"{what}: {file} holds other tensors"
        differing = sorted(name for name in uninterrupted if not weights[name].equal(uninterrupted[name]))
        assert not differing, (
            f"{what}: {file} differs from the uninterrupted run's: max absolute difference "
            f"{max_difference(weights, uninterrupted):.3g}, in {len(differing)} of {len(weights)} tensors "
            f"({differing[:5]})"
        )


def points(curve: list | dict | None) -> list:
    """A manifest's curve as a list of points (a dict of named curves: (name, curve) pairs)."""
    return sorted(curve.items()) if isinstance(curve, dict) else list(curve or [])


def killed_and_resumed(
    asset: str, env: dict[str, str], root: Path, version: str, kills: list[int], folder: Path
) -> list[int]:
    """Kill the materialization of `asset` after a checkpoint at or past each step of `kills` in turn (each
    launch but the first resuming the previous one's last checkpoint), then materialize it to the end; returns
    the steps each launch resumed from."""
    resumed_from = [0]
    for number, after in enumerate(kills):
        log = folder / f"killed-{number}.log"
        left = materialize_and_kill(asset, env, root, version, after, log)
        if resumed_from[-1]:
            assert_resumed_from(log.read_text(), asset, version, resumed_from[-1])
        assert left >= after, f"the kill after step {after} left checkpoint-{left}"
        resumed_from.append(left)
    completed = run_cli_materialize(asset, env, RUN_TIMEOUT_S, log_path=folder / "resumed.log")
    assert completed.returncode == 0, f"resuming {asset} failed:\n{tail(completed.stdout, 80)}"
    assert_resumed_from(completed.stdout, asset, version, resumed_from[-1])
    assert published_versions(root, asset) == [version]
    assert read_manifest(root, asset, version)["metadata"]["resumed_from_step"] == resumed_from[-1]
    assert not (work_folder(root, asset, version) / "checkpoints").exists(), "checkpoints should go once published"
    return resumed_from[1:]


def uninterrupted(asset: str, env: dict[str, str], root: Path, version: str, log: Path) -> None:
    """Materialize `asset` of `version` from step 0 to the end, the reference a resumed run must equal."""
    completed = run_cli_materialize(asset, env, RUN_TIMEOUT_S, log_path=log)
    assert completed.returncode == 0, f"the uninterrupted {asset} run failed:\n{tail(completed.stdout, 80)}"
    assert published_versions(root, asset) == [version]
    assert read_manifest(root, asset, version)["metadata"]["resumed_from_step"] == 0


def stage_test(tiny_chain, tmp_path: Path, asset: str, edits: dict, upstream: tuple[str, ...], kills: list[int]):
    """Train `asset` with `edits` uninterrupted and killed after `kills`; returns the two stores and the version."""
    version = planned_version(asset, edits)
    recipes = write_tiny_recipe(tmp_path / "recipes", edits)
    roots = {}
    for name in ("uninterrupted", "resumed"):
        roots[name] = store_with(tiny_chain, tmp_path / name, upstream)
    env = {name: dagster_env(tmp_path / name / "home", root, recipes, **RUN_ENV) for name, root in roots.items()}
    uninterrupted(asset, env["uninterrupted"], roots["uninterrupted"], version, tmp_path / "uninterrupted.log")
    resumed_from = killed_and_resumed(asset, env["resumed"], roots["resumed"], version, kills, tmp_path)
    return roots, version, resumed_from


# -- the published curves of a resumed run start from the checkpoint's log history --------------------------------
def test_a_resumed_progress_callback_starts_its_curves_from_the_checkpoints_log_history():
    """The progress callback of a trainer resumed from a checkpoint holds the points logged before it (the state's
    `log_history`, read from `trainer_state.json`); a trainer starting at step 0 (a fresh state, e.g. an
    out-of-memory backoff without a checkpoint) drops the points of the attempt before."""
    from transformers import TrainerState

    from doge_dagster.training.progress import progress_callback

    class Reporter:
        def info(self, message: str) -> None:
            pass

    history = [
        {"loss": 2.5, "reward": 0.5, "rewards/format_reward/mean": 0.25, "learning_rate": 1e-3, "step": 1},
        {"eval_loss": 2.4, "step": 2},
        {"loss": 2.0, "reward": 0.75, "rewards/format_reward/mean": 0.5, "step": 2},
    ]
    callback = progress_callback(Reporter())
    callback.on_train_begin(None, TrainerState(global_step=2, log_history=history), None)
    assert callback.curve == [(1, 2.5), (2, 2.0)]
    assert callback.eval_losses == [(2, 2.4)]
    assert callback.rewards == [(1, 0.5), (2, 0.75)]
    assert callback.reward_parts == {"format_reward": [(1, 0.25), (2, 0.5)]}
    callback.on_log(None, TrainerState(global_step=3, max_steps=4), None, logs={"loss": 1.5})
    assert callback.curve == [(1, 2.5), (2, 2.0), (3, 1.5)]

    callback.on_train_begin(None, TrainerState(global_step=0), None)
    assert (callback.curve, callback.eval_losses, callback.rewards, callback.reward_parts) == ([], [], [], {})


# -- pretraining: one run killed in the warmup, the stable phase and the decay ------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_pretraining_killed_in_each_wsd_phase_trains_what_an_uninterrupted_run_trains(tiny_chain, tmp_path):
    """36 steps of pretraining killed three times, after a seeded random checkpoint in the warmup, in the stable
    phase and in the decay, resumed each time: the losses of every step and every weight (the stable-phase snapshot
    too) equal an uninterrupted run's."""
    # Kill early enough in each phase that one more checkpoint before the kill lands still leaves it there.
    ranges = [(first, last - 2 * SAVE_STEPS) for first, last in PHASES.values()]
    kills = kill_steps("pretrain", ranges)
    roots, version, resumed_from = stage_test(
        tiny_chain, tmp_path, "doge_base", PRETRAIN_EDITS, ("tokenizer", "pretrain_mixture"), kills
    )
    for (phase, (first, last)), step in zip(PHASES.items(), resumed_from, strict=True):
        assert first <= step <= last, f"the kill meant for the {phase} left checkpoint-{step} (kills {kills})"
    what = f"doge_base killed after steps {kills}, resumed from {resumed_from} (KILL_SEED={KILL_SEED})"
    assert_same_training(roots["resumed"], roots["uninterrupted"], "doge_base", version, what)


# -- the chat stages: SFT, DPO, GRPO, each killed once -----------------------------------------------------------
CHAT_STAGES = {
    # asset: (stage, steps, upstream artifacts from the chain)
    "doge_instruct_sft": ("sft", 20, ("tokenizer", "sft_mixture", "doge_base")),
    "doge_instruct": ("dpo", 16, ("tokenizer", "dpo_mixture", "doge_instruct_sft")),
    "doge_reason": ("grpo", 12, ("tokenizer", "grpo_mixture", "doge_reason_distill")),
}


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT_S)
@pytest.mark.parametrize("asset", list(CHAT_STAGES))
def test_chat_stage_killed_at_a_random_step_trains_what_an_uninterrupted_run_trains(tiny_chain, tmp_path, asset):
    """SFT, DPO and GRPO (a few steps each, from the chain's parent model) killed after a seeded random checkpoint
    and resumed: the losses of every step, GRPO's rewards (its sampled completions are the same) and every weight
    equal an uninterrupted run's."""
    stage, steps, upstream = CHAT_STAGES[asset]
    kills = kill_steps(stage, [(SAVE_STEPS, steps - 2 * SAVE_STEPS)])
    roots, version, resumed_from = stage_test(tiny_chain, tmp_path, asset, short_stage(stage, steps), upstream, kills)
    what = f"{asset} killed after step {kills[0]}, resumed from {resumed_from[0]} (KILL_SEED={KILL_SEED})"
    assert_same_training(roots["resumed"], roots["uninterrupted"], asset, version, what)


# -- a checkpoint of another version is never resumed -------------------------------------------------------------
def file_digests(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file and folder under `folder`: its sha256 (folders: "dir") and modification time."""
    return {
        str(path.relative_to(folder)): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir",
            path.stat().st_mtime_ns,
        )
        for path in sorted(folder.rglob("*"))
    }


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_a_changed_mixture_starts_a_new_version_from_step_0_and_leaves_the_old_checkpoints_alone(tiny_chain, tmp_path):
    """A pretraining run killed after a checkpoint, then the recipe's mixture seed changed: the next materialization
    plans a new version, starts it at step 0, and leaves the old version's work folder (its checkpoints) as it was."""
    edits = {**PRETRAIN_EDITS, "stages.pretrain.training.max_steps": 12, "stages.pretrain.training.warmup_steps": 2,
             "stages.pretrain.training.lr_scheduler_kwargs": {"num_decay_steps": 2, "min_lr_ratio": 0.0}}  # fmt: skip
    root = store_with(tiny_chain, tmp_path, ("tokenizer", "pretrain_mixture"))
    home = tmp_path / "home"
    old = planned_version("doge_base", edits)
    env = dagster_env(home, root, write_tiny_recipe(tmp_path / "recipes", edits), **RUN_ENV)
    left = materialize_and_kill("doge_base", env, root, old, SAVE_STEPS, tmp_path / "killed.log")
    assert left >= SAVE_STEPS
    old_work = work_folder(root, "doge_base", old)
    before = file_digests(old_work)
    assert any(name.endswith("trainer_state.json") for name in before), f"no checkpoint to resume: {sorted(before)}"

    changed = {**edits, "mixtures.pretrain.seed": int(tiny_raw()["mixtures"]["pretrain"]["seed"]) + 1}
    new = planned_version("doge_base", changed)
    assert new != old, "a mixture with another seed must make doge_base another version"
    assert planned_version("pretrain_mixture", changed) != planned_version("pretrain_mixture", edits)
    env = dagster_env(home, root, write_tiny_recipe(tmp_path / "changed-recipes", changed), **RUN_ENV)
    # The seed also generates the mixture's source rows, which the tokenizer is trained on: both are new too.
    selection = "tokenizer,pretrain_mixture,doge_base"
    completed = run_cli_materialize(selection, env, RUN_TIMEOUT_S, log_path=tmp_path / "new.log")
    assert completed.returncode == 0, f"the changed mixture's run failed:\n{tail(completed.stdout, 80)}"
    started = [line for line in completed.stdout.splitlines() if f"doge_base[{PARTITION}] version " in line]
    assert any(f"version {new}: " in line and line.endswith("starting at step 0") for line in started), started
    assert "resuming from" not in completed.stdout, "a checkpoint of another version was resumed"
    assert published_versions(root, "doge_base") == [new]
    assert read_manifest(root, "doge_base", new)["metadata"]["resumed_from_step"] == 0
    assert file_digests(old_work) == before, f"the old version's work folder {old_work} changed"
