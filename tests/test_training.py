"""Training stages end to end, through the user's paths: `dagster asset materialize` and `dg.materialize`.

Every test runs Dagster in a subprocess (recipes are read from DOGE_RECIPES_DIR at import time). Tests of
one stage run on their own artifact root holding a copy of the data assets, materialized once per session
(edited recipes keep the data sections of `tiny`, so the data versions still match). Tests of the whole
chain use the session's shared `tiny_chain` (conftest: the README quick-start on the shipped recipe) and
work on copies of its store and instance when they add runs or artifacts.
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from dagster_dev import CHAIN_TEST_TIMEOUT_S, DOGE_DAGSTER
from helpers import (
    DATA_ASSETS,
    MODEL_ASSETS,
    cli_job_execute_command,
    cli_materialize_command,
    copy_artifacts,
    dagster_env,
    dg_materialize,
    kill_group,
    planned_version,
    processes_in_group,
    processes_mentioning,
    published_versions,
    read_manifest,
    run_cli_materialize,
    run_command,
    tail,
    tiny_recipe,
    wait_for,
    write_tiny_recipe,
)

from doge_dagster.recipes import OVERRIDE_TAG_PREFIX

PARTITION = "tiny"
CHAT_MODELS = MODEL_ASSETS[1:]


def short_schedule(steps: int, logging_steps: int, save_steps: int = 1000) -> dict:
    """Pretraining edits: `steps` WSD steps with short warmup and decay."""
    return {
        "stages.pretrain.training.max_steps": steps,
        "stages.pretrain.training.logging_steps": logging_steps,
        "stages.pretrain.training.save_steps": save_steps,
        "stages.pretrain.training.warmup_steps": max(1, steps // 10),
        "stages.pretrain.training.lr_scheduler_kwargs": {"num_decay_steps": max(1, steps // 10), "min_lr_ratio": 0.0},
    }


def assert_success(completed: subprocess.CompletedProcess, what: str) -> None:
    assert completed.returncode == 0, f"{what} failed (rc {completed.returncode}):\n{tail(completed.stdout, 80)}"


def instance_at(home: Path):
    import dagster as dg

    return dg.DagsterInstance.from_config(str(home))


def latest_run_logs(home: Path, step: str) -> list[str]:
    """User log messages of `step` in the newest run of the instance at `home`."""
    with instance_at(home) as instance:
        run = instance.get_runs(limit=1)[0]
        return [
            entry.user_message
            for entry in instance.all_logs(run.run_id)
            if entry.step_key == step and not entry.is_dagster_event
        ]


def latest_materialization(home: Path, asset: str):
    """(run id, metadata values) of the asset's newest materialization."""
    import dagster as dg

    with instance_at(home) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        assert event is not None, f"no materialization of {asset} in {home}"
        return event.run_id, {key: value.value for key, value in event.asset_materialization.metadata.items()}


def no_work_started(root: Path, asset: str) -> list[Path]:
    """Anything a launch would have left for `asset`: its work folders (spec, checkpoints)."""
    work = root / asset / PARTITION / ".work"
    return sorted(work.rglob("*")) if work.exists() else []


# -- session fixtures (and `torch_extensions_dir` from conftest) --------------------------------------------------
@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """The tiny recipe's tokenizer and five mixtures, materialized once through the CLI."""
    base = tmp_path_factory.mktemp("data")
    root = base / "artifacts"
    env = dagster_env(base / "dagster-home", root)
    completed = run_cli_materialize(",".join(DATA_ASSETS), env, timeout=600, log_path=base / "materialize.log")
    assert_success(completed, "materializing the data assets")
    missing = [asset for asset in DATA_ASSETS if not published_versions(root, asset)]
    assert not missing, f"data assets not published: {missing}"
    return root


def fresh_root(data_root: Path, folder: Path) -> Path:
    """A new artifact root holding a copy of the session's data artifacts."""
    root = folder / "artifacts"
    copy_artifacts(data_root, root)
    return root


