"""The recorded lineage of artifacts: their manifests' inputs, walked back to the sources.

What really produced an artifact, whatever the recipe says today (an older recipe, a one-run override, a
continued pretraining). `doge-dagster lineage --version` prints it and release cards list it.
"""

from __future__ import annotations

from dataclasses import dataclass

from doge_dagster.artifacts import ArtifactStore, Manifest
from doge_dagster.hub_models import EXTERNAL_PREFIXES


@dataclass(frozen=True)
class Lineage:
    """Every artifact behind some inputs, upstream first (each once, after its own inputs), and the external
    inputs (datasets, Hub checkpoints) by name."""

    entries: list[tuple[str, str, Manifest | None]]  # (asset, version, manifest); None: recorded, not published
    sources: dict[str, str]

    @property
    def manifests(self) -> list[Manifest]:
        """The published artifacts of the lineage, upstream first."""
        return [manifest for _, _, manifest in self.entries if manifest is not None]

    @property
    def missing(self) -> list[tuple[str, str]]:
        """Inputs a manifest names that have no manifest (deleted, or in another store)."""
        return [(asset, version) for asset, version, manifest in self.entries if manifest is None]

    def of_assets(self, assets: set[str], order: list[str] | None = None) -> list[Manifest]:
        """The lineage's manifests of these assets, upstream first, or in `order` of their asset names (a
        continued model's earlier versions stay before it)."""
        found = [manifest for manifest in self.manifests if manifest.asset in assets]
        return sorted(found, key=lambda manifest: order.index(manifest.asset)) if order else found


def recorded_lineage(store: ArtifactStore, partition: str, inputs: dict[str, Manifest]) -> Lineage:
    """Walk the manifests from `inputs` (asset -> manifest) back to the sources."""
    entries: list[tuple[str, str, Manifest | None]] = []
    sources: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()

    def visit(asset: str, version: str, manifest: Manifest | None = None) -> None:
        if asset.startswith(EXTERNAL_PREFIXES):
            sources[asset] = version
            return
        if (asset, version) in seen:
            return
        seen.add((asset, version))
        manifest = manifest or store.read_manifest(asset, partition, version)
        if manifest is not None:
            for parent, parent_version in sorted(manifest.upstream.items()):
                visit(parent, parent_version)
        entries.append((asset, version, manifest))

    for asset, manifest in sorted(inputs.items()):
        visit(asset, manifest.version, manifest)
    return Lineage(entries, dict(sorted(sources.items())))
