"""Releases: a gated model as a Hub folder, validated for real, pushed to a stand-in Hub, refused on failed gates.

The release assets build on the session's tiny chain (a copy of its store per test, so every test starts from
the published models and reports, with no release yet) and materialize in a subprocess (`programs/materialize`),
as a run would. The push goes to `hub_server.HubStub`, a local HTTP endpoint that serves the few Hub API calls
the release makes (`HF_ENDPOINT`) and records every request; nothing reaches the real Hub.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
from pathlib import Path

import pytest
from dagster_dev import CHAIN_TEST_TIMEOUT_S
from helpers import dg_materialize, planned_version, published_versions, read_manifest, run_program, write_tiny_recipe
from hub_server import HubStub

from doge_dagster.plan import NODES, plan_versions
from doge_dagster.recipes import RecipeError, load_recipe, parse_recipe
from doge_dagster.release import hub_datasets
from doge_dagster.stages import CHAIN

RELEASES = {
    "release_instruct": ("doge_instruct", "instruct_eval", 100),
    "release_reason": ("doge_reason", "reason_eval", 1000),
}
FOLDER = {"README.md", "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
          "tokenizer.json", "tokenizer_config.json"}  # fmt: skip
MATERIALIZE_TIMEOUT_S = 600


def store_without_releases(tiny_chain, target: Path) -> Path:
    """A copy of the chain's store with no release published yet (a CI-built chain has the dry runs already)."""
    store = tiny_chain.copy_store(target)
    for release in CHAIN.releases:
        shutil.rmtree(store / release.asset, ignore_errors=True)
    return store


def lineage_versions(store: Path, manifest: dict) -> dict[str, str]:
    """asset -> version of every artifact and source behind a manifest, read from the recorded manifests."""
    found: dict[str, str] = {}
    pending = list(manifest["upstream"].items())
    while pending:
        asset, version = pending.pop()
        if found.get(asset) == version:
            continue
        found[asset] = version
        if not asset.startswith("source_"):
            pending += read_manifest(store, asset, version)["upstream"].items()
    return found


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the recipe section and the plan (no chain needed) ------------------------------------------------------------------
def test_release_sections_default_to_private_dry_runs_with_base_off():
    recipe = load_recipe("tiny")
    assert [release.asset for release in CHAIN.releases] == ["release_base", "release_instruct", "release_reason"]
    assert list(type(recipe.releases).model_fields) == ["base", "instruct", "reason"]
    assert [recipe.releases.base.enabled, recipe.releases.instruct.enabled, recipe.releases.reason.enabled] == [
        False, True, True]  # fmt: skip
    assert all(
        section.repo_id is None and section.private for section in (recipe.releases.instruct, recipe.releases.reason)
    )
    assert NODES["release_reason"].upstream == ("doge_reason", "reason_eval", "tokenizer")
    assert NODES["release_instruct"].group == "release"


def test_a_release_version_follows_its_target_but_not_the_on_off_switch():
    def version(**edits) -> str:
        raw = {**load_recipe("tiny").model_dump(mode="json"), "releases": {"reason": edits}}
        return plan_versions(parse_recipe(raw), lambda ref, seed: "fixed", nodes=["release_reason"])[
            "release_reason"
        ].version

    assert version() == version(enabled=False), "turning a release on or off changes no version"
    assert version(repo_id="acme/doge-reason") != version(), "a push target is another release than a dry run"
    assert version(private=False) != version()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            {"repo_id": "doge-reason"},
            "releases.reason.repo_id: repo_id 'doge-reason' is not a Hub repo id; write <org>/<name>",
        ),
        ({"repo_id": "acme/doge--reason"}, "is not a Hub repo id"),
        ({"license": "Apache 2.0"}, "releases.reason.license: license 'Apache 2.0' is not a Hub license id"),
        ({"tags": ["math", "math"]}, "tag listed twice: math"),
        (
            {"repo": "acme/x"},
            "releases.reason.repo: unknown field; allowed here: enabled, license, private, repo_id, tags",
        ),
    ],
)
def test_a_bad_release_section_is_rejected_naming_the_field(edit, message):
    raw = {**load_recipe("tiny").model_dump(mode="json"), "releases": {"reason": edit}}
    with pytest.raises(RecipeError) as error:
        parse_recipe(raw)
    assert message in str(error.value)


