"""The image, built for real: the Containerfile on a Debian bookworm base, then a tiny stage run inside it.

Offline from registries of images: the base comes from debootstrap and this machine's Debian mirror, pip's
packages from this machine's own settings, passed as build secrets (tests/container_image.py says how). What
runs in the image runs without a network, as its non-root user, with the artifact store on a host folder.
`tests/test_containerfile.py` checks the Containerfile's instructions without building.

About 5-6 minutes from nothing on the 2-core machine (debootstrap 40-100 s, the build ~2.5 min, the runs ~1 min).
The images are removed at the end; DOGE_TEST_KEEP_IMAGES=1 keeps them, and a later run then reuses the base and
every build layer before `COPY . /app`.
"""

from __future__ import annotations

import os
import time

import pytest
from container_image import (
    BUILD_MOUNTS,
    INSTALL_HINT,
    KEEP_IMAGES_ENV,
    BuiltImage,
    build_image,
    container_name,
    files_in_layers,
    image_config,
    image_ids,
    make_base_image,
    missing_tools,
    podman,
    remove_images,
    run_in_image,
    run_options,
)
from dagster_dev import ARTIFACTS_DIR
from helpers import _short_stage, published_versions, read_manifest, tail, wait_for, write_tiny_recipe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

TAG = "localhost/doge-dagster:test"
USER_UID = 1000
# the pretraining stage, shortened: the launch and the publication are under test here, not the learning
SHORT_PRETRAIN = _short_stage(
    "pretrain", 8, warmup_steps=1, lr_scheduler_kwargs={"num_decay_steps": 2, "min_lr_ratio": 0.0}
)
STAGE_ASSETS = ("tokenizer", "pretrain_mixture", "doge_base")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> BuiltImage:
    missing = missing_tools()
    if missing:
        pytest.skip(f"cannot build the image here, missing: {', '.join(missing)} ({INSTALL_HINT})")
    work = tmp_path_factory.mktemp("image-build")
    before = image_ids()
    try:
        base, base_seconds = make_base_image(work, ARTIFACTS_DIR / "image-base-debootstrap.log")
        sources, build_seconds = build_image(TAG, base, work, ARTIFACTS_DIR / "image-build.log")
        yield BuiltImage(TAG, base, sources.config_text(), base_seconds, build_seconds, sources.cert)
    finally:
        if os.environ.get(KEEP_IMAGES_ENV) != "1":
            remove_images(image_ids() - before)  # what this run made: the base, the build's layers, the image


def test_the_image_runs_as_its_own_user_with_the_project_at_app(image):
    config = image_config(image.tag)["Config"]
    assert config["User"] == "doge"
    assert not [e for e in config.get("Env", []) if e.startswith("PIP_")], config["Env"]
    script = (
        "id -u; id -g; pwd; "
        "python -c 'import doge_dagster, torch; print(doge_dagster.__file__); print(torch.__version__)'; "
        "ls -A /app; touch /app/.doge/w /app/.dagster_home/w ~/w /tmp/w && echo writable; "
        "touch /app/pyproject.toml 2>/dev/null || echo code-read-only"
    )
    result = run_in_image(image.tag, ["sh", "-c", script], timeout=180)
    assert result.returncode == 0, result.stdout
    uid, gid, cwd, module, torch_version, *listing = result.stdout.splitlines()
    assert (uid, gid, cwd) == (str(USER_UID), str(USER_UID), "/app")
    assert module == "/app/doge_dagster/__init__.py", "installed editable from /app"
    assert torch_version.startswith("2.13.0")
    entries = set(" ".join(listing).split())
    assert {"pyproject.toml", "doge_dagster", "resources", "recipes", "Containerfile", "workspace.yaml"} <= entries
    assert not entries & {".git", ".venv", "test-artifacts", ".pytest_cache"}, "the .containerignore'd local state"
    assert listing[-2:] == ["writable", "code-read-only"], result.stdout


