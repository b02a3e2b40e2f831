"""Versioned artifacts on any fsspec URL, published atomically with a manifest written last.

Layout: `{root}/{asset}/{partition}/{version}/` holds the files and `manifest.json`. A folder without
a manifest is an unfinished write: it is never read as an output, and the next publish replaces it.
Writers fill a local staging folder; `publish` moves (local root) or uploads (remote root) it, then
writes the manifest. Nothing here imports Dagster, so training nodes use the same code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

MANIFEST_NAME = "manifest.json"
STAGING_DIR = ".staging"
LEASES_DIR = ".leases"  # one writer per artifact: see doge_dagster/leases.py


class ArtifactMissingError(FileNotFoundError):
    """An upstream artifact of the requested version has not been published."""


class ArtifactUploadError(OSError):
    """Publishing to a remote store failed part-way; no manifest was written, so nothing partial is ever read."""


class ArtifactIntegrityError(OSError):
    """A downloaded artifact file does not match the size or sha256 its manifest lists."""


@dataclass(frozen=True)
class ManifestFile:
    """One published file: path relative to the artifact folder, size in bytes, sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What makes an artifact complete: its identity, its inputs' versions and its files."""

    asset: str
    partition: str
    version: str
    upstream: dict[str, str]
    files: list[ManifestFile]
    created: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialize for `manifest.json`."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse a `manifest.json`."""
        data = json.loads(text)
        data["files"] = [ManifestFile(**entry) for entry in data["files"]]
        return cls(**data)

    @property
    def total_bytes(self) -> int:
        """Size of all published files."""
        return sum(entry.size for entry in self.files)


def hash_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def describe_folder(folder: Path) -> list[ManifestFile]:
    """Every file under `folder`, sorted, with size and hash."""
    return [
        ManifestFile(path=path.relative_to(folder).as_posix(), size=path.stat().st_size, sha256=hash_file(path))
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]


