"""Sharded training on the CPU: FSDP2 (`cpu_fsdp`) and DeepSpeed ZeRO-3 (`cpu_zero3`), two processes over gloo.

Each config runs the real entry point under `accelerate launch` with its launch spec, the way the orchestrator
launches a stage, wrapped by `programs.train_with_probe` (the same `main`, plus a callback that gathers every
parameter at chosen steps by a path independent of the pipeline's saving, so the published weights can be
compared with what the ranks held):

1. pretraining on a short WSD schedule, SIGKILLed once a checkpoint is complete;
2. the same launch again: it resumes from that checkpoint, passes the stable-phase end (snapshot) and publishes;
3. SFT from the published base model.

The published model and the stable-phase snapshot must load with `AutoModelForCausalLM` and equal the gathered
weights of their step exactly; the resumed run must start from exactly the weights the killed run held at its
checkpoint; and the runs must really be sharded (rank 0 holds part of the parameters only).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import (
    copy_artifacts,
    dagster_env,
    kill_group,
    processes_in_group,
    program_env,
    published_versions,
    read_manifest,
    run_cli_materialize,
    run_command,
    tail,
    tiny_recipe,
)

from doge_dagster.launching.command import accelerate_command
from doge_dagster.launching.spec import LaunchSpec

PARTITION = "tiny"
DATA = ("tokenizer", "pretrain_mixture", "sft_mixture")
# Pretraining: 12 WSD steps, the decay over the last 4, so the stable phase ends at step 8; a checkpoint
# every 4 steps (the run is killed once checkpoint-4 is complete). SFT: 6 steps from the published base.
STEPS, DECAY, SAVE, KILL_AFTER = 12, 4, 4, 4
STABLE_END = STEPS - DECAY
SFT_STEPS = 6
EDITS = {
    "stages.pretrain.training.max_steps": STEPS,
    "stages.pretrain.training.warmup_steps": 2,
    "stages.pretrain.training.lr_scheduler_kwargs": {"num_decay_steps": DECAY, "min_lr_ratio": 0.0},
    "stages.pretrain.training.save_steps": SAVE,
    "stages.pretrain.training.logging_steps": 2,
    "stages.pretrain.training.per_device_train_batch_size": 4,
    "stages.sft.training.max_steps": SFT_STEPS,
    "stages.sft.training.save_steps": SFT_STEPS,
    "stages.sft.training.logging_steps": 2,
    "stages.sft.training.per_device_train_batch_size": 4,
}
CONFIGS = {  # config: what the probe must see
    "cpu_fsdp": {"distributed_type": "DistributedType.FSDP", "gathered_by": "fsdp2 full_tensor"},
    "cpu_zero3": {"distributed_type": "DistributedType.DEEPSPEED", "gathered_by": "zero3 GatheredParameters"},
}


def recipe_edits(config: str) -> dict:
    return {
        **EDITS,
        **{
            f"stages.{stage}.launch": {"accelerate_config": config, "num_processes": 2} for stage in ("pretrain", "sft")
        },
    }


@pytest.fixture(scope="module")
def sharded_data(tmp_path_factory) -> Path:
    """The tokenizer and the pretraining and SFT mixtures of the tiny recipe, materialized once through the CLI."""
    base = tmp_path_factory.mktemp("sharded-data")
    root = base / "artifacts"
    completed = run_cli_materialize(",".join(DATA), dagster_env(base / "home", root), 600, base / "data.log")
    assert completed.returncode == 0, tail(completed.stdout)
    return root


@dataclass
class Launch:
    """One stage launched as the orchestrator would: its launch spec, the `accelerate launch` command."""

    config: str
    stage: str
    root: Path
    env: dict

    @property
    def spec(self) -> LaunchSpec:
        from doge_dagster.plan import plan_versions

        recipe = tiny_recipe(recipe_edits(self.config))
        record = recipe.chain.stage(self.stage)
        planned = plan_versions(recipe, nodes=[record.asset])[record.asset]
        return LaunchSpec(
            name=self.stage, asset=record.asset, partition=PARTITION, version=planned.version,
            upstream=planned.upstream, recipe=recipe.model_dump(mode="json"), store_root=str(self.root),
            work_dir=str(self.root / record.asset / PARTITION / ".work" / planned.version), env={"HF_HUB_OFFLINE": "1"},
        )  # fmt: skip

    def prepare(self, probes: Path, probe_steps: list[int]) -> tuple[list[str], dict]:
        """The command (`accelerate launch ... -m programs.train_with_probe STAGE --spec F`) and its environment."""
        from doge_dagster.recipes import LaunchRecipe

        spec = self.spec
        spec_path = Path(spec.work_dir).parent / f"{spec.version}.spec.json"
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec.write(spec_path)
        launch = LaunchRecipe(accelerate_config=self.config, num_processes=2)
        command = accelerate_command(self.stage, str(spec_path), launch, module="programs.train_with_probe")
        env = {**self.env, "DOGE_PROBE_DIR": str(probes), "DOGE_PROBE_STEPS": ",".join(map(str, probe_steps))}
        return command, env

    def run(self, probes: Path, probe_steps: list[int], log: Path, timeout: float = 450) -> str:
        command, env = self.prepare(probes, probe_steps)
        completed = run_command(command, env, timeout, log_path=log)
        assert completed.returncode == 0, f"{self.stage} under {self.config} failed:\n{tail(completed.stdout, 80)}"
        return completed.stdout

    def run_until(self, path: Path, probes: Path, probe_steps: list[int], log: Path, timeout: float = 450) -> None:
        """Launch, SIGKILL the whole process group as soon as `path` exists, check nothing survived."""
        command, env = self.prepare(probes, probe_steps)
        with open(log, "w") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while not path.is_file():
                assert process.poll() is None, f"the run ended before {path.parent.name}:\n{tail(log.read_text())}"
                assert time.monotonic() < deadline, f"no {path.parent.name} after {timeout} s:\n{tail(log.read_text())}"
                time.sleep(0.05)
        finally:
            kill_group(process.pid)
            process.wait(timeout=30)
        assert processes_in_group(process.pid) == [], "processes of the killed run survived the SIGKILL of its group"


@dataclass
class ShardedRuns:
    """What one config's three runs left: the store, the probe dumps of each run, the logs."""

    config: str
    root: Path
    probes: Path
    logs: dict[str, str]

    def probe(self, run: str, name: str) -> tuple[dict, dict]:
        """The parameters run `run` gathered at `name` (`begin-<step>` or `step-<step>`), and the probe's facts."""
        from safetensors.torch import load_file

        folder = self.probes / run
        return load_file(str(folder / f"{name}.safetensors")), json.loads((folder / f"{name}.json").read_text())

    def published(self, asset: str) -> Path:
        [version] = published_versions(self.root, asset)
        return self.root / asset / PARTITION / version

    def metadata(self, asset: str) -> dict:
        return read_manifest(self.root, asset, self.published(asset).name)["metadata"]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def sharded_runs(request, sharded_data, torch_extensions_dir, tmp_path_factory) -> ShardedRuns:
    """Under one config: pretraining killed after checkpoint-4, the same launch resumed to the end, then SFT."""
    config = request.param
    base = tmp_path_factory.mktemp(config)
    root, probes = base / "artifacts", base / "probes"
    copy_artifacts(sharded_data, root, DATA)
    env = program_env(dagster_env(base / "home", root, TORCH_EXTENSIONS_DIR=str(torch_extensions_dir)))
    pretrain = Launch(config, "pretrain", root, env)
    checkpoint = Path(pretrain.spec.work_dir) / "checkpoints" / f"checkpoint-{KILL_AFTER}"

    times = [time.monotonic()]
    pretrain.run_until(checkpoint / "trainer_state.json", probes / "killed", [KILL_AFTER], base / "killed.log")
    assert published_versions(root, "doge_base") == [], "the run finished before it could be killed"
    times.append(time.monotonic())
    resumed = pretrain.run(probes / "resumed", [STABLE_END, STEPS], base / "resumed.log")
    times.append(time.monotonic())
    sft = Launch(config, "sft", root, env).run(probes / "sft", [SFT_STEPS], base / "sft.log")
    times.append(time.monotonic())
    took = ", ".join(
        f"{run} {end - start:.0f} s" for run, start, end in zip(("killed", "resumed", "sft"), times, times[1:])
    )
    print(f"{config}: {took}")
    return ShardedRuns(config, root, probes, {"resumed": resumed, "sft": sft})