# -- a. bad launch input fails before launch --------------------------------------------------------------------
def test_missing_upstream_fails_naming_what_to_materialize_first(tmp_path):
    root = tmp_path / "empty-artifacts"
    result = dg_materialize("doge_instruct_sft", dagster_env(tmp_path / "home", root))
    assert not result["success"], "materializing doge_instruct_sft on an empty artifact root must fail"
    [failure] = result["failures"]
    text = failure["error"] + failure["description"]
    assert "materialize doge_base for partition tiny first" in text, text
    assert "doge_base[tiny]" in text, text
    assert result["launches"] == 0, "no training process may start without its upstream"
    assert not root.exists() or not list(root.rglob("manifest.json")), "nothing may be published"
    assert no_work_started(root, "doge_instruct_sft") == []


@pytest.mark.slow
def test_unknown_accelerate_config_fails_before_launch(data_root, tmp_path):
    root = fresh_root(data_root, tmp_path)
    recipes = write_tiny_recipe(tmp_path / "recipes", {"stages.pretrain.launch.accelerate_config": "cpu_zero7"})
    result = dg_materialize("doge_base", dagster_env(tmp_path / "home", root, recipes))
    assert not result["success"]
    [failure] = result["failures"]
    assert failure["step"] == "doge_base"
    text = failure["description"]
    assert "stages.pretrain.launch.accelerate_config" in text and "'cpu_zero7'" in text, text
    for known in ("cpu", "cpu_ddp", "cpu_zero2"):
        assert known in text, f"the message should list the known config {known!r}: {text}"
    assert result["launches"] == 0, "the stage was launched despite the bad accelerate config"
    assert published_versions(root, "doge_base") == []
    assert no_work_started(root, "doge_base") == [], "a launch spec or checkpoint folder was written"


# -- b. resume after SIGKILL ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_killed_pretraining_resumes_from_its_last_checkpoint(data_root, tmp_path):
    edits = short_schedule(60, 10, save_steps=20)
    root = fresh_root(data_root, tmp_path)
    env = dagster_env(tmp_path / "home", root, write_tiny_recipe(tmp_path / "recipes", edits))
    version = planned_version("doge_base", edits)
    work = root / "doge_base" / PARTITION / ".work" / version
    checkpoint_state = work / "checkpoints" / "checkpoint-20" / "trainer_state.json"

    log = tmp_path / "killed-run.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            cli_materialize_command("doge_base"), cwd=Path(__file__).resolve().parents[1], env=env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not checkpoint_state.is_file():
            assert process.poll() is None, f"the run ended before checkpoint-20 was written:\n{tail(log.read_text())}"
            assert time.monotonic() < deadline, f"no checkpoint-20 after 600 s:\n{tail(log.read_text())}"
            time.sleep(0.05)
        assert published_versions(root, "doge_base") == [], "the run finished before it could be killed"
    finally:
        kill_group(process.pid)
        process.wait(timeout=30)
    assert processes_in_group(process.pid) == [], "processes of the killed run survived the SIGKILL of its group"
    # The launch runs in a group of its own (so a terminated run can stop it): it must die with its parent.
    wait_for(lambda: processes_mentioning(str(work)) == [], 30, "the killed run's training processes to die with it")
    assert published_versions(root, "doge_base") == [], "a killed run must not publish a manifest"
    assert not (root / "doge_base" / PARTITION / version / "manifest.json").exists()

    completed = run_cli_materialize("doge_base", env, timeout=900, log_path=tmp_path / "resumed-run.log")
    assert_success(completed, "re-materializing doge_base after the kill")
    assert published_versions(root, "doge_base") == [version], "exactly one complete doge_base version expected"
    metadata = read_manifest(root, "doge_base", version)["metadata"]
    assert metadata["resumed_from_step"] >= 20, f"did not resume: resumed_from_step={metadata['resumed_from_step']}"
    assert metadata["global_step"] == 60, metadata["global_step"]
    assert all(passed for passed, _ in metadata["checks"].values()), metadata["checks"]
    assert re.search(r"resuming from checkpoint-(\d+)", completed.stdout), "the resumed run should log its resume point"
    assert not (work / "checkpoints").exists(), "checkpoints of a published version should be cleaned up"
    _, materialized = latest_materialization(tmp_path / "home", "doge_base")
    assert materialized["resumed_from_step"] == metadata["resumed_from_step"] and materialized["cached"] is False


# -- b2. continued pretraining, the way the retraining schedule runs it ------------------------------------------
LR_AT_STEP = re.compile(r"doge_base - step (\d+)/\d+ \| loss [^|]+\| learning_rate ([0-9.e+-]+)")


