"""`dg.materialize` of a selection of the tiny graph with the artifact store on S3, into the instance of DAGSTER_HOME.

Usage: `python -m programs.s3_chain ASSETS_JSON` (a JSON list of asset names), with the environment:
- TEST_S3_ROOT, TEST_S3_ENDPOINT, TEST_S3_REGION: the store's root URL, endpoint and region;
- DOGE_TEST_S3_ACCESS_KEY_ID, DOGE_TEST_S3_SECRET_ACCESS_KEY: the credentials, given to the resource as
  `dg.EnvVar`s (so they must never show up in what the pipeline records);
- TEST_SCRATCH: the compute resource's scratch folder; DOGE_RECIPES_DIR, DAGSTER_HOME, TMPDIR as usual.

The definitions (recipes) and the instance are read at import time, hence a process of its own. Result:
`success`, `run_id`, the step `failures` (error text), the asset `checks` (`asset:check` -> passed) and each
materialized asset's `metadata` (values as strings).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import dagster as dg

from programs import emit


def materialize_on_s3(assets: Sequence[str]) -> dict[str, Any]:
    """Materialize `assets` for tiny with an S3 artifact store; the result as `main` prints it."""
    from doge_dagster.definitions import defs
    from resources.artifact_store import ArtifactStoreResource
    from resources.compute import ComputeResource

    artifact_store = ArtifactStoreResource(
        root=os.environ["TEST_S3_ROOT"],
        endpoint_url=os.environ["TEST_S3_ENDPOINT"],
        region=os.environ["TEST_S3_REGION"],
        access_key_id=dg.EnvVar("DOGE_TEST_S3_ACCESS_KEY_ID"),
        secret_access_key=dg.EnvVar("DOGE_TEST_S3_SECRET_ACCESS_KEY"),
    )
    compute = ComputeResource(scratch_dir=os.environ["TEST_SCRATCH"])
    result = dg.materialize(
        list(defs.assets), selection=list(assets), partition_key="tiny",
        resources={"artifact_store": artifact_store, "compute": compute},
        instance=dg.DagsterInstance.get(), raise_on_error=False,
    )  # fmt: skip
    failures = [event.step_failure_data.error.to_string() for event in result.all_events if event.is_step_failure]
    checks = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.asset_check_evaluation_data
            checks[f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"] = evaluation.passed
    metadata = {
        event.asset_key.to_user_string(): {
            key: str(value.value) for key, value in event.materialization.metadata.items()
        }
        for event in result.get_asset_materialization_events()
    }
    return {
        "success": result.success,
        "run_id": result.run_id,
        "failures": failures,
        "checks": checks,
        "metadata": metadata,
    }


def main(argv: list[str]) -> None:
    (assets,) = argv
    emit(materialize_on_s3(json.loads(assets)))


if __name__ == "__main__":
    main(sys.argv[1:])
