"""The data assets through Dagster: the tiny chain materializes, checks pass, re-runs are cached, bad input fails early."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from assets.data import build_mixture_asset, build_tokenizer_asset
from doge_dagster.artifacts import MANIFEST_NAME, ArtifactStore
from doge_dagster.plan import plan_versions
from doge_dagster.recipes import PROJECT_ROOT, RECIPES_DIR, RecipeFolder, load_recipe
from doge_dagster.stages import CHAIN
from resources.artifact_store import ArtifactStoreResource

DATA_ASSETS = ["tokenizer", "pretrain_mixture", "sft_mixture", "dpo_mixture", "distill_mixture", "grpo_mixture"]


def data_assets(recipes_dir: Path = RECIPES_DIR) -> tuple[dg.AssetsDefinition, list[dg.AssetsDefinition]]:
    """The tokenizer and mixture assets of a recipes folder."""
    folder = RecipeFolder(recipes_dir)
    return build_tokenizer_asset(folder), [build_mixture_asset(kind, folder) for kind in CHAIN.mixtures]


tokenizer_asset, MIXTURE_ASSETS = data_assets()
DAGSTER = str(Path(sys.executable).with_name("dagster"))
CLI_SELECT = ["asset", "materialize", "-m", "doge_dagster.definitions", "--select", "tokenizer*"]
# `tokenizer*` now reaches the training stages too; the data chain alone is the `data` group.
CLI_DATA = ["asset", "materialize", "-m", "doge_dagster.definitions", "--select", "group:data"]


def materialize(root: Path, instance: dg.DagsterInstance, assets=None, partition: str = "tiny") -> dg.ExecuteInJobResult:
    return dg.materialize(
        assets if assets is not None else [tokenizer_asset, *MIXTURE_ASSETS],
        partition_key=partition,
        resources={"artifact_store": ArtifactStoreResource(root=str(root))},
        instance=instance,
        raise_on_error=False,
    )


def materializations(result) -> dict[str, dict]:
    return {
        event.asset_key.to_user_string(): {key: value.value for key, value in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
    }


def failure_text(result) -> str:
    return "\n".join(event.step_failure_data.error.to_string() for event in result.all_events if event.is_step_failure)


def manifests_under(root: Path) -> list[Path]:
    return sorted(root.rglob(MANIFEST_NAME))


def cli_env(tmp_path: Path, artifacts: Path, recipes_dir: Path | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DOGE_", "DAGSTER_"))}
    (tmp_path / "dagster_home").mkdir(exist_ok=True)
    env.update(DAGSTER_HOME=str(tmp_path / "dagster_home"), DOGE_ARTIFACT_ROOT=str(artifacts), HF_HUB_OFFLINE="1")
    if recipes_dir is not None:
        env["DOGE_RECIPES_DIR"] = str(recipes_dir)
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DAGSTER, *args], check=False, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def tiny_raw() -> dict:
    return yaml.safe_load((RECIPES_DIR / "tiny.yaml").read_text())


# -- (a) the tiny data chain in process ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    instance = dg.DagsterInstance.ephemeral()
    first = materialize(root, instance)
    return root, instance, first


def test_tiny_data_chain_materializes_and_every_check_passes(tiny_run):
    _root, _, result = tiny_run
    assert result.success, failure_text(result)
    metadata = materializations(result)
    assert sorted(metadata) == sorted(DATA_ASSETS)
    assert all(entry["cached"] is False for entry in metadata.values())
    evaluations = result.get_asset_check_evaluations()
    evaluated = {(e.asset_key.to_user_string(), e.check_name) for e in evaluations}
    declared = {(key.asset_key.to_user_string(), key.name) for asset in (tokenizer_asset, *MIXTURE_ASSETS) for key in asset.check_keys}
    assert evaluated == declared and len(evaluations) == len(declared)
    assert {("pretrain_mixture", "ratios_within_tolerance"), ("pretrain_mixture", "token_ids_below_vocab"),
            ("tokenizer", "think_tokens_not_special"), ("sft_mixture", "schema")} <= evaluated
    failed = [(e.asset_key.to_user_string(), e.check_name, e.metadata) for e in evaluations if not e.passed]
    assert failed == []


def test_versions_and_manifests_match_the_plan(tiny_run):
    root, _, result = tiny_run
    metadata = materializations(result)
    planned = plan_versions(load_recipe("tiny"), nodes=DATA_ASSETS)
    store = ArtifactStore(str(root))
    assert len(manifests_under(root)) == len(DATA_ASSETS)
    for asset in DATA_ASSETS:
        version = metadata[asset]["version"]
        assert version == planned[asset].version
        manifest = store.read_manifest(asset, "tiny", version)
        assert manifest is not None and manifest.upstream == planned[asset].upstream
        assert metadata[asset]["artifact_uri"] == str(root / asset / "tiny" / version)
        assert metadata[asset]["artifact_bytes"] == manifest.total_bytes > 0
        for entry in manifest.files:
            assert (root / asset / "tiny" / version / entry.path).stat().st_size == entry.size
    for asset in DATA_ASSETS[1:]:
        assert planned[asset].upstream["tokenizer"] == planned["tokenizer"].version
    data_versions = {
        event.asset_key.to_user_string(): event.materialization.tags.get("dagster/data_version")
        for event in result.get_asset_materialization_events()
    }
    assert data_versions == {asset: planned[asset].version for asset in DATA_ASSETS}


def test_outputs_load_with_plain_libraries(tiny_run):
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    root, _, result = tiny_run
    metadata = materializations(result)
    recipe = load_recipe("tiny")
    tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer" / "tiny" / metadata["tokenizer"]["version"]))
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2)
    assert "<think>" not in tokenizer.all_special_tokens and tokenizer.chat_template
    # One token per digit (the digit-by-digit arithmetic needs them apart), and text round-trips.
    digit_tokens = [token for token in tokenizer.tokenize("What is 123 + 45?") if any(c.isdigit() for c in token)]
    assert digit_tokens == list("12345")
    assert tokenizer.decode(tokenizer("Tom has 23 apples.\n7 - 4 = 3.")["input_ids"]) == "Tom has 23 apples.\n7 - 4 = 3."
    assert metadata["tokenizer"]["vocab_size"] == len(tokenizer) <= recipe.tokenizer.vocab_size + 4
    columns = {
        "pretrain": ["input_ids"],
        "sft": ["messages", "source"],
        "distill": ["messages", "source"],
        "dpo": ["chosen", "prompt", "rejected", "source"],
        "grpo": ["answer", "prompt", "solution", "source"],
    }
    for stage, expected in columns.items():
        mixture = recipe.section(f"mixtures.{stage}")
        folder = root / f"{stage}_mixture" / "tiny" / metadata[f"{stage}_mixture"]["version"]
        splits = load_from_disk(str(folder))
        assert sorted(splits) == ["test", "train"]
        assert all(sorted(split.column_names) == expected for split in splits.values())
        rows = len(splits["train"]) + len(splits["test"])
        assert (metadata[f"{stage}_mixture"]["train_rows"], metadata[f"{stage}_mixture"]["test_rows"]) == (
            len(splits["train"]), len(splits["test"]))
        if stage == "pretrain":
            assert rows == -(-mixture.total_size // mixture.max_length)
            assert all(len(ids) == mixture.max_length for ids in splits["train"]["input_ids"])
        else:
            assert rows == mixture.total_size


def test_pretrain_mixture_realises_the_recipe_ratios(tiny_run):
    root, _, result = tiny_run
    metadata = materializations(result)["pretrain_mixture"]
    recipe = load_recipe("tiny").mixtures.pretrain
    requested = {source.dataset: source.ratio for source in recipe.sources}
    stats = json.loads((root / "pretrain_mixture" / "tiny" / metadata["version"] / "mixture_stats.json").read_text())
    assert stats["requested_ratios"] == requested == metadata["requested_ratios"]
    for name, ratio in requested.items():
        assert abs(stats["realised_ratios"][name] - ratio) <= 0.01
        assert abs(metadata[f"ratio/{name}"] - ratio) <= 0.01
    assert sum(source["tokens"] for source in stats["sources"].values()) == recipe.total_size == metadata["total_tokens"]
    assert metadata["unit"] == "tokens" and metadata["max_ratio_error"] <= recipe.ratio_tolerance


def test_second_run_reports_every_asset_cached(tiny_run):
    root, instance, first = tiny_run
    before = {path: path.read_text() for path in manifests_under(root)}
    second = materialize(root, instance)
    assert second.success, failure_text(second)
    metadata = materializations(second)
    assert {asset: entry["cached"] for asset, entry in metadata.items()} == {asset: True for asset in DATA_ASSETS}
    assert {asset: entry["version"] for asset, entry in metadata.items()} == {
        asset: entry["version"] for asset, entry in materializations(first).items()}
    assert {path: path.read_text() for path in manifests_under(root)} == before  # nothing re-published
    assert all(evaluation.passed for evaluation in second.get_asset_check_evaluations())


def test_an_artifact_without_manifest_is_rebuilt(tiny_run):
    root, instance, first = tiny_run
    version = materializations(first)["dpo_mixture"]["version"]
    (root / "dpo_mixture" / "tiny" / version / MANIFEST_NAME).unlink()  # as if publishing was interrupted
    result = materialize(root, instance, assets=[tokenizer_asset, *MIXTURE_ASSETS])
    assert result.success, failure_text(result)
    cached = {asset: entry["cached"] for asset, entry in materializations(result).items()}
    assert cached == {asset: asset != "dpo_mixture" for asset in DATA_ASSETS}
    assert (root / "dpo_mixture" / "tiny" / version / MANIFEST_NAME).is_file()


def test_a_mixture_without_its_tokenizer_says_what_to_materialize(tmp_path):
    sft = next(asset for asset in MIXTURE_ASSETS if asset.key.to_user_string() == "sft_mixture")
    result = materialize(tmp_path, dg.DagsterInstance.ephemeral(), assets=[sft])
    assert not result.success
    message = failure_text(result)
    assert "tokenizer[tiny]" in message and "materialize tokenizer for partition tiny first" in message
    assert manifests_under(tmp_path) == []


# -- (b) the CLI, as a user types it -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_materializes_the_tiny_data_chain_and_rerun_is_cached(tmp_path):
    artifacts = tmp_path / "artifacts"
    env = cli_env(tmp_path, artifacts)
    first = run_cli([*CLI_DATA, "--partition", "tiny"], env, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    assert {path.relative_to(artifacts).parts[0] for path in manifests_under(artifacts)} == set(DATA_ASSETS)
    manifests = {path: path.read_text() for path in manifests_under(artifacts)}
    second = run_cli([*CLI_DATA, "--partition", "tiny"], env)
    assert second.returncode == 0, second.stderr[-5000:]
    output = second.stdout + second.stderr
    for asset in DATA_ASSETS:
        assert f"{asset}[tiny] version" in output and "reporting it cached" in output
    assert output.count("complete artifact found, reporting it cached") >= len(DATA_ASSETS)
    assert {path: path.read_text() for path in manifests_under(artifacts)} == manifests
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        for asset in DATA_ASSETS:
            event = instance.get_latest_materialization_event(dg.AssetKey(asset))
            assert event.asset_materialization.metadata["cached"].value is True


# -- (c) bad input fails early, names the field and the fix, and publishes nothing ---------------------------------------
@pytest.fixture(scope="module")
def bad_recipes_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("recipes")
    shutil.copy(RECIPES_DIR / "tiny.yaml", folder / "tiny.yaml")
    shutil.copytree(RECIPES_DIR / "accelerate", folder / "accelerate")
    raw = tiny_raw()
    raw["name"] = "bad"
    raw["mixtures"]["pretrain"]["sources"][3]["ratio"] = 0.04  # sums to 0.99
    (folder / "bad.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (folder / "broken.yaml").write_text("name: broken\ntokenizer:\n  source: [train_bpe\n")
    return folder


def test_cli_bad_ratios_fail_naming_field_and_fix_and_publish_nothing(tmp_path, bad_recipes_dir):
    artifacts = tmp_path / "artifacts"
    result = run_cli([*CLI_SELECT, "--partition", "bad"], cli_env(tmp_path, artifacts, bad_recipes_dir))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "RecipeError" in output and str(bad_recipes_dir / "bad.yaml") in output
    assert "mixtures.pretrain: source ratios sum to 0.99; they must sum to 1" in output
    assert manifests_under(artifacts) == []
    assert not artifacts.exists() or not any(path.is_file() for path in artifacts.rglob("*"))


def test_cli_code_location_loads_with_a_malformed_recipe_beside_it(tmp_path, bad_recipes_dir):
    artifacts = tmp_path / "artifacts"
    result = run_cli([*CLI_SELECT, "--partition", "broken"], cli_env(tmp_path, artifacts, bad_recipes_dir))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    # the code location loaded and the run started: the failure is the step's, with the recipe's message
    assert "STEP_FAILURE" in output or "Error occurred while executing op" in output
    assert f"{bad_recipes_dir / 'broken.yaml'}: malformed YAML" in output
    assert manifests_under(artifacts) == []


def test_code_versions_survive_an_invalid_recipe(tmp_path, bad_recipes_dir):
    from assets.versioned import node_code_version

    def folder_with(*names: str) -> RecipeFolder:
        folder = tmp_path / "-".join(names)
        folder.mkdir(exist_ok=True)
        for name in names:
            shutil.copy(bad_recipes_dir / f"{name}.yaml", folder / f"{name}.yaml")
        return RecipeFolder(folder)

    versions = {name: node_code_version("pretrain_mixture", folder_with("tiny", name)) for name in ("bad", "broken")}
    assert len(set(versions.values())) == 2
    with_bad = folder_with("tiny", "bad")
    assert versions["bad"] == node_code_version("pretrain_mixture", with_bad)  # stable
    # an invalid recipe does not change the versions computed from the valid ones
    assert node_code_version("sft_mixture", folder_with("tiny")) == node_code_version("sft_mixture", folder_with("tiny"))
    before = node_code_version("pretrain_mixture", with_bad)
    bad = with_bad.directory / "bad.yaml"
    bad.write_text(bad.read_text() + "\n# edited\n")
    assert node_code_version("pretrain_mixture", with_bad) != before  # editing the bad file is seen


@pytest.fixture
def recipes_dir(tmp_path):
    """A private recipes folder whose `tiny.yaml` each test edits; `data_assets(folder)` reads it."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    return folder


