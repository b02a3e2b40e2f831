"""Build the recipe's tokenizer: load it (Hub id or folder) or train a byte-level BPE, then add the chat parts.

Every tokenizer leaves here with the same chat template (with `{% generation %}` markers so TRL can
train on assistant tokens only) and with `<think>` / `</think>` as ordinary, non-special tokens: TRL
decodes completions with `skip_special_tokens=True`, which would strip special ones and zero the
format reward.

A loaded tokenizer (SmallDoge/Doge-tokenizer: 32,768 tokens, bos/eos/pad at ids 0/1/2) keeps its size when it
already has these tokens: nothing it has is added again, and a `<think>` it marks special becomes ordinary under
the same id. What had to be added is remembered, so `check_against_model` can name it when the tokenizer then
outgrows `model.vocab_size` (nothing is resized silently).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from doge_dagster.recipes import ModelRecipe, TokenizerRecipe

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
THINK_TOKENS = ("<think>", "</think>")
SPECIAL_TOKENS = (BOS, EOS, PAD, IM_START, IM_END)  # ids 0..4 in a trained tokenizer

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


class TokenizerError(ValueError):
    """The tokenizer cannot be built as the recipe asks."""


def train_bpe(texts: Iterable[str], recipe: TokenizerRecipe) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts`; special tokens get ids 0..4 (bos, eos, pad, im_start, im_end)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    # One token per digit, as SmolLM's tokenizer does: multi-digit tokens would hide the digits that
    # digit-by-digit arithmetic works on.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        min_frequency=recipe.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=None
    )
    return finish_tokenizer(tokenizer)


def load_tokenizer(recipe: TokenizerRecipe) -> PreTrainedTokenizerFast:
    """Load a tokenizer from the Hub or a folder and add the chat parts; clear error if it is not found."""
    from pathlib import Path

    from transformers import AutoTokenizer

    local = recipe.source == "path"
    if local and not Path(recipe.name_or_path or "").is_dir():
        # Without this check a missing folder is taken for a Hub id: minutes of retries, then a network error.
        raise TokenizerError(
            f"tokenizer.name_or_path {recipe.name_or_path!r} is not a folder (source: path); point it at a "
            "local folder with tokenizer.json, or use source: hub for a Hub id, or source: train_bpe"
        )
    try:
        config = None if local else _hub_model_config(recipe)
        tokenizer = AutoTokenizer.from_pretrained(
            recipe.name_or_path, revision=recipe.revision, local_files_only=local, config=config
        )
    except (OSError, ValueError) as error:
        raise TokenizerError(
            f"tokenizer.name_or_path {recipe.name_or_path!r} could not be loaded ({error}); give a Hub id "
            "reachable from this machine or a local folder with tokenizer.json, or use source: train_bpe"
        ) from error
    return finish_tokenizer(tokenizer)


def _hub_model_config(recipe: TokenizerRecipe):
    """The model config of a Hub tokenizer repo, or an empty one when the repo (or the cache) has none.

    transformers 5 `AutoTokenizer` resolves `config.json` before the tokenizer files. A tokenizer-only repo has
    none; online that is a 404 it tolerates, but offline (HF_HUB_OFFLINE=1) with a cache filled by `hf download`
    (which records no `.no_exist` entry for the file) it is an error. Without a config, the class comes from
    `tokenizer_config.json`, as it would online.
    """
    from transformers import AutoConfig, PreTrainedConfig

    try:
        return AutoConfig.from_pretrained(recipe.name_or_path, revision=recipe.revision)
    except (OSError, ValueError):
        return PreTrainedConfig()


ADDED_TOKENS_ATTRIBUTE = "doge_added_tokens"  # set on the tokenizer by finish_tokenizer: what it had to add


def finish_tokenizer(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """Add chat markers (special), think markers (not special), a pad token distinct from EOS and the chat template.

    Tokens the tokenizer already has are not added again; a think marker it has as a special token becomes an
    ordinary one with the same id. The tokens that were added are kept in `tokenizer.doge_added_tokens`.
    """
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    added = []
    missing_chat = [token for token in (IM_START, IM_END) if token not in vocab]
    if missing_chat:
        tokenizer.add_special_tokens({"additional_special_tokens": missing_chat}, replace_extra_special_tokens=False)
        added += missing_chat
    _make_ordinary(tokenizer, THINK_TOKENS)
    registered = {token.content for token in tokenizer.added_tokens_decoder.values()}
    # An unregistered think marker is added (a marker in the base vocabulary is registered under its own id),
    # so the text `<think>` always encodes to that one id.
    unregistered = [token for token in THINK_TOKENS if token not in registered]
    if unregistered:
        tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in unregistered])
        added += [token for token in unregistered if token not in vocab]
    tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        if PAD not in vocab:
            added.append(PAD)
        tokenizer.add_special_tokens({"pad_token": PAD})
    setattr(tokenizer, ADDED_TOKENS_ATTRIBUTE, added)
    return tokenizer


def _make_ordinary(tokenizer: PreTrainedTokenizerFast, tokens: Iterable[str]) -> None:
    """Make these tokens non-special where the tokenizer has them as special tokens, keeping their ids.

    transformers keeps special tokens in two places: its own list (`extra_special_tokens`, which makes
    `all_special_tokens` and is saved in tokenizer_config.json) and the backend's added tokens, whose `special`
    flag is what `decode(skip_special_tokens=True)` skips. The backend (tokenizers 0.23) has no call to unmark a
    token: `add_tokens` with `special=False` updates the flag it reports but not the set decoding skips. So the
    backend is rebuilt from its own serialization with the flag cleared, which keeps every id.
    """
    import json

    from tokenizers import Tokenizer

    tokens = set(tokens)
    if any(token in tokens for token in tokenizer.extra_special_tokens):
        tokenizer.extra_special_tokens = [token for token in tokenizer.extra_special_tokens if token not in tokens]
    backend = getattr(tokenizer, "backend_tokenizer", None)  # None: a Python tokenizer, whose list is all there is
    if backend is None:
        return
    special = {token.content for token in backend.get_added_tokens_decoder().values() if token.special} & tokens
    if not special:
        return
    state = json.loads(backend.to_str())
    for entry in state["added_tokens"]:
        if entry["content"] in special:
            entry["special"] = False
    rebuilt = Tokenizer.from_str(json.dumps(state))
    rebuilt.encode_special_tokens = backend.encode_special_tokens
    tokenizer._tokenizer = rebuilt  # the attribute transformers' TokenizersBackend keeps its backend in


def check_against_model(tokenizer: PreTrainedTokenizerFast, model: ModelRecipe) -> list[str]:
    """Problems that would make the model and tokenizer disagree (empty list when they fit)."""
    problems = []
    added = getattr(tokenizer, ADDED_TOKENS_ATTRIBUTE, None) or []
    if model.vocab_size != "tokenizer" and len(tokenizer) > model.vocab_size and added:
        problems.append(
            f"the tokenizer has {len(tokenizer) - len(added)} tokens and lacks {', '.join(added)}, which the "
            f"pipeline adds: that makes {len(tokenizer)} tokens, more than model.vocab_size {model.vocab_size}; set "
            f"model.vocab_size to 'tokenizer' or to at least {len(tokenizer)}, or use a tokenizer that already has "
            "these tokens (nothing is resized silently)"
        )
    elif model.vocab_size != "tokenizer" and len(tokenizer) > model.vocab_size:
        problems.append(
            f"model.vocab_size {model.vocab_size} is smaller than the tokenizer ({len(tokenizer)} tokens); "
            f"set model.vocab_size to at least {len(tokenizer)} or to 'tokenizer'"
        )
    for name in ("bos", "eos", "pad"):
        expected = getattr(model, f"{name}_token_id")
        actual = getattr(tokenizer, f"{name}_token_id")
        if actual != expected:
            problems.append(f"model.{name}_token_id is {expected} but the tokenizer's {name} token has id {actual}")
    return problems


def training_texts(rows_by_source: Iterable[Iterable[dict]]) -> Iterator[str]:
    """Flatten rows of any seed schema into plain text for BPE training."""
    for rows in rows_by_source:
        for row in rows:
            yield from _texts_of(row)


def _texts_of(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for inner in value.values():
            yield from _texts_of(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _texts_of(inner)
