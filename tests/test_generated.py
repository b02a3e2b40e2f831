"""Tests for the seeded offline datasets in `doge_dagster.data.generated`."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from doge_dagster.data.generated import (
    GENERATOR_VERSION,
    HELD_OUT_ONE_IN,
    arrow_schema,
    generate_rows,
    held_out_problems,
    is_held_out,
    is_two_digit_problem,
    write_hub_layout,
)
from doge_dagster.registry import DATASETS

EQUATION = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)")
EXPRESSION = re.compile(r"(\d+) ([+-]) (\d+)")
# "Tom has 23 apples and gets 14 more" / "... gives 14 away": the problems word problems pose.
WORD_PROBLEM = re.compile(r"has (\d+) \w+ and (gets|finds|gives) (\d+)")
THOUGHT_MARKERS = ("<|begin_of_thought|>", "<|end_of_thought|>", "<|begin_of_solution|>", "<|end_of_solution|>")
ROWS_PER_DATASET = 300


def _evaluate(a: str, op: str, b: str) -> int:
    return int(a) + int(b) if op == "+" else int(a) - int(b)


def _strings(value) -> list[str]:
    """Every string inside a row value, however deeply nested."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


def _answer_to(question: str, answer: str) -> int:
    """Check that the last equation in `answer` is `a op b = c`, correct, for the numbers `question` asks about.

    Returns c. Earlier equations are intermediate steps (tens and ones) and are checked elsewhere.
    """
    equations = EQUATION.findall(answer)
    assert equations, f"no equation in {answer!r}"
    a, op, b, result = equations[-1]
    assert _evaluate(a, op, b) == int(result), answer
    asked = EXPRESSION.search(question)
    if asked:
        assert asked.groups() == (a, op, b), (question, answer)
    else:  # a word problem: its two numbers are the operands
        assert re.findall(r"\d+", question) == [a, b], (question, answer)
    return int(result)


@pytest.fixture(scope="module")
def rows_by_dataset() -> dict[str, list[dict]]:
    return {name: list(generate_rows(name, ROWS_PER_DATASET, seed=3)) for name in DATASETS}


def test_generator_version_is_a_non_empty_string():
    assert isinstance(GENERATOR_VERSION, str) and GENERATOR_VERSION


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_same_arguments_give_the_same_rows_and_longer_runs_extend_shorter_ones(name):
    rows = list(generate_rows(name, 40, seed=11))
    assert rows == list(generate_rows(name, 40, seed=11))
    assert list(generate_rows(name, 15, seed=11)) == rows[:15]


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_seed_and_split_change_the_rows(name):
    rows = list(generate_rows(name, 20, seed=1))
    assert rows != list(generate_rows(name, 20, seed=2))
    assert rows != list(generate_rows(name, 20, seed=1, split="test"))


def test_datasets_do_not_depend_on_generation_order():
    first = list(generate_rows("smoltalk", 10, seed=5))
    list(generate_rows("finemath", 50, seed=5))
    assert list(generate_rows("smoltalk", 10, seed=5)) == first


def test_unknown_dataset_and_negative_count_fail_at_call_time():
    with pytest.raises(KeyError, match="fineweb-edu"):
        generate_rows("no-such-dataset", 1, seed=0)
    with pytest.raises(ValueError, match="num_rows"):
        generate_rows("smoltalk", -1, seed=0)
    assert list(generate_rows("smoltalk", 0, seed=0)) == []


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_rows_have_exactly_the_hub_columns_and_fit_the_arrow_schema(name, rows_by_dataset):
    import pyarrow as pa

    spec, rows = DATASETS[name], rows_by_dataset[name]
    assert arrow_schema(name).names == list(spec.columns)
    for row in rows:
        assert tuple(row) == spec.columns
        for column in spec.required_columns:
            assert row[column], (column, row)
    assert pa.Table.from_pylist(rows, schema=arrow_schema(name)).to_pylist() == rows


@pytest.mark.parametrize("name", sorted(set(DATASETS) - {"ultrafeedback"}))
def test_every_stated_equation_is_correct(name, rows_by_dataset):
    equations = [match for row in rows_by_dataset[name] for text in _strings(row)
                 for match in EQUATION.findall(text)]
    assert equations or name == "python-edu"
    for a, op, b, result in equations:
        assert _evaluate(a, op, b) == int(result), (a, op, b, result)


def _problems_stated(text: str) -> set[tuple[int, str, int]]:
    """Every `a op b` a text states, as an expression or as a word problem."""
    stated = {(int(a), op, int(b)) for a, op, b in EXPRESSION.findall(text)}
    return stated | {(int(a), "+" if verb != "gives" else "-", int(b)) for a, verb, b in WORD_PROBLEM.findall(text)}


