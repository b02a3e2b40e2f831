"""An offline rehearsal of the real 20M recipe's data assets, through the Dagster CLI as a user runs it.

The 20M recipe as shipped (Hub tokenizer SmallDoge/Doge-tokenizer, seeds 233/42/123, ratios, test sizes,
max lengths, formatting, python-edu fetched by blob id), with run tags `doge/override/...` pointing every source
at a local mirror laid out as the Hub serves the repos and scaling the mixtures down; nothing else changed:

- the mirror: `<root>/HuggingFaceTB/smollm-corpus` (configs fineweb-edu-dedup, cosmopedia-v2, python-edu),
  `HuggingFaceTB/finemath`, `HuggingFaceTB/smoltalk`, `HuggingFaceH4/ultrafeedback_binarized`,
  `open-thoughts/OpenThoughts-114k`, `open-r1/OpenR1-Math-220k`, generated rows in the real schemas. Its
  python-edu config carries blob ids only, as on the Hub; the gzipped files are served by a moto S3 server on
  127.0.0.1 (`contents.store` overridden to that bucket, endpoint and credentials in the environment only);
- the tokenizer: a 32,768-token stand-in for SmallDoge/Doge-tokenizer in a Hub cache read with HF_HUB_OFFLINE=1;
- `dagster job execute -m doge_dagster.definitions -j data --tags '{"dagster/partition": "20M", ...}'`
  (`dagster asset materialize` takes no tags, and overrides travel as run tags).

The pretraining mixture is 2,097,152 tokens (1,024 rows of 2,048): its test split takes one row in 1,000 at a
seeded position (row 800 of the first block for seed 233), so fewer than 801 rows would leave it empty.

Measured on the project's 2-core AMD EPYC (2026-11-30, four runs, other tests running beside them, load 3-4):
the CLI run 19-29 s (the pretraining mixture about 9 s of it), the whole test 36-47 s.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import (
    DATA_ASSETS,
    cli_job_execute_command,
    dagster_env,
    published_versions,
    read_manifest,
    run_command,
    tail,
)
from hub_cache import SIZE, offline_hub_env, release_tokenizer
from test_blobs import ACCESS_KEY, BUCKET, REGION, SECRET_KEY, s3_server  # noqa: F401 (s3_server: a fixture)

from doge_dagster.data.generated import generate_rows, write_hub_layout
from doge_dagster.plan import plan_versions
from doge_dagster.recipes import OVERRIDE_TAG_PREFIX, apply_overrides, load_recipe
from doge_dagster.stages import CHAIN

PARTITION = "20M"
SMOLLM = "HuggingFaceTB/smollm-corpus"
MIRROR_SEED = 20
BLOB_PREFIX = "content"
# what the scaled-down mixtures take: tokens for pretraining, examples for the others
SIZES = {"pretrain": 2_097_152, "sft": 400, "dpo": 300, "distill": 300, "grpo": 300}
# rows in the mirror: about 1.5x what each source gives its mixture (~280 tokens a text row with the stand-in)
MIRROR_ROWS = {
    "fineweb-edu": 8000, "cosmopedia-v2": 2400, "python-edu": 800, "finemath": 1000,
    "smoltalk": 600, "ultrafeedback": 500, "openthoughts": 500, "openr1-math": 500,
}  # fmt: skip
COLUMNS = {  # what the trainers read, as the stage records declare
    "pretrain": ["input_ids"],
    "sft": ["messages", "source"],
    "dpo": ["chosen", "prompt", "rejected", "source"],
    "distill": ["messages", "source"],
    "grpo": ["answer", "prompt", "solution", "source"],
}


def write_mirror(root: Path) -> list[dict]:
    """Every source of the recipe in the Hub layout under `root`; python-edu without `text` (blob ids only).
    Returns python-edu's rows with their texts: what the blob store serves."""
    for name, rows in MIRROR_ROWS.items():
        write_hub_layout(name, root, rows, MIRROR_SEED, without=("text",) if name == "python-edu" else ())
    return list(generate_rows("python-edu", MIRROR_ROWS["python-edu"], MIRROR_SEED))