def test_no_pip_settings_certificate_or_credential_is_in_the_image(image):
    """The pip_conf / pip_cert secrets were mounted for the pip steps only: in no layer, no history, no ENV."""
    contents = [image.pip_conf.encode()]
    if image.cert:
        contents.append(image.cert.read_bytes())
    names = {"pip.conf", "pip_conf", "pip_cert", ".netrc", ".pypirc"}
    # the image's own CA bundle (Debian's ca-certificates) may equal this machine's, byte for byte
    found = files_in_layers(image.tag, names, contents, own_files=["/etc/ssl/certs/ca-certificates.crt"])
    assert not found, f"build secrets left in a layer: {found}"
    history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", image.tag).stdout
    values = {v for line in image.pip_conf.splitlines()[1:] for v in line.split(" = ", 1)[1].split() if len(v) > 6}
    assert not {v for v in values if v in history}, "pip settings in `podman history`"
    assert "/run/secrets/pip_conf" in history, "the pip steps read the secret (history records the path only)"
    script = f"ls /etc/pip.conf ~/.config/pip ~/.pip 2>&1; pip config list; find {BUILD_MOUNTS} -type f -size +0"
    result = run_in_image(image.tag, ["sh", "-c", script], timeout=120)
    assert result.stdout.count("No such file or directory") == 3, result.stdout
    assert not [line for line in result.stdout.splitlines() if "No such file" not in line], result.stdout
    # the build's read-only mounts leave empty mount points behind (buildah), no content
    as_root = run_in_image(image.tag, ["find", "/", "-xdev", "-name", "pip.conf"], entrypoint_user="0", timeout=120)
    assert as_root.returncode == 0 and not as_root.stdout.strip(), as_root.stdout


def test_a_tiny_stage_runs_in_the_image_and_publishes_to_a_host_store(image, tmp_path):
    """`dagster asset materialize` in the image (no network, uid 1000) launches pretraining through accelerate
    and publishes tokenizer, mixture and model to the store mounted from the host, manifests last."""
    store = tmp_path / "store"
    store.mkdir()
    os.chown(store, USER_UID, USER_UID)
    recipes = write_tiny_recipe(tmp_path / "recipes", SHORT_PRETRAIN)
    command = [
        "dagster", "asset", "materialize", "-m", "doge_dagster.definitions",
        "--select", ",".join(STAGE_ASSETS), "--partition", "tiny",
    ]  # fmt: skip
    started = time.monotonic()
    result = run_in_image(
        image.tag,
        command,
        timeout=900,
        log_path=ARTIFACTS_DIR / "image-tiny-stage.log",
        volumes=[(store, "/store", "rw"), (recipes, "/recipes", "ro")],
        env={"DOGE_ARTIFACT_ROOT": "/store", "DOGE_RECIPES_DIR": "/recipes", **OFFLINE},
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, tail(result.stdout)
    assert "RUN_SUCCESS" in result.stdout, tail(result.stdout)
    assert "/opt/venv/bin/python" in result.stdout and "accelerate.commands.launch" in result.stdout
    for asset in STAGE_ASSETS:
        (version,) = published_versions(store, asset)
        manifest = read_manifest(store, asset, version)
        assert manifest, asset
        assert (store / asset / "tiny" / version / "manifest.json").stat().st_uid == USER_UID
    (model,) = published_versions(store, "doge_base")
    model_dir = store / "doge_base" / "tiny" / model
    assert any(p.suffix == ".safetensors" for p in model_dir.rglob("*")), sorted(model_dir.rglob("*"))
    print(f"base {image.base_seconds:.0f}s, build {image.build_seconds:.0f}s, stage {seconds:.0f}s")


def test_the_default_command_serves_the_code_location(image):
    """The image's CMD (`dagster code-server start ... -p 4000`) answers gRPC health checks."""
    name = container_name()
    started = podman("run", "--detach", *run_options(name, env=OFFLINE), image.tag, timeout=120)
    try:

        def healthy():
            check = podman("exec", name, "dagster", "api", "grpc-health-check", "-p", "4000", check=False, timeout=60)
            running = podman("inspect", "--format", "{{.State.Running}}", name, check=False).stdout.strip()
            assert running == "true", podman("logs", name, check=False).stdout[-3000:]
            return check.returncode == 0

        wait_for(healthy, timeout=240, what="the code server in the image", interval=2)
    finally:
        podman("rm", "--force", "--ignore", name, check=False)
    assert started.stdout.strip()