class ArtifactStore:
    """Versioned artifacts under one fsspec root (`/local/folder`, `s3://bucket/prefix`, ...)."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None, cache_dir: str | None = None):
        self.root_url = root.rstrip("/")
        self.storage_options = storage_options or {}
        self.fs, self.root = fsspec.core.url_to_fs(self.root_url, **self.storage_options)
        self.root = self.root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)
        default_cache = Path(tempfile.gettempdir()) / "doge-artifact-cache"
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache

    # -- paths --------------------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def url(self, asset: str, partition: str, version: str) -> str:
        """Full URL of an artifact folder (with protocol for remote stores)."""
        path = self._path(asset, partition, version)
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def lease_path(self, asset: str, partition: str, version: str) -> str:
        """Where the lease on an artifact version lives (`doge_dagster.leases`): a JSON file beside the versions."""
        return self._path(asset, partition, LEASES_DIR, f"{version}.json")

    # -- reading ------------------------------------------------------------------------------------
    def read_manifest(self, asset: str, partition: str, version: str) -> Manifest | None:
        """The manifest of a complete artifact, or None if it was never (fully) published."""
        path = self._path(asset, partition, version, MANIFEST_NAME)
        try:
            with self.fs.open(path, "r") as handle:
                return Manifest.from_json(handle.read())
        except FileNotFoundError:
            return None

    def manifests(self, asset: str, partition: str) -> list[Manifest]:
        """All complete artifacts of an asset partition, oldest first."""
        folder = self._path(asset, partition)
        try:
            entries = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("."):
                continue
            manifest = self.read_manifest(asset, partition, name)
            if manifest is not None:
                found.append(manifest)
        return sorted(found, key=lambda manifest: manifest.created)

    def latest(self, asset: str, partition: str) -> Manifest | None:
        """The most recently published complete artifact, if any."""
        manifests = self.manifests(asset, partition)
        return manifests[-1] if manifests else None

    def require(self, asset: str, partition: str, version: str) -> Manifest:
        """The manifest of an upstream artifact, or a clear error saying what to materialize first."""
        manifest = self.read_manifest(asset, partition, version)
        if manifest is None:
            raise ArtifactMissingError(
                f"upstream artifact {asset}[{partition}] version {version} is not published in {self.root_url}; "
                f"materialize {asset} for partition {partition} first"
            )
        return manifest

    def local_path(self, manifest: Manifest) -> Path:
        """A local folder holding the artifact's files: the folder itself for a local store, else a verified cache copy."""
        if self.is_local:
            return Path(self._path(manifest.asset, manifest.partition, manifest.version))
        target = self.cache_dir / manifest.asset / manifest.partition / manifest.version
        if (target / MANIFEST_NAME).is_file():
            cached = Manifest.from_json((target / MANIFEST_NAME).read_text())
            if cached.files == manifest.files:
                return target
        staging = target.with_name(f"{target.name}.{uuid.uuid4().hex}.part")
        staging.mkdir(parents=True)
        try:
            remote = self._path(manifest.asset, manifest.partition, manifest.version)
            for entry in manifest.files:
                destination = staging / entry.path
                destination.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(f"{remote}/{entry.path}", str(destination))
                size, digest = destination.stat().st_size, hash_file(destination)
                if (size, digest) != (entry.size, entry.sha256):
                    raise ArtifactIntegrityError(
                        f"{remote}/{entry.path}: got {size} bytes with sha256 {digest}, but the manifest lists "
                        f"{entry.size} bytes with sha256 {entry.sha256}; re-materialize "
                        f"{manifest.asset} for partition {manifest.partition}"
                    )
            (staging / MANIFEST_NAME).write_text(manifest.to_json())
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    # -- writing ------------------------------------------------------------------------------------
    def staging_dir(self, asset: str, partition: str, version: str, resumable: bool = False) -> Path:
        """A local folder to write an artifact into before `publish`: fresh, or with `resumable` the same
        folder for every attempt at this version, so a build can continue what a killed attempt left there.

        For a local store it sits beside the final folder, so publishing is a rename.
        """
        if self.is_local:
            base = Path(self._path(asset, partition, STAGING_DIR))
        else:
            base = self.cache_dir / STAGING_DIR / asset / partition
        folder = base / (f"{version}-resumable" if resumable else f"{version}-{uuid.uuid4().hex[:8]}")
        folder.mkdir(parents=True, exist_ok=resumable)
        return folder

    def publish(
        self,
        asset: str,
        partition: str,
        version: str,
        staged: Path,
        upstream: dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Manifest:
        """Make a staged folder the artifact of `version`: files first, manifest last."""
        manifest = Manifest(
            asset=asset,
            partition=partition,
            version=version,
            upstream=dict(upstream or {}),
            files=describe_folder(staged),
            created=time.time(),
            metadata=dict(metadata or {}),
        )
        final = self._path(asset, partition, version)
        if self.is_local:
            if self.fs.exists(final):
                # A leftover without manifest (interrupted publish) or an older complete copy: replace it.
                self.fs.rm(final, recursive=True)
            Path(final).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
            self._write_manifest(final, manifest)
            return manifest
        try:
            if self.fs.exists(final):
                self.fs.rm(final, recursive=True)  # a leftover without manifest, or an older complete copy
            self.fs.put(f"{staged}/", f"{final}/", recursive=True)
            self._write_manifest(final, manifest)
        except Exception as error:  # the endpoint went away, credentials expired, the bucket is full...
            kept = f"the staged files are kept in {staged}" if staged.is_dir() else "the staged files are gone"
            raise ArtifactUploadError(
                f"uploading {asset}[{partition}] version {version} to {self.url(asset, partition, version)} "
                f"(endpoint {self.endpoint()}) failed: {type(error).__name__}: {error}. No manifest was written, so "
                f"no reader sees a partial artifact; {kept}. Check that the store is reachable, then materialize "
                f"{asset} for partition {partition} again: the rerun uploads it again"
            ) from error
        shutil.rmtree(staged, ignore_errors=True)
        return manifest

    def endpoint(self) -> str:
        """The remote store's endpoint as configured (storage options, else the environment), for messages."""
        url = self.storage_options.get("client_kwargs", {}).get("endpoint_url")
        url = url or self.storage_options.get("endpoint_url")
        for name in ("FSSPEC_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
            url = url or os.environ.get(name)
        return url or "the provider's default"

    def _write_manifest(self, final: str, manifest: Manifest) -> None:
        target = f"{final}/{MANIFEST_NAME}"
        if self.is_local:
            temporary = f"{target}.{uuid.uuid4().hex}.tmp"
            Path(temporary).write_text(manifest.to_json())
            os.replace(temporary, target)
        else:
            # A single PUT is atomic on S3: readers see the whole manifest or none.
            with self.fs.open(target, "w") as handle:
                handle.write(manifest.to_json())

    @contextlib.contextmanager
    def writing(
        self,
        asset: str,
        partition: str,
        version: str,
        upstream: dict[str, str] | None = None,
        resumable: bool = False,
    ) -> Iterator[StagedArtifact]:
        """Stage an artifact; publish it when the block succeeds. When the block raises, the staged files are
        discarded, or with `resumable` kept for the next attempt at the same version (they are never published
        unless that attempt succeeds)."""
        staged = StagedArtifact(self.staging_dir(asset, partition, version, resumable))
        try:
            yield staged
        except BaseException:
            if not resumable:
                shutil.rmtree(staged.path, ignore_errors=True)
            raise
        staged.manifest = self.publish(asset, partition, version, staged.path, upstream, staged.metadata)


@dataclass
class StagedArtifact:
    """A folder being written; `metadata` goes into the manifest, `manifest` is set after publish."""

    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    manifest: Manifest | None = None