def write_tiny(folder: Path, raw: dict) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_tokenizer_path_that_does_not_exist_names_the_field(tmp_path, recipes_dir):
    raw = tiny_raw()
    raw["tokenizer"] = {"source": "path", "name_or_path": str(tmp_path / "no-such-tokenizer")}
    write_tiny(recipes_dir, raw)
    artifacts = tmp_path / "artifacts"
    result = materialize(artifacts, dg.DagsterInstance.ephemeral(), assets=[data_assets(recipes_dir)[0]])
    assert not result.success
    message = failure_text(result)
    assert "tokenizer.name_or_path" in message and "no-such-tokenizer" in message and "is not a folder" in message
    assert manifests_under(artifacts) == []
    assert not any(path.is_file() for path in artifacts.rglob("*"))


def test_tokenizer_path_that_is_not_a_hub_id_does_not_go_online(tmp_path, recipes_dir, monkeypatch):
    """A relative folder name looks like a Hub id; `source: path` must not try the Hub for it."""
    monkeypatch.chdir(tmp_path)
    raw = tiny_raw()
    raw["tokenizer"] = {"source": "path", "name_or_path": "tokenizers/doge"}
    write_tiny(recipes_dir, raw)
    result = materialize(tmp_path / "artifacts", dg.DagsterInstance.ephemeral(), assets=[data_assets(recipes_dir)[0]])
    assert not result.success
    message = failure_text(result)
    assert "tokenizer.name_or_path 'tokenizers/doge' is not a folder" in message
    assert "huggingface.co" not in message