def test_the_card_lists_the_hub_datasets_a_real_recipe_reads():
    recipe = load_recipe("20M")
    sections = [recipe.section(f"mixtures.{mixture.name}").model_dump(mode="json") for mixture in CHAIN.mixtures]
    assert hub_datasets(sections) == [
        "HuggingFaceH4/ultrafeedback_binarized", "HuggingFaceTB/finemath", "HuggingFaceTB/smollm-corpus",
        "HuggingFaceTB/smoltalk", "open-r1/OpenR1-Math-220k", "open-thoughts/OpenThoughts-114k",
    ]  # fmt: skip
    tiny = load_recipe("tiny")  # generated rows in the datasets' schemas are not those datasets
    assert hub_datasets([tiny.section("mixtures.sft").model_dump(mode="json")]) == []


# -- on the tiny chain ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S)
def test_a_dry_run_builds_and_validates_the_release_folders(tiny_chain, tmp_path):
    store = store_without_releases(tiny_chain, tmp_path / "store")
    env = tiny_chain.env(dagster_home=tmp_path / "home", artifact_root=store)
    run = run_program("materialize", ["release_base,release_instruct,release_reason", "tiny"], env,
                      MATERIALIZE_TIMEOUT_S, check=False)  # fmt: skip
    result = run.result

    assert result["success"], result["failures"]
    assert set(result["materializations"]) == set(RELEASES), "release_base is off by default: its step skips"
    assert "releases.base.enabled is false, so nothing is released" in run.output
    assert not (store / "release_base").exists()
    for asset, (model_asset, report_asset, max_new_tokens) in RELEASES.items():
        [version] = published_versions(store, asset)
        assert version == planned_version(asset)
        manifest = read_manifest(store, asset, version)
        model = read_manifest(store, model_asset, manifest["upstream"][model_asset])
        report = read_manifest(store, report_asset, manifest["upstream"][report_asset])
        assert set(manifest["upstream"]) == {model_asset, report_asset, "tokenizer"}
        assert manifest["metadata"]["dry_run"] is True and manifest["metadata"]["pushed"] is False
        assert "repo_id" not in manifest["metadata"] and "commit_sha" not in manifest["metadata"]
        folder = store / asset / "tiny" / version
        assert {entry["path"] for entry in manifest["files"]} == FOLDER
        weights = {entry["path"]: entry["sha256"] for entry in model["files"]}
        for name in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"):
            assert sha256(folder / name) == weights[name], f"{name} is not the trained model's"

        generation = json.loads((folder / "generation_config.json").read_text())
        trained = json.loads((store / model_asset / "tiny" / model["version"] / "generation_config.json").read_text())
        assert trained["do_sample"] is False and trained["max_new_tokens"] == 64, "the trained artifact is unchanged"
        assert {key: generation[key] for key in ("do_sample", "temperature", "top_p", "max_new_tokens")} == {
            "do_sample": True, "temperature": 0.8, "top_p": 0.9, "max_new_tokens": max_new_tokens}  # fmt: skip
        assert (generation["eos_token_id"], generation["pad_token_id"]) == (
            trained["eos_token_id"],
            trained["pad_token_id"],
        )

        card = (folder / "README.md").read_text()
        assert_card(folder, card, store, manifest, report, max_new_tokens)
    assert_loads_and_generates(store / "release_reason" / "tiny" / published_versions(store, "release_reason")[0])


