"""The checks a trained model can get, by name: a stage's record lists the ones its asset declares, and the
runner computes exactly those, so the names declared in Dagster and the results produced cannot drift.

Each check takes the published candidate (`TrainedModel`) and returns `(passed, detail)`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECK_QUESTION = "What is 3 + 4?"
CheckResult = tuple[bool, str]


@dataclass
class TrainedModel:
    """A staged model folder, its tokenizer, its logged loss curve and the recipe's model section."""

    folder: Path
    tokenizer: Any
    curve: list[tuple[int, float]]
    vocab_size: int | str
    # GRPO: the logged mean reward per step, total ("reward") and per reward function (its name).
    rewards: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    reward_ceiling: float = 0.95  # the recipe's `reward_ceiling` (see `reward_improves`)

    @functools.cached_property
    def model(self) -> Any:
        """The model loaded as a user would: `AutoModelForCausalLM`, native Doge, no remote code."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(self.folder))

    @property
    def losses(self) -> list[float]:
        """The logged training losses, in order."""
        return [loss for _, loss in self.curve]


def loss_finite(trained: TrainedModel) -> CheckResult:
    """Every logged loss is a finite number (GRPO's loss is not expected to fall)."""
    losses = trained.losses
    finite = bool(losses) and all(math.isfinite(loss) for loss in losses)
    return finite, f"{len(losses)} logged losses, all finite: {finite}"


def loss_finite_and_falling(trained: TrainedModel) -> CheckResult:
    """Finite losses, the last below the first."""
    losses = trained.losses
    finite, _ = loss_finite(trained)
    detail = f"loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "no loss logged"
    return finite and losses[-1] < losses[0], detail


REWARD_WINDOW = 0.3  # the first and the last 30% of the logged steps are compared
FORMAT_REWARD = "format_reward"


def _window_means(points: list[tuple[int, float]]) -> tuple[float, float]:
    size = max(1, round(len(points) * REWARD_WINDOW))
    values = [value for _, value in points]
    return sum(values[:size]) / size, sum(values[-size:]) / size


def reward_improves(trained: TrainedModel) -> CheckResult:
    """GRPO learned: the mean reward over the last logged steps beats the first ones (the total reward, or the
    format reward at least), or the format reward is at its ceiling (the recipe's `reward_ceiling`, 0.95 by
    default) over the last steps.

    Rewards that carry no signal (always 0) fail: nothing improves and the format rate is not at its ceiling.
    The ceiling clause is for a distilled model that already answers in the think format: the format reward
    cannot rise, and the accuracy reward of a few sampled completions a step moves less than its noise.
    """
    total = trained.rewards.get("reward", [])
    if len(total) < 2:
        return False, f"{len(total)} logged reward(s): log at least two steps (lower logging_steps) to check learning"
    curves = {"reward": total, **{name: points for name, points in trained.rewards.items() if points}}
    windows = {name: _window_means(points) for name, points in curves.items()}
    detail = ", ".join(f"{name} {first:.3f} -> {last:.3f}" for name, (first, last) in windows.items())
    improved = [name for name in ("reward", FORMAT_REWARD) if name in windows and windows[name][1] > windows[name][0]]
    if improved:
        return True, f"{detail} (improved: {', '.join(improved)})"
    if FORMAT_REWARD in windows and windows[FORMAT_REWARD][1] >= trained.reward_ceiling:
        return True, f"{detail} (the format reward is at its ceiling over the last steps)"
    return False, f"{detail}: no improvement over the first steps, and the format reward is not at its ceiling"


def vocab_matches_tokenizer(trained: TrainedModel) -> CheckResult:
    """The model's vocabulary is the recipe's and covers every tokenizer token."""
    tokenizer, model = trained.tokenizer, trained.model
    expected = len(tokenizer) if trained.vocab_size == "tokenizer" else trained.vocab_size
    return (
        model.config.vocab_size == expected and model.config.vocab_size >= len(tokenizer),
        f"model vocab {model.config.vocab_size}, tokenizer {len(tokenizer)} tokens, recipe {trained.vocab_size}",
    )


def loads_and_generates(trained: TrainedModel) -> CheckResult:
    """The folder loads without remote code and generates new tokens."""
    import torch

    tokenizer = trained.tokenizer
    prompt = tokenizer("The number", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        generated = trained.model.generate(**prompt, max_new_tokens=8, do_sample=False)
    new_tokens = generated.shape[1] - prompt["input_ids"].shape[1]
    return (
        new_tokens > 0,
        f"AutoModelForCausalLM loaded without remote code; generated {tokenizer.decode(generated[0][-new_tokens:])!r}",
    )


def chat_template_reply(trained: TrainedModel) -> CheckResult:
    """A user message through the chat template gets a non-empty reply."""
    reply = chat_reply(trained.model, trained.tokenizer, CHECK_QUESTION)
    return bool(reply.strip()), f"{CHECK_QUESTION!r} -> {reply!r}"


def chat_reply(model, tokenizer, question: str, max_new_tokens: int = 32) -> str:
    """Greedy reply of a chat model to one user message, through the chat template."""
    import torch

    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)


TRAINING_CHECKS: dict[str, Callable[[TrainedModel], CheckResult]] = {
    check.__name__: check
    for check in (
        loss_finite,
        loss_finite_and_falling,
        reward_improves,
        vocab_matches_tokenizer,
        loads_and_generates,
        chat_template_reply,
    )
}


def run_checks(names: tuple[str, ...], trained: TrainedModel) -> dict[str, CheckResult]:
    """The named checks' results, in the order named."""
    return {name: TRAINING_CHECKS[name](trained) for name in names}
