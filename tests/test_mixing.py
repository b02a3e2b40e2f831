"""Mixing by ratio: token-exact pretraining mixtures and example-exact conversation/preference/reasoning/math mixtures."""

from __future__ import annotations

import copy
import itertools
import json
import random
import re
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from doge_dagster.data.generated import generate_rows
from doge_dagster.data.mixing import (
    DEFAULT_IDENTITY_PROMPT,
    DEFAULT_THINKING_PROMPT,
    TOKENIZE_BATCH,
    MixingError,
    formatter_for,
    split_counts,
    write_mixture,
)
from doge_dagster.data.shards import load_mixture
from doge_dagster.data.sources import open_source
from doge_dagster.data.tokenizer import train_bpe, training_texts
from doge_dagster.recipes import SourceRef, TokenizerRecipe
from doge_dagster.registry import DATASETS

PRETRAIN_RATIOS = {"fineweb-edu": 0.7, "cosmopedia-v2": 0.2, "python-edu": 0.05, "finemath": 0.05}
TOTAL_TOKENS = 60_000
MAX_LENGTH = 256
THOUGHT_MARKERS = ("<|begin_of_thought|>", "<|end_of_thought|>", "<|begin_of_solution|>", "<|end_of_solution|>")


OUTPUT_ROOT = Path(tempfile.mkdtemp(prefix="doge-mixing-tests-"))
_OUTPUTS = itertools.count()


def mix(entries, total, tokenizer, **kwargs):
    """Write a mixture into a fresh folder (one process unless asked); return its splits and stats."""
    folder = OUTPUT_ROOT / f"mixture-{next(_OUTPUTS)}"
    kwargs.setdefault("dataset_num_proc", 1)
    stats = write_mixture(entries, total, tokenizer, folder, **kwargs)
    return load_mixture(folder), stats


class Counting:
    """An iterable source that counts the rows pulled from it (and can be endless)."""

    def __init__(self, rows, endless: bool = False):
        self.rows, self.endless, self.pulled = list(rows), endless, []

    def __iter__(self):
        source = itertools.cycle(self.rows) if self.endless else iter(self.rows)
        for row in source:
            self.pulled.append(row)
            yield row


@pytest.fixture(scope="module")
def tokenizer():
    texts = training_texts([generate_rows(name, 300, seed=1) for name in DATASETS])
    return train_bpe(texts, TokenizerRecipe(source="train_bpe", vocab_size=1024, min_frequency=2))


@pytest.fixture(scope="module")
def rows():
    return {name: list(generate_rows(name, 1500, seed=7, split=DATASETS[name].split)) for name in DATASETS}


def pretrain_entries(rows, ratios=PRETRAIN_RATIOS):
    return [{"name": name, "ratio": ratio, "dataset": rows[name]} for name, ratio in ratios.items()]


