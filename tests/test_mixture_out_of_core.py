"""Mixtures on disk: shards, the seeded split, any number of processes, resume after a kill, and the seed's API."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from datasets import load_from_disk

from doge_dagster.data.generated import generate_rows
from doge_dagster.data.mixing import STATS_FILE, STREAM_DIR, MixingError, write_mixture
from doge_dagster.data.shards import PROGRESS_FILE, RESUME_DIR, ResumeMismatchError
from doge_dagster.data.tokenizer import train_bpe, training_texts
from doge_dagster.recipes import TokenizerRecipe
from doge_dagster.registry import DATASETS

PRETRAIN_RATIOS = {"fineweb-edu": 0.7, "cosmopedia-v2": 0.2, "python-edu": 0.05, "finemath": 0.05}
TOKENS = 80_000


class Killed(Exception):
    """Stands for the process dying: raised from inside a source, after some checkpoints were written."""


class DiesAfter:
    """Rows of a source that raise `Killed` after `limit` rows (the rest of the build never happens)."""

    def __init__(self, rows, limit: int):
        self.rows, self.limit = rows, limit

    def __iter__(self):
        for index, row in enumerate(self.rows):
            if index == self.limit:
                raise Killed
            yield row


@pytest.fixture(scope="module")
def tokenizer():
    texts = training_texts([generate_rows(name, 300, seed=1) for name in DATASETS])
    return train_bpe(texts, TokenizerRecipe(source="train_bpe", vocab_size=1024, min_frequency=2))


@pytest.fixture(scope="module")
def rows():
    return {name: list(generate_rows(name, 2500, seed=5, split=DATASETS[name].split)) for name in DATASETS}


def pretrain_entries(rows, wrap=None):
    wrap = wrap or {}
    return [
        {"name": name, "ratio": ratio, "dataset": wrap.get(name, lambda r: r)(rows[name])}
        for name, ratio in PRETRAIN_RATIOS.items()
    ]


def sft_entries(rows, wrap=None):
    source = rows["smoltalk"]
    return [{"name": "smoltalk", "ratio": 1.0, "dataset": wrap(source) if wrap else source}]


def folder_digest(folder: Path) -> dict[str, str]:
    """Every file of a folder by relative path -> sha256 (what a publish would copy)."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


PRETRAIN = {"kind": "pretrain", "max_length": 64, "seed": 9, "test_size": 0.05, "shard_rows": 150}
SFT = {"kind": "sft", "max_length": 256, "seed": 4, "test_size": 0.05, "shard_rows": 120}


def test_the_mixture_loads_from_disk_memory_mapped(tokenizer, rows, tmp_path):
    stats = write_mixture(pretrain_entries(rows), TOKENS, tokenizer, tmp_path / "m", dataset_num_proc=1, **PRETRAIN)
    splits = load_from_disk(str(tmp_path / "m"))
    assert (len(splits["train"]), len(splits["test"])) == (stats.train_rows, stats.test_rows)
    assert stats.test_rows == math.ceil((stats.train_rows + stats.test_rows) * 0.05)  # datasets' train_test_split
    assert all(len(ids) == 64 for ids in splits["train"]["input_ids"])
    assert not (tmp_path / "m" / STREAM_DIR).exists()  # the stream's shards are gone once the splits are saved
    assert json.loads((tmp_path / "m" / STATS_FILE).read_text())["train_rows"] == stats.train_rows
    # memory-mapped from the saved files, not read into memory
    assert splits["train"].cache_files and all(Path(f["filename"]).parent == tmp_path / "m" / "train" for f in splits["train"].cache_files)


@pytest.mark.parametrize("settings", [PRETRAIN, SFT], ids=["pretrain", "sft"])
def test_any_number_of_processes_writes_the_same_files(tokenizer, rows, tmp_path, settings):
    entries = pretrain_entries if settings["kind"] == "pretrain" else sft_entries
    total = TOKENS if settings["kind"] == "pretrain" else 900
    one = write_mixture(entries(rows), total, tokenizer, tmp_path / "one", dataset_num_proc=1, **settings)
    two = write_mixture(entries(rows), total, tokenizer, tmp_path / "two", dataset_num_proc=2, **settings)
    assert one.to_dict() == two.to_dict()
    assert folder_digest(tmp_path / "one") == folder_digest(tmp_path / "two")