def test_held_out_problems_are_a_fifth_of_the_two_digit_problems_with_ones_digits():
    problems = held_out_problems()
    assert all(is_two_digit_problem(a, op, b) and is_held_out(a, op, b) for a, op, b, _ in problems)
    assert all(_evaluate(str(a), op, str(b)) == c for a, op, b, c in problems)
    eligible = [(a, op, b) for a in range(10, 100) for b in range(1, 100) for op in "+-"
                if is_two_digit_problem(a, op, b) and a % 10 and b % 10]
    assert abs(len(problems) / len(eligible) - 1 / HELD_OUT_ONE_IN) < 0.03
    assert {op for _, op, _, _ in problems} == {"+", "-"}
    assert not any(is_held_out(a, op, b) for a in range(10) for b in range(10) for op in "+-")
    assert not is_held_out(30, "+", 7) and not is_held_out(23, "+", 10)  # a round operand: never held out


@pytest.mark.parametrize("name", sorted(set(DATASETS) - {"python-edu"}))
def test_no_training_row_states_a_held_out_problem(name):
    """The evaluation's problems are unseen: no row of any source states one, in any field."""
    stated = {problem for row in generate_rows(name, 2000, seed=233) for text in _strings(row)
              for problem in _problems_stated(text)}
    assert not {problem for problem in stated if is_held_out(*problem)}
    # The scan sees the family the held-out problems come from, so it would catch one.
    assert len({problem for problem in stated if is_two_digit_problem(*problem) and problem[0] % 10}) > 100
    assert _problems_stated("Tom has 23 apples and gets 14 more.") == {(23, "+", 14)}


@pytest.mark.parametrize("name", ["fineweb-edu", "cosmopedia-v2"])
def test_prose_documents_are_paragraphs_with_arithmetic(name, rows_by_dataset):
    rows = rows_by_dataset[name]
    for row in rows:
        assert 40 <= len(row["text"].split()) <= 200, row["text"]
    assert sum(bool(EQUATION.search(row["text"])) for row in rows) > len(rows) * 0.8
    assert len({row["text"] for row in rows}) == len(rows)


def test_python_edu_files_run_and_describe_themselves(rows_by_dataset):
    for row in rows_by_dataset["python-edu"][:50]:
        exec(compile(row["text"], row["path"], "exec"), {})  # noqa: S102 -- the asserts inside must hold
        assert row["length_bytes"] == len(row["text"].encode())
        assert row["blob_id"] == hashlib.sha1(row["text"].encode()).hexdigest()
        assert row["int_score"] == round(row["score"] + 1e-9)


