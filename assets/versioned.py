"""The one materialization routine every artifact asset shares: version, skip if cached, build, publish, check.

Order matters for safety: the recipe is validated and every upstream artifact is located before any
work starts; the artifact is built in a staging folder and published (manifest last) only if the
build succeeds, so a failure never leaves a half-written artifact behind.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from assets.partitions import recipe_partitions
from doge_dagster.artifacts import ArtifactStore, Manifest
from doge_dagster.explain import explain_previous
from doge_dagster.gates import ALLOW_FAILED_GATES_TAG, checks_record, failed_gates, override_allowed, refusal_message
from doge_dagster.leases import WAIT_FOR_WRITER_TAG, Lease, LeaseHeldError, LeaseRecord
from doge_dagster.plan import Planned, ancestry, chain_nodes, plan_versions
from doge_dagster.recipes import (
    Recipe,
    RecipeError,
    RecipeFolder,
    apply_overrides,
    content_version,
    missing_local_paths,
    overrides_from_tags,
)
from resources.artifact_store import ArtifactStoreResource

CheckResults = dict[str, tuple[bool, str]]


@dataclass
class BuildContext:
    """What a build function gets: the recipe, its planned version, the staging folder and upstream folders."""

    recipe: Recipe
    planned: Planned
    out_dir: Path
    upstream_dirs: dict[str, Path]
    store: ArtifactStore
    log: Any
    upstream_manifests: dict[str, Manifest] = field(default_factory=dict)
    # What every manifest of this node records besides the build's own metadata: the code version, the
    # recipe sections it was built from (so `doge-dagster diff` can name the fields that changed since) and,
    # when the run overrode failed gates, which failed artifacts it was built on.
    recorded: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuildOutput:
    """What a build function returns: JSON-able metadata for the manifest and UI-only metadata."""

    metadata: dict[str, Any] = field(default_factory=dict)
    ui_metadata: dict[str, Any] = field(default_factory=dict)
    checks: CheckResults = field(default_factory=dict)


Builder = Callable[[BuildContext], BuildOutput]


def node_code_version(node_name: str, recipes: RecipeFolder) -> str:
    """Dagster code version: the code versions and recipe sections of the node and of every node upstream,
    across every partition.

    Upstream sections are included on purpose: Dagster flags a child unsynced only once its parent has a
    new data version, so with the node's own sections alone an edit of the SFT section would flag SFT
    but not the stages that will be retrained after it. With them, the UI shows the whole affected
    downstream as unsynced as soon as the recipe changes, exactly the artifacts whose version changes.
    """
    nodes = chain_nodes(recipes.chain)
    lineage = ancestry(node_name, nodes)
    sections = []
    for partition in recipes.names():
        try:
            recipe = recipes.load(partition)
            sections.append([[recipe.section(path) for path in nodes[name].sections] for name in lineage])
        except RecipeError:
            # An invalid recipe must not stop the code location from loading: only materializing its
            # partition fails, with the recipe's error. Its raw text stands in for the sections.
            sections.append({"invalid_recipe": _raw_recipe_text(recipes, partition)})
    code_versions = [nodes[name].code_version for name in lineage]
    return f"{nodes[node_name].code_version}-{content_version([code_versions, sections])}"


def _raw_recipe_text(recipes: RecipeFolder, partition: str) -> str:
    try:
        return recipes.path(partition).read_text(errors="replace")
    except OSError:
        return ""


def node_asset_arguments(
    name: str, recipes: RecipeFolder, checks: tuple[str, ...] = (), deps: list | None = None
) -> dict[str, Any]:
    """The `dg.asset` arguments every artifact asset takes from its node of the plan: name, group, one partition
    per recipe, upstream deps (`deps` when the Dagster deps differ, e.g. source assets or gating reports), code
    version, description, and its blocking `checks`."""
    node = chain_nodes(recipes.chain)[name]
    return {
        "name": name,
        "group_name": node.group,
        "partitions_def": recipe_partitions(recipes),
        "deps": list(node.upstream) if deps is None else deps,
        "code_version": node_code_version(name, recipes),
        "description": node.description,
        "check_specs": [dg.AssetCheckSpec(check, asset=name, blocking=True) for check in checks],
    }


def run_recipe(context: dg.AssetExecutionContext, recipes: RecipeFolder) -> Recipe:
    """The partition's recipe with the run's override tags applied (every step of a run sees the same)."""
    return apply_overrides(recipes.load(context.partition_key), overrides_from_tags(context.run.tags))


def materialize_versioned(
    context: dg.AssetExecutionContext,
    artifact_store: ArtifactStoreResource,
    node_name: str,
    build: Builder,
    recipes: RecipeFolder,
    publishes_itself: bool = False,
    resumable: bool = False,
    gated_by: tuple[str, ...] = (),
) -> dg.MaterializeResult:
    """Materialize `node_name` for the run's partition, reusing a complete artifact of the same version.

    With `publishes_itself`, `build` launches a job that publishes the artifact on its own (training
    nodes write straight to the store); upstream artifacts are then only located, not downloaded here.
    With `resumable`, every attempt at a version builds in the same staging folder, so `build` can continue
    from what a killed attempt left there. `gated_by` names report assets (not inputs) whose gates must hold
    too. Nothing is built on an input whose recorded lineage holds a failed blocking check (`gates.py`).
    """
    started = time.monotonic()
    partition = context.partition_key
    recipe = run_recipe(context, recipes)
    if missing := missing_local_paths(recipe, node_name):  # before any folder is made for the build
        raise dg.Failure(description=f"{recipes.path(context.partition_key)}: " + "; ".join(missing))
    planned = plan_versions(recipe, nodes=[node_name])[node_name]
    store = artifact_store.get_store()
    node = chain_nodes(recipe.chain)[node_name]
    upstream = {parent: store.require(parent, partition, planned.upstream[parent]) for parent in node.upstream}
    upstream_dirs = (
        {} if publishes_itself else {parent: store.local_path(manifest) for parent, manifest in upstream.items()}
    )
    manifest = store.read_manifest(node_name, partition, planned.version)
    ui_metadata: dict[str, Any] = {}
    # Refused on failed gates before anything is taken or written (the lease included).
    recorded = {} if manifest is not None else recorded_metadata(context, recipe, node_name, store, upstream, gated_by)
    with contextlib.ExitStack() as writing:
        if manifest is None:  # one writer per artifact: build only while holding its lease (`leases.py`)
            manifest = writing.enter_context(_one_writer(context, store, node_name, partition, planned.version))
        cached = manifest is not None
        if manifest is None and publishes_itself:
            context.log.info(f"{node_name}[{partition}] version {planned.version}: launching")
            output = build(BuildContext(recipe, planned, Path(), upstream_dirs, store, context.log, upstream, recorded))
            manifest = store.require(node_name, partition, planned.version)
            ui_metadata = output.ui_metadata
        elif manifest is None:
            context.log.info(f"{node_name}[{partition}] version {planned.version}: building")
            with store.writing(node_name, partition, planned.version, planned.upstream, resumable) as staged:
                output = build(
                    BuildContext(recipe, planned, staged.path, upstream_dirs, store, context.log, upstream, recorded)
                )
                staged.metadata = {**recorded, **output.metadata, **checks_record(output.checks)}
            manifest = staged.manifest
            ui_metadata = output.ui_metadata
        else:
            context.log.info(
                f"{node_name}[{partition}] version {planned.version}: complete artifact found, reporting it cached"
            )
    return _result(context, store, manifest, planned, cached, ui_metadata, time.monotonic() - started)


@contextlib.contextmanager
def _one_writer(
    context: dg.AssetExecutionContext, store: ArtifactStore, node_name: str, partition: str, version: str
) -> Iterator[Manifest | None]:
    """Hold the lease on the artifact version for the block (released however it ends). Yields the manifest
    when the artifact turned out published once the lease was ours (another run built it meanwhile), else None:
    build it.

    A live holder is waited for (logged: who, since when), unless the run tag `doge/wait-for-writer` is `false`:
    then the step fails at once, naming the holder and the lease file.
    """
    what = f"{node_name}[{partition}] version {version}"
    wait = str(context.run.tags.get(WAIT_FOR_WRITER_TAG, "")).strip().lower() != "false"
    lease = Lease(store, node_name, partition, version, run_id=context.run_id, log=context.log.warning)

    def waiting(holder: LeaseRecord) -> None:
        context.log.info(
            f"{what}: another run is building it ({holder.describe()}); waiting until it is done "
            f"(lease {lease.location}; run tag {WAIT_FOR_WRITER_TAG}=false fails instead)"
        )

    try:
        lease.acquire(wait=wait, on_wait=waiting)
    except LeaseHeldError as held:
        raise dg.Failure(
            description=(
                f"{what} is being built by another run ({held.holder.describe()}), and this run has the tag "
                f"{WAIT_FOR_WRITER_TAG}=false. "
                f"Fix: materialize again once that run is done (or without the tag, to wait for it); if that "
                f"holder is known to be dead, delete its lease file {held.location} (it also expires by itself "
                f"{lease.ttl_s:.0f} s after its last refresh)."
            )
        ) from None
    try:
        manifest = store.read_manifest(node_name, partition, version)
        if lease.waited_for and manifest is None:
            context.log.info(f"{what}: the other run ended without publishing it; building it now")
        elif lease.waited_for:
            context.log.info(f"{what}: the other run published it")
        yield manifest
    finally:
        lease.release()


def recorded_metadata(
    context,
    recipe: Recipe,
    node_name: str,
    store: ArtifactStore,
    inputs: dict[str, Manifest],
    gated_by: tuple[str, ...],
) -> dict[str, Any]:
    """What the new artifact's manifest records about how it was made (see `BuildContext.recorded`), after
    refusing to build on failed gates: `dg.Failure` naming the artifact, version and check, unless the run
    carries the override tag."""
    partition = context.partition_key
    node = chain_nodes(recipe.chain)[node_name]
    gates = dict(inputs)
    if gated_by:
        for report, version in ((name, plan_versions(recipe, nodes=[name])[name].version) for name in gated_by):
            manifest = store.read_manifest(report, partition, version)
            if manifest is None:
                context.log.warning(f"{node_name}[{partition}] is gated by {report}, which has no published report "
                                    f"of version {version}: materialize {report} first to evaluate the gate")  # fmt: skip
            else:
                gates[report] = manifest
    failures = failed_gates(store, partition, gates)
    recorded: dict[str, Any] = {
        "code_version": node.code_version,
        "recipe_sections": {path: recipe.section(path).model_dump(mode="json") for path in node.sections},
    }
    if failures:
        message = refusal_message(node_name, partition, failures)
        if not override_allowed(context.run.tags):
            raise dg.Failure(description=message)
        context.log.warning(f"building anyway ({ALLOW_FAILED_GATES_TAG}=true): {message}")
        recorded["gate_override"] = [failure.record() for failure in failures]
    return recorded


def _result(
    context, store: ArtifactStore, manifest: Manifest, planned: Planned, cached: bool, ui_metadata, seconds: float
):
    checks = manifest.metadata.get("checks", {})
    metadata: dict[str, Any] = {
        "version": planned.version,
        "recipe_section_version": planned.section_version,
        "upstream_versions": dg.MetadataValue.json(planned.upstream),
        "artifact_uri": store.url(manifest.asset, manifest.partition, manifest.version),
        "artifact_bytes": manifest.total_bytes,
        "cached": cached,
        "wall_time_s": round(seconds, 3),
        **{
            key: value
            for key, value in manifest.metadata.items()
            if key != "checks" and not isinstance(value, (dict, list))
        },
        **{
            key: dg.MetadataValue.json(value)
            for key, value in manifest.metadata.items()
            if key != "checks" and isinstance(value, (dict, list))
        },
        **ui_metadata,
    }
    if changes := explain_previous(store, manifest):
        metadata["changes_from_previous_version"] = dg.MetadataValue.md(f"```\n{changes}\n```")
    for entry in manifest.files:
        if entry.path.endswith(".png") and "/" not in entry.path and entry.size < 500_000:
            metadata[entry.path.removesuffix(".png")] = dg.MetadataValue.md(_embedded_png(store, manifest, entry.path))
    check_results = [
        dg.AssetCheckResult(
            check_name=name,
            passed=bool(passed),
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"detail": detail},
        )
        for name, (passed, detail) in checks.items()
    ]
    return dg.MaterializeResult(
        metadata=metadata, data_version=dg.DataVersion(planned.version), check_results=check_results
    )


def _embedded_png(store: ArtifactStore, manifest: Manifest, name: str) -> str:
    import base64

    url = f"{store.url(manifest.asset, manifest.partition, manifest.version)}/{name}"
    with store.fs.open(url, "rb") as handle:
        encoded = base64.b64encode(handle.read()).decode()
    return f"![{name}](data:image/png;base64,{encoded})"