def first_logged_lr(output: str) -> tuple[int, float]:
    match = LR_AT_STEP.search(output)
    assert match, f"no progress line with a learning rate:\n{tail(output)}"
    return int(match[1]), float(match[2])


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_continued_pretraining_starts_from_the_stable_snapshot_at_the_stable_lr(data_root, tmp_path):
    edits = {**short_schedule(30, 1), "stages.pretrain.training.warmup_steps": 10}
    stable_lr = float(tiny_recipe().stages.pretrain.training["learning_rate"])
    root = fresh_root(data_root, tmp_path)
    env = dagster_env(tmp_path / "home", root, write_tiny_recipe(tmp_path / "recipes", edits))

    scratch = run_cli_materialize("doge_base", env, timeout=900, log_path=tmp_path / "scratch.log")
    assert_success(scratch, "pretraining from scratch")
    [base] = published_versions(root, "doge_base")
    assert (root / "doge_base" / PARTITION / base / "stable" / "config.json").is_file(), "no stable-phase snapshot"
    step, lr = first_logged_lr(scratch.stdout)
    assert step == 1 and lr < stable_lr / 2, f"from scratch, step 1 is in the warmup: lr {lr}"

    # What a tick of `retrain_schedule` launches: the pretrain job with the init_from override as a run tag.
    tags = {"dagster/partition": PARTITION, f"{OVERRIDE_TAG_PREFIX}stages.pretrain.init_from": f"doge_base:{base}"}
    continued = run_command(cli_job_execute_command("pretrain", tags), env, 900, log_path=tmp_path / "continued.log")
    assert_success(continued, "continued pretraining")
    assert f"continued pretraining from doge_base:{base}" in continued.stdout
    step, lr = first_logged_lr(continued.stdout)
    assert step == 1 and lr == pytest.approx(stable_lr, rel=1e-3), f"continued: no second warmup, lr {lr} at step 1"
    versions = published_versions(root, "doge_base")
    assert len(versions) == 2 and base in versions, "the continued model is a new version beside its base"
    [continued_version] = set(versions) - {base}
    manifest = read_manifest(root, "doge_base", continued_version)
    assert manifest["upstream"]["doge_base"] == base  # the checkpoint it started from is in its lineage
    recorded = run_command([DOGE_DAGSTER, "lineage", "doge_base", "--partition", PARTITION, "--version", continued_version], env, 120)
    assert_success(recorded, "recorded lineage")
    base_lines = [line for line in recorded.stdout.splitlines() if line.startswith("doge_base ")]
    assert [line.split()[1] for line in base_lines] == [base, continued_version], recorded.stdout
    assert f"doge_base@{base[:8]}" in base_lines[1]
    metadata = manifest["metadata"]
    assert metadata["global_step"] == 30 and metadata["resumed_from_step"] == 0
    fresh_first_loss = read_manifest(root, "doge_base", base)["metadata"]["first_train_loss"]
    assert metadata["first_train_loss"] < 0.75 * fresh_first_loss, (
        f"the continued run should start from trained weights: first loss {metadata['first_train_loss']:.2f}, "
        f"a fresh model's {fresh_first_loss:.2f}"
    )


