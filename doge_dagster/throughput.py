"""What a training run delivers and costs: tokens/s, model FLOPs utilization (MFU), GPU-hours and cost.

Dagster-free and torch-free: the runner reports these for every stage, `bench/bench_gpu.py` computes its MFU
with the same functions, and `doge-dagster plan` reads the same device table.

**FLOPs per token** (one training step, forward and backward)::

    6 x (non-embedding parameters + vocab x hidden) + 12 x layers x hidden x sequence

- `6 x parameters`: 2 FLOPs per weight and token forward (a multiply-add), twice that backward (Kaplan et al.
  2020, "Scaling Laws for Neural Language Models", section 2.1).
- `vocab x hidden`: the output projection (LM head) is a matrix multiply whether or not it is tied to the input
  embedding; the input embedding is a lookup and counts no FLOPs. With tied embeddings (every Doge recipe) the
  first term is 6 x all parameters, the count `bench/bench_gpu.py` has always used.
- `12 x layers x hidden x sequence`: attention scores and the weighted sum of values, full (not halved for the
  causal mask), as in PaLM's MFU (Chowdhery et al. 2022, appendix B: 6N + 12 L H Q T).

**MFU** = FLOPs per token x tokens/s of all processes / (peak FLOP/s of one device x processes).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

PEAK_TFLOPS_FIELD = "launch.peak_tflops"
PRICE_FIELD = "launch.gpu_hour_price"


@dataclass(frozen=True)
class Device:
    """A GPU model: the name pattern `torch.cuda.get_device_name()` / `nvidia-smi` report, and its peak."""

    key: str
    pattern: str
    peak_bf16_tflops: float
    source: str

    def matches(self, name: str) -> bool:
        """Whether a reported device name (or a recipe's `launch.device`) is this model."""
        return re.search(self.pattern, name, re.IGNORECASE) is not None


# Dense BF16 tensor-core peaks (no 2:4 sparsity: the datasheets' headline figures are the sparse ones, twice these).
# First match wins, so the more specific names come first (H100 NVL/PCIe before the SXM part that reports itself as
# "NVIDIA H100 80GB HBM3"; L40S before L40; A10 never matches A100 or A10G).
DEVICES: tuple[Device, ...] = (
    Device(
        "H100 NVL", r"H100.*NVL", 835.0, "NVIDIA H100 datasheet: H100 NVL BF16 Tensor Core 1,671 TFLOPS with sparsity"
    ),
    Device(
        "H100 PCIe",
        r"H100.*PCIe",
        756.0,
        "NVIDIA H100 datasheet: H100 PCIe BF16 Tensor Core 1,513 TFLOPS with sparsity",
    ),
    Device("H100 SXM", r"H100", 989.0, "NVIDIA H100 datasheet: H100 SXM BF16 Tensor Core 1,979 TFLOPS with sparsity"),
    Device(
        "H200 NVL", r"H200.*NVL", 835.0, "NVIDIA H200 datasheet: H200 NVL BF16 Tensor Core 1,671 TFLOPS with sparsity"
    ),
    Device("H200", r"H200", 989.0, "NVIDIA H200 datasheet: H200 SXM BF16 Tensor Core 1,979 TFLOPS with sparsity"),
    Device(
        "A100", r"A100", 312.0, "NVIDIA A100 datasheet: BF16 Tensor Core 312 TFLOPS (624 with sparsity), 40GB and 80GB"
    ),
    Device("L40S", r"L40S", 362.0, "NVIDIA L40S datasheet: BF16 Tensor Core 362.05 TFLOPS (733 with sparsity)"),
    Device("L40", r"L40\b", 181.0, "NVIDIA L40 datasheet: BF16 Tensor Core 181.05 TFLOPS (362.1 with sparsity)"),
    Device("L4", r"\bL4\b", 121.0, "NVIDIA L4 datasheet: BF16 Tensor Core 242 TFLOPS with sparsity"),
    Device("A10", r"\bA10\b", 125.0, "NVIDIA A10 datasheet: BF16 Tensor Core 125 TFLOPS (250 with sparsity)"),
    Device(
        "RTX 4090",
        r"4090",
        165.2,
        "NVIDIA Ada Lovelace architecture whitepaper, GeForce RTX 4090: BF16 Tensor 165.2 TFLOPS with FP32 "
        "accumulate (what bf16 training uses; FP16 with FP16 accumulate is 330.3)",
    ),
)


def find_device(name: str | None) -> Device | None:
    """The table's entry for a reported device name or a recipe's `launch.device` (None: not in the table)."""
    if not name or is_cpu(name):
        return None
    return next((device for device in DEVICES if device.matches(name)), None)


def is_cpu(name: str | None) -> bool:
    """Whether a device name stands for CPU processes."""
    return (name or "").strip().lower() == "cpu"


def device_key(name: str | None) -> str | None:
    """The short, stable name of a device: the table's key (`H200`), `cpu`, the name as given, or None."""
    if not name:
        return None
    if is_cpu(name):
        return "cpu"
    found = find_device(name)
    return found.key if found else name.strip()


def detect_local_gpu() -> str | None:
    """The first GPU's name on this machine from `nvidia-smi` (no CUDA context is created), or None."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return None
    try:
        completed = subprocess.run(
            [executable, "--query-gpu=name", "--format=csv,noheader"],
            check=False,
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in completed.stdout.splitlines() if line.strip()]
    return names[0] if completed.returncode == 0 and names else None


def peak_flops(device_name: str, override_tflops: float | None = None) -> tuple[float | None, str]:
    """Peak dense bf16 FLOP/s of one device and where the number comes from, or (None, what to do)."""
    if override_tflops is not None:
        return override_tflops * 1e12, f"{PEAK_TFLOPS_FIELD} ({override_tflops:g} TFLOP/s)"
    if is_cpu(device_name):
        return None, f"MFU is not computed for CPUs unless {PEAK_TFLOPS_FIELD} is given"
    device = find_device(device_name)
    if device is None:
        return None, f"unknown device {device_name!r}: set {PEAK_TFLOPS_FIELD} (dense bf16 TFLOP/s of one device)"
    return (
        device.peak_bf16_tflops * 1e12,
        f"{device.key}, {device.peak_bf16_tflops:g} TFLOP/s dense bf16 ({device.source})",
    )


def flops_per_token(
    parameters: int, vocab_size: int, hidden_size: int, num_layers: int, sequence: int, tied_embeddings: bool = True
) -> float:
    """Training FLOPs per token (module docstring): `parameters` counts every weight once (a tied embedding once)."""
    non_embedding = parameters - vocab_size * hidden_size * (1 if tied_embeddings else 2)
    return 6.0 * (non_embedding + vocab_size * hidden_size) + 12.0 * num_layers * hidden_size * sequence


def model_flops_per_token(model: Any, sequence: int, parameters: int | None = None) -> float:
    """`flops_per_token` of a transformers model (its config and parameter count)."""
    config = model.config
    if parameters is None:
        parameters = sum(parameter.numel() for parameter in model.parameters())
    tied = bool(getattr(config, "tie_word_embeddings", True))
    return flops_per_token(parameters, config.vocab_size, config.hidden_size, config.num_hidden_layers, sequence, tied)


def mfu(flops_per_token: float, tokens_per_second: float, peak: float, processes: int = 1) -> float:
    """Model FLOPs utilization of `processes` devices training `tokens_per_second` together."""
    return flops_per_token * tokens_per_second / (peak * processes)


def run_throughput(
    *,
    device_name: str,
    processes: int,
    tokens_per_second: float,
    wall_time_s: float,
    flops_per_token: float,
    peak_tflops: float | None = None,
    gpu_hour_price: float | None = None,
) -> dict[str, Any]:
    """The metadata a finished run reports: rates, MFU (or why not), GPU-hours and the estimated cost (or what
    to set). GPU-hours are wall time x processes (one GPU each); CPU runs report process-hours instead."""
    processes = max(1, processes)
    on_cpu = is_cpu(device_name)
    report: dict[str, Any] = {
        "device": device_name,
        "processes": processes,
        "tokens_per_second_per_process": round(tokens_per_second / processes, 1),
        "flops_per_token": round(flops_per_token),
    }
    peak, peak_source = peak_flops(device_name, peak_tflops)
    if peak is None:
        report["mfu_note"] = peak_source
    else:
        report["peak_tflops"] = round(peak / 1e12, 2)
        report["peak_tflops_source"] = peak_source
        report["mfu"] = round(mfu(flops_per_token, tokens_per_second, peak, processes), 4)
    hours = wall_time_s / 3600 * processes
    report["gpu_hours"] = 0.0 if on_cpu else round(hours, 4)
    if on_cpu:
        report["cpu_process_hours"] = round(hours, 4)
    unit = "process-hours" if on_cpu else "GPU-hours"
    if gpu_hour_price is None:
        report["cost_note"] = f"set {PRICE_FIELD} (price of one GPU-hour, any currency) to estimate the cost"
    else:
        report["estimated_cost"] = round(hours * gpu_hour_price, 2)
        report["estimated_cost_basis"] = f"{hours:,.3f} {unit} x {gpu_hour_price:g} per hour ({PRICE_FIELD})"
    return report


def time_limit_seconds(limit: str) -> int:
    """Slurm time formats (`MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`) in seconds."""
    days, _, rest = limit.strip().rpartition("-")
    parts = [int(part) for part in rest.split(":")]
    if days:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 1:
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:
        hours, (minutes, seconds) = 0, parts
    else:
        hours, minutes, seconds = parts
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def slurm_time(seconds: float) -> str:
    """Seconds as a Slurm time limit, rounded up to the minute: `D-HH:MM:SS` from one day on, else `HH:MM:SS`."""
    minutes = -(-int(seconds) // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:00" if days else f"{hours:02d}:{minutes:02d}:00"


def duration(seconds: float) -> str:
    """A readable duration: `45 s`, `12.5 min`, `3.2 h`, `2.4 days`."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