def ids_of(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def expected_documents(tokenizer, texts: list[str], budget: int) -> tuple[list[list[int]], bool]:
    """Documents (EOS appended) a source contributes in order until `budget` tokens; whether the last was cut."""
    documents, total = [], 0
    for ids in ids_of(tokenizer, texts):
        ids = ids + [tokenizer.eos_token_id]
        if total + len(ids) >= budget:
            documents.append(ids[: budget - total])
            return documents, total + len(ids) > budget
        documents.append(ids)
        total += len(ids)
    raise AssertionError("source too small for the test budget")


def all_rows(splits, column: str = "input_ids") -> list:
    return [*splits["train"][column], *splits["test"][column]]


def templated_length(tokenizer, messages, generation_prompt: bool = False) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def as_key(value) -> str:
    return json.dumps(value, sort_keys=True)


@pytest.fixture(scope="module")
def pretrain(tokenizer, rows):
    entries = pretrain_entries(rows)
    snapshot = copy.deepcopy(entries)
    splits, stats = mix(
        entries, TOTAL_TOKENS, tokenizer, kind="pretrain", max_length=MAX_LENGTH, seed=11, test_size=0.05
    )
    return entries, snapshot, splits, stats


# -- pretraining: token budgets, packing, EOS and pad ---------------------------------------------------------------
def test_pretrain_rows_are_packed_to_max_length(pretrain):
    _, _, splits, stats = pretrain
    packed = all_rows(splits)
    assert all(len(ids) == MAX_LENGTH for ids in packed)
    assert len(packed) == -(-TOTAL_TOKENS // MAX_LENGTH)
    assert splits["train"].column_names == ["input_ids"] and len(splits["test"]) >= 1
    assert (stats.train_rows, stats.test_rows) == (len(splits["train"]), len(splits["test"]))


def test_pretrain_total_tokens_and_padding(pretrain, tokenizer):
    _, _, splits, _ = pretrain
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    assert pad is not None and pad != eos
    packed = all_rows(splits)
    assert sum(token != pad for ids in packed for token in ids) == TOTAL_TOKENS
    padded = [ids for ids in packed if pad in ids]
    assert len(padded) <= 1  # only the last packed row is padded
    for ids in padded:
        first = ids.index(pad)
        assert set(ids[first:]) == {pad} and first == TOTAL_TOKENS % MAX_LENGTH


def test_pretrain_uses_exactly_the_budgeted_documents(pretrain, tokenizer, rows):
    """Each source gives its first documents up to its token budget; the output holds exactly their tokens."""
    _, _, splits, stats = pretrain
    targets = split_counts(TOTAL_TOKENS, PRETRAIN_RATIOS)
    expected_tokens: Counter = Counter()
    documents_used, cut_documents = 0, 0
    for name, target in targets.items():
        documents, cut = expected_documents(tokenizer, [row["text"] for row in rows[name]], target)
        assert sum(map(len, documents)) == target
        expected_tokens.update(token for document in documents for token in document)
        documents_used += len(documents)
        cut_documents += cut
        assert (stats.sources[name].rows_used, stats.sources[name].tokens) == (len(documents), target)
    pad = tokenizer.pad_token_id
    produced = Counter(token for ids in all_rows(splits) for token in ids if token != pad)
    assert produced == expected_tokens
    # one EOS after every document, except a document cut at its source's budget
    assert produced[tokenizer.eos_token_id] == documents_used - cut_documents


def test_pretrain_realised_ratios_are_within_one_percent(pretrain):
    _, _, _, stats = pretrain
    assert stats.unit == "tokens"
    for name, ratio in PRETRAIN_RATIOS.items():
        assert abs(stats.realised_ratios[name] - ratio) <= 0.01
    assert stats.max_ratio_error() <= 0.01
    assert sum(source.tokens for source in stats.sources.values()) == TOTAL_TOKENS
    assert stats.to_dict()["requested_ratios"] == PRETRAIN_RATIOS


def test_pretrain_documents_stay_whole_between_eos(pretrain, tokenizer, rows):
    """Every run of tokens between two EOS inside a row is one whole source document, in order.

    The one exception: a document cut at its source's budget has no EOS, so it runs into the next one.
    """
    _, _, splits, _ = pretrain
    eos = tokenizer.eos_token_id
    known = {tuple(ids) for name in PRETRAIN_RATIOS for ids in ids_of(tokenizer, [row["text"] for row in rows[name]])}
    interior, joined = 0, 0
    for ids in all_rows(splits):
        positions = [index for index, token in enumerate(ids) if token == eos]
        for start, end in itertools.pairwise(positions):
            segment = tuple(ids[start + 1 : end])
            interior += 1
            if segment in known:
                continue
            # a cut prefix of one document followed by a whole document
            assert any(
                segment[cut:] in known and any(document[:cut] == segment[:cut] for document in known)
                for cut in range(1, len(segment))
            ), segment
            joined += 1
    assert interior > 20
    assert joined <= len(PRETRAIN_RATIOS)


def test_pretrain_interleaves_sources(tokenizer, rows):
    """Documents are drawn from the sources at random (seeded), not one source after the other."""
    first, second = _python_positions(tokenizer, rows, seed=11), _python_positions(tokenizer, rows, seed=12)
    assert first != second
    documents = first[0]
    positions = first[1]
    assert len(positions) >= 5
    # python-edu holds 5% of the tokens: its documents are spread over the stream, not in one block
    assert max(positions) - min(positions) > documents / 2
    assert max(b - a for a, b in itertools.pairwise(positions)) > 2


def _python_positions(tokenizer, rows, seed):
    """(number of documents, indices of python-edu documents) in the packed stream, read back in order.

    Two rows (the second one padded) and a test split of one row let us restore the packing order."""
    splits, _ = mix(
        pretrain_entries(rows), TOTAL_TOKENS, tokenizer, kind="pretrain", max_length=TOTAL_TOKENS * 2 // 3, seed=seed,
        test_size=0.49,
    )
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    packed = sorted(all_rows(splits), key=lambda ids: ids[-1] == pad)
    assert packed[0][-1] != pad and packed[1][-1] == pad
    stream = [token for ids in packed for token in ids if token != pad]
    python_docs = {tuple(ids) for ids in ids_of(tokenizer, [row["text"] for row in rows["python-edu"][:40]])}
    documents, start = [], 0
    for index, token in enumerate(stream):
        if token == eos:
            documents.append(tuple(stream[start:index]))
            start = index + 1
    return len(documents), [index for index, document in enumerate(documents) if document in python_docs]


def test_pretrain_is_seeded(tokenizer, rows, pretrain):
    _, _, splits, _ = pretrain
    again, _ = mix(pretrain_entries(rows), TOTAL_TOKENS, tokenizer, kind="pretrain",
                                     max_length=MAX_LENGTH, seed=11, test_size=0.05)
    other, _ = mix(pretrain_entries(rows), TOTAL_TOKENS, tokenizer, kind="pretrain",
                                     max_length=MAX_LENGTH, seed=12, test_size=0.05)
    assert again["train"]["input_ids"] == splits["train"]["input_ids"]
    assert again["test"]["input_ids"] == splits["test"]["input_ids"]
    assert other["train"]["input_ids"] != splits["train"]["input_ids"]


def test_caller_entries_are_not_mutated(pretrain):
    entries, snapshot, _, _ = pretrain
    assert entries == snapshot


def test_seed_style_entries_are_accepted(tokenizer, rows):
    _splits, stats = mix([{"finemath": 1.0, "dataset": rows["finemath"]}], 3000, tokenizer,
                                          kind="pretrain", max_length=128)
    assert stats.sources["finemath"].tokens == 3000
    with pytest.raises(MixingError, match="name, ratio and dataset"):
        mix([{"finemath": 1.0}], 3000, tokenizer, kind="pretrain")


def test_sampling_comes_from_the_shuffled_stream_not_the_first_rows(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("DOGE_GENERATED_CACHE", str(tmp_path / "generated"))
    ref = SourceRef(dataset="fineweb-edu", ratio=1.0, kind="generated", num_rows=2000)
    original = [row["id"] for row in generate_rows("fineweb-edu", 2000, seed=233)]
    budget = 8000

    def mix_with_seed(seed):
        stream = Counting(open_source(ref, seed=233, shuffle_buffer=2000))
        splits, stats = mix([{"name": "fineweb-edu", "ratio": 1.0, "dataset": stream}], budget,
                                              tokenizer, kind="pretrain", max_length=128, seed=seed)
        return stream, splits, stats

    stream, splits, stats = mix_with_seed(1)
    used = [row["id"] for row in stream.pulled[: stats.sources["fineweb-edu"].rows_used]]
    assert len(used) >= 20
    overlap = set(used) & set(original[: len(used)])
    assert len(overlap) < len(used) / 3
    assert max(original.index(row_id) for row_id in used) > 5 * len(used)
    documents, _ = expected_documents(tokenizer, [row["text"] for row in stream.pulled[: len(used)]], budget)
    produced = Counter(token for ids in all_rows(splits) for token in ids if token != tokenizer.pad_token_id)
    assert produced == Counter(token for document in documents for token in document)
    again, again_splits, _ = mix_with_seed(1)
    assert [row["id"] for row in again.pulled] == [row["id"] for row in stream.pulled]
    assert again_splits["train"]["input_ids"] == splits["train"]["input_ids"]


def test_a_huge_source_is_read_only_as_far_as_its_budget(tokenizer, rows):
    endless = Counting(rows["fineweb-edu"], endless=True)
    small = Counting(rows["finemath"])
    _splits, stats = mix(
        [{"name": "fineweb-edu", "ratio": 0.8, "dataset": endless}, {"name": "finemath", "ratio": 0.2, "dataset": small}],
        10_000, tokenizer, kind="pretrain", max_length=128,
    )
    for name, source in (("fineweb-edu", endless), ("finemath", small)):
        used = stats.sources[name].rows_used
        assert used <= len(source.pulled) <= used + TOKENIZE_BATCH
        assert stats.sources[name].rows_read == used  # a pretraining source drops nothing it reads


def test_a_source_too_small_is_named(tokenizer, rows):
    entries = pretrain_entries(rows)
    entries[2] = {"name": "python-edu", "ratio": 0.05, "dataset": rows["python-edu"][:3]}
    with pytest.raises(MixingError) as info:
        mix(entries, TOTAL_TOKENS, tokenizer, kind="pretrain", max_length=MAX_LENGTH)
    message = str(info.value)
    assert "'python-edu'" in message and "ran out after 3 rows" in message and "lower total_size" in message


def test_bad_arguments_are_refused(tokenizer, rows):
    with pytest.raises(MixingError, match="sum to 0.95"):
        mix(pretrain_entries(rows, {"fineweb-edu": 0.7, "cosmopedia-v2": 0.25}), 1000, tokenizer)
    with pytest.raises(MixingError, match="must be positive"):
        mix(pretrain_entries(rows), 0, tokenizer)
    with pytest.raises(MixingError, match="too few"):
        mix(pretrain_entries(rows, {"finemath": 1.0}), 50, tokenizer, max_length=128)
    same = copy.deepcopy(tokenizer)
    same.pad_token = same.eos_token
    assert same.pad_token_id == same.eos_token_id
    with pytest.raises(MixingError, match="differ from EOS"):
        mix(pretrain_entries(rows), 1000, same)


# -- example mixtures -----------------------------------------------------------------------------------------------
def test_example_counts_per_source_are_exact(tokenizer, rows):
    ratios = {"smoltalk": 0.75, "openthoughts": 0.25}
    total = 203
    entries = [{"name": name, "ratio": ratio, "dataset": rows[name]} for name, ratio in ratios.items()]
    snapshot = copy.deepcopy(entries)
    splits, stats = mix(entries, total, tokenizer, kind="sft", max_length=2048, seed=3, test_size=0.1)
    assert entries == snapshot
    counts = Counter(all_rows(splits, "source"))
    assert counts == split_counts(total, ratios) == {"smoltalk": 152, "openthoughts": 51}
    assert {name: source.rows_used for name, source in stats.sources.items()} == counts
    assert stats.unit == "examples" and stats.realised_ratios == {name: counts[name] / total for name in ratios}
    assert len(splits["train"]) + len(splits["test"]) == total and len(splits["test"]) == 21
    assert sorted(splits["train"].column_names) == ["messages", "source"]
    # shuffled: the sources are not in two blocks
    sources = splits["train"]["source"]
    assert sources[: counts["smoltalk"]].count("openthoughts") > 0
    again, _ = mix(entries, total, tokenizer, kind="sft", max_length=2048, seed=3, test_size=0.1)
    assert again["train"].to_list() == splits["train"].to_list()


def test_examples_longer_than_max_length_are_dropped_and_counted(tokenizer, rows):
    source = rows["smoltalk"]
    lengths = [templated_length(tokenizer, row["messages"]) for row in source]
    max_length = sorted(lengths)[len(lengths) // 2]  # about half the conversations are too long
    total = 300
    expected, dropped = [], 0
    for row, length in zip(source, lengths):
        if len(expected) == total:
            break
        if length > max_length:
            dropped += 1
        else:
            expected.append(row["messages"])
    assert dropped > 50
    splits, stats = mix([{"name": "smoltalk", "ratio": 1.0, "dataset": source}], total, tokenizer,
                                          kind="sft", max_length=max_length, seed=1)
    assert stats.sources["smoltalk"].dropped_too_long == dropped
    assert stats.sources["smoltalk"].rows_used == total
    produced = all_rows(splits, "messages")
    assert sorted(map(as_key, produced)) == sorted(map(as_key, expected))
    assert max(templated_length(tokenizer, messages) for messages in produced) <= max_length


def test_a_source_with_too_few_short_examples_is_named(tokenizer, rows):
    with pytest.raises(MixingError) as info:
        mix([{"name": "smoltalk", "ratio": 1.0, "dataset": rows["smoltalk"]}], 100, tokenizer,
                              kind="sft", max_length=5)
    message = str(info.value)
    assert "'smoltalk'" in message and "0 usable examples of the 100" in message and "raise max_length" in message


def test_examples_are_read_batch_by_batch(tokenizer, rows):
    endless = Counting(rows["openr1-math"], endless=True)
    _, stats = mix([{"name": "openr1-math", "ratio": 1.0, "dataset": endless}], 100, tokenizer,
                                     kind="grpo", max_length=512)
    assert stats.sources["openr1-math"].rows_used == 100
    assert len(endless.pulled) <= 100 + TOKENIZE_BATCH


def _think_parts(content: str) -> tuple[str, str]:
    match = re.fullmatch(r"<think>\n(.*)\n</think>\n\n(.*)", content, flags=re.DOTALL)
    assert match, content
    return match[1], match[2]


def test_distill_keeps_the_reasoning_as_think_blocks(tokenizer, rows):
    source = rows["openthoughts"]
    total = 120
    splits, _ = mix([{"name": "openthoughts", "ratio": 1.0, "dataset": source}], total, tokenizer,
                                      kind="distill", max_length=4096, formatting_func=formatter_for("thinking"))
    expected = []
    for row in source[:total]:
        question, answer = row["conversations"][0]["value"], row["conversations"][1]["value"]
        thought = answer.split("<|begin_of_thought|>")[1].split("<|end_of_thought|>")[0].strip()
        solution = answer.split("<|begin_of_solution|>")[1].split("<|end_of_solution|>")[0].strip()
        expected.append((question, thought, solution))
    produced = []
    for messages in all_rows(splits, "messages"):
        assert [message["role"] for message in messages] == ["system", "user", "assistant"]
        assert messages[0]["content"] == DEFAULT_THINKING_PROMPT
        text = json.dumps(messages)
        assert not any(marker in text for marker in THOUGHT_MARKERS)
        thought, solution = _think_parts(messages[2]["content"])
        assert thought and solution
        produced.append((messages[1]["content"], thought, solution))
    assert sorted(produced) == sorted(expected)


def test_dpo_prompt_is_chosen_without_its_last_turn(tokenizer, rows):
    source = rows["ultrafeedback"]
    total = 150
    splits, stats = mix([{"name": "ultrafeedback", "ratio": 1.0, "dataset": source}], total,
                                          tokenizer, kind="dpo", max_length=1024)
    assert stats.sources["ultrafeedback"].dropped_too_long == 0
    expected = [as_key((row["chosen"][:-1], row["chosen"][-1:], row["rejected"][-1:])) for row in source[:total]]
    produced = [as_key((row["prompt"], row["chosen"], row["rejected"])) for row in splits["train"].to_list() + splits["test"].to_list()]
    assert sorted(produced) == sorted(expected)
    for row in splits["train"]:
        assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
    assert sorted(splits["train"].column_names) == ["chosen", "prompt", "rejected", "source"]


def test_grpo_prompts_are_message_lists_and_answers_are_kept(tokenizer, rows):
    source = rows["openr1-math"]
    total = 150
    splits, _ = mix([{"name": "openr1-math", "ratio": 1.0, "dataset": source}], total, tokenizer,
                                      kind="grpo", max_length=512, formatting_func=formatter_for("thinking"))
    expected = sorted(as_key((row["problem"], row["answer"], row["solution"])) for row in source[:total])
    produced = []
    for row in splits["train"].to_list() + splits["test"].to_list():
        prompt = row["prompt"]
        assert isinstance(prompt, list) and all(set(turn) == {"role", "content"} for turn in prompt)
        assert [turn["role"] for turn in prompt] == ["system", "user"]
        assert prompt[0]["content"] == DEFAULT_THINKING_PROMPT
        assert isinstance(row["answer"], str) and row["answer"]
        produced.append(as_key((prompt[1]["content"], row["answer"], row["solution"])))
    assert sorted(produced) == expected


def test_identity_formatting_adds_a_system_turn_only_where_missing(tokenizer, rows):
    source = rows["smoltalk"]
    total = 400
    splits, _ = mix([{"name": "smoltalk", "ratio": 1.0, "dataset": source}], total, tokenizer,
                                      kind="sft", max_length=2048, formatting_func=formatter_for("identity"))
    expected = []
    for row in source[:total]:
        messages = row["messages"]
        expected.append(messages if messages[0]["role"] == "system" else
                        [{"role": "system", "content": DEFAULT_IDENTITY_PROMPT}, *messages])
    produced = all_rows(splits, "messages")
    assert sorted(map(as_key, produced)) == sorted(map(as_key, expected))
    assert all(messages[0]["role"] == "system" for messages in produced)
    assert sum(messages[0]["content"] != DEFAULT_IDENTITY_PROMPT for messages in produced) > 0  # own system kept


def test_formatters():
    conversation = {"messages": [{"role": "user", "content": "hi"}]}
    assert formatter_for("none") is None
    assert formatter_for("none", "Be brief.")(conversation)["messages"][0] == {"role": "system", "content": "Be brief."}
    assert formatter_for("identity", "Custom.")(conversation)["messages"][0]["content"] == "Custom."
    assert formatter_for("thinking")({"prompt": [{"role": "user", "content": "1+1"}], "answer": "2"})["prompt"][0] == {
        "role": "system", "content": DEFAULT_THINKING_PROMPT}
    assert conversation == {"messages": [{"role": "user", "content": "hi"}]}  # not mutated
    with pytest.raises(MixingError, match="none, identity or thinking"):
        formatter_for("fancy")


# -- split_counts ---------------------------------------------------------------------------------------------------
def test_split_counts_examples():
    assert split_counts(600_000, PRETRAIN_RATIOS) == {"fineweb-edu": 420_000, "cosmopedia-v2": 120_000,
                                                      "python-edu": 30_000, "finemath": 30_000}
    assert sorted(split_counts(10, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}).values()) == [3, 3, 4]
    assert split_counts(7, {"a": 0.5, "b": 0.5}) in ({"a": 4, "b": 3}, {"a": 3, "b": 4})
    assert split_counts(0, {"a": 1.0}) == {"a": 0}
    assert split_counts(1, {"a": 0.01, "b": 0.99}) == {"a": 0, "b": 1}


def test_split_counts_sum_exactly_to_the_total():
    rng = random.Random(0)
    for _ in range(3000):
        weights = [rng.random() + 1e-3 for _ in range(rng.randrange(1, 8))]
        ratios = {f"s{index}": weight / sum(weights) for index, weight in enumerate(weights)}
        total = rng.choice([1, 2, 3, 17, 1000, 4_194_304_000, rng.randrange(10**13)])
        counts = split_counts(total, ratios)
        assert sum(counts.values()) == total
        assert all(0 <= count and abs(count - total * ratios[name]) < 1 + 1e-6 * total for name, count in counts.items())


def test_split_counts_with_ratios_at_the_edge_of_the_tolerance():
    # ratios are accepted when they sum to 1 within 1e-6; at 4B tokens that gap is thousands of tokens
    ratios = {"fineweb-edu": 0.7 + 5e-7, "cosmopedia-v2": 0.2, "python-edu": 0.05, "finemath": 0.05}
    assert sum(split_counts(4_194_304_000, ratios).values()) == 4_194_304_000
    ratios = {"fineweb-edu": 0.7 - 5e-7, "cosmopedia-v2": 0.2, "python-edu": 0.05, "finemath": 0.05}
    assert sum(split_counts(4_194_304_000, ratios).values()) == 4_194_304_000