@pytest.fixture(scope="module")
def saved_tokenizer(tmp_path_factory) -> Path:
    from doge_dagster.data.generated import generate_rows
    from doge_dagster.data.tokenizer import train_bpe, training_texts
    from doge_dagster.recipes import TokenizerRecipe
    from doge_dagster.registry import DATASETS

    folder = tmp_path_factory.mktemp("tokenizer")
    texts = training_texts([generate_rows(name, 200, seed=1) for name in DATASETS])
    train_bpe(texts, TokenizerRecipe(source="train_bpe", vocab_size=512)).save_pretrained(folder)
    return folder


def test_a_source_missing_a_column_fails_before_publishing(tmp_path, recipes_dir, saved_tokenizer):
    from doge_dagster.data.generated import generate_rows

    data = tmp_path / "smoltalk"
    data.mkdir()
    with open(data / "train.jsonl", "w") as handle:
        handle.writelines(json.dumps({"conversation": row["messages"], "source": row["source"]}) + "\n" for row in generate_rows("smoltalk", 50, seed=1))
    raw = tiny_raw()
    raw["tokenizer"] = {"source": "path", "name_or_path": str(saved_tokenizer)}
    raw["mixtures"]["sft"]["sources"] = [{"dataset": "smoltalk", "ratio": 1.0, "kind": "local", "path": str(data)}]
    raw["mixtures"]["sft"]["total_size"] = 20
    write_tiny(recipes_dir, raw)
    artifacts = tmp_path / "artifacts"
    folder_tokenizer, folder_mixtures = data_assets(recipes_dir)
    sft = next(asset for asset in folder_mixtures if asset.key.to_user_string() == "sft_mixture")
    result = materialize(artifacts, dg.DagsterInstance.ephemeral(), assets=[folder_tokenizer, sft])
    assert not result.success
    message = failure_text(result)
    assert "SourceError" in message and "'smoltalk'" in message and "lacks column(s) messages" in message
    # the tokenizer (loaded from the folder) was published; the failed mixture left nothing behind
    published = {path.relative_to(artifacts).parts[0] for path in manifests_under(artifacts)}
    assert published == {"tokenizer"}
    assert not (artifacts / "sft_mixture").exists() or not any(
        path.is_file() for path in (artifacts / "sft_mixture").rglob("*"))


