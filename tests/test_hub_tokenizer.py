"""The real recipes' tokenizer path: `source: hub` SmallDoge/Doge-tokenizer, read offline from a Hub cache.

The 20M-320M recipes load SmallDoge/Doge-tokenizer (32,768 tokens, bos/eos/pad at ids 0/1/2, the size of
`model.vocab_size`). Without the Hub, the test lays out a stand-in in the Hub cache layout (`hub_cache.py`:
a byte-level BPE of exactly 32,768 tokens whose added tokens reserve the chat and think markers, `<think>`
marked special). huggingface_hub reads HF_HUB_OFFLINE / HF_HUB_CACHE / HF_HOME into constants at import, so
the load runs in a subprocess started with them (`programs/hub_tokenizer.py`).
"""

from __future__ import annotations

import os
from pathlib import Path

from helpers import run_program
from hub_cache import REPO, SIZE, offline_hub_env, release_tokenizer
from programs.hub_tokenizer import vocab_digest

from doge_dagster.data.tokenizer import BOS, CHAT_TEMPLATE, EOS, IM_END, IM_START, PAD, THINK_TOKENS, finish_tokenizer
from doge_dagster.recipes import load_recipe


def load_offline(tmp_path: Path, markers: bool) -> tuple[dict, dict[str, int]]:
    """Lay out the stand-in and load the 20M recipe's tokenizer from it offline; return the program's result
    and the stand-in's vocabulary."""
    cache = tmp_path / "hf-home" / "hub"
    vocab = release_tokenizer(cache, markers)
    before = sorted(cache.rglob("*"))
    env = {**os.environ, **offline_hub_env(cache)}
    result = run_program("hub_tokenizer", ["20M", str(tmp_path / "saved")], env, timeout=120).result
    assert sorted(cache.rglob("*")) == before  # read from the cache as laid out: nothing fetched or recorded
    return result, vocab


def test_the_20m_recipe_reads_the_doge_tokenizer_from_the_hub_cache_as_it_is(tmp_path):
    recipe = load_recipe("20M")
    assert (recipe.tokenizer.source, recipe.tokenizer.name_or_path) == ("hub", REPO)
    assert recipe.model.vocab_size == SIZE
    result, vocab = load_offline(tmp_path, markers=True)

    assert result["problems"] == []
    assert result["added_by_pipeline"] == []
    for loaded in (result, result["reloaded"]):  # as loaded, and as the mixtures and trainers load the artifact
        # nothing added or resized: the same 32,768 tokens under the same ids
        assert loaded["size"] == SIZE
        assert loaded["vocab_digest"] == vocab_digest(vocab)
        assert (
            loaded["ids"]
            == [0, 1, 2]
            == [recipe.model.bos_token_id, recipe.model.eos_token_id, recipe.model.pad_token_id]
        )
        # <think> kept its id and is no longer special; the chat markers stay special
        assert loaded["added"]["<think>"] == [vocab["<think>"], False]
        assert loaded["added"]["</think>"] == [vocab["</think>"], False]
        assert loaded["think_ids"] == {token: [vocab[token]] for token in THINK_TOKENS}
        assert not set(THINK_TOKENS) & set(loaded["all_special_tokens"])
        assert {IM_START, IM_END} <= set(loaded["all_special_tokens"])
        assert loaded["decoded_skipping_special"] == "assistant\n<think>a plan</think> the answer"
        # the project's chat template replaced the release's, and its generation markers work
        assert loaded["chat_template"] == CHAT_TEMPLATE
        assert loaded["rendered"] == (
            "<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n<think>3 + 4</think> 7<|im_end|>\n"
        )
        assert loaded["assistant_tokens"] > 0


def test_a_full_tokenizer_without_the_markers_fails_the_check_naming_them(tmp_path):
    result, vocab = load_offline(tmp_path, markers=False)
    assert len(vocab) == SIZE and not {IM_START, IM_END, *THINK_TOKENS} & set(vocab)
    added = [IM_START, IM_END, *THINK_TOKENS]
    assert result["added_by_pipeline"] == added and result["size"] == SIZE + 4
    [problem] = result["problems"]
    assert f"lacks {', '.join(added)}" in problem
    assert f"makes {SIZE + 4} tokens, more than model.vocab_size {SIZE}" in problem
    assert f"set model.vocab_size to 'tokenizer' or to at least {SIZE + 4}" in problem


def _small_bpe(special: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(["a small corpus of words"] * 10, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, unk_token=None)


def test_finishing_twice_adds_nothing_the_second_time():
    tokenizer = finish_tokenizer(_small_bpe([BOS, EOS]))
    assert tokenizer.doge_added_tokens == [IM_START, IM_END, *THINK_TOKENS, PAD]
    vocab = tokenizer.get_vocab()
    again = finish_tokenizer(tokenizer)
    assert again.doge_added_tokens == [] and again.get_vocab() == vocab
    assert again.pad_token == PAD and again.pad_token_id != again.eos_token_id


def test_a_pad_equal_to_eos_is_replaced_by_the_pad_token_it_already_has():
    tokenizer = _small_bpe([BOS, EOS, PAD])
    tokenizer.pad_token = EOS
    vocab_size = len(tokenizer)
    finished = finish_tokenizer(tokenizer)
    assert finished.pad_token_id == 2 and PAD not in finished.doge_added_tokens
    assert len(finished) == vocab_size + 4  # the chat and think markers only
