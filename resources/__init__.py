"""Dagster resources: where artifacts live and where compute runs."""

from resources.artifact_store import ArtifactStoreResource

__all__ = ["ArtifactStoreResource"]
