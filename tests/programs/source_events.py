"""Events of the source assets in the instance of DAGSTER_HOME: a tick of the source sensor, or a source change.

Usage:
- `python -m programs.source_events tick`: evaluate one tick of `source_data_sensor` and report its asset
  events (the sources' observations) to the instance, as the daemon does with a tick's asset events; the
  result is the number of events;
- `python -m programs.source_events observe ASSET PARTITION DATA_VERSION`: report a runless observation of
  ASSET[PARTITION] with a new data version, as if the source had got new rows; the result echoes it.

The definitions and the instance are read at import time from DOGE_RECIPES_DIR and DAGSTER_HOME: hence a
process of its own, started with the environment of the test.
"""

from __future__ import annotations

import argparse
import sys

import dagster as dg

from programs import emit


def sensor_tick() -> int:
    """One tick of `source_data_sensor`, its asset events reported to the instance; returns their number."""
    from doge_dagster.definitions import defs

    instance = dg.DagsterInstance.get()
    context = dg.build_sensor_context(instance=instance, repository_def=defs.get_repository_def())
    result = defs.resolve_sensor_def("source_data_sensor").evaluate_tick(context)
    for event in result.asset_events:  # what the daemon does with a tick's asset events
        instance.report_runless_asset_event(event)
    return len(result.asset_events)


def observe(asset: str, partition: str, data_version: str) -> None:
    """Report that `asset[partition]` now has the data version `data_version`."""
    dg.DagsterInstance.get().report_runless_asset_event(
        dg.AssetObservation(asset, partition=partition, tags={"dagster/data_version": data_version})
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m programs.source_events", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("tick", help="one tick of source_data_sensor")
    observation = commands.add_parser("observe", help="a new data version of a source asset partition")
    for name in ("asset", "partition", "data_version"):
        observation.add_argument(name)
    args = parser.parse_args(argv)
    if args.command == "tick":
        emit(sensor_tick())
    else:
        observe(args.asset, args.partition, args.data_version)
        emit({"asset": args.asset, "partition": args.partition, "data_version": args.data_version})


if __name__ == "__main__":
    main(sys.argv[1:])