def load_weights(folder: Path) -> tuple[dict, object]:
    """The folder's parameters as `AutoModelForCausalLM` loads them (no missing or unexpected weights)."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(str(folder), output_loading_info=True)
    assert type(model).__name__ == "DogeForCausalLM"
    problems = {key: value for key, value in info.items() if value and key != "mismatched_keys"}
    assert not problems and not info.get("mismatched_keys"), f"{folder}: {info}"
    return {name: parameter.detach() for name, parameter in model.named_parameters()}, model


def assert_same_weights(loaded: dict, gathered: dict, what: str) -> None:
    import torch

    assert sorted(loaded) == sorted(gathered), f"{what}: parameter names differ"
    different = [name for name in gathered if not torch.equal(loaded[name].float(), gathered[name])]
    assert not different, f"{what}: {len(different)} of {len(gathered)} parameters differ, e.g. {different[:3]}"


def changed_fraction(after: dict, before: dict) -> float:
    import torch

    return sum(not torch.equal(after[name], before[name]) for name in before) / len(before)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_training_is_really_sharded_over_two_processes(sharded_runs):
    expected = CONFIGS[sharded_runs.config]
    for run, name in [("killed", "begin-0"), ("killed", f"step-{KILL_AFTER}"), ("resumed", f"begin-{KILL_AFTER}"),
                      ("resumed", f"step-{STEPS}"), ("sft", "begin-0"), ("sft", f"step-{SFT_STEPS}")]:  # fmt: skip
        _, facts = sharded_runs.probe(run, name)
        assert facts["world_size"] == 2, (run, name, facts)
        assert {key: facts[key] for key in expected} == expected, (run, name, facts)
        # rank 0 holds about half of the parameters' elements, never the whole model
        assert facts["local_elements_rank0"] <= 0.6 * facts["full_elements"], (run, name, facts)
    assert sharded_runs.metadata("doge_base")["world_size"] == 2
    assert sharded_runs.metadata("doge_instruct_sft")["world_size"] == 2


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_killed_sharded_run_resumes_from_exactly_the_weights_of_its_checkpoint(sharded_runs):
    at_kill, _ = sharded_runs.probe("killed", f"step-{KILL_AFTER}")
    at_resume, facts = sharded_runs.probe("resumed", f"begin-{KILL_AFTER}")
    assert facts["step"] == KILL_AFTER
    assert_same_weights(at_resume, at_kill, f"weights loaded from checkpoint-{KILL_AFTER}")
    initial, _ = sharded_runs.probe("killed", "begin-0")
    assert changed_fraction(at_kill, initial) > 0.9, "the killed run did not train"
    assert f"resuming from checkpoint-{KILL_AFTER}" in sharded_runs.logs["resumed"]
    metadata = sharded_runs.metadata("doge_base")
    assert metadata["resumed_from_step"] == KILL_AFTER and metadata["global_step"] == STEPS, metadata


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_stable_snapshot_and_the_final_model_hold_the_full_trained_weights(sharded_runs):
    folder = sharded_runs.published("doge_base")
    snapshot, _ = load_weights(folder / "stable")
    final, model = load_weights(folder)
    assert_same_weights(
        snapshot, sharded_runs.probe("resumed", f"step-{STABLE_END}")[0], f"stable/ (step {STABLE_END})"
    )
    assert_same_weights(final, sharded_runs.probe("resumed", f"step-{STEPS}")[0], f"the published model (step {STEPS})")
    assert (
        sum(parameter.numel() for parameter in model.parameters()) == sharded_runs.metadata("doge_base")["parameters"]
    )
    initial, _ = sharded_runs.probe("killed", "begin-0")
    assert changed_fraction(snapshot, initial) > 0.9 and changed_fraction(final, snapshot) > 0.9


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_sft_from_the_sharded_base_publishes_its_full_trained_weights(sharded_runs):
    base, _ = load_weights(sharded_runs.published("doge_base"))
    final, _ = load_weights(sharded_runs.published("doge_instruct_sft"))
    assert_same_weights(final, sharded_runs.probe("sft", f"step-{SFT_STEPS}")[0], f"the SFT model (step {SFT_STEPS})")
    # every rank started from the base model's full weights (rank 0's, broadcast under cpu_ram_efficient_loading)
    assert_same_weights(base, sharded_runs.probe("sft", "begin-0")[0], "the SFT run's starting weights")
    assert changed_fraction(final, base) > 0.5
