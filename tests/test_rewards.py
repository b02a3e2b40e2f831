"""GRPO reward functions: accuracy (math-verify on the answer after `</think>`) and format."""

from __future__ import annotations

import pytest

from doge_dagster.training.rewards import REWARDS, accuracy_reward, completion_text, final_answer, format_reward


def chat(content: str) -> list[dict[str, str]]:
    """A conversational completion, as TRL passes it when prompts are message lists."""
    return [{"role": "assistant", "content": content}]


# -- accuracy ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("wrap", [str, chat], ids=["plain", "conversational"])
@pytest.mark.parametrize(
    "completion, gold",
    [
        ("<think>3 + 4 = 7</think> 7", "7"),
        ("<think>\nadd them\n</think>\n\n\\boxed{7}", "7"),
        ("<think>12 - 5</think> The answer is 7", "7"),
        ("7", "7"),  # no think block: the whole text is the answer
        ("<think>half</think> 0.5", "1/2"),  # math-verify compares values, not strings
    ],
)
def test_correct_answer_scores_one(wrap, completion, gold):
    assert accuracy_reward([wrap(completion)], answer=[gold]) == [1.0], f"{completion!r} should verify against {gold!r}"


@pytest.mark.parametrize("wrap", [str, chat], ids=["plain", "conversational"])
@pytest.mark.parametrize(
    "completion, gold",
    [
        ("<think>3 + 4 = 7</think> 8", "7"),
        ("<think>the answer is 7</think> 9", "7"),  # only what follows </think> counts
        ("<think>7</think>", "7"),  # nothing after the think block
        ("<think>no idea</think> banana", "7"),
        ("", "7"),
    ],
)
def test_wrong_or_missing_answer_scores_zero(wrap, completion, gold):
    assert accuracy_reward([wrap(completion)], answer=[gold]) == [0.0], (
        f"{completion!r} must not verify against {gold!r}"
    )


@pytest.mark.parametrize("gold", ["abc", "", "   "])
@pytest.mark.parametrize(
    "completion", ["<think>x</think> abc", "<think>x</think> 7", "", "abc", chat("<think>x</think> abc")]
)
def test_unparseable_gold_never_scores_one(gold, completion):
    assert accuracy_reward([completion], answer=[gold]) == [0.0], (
        f"gold {gold!r} does not parse: {completion!r} must score 0.0, never 1.0"
    )


def test_accuracy_scores_a_batch_in_order_and_ignores_other_columns():
    completions = [chat("<think>a</think> 7"), "<think>b</think> 5", chat("<think>c</think> 12"), "<think>d</think> 1"]
    scores = accuracy_reward(completions, answer=["7", "7", "12", "abc"], prompts=[[]] * 4, solution=["x"] * 4)
    assert scores == [1.0, 0.0, 1.0, 0.0]
    assert all(isinstance(score, float) for score in scores)


def test_accuracy_needs_one_gold_per_completion():
    with pytest.raises(ValueError):
        accuracy_reward(["7", "8"], answer=["7"])


# -- format -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("wrap", [str, chat], ids=["plain", "conversational"])
@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>x</think> 7", 1.0),
        ("<think>\nstep one\nstep two\n</think>\n\nThe answer is 7", 1.0),
        ("  <think>x</think>7", 1.0),
        ("7", 0.0),  # no think block
        ("<think>x</think>", 0.0),  # no answer
        ("<think>x</think>   \n", 0.0),  # only whitespace after the block
        ("<think></think> 7", 0.0),  # empty reasoning
        ("<think>x 7", 0.0),  # unclosed
        ("x</think> 7", 0.0),  # unopened
        ("answer first <think>x</think> 7", 0.0),  # the block must come first
        ("", 0.0),
    ],
)
def test_format_reward(wrap, completion, expected):
    assert format_reward([wrap(completion)]) == [expected], f"format_reward({completion!r}) should be {expected}"


def test_format_reward_scores_a_batch_and_ignores_columns():
    assert format_reward(["<think>a</think> 1", "1", chat("<think>b</think> 2")], answer=["1", "1", "2"]) == [
        1.0,
        0.0,
        1.0,
    ]


# -- helpers and registry ---------------------------------------------------------------------------------------
def test_completion_text_and_final_answer():
    assert completion_text("plain") == "plain"
    assert completion_text(chat("hello")) == "hello"
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "ab"
    assert final_answer("<think>1</think> 2 <think>3</think> 4") == " 4"
    assert final_answer("no block") == "no block"


def test_recipe_reward_names_map_to_the_functions():
    assert REWARDS == {"accuracy": accuracy_reward, "format": format_reward}