@pytest.mark.parametrize("settings", [PRETRAIN, SFT], ids=["pretrain", "sft"])
def test_a_killed_build_resumes_and_writes_what_an_uninterrupted_build_writes(tokenizer, rows, tmp_path, settings):
    pretrain = settings["kind"] == "pretrain"
    entries = pretrain_entries if pretrain else sft_entries
    total = 3 * TOKENS if pretrain else 1800  # sources are read ahead by a batch: die well after the first
    whole = write_mixture(entries(rows), total, tokenizer, tmp_path / "whole", dataset_num_proc=1, **settings)

    dying = {"fineweb-edu": lambda r: DiesAfter(r, 700)} if pretrain else (lambda r: DiesAfter(r, 1300))
    with pytest.raises(Killed):
        write_mixture(entries(rows, dying), total, tokenizer, tmp_path / "resumed", dataset_num_proc=1, **settings)
    progress = json.loads((tmp_path / "resumed" / STREAM_DIR / RESUME_DIR / PROGRESS_FILE).read_text())
    done = progress["shards"]["rows"]
    assert 0 < done < whole.train_rows
    assert len(progress["shards"]["files"]) >= 3  # written shard by shard, not in one piece at the end

    messages = []
    resumed = write_mixture(entries(rows), total, tokenizer, tmp_path / "resumed", dataset_num_proc=2, log=messages.append, **settings)
    assert any(f"{done:,} rows already written" in message for message in messages)
    assert resumed.to_dict() == whole.to_dict()
    assert folder_digest(tmp_path / "resumed") == folder_digest(tmp_path / "whole")


def test_a_checkpoint_of_another_mixture_is_refused(tokenizer, rows, tmp_path):
    dying = {"fineweb-edu": lambda r: DiesAfter(r, 700)}
    with pytest.raises(Killed):
        write_mixture(pretrain_entries(rows, dying), 3 * TOKENS, tokenizer, tmp_path / "m", dataset_num_proc=1, **PRETRAIN)
    changed = {**PRETRAIN, "seed": 10}
    with pytest.raises(ResumeMismatchError, match="another mixture"):
        write_mixture(pretrain_entries(rows), 3 * TOKENS, tokenizer, tmp_path / "m", dataset_num_proc=1, **changed)


def test_progress_names_every_source_with_rate_and_eta(tokenizer, rows, tmp_path):
    messages = []
    write_mixture(pretrain_entries(rows), TOKENS, tokenizer, tmp_path / "m", dataset_num_proc=1, log=messages.append, **PRETRAIN)
    final = messages[-1]
    for name in PRETRAIN_RATIOS:
        assert name in final
    assert "tokens" in final and "/s" in final and "ETA" in final


def test_too_small_a_mixture_for_a_test_split_is_refused(tokenizer, rows, tmp_path):
    with pytest.raises(MixingError, match="too few for a train and a test split"):
        write_mixture(pretrain_entries(rows), 64, tokenizer, tmp_path / "m", kind="pretrain", max_length=64, test_size=0.02)


