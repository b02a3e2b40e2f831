"""GPU training throughput of the seed Doge shapes: tokens/s and MFU at bf16, sequence 2048.

Run where a GPU is available:  python bench/bench_gpu.py --sizes 20M 160M
It builds `DogeForCausalLM` from the recipe's model section (the same code path as `doge_base`), trains
on random tokens with fused AdamW under bf16 autocast, and reports tokens/s and model FLOPs
utilization (`doge_dagster.throughput`: 6 x parameters plus attention FLOPs per token, against the card's
dense bf16 peak from the same table training runs report MFU with). `--device cpu
--steps 2 --seq 128` is a smoke run that keeps the script honest on machines without a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import time

import torch
import transformers
from measure import report
from transformers import DogeConfig, DogeForCausalLM

from doge_dagster.recipes import load_recipe
from doge_dagster.throughput import mfu as model_utilization
from doge_dagster.throughput import model_flops_per_token, peak_flops


def model_for(size: str, attention: str | None = None) -> DogeForCausalLM:
    """The recipe's Doge architecture with random weights (transformers' default attention unless named)."""
    fields = load_recipe(size).model.model_dump()
    fields["vocab_size"] = 32768 if fields["vocab_size"] == "tokenizer" else fields["vocab_size"]
    config = DogeConfig(**fields, router_aux_loss_coef=0.0)
    if attention is None:  # as `doge_base` builds it
        return DogeForCausalLM(config)
    return DogeForCausalLM._from_config(config, attn_implementation=attention)


def bench(
    size: str, device: str, batch: int, seq: int, steps: int, warmup: int, compile_model: bool, attention: str | None
) -> dict:
    """Time `steps` optimizer steps after `warmup`; return throughput numbers."""
    torch.manual_seed(0)
    model = model_for(size, attention).to(device)
    attention = model.config._attn_implementation
    if compile_model:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=device == "cuda")
    tokens = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32

    def step() -> None:
        with torch.autocast(device_type=device, dtype=dtype, enabled=device == "cuda"):
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return throughput(model, size, attention, device, seq, f"{batch} x {seq}", batch * seq * steps / seconds)


def throughput(model, size: str, attention: str, device: str, seq: int, shape: str, tokens_per_second: float) -> dict:
    """One result row: tokens/s, MFU against the card's bf16 peak, peak memory since the last reset."""
    card = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak, _ = peak_flops(card)  # the library's table (doge_dagster/throughput.py), as training runs report it
    mfu = model_utilization(model_flops_per_token(model, seq), tokens_per_second, peak) if peak else None
    memory = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return {
        "size": size,
        "attention": attention,
        "card": card,
        "shape": shape,
        "tokens_per_s": tokens_per_second,
        "mfu": mfu,
        "peak_gb": memory,
    }


def bench_trainer(
    size: str, device: str, batch: int, accumulation: int, seq: int, steps: int, warmup: int, compile_model: bool
) -> dict:
    """The same measurement through HF `Trainer` (the pretraining stage's trainer) with the recipe's optimizer
    settings, `batch` x `accumulation` sequences per optimizer step: what the stage's batch layout costs."""
    import tempfile

    from transformers import Trainer, TrainerCallback, TrainingArguments

    class RandomTokens(torch.utils.data.Dataset):
        def __init__(self, vocab_size: int) -> None:
            self.vocab_size = vocab_size

        def __len__(self) -> int:  # exactly the run's sequences: the sampler permutes all of them
            return (warmup + steps) * batch * accumulation

        def __getitem__(self, index: int) -> dict:
            ids = torch.randint(0, self.vocab_size, (seq,), generator=torch.Generator().manual_seed(index))
            return {"input_ids": ids, "labels": ids}

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.times: dict[int, float] = {}

        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
                if state.global_step == warmup:
                    torch.cuda.reset_peak_memory_stats()
            self.times[state.global_step] = time.perf_counter()

    torch.manual_seed(0)
    model = model_for(size)
    recipe = load_recipe(size).stages.pretrain.training
    optimizer_keys = (
        "learning_rate",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "weight_decay",
        "max_grad_norm",
        "optim",
    )
    clock = StepClock()
    with tempfile.TemporaryDirectory() as output_dir:
        arguments = TrainingArguments(
            output_dir=output_dir,
            **{key: recipe[key] for key in optimizer_keys if key in recipe},
            max_steps=warmup + steps,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            bf16=device == "cuda",
            use_cpu=device == "cpu",
            torch_compile=compile_model,
            save_strategy="no",
            logging_steps=10**6,
            report_to=[],
            dataloader_num_workers=2,
        )
        Trainer(
            model=model, args=arguments, train_dataset=RandomTokens(model.config.vocab_size), callbacks=[clock]
        ).train()
    seconds = clock.times[warmup + steps] - clock.times[warmup]
    shape = f"{batch} x {accumulation} acc x {seq}"
    return throughput(
        model, size, model.config._attn_implementation, device, seq, shape, batch * accumulation * seq * steps / seconds
    )


def main() -> None:
    """Parse arguments, run each size, print and record a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["20M", "160M"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--attn", default=None, help="attention implementation (eager, sdpa, flex_attention)")
    parser.add_argument(
        "--trainer", type=int, metavar="ACCUMULATION", default=None,
        help="measure through HF Trainer with the recipe's optimizer, --batch x ACCUMULATION sequences per step",
    )  # fmt: skip
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()
    if args.trainer is not None and args.attn is not None:
        parser.error("--attn applies to the raw loop only; --trainer builds the model as doge_base does")
    rows = [
        bench(size, args.device, args.batch, args.seq, args.steps, args.warmup, args.compile, args.attn)
        if args.trainer is None
        else bench_trainer(size, args.device, args.batch, args.trainer, args.seq, args.steps, args.warmup, args.compile)
        for size in args.sizes
    ]
    loop = "raw loop" if args.trainer is None else "HF Trainer, recipe optimizer"
    software = f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}"
    lines = [
        (
            f"### GPU training throughput, {datetime.date.today()}, {rows[0]['card']}, bf16={args.device == 'cuda'}, "
            f"compile={args.compile}, {loop}, {args.steps} timed steps after {args.warmup} warm-up"
        ),
        "",
        software,
        "",
        "| shape | attention | sequences per step | tokens/s | MFU | peak GiB |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
        memory = f"{row['peak_gb']:.1f}" if row["peak_gb"] is not None else "n/a"
        lines.append(
            f"| Doge-{row['size']} | {row['attention']} | {row['shape']} | {row['tokens_per_s']:,.0f} | {mfu} | {memory} |"
        )
    table = "\n".join(lines)
    report(table, args.record)


if __name__ == "__main__":
    main()
