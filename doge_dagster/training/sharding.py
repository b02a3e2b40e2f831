"""Sharded training (FSDP, DeepSpeed ZeRO-3): full weights out of a sharded model, and FSDP on a CPU.

Under FSDP and ZeRO-3 each rank holds a shard of every parameter, so `model.save_pretrained` on rank 0
writes shards (or empty tensors). `save_full_model` gathers the full weights (a collective: every rank must
call it at the same point) and rank 0 writes a `from_pretrained` folder; the final model and the WSD
stable-phase snapshot are both saved with it.

accelerate 1.15 turns an FSDP config into plain DDP on a machine without CUDA (its FSDP state is only set
for GPU-like distributed types, and a CPU launch is MULTI_CPU over gloo). PyTorch's FSDP2 (`fully_shard`)
does run on CPU over gloo, so `enable_fsdp_on_cpu` lets accelerate keep the FSDP plugin there: the CPU
config `cpu_fsdp` then exercises the same sharding, saving and resuming as `fsdp` on GPUs. (FSDP1 does not
run on a CPU: accelerate asks for a CUDA/XPU/... device.)
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def enable_fsdp_on_cpu() -> bool:
    """Under an FSDP launch (ACCELERATE_USE_FSDP) without CUDA, make accelerate's state FSDP instead of the
    MULTI_CPU (DDP) it falls back to. Call before the first Trainer; a no-op elsewhere. True when applied."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return False
    import torch

    if torch.cuda.is_available():
        return False
    if os.environ.get("FSDP_VERSION", "1") != "2":  # FSDP1's plugin asks for a CUDA/XPU/... device and fails
        raise ValueError("FSDP on a CPU needs fsdp_config.fsdp_version: 2 in the accelerate config (FSDP1 needs GPUs)")
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__
    if getattr(original, "doge_fsdp_on_cpu", False):
        return True

    def __init__(self, *args: Any, fsdp_plugin=None, **kwargs: Any) -> None:
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    __init__.doge_fsdp_on_cpu = True
    AcceleratorState.__init__ = __init__
    return True


def save_full_model(trainer, folder: str | Path) -> None:
    """Write the trainer's model with its full weights to `folder` (global rank 0 writes).

    Collective under FSDP and ZeRO-3: every rank must call it. `Trainer.save_model` gathers under ZeRO-3
    (`stage3_gather_16bit_weights_on_model_save`) and under FSDP with FULL_STATE_DICT, but writes nothing at
    all under FSDP with SHARDED_STATE_DICT (the shipped `fsdp` config); there the full state dict is gathered
    here.
    """
    folder = str(folder)
    engine = trainer.model_wrapped  # the DeepSpeed engine once training started
    if (
        trainer.is_deepspeed_enabled
        and hasattr(engine, "zero_gather_16bit_weights_on_model_save")
        and engine.zero_optimization_stage() == 3
        and not engine.zero_gather_16bit_weights_on_model_save()
    ):
        raise RuntimeError(
            "DeepSpeed ZeRO-3 without stage3_gather_16bit_weights_on_model_save cannot save full weights: set "
            "`zero3_save_16bit_model: true` in the accelerate config's deepspeed_config"
        )
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if trainer.is_fsdp_enabled and "FULL_STATE_DICT" not in str(plugin.state_dict_type):
        trainer._save(folder, state_dict=trainer.accelerator.get_state_dict(trainer.model))
    else:
        trainer.save_model(folder)


@contextlib.contextmanager
def whole_model_loading() -> Iterator[None]:
    """Inside, `from_pretrained` loads a whole model on the calling rank alone.

    While a ZeRO-3 trainer is alive, transformers builds every model it loads under `deepspeed.zero.Init`,
    which partitions the weights over all ranks: a collective that rank 0 alone (checking the saved model)
    would wait on forever.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def zero3_without_full_weights(config_path: Path) -> bool:
    """True for an accelerate config running DeepSpeed ZeRO-3 that would not gather full weights on save
    (`zero3_save_16bit_model`, or `stage3_gather_16bit_weights_on_model_save` in its deepspeed_config_file)."""
    import yaml

    try:
        config = yaml.safe_load(config_path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    deepspeed = config.get("deepspeed_config") or {}
    if config.get("distributed_type") != "DEEPSPEED" or not isinstance(deepspeed, dict):
        return False
    if deepspeed.get("deepspeed_config_file"):
        try:
            zero = json.loads(Path(deepspeed["deepspeed_config_file"]).read_text()).get("zero_optimization", {})
        except (OSError, ValueError):
            return False
        return str(zero.get("stage")) == "3" and zero.get("stage3_gather_16bit_weights_on_model_save") is not True
    return str(deepspeed.get("zero_stage")) == "3" and not deepspeed.get("zero3_save_16bit_model", False)
