"""Building the project's image with podman from this machine's own package sources (tests/test_container_image.py).

No container registry is needed: the base image is made with debootstrap from the machine's Debian mirror
(`debootstrap --variant=minbase bookworm` with python3, python3-venv and ca-certificates) and `podman import`ed
under a tag named by what went into it, so it is reused while it exists (`podman rmi` it, or let the test's
teardown do so). The Containerfile is then built as a user would build it, with pip's settings of this machine
(`pip config list`: find-links, index URLs, constraints) written to a pip.conf that goes in as the `pip_conf`
build secret, the CA bundle as `pip_cert`, and every local folder or file those settings name mounted read-only
into the build's RUN steps (`--volume`, under /run/pip-local; the settings are rewritten to point there).

Podman on these machines: `--runtime runc --cgroup-manager cgroupfs` (no crun, no systemd), `--ulimit
nofile=1024:1024 --ulimit nproc=1024:1024` (runc cannot set podman's higher defaults here), `--network host`
for the build (apt and pip reach their registries), `--network none` for what runs in the image.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from helpers import PROJECT_ROOT, run_command

PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
TOOLS = ("podman", "runc", "debootstrap")
ULIMIT_CAP = 1024  # open files and processes in a container (see ulimit_options)
INSTALL_HINT = "apt-get install podman runc debootstrap (as .ci/run does), and run the tests as root"

SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_REPOSITORY = "localhost/doge-dagster-base"
# `podman import` sets no environment; the Containerfile's `PATH=/opt/venv/bin:$PATH` needs one (Debian's default).
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APT_MIRROR_ENV = "DOGE_TEST_APT_MIRROR"  # overrides the mirror read from /etc/apt
KEEP_IMAGES_ENV = "DOGE_TEST_KEEP_IMAGES"  # "1": leave the images for the next run (development)

BUILD_MOUNTS = "/run/pip-local"  # where the build's RUN steps see the local package sources
# pip settings whose values name local folders or files (space- or newline-separated lists)
PATH_SETTINGS = {"find-links", "constraint", "requirement"}
INDEX_SETTINGS = {"index-url", "extra-index-url"}
# host-specific file settings that do not carry over (the CA bundle goes in as its own secret)
DROPPED_SETTINGS = {"cert", "client-cert", "config-file", "log", "log-file", "cache-dir", "src", "target", "prefix"}


def missing_tools() -> list[str]:
    """Why the image cannot be built here ([] when it can)."""
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if os.geteuid() != 0:
        missing.append("root (debootstrap and rootful podman)")
    return missing


def ulimit_options() -> list[str]:
    """`--ulimit` options that runc may set here: podman's defaults (nofile 1048576, nproc 32768 or more) exceed
    what this sandbox lets a container have, and runc then fails with "error setting rlimits"."""
    options = []
    for name, limit in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        soft, hard = resource.getrlimit(limit)
        value = min(ULIMIT_CAP, *(v for v in (soft, hard) if v != resource.RLIM_INFINITY))
        options += ["--ulimit", f"{name}={value}:{value}"]
    return options


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """A short podman command (inspect, rm, exec), stdout and stderr apart."""
    completed = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and completed.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    return completed


def image_exists(tag: str) -> bool:
    return podman("image", "exists", tag, check=False).returncode == 0


def image_ids() -> set[str]:
    """Every image here, intermediate build images included."""
    return set(podman("images", "--all", "--quiet", "--no-trunc").stdout.split())


def remove_images(ids: Iterable[str]) -> None:
    """Remove these images (a build's intermediate images with them: podman prunes what becomes dangling)."""
    if ids:
        podman("rmi", "--force", "--ignore", *ids, timeout=600, check=False)


# -- the base image ----------------------------------------------------------------------------------------------
def apt_mirror(suite: str = SUITE) -> str:
    """The Debian mirror that apt here uses for `suite` (deb822 `.sources` or one-line `.list` files)."""
    if os.environ.get(APT_MIRROR_ENV):
        return os.environ[APT_MIRROR_ENV]
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in (p for p in files if p.is_file()):
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in text.split("\n\n"):
                fields = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.startswith(("#", " ")):
                        key, _, value = line.partition(":")
                        fields[key.strip().lower()] = value.split()
                wanted = "deb" in fields.get("types", []) and suite in fields.get("suites", [])
                if wanted and "main" in fields.get("components", []) and fields.get("uris"):
                    return fields["uris"][0]
        else:
            for line in text.splitlines():
                words = [w for w in line.split("#", 1)[0].split() if not w.startswith("[")]
                if len(words) >= 4 and words[0] == "deb" and words[2] == suite and "main" in words[3:]:
                    return words[1]
    raise AssertionError(f"no Debian {suite} mirror with `main` in /etc/apt; set {APT_MIRROR_ENV}")


def base_image_tag(mirror: str) -> str:
    """The base image's tag, named by everything that makes it (suite, packages, mirror, debootstrap)."""
    debootstrap = subprocess.run(
        ["debootstrap", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    key = json.dumps([SUITE, "minbase", sorted(BASE_PACKAGES), mirror, BASE_PATH, debootstrap])
    return f"{BASE_REPOSITORY}:{SUITE}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def make_base_image(work: Path, log_path: Path, timeout: float = 600) -> tuple[str, float]:
    """The base image's tag, made with debootstrap + `podman import` unless it exists; and the seconds spent."""
    started = time.monotonic()
    mirror = apt_mirror()
    tag = base_image_tag(mirror)
    if image_exists(tag):
        return tag, time.monotonic() - started
    rootfs = work / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    try:
        debootstrap = [
            "debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs), mirror,
        ]  # fmt: skip
        result = run_command(debootstrap, dict(os.environ), timeout, log_path=log_path, cwd=work)
        assert result.returncode == 0, f"debootstrap failed ({result.returncode}), see {log_path}"
        for deb in (rootfs / "var" / "cache" / "apt" / "archives").glob("*.deb"):
            deb.unlink()  # debootstrap keeps what it downloaded; the image does not need it
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [*PODMAN, "import", "--change", f"ENV PATH={BASE_PATH}", "-", tag],
            stdin=tar.stdout, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        tar.stdout.close()
        assert tar.wait() == 0 and imported.returncode == 0, f"podman import failed:\n{imported.stderr[-3000:]}"
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return tag, time.monotonic() - started


# -- pip's settings as build secrets and read-only mounts -----------------------------------------------------------
@dataclass
class PipSources:
    """pip's effective settings here, rewritten for the build: a pip.conf, its mounts and the CA bundle."""

    settings: dict[str, str]
    mounts: list[tuple[Path, str]] = field(default_factory=list)  # (host path, path in the build)
    cert: Path | None = None

    def config_text(self) -> str:
        return "[global]\n" + "".join(f"{key} = {value}\n" for key, value in sorted(self.settings.items()))

    def volume_options(self) -> list[str]:
        return [option for host, inside in self.mounts for option in ("--volume", f"{host}:{inside}:ro")]

    def mount(self, host: Path, inside_name: str = "") -> str:
        """The path in the build under which `host` is mounted (mounted once)."""
        for known, inside in self.mounts:
            if known == host:
                return inside
        inside = f"{BUILD_MOUNTS}/{len(self.mounts)}" + (f"/{inside_name}" if inside_name else "")
        self.mounts.append((host, inside))
        return inside


def pip_config_items(python: str = sys.executable) -> dict[str, str]:
    """`pip config list` of `python`'s pip as {"section.key": value} (env variables as ":env:.key")."""
    listed = subprocess.run(
        [python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    items = {}
    for line in listed.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            items[key.strip()] = ast.literal_eval(value.strip())
    return items


def pip_sources(items: dict[str, str] | None = None) -> PipSources:
    """What `pip install` here uses (sections global < install < environment), made to work inside the build."""
    items = pip_config_items() if items is None else items
    merged: dict[str, str] = {}
    for section in ("global", "install", ":env:"):
        for key, value in items.items():
            if key.startswith(f"{section}."):
                merged[key.removeprefix(f"{section}.")] = value
    cert = Path(merged["cert"]) if merged.get("cert") and Path(merged["cert"]).is_file() else None
    sources = PipSources({}, cert=cert)
    for key, value in merged.items():
        if key in DROPPED_SETTINGS:
            continue
        if key in PATH_SETTINGS | INDEX_SETTINGS:
            value = " ".join(_in_build(sources, key, word) for word in value.split())
        sources.settings[key] = value
    return sources


def _in_build(sources: PipSources, key: str, word: str) -> str:
    """One find-links / index / constraint entry as the build sees it (local ones mounted, URLs as they are)."""
    url = urlparse(word)
    if url.scheme and url.scheme != "file":
        return word
    path = Path(unquote(url.path) if url.scheme == "file" else word).resolve()
    if key in INDEX_SETTINGS:
        # a local "simple" index links its files relatively (../../files/...): mount the folder around it
        inside = sources.mount(path.parent)
        return f"file://{inside}/{path.name}"
    if path.is_dir():
        inside = sources.mount(path)
    else:
        inside = sources.mount(path, path.name)
    return f"file://{inside}" if url.scheme == "file" else inside


# -- building and running ------------------------------------------------------------------------------------------
@dataclass
class BuiltImage:
    tag: str
    base: str
    pip_conf: str  # what went in as the pip_conf secret
    base_seconds: float
    build_seconds: float
    cert: Path | None  # what went in as the pip_cert secret


def build_image(
    tag: str, base: str, work: Path, log_path: Path, *, extras: str = "", timeout: float = 1200
) -> tuple[PipSources, float]:
    """`podman build` of the Containerfile on `base` with pip's settings as secrets; the sources and seconds."""
    sources = pip_sources()
    pip_conf = work / "pip.conf"
    pip_conf.write_text(sources.config_text())
    pip_conf.chmod(0o600)
    secrets = ["--secret", f"id=pip_conf,src={pip_conf}"]
    if sources.cert:
        secrets += ["--secret", f"id=pip_cert,src={sources.cert}"]
    command = [
        *PODMAN, "build", "-f", "Containerfile", "--pull=never", "--network", "host", *ulimit_options(),
        "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"EXTRAS={extras}",
        *secrets, *sources.volume_options(), "-t", tag, str(PROJECT_ROOT),
    ]  # fmt: skip
    started = time.monotonic()
    result = run_command(command, dict(os.environ), timeout, log_path=log_path)
    assert result.returncode == 0, (
        f"podman build failed ({result.returncode}), see {log_path}:\n{result.stdout[-4000:]}"
    )
    return sources, time.monotonic() - started


def container_name() -> str:
    return f"doge-dagster-test-{uuid.uuid4().hex[:10]}"


def run_options(
    name: str, *, volumes: Iterable[tuple[Path, str, str]] = (), env: dict[str, str] | None = None
) -> list[str]:
    """`podman run` options: no network (nothing in the image may need one), the caller's ulimits."""
    options = ["--name", name, "--network", "none", *ulimit_options()]
    for host, inside, mode in volumes:
        options += ["--volume", f"{host}:{inside}:{mode}"]
    for key, value in (env or {}).items():
        options += ["--env", f"{key}={value}"]
    return options


def run_in_image(
    tag: str,
    command: Sequence[str],
    *,
    timeout: float = 300,
    log_path: Path | None = None,
    volumes: Iterable[tuple[Path, str, str]] = (),
    env: dict[str, str] | None = None,
    entrypoint_user: str | None = None,
) -> subprocess.CompletedProcess:
    """`podman run --rm` a command in the image (as its own user unless `entrypoint_user`), removed however it ends."""
    name = container_name()
    user = ["--user", entrypoint_user] if entrypoint_user else []
    args = [*PODMAN, "run", "--rm", *run_options(name, volumes=volumes, env=env), *user, tag, *command]
    try:
        return run_command(args, dict(os.environ), timeout, log_path=log_path)
    finally:
        podman("rm", "--force", "--ignore", name, check=False)


def image_config(tag: str) -> dict:
    return json.loads(podman("image", "inspect", tag).stdout)[0]


def layer_dirs(tag: str) -> list[Path]:
    """The overlay folders of every layer of the image (the files each layer adds or changes)."""
    data = image_config(tag)["GraphDriver"]["Data"]
    dirs = [data["UpperDir"], *filter(None, data.get("LowerDir", "").split(":"))]
    return [Path(d) for d in dirs]


def files_in_layers(tag: str, names: set[str], contents: Sequence[bytes], own_files: Iterable[str] = ()) -> list[Path]:
    """Files in any layer named one of `names`, or whose bytes equal one of `contents` (compared by size first);
    `own_files` (paths in the image, e.g. its own CA bundle) are exempt from the comparison of bytes."""
    sizes = {len(content) for content in contents}
    exempt = {path.strip("/") for path in own_files}
    found = []
    for layer in layer_dirs(tag):
        for folder, _, files in os.walk(layer):
            for name in files:
                path = Path(folder, name)
                if name in names:
                    found.append(path)
                    continue
                try:
                    if path.is_symlink() or path.stat().st_size not in sizes:
                        continue
                    if str(path.relative_to(layer)) not in exempt and path.read_bytes() in contents:
                        found.append(path)
                except OSError:
                    continue
    return found
