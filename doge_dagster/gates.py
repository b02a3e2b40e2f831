"""Gates that hold across runs: nothing is built on an artifact whose blocking checks failed.

Dagster's blocking checks stop the downstream steps of the run that computed them, and only the direct
children. A later run that selects only a downstream asset would otherwise train on a failed model. So every
build first walks the recorded lineage of its inputs (the manifests, back to the sources: what really
produced them, not what the recipe says today) and refuses when one of them failed a check, naming the
asset, version and check. A run tagged `doge/allow-failed-gates=true` builds anyway; the new manifest then
records which failed artifacts it was built on (`gate_override`), so the override stays visible downstream.

Nothing here imports Dagster: the retraining schedule and the CLI use the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from doge_dagster.artifacts import ArtifactStore, Manifest
from doge_dagster.hub_models import EXTERNAL_PREFIXES

ALLOW_FAILED_GATES_TAG = "doge/allow-failed-gates"
PASSED, FAILED = "passed", "failed"


def check_results(manifest: Manifest) -> dict[str, tuple[bool, str]]:
    """The blocking check results a manifest recorded: name -> (passed, detail)."""
    return {name: (bool(value[0]), str(value[1])) for name, value in manifest.metadata.get("checks", {}).items()}


def gate_status(checks: dict[str, Any]) -> str:
    """`passed` when every recorded check passed (or there are none), else `failed`."""
    return PASSED if all(bool(result[0]) for result in checks.values()) else FAILED


def checks_record(checks: dict[str, tuple[bool, str]]) -> dict[str, Any]:
    """What a manifest records about its own checks: every result and the gate status they give."""
    recorded = {name: [bool(passed), str(detail)] for name, (passed, detail) in checks.items()}
    return {"checks": recorded, "gate": gate_status(recorded)}


@dataclass(frozen=True)
class FailedGate:
    """An artifact in a lineage whose blocking checks failed."""

    asset: str
    version: str
    checks: tuple[tuple[str, str], ...]  # (check name, detail)
    path: tuple[str, ...]  # the assets from the one being built down to this one

    def describe(self) -> str:
        """One line: which artifact, which checks, and how it is reached."""
        checks = "; ".join(f"{name} ({detail})" for name, detail in self.checks)
        via = f" (via {' <- '.join(self.path)})" if len(self.path) > 1 else ""
        return f"{self.asset} version {self.version} failed {checks}{via}"

    def record(self) -> dict[str, Any]:
        """JSON-able form for a manifest's `gate_override`."""
        return {"asset": self.asset, "version": self.version, "checks": [name for name, _ in self.checks]}


def failed_gates(store: ArtifactStore, partition: str, inputs: dict[str, Manifest]) -> list[FailedGate]:
    """Every artifact in the recorded lineage of `inputs` (asset -> manifest) whose blocking checks failed."""
    found: list[FailedGate] = []
    seen: set[tuple[str, str]] = set()

    def visit(manifest: Manifest, path: tuple[str, ...]) -> None:
        key = (manifest.asset, manifest.version)
        if key in seen:
            return
        seen.add(key)
        failed = tuple((name, detail) for name, (passed, detail) in check_results(manifest).items() if not passed)
        if failed:
            found.append(FailedGate(manifest.asset, manifest.version, failed, path))
        for asset, version in sorted(manifest.upstream.items()):
            if asset.startswith(EXTERNAL_PREFIXES):  # datasets and Hub checkpoints carry no checks
                continue
            parent = store.read_manifest(asset, partition, version)
            if parent is not None:  # a missing ancestor is reported by `require`, not here
                visit(parent, (*path, asset))

    for asset, manifest in sorted(inputs.items()):
        visit(manifest, (asset,))
    return found


def refusal_message(node: str, partition: str, failures: Iterable[FailedGate]) -> str:
    """Why `node` is not built on these inputs, and the two ways forward."""
    lines = "\n".join(f"  - {failure.describe()}" for failure in failures)
    return (
        f"refusing to build {node}[{partition}]: its inputs include artifacts whose blocking checks failed:\n"
        f"{lines}\n"
        "Fix the cause and materialize those assets again (a new recipe or code gives a new version), or build "
        f"on them anyway with the run tag {ALLOW_FAILED_GATES_TAG}=true (recorded in the new artifact's manifest "
        "as `gate_override`)."
    )


def override_allowed(tags: dict[str, str]) -> bool:
    """Whether a run's tags allow building on failed gates."""
    return str(tags.get(ALLOW_FAILED_GATES_TAG, "")).strip().lower() == "true"