SEED_SNIPPET = """
from transformers import AutoTokenizer
from doge_dagster.data.mixing import mix_datasets_by_radio

tokenizer = AutoTokenizer.from_pretrained({tokenizer!r})
datasets_and_ratios = [
    {{"fineweb-edu": 0.7}},
    {{"cosmopedia-v2": 0.2}},
    {{"python-edu": 0.05}},
    {{"finemath": 0.05}},
]
mixed_dataset = mix_datasets_by_radio(
    datasets_and_ratios=datasets_and_ratios,
    total_sample_size=60000,
    dataset_text_field="text",
    processing_class=tokenizer,
    max_length=256,
    packing=True,
    formatting_func=None,
    dataset_num_proc=2,
    seed=233,
    cache_dir="./cache",
)
mixed_dataset.save_to_disk("./pretrain_dataset")

def formatting_func(example):
    system = {{"role": "system", "content": "You are a helpful assistant."}}
    return {{"conversation": [system, *example["messages"]]}}

sft_dataset = mix_datasets_by_radio(
    datasets_and_ratios=[{{"smoltalk": 1.0}}],
    total_sample_size=300,
    dataset_text_field="text",
    processing_class=tokenizer,
    max_length=2048,
    packing=False,
    formatting_func=formatting_func,
    dataset_num_proc=1,
    seed=42,
    cache_dir="./cache",
)
sft_dataset.save_to_disk("./sft_dataset")
"""


def test_the_seed_snippet_runs_as_written_on_generated_data(tokenizer, tmp_path):
    """The guide's call, names only: the library opens the datasets (generated here, by the environment)."""
    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer.save_pretrained(tokenizer_dir)
    (tmp_path / "snippet.py").write_text(textwrap.dedent(SEED_SNIPPET.format(tokenizer=str(tokenizer_dir))))
    env = {**os.environ, "DOGE_DATA_GENERATED": "3000", "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    pretrain = load_from_disk(str(tmp_path / "pretrain_dataset"))
    assert set(pretrain) == {"train", "test"}
    assert all(len(ids) == 256 for ids in pretrain["train"]["input_ids"][:20])
    assert sum(ids.count(tokenizer.pad_token_id) for ids in pretrain["train"]["input_ids"]) < 256
    sft = load_from_disk(str(tmp_path / "sft_dataset"))
    assert len(sft["train"]) + len(sft["test"]) == 300
    assert all(row["messages"][0]["content"] == "You are a helpful assistant." for row in sft["train"])
    assert list((tmp_path / "cache" / "mixtures").iterdir())  # cache_dir holds the mixtures


def test_a_process_killed_by_sigkill_resumes(tokenizer, rows, tmp_path):
    """A real SIGKILL mid-build (no exception handler runs), then the same call completes the same mixture."""
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    texts = [row["text"] for row in rows["fineweb-edu"]] * 40  # long enough to be killed mid-way
    (tmp_path / "rows.json").write_text(json.dumps(texts))
    program = textwrap.dedent(f"""
        import json, sys, time
        from transformers import AutoTokenizer
        from doge_dagster.data.mixing import write_mixture

        class Slow:
            def __init__(self, texts, delay):
                self.texts, self.delay = texts, delay
            def __iter__(self):
                for text in self.texts:
                    time.sleep(self.delay)
                    yield {{"text": text}}

        tokenizer = AutoTokenizer.from_pretrained({str(tmp_path / "tokenizer")!r})
        texts = json.load(open({str(tmp_path / "rows.json")!r}))
        delay = float(sys.argv[2])
        write_mixture([{{"name": "fineweb-edu", "ratio": 1.0, "dataset": Slow(texts, delay)}}], 400_000, tokenizer,
                      sys.argv[1], kind="pretrain", max_length=64, seed=1, test_size=0.05, shard_rows=200,
                      dataset_num_proc=1)
    """)
    (tmp_path / "program.py").write_text(program)
    run = [sys.executable, str(tmp_path / "program.py")]
    subprocess.run([*run, str(tmp_path / "whole"), "0"], check=True, timeout=600)
    victim = subprocess.Popen([*run, str(tmp_path / "resumed"), "0.0005"])
    progress = tmp_path / "resumed" / STREAM_DIR / RESUME_DIR / PROGRESS_FILE
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and victim.poll() is None:
        if progress.is_file() and json.loads(progress.read_text())["shards"]["rows"] >= 600:
            break
        time.sleep(0.05)
    assert victim.poll() is None, "the build finished before it could be killed; slow it down"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    subprocess.run([*run, str(tmp_path / "resumed"), "0"], check=True, timeout=600)
    assert folder_digest(tmp_path / "resumed") == folder_digest(tmp_path / "whole")
