"""What the Dagster instance of DAGSTER_HOME holds: its runs, or the newest materializations of some assets.

Usage:
- `python -m programs.instance runs`: every run (run id, job, status, tags), newest first;
- `python -m programs.instance materializations PARTITION ASSET...`: per asset that has one, the newest
  materialization of its PARTITION: run id, `cached`, `version` and the JSON-compatible metadata.

The instance is the one `DagsterInstance.get()` finds through DAGSTER_HOME, which is read when it is loaded:
hence a process of its own, started with the home of the test.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import dagster as dg

from programs import emit


def runs() -> list[dict[str, Any]]:
    """Every run of the instance, newest first."""
    return [
        {"run_id": run.run_id, "job": run.job_name, "status": run.status.value, "tags": dict(run.tags)}
        for run in dg.DagsterInstance.get().get_runs()
    ]


def latest_materializations(partition: str, assets: Sequence[str]) -> dict[str, dict[str, Any]]:
    """asset -> its newest materialization of `partition` (assets never materialized are left out)."""
    instance = dg.DagsterInstance.get()
    out = {}
    for name in assets:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(name), asset_partitions=[partition]), limit=1
        ).records
        if not records:
            continue
        entry = records[0].event_log_entry
        metadata = {key: value.value for key, value in entry.asset_materialization.metadata.items()}
        out[name] = {
            "run_id": entry.run_id,
            "cached": metadata.get("cached"),
            "version": metadata.get("version"),
            "metadata": {
                key: value for key, value in metadata.items() if isinstance(value, (str, int, float, bool, dict, list))
            },
        }
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m programs.instance", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("runs", help="every run, newest first")
    materializations = commands.add_parser("materializations", help="the newest materialization per asset")
    materializations.add_argument("partition")
    materializations.add_argument("assets", nargs="*")
    args = parser.parse_args(argv)
    if args.command == "runs":
        emit(runs())
    else:
        emit(latest_materializations(args.partition, args.assets), default=str)


if __name__ == "__main__":
    main(sys.argv[1:])
