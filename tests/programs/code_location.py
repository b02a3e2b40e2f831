"""The code location as the environment builds it: assets (group, deps, checks) and jobs (their assets).

Usage: `python -m programs.code_location` with DOGE_EXTRA_STAGES, DOGE_RECIPES_DIR... set: the records and
recipes are read when `doge_dagster.definitions` is imported, so a test that changes them reads the code
location here.
"""

from __future__ import annotations

import sys

from programs import emit


def main(argv: list[str]) -> None:
    """Print the assets and jobs of `doge_dagster.definitions` as the RESULT-JSON line."""
    if argv:
        raise SystemExit("usage: python -m programs.code_location")
    from doge_dagster.definitions import defs

    graph = defs.resolve_asset_graph()
    assets = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if not node.is_materializable:
            continue
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "checks": sorted(check.name for check in node.check_keys),
        }
    jobs = {
        job.name: sorted(key.to_user_string() for key in job.asset_layer.asset_graph.executable_asset_keys)
        for job in defs.resolve_all_job_defs()
        if not job.name.startswith("__")
    }
    emit({"assets": assets, "jobs": jobs})


if __name__ == "__main__":
    main(sys.argv[1:])
