"""Dagster resources: where artifacts live and where compute runs."""

from resources.artifact_store import ArtifactStoreResource
from resources.compute import ComputeResource

__all__ = ["ArtifactStoreResource", "ComputeResource"]
