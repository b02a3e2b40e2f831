"""lighteval tasks: every recipe task string resolves offline, the custom tasks and metrics do what they say,
and the compatibility fixes are still needed (a failing test here says which fix to remove)."""

from __future__ import annotations

import os
import random
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from helpers import program_command, program_env

from doge_dagster.data.generated import is_held_out
from doge_dagster.evaluation import compat
from doge_dagster.evaluation.report import lighteval_task, task_name
from doge_dagster.recipes import available_recipes, load_recipe

PROJECT_ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def tasks():
    """The custom tasks module (imports lighteval, with the compatibility fixes applied)."""
    os.environ.update(OFFLINE)
    from doge_dagster.evaluation import tasks as module

    return module


# -- compatibility fixes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fix", ["hub_list_models_model_name", "tiny_benchmarks_download_at_import"])
def test_compat_fix_is_still_needed(fix):
    assert compat.needed()[fix], (
        f"compat fix {fix!r} is no longer needed by the installed lighteval / huggingface_hub: remove it from "
        "doge_dagster/evaluation/compat.py (and this parameter)"
    )


def test_lighteval_registry_imports_offline_only_with_the_fixes(tmp_path):
    env = program_env({**os.environ, **OFFLINE})
    fixed = subprocess.run(program_command("lighteval_import", "--apply"), cwd=PROJECT_ROOT, env=env,
                           capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert fixed.returncode == 0 and "imported" in fixed.stdout, fixed.stderr[-3000:]
    assert "hub_list_models_model_name" in fixed.stdout
    bare = subprocess.run(program_command("lighteval_import"), cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert bare.returncode != 0, "lighteval's registry imports without the fixes now: remove them from compat.py"
    assert "model_name" in bare.stderr or "ConnectionError" in bare.stderr or "NameResolution" in bare.stderr


def test_xxhash_pin_holds():
    """lighteval 0.11's details logger calls `xxhash.xxh64(str)`, which xxhash 4 rejects: pinned below 4."""
    import xxhash

    assert int(metadata.version("xxhash").split(".")[0]) < 4
    assert xxhash.xxh64("a prompt").hexdigest()


# -- every recipe's task strings resolve, offline -----------------------------------------------------------------
def test_the_copied_suites_are_lightevals(tasks):
    """Recipes are checked against `recipe_sections.LIGHTEVAL_SUITES`, a copy of lighteval's suites (importing
    lighteval costs seconds): kept in step."""
    from lighteval.tasks.registry import DEFAULT_SUITES

    from doge_dagster.recipe_sections import LIGHTEVAL_SUITES

    assert set(LIGHTEVAL_SUITES) == set(DEFAULT_SUITES)


def test_every_recipe_task_string_resolves_in_lighteval_registry(tasks, tmp_path):
    from lighteval.tasks.registry import Registry

    from doge_dagster.evaluation.runner import resolve_subtasks

    module = tasks.tasks_module(tmp_path)
    expanded = {}
    for name in available_recipes():
        recipe = load_recipe(name)
        for stage in ("base", "instruct", "reason"):
            strings = getattr(recipe.evaluation, stage).tasks
            registry = Registry(tasks=",".join(lighteval_task(task) for task in strings), custom_tasks=module)
            subtasks = resolve_subtasks(registry, strings)
            for task in strings:
                assert subtasks[task], f"{name} evaluation.{stage}: {task} does not resolve"
                for full_name in subtasks[task]:
                    [config] = [
                        c for c in registry.task_to_configs[full_name.rsplit("|", 1)[0]] if c.full_name == full_name
                    ]
                    assert config.hf_repo and config.metrics and config.prompt_function, (name, task)
                expanded[task] = len(subtasks[task])
    assert (
        expanded["custom|arc|5|0"] == 2
        and expanded["custom|mmlu|5|0"] == 57
        and expanded["custom|arithmetic_mc|0|0"] == 1
    )
    assert len([task for task in expanded if task.startswith("harness|bbh:")]) == 27


def test_seed_supersets_expand_and_real_recipes_keep_the_seed_strings(tasks, tmp_path):
    from lighteval.tasks.registry import Registry

    from doge_dagster.evaluation.runner import resolve_subtasks

    strings = ["custom|arc|5|0", "custom|mmlu|0|0", "custom|gpqa:diamond|0|0"]
    registry = Registry(
        tasks=",".join(lighteval_task(task) for task in strings), custom_tasks=tasks.tasks_module(tmp_path)
    )
    subtasks = resolve_subtasks(registry, strings)
    assert subtasks["custom|arc|5|0"] == ["custom|arc:challenge|5", "custom|arc:easy|5"]
    assert len(subtasks["custom|mmlu|0|0"]) == 57 and subtasks["custom|gpqa:diamond|0|0"] == ["custom|gpqa:diamond|0"]
    for config in tasks.SEED_TASKS:
        assert "/" in config.hf_repo, f"{config.name}: a real Hub repo"
    recipe = load_recipe("20M")
    assert (
        "custom|mmlu|5|0" in recipe.evaluation.base.tasks
        and "custom|gpqa:diamond|0|0" in recipe.evaluation.reason.tasks
    )
    assert "harness|bbh:causal_judgement|3|0" in recipe.evaluation.instruct.tasks  # the seed's spelling, aliased


# -- prompts --------------------------------------------------------------------------------------------------------
def gpqa_line(question: str) -> dict:
    return {"Question": question, "Correct Answer": "right", "Incorrect Answer 1": "w1", "Incorrect Answer 2": "w2",
            "Incorrect Answer 3": "w3"}  # fmt: skip


def test_gpqa_answer_order_is_seeded_by_the_question(tasks):
    first = tasks.gpqa_prompt(gpqa_line("Why is the sky blue?"), "gpqa:diamond")
    random.seed(12345)  # the seed's prompt used the global generator: any reseeding changed its answers
    again = tasks.gpqa_prompt(gpqa_line("Why is the sky blue?"), "gpqa:diamond")
    assert first.gold_index == again.gold_index and first.query == again.query
    assert f"{'ABCD'[first.gold_index]}) right" in first.query and first.choices == ["A", "B", "C", "D"]
    positions = {tasks.gpqa_gold_index(f"question {index}") for index in range(40)}
    assert positions == {0, 1, 2, 3}


def test_seed_prompts(tasks):
    doc = tasks.mmlu_cloze_prompt(
        {"subject": "high_school_physics", "question": "What falls?", "choices": ["a", "b"], "answer": 1}
    )
    assert doc.query.startswith("The following are questions about high school physics.") and doc.choices == [
        " a",
        " b",
    ]
    swag = tasks.prompt_hellaswag({"ctx_a": "A man", "ctx_b": "sits [title] down", "activity_label": "Sitting",
                                   "endings": ["x", "y"], "label": "1"})  # fmt: skip
    assert swag.gold_index == 1 and "[" not in swag.query


# -- arithmetic data ----------------------------------------------------------------------------------------------
def test_arithmetic_rows_are_seeded_held_out_questions(tasks):
    rows = tasks.arithmetic_rows(200)
    assert rows == tasks.arithmetic_rows(200)
    assert rows != tasks.arithmetic_rows(200, seed=1)
    assert len({(row["a"], row["op"], row["b"]) for row in rows}) == len(rows)
    for row in rows:
        assert is_held_out(row["a"], row["op"], row["b"])
        assert row["question"] == f"What is {row['a']} {row['op']} {row['b']}?"
        assert int(row["answer"]) == (row["a"] + row["b"] if row["op"] == "+" else row["a"] - row["b"])
        assert len(set(row["choices"])) == 4
        assert row["choices"][row["gold_index"]] == f" {row['a']} {row['op']} {row['b']} = {row['answer']}."
    assert {row["gold_index"] for row in rows} == {0, 1, 2, 3}
    chat = tasks.arithmetic_rows(5, continuation_prefix="")
    assert all(not choice.startswith(" ") for row in chat for choice in row["choices"])


def test_arithmetic_data_folder_loads_as_a_local_dataset(tasks, tmp_path):
    from datasets import load_dataset

    folder = tasks.write_arithmetic_data(tmp_path / "arithmetic", num_rows=20)
    dataset = load_dataset(str(folder), "default")
    assert dataset["test"].num_rows == 20
    doc = tasks.arithmetic_mc_prompt(dataset["test"][0], "arithmetic_mc")
    assert doc.query.startswith("What is") and len(doc.choices) == 4


# -- metrics ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "number"),
    [("3 + 4 = 7.", "7"), (" = 7.", "7"), (" is 3.", "3"), ("The answer is 12", "12"), ("7", "7"), ("no idea", None),
     ("3 + 4 = 7. So 5 + 3 = 8.", "7"), ("8 - 3 = 5", "5")],
)  # fmt: skip
def test_extract_number(tasks, text, number):
    assert tasks.extract_number(text) == number


def response(text: str, post_processed: str | None = None):
    from lighteval.models.model_output import ModelResponse

    return ModelResponse(text=[text], text_post_processed=[post_processed if post_processed is not None else text])


def test_generative_metrics(tasks):
    doc = tasks.arithmetic_gen_prompt({"question": "What is 3 + 4?", "answer": "7"}, "arithmetic_gen")
    exact, think_acc, think_format = tasks.NumberExactMatch(), tasks.ThinkAnswerMatch(), tasks.ThinkFormat()
    assert exact.compute(doc, response("3 + 4 = 7.")) == 1.0
    assert exact.compute(doc, response("3 + 4 = 8.")) == 0.0
    thought = "<think>\nI count up 4 steps from 3: 4, 5, 6, 7. So 3 + 4 = 7.\n</think>\n\n3 + 4 = 7."
    assert exact.compute(doc, response(thought, "\n\n3 + 4 = 7.")) == 1.0  # lighteval removed the think block
    assert think_acc.compute(doc, response(thought)) == 1.0 and think_format.compute(doc, response(thought)) == 1.0
    wrong_after = "<think>\n3 + 4 = 7\n</think>\n\n3 + 4 = 9."
    assert think_acc.compute(doc, response(wrong_after)) == 0.0  # only the answer after the block counts
    unclosed = "<think>\nI count up: 4, 5, 6, 7"
    assert think_format.compute(doc, response(unclosed)) == 0.0
    assert think_format.compute(doc, response("<think>\nthinking\n</think>")) == 0.0  # no answer after the block
    assert think_format.compute(doc, response("3 + 4 = 7.")) == 0.0


def test_task_names_and_strings():
    assert lighteval_task("custom|arc|5|0") == "custom|arc|5"
    assert task_name("harness|bbh:navigate|3|0") == "bbh:navigate"