def rehearsal_overrides(mirror: Path, store: str) -> dict[str, str]:
    """Recipe overrides (dotted path -> YAML) that read every source of the 20M recipe from `mirror`, python-edu's
    texts from `store`, and scale the mixtures to SIZES; each source keeps every field the recipe gives it."""
    recipe = load_recipe(PARTITION)
    overrides = {}
    for name, size in SIZES.items():
        sources = []
        for ref in recipe.section(f"mixtures.{name}").sources:
            source = ref.model_dump(mode="json", exclude_none=True)
            source["path"] = str(mirror)
            if ref.dataset == "python-edu":
                source["contents"] = {**(source.get("contents") or {}), "store": store}
            sources.append(source)
        overrides[f"mixtures.{name}.sources"] = yaml.safe_dump(sources, default_flow_style=True, width=10_000).strip()
        overrides[f"mixtures.{name}.total_size"] = str(size)
    return overrides


def without_overridden(recipe) -> dict:
    """The recipe as data, less what `rehearsal_overrides` sets (source paths, the blob store, sizes)."""
    data = recipe.model_dump(mode="json")
    for name in SIZES:
        mixture = data["mixtures"][name]
        del mixture["total_size"]
        for source in mixture["sources"]:
            source.pop("path")
            (source.get("contents") or {}).pop("store", None)
    return data