# -- c. distributed backends on the CPU -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pretraining_under_two_process_ddp(data_root, tmp_path):
    steps = 10
    edits = {**short_schedule(steps, 1), "stages.pretrain.launch": {"accelerate_config": "cpu_ddp", "num_processes": 2}}
    root = fresh_root(data_root, tmp_path)
    home = tmp_path / "home"
    env = dagster_env(home, root, write_tiny_recipe(tmp_path / "recipes", edits))
    completed = run_cli_materialize("doge_base", env, timeout=800, log_path=tmp_path / "ddp.log")
    assert_success(completed, "doge_base under cpu_ddp")
    [version] = published_versions(root, "doge_base")
    metadata = read_manifest(root, "doge_base", version)["metadata"]
    assert metadata["world_size"] == 2, f"expected 2 DDP processes, got world_size {metadata['world_size']}"
    assert metadata["global_step"] == steps
    _, materialized = latest_materialization(home, "doge_base")
    assert materialized["world_size"] == 2

    messages = latest_run_logs(home, "doge_base")
    progress = collections.Counter(
        int(m[1]) for line in messages if (m := re.match(rf"step (\d+)/{steps} \| loss ", line))
    )
    assert progress == {step: 1 for step in range(1, steps + 1)}, (
        f"each step's progress line must appear exactly once (rank 0 only); counts: {dict(progress)}"
    )
    assert sum("world size 2" in line for line in messages) == 1, [line for line in messages if "world size" in line]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pretraining_under_deepspeed_zero2_on_cpu(data_root, tmp_path, torch_extensions_dir):
    steps = 6
    edits = {**short_schedule(steps, 2), "stages.pretrain.launch.accelerate_config": "cpu_zero2"}
    root = fresh_root(data_root, tmp_path)
    home = tmp_path / "home"
    env = dagster_env(
        home, root, write_tiny_recipe(tmp_path / "recipes", edits), TORCH_EXTENSIONS_DIR=str(torch_extensions_dir)
    )
    completed = run_cli_materialize("doge_base", env, timeout=800, log_path=tmp_path / "zero2.log")
    assert_success(completed, "doge_base under cpu_zero2")
    launch_lines = [line for line in completed.stdout.splitlines() if "launching: " in line]
    assert len(launch_lines) == 1 and "cpu_zero2.yaml" in launch_lines[0], launch_lines
    assert any("deepspeed" in line.lower() for line in completed.stdout.splitlines() if "launching: " not in line), (
        "no sign of DeepSpeed in the training output:\n" + tail(completed.stdout)
    )
    [version] = published_versions(root, "doge_base")
    metadata = read_manifest(root, "doge_base", version)["metadata"]
    assert metadata["global_step"] == steps
    assert all(passed for passed, _ in metadata["checks"].values()), metadata["checks"]
    messages = latest_run_logs(home, "doge_base")
    assert any(line.startswith(f"step {steps}/{steps}") for line in messages), messages


# -- d. the published chain (the session's shared `tiny_chain`: the README quick-start, shipped tiny recipe) ---
def chain_versions(tiny_chain) -> dict[str, str]:
    """The one published version of every model of the shared chain (the shipped recipe's planned version)."""
    versions = {}
    for asset in MODEL_ASSETS:
        published = published_versions(tiny_chain.artifact_root, asset)
        assert published == [planned_version(asset)], (
            f"{asset}: expected exactly the planned version, found {published}"
        )
        versions[asset] = published[0]
    return versions


