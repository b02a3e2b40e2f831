"""Why a version changed: the recipe fields, code versions and upstream versions that differ between two
builds of an asset (a published one and what the current recipe plans, or two published ones).

Every manifest records the code version and the recipe sections it was built from (artifacts published before
that was recorded say so instead of guessing). An upstream that differs is explained the same way, recursively,
down to the sources, so "code changed" in the UI becomes "stages.pretrain.training.max_steps: 900 -> 1200".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from doge_dagster.artifacts import ArtifactStore, Manifest
from doge_dagster.hub_models import EXTERNAL_PREFIXES
from doge_dagster.plan import Planned, chain_nodes
from doge_dagster.recipes import Recipe

NOT_RECORDED = "not recorded (published before manifests recorded it)"


@dataclass(frozen=True)
class Build:
    """What decides a node's version: code version, recipe sections (dotted path -> JSON), upstream versions."""

    asset: str
    version: str
    code_version: str | None
    sections: dict[str, Any] | None
    upstream: dict[str, str]

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> Build:
        """A published build, as its manifest recorded it."""
        metadata = manifest.metadata
        return cls(manifest.asset, manifest.version, metadata.get("code_version"), metadata.get("recipe_sections"),
                   dict(manifest.upstream))  # fmt: skip

    @classmethod
    def planned(cls, recipe: Recipe, planned: Planned) -> Build:
        """The build the recipe plans for a node."""
        node = chain_nodes(recipe.chain)[planned.node]
        sections = {path: recipe.section(path).model_dump(mode="json") for path in node.sections}
        return cls(planned.node, planned.version, node.code_version, sections, dict(planned.upstream))


def flatten(value: Any, prefix: str) -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"prefix.a.b": 1}`; lists are leaves."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _show(value: Any) -> str:
    return "(unset)" if value is _MISSING else repr(value)


_MISSING = object()


def field_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`path: old -> new` for every recipe field that differs between two sets of sections."""
    before, after = flatten(old, ""), flatten(new, "")
    return [
        f"{path}: {_show(before.get(path, _MISSING))} -> {_show(after.get(path, _MISSING))}"
        for path in sorted(set(before) | set(after))
        if before.get(path, _MISSING) != after.get(path, _MISSING)
    ]


Resolver = Callable[[str, str], "Build | None"]


def explain(old: Build, new: Build, old_upstream: Resolver, new_upstream: Resolver, depth: int = 0) -> list[str]:
    """Indented lines saying why `new` differs from `old` (empty when they are the same version).

    `old_upstream(asset, version)` / `new_upstream(asset, version)` give the builds of upstream versions
    on each side (None when unknown), to explain an upstream change in turn.
    """
    if old.version == new.version:
        return []
    pad = "  " * depth
    lines = [f"{pad}{new.asset}: {old.version} -> {new.version}"]
    if old.code_version != new.code_version:
        lines.append(f"{pad}  code version: {old.code_version or NOT_RECORDED} -> {new.code_version}")
    if old.sections is None:
        lines.append(f"{pad}  recipe fields: {NOT_RECORDED}")
    elif new.sections is not None:
        lines += [f"{pad}  recipe {change}" for change in field_changes(old.sections, new.sections)]
    for name in sorted(set(old.upstream) | set(new.upstream)):
        before, after = old.upstream.get(name), new.upstream.get(name)
        if before == after:
            continue
        if name == new.asset:
            lines.append(f"{pad}  continued from: {before or '(scratch)'} -> {after or '(scratch)'}")
        elif name.startswith(EXTERNAL_PREFIXES):
            lines.append(f"{pad}  source {name}: {before or '(not read)'} -> {after or '(not read)'}")
        else:
            old_build = old_upstream(name, before) if before else None
            new_build = new_upstream(name, after) if after else None
            if old_build is not None and new_build is not None:
                lines += explain(old_build, new_build, old_upstream, new_upstream, depth + 1)
            else:
                lines.append(f"{pad}  upstream {name}: {before or '(none)'} -> {after or '(none)'}")
    return lines


def recorded_resolver(store: ArtifactStore, partition: str) -> Resolver:
    """Upstream builds as their manifests recorded them."""

    def resolve(asset: str, version: str) -> Build | None:
        manifest = store.read_manifest(asset, partition, version)
        return Build.from_manifest(manifest) if manifest is not None else None

    return resolve


def planned_resolver(recipe: Recipe, planned: dict[str, Planned]) -> Resolver:
    """Upstream builds as the recipe plans them."""

    def resolve(asset: str, version: str) -> Build | None:
        info = planned.get(asset)
        return Build.planned(recipe, info) if info is not None and info.version == version else None

    return resolve


def explain_against_plan(
    store: ArtifactStore, recipe: Recipe, planned: dict[str, Planned], asset: str, partition: str, version: str | None
) -> list[str]:
    """Why the current recipe plans another version of `asset` than the published one (`version`, default
    the newest), as lines for `doge-dagster diff`."""
    manifest = store.read_manifest(asset, partition, version) if version else store.latest(asset, partition)
    target = planned[asset]
    if manifest is None:
        which = f"version {version}" if version else "any version"
        return [f"{asset}[{partition}] has no published {which}; the current recipe plans {target.version}"]
    if manifest.version == target.version:
        return [f"{asset}[{partition}] {manifest.version} is what the current recipe plans: nothing changed"]
    lines = explain(Build.from_manifest(manifest), Build.planned(recipe, target), recorded_resolver(store, partition),
                    planned_resolver(recipe, planned))  # fmt: skip
    return [f"published {manifest.version} -> planned {target.version} (current recipe)", *lines]


def explain_previous(store: ArtifactStore, manifest: Manifest) -> str | None:
    """What changed since the version of the same asset published before `manifest` (None when it is the first)."""
    earlier = [other for other in store.manifests(manifest.asset, manifest.partition) if other.created < manifest.created]
    if not earlier:
        return None
    resolve = recorded_resolver(store, manifest.partition)
    lines = explain(Build.from_manifest(earlier[-1]), Build.from_manifest(manifest), resolve, resolve)
    return "\n".join(lines)
