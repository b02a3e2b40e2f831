"""Out-of-memory backoff (`doge_dagster.training.memory`): the recipe setting and its versions, the backoff loop
(with a fake trainer), and the Trainer's data order for half the batch and twice the accumulation.

The end-to-end run through `dagster asset materialize` with an injected out-of-memory error is in
`test_training.py` (it shares that module's data assets).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from helpers import PROJECT_ROOT, tiny_recipe

from doge_dagster.plan import plan_versions
from doge_dagster.recipe_sections import WITH_SETTINGS
from doge_dagster.recipes import RecipeError, apply_overrides, parse_recipe
from doge_dagster.training.memory import STATE_FILE, Batch, OutOfMemoryBackoff, StageOutOfMemory

STAGES = ("pretrain", "sft", "dpo", "distill", "grpo")


# -- the recipe setting -----------------------------------------------------------------------------------------
def test_unset_oom_backoff_stays_out_of_every_section_dump_so_versions_do_not_change():
    for path in sorted((PROJECT_ROOT / "recipes").glob("*.yaml")):
        recipe = parse_recipe(yaml.safe_load(path.read_text()), source=str(path))
        for stage in STAGES:
            section = recipe.section(f"stages.{stage}")
            assert section.oom_backoff is None and "oom_backoff" not in section.model_dump(mode="json"), path



@pytest.fixture(autouse=True)
def gradients_on():
    """Train with autograd on whatever an earlier test in this process left (the suite runs in-process
    evaluations and checks under `torch.no_grad`; one left it off in CI and these real trainers failed)."""
    import torch

    previous = torch.is_grad_enabled()
    torch.set_grad_enabled(True)
    yield
    torch.set_grad_enabled(previous)

def test_oom_backoff_never_changes_versions_but_travels_in_launch_specs_and_overrides():
    # A backoff trains on the same rows per step with the same global batch and schedule (see memory.py): the
    # setting is left out of the plain dump (versions) and kept in the WITH_SETTINGS one (specs, overrides).
    versions = {
        plan_versions(tiny_recipe(edits), fingerprint=lambda ref, seed: "x", nodes=["doge_base"])["doge_base"].version
        for edits in ({}, {"stages.pretrain.oom_backoff": True}, {"stages.pretrain.oom_backoff": False})
    }
    assert len(versions) == 1, versions
    recipe = tiny_recipe({"stages.pretrain.oom_backoff": True})
    spec_recipe = parse_recipe(recipe.model_dump(mode="json", context=WITH_SETTINGS), source="a launch spec")
    assert spec_recipe.stages.pretrain.oom_backoff is True
    overridden = apply_overrides(recipe, {"stages.sft.oom_backoff": "false"})
    assert overridden.stages.sft.oom_backoff is False and overridden.stages.pretrain.oom_backoff is True


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        ({"stages.pretrain.oom_backoff": "yes"}, "stages.pretrain.oom_backoff: oom_backoff must be true, false"),
        ({"stages.sft.training.auto_find_batch_size": True}, "stages.sft: training.auto_find_batch_size halves"),
        ({"evaluation.base.launch.oom_backoff": True}, "evaluation.base.launch.oom_backoff: unknown field"),
    ],
)
def test_bad_oom_backoff_settings_are_refused_naming_the_field(edits, expected):
    with pytest.raises(RecipeError) as raised:
        tiny_recipe(edits)
    assert expected in str(raised.value), str(raised.value)


def test_auto_find_batch_size_is_allowed_only_with_the_backoff_off():
    recipe = tiny_recipe({"stages.sft.training.auto_find_batch_size": True, "stages.sft.oom_backoff": False})
    assert recipe.stages.sft.oom_backoff is False


def test_the_batch_shrinks_by_its_smallest_factor_keeping_the_global_batch():
    def chain(batch: Batch) -> list[tuple[int, int]]:
        steps = [(batch.per_device, batch.accumulation)]
        while (batch := batch.smaller()) is not None:
            steps.append((batch.per_device, batch.accumulation))
        return steps

    assert chain(Batch(8, 1)) == [(8, 1), (4, 2), (2, 4), (1, 8)]
    assert chain(Batch(12, 3)) == [(12, 3), (6, 6), (3, 12), (1, 36)]  # 3 // 2 would change the global batch
    assert Batch(1, 4).smaller() is None


# -- the backoff loop, with a fake trainer ----------------------------------------------------------------------
class Reporter:
    is_main = True

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)


class FakeTrainer:
    """Trains `steps` steps; a step with more than `fits` rows a device runs out of memory. Saves a checkpoint
    every `save` steps into `folder` (the one the backoff resumes from)."""

    def __init__(self, fields: dict, folder: Path, fits: int, fail_from: int, save: int = 2, steps: int = 6):
        self.args = SimpleNamespace(**{"per_device_train_batch_size": 12, "gradient_accumulation_steps": 1, **fields})
        self.state = SimpleNamespace(global_step=0)
        self.accelerator = SimpleNamespace(free_memory=lambda: None)
        self.folder, self.fits, self.fail_from, self.save, self.steps = folder, fits, fail_from, save, steps

    def train(self, resume_from_checkpoint=None):
        import torch

        self.resumed_from = resume_from_checkpoint
        self.state.global_step = int(Path(resume_from_checkpoint).name.split("-")[1]) if resume_from_checkpoint else 0
        while self.state.global_step < self.steps:
            if self.args.per_device_train_batch_size > self.fits and self.state.global_step >= self.fail_from:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            self.state.global_step += 1
            if self.state.global_step % self.save == 0:
                (self.folder / f"checkpoint-{self.state.global_step}").mkdir(parents=True, exist_ok=True)
        return "done"


def last_checkpoint(folder: Path):
    found = sorted(folder.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    return found[-1] if found else None


def backoff_for(tmp_path: Path, fits: int, fail_from: int = 3, enabled: bool | None = True, training=None):
    progress = SimpleNamespace(curve=[(1, 9.0), (2, 8.0), (3, 7.0), (4, 6.0)], eval_losses=[], rewards=[(3, 0.5)])
    ctx = SimpleNamespace(
        section=SimpleNamespace(oom_backoff=enabled, training=training or {}),
        spec=SimpleNamespace(asset="doge_base", partition="tiny"),
        stage=SimpleNamespace(name="pretrain", mixture="pretrain"),
        reporter=Reporter(),
        callbacks=[progress],
    )
    built: list[FakeTrainer] = []

    def build(fields: dict) -> FakeTrainer:
        built.append(FakeTrainer(fields, tmp_path, fits, fail_from))
        return built[-1]

    return OutOfMemoryBackoff(ctx, tmp_path, build, last_checkpoint), ctx, built, progress


def test_out_of_memory_backs_off_to_the_batch_that_fits_and_resumes_from_the_last_checkpoint(tmp_path):
    backoff, ctx, built, progress = backoff_for(tmp_path, fits=3, training={"steps_per_generation": 2})
    assert backoff.train() == "done"
    assert [(t.args.per_device_train_batch_size, t.args.gradient_accumulation_steps) for t in built] == [
        (12, 1), (6, 2), (3, 4)
    ]  # fmt: skip
    assert built[-1].args.steps_per_generation == 8  # GRPO's generation batch stays the same
    assert Path(built[1].resumed_from).name == "checkpoint-2" and Path(built[2].resumed_from).name == "checkpoint-2"
    metadata = backoff.metadata()
    assert (metadata["per_device_train_batch_size"], metadata["gradient_accumulation_steps"]) == (3, 4)
    assert metadata["oom_backoff"] is True
    assert metadata["oom_backoffs"] == [
        {"step": 4, "from": Batch(12, 1).fields(), "to": Batch(6, 2).fields(), "resumed_from_step": 2},
        {"step": 4, "from": Batch(6, 2).fields(), "to": Batch(3, 4).fields(), "resumed_from_step": 2},
    ]
    assert ctx.reporter.lines == [
        f"stages.pretrain (doge_base[tiny]): out of memory at step 4 with {Batch(*old)}; retrying with {Batch(*new)} "
        "(same global batch, LR schedule and data order) from checkpoint-2"
        for old, new in (((12, 1), (6, 2)), ((6, 2), (3, 4)))
    ]
    assert str(Batch(12, 1)) == "per_device_train_batch_size 12 x gradient_accumulation_steps 1"
    assert progress.curve == [(1, 9.0), (2, 8.0)] and progress.rewards == []  # steps 3-4 run again
    # A later process resuming this version starts with the batch that fit.
    assert json.loads((tmp_path / STATE_FILE).read_text())["batch"] == {"per_device": 3, "accumulation": 4}
    again, ctx, built, _ = backoff_for(tmp_path, fits=3)
    assert [t.args.per_device_train_batch_size for t in built] == [12, 3] and again.batch == Batch(3, 4)
    assert again.metadata()["oom_backoffs"] == metadata["oom_backoffs"]
    assert "resuming with per_device_train_batch_size 3 x gradient_accumulation_steps 4" in ctx.reporter.lines[0]


def test_without_a_checkpoint_the_backoff_starts_over_from_step_zero(tmp_path):
    backoff, ctx, built, _ = backoff_for(tmp_path, fits=6, fail_from=0)
    backoff.train()
    assert built[1].resumed_from is None and "from step 0 (no checkpoint yet)" in ctx.reporter.lines[0]
    assert backoff.metadata()["oom_backoffs"][0]["resumed_from_step"] == 0


def test_out_of_memory_at_a_batch_of_one_stops_naming_the_stage_and_the_fixes(tmp_path):
    backoff, ctx, built, _ = backoff_for(tmp_path, fits=0)
    with pytest.raises(StageOutOfMemory) as raised:
        backoff.train()
    message = str(raised.value)
    for part in ("stages.pretrain (doge_base[tiny])", "out of memory at step 4", str(Batch(1, 12)), "cannot shrink",
                 "activation_checkpointing: true", "bf16", "mixtures.pretrain.max_length", "fsdp or zero3"):  # fmt: skip
        assert part in message, message
    assert ctx.reporter.lines[-1] == message  # in the run log too
    assert [t.args.per_device_train_batch_size for t in built] == [12, 6, 3, 1]


def test_with_the_backoff_off_the_error_propagates_with_a_hint(tmp_path):
    import torch

    backoff, ctx, built, _ = backoff_for(tmp_path, fits=3, enabled=False)
    with pytest.raises(torch.OutOfMemoryError):
        backoff.train()
    assert len(built) == 1 and "set stages.pretrain.oom_backoff: true" in ctx.reporter.lines[0]
    assert backoff.metadata()["oom_backoff"] is False


def test_other_errors_are_not_retried(tmp_path):
    backoff, _, built, _ = backoff_for(tmp_path, fits=100)
    built[0].train = lambda resume_from_checkpoint=None: (_ for _ in ()).throw(ValueError("bad data"))
    with pytest.raises(ValueError, match="bad data"):
        backoff.train()
    assert len(built) == 1


# -- the Trainer's data order -----------------------------------------------------------------------------------
def recorder():
    """A one-parameter model that records the first token (the row number) of every row it trains on."""
    import torch

    class Recorder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.rows: list[int] = []

        def forward(self, input_ids, labels=None, **kwargs):
            self.rows += input_ids[:, 0].tolist()
            return {"loss": (self.weight * input_ids.float()).mean() ** 2}

    return Recorder()


def recording_trainer(folder: Path, model, callbacks: list, **fields):
    """A real `Trainer` on 50 rows numbered 0..49 (fields: TrainingArguments such as the batch)."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    settings = {"per_device_train_batch_size": 8, "save_strategy": "steps", "save_steps": 1000, **fields}
    args = TrainingArguments(str(folder), use_cpu=True, report_to="none", seed=233, disable_tqdm=True, **settings)
    data = Dataset.from_dict({"input_ids": [[row, row] for row in range(50)]})
    return Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)


