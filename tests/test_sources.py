"""Dataset sources: Hub mirrors, local jsonl/parquet folders and generated data as seeded shuffled streams."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from doge_dagster.data.generated import arrow_schema, generate_rows, write_hub_layout
from doge_dagster.data.sources import (
    SourceError,
    folder_fingerprint,
    generated_repo,
    hub_revision,
    open_source,
    source_fingerprint,
)
from doge_dagster.recipes import SourceRef
from doge_dagster.registry import DATASETS

SHA = "0123456789abcdef0123456789abcdef01234567"


def key(row: dict) -> str:
    return json.dumps(row, sort_keys=True)


def multiset(rows) -> list[str]:
    return sorted(key(row) for row in rows)


@pytest.fixture(autouse=True)
def private_generated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DOGE_GENERATED_CACHE", str(tmp_path / "generated"))


@pytest.fixture
def no_network(monkeypatch):
    """Any Hub API call fails as it would offline."""
    from huggingface_hub import HfApi

    def offline(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(HfApi, "dataset_info", offline)


def write_jsonl(folder: Path, rows: list[dict], files: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(files):
        with open(folder / f"part-{index}.jsonl", "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows[index::files])


def write_parquet(folder: Path, name: str, rows: list[dict], files: int = 2) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(files):
        pq.write_table(pa.Table.from_pylist(rows[index::files], schema=arrow_schema(name)), folder / f"part-{index}.parquet")


# -- hub kind on a local mirror: the real Hub loading code path -------------------------------------------------
@pytest.mark.parametrize("name", ["fineweb-edu", "smoltalk", "ultrafeedback", "openr1-math"])
def test_hub_kind_reads_a_local_mirror(tmp_path, name):
    mirror = tmp_path / "mirror"
    write_hub_layout(name, mirror, num_rows=40, seed=3)
    ref = SourceRef(dataset=name, ratio=1.0, kind="hub", path=str(mirror))
    rows = list(open_source(ref, seed=1))
    expected = list(generate_rows(name, 40, seed=3, split=DATASETS[name].split))
    assert multiset(rows) == multiset(expected)
    assert rows != expected  # shuffled
    assert source_fingerprint(ref, seed=1) == folder_fingerprint(mirror / DATASETS[name].hub_id)


def test_hub_mirror_test_split(tmp_path):
    mirror = tmp_path / "mirror"
    write_hub_layout("ultrafeedback", mirror, num_rows=10, seed=3, test_rows=6)
    ref = SourceRef(dataset="ultrafeedback", ratio=1.0, kind="hub", path=str(mirror))
    rows = list(open_source(ref, seed=1, split="test_prefs"))
    assert multiset(rows) == multiset(generate_rows("ultrafeedback", 6, seed=3, split="test_prefs"))


def test_hub_mirror_without_the_dataset_fails_with_advice(tmp_path):
    ref = SourceRef(dataset="smoltalk", ratio=1.0, kind="hub", path=str(tmp_path / "empty-mirror"))
    with pytest.raises(SourceError) as info:
        open_source(ref, seed=1)
    message = str(info.value)
    assert "'smoltalk'" in message and "could not be opened" in message and "kind: local" in message
    with pytest.raises(SourceError, match="does not exist"):
        source_fingerprint(ref, seed=1)


# -- local kind ------------------------------------------------------------------------------------------------
def test_local_jsonl_folder(tmp_path):
    rows = list(generate_rows("smoltalk", 30, seed=2))
    write_jsonl(tmp_path / "smoltalk", rows)
    ref = SourceRef(dataset="smoltalk", ratio=1.0, kind="local", path=str(tmp_path / "smoltalk"))
    streamed = list(open_source(ref, seed=5))
    assert multiset(streamed) == multiset(rows)
    assert streamed == list(open_source(ref, seed=5))


def test_local_parquet_folder(tmp_path):
    rows = list(generate_rows("openr1-math", 30, seed=2))
    write_parquet(tmp_path / "math" / "nested", "openr1-math", rows)
    ref = SourceRef(dataset="openr1-math", ratio=1.0, kind="local", path=str(tmp_path / "math"))
    assert multiset(open_source(ref, seed=5)) == multiset(rows)


def test_local_folder_in_hub_layout(tmp_path):
    repo = write_hub_layout("finemath", tmp_path / "mirror", num_rows=12, seed=1)
    ref = SourceRef(dataset="finemath", ratio=1.0, kind="local", path=str(repo))
    assert multiset(open_source(ref, seed=5)) == multiset(generate_rows("finemath", 12, seed=1))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_missing_column_names_column_and_dataset(tmp_path, fmt):
    rows = [{key: value for key, value in row.items() if key != "text"} for row in generate_rows("fineweb-edu", 10, seed=1)]
    folder = tmp_path / "fineweb"
    if fmt == "jsonl":
        write_jsonl(folder, rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder.mkdir()
        pq.write_table(pa.Table.from_pylist(rows), folder / "part.parquet")
    ref = SourceRef(dataset="fineweb-edu", ratio=1.0, kind="local", path=str(folder))
    with pytest.raises(SourceError) as info:
        open_source(ref, seed=1)
    message = str(info.value)
    assert "'fineweb-edu'" in message and "lacks column(s) text" in message and "HuggingFaceTB/smollm-corpus" in message


def test_python_edu_without_text_explains_the_blob_ids(tmp_path):
    rows = [{key: value for key, value in row.items() if key != "text"} for row in generate_rows("python-edu", 5, seed=1)]
    write_jsonl(tmp_path / "py", rows)
    ref = SourceRef(dataset="python-edu", ratio=1.0, kind="local", path=str(tmp_path / "py"))
    with pytest.raises(SourceError, match=r"lacks column\(s\) text.*blob ids"):
        open_source(ref, seed=1)


def test_nonexistent_or_empty_local_path(tmp_path):
    ref = SourceRef(dataset="smoltalk", ratio=1.0, kind="local", path=str(tmp_path / "nowhere"))
    with pytest.raises(SourceError, match=r"nowhere does not exist"):
        open_source(ref, seed=1)
    with pytest.raises(SourceError, match=r"nowhere.*does not exist"):
        source_fingerprint(ref, seed=1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no data")
    ref = SourceRef(dataset="smoltalk", ratio=1.0, kind="local", path=str(tmp_path / "empty"))
    with pytest.raises(SourceError, match=r"holds no .parquet/.jsonl/.json files"):
        open_source(ref, seed=1)


# -- generated kind ----------------------------------------------------------------------------------------------
def test_generated_source_reads_its_rows_through_the_hub_layout(tmp_path):
    ref = SourceRef(dataset="openthoughts", ratio=1.0, kind="generated", num_rows=25)
    rows = list(open_source(ref, seed=9))
    assert multiset(rows) == multiset(generate_rows("openthoughts", 25, seed=9))
    repo = generated_repo(ref, 9)
    assert repo.is_relative_to(tmp_path / "generated") and (repo / "README.md").is_file()
    assert generated_repo(ref, 9) == repo  # written once


# -- fingerprints --------------------------------------------------------------------------------------------------
def test_generated_fingerprint_depends_on_seed_and_rows_only():
    ref = SourceRef(dataset="smoltalk", ratio=1.0, kind="generated", num_rows=100)
    assert source_fingerprint(ref, 1) == source_fingerprint(ref.model_copy(update={"ratio": 0.5}), 1)
    assert source_fingerprint(ref, 1) != source_fingerprint(ref, 2)
    assert source_fingerprint(ref, 1) != source_fingerprint(ref.model_copy(update={"num_rows": 101}), 1)
    other = SourceRef(dataset="openthoughts", ratio=1.0, kind="generated", num_rows=100)
    assert source_fingerprint(ref, 1) != source_fingerprint(other, 1)


def test_local_fingerprint_follows_file_contents(tmp_path):
    folder = tmp_path / "data"
    rows = list(generate_rows("smoltalk", 20, seed=1))
    write_jsonl(folder, rows)
    ref = SourceRef(dataset="smoltalk", ratio=1.0, kind="local", path=str(folder))
    first = source_fingerprint(ref, 1)
    assert source_fingerprint(ref, 1) == first == source_fingerprint(ref, 2)  # content, not seed
    (folder / "notes.txt").write_text("not data")
    assert source_fingerprint(ref, 1) == first
    original = (folder / "part-0.jsonl").read_text()
    (folder / "part-0.jsonl").write_text(original.replace("What is", "What's", 1))
    changed = source_fingerprint(ref, 1)
    assert changed != first
    (folder / "part-0.jsonl").write_text(original)
    assert source_fingerprint(ref, 1) == first
    (folder / "part-0.jsonl").rename(folder / "part-9.jsonl")
    assert source_fingerprint(ref, 1) != first  # file names count too
    write_jsonl(folder / "more", rows[:1], files=1)
    assert source_fingerprint(ref, 1) not in (first, changed)


def test_a_full_commit_sha_is_the_version_without_network(no_network):
    ref = SourceRef(dataset="fineweb-edu", ratio=1.0, kind="hub", revision=SHA)
    assert source_fingerprint(ref, 1) == SHA
    assert hub_revision(DATASETS["fineweb-edu"], SHA) == SHA


@pytest.mark.parametrize("revision", [None, "main", SHA[:12]])
def test_an_unresolvable_revision_says_to_pin_a_sha(no_network, revision):
    ref = SourceRef(dataset="fineweb-edu", ratio=1.0, kind="hub", revision=revision)
    with pytest.raises(SourceError, match=r"HuggingFaceTB/smollm-corpus.*pin `revision` to a commit sha"):
        source_fingerprint(ref, 1)


# -- the shuffled stream --------------------------------------------------------------------------------------------
def test_shuffle_is_deterministic_per_seed_and_a_permutation(tmp_path):
    mirror = tmp_path / "mirror"
    write_hub_layout("cosmopedia-v2", mirror, num_rows=120, seed=0, num_shards=3)
    ref = SourceRef(dataset="cosmopedia-v2", ratio=1.0, kind="hub", path=str(mirror))
    first = [row["text"] for row in open_source(ref, seed=1)]
    again = [row["text"] for row in open_source(ref, seed=1)]
    other = [row["text"] for row in open_source(ref, seed=2)]
    original = [row["text"] for row in generate_rows("cosmopedia-v2", 120, seed=0)]
    assert first == again
    assert first != other and first != original
    assert sorted(first) == sorted(other) == sorted(original)
    # a small buffer still mixes rows from across the shards
    small = [row["text"] for row in open_source(ref, seed=1, shuffle_buffer=8)]
    assert sorted(small) == sorted(original) and small != original