def assert_card(folder: Path, card: str, store: Path, manifest: dict, report: dict, max_new_tokens: int) -> None:
    """The card parses with huggingface_hub into the intended metadata, and its body holds the lineage (every
    version back to the sources), the recipe sections, the mixtures' realised ratios, every training stage's
    metrics and the report's scores."""
    from huggingface_hub import ModelCard

    data = ModelCard.load(str(folder / "README.md")).data
    assert data.license == "apache-2.0" and data.library_name == "transformers"
    assert data.pipeline_tag == "text-generation" and {"doge", "doge-dagster"} <= set(data.tags)
    assert data.base_model is None and data.datasets is None, "no parent release configured, generated data only"
    parsed = {(result.dataset_type, result.metric_type): result.metric_value for result in data.eval_results}
    assert parsed == {(task["task"], task["metric"]): task["score"] for task in report["metadata"]["tasks"]}
    assert len(parsed) == len(report["metadata"]["tasks"]) >= 2

    lineage = lineage_versions(store, manifest)
    assert {name for name in lineage if name.startswith("source_")}, "the lineage reaches the sources"
    for asset, version in lineage.items():
        assert f"{asset:<24} {version}" in card, f"{asset} {version} missing from the card's lineage"
    for asset, version in lineage.items():
        if asset.endswith("_mixture"):
            mixture = read_manifest(store, asset, version)["metadata"]
            assert f"`{asset}` version `{version}`" in card
            for dataset, ratio in mixture["realised_ratios"].items():
                assert f"| {dataset} | generated rows in the schema of" in card and f"| {ratio:.4g} |" in card
        if asset in {stage.asset for stage in CHAIN.stages}:
            metrics = read_manifest(store, asset, version)["metadata"]
            row = next(line for line in card.splitlines() if line.startswith(f"| {CHAIN_STAGE[asset]} | {asset} |"))
            assert f"| {metrics['global_step']:,} | {metrics['tokens_seen']:,} |" in row, row
            assert f"### `{asset}` `{version}`" in card and "training:" in card
    assert f"max_new_tokens={max_new_tokens}" in card and "## Recipe" in card


CHAIN_STAGE = {stage.asset: stage.name for stage in CHAIN.stages}


