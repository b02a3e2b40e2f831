"""Checkpoints on the Hugging Face Hub as inputs: `stages.pretrain.init_from: SmallDoge/Doge-20M`.

A Hub id is resolved to a commit through `huggingface_hub` (the Hub, or its local cache when
`HF_HUB_OFFLINE=1`), and that commit becomes an upstream of the model (`hub_model:<id>` in the plan and the
manifest): the version moves when the published checkpoint does, the trainer loads exactly that commit, and
the lineage names it. Before launch the checkpoint's `config.json` is compared with the recipe's model section,
so a checkpoint of another architecture or vocabulary is refused naming both.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

HUB_MODEL_PREFIX = "hub_model:"
EXTERNAL_PREFIXES = ("source_", HUB_MODEL_PREFIX)  # upstream keys that are not artifacts of the store
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# The fields that decide whether a checkpoint's weights fit the recipe's model.
ARCHITECTURE_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "vocab_size",
)  # fmt: skip


class HubModelError(ValueError):
    """A Hub checkpoint cannot be resolved now, or does not fit the recipe; the message names the field and fix."""


def is_hub_id(reference: str | None) -> bool:
    """Whether `reference` reads as a Hub id (`org/name`) rather than a local folder or `asset:version`."""
    return bool(reference) and HUB_ID.match(reference) is not None and not Path(reference).exists()


def resolve_hub_model(repo_id: str, revision: str | None = None, field: str = "init_from") -> Path:
    """The local snapshot folder of `repo_id` at `revision` (default `main`) holding at least its `config.json`;
    its name is the resolved commit. Online this downloads the config only; the trainer downloads the rest.
    Not cached in the process: a long-lived code server or daemon must see a branch move to a new commit."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=["config.json"]))
    except Exception as error:  # noqa: BLE001 - offline without a cached snapshot, a private repo, no network...
        raise HubModelError(
            f"{field} {repo_id!r}{f' at revision {revision!r}' if revision else ''}: cannot resolve it on the Hub or "
            f"in the Hub cache ({type(error).__name__}: {error}); download it first (`hf download {repo_id}`) and run "
            "with HF_HUB_OFFLINE=1, or name a local folder"
        ) from None


def hub_commit(repo_id: str, revision: str | None = None, field: str = "init_from") -> str:
    """The commit sha `repo_id` at `revision` resolves to."""
    return resolve_hub_model(repo_id, revision, field).name


def download_checkpoint(repo_id: str, commit: str) -> str:
    """A local folder with the whole checkpoint at `commit` (from the cache when it is there)."""
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, revision=commit)


def architecture_mismatches(checkpoint: dict[str, Any], model: dict[str, Any]) -> list[str]:
    """`field: checkpoint X, recipe Y` for every architecture field where a checkpoint config and the recipe's
    model section (vocab resolved to a number) differ, the model type first."""
    problems = []
    if checkpoint.get("model_type") != "doge":
        problems.append(f"model_type: checkpoint {checkpoint.get('model_type')!r}, recipe 'doge'")
    for name in ARCHITECTURE_FIELDS:
        if name in checkpoint and name in model and checkpoint[name] != model[name]:
            problems.append(f"{name}: checkpoint {checkpoint[name]}, recipe model.{name} {model[name]}")
    return problems


def check_checkpoint(folder: Path, described: str, model: dict[str, Any], field: str) -> None:
    """Refuse a checkpoint whose architecture or vocabulary differs from the recipe's `model` section."""
    config = folder / "config.json"
    if not config.is_file():
        raise HubModelError(f"{field} {described}: no config.json in {folder}; is it a transformers model?")
    problems = architecture_mismatches(json.loads(config.read_text()), model)
    if problems:
        raise HubModelError(
            f"{field} {described} does not fit the recipe's model: {'; '.join(problems)}. Set the `model` section to "
            "the checkpoint's architecture (continued pretraining keeps it), or continue from a matching checkpoint"
        )
