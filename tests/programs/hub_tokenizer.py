"""Load a recipe's tokenizer as the tokenizer asset does, under this process's Hugging Face environment.

Usage: `python -m programs.hub_tokenizer RECIPE OUT_DIR`.

huggingface_hub reads HF_HUB_OFFLINE, HF_HUB_CACHE and HF_HOME into module constants when it is imported, so a
test points them at a cache it laid out by starting this program with them set. The program loads the recipe's
tokenizer section with `load_tokenizer`, checks it against the recipe's model (`check_against_model`), saves it
to OUT_DIR and loads it back with plain `AutoTokenizer`, as the mixtures and trainers do. Result: what the
test asserts on, for the loaded tokenizer and for the reloaded one.
"""

from __future__ import annotations

import hashlib
import json
import sys

from doge_dagster.data.tokenizer import THINK_TOKENS, check_against_model, load_tokenizer
from doge_dagster.recipes import load_recipe
from programs import emit

SAMPLE = "<|im_start|>assistant\n<think>a plan</think> the answer<|im_end|>"
MESSAGES = [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "<think>3 + 4</think> 7"}]


def vocab_digest(vocab: dict[str, int]) -> str:
    """One hash of every (token, id) pair: equal digests, the same tokens under the same ids."""
    return hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()


def describe(tokenizer) -> dict:
    rendered = tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    masked = tokenizer.apply_chat_template(MESSAGES, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    return {
        "size": len(tokenizer),
        "vocab_digest": vocab_digest(tokenizer.get_vocab()),
        "ids": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id],
        "all_special_tokens": tokenizer.all_special_tokens,
        "added": {token.content: [index, token.special] for index, token in tokenizer.added_tokens_decoder.items()},
        "think_ids": {token: tokenizer.encode(token, add_special_tokens=False) for token in THINK_TOKENS},
        "decoded_skipping_special": tokenizer.decode(
            tokenizer.encode(SAMPLE, add_special_tokens=False), skip_special_tokens=True
        ),
        "chat_template": tokenizer.chat_template,
        "rendered": rendered,
        "assistant_tokens": sum(masked["assistant_masks"]),
    }


def main(argv: list[str]) -> None:
    from transformers import AutoTokenizer

    name, out_dir = argv
    recipe = load_recipe(name)
    tokenizer = load_tokenizer(recipe.tokenizer)
    result = describe(tokenizer)
    result["problems"] = check_against_model(tokenizer, recipe.model)
    result["added_by_pipeline"] = tokenizer.doge_added_tokens
    tokenizer.save_pretrained(out_dir)
    result["reloaded"] = describe(AutoTokenizer.from_pretrained(out_dir))
    emit(result)


if __name__ == "__main__":
    main(sys.argv[1:])
