"""A stand-in for SmallDoge/Doge-tokenizer, laid out in a Hugging Face Hub cache, for the real recipes offline.

The 20M-320M recipes load SmallDoge/Doge-tokenizer (32,768 tokens, bos/eos/pad at ids 0/1/2, the size of
`model.vocab_size`). Without the Hub, `release_tokenizer` lays out a stand-in in the Hub cache layout
(`models--SmallDoge--Doge-tokenizer/snapshots/<sha>/` and `refs/main`, the files `hf download` leaves): a
byte-level BPE trained here to exactly 32,768 tokens whose added tokens reserve the chat and think markers the
way a release tokenizer for chat and reasoning models does, `<think>` marked special. huggingface_hub reads
HF_HUB_OFFLINE / HF_HUB_CACHE / HF_HOME into constants at import, so whatever loads it runs in a subprocess
started with `offline_hub_env(cache)`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from doge_dagster.data.tokenizer import BOS, EOS, IM_END, IM_START, PAD, THINK_TOKENS

REPO = "SmallDoge/Doge-tokenizer"
SHA = "5d0c3a1f9e8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c"  # any 40 hex digits: the commit refs/main names
SIZE = 32768
RELEASE_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def release_tokenizer(cache: Path, markers: bool = True) -> dict[str, int]:
    """Lay out a 32,768-token byte-level BPE as `REPO` at `SHA` in the Hub cache `cache`; return its vocabulary.

    Added tokens first (ids 0..): bos, eos, pad and, with `markers`, `<|im_start|>`, `<|im_end|>`, `<think>`
    (special) and `</think>` (ordinary); the BPE, trained on generated words, fills the rest to exactly SIZE.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = random.Random(0)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(40_000)]
    texts = [" ".join(rng.choices(words, k=50)) for _ in range(4_000)]
    added = [BOS, EOS, PAD, *([IM_START, IM_END, *THINK_TOKENS] if markers else [])]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=SIZE, min_frequency=1, special_tokens=added,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    backend.train_from_iterator(texts, trainer=trainer)
    assert backend.get_vocab_size() == SIZE  # the corpus has pairs enough to reach the size exactly
    state = json.loads(backend.to_str())
    for entry in state["added_tokens"]:
        entry["special"] = entry["content"] != "</think>"
    extra = [entry["content"] for entry in state["added_tokens"] if entry["special"] and entry["id"] > 2]
    named = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    config = {  # as transformers 4.x saved it
        "added_tokens_decoder": {
            str(entry["id"]): {
                key: entry[key] for key in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
            }
            for entry in state["added_tokens"]
        },
        "additional_special_tokens": extra,
        **named,
        "chat_template": RELEASE_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    repo = cache / f"models--{REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / SHA
    snapshot.mkdir(parents=True)
    (snapshot / "tokenizer.json").write_text(json.dumps(state))
    (snapshot / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (snapshot / "special_tokens_map.json").write_text(
        json.dumps({"additional_special_tokens": extra, **named}, indent=2)
    )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    return Tokenizer.from_str(json.dumps(state)).get_vocab(with_added_tokens=True)


def offline_hub_env(cache: Path) -> dict[str, str]:
    """The environment a process needs to read the Hub cache `cache` (laid out under `<HF_HOME>/hub`) offline."""
    return {"HF_HUB_OFFLINE": "1", "HF_HOME": str(cache.parent), "HF_HUB_CACHE": str(cache)}
