"""Training metrics where ML people look: `report_to` (TensorBoard, MLflow) through the user's paths.

End to end (slow): a short `tiny` pretraining stage materialized with `dagster asset materialize`, then its metrics
read back with the trackers' own readers (TensorBoard's `EventAccumulator` on the event files published in the
model artifact; `MlflowClient` against a real local `mlflow server`) and compared with the loss curve Dagster
recorded. The MLflow run trains under 2-process DDP: one run, from rank 0 only.

Quick: the recipe models and the validation before launch (unknown trackers, a tracker whose package is missing,
MLflow without a tracking URI: refused, nothing launched or written), `report_to` left out of every version, the
variables forwarded to the launched process, and a retry continuing its MLflow run.

W&B is not tested: wandb is not installed here (and it is not in the test extra).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
from dagster_dev import free_port
from helpers import (
    copy_artifacts,
    dagster_env,
    kill_group,
    planned_version,
    published_versions,
    read_manifest,
    run_cli_materialize,
    tail,
    tiny_raw,
    tiny_recipe,
    write_tiny_recipe,
)

from doge_dagster.launching.command import LaunchError
from doge_dagster.plan import chain_nodes, plan_versions
from doge_dagster.recipe_sections import WITH_SETTINGS
from doge_dagster.recipes import PROJECT_ROOT, RecipeError, RecipeFolder, apply_overrides
from doge_dagster.training import tracking
from doge_dagster.training.tracking import public_uri, tracking_env
from doge_dagster.training.validation import validate_stage

PARTITION = "tiny"
STEPS = 6
VENV_BIN = Path(sys.executable).parent


def pretrain_edits(**extra) -> dict:
    """A short pretraining (STEPS steps, every step logged) with `extra` edits."""
    return {
        "stages.pretrain.training.max_steps": STEPS,
        "stages.pretrain.training.logging_steps": 1,
        "stages.pretrain.training.save_steps": 1000,
        "stages.pretrain.training.warmup_steps": 1,
        "stages.pretrain.training.lr_scheduler_kwargs": {"num_decay_steps": 1, "min_lr_ratio": 0.0},
        **extra,
    }


def latest_materialization(home: Path, asset: str) -> dict:
    """The metadata values of the asset's newest materialization in the instance at `home`."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        assert event is not None, f"no materialization of {asset} in {home}"
        return {key: value.value for key, value in event.asset_materialization.metadata.items()}


def assert_same_curve(logged: list[tuple[int, float]], curve: list[list], where: str) -> None:
    """The (step, loss) points a tracker holds equal the curve Dagster recorded (rounded to 5 decimals there)."""
    assert [step for step, _ in logged] == [step for step, _ in curve], f"{where}: steps {logged} vs {curve}"
    for (step, value), (_, recorded) in zip(logged, curve, strict=True):
        assert value == pytest.approx(recorded, abs=1e-4), f"{where}, step {step}: {value} vs {recorded}"


# -- end to end --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The tiny recipe's tokenizer and pretraining mixture, materialized once through the CLI."""
    base = tmp_path_factory.mktemp("tracking-data")
    root = base / "artifacts"
    env = dagster_env(base / "home", root)
    completed = run_cli_materialize("tokenizer,pretrain_mixture", env, timeout=600, log_path=base / "data.log")
    assert completed.returncode == 0, tail(completed.stdout)
    return root