def rows_per_step(folder: Path, batch: int, accumulation: int, steps: int, resume: str | None = None, save: int = 1000):
    """The dataset rows each optimizer step of a real `Trainer` trained on."""
    from transformers import TrainerCallback

    class PerStep(TrainerCallback):
        def __init__(self) -> None:
            self.steps: dict[int, list[int]] = {}

        def on_step_end(self, args, state, control, **kwargs):
            self.steps[state.global_step], model.rows = model.rows, []

    model, per_step = recorder(), PerStep()
    trainer = recording_trainer(
        folder, model, [per_step], per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
        max_steps=steps, save_steps=save,
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    return per_step.steps


@pytest.mark.timeout(300)
def test_a_real_trainer_backs_off_on_the_injected_fault_and_frees_the_models_that_failed(tmp_path, monkeypatch):
    import gc
    import weakref

    from doge_dagster.training.memory import FAULT_ENV, injected_faults
    from doge_dagster.training.runner import last_complete_checkpoint

    monkeypatch.setenv(FAULT_ENV, "2")
    faults = injected_faults()
    backoff, ctx, _, _ = backoff_for(tmp_path, fits=100)  # a fake context; the trainers below are real
    ctx.callbacks = faults
    models: list[weakref.ref] = []

    def build(fields: dict):
        model = recorder()
        models.append(weakref.ref(model))
        return recording_trainer(tmp_path / "checkpoints", model, faults, max_steps=3, save_steps=1, **fields)

    backoff = OutOfMemoryBackoff(ctx, tmp_path / "checkpoints", build, last_complete_checkpoint)
    backoff.train()
    gc.collect()
    assert backoff.batch == Batch(2, 4) and backoff.trainer.state.global_step == 3
    assert [ref() is None for ref in models] == [True, True, False], "a failed trainer's model is still referenced"
    assert [event["resumed_from_step"] for event in backoff.metadata()["oom_backoffs"]] == [0, 0]


@pytest.mark.timeout(300)
def test_half_the_batch_with_twice_the_accumulation_trains_on_the_same_rows_per_step(tmp_path):
    # 50 rows, 8 a step: 9 steps cross the end of the first epoch (its last step has 2 rows) into the second.
    whole = rows_per_step(tmp_path / "8x1", 8, 1, 9)
    first_epoch = [row for step in range(1, 8) for row in whole[step]]
    assert len(whole) == 9 and len(whole[7]) == 2 and sorted(first_epoch) == list(range(50))
    assert rows_per_step(tmp_path / "4x2", 4, 2, 9) == whole
    assert rows_per_step(tmp_path / "2x4", 2, 4, 9) == whole
    # What a backoff does: resume a checkpoint of the 8 x 1 run with 2 x 4; the data skip lands on the same rows.
    rows_per_step(tmp_path / "resumed", 8, 1, 3, save=3)
    resumed = rows_per_step(tmp_path / "resumed", 2, 4, 9, resume=str(tmp_path / "resumed" / "checkpoint-3"))
    assert resumed == {step: whole[step] for step in range(4, 10)}