def assert_loads_and_generates(folder: Path) -> None:
    """What a Hub user does with the folder: plain transformers, the chat template, the folder's sampling."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    assert model.generation_config.do_sample and model.generation_config.max_new_tokens == 1000
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    torch.manual_seed(0)
    output = model.generate(**inputs, max_new_tokens=12)
    assert output.shape[-1] > inputs["input_ids"].shape[-1]


@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S)
def test_the_push_sends_the_folder_to_the_configured_repo_and_the_token_only_in_the_authorization_header(
    tiny_chain, tmp_path
):
    token = f"hf_{secrets.token_hex(20)}"  # unique, so finding it anywhere is certain to be a leak
    edits = {
        "releases.reason.repo_id": "acme/doge-tiny-reason",
        "releases.reason.tags": ["math"],
        "releases.instruct.repo_id": "acme/doge-tiny-instruct",  # the reason card's base_model
    }
    recipes = write_tiny_recipe(tmp_path / "recipes", edits)
    store = store_without_releases(tiny_chain, tmp_path / "store")
    with HubStub(token) as hub:
        env = tiny_chain.env(
            recipes, dagster_home=tmp_path / "home", artifact_root=store, HF_ENDPOINT=hub.endpoint, HF_TOKEN=token,
            HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf-home"), NO_PROXY="127.0.0.1,localhost",
        )  # fmt: skip
        run = run_program("materialize", ["release_reason", "tiny"], env, MATERIALIZE_TIMEOUT_S, check=False)
    assert run.result["success"], run.result["failures"]

    [version] = published_versions(store, "release_reason")
    assert version == planned_version("release_reason", edits)
    manifest = read_manifest(store, "release_reason", version)
    tag = f"tiny-{version}"
    api = [(request.method, request.path) for request in hub.requests if "/api/agent-harnesses" not in request.path]
    repo = "/api/models/acme/doge-tiny-reason"
    assert [path.split("?")[0] for _, path in api] == [
        "/api/repos/create", repo, "/api/validate-yaml", f"{repo}/preupload/main", f"{repo}/commit/main",
        f"{repo}/tag/{manifest['metadata']['commit_sha']}",
    ], api  # fmt: skip
    created = next(request for request in hub.requests if request.path == "/api/repos/create").json()
    assert (created["organization"], created["name"], created["visibility"]) == ("acme", "doge-tiny-reason", "private")
    pushed = hub.repos["acme/doge-tiny-reason"]
    assert pushed.private and pushed.tags == {tag: pushed.head} and len(pushed.commits) == 1

    # The commit carries exactly the published release folder, byte for byte.
    commit = next(request for request in hub.requests if request.path.endswith("/commit/main")).ndjson()
    sent = {line["value"]["path"]: hashlib.sha256(base64.b64decode(line["value"]["content"])).hexdigest()
            for line in commit if line["key"] == "file"}  # fmt: skip
    assert sent == {entry["path"]: entry["sha256"] for entry in manifest["files"]}
    assert set(sent) == FOLDER and set(pushed.files) == FOLDER | {".gitattributes"}
    assert commit[0]["value"]["summary"].startswith("Release doge_reason ")

    metadata = manifest["metadata"]
    assert metadata["pushed"] is True and metadata["dry_run"] is False and metadata["private"] is True
    assert (metadata["repo_id"], metadata["revision"], metadata["commit_sha"]) == (
        "acme/doge-tiny-reason",
        tag,
        pushed.head,
    )
    assert metadata["commit_url"] == f"{hub.endpoint}/acme/doge-tiny-reason/commit/{pushed.head}"
    assert run.result["materializations"]["release_reason"]["commit_sha"] == pushed.head
    from huggingface_hub import ModelCard

    card = ModelCard.load(str(store / "release_reason" / "tiny" / version / "README.md")).data
    assert card.base_model == "acme/doge-tiny-instruct" and "math" in card.tags
    assert card.model_name == "doge-tiny-reason"

    # The token went in the Authorization header of every API call, and nowhere else.
    for request in hub.requests:
        assert token not in request.path and token.encode() not in request.body, request.path
        assert all(token not in value for key, value in request.headers.items() if key != "authorization")
    assert all(request.headers.get("authorization") == f"Bearer {token}" for request in hub.requests
               if "/api/agent-harnesses" not in request.path)  # fmt: skip
    assert token not in run.stdout and token not in run.stderr, "the token is in the run's log"
    assert token not in json.dumps(run.result), "the token is in the run's events or metadata"
    leaks = [path for path in store.rglob("*") if path.is_file() and token.encode() in path.read_bytes()]
    assert not leaks, f"the token is in the store: {leaks}"


@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S)
def test_a_release_is_refused_on_a_failed_gate_up_its_chain_and_a_push_without_a_token(tiny_chain, tmp_path):
    store = store_without_releases(tiny_chain, tmp_path / "store")
    # A stand-in for a reason report whose format gate failed, published as the version the release reads.
    report_version = planned_version("reason_eval")
    path = store / "reason_eval" / "tiny" / report_version / "manifest.json"
    report = json.loads(path.read_text())
    report["metadata"]["checks"]["format_rate"] = [False, "format rate 0.100, minimum 0.5"]
    report["metadata"]["gate"] = "failed"
    path.write_text(json.dumps(report))
    recipes = write_tiny_recipe(tmp_path / "recipes", {"releases.instruct.repo_id": "acme/doge-tiny-instruct"})
    env = tiny_chain.env(recipes, dagster_home=tmp_path / "home", artifact_root=store)
    env.pop("HF_TOKEN", None)

    result = dg_materialize("release_instruct,release_reason", env, MATERIALIZE_TIMEOUT_S)

    assert not result["success"] and not result["materializations"]
    failures = {failure["step"]: failure["description"] for failure in result["failures"]}
    assert set(failures) == {"release_instruct", "release_reason"}, result["failures"]
    refused = failures["release_reason"]
    assert "refusing to build release_reason[tiny]" in refused, refused
    assert f"reason_eval version {report_version} failed format_rate (format rate 0.100, minimum 0.5)" in refused
    no_token = failures["release_instruct"]
    assert "HF_TOKEN is not set" in no_token and "releases.instruct.repo_id" in no_token, no_token
    assert "Nothing was built" in no_token
    for asset in RELEASES:
        assert published_versions(store, asset) == []
        staging = store / asset / "tiny" / ".staging"
        assert not staging.exists() or not any(staging.iterdir()), f"{asset} left staged files"
