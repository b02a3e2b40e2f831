"""Build the recipe's tokenizer: load it (Hub id or folder) or train a byte-level BPE, then add the chat parts.

Every tokenizer leaves here with the same chat template (with `{% generation %}` markers so TRL can
train on assistant tokens only) and with `<think>` / `</think>` as ordinary, non-special tokens: TRL
decodes completions with `skip_special_tokens=True`, which would strip special ones and zero the
format reward.
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
        tokenizer = AutoTokenizer.from_pretrained(recipe.name_or_path, revision=recipe.revision, local_files_only=local)
    except (OSError, ValueError) as error:
        raise TokenizerError(
            f"tokenizer.name_or_path {recipe.name_or_path!r} could not be loaded ({error}); give a Hub id "
            "reachable from this machine or a local folder with tokenizer.json, or use source: train_bpe"
        ) from error
    return finish_tokenizer(tokenizer)


def finish_tokenizer(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """Add chat markers (special), think markers (not special) and the chat template."""
    from tokenizers import AddedToken

    missing_chat = [token for token in (IM_START, IM_END) if token not in tokenizer.get_vocab()]
    if missing_chat:
        tokenizer.add_special_tokens({"additional_special_tokens": missing_chat})
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in THINK_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD})
    return tokenizer


def check_against_model(tokenizer: PreTrainedTokenizerFast, model: ModelRecipe) -> list[str]:
    """Problems that would make the model and tokenizer disagree (empty list when they fit)."""
    problems = []
    if model.vocab_size != "tokenizer" and len(tokenizer) > model.vocab_size:
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