def train(data_root: Path, folder: Path, edits: dict, **env: str) -> tuple[Path, Path, str]:
    """Materialize `doge_base` of the edited recipe through the CLI on a copy of the data; (home, root, version)."""
    root = folder / "artifacts"
    copy_artifacts(data_root, root, assets=("tokenizer", "pretrain_mixture"))
    home = folder / "home"
    recipes = write_tiny_recipe(folder / "recipes", edits)
    completed = run_cli_materialize(
        "doge_base", dagster_env(home, root, recipes, **env), timeout=600, log_path=folder / "materialize.log"
    )
    assert completed.returncode == 0, f"doge_base failed:\n{tail(completed.stdout, 80)}"
    [version] = published_versions(root, "doge_base")
    return home, root, version


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tensorboard_event_files_are_published_with_the_model_and_hold_the_loss_curve(data_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    home, root, version = train(
        data_root, tmp_path, pretrain_edits(**{"stages.pretrain.training.report_to": "tensorboard"})
    )
    assert version == planned_version("doge_base", pretrain_edits()), "report_to changed the model's version"
    metadata = latest_materialization(home, "doge_base")
    logdir = Path(metadata["tensorboard_logdir"])
    assert logdir == root / "doge_base" / PARTITION / version / "tensorboard", logdir
    files = [entry["path"] for entry in read_manifest(root, "doge_base", version)["files"]]
    events = [path for path in files if path.startswith("tensorboard/events.out.tfevents.")]
    assert events, f"no event file published with the model: {files}"
    assert not (root / "doge_base" / PARTITION / ".work" / version / "tensorboard").exists(), "work copy left behind"

    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    assert "train/loss" in accumulator.Tags()["scalars"], accumulator.Tags()
    logged = [(event.step, event.value) for event in accumulator.Scalars("train/loss")]
    assert len(logged) == STEPS
    assert_same_curve(logged, metadata["train_loss_curve"], "TensorBoard train/loss")
    [(eval_step, eval_loss)] = [(event.step, event.value) for event in accumulator.Scalars("eval/loss")]
    assert eval_step == STEPS and eval_loss == pytest.approx(metadata["eval_loss"], abs=1e-4)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real local MLflow tracking server (SQLite backend) on a free port, shared by this module's tests (each
    logs into an experiment of its own); its URI."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = (folder / "server.log").open("w")
    process = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--default-artifact-root", str(folder / "artifacts")],
        cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, f"mlflow server exited:\n{(folder / 'server.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, "mlflow server not healthy after 120 s"
            time.sleep(0.5)
        yield uri
    finally:
        kill_group(process.pid)
        process.wait()
        log.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mlflow_gets_one_run_with_the_loss_curve_under_two_process_ddp(data_root, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    ddp = {"accelerate_config": "cpu_ddp", "num_processes": 2}
    edits = pretrain_edits(**{"stages.pretrain.training.report_to": "mlflow", "stages.pretrain.launch": ddp})
    home, _, version = train(data_root, tmp_path, edits, MLFLOW_TRACKING_URI=mlflow_server)
    assert version == planned_version("doge_base", pretrain_edits(**{"stages.pretrain.launch": ddp}))
    metadata = latest_materialization(home, "doge_base")
    assert metadata["world_size"] == 2
    run_id = metadata["mlflow_run_id"]
    assert (
        metadata["mlflow_run_url"] == f"{mlflow_server}/#/experiments/{metadata['mlflow_experiment_id']}/runs/{run_id}"
    )

    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.run_name == f"doge_base[{PARTITION}]-{version}" and run.info.status == "FINISHED", run.info
    assert run.data.tags["doge.version"] == version
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "doge-dagster/doge_base"
    runs = client.search_runs([experiment.experiment_id])
    assert [found.info.run_id for found in runs] == [run_id], "every rank but rank 0 must stay out of MLflow"
    logged = [(point.step, point.value) for point in client.get_metric_history(run_id, "loss")]
    assert_same_curve(sorted(logged), metadata["train_loss_curve"], "MLflow loss")
    [eval_loss] = client.get_metric_history(run_id, "eval_loss")
    assert eval_loss.step == STEPS and eval_loss.value == pytest.approx(metadata["eval_loss"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_an_out_of_memory_backoff_keeps_logging_into_the_same_mlflow_run(data_root, tmp_path, mlflow_server):
    """The rebuilt trainer after a backoff must not log its (changed) batch parameters again: MLflow refuses to
    change a logged parameter, which would fail the stage or lose its metrics."""
    from mlflow.tracking import MlflowClient

    edits = pretrain_edits(**{"stages.pretrain.training.report_to": "mlflow", "stages.pretrain.oom_backoff": True})
    home, _, version = train(data_root, tmp_path, edits, MLFLOW_TRACKING_URI=mlflow_server,
                             MLFLOW_EXPERIMENT_NAME="oom-backoff", DOGE_FAULT_OOM_ABOVE_BATCH="6")  # fmt: skip
    metadata = latest_materialization(home, "doge_base")
    assert metadata["per_device_train_batch_size"] == 6 and len(metadata["oom_backoffs"]) == 1, metadata
    client = MlflowClient(mlflow_server)
    run = client.get_run(metadata["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == f"doge_base[{PARTITION}]-{version}", run.info
    experiment = client.get_experiment_by_name("oom-backoff")
    assert [found.info.run_id for found in client.search_runs([experiment.experiment_id])] == [run.info.run_id]
    assert run.data.params["per_device_train_batch_size"] == "12"  # the configured batch, logged once
    logged = [(point.step, point.value) for point in client.get_metric_history(run.info.run_id, "loss")]
    assert_same_curve(sorted(logged), metadata["train_loss_curve"], "MLflow loss after a backoff")
    assert "Changing param values is not allowed" not in (tmp_path / "materialize.log").read_text()


# -- the recipe models and versions ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["none", "tensorboard", "mlflow", "wandb", ["tensorboard", "mlflow"], []])
def test_report_to_takes_the_trackers_or_none(value):
    assert tiny_recipe({"stages.sft.training.report_to": value}).stages.sft.training["report_to"] == value


FIX = "use none, tensorboard, mlflow or wandb, or a list of them"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("tensorbord", ("'tensorbord' is not a supported tracker", FIX)),
        (["tensorboard", "comet_ml"], ("'comet_ml' is not a supported tracker", FIX)),
        ("all", ("report_to 'all'", "is not supported", FIX)),
        (True, ("neither a tracker name nor a list of them", FIX)),
        (["none", "mlflow"], ("lists none beside trackers", "keep the trackers only, or none alone")),
        (["mlflow", "mlflow"], ("lists a tracker twice", "list each once")),
    ],
)
def test_report_to_rejects_what_is_not_a_tracker_naming_the_field_and_the_fix(value, expected):
    with pytest.raises(RecipeError) as raised:
        tiny_recipe({"stages.dpo.training.report_to": value})
    message = str(raised.value)
    for part in ("stages.dpo.training: report_to", *expected):
        assert part in message, message


def test_report_to_changes_no_version(tmp_path):
    """Versions, Dagster code versions and the recorded recipe sections are those of the recipe without it."""
    from assets.versioned import node_code_version

    edits = {f"stages.{stage}.training.report_to": ["tensorboard", "mlflow"] for stage in ("pretrain", "sft", "grpo")}

    def fingerprint(ref, seed):
        return f"{ref.dataset}-{seed}"

    plain, tracked = tiny_recipe(), tiny_recipe(edits)
    before, after = plan_versions(plain, fingerprint), plan_versions(tracked, fingerprint)
    assert {name: p.version for name, p in before.items()} == {name: p.version for name, p in after.items()}
    assert {name: p.section_version for name, p in before.items()} == {
        name: p.section_version for name, p in after.items()
    }
    assert tracked.section("stages.sft").model_dump(mode="json") == plain.section("stages.sft").model_dump(mode="json")
    folders = [RecipeFolder(write_tiny_recipe(tmp_path / name, edits)) for name, edits in (("a", {}), ("b", edits))]
    for node in chain_nodes(plain.chain):
        assert node_code_version(node, folders[0]) == node_code_version(node, folders[1]), node
    # ... but the launched process gets it: the launch spec's dump and a run's overrides keep it
    assert tracked.model_dump(mode="json", context=WITH_SETTINGS)["stages"]["sft"]["training"]["report_to"] == [
        "tensorboard", "mlflow"
    ]  # fmt: skip
    overridden = apply_overrides(plain, {"stages.pretrain.training.report_to": "tensorboard"})
    assert overridden.stages.pretrain.training["report_to"] == "tensorboard"
    assert plan_versions(overridden, fingerprint)["doge_base"].version == before["doge_base"].version


# -- validation before launch ---------------------------------------------------------------------------------------
def test_a_tracker_whose_package_is_missing_is_refused_with_the_extra_to_install(monkeypatch):
    monkeypatch.setattr(tracking, "installed", lambda module: module != "tensorboard")
    with pytest.raises(LaunchError) as raised:
        validate_stage("sft", tiny_recipe({"stages.sft.training.report_to": ["mlflow", "tensorboard"]}),
                       env={"MLFLOW_TRACKING_URI": "http://mlflow:5000"})  # fmt: skip
    message = str(raised.value)
    assert "stages.sft.training.report_to includes tensorboard" in message, message
    assert "the tensorboard package is not installed" in message and 'pip install -e ".[tensorboard]"' in message
    assert "mlflow" not in message.split("includes tensorboard")[0], message


def test_mlflow_without_a_tracking_uri_is_refused():
    recipe = tiny_recipe({"stages.pretrain.training.report_to": "mlflow"})
    with pytest.raises(LaunchError, match=r"stages\.pretrain\.training\.report_to includes mlflow, but "
                                          r"MLFLOW_TRACKING_URI is not set.*export MLFLOW_TRACKING_URI"):  # fmt: skip
        validate_stage("pretrain", recipe, env={})
    validate_stage("pretrain", recipe, env={"MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    with_launch_env = tiny_recipe({"stages.pretrain.training.report_to": "mlflow",
                                   "stages.pretrain.launch.env": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}})  # fmt: skip
    validate_stage("pretrain", with_launch_env, env={})


def test_installed_trackers_pass_validation():
    validate_stage("sft", tiny_recipe({"stages.sft.training.report_to": "tensorboard"}), env={})
    validate_stage("sft", tiny_recipe({"stages.sft.training.report_to": "none"}), env={})


def test_a_refused_tracker_launches_and_writes_nothing(tmp_path, monkeypatch):
    """Through Dagster, as the malformed-recipe table runs its rows: the step fails naming the field and the fix,
    nothing is launched and the artifact store is left as it was."""
    import test_malformed_recipes as table

    from resources.artifact_store import ArtifactStoreResource
    from resources.compute import ComputeResource
    from resources.local import ProcessGroupSubprocessClient

    launches = []
    monkeypatch.setattr(ProcessGroupSubprocessClient, "run", lambda self, **kwargs: launches.append(kwargs))
    monkeypatch.setattr(tracking, "installed", lambda module: module != "tensorboard")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for case, report_to, expected in (
        ("tensorboard", "tensorboard", 'pip install -e ".[tensorboard]"'),
        ("mlflow", "mlflow", "MLFLOW_TRACKING_URI is not set"),
    ):
        edits = {"stages.pretrain.training.report_to": report_to}
        recipes = RecipeFolder(write_tiny_recipe(tmp_path / case / "recipes", edits))
        root = tmp_path / case / "artifacts"
        table.publish_stand_in_upstream(tiny_raw(edits), "doge_base", root)
        before = table.store_paths(root)
        result = dg.materialize(
            [table.asset_of("doge_base", recipes)], partition_key=PARTITION, raise_on_error=False,
            resources={"artifact_store": ArtifactStoreResource(root=str(root)),
                       "compute": ComputeResource(scratch_dir=str(tmp_path / case / "scratch"))},
            instance=dg.DagsterInstance.ephemeral(),
        )  # fmt: skip
        text = table.failure_text(result)
        assert not result.success and "stages.pretrain.training.report_to includes" in text and expected in text, text
        assert launches == [] and table.store_paths(root) == before, (launches, table.store_paths(root) ^ before)


def test_the_trackers_variables_reach_the_launched_process():
    environ = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_EXPERIMENT_NAME": "doge", "WANDB_PROJECT": "p",
               "HOME": "/root"}  # fmt: skip
    assert tracking_env("mlflow", environ) == {
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLFLOW_EXPERIMENT_NAME": "doge",
    }
    assert tracking_env(["wandb", "tensorboard"], environ) == {"WANDB_PROJECT": "p"}
    assert tracking_env("tensorboard", environ) == {} and tracking_env(None, environ) == {}


def test_recorded_tracking_uris_hold_no_credentials():
    assert public_uri("https://user:secret@mlflow.example.com:8443/base") == "https://mlflow.example.com:8443/base"
    assert public_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_a_retry_of_the_same_version_continues_its_mlflow_run_and_other_ranks_start_none(tmp_path):
    """`Tracking` as the launched process uses it (in a fresh process: MLflow's fluent API keeps global state)."""
    script = textwrap.dedent(
        """
        import json, sys
        from doge_dagster.launching.spec import LaunchSpec
        from doge_dagster.training.tracking import Tracking

        spec = LaunchSpec(name="pretrain", asset="doge_base", partition="tiny", version="0123456789abcdef",
                          upstream={}, recipe={}, store_root=sys.argv[1], work_dir=sys.argv[2])
        ids = []
        for main in (True, True, False):
            tracking = Tracking.start(spec, {"report_to": ["mlflow", "tensorboard"]}, main=main)
            ids.append(tracking.metadata().get("mlflow_run_id"))
            tracking.end(succeeded=False)
        print("RESULT " + json.dumps(ids))
        """
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    completed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "store"), str(tmp_path / "work")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    first, retried, other_rank = json.loads(completed.stdout.split("RESULT ", 1)[1])
    assert first and retried == first and other_rank is None, (first, retried, other_rank)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("doge-dagster/doge_base")
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.run_id for run in runs] == [first]
    assert runs[0].info.run_name == "doge_base[tiny]-0123456789abcdef" and runs[0].info.status == "FAILED"
    assert json.loads((tmp_path / "work" / "tracking.json").read_text())["mlflow_run_id"] == first
