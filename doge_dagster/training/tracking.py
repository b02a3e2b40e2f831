"""Training metrics where ML people look: `report_to` in a stage's training settings (TensorBoard, MLflow, W&B).

`stages.<stage>.training.report_to` is `none` (the default), `tensorboard`, `mlflow`, `wandb` or a list of them, and
goes to the trainer's own callbacks (transformers' `TensorBoardCallback`, `MLflowCallback`, `WandbCallback`, which
log on the world's process zero only). It is a setting, not content: it changes where the metrics go, not the
weights, so it is left out of every version (`StageRecipe.SETTING_KEYS`).

Orchestrator side (cheap, imports no tracker): `report_to_problem` (the recipe models), `tracker_problems`
(before launch: the tracker's package installed, MLflow's tracking URI known) and `tracking_env` (the tracker's
variables, forwarded to the launched process on every backend, Kubernetes included).

Launched side, `Tracking`: TensorBoard writes into `<work_dir>/tensorboard`, copied into the published model as
`tensorboard/`. Global rank 0 starts the MLflow run itself before the trainer exists, so the callback logs into it
and starts none (one run per stage, whatever the number of processes), names it `<asset>[<partition>]-<version>`,
continues it when a retry of the same version resumes, and ends it. Run ids and URLs go into the model's metadata.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# report_to name -> the module its callback imports; each has the extra of the same name in pyproject.toml.
TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
# Variables of a tracker that reach the launched process (the local and Slurm backends inherit the environment
# anyway; Kubernetes pods get only what is forwarded, secret-looking ones by Secret reference only).
ENV_PREFIXES = {"mlflow": ("MLFLOW_",), "wandb": ("WANDB_",)}
TENSORBOARD_FOLDER = "tensorboard"  # in the work folder while training, then in the published model
STATE_FILE = "tracking.json"  # in the work folder: the MLflow run a retry of the same version continues
REPORT_TO_FIX = "use none, tensorboard, mlflow or wandb, or a list of them (e.g. [tensorboard, mlflow])"


def report_to_problem(value: Any) -> str | None:
    """Why `value` is not a `report_to` setting (None when it is)."""
    if value is None:
        return None
    if isinstance(value, str):
        values = [value]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        values = value
    else:
        return f"report_to {value!r} is neither a tracker name nor a list of them; {REPORT_TO_FIX}"
    if "all" in values:
        return (
            "report_to 'all' (every integration that happens to be installed) is not supported, the trackers must "
            f"not depend on the machine; {REPORT_TO_FIX}"
        )
    unknown = [item for item in values if item not in ("none", *TRACKERS)]
    if unknown:
        return f"report_to {value!r}: {', '.join(map(repr, unknown))} is not a supported tracker; {REPORT_TO_FIX}"
    if "none" in values and len(values) > 1:
        return f"report_to {value!r} lists none beside trackers; keep the trackers only, or none alone"
    if len(set(values)) != len(values):
        return f"report_to {value!r} lists a tracker twice; list each once"
    return None


def report_targets(value: Any) -> list[str]:
    """The trackers a valid `report_to` value names (an empty list for none)."""
    if value is None:
        return []
    values = [value] if isinstance(value, str) else list(value)
    return [item for item in values if item != "none"]


def installed(module: str) -> bool:
    """Whether `module` can be imported here (without importing it)."""
    return importlib.util.find_spec(module) is not None


def tracker_problems(value: Any, where: str, env: Mapping[str, str]) -> list[str]:
    """Why the trackers of `report_to` (at `where`, e.g. `stages.sft.training`) cannot log from here, naming the
    fix: a package that is not installed, MLflow without a tracking URI (`env`: the launched process's)."""
    targets = report_targets(value)
    problems = [package_problem(target, where) for target in targets if not installed(TRACKERS[target])]
    if "mlflow" in targets and not env.get("MLFLOW_TRACKING_URI"):
        problems.append(
            f"{where}.report_to includes mlflow, but MLFLOW_TRACKING_URI is not set, so the runs would land in a "
            "local folder of the training process; export MLFLOW_TRACKING_URI (e.g. http://mlflow.example.com:5000) "
            "where Dagster runs, or set it in the stage's launch.env"
        )
    return problems


def package_problem(target: str, where: str) -> str:
    """The tracker `target`'s package is missing: what to install (its extra), or what to remove."""
    return (
        f"{where}.report_to includes {target}, but the {TRACKERS[target]} package is not installed; install it "
        f'with `pip install -e ".[{target}]"` (in the training image too), or remove {target} from report_to'
    )


def tracking_env(value: Any, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of the trackers `report_to` names (MLFLOW_*, WANDB_*) in `environ` (default: this process's),
    to forward to the launched process."""
    environ = os.environ if environ is None else environ
    prefixes = tuple(prefix for target in report_targets(value) for prefix in ENV_PREFIXES.get(target, ()))
    return {name: text for name, text in environ.items() if prefixes and name.startswith(prefixes)}


def run_name(asset: str, partition: str, version: str) -> str:
    """What a stage's run is called in every tracker (`TrainingArguments.run_name`, the MLflow run)."""
    return f"{asset}[{partition}]-{version}"


def public_uri(uri: str) -> str:
    """A tracking URI without the user and password it may carry (`http://user:pass@host` -> `http://host`)."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class Tracking:
    """The trackers of one launched stage. Every rank calls `start` (it sets the environment the callbacks read);
    only global rank 0 (`main`) starts and ends the MLflow run and finishes W&B."""

    def __init__(self, spec, targets: list[str], main: bool):
        self.spec = spec
        self.targets = targets
        self.main = main
        self.work_dir = Path(spec.work_dir)
        self.name = run_name(spec.asset, spec.partition, spec.version)
        self.mlflow_run: Any = None
        self.mlflow_callback: Any = None  # the first trainer's, kept across out-of-memory rebuilds (`adopt`)
        self.wandb_run: dict[str, str] = {}

    @classmethod
    def start(cls, spec, training: Mapping[str, Any], main: bool) -> Tracking:
        """Check the trackers can log from this process, point TensorBoard at the work folder and (rank 0) start
        the MLflow run."""
        tracking = cls(spec, report_targets(training.get("report_to")), main)
        missing = [target for target in tracking.targets if not installed(TRACKERS[target])]
        if missing:  # the image may lack what the orchestrator has: say so before anything trains
            raise RuntimeError("; ".join(package_problem(target, f"stages.{spec.name}.training") for target in missing))
        if "tensorboard" in tracking.targets:
            os.environ["TENSORBOARD_LOGGING_DIR"] = str(tracking.tensorboard_dir)
        if "wandb" in tracking.targets:
            os.environ.setdefault("WANDB_PROJECT", "doge-dagster")
        if "mlflow" in tracking.targets and main:
            tracking._start_mlflow()
        return tracking

    @property
    def tensorboard_dir(self) -> Path:
        return self.work_dir / TENSORBOARD_FOLDER

    def _state(self) -> dict[str, Any]:
        try:
            return json.loads((self.work_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def _start_mlflow(self) -> None:
        import mlflow
        from mlflow.exceptions import MlflowException

        uri = mlflow.get_tracking_uri()
        # The callback would start a run of its own for these (or nest one): this process owns the one run.
        wanted = os.environ.pop("MLFLOW_RUN_ID", None)
        os.environ.pop("MLFLOW_NESTED_RUN", None)
        state = self._state()
        previous = state.get("mlflow_run_id") if state.get("mlflow_tracking_uri") == uri else None
        run = None
        if wanted or previous:
            try:  # a retry of the same version goes on logging into the run of the attempt it resumes
                run = mlflow.start_run(run_id=wanted or previous)
            except MlflowException:
                if wanted:
                    raise
        if run is None:
            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or f"doge-dagster/{self.spec.asset}")
            tags = {"doge.asset": self.spec.asset, "doge.partition": self.spec.partition,
                    "doge.version": self.spec.version, "doge.stage": self.spec.name}  # fmt: skip
            run = mlflow.start_run(run_name=self.name, tags=tags)
        self.mlflow_run = run
        self.work_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / STATE_FILE).write_text(
            json.dumps({"mlflow_run_id": run.info.run_id, "mlflow_tracking_uri": uri})
        )

    def adopt(self, trainer) -> None:
        """Give a trainer built again after an out-of-memory backoff the MLflow callback of the first one: that
        callback has logged the run's parameters already, and a new one would log the changed batch again,
        which MLflow refuses (the backoff is in the model's metadata instead)."""
        from transformers.integrations import MLflowCallback

        current = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, MLflowCallback)), None)
        if current is None:
            return
        if self.mlflow_callback is None:
            self.mlflow_callback = current
        elif current is not self.mlflow_callback:
            trainer.remove_callback(current)
            trainer.add_callback(self.mlflow_callback)

    def trained(self, trainer) -> None:
        """After training and evaluation: close TensorBoard's writers (evaluation reopens them) and note the W&B run."""
        for callback in trainer.callback_handler.callbacks:
            writer = getattr(callback, "tb_writer", None)
            if writer is not None:
                writer.close()
                callback.tb_writer = None
        wandb = sys.modules.get("wandb")
        run = getattr(wandb, "run", None) if wandb is not None else None
        if self.main and run is not None:
            self.wandb_run = {"wandb_run_id": str(run.id), "wandb_project": str(getattr(run, "project", "") or "")}
            url = getattr(run, "url", None)
            if url:
                self.wandb_run["wandb_run_url"] = str(url)

    def add_to(self, staged: Path) -> None:
        """Copy the TensorBoard event files into the model folder about to be published (`tensorboard/`)."""
        if "tensorboard" in self.targets and self.tensorboard_dir.is_dir():
            shutil.copytree(self.tensorboard_dir, staged / TENSORBOARD_FOLDER, dirs_exist_ok=True)

    def metadata(self) -> dict[str, Any]:
        """What the model's metadata records: the trackers, the event-file folder, the runs' ids and URLs (nothing
        without trackers)."""
        if not self.targets:
            return {}
        metadata: dict[str, Any] = {"report_to": ", ".join(self.targets)}
        if "tensorboard" in self.targets:
            metadata["tensorboard_dir"] = TENSORBOARD_FOLDER  # inside the artifact; the asset adds the full path
        if self.mlflow_run is not None:
            import mlflow

            info = self.mlflow_run.info
            uri = mlflow.get_tracking_uri()
            metadata.update(
                mlflow_run_id=info.run_id,
                mlflow_experiment_id=info.experiment_id,
                mlflow_run_name=self.name,
                mlflow_tracking_uri=public_uri(uri),
            )
            if uri.startswith(("http://", "https://")):
                metadata["mlflow_run_url"] = (
                    f"{public_uri(uri).rstrip('/')}/#/experiments/{info.experiment_id}/runs/{info.run_id}"
                )
        metadata.update(self.wandb_run)
        return metadata

    def end(self, succeeded: bool) -> None:
        """End the MLflow run (its queued metrics written first) and the W&B run; rank 0 only. A tracker that cannot
        be reached now is warned about, never the stage's failure (the model may be published already)."""
        if not self.main:
            return
        try:
            if self.mlflow_run is not None:
                import mlflow

                mlflow.flush_async_logging()
                mlflow.end_run("FINISHED" if succeeded else "FAILED")
            wandb = sys.modules.get("wandb")
            if "wandb" in self.targets and wandb is not None and getattr(wandb, "run", None) is not None:
                wandb.finish(exit_code=0 if succeeded else 1)
        except Exception as error:  # noqa: BLE001 - reported, and the stage's own outcome stands
            print(f"warning: could not end the tracker runs of {self.name}: {error!r}", file=sys.stderr, flush=True)
