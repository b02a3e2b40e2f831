"""The artifact store as a Dagster resource: a local folder by default, any fsspec URL (S3 included)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from doge_dagster.artifacts import ArtifactStore
from doge_dagster.recipes import PROJECT_ROOT


class ArtifactStoreResource(dg.ConfigurableResource):
    """Versioned artifact storage: `{root}/{asset}/{partition}/{version}/` with a manifest written last.

    `root` is a local folder (relative paths are inside the project) or a URL such as
    `s3://bucket/prefix`. S3 settings are optional; pass credentials with `dg.EnvVar` so they never
    appear in run configuration or metadata.
    """

    root: str = Field(default=".doge", description="Local folder or fsspec URL of the artifact store.")
    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000.")
    region: str | None = Field(default=None, description="S3 region name.")
    access_key_id: str | None = Field(default=None, description="S3 access key id (use dg.EnvVar).")
    secret_access_key: str | None = Field(default=None, description="S3 secret key (use dg.EnvVar).")

    @property
    def root_url(self) -> str:
        """The root as an absolute local path or a URL."""
        if "://" in self.root:
            return self.root
        path = Path(self.root)
        return str(path if path.is_absolute() else PROJECT_ROOT / path)

    def storage_options(self) -> dict:
        """fsspec options for remote roots (empty for local folders)."""
        if "://" not in self.root:
            return {}
        options: dict = {}
        client_kwargs = {key: value for key, value in (("endpoint_url", self.endpoint_url), ("region_name", self.region)) if value}
        if client_kwargs:
            options["client_kwargs"] = client_kwargs
        if self.access_key_id:
            options["key"] = self.access_key_id
        if self.secret_access_key:
            options["secret"] = self.secret_access_key
        return options

    def process_env(self) -> dict[str, str]:
        """Environment that lets a launched process open `ArtifactStore(root)` with no options.

        s3fs reads these by itself: `FSSPEC_S3_ENDPOINT_URL` (fsspec's per-protocol config), the
        region and the credentials through botocore's `AWS_*` variables. Credentials travel only
        in the process environment, never in the spec file, metadata or manifests. Empty for
        local roots.
        """
        if "://" not in self.root:
            return {}
        settings = {
            "FSSPEC_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,  # the same endpoint for boto3-based tools
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }
        return {name: value for name, value in settings.items() if value}

    def get_store(self) -> ArtifactStore:
        """An `ArtifactStore` on the configured root."""
        return ArtifactStore(self.root_url, self.storage_options())