@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S)
def test_every_chain_model_loads_generates_and_documents_its_lineage(tiny_chain):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    root, versions = tiny_chain.artifact_root, chain_versions(tiny_chain)
    for asset in MODEL_ASSETS:
        folder = root / asset / PARTITION / versions[asset]
        manifest = read_manifest(root, asset, versions[asset])
        failed = {name: detail for name, (passed, detail) in manifest["metadata"]["checks"].items() if not passed}
        assert not failed, f"{asset}: failed checks {failed}"
        metadata = manifest["metadata"]
        if asset == "doge_base":  # pretraining learned: the loss ends far below where it started
            assert metadata["final_train_loss"] < metadata["first_train_loss"] / 3, metadata["train_loss_curve"]
        run_numbers = {
            key: metadata[key] for key in ("tokens_seen", "tokens_per_second", "train_runtime_s", "wall_time_s")
        }
        assert all(value > 0 for value in run_numbers.values()), f"{asset}: {run_numbers}"
        assert metadata["wall_time_s"] >= metadata["train_runtime_s"], f"{asset}: {run_numbers}"
        assert metadata["world_size"] == 1 and metadata["parameters"] > 100_000 and metadata["peak_memory_gb"] > 0
        assert len(metadata["train_loss_curve"]) >= 2 and (folder / "loss_curve.png").stat().st_size > 1000
        config = json.loads((folder / "config.json").read_text())
        assert "auto_map" not in config, f"{asset} would need remote code: {config.get('auto_map')}"

        tokenizer = AutoTokenizer.from_pretrained(str(folder))  # plain Auto classes: no trust_remote_code
        model = AutoModelForCausalLM.from_pretrained(str(folder))
        assert type(model).__name__ == "DogeForCausalLM"
        assert model.config.vocab_size >= len(tokenizer)
        prompt = tokenizer("The number", return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            output = model.generate(**prompt, max_new_tokens=8, do_sample=False)
        assert output.shape[1] > prompt["input_ids"].shape[1], f"{asset} generated nothing"

        assert (folder / "generation_config.json").is_file(), f"{asset}: no generation_config.json"
        generation = GenerationConfig.from_pretrained(str(folder))
        end_ids = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
        assert tokenizer.eos_token_id in end_ids, f"{asset}: generation_config eos {end_ids}"
        assert generation.pad_token_id == tokenizer.pad_token_id
        card = (folder / "README.md").read_text()
        assert manifest["upstream"], asset
        for upstream, upstream_version in manifest["upstream"].items():
            assert f"`{upstream}`: `{upstream_version}`" in card, (
                f"{asset} model card does not name {upstream} {upstream_version}"
            )
        assert versions[asset] in card

        if asset in CHAT_MODELS:
            assert tokenizer.chat_template, f"{asset}: tokenizer has no chat template"
            inputs = tokenizer.apply_chat_template(
                [{"role": "user", "content": "What is 3 + 4?"}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )
            with torch.no_grad():
                output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
            reply = tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            assert reply.strip(), f"{asset} gave an empty chat reply"
            if asset in ("doge_instruct_sft", "doge_instruct"):
                assert "3 + 4 = 7" in reply, f"{asset} did not answer 3 + 4 in the chat format: {reply!r}"
            assert tokenizer.convert_tokens_to_ids("<|im_end|>") in end_ids, (
                f"{asset}: a chat turn end must stop generation"
            )


def file_times(root: Path, asset: str) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in (root / asset).rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S + 600)
def test_rematerializing_the_chain_is_a_cached_skip(tiny_chain, tmp_path):
    versions = chain_versions(tiny_chain)
    # copies of the shared instance and store: this test adds runs, and must not touch what others read
    home = tiny_chain.copy_home(tmp_path / "dagster_home")
    root = tmp_path / "artifacts"
    copy_artifacts(tiny_chain.artifact_root, root, DATA_ASSETS + MODEL_ASSETS)
    before = {asset: latest_materialization(home, asset) for asset in MODEL_ASSETS}
    assert all(metadata["cached"] is False for _, metadata in before.values()), "the chain's first run should train"
    times = {asset: file_times(root, asset) for asset in MODEL_ASSETS}

    completed = run_cli_materialize(",".join(MODEL_ASSETS), dagster_env(home, root), timeout=600)
    assert_success(completed, "re-materializing the tiny chain")
    assert "launching: " not in completed.stdout, "a cached model was trained again"
    for asset in MODEL_ASSETS:
        run_id, metadata = latest_materialization(home, asset)
        assert run_id != before[asset][0], f"{asset} was not materialized again"
        assert metadata["cached"] is True, f"{asset}: second materialization was not a cached skip"
        assert metadata["version"] == versions[asset]
        assert published_versions(root, asset) == [versions[asset]]
        assert file_times(root, asset) == times[asset], f"{asset}: files were rewritten by a cached materialization"


# -- a (continued). The GRPO batch check runs once the distilled model upstream exists ------------------------
@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S)
def test_grpo_batch_not_divisible_fails_before_launch(tiny_chain, tmp_path):
    per_device = int(tiny_recipe().stages.grpo.training["per_device_train_batch_size"])
    generations = per_device + 1  # never divides per_device x 1 process x 1 step
    edits = {"stages.grpo.training.num_generations": generations}
    version = planned_version("doge_reason", edits)
    assert version != planned_version("doge_reason")
    root = tmp_path / "artifacts"
    copy_artifacts(tiny_chain.artifact_root, root, ("tokenizer", "grpo_mixture", "doge_reason_distill"))
    recipes = write_tiny_recipe(tmp_path / "recipes", edits)
    result = dg_materialize("doge_reason", dagster_env(tmp_path / "home", root, recipes))
    assert not result["success"]
    [failure] = result["failures"]
    text = failure["description"]
    for part in ("stages.grpo", f"num_generations ({generations})", f"per_device_train_batch_size ({per_device})",
                 "not divisible"):  # fmt: skip
        assert part in text, f"{part!r} missing from the failure: {text}\n{failure['error']}"
    assert result["launches"] == 0, "GRPO was launched with an indivisible generation batch"
    assert published_versions(root, "doge_reason") == [], "nothing may be published for the bad recipe"
    assert no_work_started(root, "doge_reason") == [], "no launch spec may be written"


