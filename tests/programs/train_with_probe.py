"""The training entry point with a probe: `accelerate launch ... -m programs.train_with_probe STAGE --spec SPEC`.

It runs `python -m doge_dagster.training STAGE --spec SPEC` (the same `main`) with one more `TrainerCallback`
on every stage: at the start of training and at the steps listed in `$DOGE_PROBE_STEPS` (e.g. `4,8`), every
rank gathers every parameter by a path of its own, independent of the pipeline's saving (FSDP2: each DTensor's
`full_tensor()`; ZeRO-3: `deepspeed.zero.GatheredParameters`), and rank 0 writes them to
`$DOGE_PROBE_DIR/step-<N>.safetensors` (`begin-<N>` at the start of training, N the step it starts from),
with `.json` beside it: the world size, the distributed type, and how many parameter elements rank 0 holds
itself (fewer than the full count when the model really is sharded). `test_distributed_configs.py` compares
the published models against these dumps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from doge_dagster.trainer_contract import StageTrainer
from doge_dagster.training import __main__ as entry_point
from doge_dagster.training.pretrain import PretrainTrainer


def gathered_parameters(model) -> tuple[dict, int, str]:
    """(full parameters by name, elements this rank holds, how they were gathered). Collective: all ranks call."""
    import torch
    from torch.distributed.tensor import DTensor

    full, local, how = {}, 0, "unsharded"
    for name, parameter in model.named_parameters():
        if isinstance(parameter, DTensor):  # FSDP2
            local += parameter.to_local().numel()
            tensor, how = parameter.full_tensor(), "fsdp2 full_tensor"
        elif hasattr(parameter, "ds_id"):  # DeepSpeed ZeRO-3
            import deepspeed

            local += parameter.ds_tensor.numel()
            with deepspeed.zero.GatheredParameters([parameter]):
                tensor, how = parameter.data.clone(), "zero3 GatheredParameters"
        else:
            local += parameter.numel()
            tensor = parameter.data
        full[name] = tensor.detach().to("cpu", torch.float32).contiguous().clone()
    return full, local, how


def probe_callback():
    from transformers import TrainerCallback

    folder = Path(os.environ["DOGE_PROBE_DIR"])
    steps = {int(step) for step in os.environ.get("DOGE_PROBE_STEPS", "").split(",") if step}

    class Probe(TrainerCallback):
        def dump(self, name: str, args, state, model) -> None:
            from accelerate.state import PartialState
            from safetensors.torch import save_file

            full, local, how = gathered_parameters(model)
            if state.is_world_process_zero:
                folder.mkdir(parents=True, exist_ok=True)
                save_file(full, str(folder / f"{name}.safetensors"))
                facts = {
                    "step": state.global_step,
                    "world_size": args.world_size,
                    "distributed_type": str(PartialState().distributed_type),
                    "model_class": type(model).__name__,
                    "gathered_by": how,
                    "local_elements_rank0": local,
                    "full_elements": sum(tensor.numel() for tensor in full.values()),
                }
                (folder / f"{name}.json").write_text(json.dumps(facts))

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.dump(f"begin-{state.global_step}", args, state, model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step in steps:
                self.dump(f"step-{state.global_step}", args, state, model)

    return Probe()


def with_probe(trainer_class: type) -> None:
    original = trainer_class.callbacks

    def callbacks(self, ctx):
        return [*original(self, ctx), probe_callback()]

    trainer_class.callbacks = callbacks


if __name__ == "__main__":
    with_probe(StageTrainer)  # every stage that keeps the base's callbacks (the chat stages)
    with_probe(PretrainTrainer)  # pretraining has its own (the stable-phase snapshot)
    entry_point.main()
