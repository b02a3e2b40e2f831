"""GRPO reward functions, in TRL's signature: `fn(completions, **columns) -> list[float]`.

Completions are conversational (`[{"role": "assistant", "content": ...}]`) because prompts are message
lists. The answer is what follows `</think>` when a think block is present.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from typing import Any

THINK_FORMAT = re.compile(r"^\s*<think>.+?</think>\s*\S.*$", re.DOTALL)


def completion_text(completion: Any) -> str:
    """The text of a conversational or plain completion."""
    if isinstance(completion, list):
        return "".join(str(turn.get("content", "")) for turn in completion)
    return str(completion)


def final_answer(text: str) -> str:
    """The part after the last `</think>`, or the whole text when there is no think block."""
    return text.rsplit("</think>", 1)[-1]


def accuracy_reward(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    """1.0 when the answer after the think block verifies against the gold answer (math-verify), else 0.0.

    A gold answer that does not parse scores 0.0, never 1.0: the seed scored those as correct.
    """
    from math_verify import parse, verify

    scores = []
    for completion, gold in zip(completions, answer, strict=True):
        gold_parsed = parse(str(gold))
        if not gold_parsed:
            scores.append(0.0)
            continue
        predicted = parse(final_answer(completion_text(completion)))
        scores.append(1.0 if predicted and verify(gold_parsed, predicted) else 0.0)
    return scores


def format_reward(completions: list[Any], **_: Any) -> list[float]:
    """1.0 for `<think>...</think>` followed by an answer, else 0.0."""
    return [1.0 if THINK_FORMAT.match(completion_text(completion)) else 0.0 for completion in completions]


REWARDS = {"accuracy": accuracy_reward, "format": format_reward}

# Test-only: with DOGE_FAULT_ZERO_REWARDS=1 every reward function scores 0, to show that the `reward_improves`
# check catches a GRPO run whose rewards carry no signal.
ZERO_REWARDS_FAULT_ENV = "DOGE_FAULT_ZERO_REWARDS"


def reward_function(name: str) -> Callable[..., list[float]]:
    """The reward function called `name` in `REWARDS` (scoring 0 everywhere under the test fault)."""
    function = REWARDS[name]
    if os.environ.get(ZERO_REWARDS_FAULT_ENV) != "1":
        return function

    @functools.wraps(function)  # TRL logs a reward under its function's name
    def zero(completions: list[Any], **_: Any) -> list[float]:
        return [0.0] * len(completions)

    return zero
