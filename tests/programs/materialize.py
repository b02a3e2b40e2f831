"""`dg.materialize` of a selection of the code location for one partition, counting local-backend launches.

Usage: `python -m programs.materialize SELECTION PARTITION [TAGS_JSON]` (SELECTION: asset names separated by
commas; TAGS_JSON: the run's tags).

The definitions are imported here, under the caller's environment (DOGE_RECIPES_DIR, DOGE_ARTIFACT_ROOT), on an
ephemeral instance. `ProcessGroupSubprocessClient.run` is wrapped before the definitions are imported so that
every launch of a training or evaluation process is counted. Result: `success`, the step `failures` (step,
error text, `dg.Failure` description), the number of `launches`, every event's `messages` and each materialized
asset's metadata (`materializations`, values as text).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import dagster as dg

from programs import emit


def count_launches() -> list[Any]:
    """Wrap `ProcessGroupSubprocessClient.run` so that each call records its command; returns the record."""
    from resources.local import ProcessGroupSubprocessClient

    launches: list[Any] = []
    original_run = ProcessGroupSubprocessClient.run

    def recording_run(self, *args, **kwargs):  # counts launches, then runs the real client
        launches.append(kwargs.get("command"))
        return original_run(self, *args, **kwargs)

    ProcessGroupSubprocessClient.run = recording_run
    return launches


def materialize(selection: str, partition: str, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Materialize `selection` (comma-separated) for `partition` with the run `tags`; the result as `main` prints
    it."""
    launches = count_launches()
    from doge_dagster.definitions import defs  # after count_launches: the resources get the wrapped client

    result = dg.materialize(
        list(defs.assets), selection=selection.split(","), partition_key=partition, resources=defs.resources,
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False, tags=tags or None,
    )  # fmt: skip
    failures = []
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        failures.append(
            {
                "step": event.step_key,
                "error": data.error.to_string() if data.error else "",
                "description": (data.user_failure_data.description or "") if data.user_failure_data else "",
            }
        )
    messages = [event.message or "" for event in result.all_events]
    materializations = {
        event.asset_key.to_user_string(): {
            key: str(value.value) for key, value in event.materialization.metadata.items()
        }
        for event in result.get_asset_materialization_events()
    }
    return {
        "success": result.success, "failures": failures, "launches": len(launches), "messages": messages,
        "materializations": materializations,
    }  # fmt: skip


def main(argv: list[str]) -> None:
    selection, partition, *tags = argv
    emit(materialize(selection, partition, json.loads(tags[0]) if tags else None))


if __name__ == "__main__":
    main(sys.argv[1:])