def documents(ids: list[int], tokenizer) -> list[str]:
    """The documents of packed rows (one list of ids, rows concatenated), split at EOS."""
    return tokenizer.decode(ids).split(tokenizer.eos_token)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_20m_data_assets_materialize_from_mirrors_through_the_cli(tmp_path, s3_server):  # noqa: F811
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    host, port, client = s3_server
    mirror = tmp_path / "hub-mirror"
    python_edu = write_mirror(mirror)
    card = yaml.safe_load((mirror / SMOLLM / "README.md").read_text().split("---")[1])
    assert {config["config_name"] for config in card["configs"]} == {"fineweb-edu-dedup", "cosmopedia-v2", "python-edu"}
    shards = sorted((mirror / SMOLLM / "python-edu").glob("train-*.parquet"))
    assert shards and all("text" not in pq.read_schema(shard).names for shard in shards), "blob ids only, as on the Hub"
    for row in python_edu:
        blob = gzip.compress(row["text"].encode())
        client.put_object(Bucket=BUCKET, Key=f"{BLOB_PREFIX}/{row['blob_id']}", Body=blob)
    hub_cache = tmp_path / "hf-home" / "hub"
    release_tokenizer(hub_cache)

    root, home, blob_cache = tmp_path / "artifacts", tmp_path / "dagster-home", tmp_path / "blob-cache"
    env = dagster_env(
        home,
        root,
        **offline_hub_env(hub_cache),
        AWS_ENDPOINT_URL_S3=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION=REGION,
        DOGE_BLOB_CACHE=str(blob_cache),
    )
    overrides = rehearsal_overrides(mirror, f"s3://{BUCKET}/{BLOB_PREFIX}")
    tags = {"dagster/partition": PARTITION, **{OVERRIDE_TAG_PREFIX + key: value for key, value in overrides.items()}}
    completed = run_command(cli_job_execute_command("data", tags), env, timeout=900, log_path=tmp_path / "cli.log")
    assert completed.returncode == 0, f"the data job failed (rc {completed.returncode}):\n{tail(completed.stdout, 80)}"

    # the recipe the run used: the shipped 20M recipe but for the overridden paths, blob store and sizes
    recipe = apply_overrides(load_recipe(PARTITION), overrides)
    assert without_overridden(recipe) == without_overridden(load_recipe(PARTITION))
    assert [recipe.section(f"mixtures.{name}").seed for name in SIZES] == [233, 42, 42, 123, 123]

    # every data asset published for 20M, at the version the overridden recipe plans (mirror and store included)
    planned = plan_versions(recipe, nodes=list(DATA_ASSETS))
    manifests = {}
    for asset in DATA_ASSETS:
        assert published_versions(root, asset, PARTITION) == [planned[asset].version], asset
        manifests[asset] = read_manifest(root, asset, planned[asset].version, PARTITION)
        failed = {name: result for name, result in manifests[asset]["metadata"]["checks"].items() if not result[0]}
        assert failed == {}, f"{asset}: failed checks {failed}"

    # the run, as the instance recorded it: the override tags, one materialization per asset for 20M
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [run] = instance.get_runs()
        assert run.job_name == "data" and run.tags.items() >= tags.items()
        for asset in DATA_ASSETS:
            materialization = instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization
            assert materialization.partition == PARTITION
            assert materialization.metadata["version"].value == planned[asset].version

    # the tokenizer: the Hub's 32,768 tokens, nothing added
    assert manifests["tokenizer"]["metadata"]["vocab_size"] == SIZE == recipe.model.vocab_size
    tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer" / PARTITION / planned["tokenizer"].version))
    assert len(tokenizer) == SIZE

    # pretraining: the recipe's ratios within its tolerance, rows of max_length, ids below the vocabulary
    pretrain = recipe.mixtures.pretrain
    metadata = manifests["pretrain_mixture"]["metadata"]
    assert (pretrain.max_length, pretrain.seed, pretrain.ratio_tolerance) == (2048, 233, 0.01)
    requested = {ref.dataset: ref.ratio for ref in pretrain.sources}
    assert (
        metadata["requested_ratios"]
        == requested
        == {"fineweb-edu": 0.7, "cosmopedia-v2": 0.2, "python-edu": 0.05, "finemath": 0.05}
    )
    for name, ratio in requested.items():
        assert abs(metadata["realised_ratios"][name] - ratio) <= pretrain.ratio_tolerance, metadata["realised_ratios"]
    assert sum(source["tokens"] for source in metadata["per_source"].values()) >= SIZES["pretrain"]
    splits = load_from_disk(str(root / "pretrain_mixture" / PARTITION / planned["pretrain_mixture"].version))
    assert sorted(splits) == ["test", "train"] and len(splits["test"]) >= 1
    for split in splits.values():
        assert split.column_names == COLUMNS["pretrain"]
        lengths = {len(ids) for ids in split["input_ids"]}
        assert lengths == {pretrain.max_length}, lengths
        assert max(max(ids) for ids in split["input_ids"]) < SIZE

    # python-edu: its texts came from the S3 store (the mirror has none) and are in the packed rows
    used = metadata["per_source"]["python-edu"]
    fetch = used["blob_fetch"]
    assert used["rows_used"] > 0 and used["tokens"] > 0
    assert fetch["failed"] == 0 and fetch["cached"] == 0, fetch
    # every row the mixer read asked for its blob; the mixer reads ahead of what it takes (by a window that grows
    # with the cores), so more blobs are fetched than rows used
    assert used["rows_used"] <= fetch["fetched"] == fetch["rows"], fetch
    assert len(list(blob_cache.rglob("*.txt"))) == fetch["fetched"]
    ids = [token for row in splits["train"]["input_ids"] for token in row]
    found = set(documents(ids, tokenizer)) & {row["text"] for row in python_edu}
    # python-edu files used are there whole, read row by row; train_test_split shuffles the rows, so a file
    # that ran across a row boundary is cut in this reading (about one in six of these ~150-token files)
    assert found and len(found) >= 0.75 * used["rows_used"], (len(found), used)

    # sft, dpo, distill, grpo: the recipe's sizes, seeds and columns
    for kind in CHAIN.mixtures:
        if kind.packed:
            continue
        mixture = recipe.section(f"mixtures.{kind.name}")
        metadata = manifests[kind.asset]["metadata"]
        assert metadata["train_rows"] + metadata["test_rows"] == SIZES[kind.name], (kind.name, metadata)
        assert metadata["test_rows"] >= 1
        splits = load_from_disk(str(root / kind.asset / PARTITION / planned[kind.asset].version))
        for split in splits.values():
            assert sorted(split.column_names) == COLUMNS[kind.name] == sorted(kind.columns), kind.name
        assert set(metadata["per_source"]) == {source.dataset for source in mixture.sources}
    rows = load_from_disk(str(root / "distill_mixture" / PARTITION / planned["distill_mixture"].version))["train"]
    assert all("<think>" in row["messages"][-1]["content"] for row in rows.select(range(10)))