# -- e. out of memory: a smaller per-device batch, more accumulation, the same training -------------------------
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_out_of_memory_backs_off_the_batch_and_trains_what_the_smaller_batch_trains(data_root, tmp_path):
    """An out-of-memory error injected in every training forward of more than 2 rows from step 4 on (after
    checkpoint-2): the run backs off 8 x 1 -> 4 x 2 -> 2 x 4, resuming from checkpoint-2 each time, and trains
    what an uninterrupted run at 2 x 4 trains, within float rounding (doge_dagster/training/memory.py)."""
    from safetensors.torch import load_file

    def run(name: str, batch: int, accumulation: int, **fault: str):
        edits = {
            **short_schedule(6, 1, save_steps=2),
            "stages.pretrain.training.per_device_train_batch_size": batch,
            "stages.pretrain.training.gradient_accumulation_steps": accumulation,
            "stages.pretrain.oom_backoff": True,  # unset, it is on for GPU launches only
        }
        root, home = fresh_root(data_root, tmp_path / name), tmp_path / name / "home"
        env = dagster_env(home, root, write_tiny_recipe(tmp_path / name / "recipes", edits), **fault)
        assert_success(run_cli_materialize("doge_base", env, 600, log_path=tmp_path / f"{name}.log"), name)
        [version] = published_versions(root, "doge_base")
        folder = root / "doge_base" / PARTITION / version
        return home, load_file(str(folder / "model.safetensors")), read_manifest(root, "doge_base", version)["metadata"]

    home, weights, metadata = run("backoff", 8, 1, DOGE_FAULT_OOM_ABOVE_BATCH="2", DOGE_FAULT_OOM_FROM_STEP="3")
    batches = [
        {"per_device_train_batch_size": b, "gradient_accumulation_steps": a} for b, a in ((8, 1), (4, 2), (2, 4))
    ]
    assert metadata["oom_backoffs"] == [
        {"step": 4, "from": batches[0], "to": batches[1], "resumed_from_step": 2},
        {"step": 4, "from": batches[1], "to": batches[2], "resumed_from_step": 2},
    ], metadata["oom_backoffs"]
    assert (metadata["per_device_train_batch_size"], metadata["gradient_accumulation_steps"]) == (2, 4)
    assert metadata["global_step"] == 6 and all(passed for passed, _ in metadata["checks"].values())
    _, materialized = latest_materialization(home, "doge_base")
    assert (materialized["per_device_train_batch_size"], materialized["gradient_accumulation_steps"]) == (2, 4)
    messages = latest_run_logs(home, "doge_base")  # the reporter's lines, through Pipes
    for old, new in ((8, 1), (4, 2)), ((4, 2), (2, 4)):
        line = (
            f"stages.pretrain (doge_base[tiny]): out of memory at step 4 with per_device_train_batch_size {old[0]} x "
            f"gradient_accumulation_steps {old[1]}; retrying with per_device_train_batch_size {new[0]} x "
            f"gradient_accumulation_steps {new[1]} (same global batch, LR schedule and data order) from checkpoint-2"
        )
        assert line in messages, [message for message in messages if "memory" in message]

    _, reference_weights, reference = run("uninterrupted", 2, 4)
    assert reference["oom_backoffs"] == [] and reference["global_step"] == 6
    # Same rows per step, same schedule: only the summation order differs. Measured on fp32 CPU: losses equal to
    # the 5 decimals recorded, weights within 3.2e-5 (the 8 x 1 and 2 x 4 runs differ by as much).
    assert [step for step, _ in metadata["train_loss_curve"]] == list(range(1, 7))
    for (step, loss), (reference_step, reference_loss) in zip(
        metadata["train_loss_curve"], reference["train_loss_curve"], strict=True
    ):
        assert step == reference_step and loss == pytest.approx(reference_loss, rel=1e-4), (step, loss, reference_loss)
    difference = max((weights[name] - reference_weights[name]).abs().max().item() for name in reference_weights)
    assert weights.keys() == reference_weights.keys() and difference < 3e-4, difference