def test_smoltalk_conversations_answer_arithmetic_in_one_format(rows_by_dataset):
    rows, questions = rows_by_dataset["smoltalk"], 0
    for row in rows:
        turns = [message for message in row["messages"] if message["role"] != "system"]
        assert [message["role"] for message in row["messages"]].count("system") <= 1
        assert row["messages"][0]["role"] in {"system", "user"}
        assert [message["role"] for message in turns] == ["user", "assistant"] * (len(turns) // 2)
        for question, answer in zip(turns[::2], turns[1::2]):
            if match := EXPRESSION.search(question["content"]):
                a, op, b = match.groups()
                assert answer["content"] == f"{a} {op} {b} = {_evaluate(a, op, b)}.", (question, answer)
                questions += 1
    assert questions > len(rows)
    first_questions = [row["messages"][-2]["content"] for row in rows]
    assert sum(question.startswith("What is ") for question in first_questions) > len(rows) / 2
    answers = {message["content"] for row in rows for message in row["messages"]}
    assert "I am Doge, a small language model trained by SmallDoge." in answers
    assert any(row["messages"][0]["role"] == "system" for row in rows)
    assert any(len(row["messages"]) >= 4 for row in rows)


def test_ultrafeedback_chosen_is_correct_and_rejected_is_worse(rows_by_dataset):
    for row in rows_by_dataset["ultrafeedback"]:
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
        assert chosen[0] == rejected[0] == {"content": prompt, "role": "user"}
        assert [message["role"] for message in chosen + rejected] == ["user", "assistant"] * 2
        assert row["messages"] == chosen
        assert row["prompt_id"] == hashlib.sha256(prompt.encode()).hexdigest()
        assert rejected[1]["content"] != chosen[1]["content"]
        assert row["score_rejected"] < row["score_chosen"]
        if EXPRESSION.search(prompt):
            _answer_to(prompt, chosen[1]["content"])
            if wrong := EQUATION.search(rejected[1]["content"]):
                a, op, b, result = wrong.groups()
                assert _evaluate(a, op, b) != int(result)


def test_openthoughts_answers_use_the_markers_in_order(rows_by_dataset):
    for row in rows_by_dataset["openthoughts"]:
        assert "<|begin_of_thought|>" in row["system"]
        user, assistant = row["conversations"]
        assert (user["from"], assistant["from"]) == ("user", "assistant")
        value = assistant["value"]
        positions = [value.index(marker) for marker in THOUGHT_MARKERS]
        assert positions == sorted(positions) and all(value.count(marker) == 1 for marker in THOUGHT_MARKERS)
        assert value.startswith("<|begin_of_thought|>\n\n") and value.endswith("\n\n<|end_of_solution|>")
        assert "<|end_of_thought|>\n\n<|begin_of_solution|>\n\n" in value
        solution = value.split("<|begin_of_solution|>")[1]
        _answer_to(user["value"], solution)


def test_openr1_answers_are_correct_numbers_and_boxed(rows_by_dataset):
    for row in rows_by_dataset["openr1-math"]:
        answer = row["answer"]
        assert float(answer) == _answer_to(row["problem"], row["solution"])
        assert row["solution"].endswith(f"\\boxed{{{answer}}}")
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", row["uuid"])


# Loading through `datasets` is the contract the hub source relies on.


def _load(repo: Path, config: str, split: str, cache: Path, streaming: bool) -> list[dict]:
    import datasets

    loaded = datasets.load_dataset(str(repo), name=config, split=split, streaming=streaming,
                                   cache_dir=str(cache))
    return list(loaded)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_hub_layout_loads_with_datasets_streaming_and_not(name, tmp_path):
    spec = DATASETS[name]
    config = spec.config or "default"
    repo = write_hub_layout(name, tmp_path / "hub", num_rows=7, seed=4)
    assert repo == tmp_path / "hub" / spec.hub_id
    shard_names = sorted(path.name for path in (repo / config).iterdir())
    assert shard_names == [f"{spec.split}-00000-of-00002.parquet", f"{spec.split}-00001-of-00002.parquet"]
    expected = list(generate_rows(name, 7, seed=4, split=spec.split))
    streamed = _load(repo, config, spec.split, tmp_path / "cache", streaming=True)
    assert streamed == expected
    assert _load(repo, config, spec.split, tmp_path / "cache", streaming=False) == expected


def test_configs_sharing_a_repo_stay_listed_and_loadable(tmp_path):
    root = tmp_path / "hub"
    write_hub_layout("fineweb-edu", root, num_rows=4, seed=0)
    write_hub_layout("cosmopedia-v2", root, num_rows=5, seed=0, num_shards=1)
    repo = write_hub_layout("python-edu", root, num_rows=3, seed=0)
    readme = (repo / "README.md").read_text()
    assert readme.startswith("---\nconfigs:\n- config_name: cosmopedia-v2\n  data_files:\n  - split: train\n"
                             "    path: cosmopedia-v2/train-*\n- config_name: fineweb-edu-dedup\n")
    for name, count in (("fineweb-edu", 4), ("cosmopedia-v2", 5), ("python-edu", 3)):
        rows = _load(repo, DATASETS[name].config, "train", tmp_path / "cache", streaming=True)
        assert rows == list(generate_rows(name, count, seed=0))


def test_python_edu_as_the_hub_serves_it_has_blob_ids_only(tmp_path):
    """`without=("text",)`: the python-edu config as on the Hub, its blob ids those of the texts generate_rows gives."""
    repo = write_hub_layout("python-edu", tmp_path, num_rows=6, seed=3, without=("text",))
    rows = _load(repo, "python-edu", "train", tmp_path / "cache", streaming=True)
    full = list(generate_rows("python-edu", 6, seed=3))
    assert rows == [{key: value for key, value in row.items() if key != "text"} for row in full]
    assert all(row["blob_id"] == hashlib.sha1(row["text"].encode()).hexdigest() for row in full)
    with pytest.raises(ValueError, match="python-edu has no column.s. content to leave out"):
        write_hub_layout("python-edu", tmp_path, num_rows=6, seed=3, without=("content",))


def test_test_split_is_written_when_asked_and_differs_from_train(tmp_path):
    repo = write_hub_layout("ultrafeedback", tmp_path, num_rows=6, seed=2, test_rows=3)
    assert "config_name: default" in (repo / "README.md").read_text()
    test_rows = _load(repo, "default", "test_prefs", tmp_path / "cache", streaming=True)
    assert test_rows == list(generate_rows("ultrafeedback", 3, seed=2, split="test_prefs"))
    assert test_rows != list(generate_rows("ultrafeedback", 3, seed=2, split="train_prefs"))
    write_hub_layout("ultrafeedback", tmp_path, num_rows=6, seed=2)  # a rewrite without test rows drops them
    assert not list((repo / "default").glob("test_prefs-*")) and "test_prefs" not in (repo / "README.md").read_text()
    repo = write_hub_layout("finemath", tmp_path, num_rows=6, seed=2, test_rows=3)  # no test split exists
    assert {path.name.split("-")[0] for path in (repo / "finemath-4plus").iterdir()} == {"train"}


def test_rewriting_replaces_old_shards_and_never_writes_empty_ones(tmp_path):
    write_hub_layout("smoltalk", tmp_path, num_rows=10, seed=1, num_shards=4)
    repo = write_hub_layout("smoltalk", tmp_path, num_rows=2, seed=1, num_shards=4)
    assert sorted(path.name for path in (repo / "all").iterdir()) == [
        "train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert _load(repo, "all", "train", tmp_path / "cache", streaming=True) == list(generate_rows("smoltalk", 2, 1))
    with pytest.raises(ValueError, match="num_shards"):
        write_hub_layout("smoltalk", tmp_path, num_rows=2, seed=1, num_shards=0)