@pytest.mark.slow
def test_a_mixture_build_killed_mid_way_resumes_and_publishes_what_a_whole_build_publishes(tmp_path):
    """SIGKILL the CLI while it writes the pretraining mixture, materialize again: it continues from the last
    shard (the staging folder of the version survives) and publishes the same files as an uninterrupted build."""
    import signal
    import time

    raw = tiny_raw()
    raw["mixtures"]["pretrain"]["shard_rows"] = 500  # many checkpoints in tiny's 11,000 rows
    raw["mixtures"]["pretrain"]["dataset_num_proc"] = 1  # slower, so the kill lands mid-way
    recipes_dir = tmp_path / "recipes"
    recipes_dir.mkdir()
    (recipes_dir / "tiny.yaml").write_text(yaml.safe_dump(raw))
    shutil.copytree(RECIPES_DIR / "accelerate", recipes_dir / "accelerate")
    for home in ("a", "b"):
        (tmp_path / home).mkdir()
    selection = ["asset", "materialize", "-m", "doge_dagster.definitions", "--select", "tokenizer,pretrain_mixture", "--partition", "tiny"]

    whole_root = tmp_path / "whole"
    whole = run_cli(selection, cli_env(tmp_path / "a", whole_root, recipes_dir), timeout=900)
    assert whole.returncode == 0, whole.stderr[-5000:]

    root = tmp_path / "killed"
    env = cli_env(tmp_path / "b", root, recipes_dir)
    victim = subprocess.Popen([DAGSTER, *selection], cwd=PROJECT_ROOT, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed_at = time.monotonic() + 600, None
    while time.monotonic() < deadline and victim.poll() is None:
        progress = list(root.glob("pretrain_mixture/tiny/.staging/*-resumable/.stream/.resume/progress.json"))
        if progress:
            try:
                killed_at = json.loads(progress[0].read_text())["shards"]["rows"]
            except (OSError, ValueError):  # replaced while read
                continue
            if killed_at >= 2000:
                os.killpg(victim.pid, signal.SIGKILL)
                break
        time.sleep(0.02)
    victim.wait(timeout=60)
    assert killed_at is not None and victim.returncode == -signal.SIGKILL, "the build ended before it could be killed"
    assert not list(root.glob(f"pretrain_mixture/tiny/*/{MANIFEST_NAME}")), "a killed build must publish nothing"

    again = run_cli(selection, env, timeout=900)
    assert again.returncode == 0, again.stderr[-5000:]
    assert f"{killed_at:,} rows already written" in again.stdout + again.stderr

    def files(store_root: Path) -> list:
        manifest = json.loads(next(store_root.glob(f"pretrain_mixture/tiny/*/{MANIFEST_NAME}")).read_text())
        return sorted((entry["path"], entry["size"], entry["sha256"]) for entry in manifest["files"])

    assert files(root) == files(whole_root)
    assert not list(root.glob("pretrain_mixture/tiny/.staging/*")), "the staging folder is published, not left behind"
