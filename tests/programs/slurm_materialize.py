"""`dg.materialize` of data and training assets for tiny with a chosen compute backend (Slurm or local).

Usage: `python -m programs.slurm_materialize ARGS_JSON`, ARGS_JSON an object with
- `selection`: asset names; `store`: the artifact store's root; `backend`: `slurm` or `local`;
- `shared_dir`: the Slurm shared folder (`SlurmSettings.shared_dir`, polled every 0.5 s);
- `env`: extra environment of the compute resource (optional);
- `out`: the file the report is written to.
DOGE_RECIPES_DIR (the shortened tiny recipe) is read when the assets are imported: hence a process of its own.

The report is `{"success", "logs" (every user message of the run), "failures" (description and error per failed
step)}`, written as JSON to `out` rather than printed: `test_slurm.py` interrupts this process with SIGINT and
reads the report that the interrupted materialization still writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import dagster as dg


def materialize(args: dict[str, Any]) -> dict[str, Any]:
    """Materialize `args["selection"]` for tiny; the report `main` writes."""
    from assets.data import build_data_assets
    from assets.training import build_training_assets
    from doge_dagster.recipes import default_recipes
    from resources.artifact_store import ArtifactStoreResource
    from resources.compute import ComputeResource
    from resources.slurm import SlurmSettings

    slurm = SlurmSettings(shared_dir=args["shared_dir"], poll_interval_s=0.5)
    compute = ComputeResource(backend=args["backend"], slurm=slurm, env=args.get("env", {}))
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [*build_data_assets(default_recipes()), *build_training_assets(default_recipes())], partition_key="tiny", selection=args["selection"], instance=instance,
        resources={"artifact_store": ArtifactStoreResource(root=args["store"]), "compute": compute},
        raise_on_error=False,
    )  # fmt: skip
    failures = []
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        description = data.user_failure_data.description if data.user_failure_data else ""
        failures.append(description + "\n" + data.error.to_string())
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    return {"success": result.success, "logs": logs, "failures": failures}


def main(argv: list[str]) -> None:
    (raw,) = argv
    args = json.loads(raw)
    report = materialize(args)
    Path(args["out"]).write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
