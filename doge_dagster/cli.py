"""`doge-dagster`: small commands around the pipeline that need no Dagster instance.

doge-dagster lineage doge_instruct --partition tiny      # sources -> ... -> artifact, with versions
doge-dagster lineage doge_base --partition tiny --version 0123456789abcdef   # as recorded in manifests
doge-dagster versions --partition tiny                   # every node's version and whether it is published
doge-dagster plan --partition 160M                       # per stage: tokens, steps, expected time and GPU-hours
                                                         # against its time limit (exit 1 when one does not fit)
doge-dagster evaluate SmallDoge/Doge-20M-Instruct --suite instruct --output eval/   # any folder or Hub id, with
                                                         # the evaluation assets' runner, tasks and report
doge-dagster diff doge_instruct --partition tiny         # why the recipe now plans another version than the
                                                         # published one: recipe fields, code and upstream versions
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

from doge_dagster.artifacts import ArtifactStore, Manifest
from doge_dagster.budget import estimate_stage, plan_lines
from doge_dagster.explain import explain_against_plan
from doge_dagster.hub_models import EXTERNAL_PREFIXES
from doge_dagster.lineage import recorded_lineage
from doge_dagster.plan import NODES, Planned, ancestry, plan_versions
from doge_dagster.recipes import PROJECT_ROOT, RecipeError, apply_overrides, load_recipe


def published_label(manifest: Manifest | None) -> str:
    """`published <time>` for a complete artifact, `missing` for none."""
    if manifest is None:
        return "missing"
    created = datetime.datetime.fromtimestamp(manifest.created).strftime("%Y-%m-%d %H:%M")
    return f"published {created}"


def status(store: ArtifactStore, node: str, partition: str, version: str) -> str:
    """`published <time>` or `missing` for one artifact version."""
    return published_label(store.read_manifest(node, partition, version))


def lineage_lines(node: str, partition: str, planned: dict[str, Planned], store: ArtifactStore) -> list[str]:
    """Human-readable lineage from the sources to `node`."""
    lines = []
    sources = sorted(
        {
            name: version
            for step in ancestry(node)
            for name, version in planned[step].upstream.items()
            if name.startswith(EXTERNAL_PREFIXES)
        }.items()
    )
    for name, version in sources:
        lines.append(f"{name:<24} {version}")
    for step in ancestry(node):
        info = planned[step]
        inputs = ", ".join(f"{name}@{version[:8]}" for name, version in info.upstream.items())
        lines.append(f"{step:<24} {info.version}  recipe {NODES[step].sections[-1]}@{info.section_version[:8]}  "
                     f"[{status(store, step, partition, info.version)}]  <- {inputs}")  # fmt: skip
    return lines


def recorded_lineage_lines(root: Manifest, store: ArtifactStore) -> list[str]:
    """Lineage of one published artifact as its manifests recorded it: the inputs that really produced it,
    whatever the recipe says today (an older recipe, a one-run override, a continued pretraining)."""
    lineage = recorded_lineage(store, root.partition, {root.asset: root})
    lines = [f"{name:<24} {value}" for name, value in lineage.sources.items()]
    for asset, version, manifest in lineage.entries:
        if manifest is None:
            lines.append(f"{asset:<24} {version}  [missing: no manifest, so its inputs are unknown]")
            continue
        inputs = ", ".join(f"{name}@{value[:8]}" for name, value in sorted(manifest.upstream.items()))
        lines.append(f"{asset:<24} {version}  [{published_label(manifest)}]  <- {inputs}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and print."""
    parser = argparse.ArgumentParser(
        prog="doge-dagster", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    lineage = commands.add_parser("lineage", help="print the chain from the sources to an asset, with versions")
    lineage.add_argument("asset", choices=sorted(NODES))
    lineage.add_argument(
        "--version", help="a published version: print the lineage its manifests recorded instead of the recipe's plan"
    )
    versions = commands.add_parser("versions", help="every asset's version for a partition and whether it is published")
    plan = commands.add_parser(
        "plan",
        help="per training stage: tokens, optimizer steps, processes, expected tokens/s, wall time and GPU-hours "
        "against its time limit (exit status 1 when a stage does not fit)",
    )
    diff = commands.add_parser(
        "diff",
        help="why the current recipe plans another version of an asset than the published one: the recipe fields "
        "(old -> new), code versions and upstream versions that differ, explained down to the sources",
    )
    diff.add_argument("asset", choices=sorted(NODES))
    diff.add_argument("--version", help="the published version to compare (default: the newest)")
    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate any model (a folder or a Hub id) with the evaluation assets' runner and report; exit status 1 "
        "when a gate (valid scores, the think format rate) fails",
    )
    evaluate.add_argument("model", help="a model folder, or a Hub id such as SmallDoge/Doge-20M (Hub cache offline)")
    evaluate.add_argument("--suite", required=True, choices=["base", "instruct", "reason"],
                          help="whose tasks, chat template and system prompt")  # fmt: skip
    evaluate.add_argument("--recipe", default="20M", help="the recipe whose evaluation section to use (default 20M)")
    evaluate.add_argument("--tasks", type=Path, help="a file with one task per line, instead of the suite's")
    evaluate.add_argument("--output", type=Path, help="report folder (default eval-results/<model name>-<suite>)")
    evaluate.add_argument("--revision", help="a Hub revision (branch, tag or commit) for a Hub id")
    for sub in (lineage, versions, plan, diff):
        sub.add_argument("--partition", required=True, help="recipe name, e.g. tiny")
        sub.add_argument(
            "--root",
            default=os.environ.get("DOGE_ARTIFACT_ROOT", str(PROJECT_ROOT / ".doge")),
            help="artifact store root",
        )
        sub.add_argument(
            "--override",
            action="append",
            default=[],
            metavar="PATH=VALUE",
            help="recipe override, as a run tag would set",
        )
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        return _evaluate(args)
    try:
        recipe = apply_overrides(load_recipe(args.partition), dict(item.split("=", 1) for item in args.override))
    except RecipeError as error:
        print(error, file=sys.stderr)
        return 2
    store = ArtifactStore(args.root)
    over_limit = False
    if args.command == "plan":
        # Rates: the stage's launch settings, the store's last run of it on that device, or the measured table.
        lines = plan_lines(recipe, store, args.partition)
        over_limit = any(
            estimate_stage(recipe, stage.name, store, args.partition).verdict == "DOES NOT FIT"
            for stage in recipe.chain.stages
            if recipe.section(stage.section) is not None
        )
    elif args.command == "lineage" and args.version:
        # Manifests only: no plan, so no source fingerprints (Hub lookups for the real sizes).
        recorded = store.read_manifest(args.asset, args.partition, args.version)
        if recorded is None:
            print(f"--version: {args.asset}[{args.partition}] has no published version {args.version}; "
                  f"`doge-dagster versions --partition {args.partition}` lists the planned ones", file=sys.stderr)  # fmt: skip
            return 2
        lines = recorded_lineage_lines(recorded, store)
    elif args.command == "diff":
        lines = explain_against_plan(store, recipe, plan_versions(recipe), args.asset, args.partition, args.version)
    elif args.command == "lineage":
        lines = lineage_lines(args.asset, args.partition, plan_versions(recipe), store)
    else:
        lines = [
            f"{name:<24} {info.version}  [{status(store, name, args.partition, info.version)}]"
            for name, info in plan_versions(recipe).items()
        ]
    try:
        print("\n".join(lines))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader stopped early (`doge-dagster versions ... | head`): not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1 if over_limit else 0


def _evaluate(args: argparse.Namespace) -> int:
    from doge_dagster.evaluation.any_model import ModelNotFoundError, evaluate_any_model

    output = args.output or Path("eval-results") / f"{Path(args.model.rstrip('/')).name}-{args.suite}"
    try:
        return evaluate_any_model(args.model, args.suite, output, args.recipe, args.tasks, args.revision)
    except (ModelNotFoundError, RecipeError, ValueError) as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
