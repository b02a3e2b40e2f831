"""`doge-dagster evaluate MODEL --suite ...`: any model (a folder or a Hub id) through the evaluation assets' own
runner, tasks and report, without Dagster. Its scores must be the published reports' scores for the same model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dagster_dev import CHAIN_TEST_TIMEOUT_S, DOGE_DAGSTER, cli_env, run_command
from helpers import tail
from hub_cache import offline_hub_env

from doge_dagster.artifacts import ArtifactStore

HUB_ID = "SmallDoge/Doge-tiny-stand-in"
SHA = "0123456789abcdef0123456789abcdef01234567"


def report_scores(store: ArtifactStore, report: str) -> dict[str, float]:
    return store.latest(report, "tiny").metadata["scores"]


def evaluate(env: dict[str, str], *args: str, cwd: Path) -> tuple[int, str]:
    result = run_command([DOGE_DAGSTER, "evaluate", *args], env, 900, cwd=cwd)
    return result.returncode, result.stdout


@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S)
def test_a_model_folder_gets_the_scores_its_evaluation_asset_published(tiny_chain, tmp_path):
    store = ArtifactStore(str(tiny_chain.artifact_root))
    model = store.local_path(store.latest("doge_instruct", "tiny"))
    env = cli_env(tmp_path / "home", tmp_path / "unused-store")
    code, out = evaluate(env, str(model), "--suite", "instruct", "--recipe", "tiny", "--output", "report", cwd=tmp_path)
    assert code == 0, tail(out)
    scores = json.loads((tmp_path / "report" / "scores.json").read_text())
    assert scores["scores"] == report_scores(store, "instruct_eval"), (scores, tail(out))
    assert (tmp_path / "report" / "results.json").is_file() and list((tmp_path / "report" / "details").iterdir())
    assert "| task | metric | score |" in (tmp_path / "report" / "README.md").read_text()
    assert not (tmp_path / "report" / ".work").exists(), "the scratch folder is removed"

    tasks = tmp_path / "tasks.txt"
    tasks.write_text("# one task only\ncustom|arithmetic_mc|0|0\n")
    code, out = evaluate(env, str(model), "--suite", "instruct", "--recipe", "tiny", "--tasks", str(tasks),
                         "--output", "one-task", cwd=tmp_path)  # fmt: skip
    assert code == 0, tail(out)
    scores = json.loads((tmp_path / "one-task" / "scores.json").read_text())["scores"]
    assert scores == {"arithmetic_mc": report_scores(store, "instruct_eval")["arithmetic_mc"]}, scores


@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S)
def test_a_hub_id_is_read_from_the_hub_cache_offline(tiny_chain, tmp_path):
    store = ArtifactStore(str(tiny_chain.artifact_root))
    model = store.local_path(store.latest("doge_base", "tiny"))
    cache = tmp_path / "hf" / "hub"
    repo = cache / f"models--{HUB_ID.replace('/', '--')}"
    shutil.copytree(model, repo / "snapshots" / SHA, ignore=shutil.ignore_patterns("manifest.json", "stable"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    env = {**cli_env(tmp_path / "home", tmp_path / "unused-store"), **offline_hub_env(cache)}

    code, out = evaluate(env, HUB_ID, "--suite", "base", "--recipe", "tiny", "--output", "report", cwd=tmp_path)

    assert code == 0, tail(out)
    scores = json.loads((tmp_path / "report" / "scores.json").read_text())
    assert scores["resolved"] == f"Hub {HUB_ID} at commit {SHA}"
    assert scores["scores"] == report_scores(store, "base_eval"), scores


def test_a_model_that_is_neither_a_folder_nor_a_cached_hub_id_is_refused(tmp_path):
    env = {**cli_env(tmp_path / "home", tmp_path / "store"), **offline_hub_env(tmp_path / "hf" / "hub")}
    code, out = evaluate(env, "no/such-model", "--suite", "base", "--recipe", "tiny", cwd=tmp_path)
    assert code == 2 and "MODEL 'no/such-model': cannot resolve it" in out and "hf download" in out, out
    code, out = evaluate(env, "./missing/folder/x", "--suite", "base", "--recipe", "tiny", cwd=tmp_path)
    assert code == 2 and "no such folder" in out, out
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("arithmetic_mc\n")
    code, out = evaluate(env, str(tmp_path), "--suite", "base", "--recipe", "tiny", "--tasks", str(tasks), cwd=tmp_path)
    assert code == 2 and "line 1: 'arithmetic_mc' is not suite|task|few_shot|truncate" in out, out
    assert not (tmp_path / "eval-results").exists(), "nothing is written for a refused model"
