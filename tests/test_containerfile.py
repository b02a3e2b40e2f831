"""The Containerfile installs what .ci/run and the README's quick start install, the same way; checked without building.

The pip commands are read from all three files and expanded by `sh` (as the build's RUN steps would be) with the
Containerfile's ARG defaults, or with the build arguments of the test build, then compared word for word.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

from helpers import PROJECT_ROOT
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

CONTAINERFILE = PROJECT_ROOT / "Containerfile"
CONTAINERIGNORE = PROJECT_ROOT / ".containerignore"
CI_RUN = PROJECT_ROOT / ".ci" / "run"
README = PROJECT_ROOT / "README.md"
PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())

# .ci/run's apt packages that serve only the tests: the real Slurm, the web UI test's browser, the team
# deployment test's PostgreSQL, and what builds and runs this image in tests/test_container_image.py.
TEST_SERVICE_PACKAGES = {
    "slurmctld", "slurmd", "slurm-client", "munge", "chromium", "postgresql", "podman", "runc", "debootstrap",
}  # fmt: skip
# pip options that change where or how quietly pip installs, not what it installs.
PIP_OPTIONS_WITH_VALUE = {"--index-url", "-i", "--extra-index-url"}
PIP_OPTIONS = {"-q", "--quiet", "--no-cache-dir"}
SECRET_LOOKING = re.compile(
    r"AWS_|HF_TOKEN|TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL|ACCESS_KEY|API_KEY|PRIVATE_KEY|key=|://[^/\s]*@",
    re.IGNORECASE,
)


@dataclass
class Instruction:
    keyword: str
    flags: list[str]  # leading --flags (RUN --mount=..., COPY --chown=...)
    args: str


def instructions(text: str) -> list[Instruction]:
    """Dockerfile instructions: comment lines dropped (also inside continuations), `\\` lines joined."""
    parsed, current = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#") or (not line.strip() and not current):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + "\n"
            continue
        current += line
        keyword, _, rest = current.strip().partition(" ")
        flags = []
        while rest.lstrip().startswith("--"):
            flag, _, rest = rest.lstrip().partition(" ")
            flags.append(flag)
        parsed.append(Instruction(keyword.upper(), flags, rest.strip()))
        current = ""
    assert not current, "the Containerfile ends inside a continuation"
    return parsed


INSTRUCTIONS = instructions(CONTAINERFILE.read_text())


def arg_defaults() -> dict[str, str]:
    defaults = {}
    for instruction in INSTRUCTIONS:
        if instruction.keyword == "ARG":
            name, _, default = instruction.args.partition("=")
            defaults[name] = default
    return defaults


def env_values() -> dict[str, str]:
    values = {}
    for instruction in INSTRUCTIONS:
        if instruction.keyword == "ENV":
            for word in shlex.split(instruction.args):
                name, _, value = word.partition("=")
                values[name] = value
    return values


def index(keyword: str, predicate=lambda instruction: True) -> list[int]:
    return [
        i for i, instruction in enumerate(INSTRUCTIONS) if instruction.keyword == keyword and predicate(instruction)
    ]


def expand(words: str, env: dict[str, str]) -> list[str]:
    """The argv `sh` makes of `words` under `env` (parameter expansion, quotes and word splitting as in a RUN)."""
    completed = subprocess.run(
        ["sh", "-c", f"for word in {words}; do printf '%s\\n' \"$word\"; done"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return completed.stdout.splitlines()


def containerfile_pip_installs(build_args: dict[str, str]) -> list[list[str]]:
    """Every `pip install` of the Containerfile's RUN steps, expanded with the ARG defaults and `build_args`
    (for the torch step: the branch without an index URL when TORCH_INDEX_URL is empty, the other one otherwise)."""
    env = {**arg_defaults(), **build_args}
    installs = []
    for instruction in INSTRUCTIONS:
        if instruction.keyword != "RUN":
            continue
        commands = [re.sub(r"^(then|else)\s+", "", c.strip()) for c in re.split(r";|&&|\n", instruction.args)]
        commands = [c for c in commands if re.match(r"\S*/pip install ", c)]
        if len(commands) == 2:  # if [ -n "$TORCH_INDEX_URL" ]; then ...; else ...; fi
            assert "--index-url" in commands[0] and "--index-url" not in commands[1], commands
            commands = [commands[0] if env.get("TORCH_INDEX_URL") else commands[1]]
        installs += [expand(c.split(" install ", 1)[1], env) for c in commands]
    return installs


def script_pip_installs(commands: list[str]) -> list[list[str]]:
    """The `pip install` commands of a shell script's lines (comments dropped, no variables involved)."""
    installs = []
    for command in (c for c in commands if "/pip install " in c):
        words = shlex.split(command, comments=True)
        if len(words) > 2 and words[0].endswith("/pip") and words[1] == "install":
            installs.append(words[2:])
    return installs


def what_is_installed(argv: list[str]) -> list[str]:
    """The install arguments that say what is installed (`-e` and its target, requirements), options dropped."""
    kept, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word in PIP_OPTIONS_WITH_VALUE:
            skip = True
        elif word not in PIP_OPTIONS:
            assert not word.startswith("-") or word == "-e", f"unexpected pip option {word} in {argv}"
            kept.append(word)
    return kept


def ci_installs() -> list[list[str]]:
    return [what_is_installed(argv) for argv in script_pip_installs(CI_RUN.read_text().splitlines())]


def quick_start_installs() -> list[list[str]]:
    block = README.read_text().split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [what_is_installed(argv) for argv in script_pip_installs(block.split("&&"))]


def image_installs(**build_args: str) -> list[list[str]]:
    return [what_is_installed(argv) for argv in containerfile_pip_installs(build_args)]


def extras_of(target: str) -> set[str]:
    """`.[a,b]` -> {"a", "b"}; `.` -> set()."""
    extras = re.fullmatch(r"\.(?:\[(.*)\])?", target)
    assert extras, target
    return {extra.strip() for extra in (extras.group(1) or "").split(",") if extra.strip()}


# -- the install steps ---------------------------------------------------------------------------------------
def test_the_install_steps_are_read_from_ci_and_the_quick_start():
    """The references the image is compared with: torch pinned alone first, then the project, editable."""
    ci, quick_start = ci_installs(), quick_start_installs()
    assert len(ci) == 2 and ci[0][0].startswith("torch==") and ci[1][0] == "-e", ci
    assert len(quick_start) == 2 and quick_start[0][0].startswith("torch==") and quick_start[1] == ["-e", "."], (
        quick_start
    )
    assert ci[0] == quick_start[0], "CI and the quick start pin the same torch"


def test_the_torch_pin_is_ci_s_and_within_the_project_s_range():
    ci_torch = ci_installs()[0]
    assert arg_defaults()["TORCH_VERSION"] == ci_torch[0].removeprefix("torch==")
    torch_range = next(Requirement(r) for r in PYPROJECT["project"]["dependencies"] if Requirement(r).name == "torch")
    assert Version(arg_defaults()["TORCH_VERSION"]) in torch_range.specifier, "the project's range then adds nothing"


def test_the_default_image_installs_what_the_quick_start_installs():
    """Default build arguments: torch alone, then `pip install -e .` (no test-only extras), in that order."""
    assert image_installs() == quick_start_installs()
    assert arg_defaults()["EXTRAS"] == "", "the deployed image carries no extras (the only one, test, is test-only)"


def test_the_test_build_installs_what_ci_installs():
    """With the test build's arguments (`EXTRAS=test`, a CPU wheel index) the same steps as .ci/run, word for word."""
    ci = ci_installs()
    extras = ",".join(sorted(extras_of(ci[1][1])))
    assert extras and set(extras.split(",")) <= set(PYPROJECT["project"]["optional-dependencies"])
    cpu = "https://download.pytorch.org/whl/cpu"
    assert image_installs(EXTRAS=extras, TORCH_INDEX_URL=cpu) == ci
    torch_step = containerfile_pip_installs({"TORCH_INDEX_URL": cpu})[0]
    assert torch_step[torch_step.index("--index-url") + 1] == cpu, "TORCH_INDEX_URL picks the torch build"


def test_pip_is_the_venv_s_own_and_gets_index_settings_only_as_build_secrets():
    """As in .ci/run: a fresh venv's pip, not upgraded; the machine's pip settings and CA bundle mounted per step."""
    assert index("RUN", lambda i: re.search(r"python3 -m venv /opt/venv\b", i.args)), "the venv the pip steps use"
    pip_steps = index("RUN", lambda i: "pip install" in i.args)
    assert len(pip_steps) == 2, "torch, then the project"
    for instruction in (INSTRUCTIONS[i] for i in pip_steps):
        assert set(re.findall(r"\S*pip install", instruction.args)) == {"/opt/venv/bin/pip install"}, instruction
        assert set(instruction.flags) >= {"--mount=type=secret,id=pip_conf", "--mount=type=secret,id=pip_cert"}
    for argv in containerfile_pip_installs({}):
        assert not {word.split("=")[0].split("<")[0].split(">")[0] for word in argv} & {"pip", "-U", "--upgrade"}, argv
    assert "PIP_CONFIG_FILE" not in env_values() and "PIP_CERT" not in env_values()


def test_the_runtime_packages_of_ci_are_in_the_image():
    """.ci/run's apt packages, less the tests' own (Slurm, Chromium, PostgreSQL, podman...), e.g. g++ for DeepSpeed."""
    ci_text = CI_RUN.read_text().replace("\\\n", " ")
    ci_packages = {w for w in ci_text.split("apt-get install", 1)[1].split(">", 1)[0].split() if not w.startswith("-")}
    assert TEST_SERVICE_PACKAGES <= ci_packages, "the list of test-only packages is out of date"
    (apt,) = [INSTRUCTIONS[i].args for i in index("RUN", lambda i: "apt-get install" in i.args)]
    image_packages = {w for w in apt.split("apt-get install", 1)[1].split("&&", 1)[0].split() if not w.startswith("-")}
    assert image_packages == ci_packages - TEST_SERVICE_PACKAGES


def test_the_base_image_s_python_is_one_the_project_supports():
    base = arg_defaults()["BASE_IMAGE"]
    python = re.search(r"python:(\d+\.\d+)", base)
    assert python, base
    assert Version(python.group(1)) in SpecifierSet(PYPROJECT["project"]["requires-python"])


# -- layout, user, command -----------------------------------------------------------------------------------
def test_the_project_lands_in_app_before_it_is_installed():
    from resources.kubernetes import KubernetesSettings

    app = KubernetesSettings.model_fields["project_dir"].default
    assert app == "/app"
    (workdir,) = index("WORKDIR")
    assert INSTRUCTIONS[workdir].args == app
    (copy,) = index("COPY")
    source, destination = INSTRUCTIONS[copy].args.split()
    assert source == "." and destination in {app, ".", "./"} and workdir < copy
    (project_install,) = index("RUN", lambda i: "pip install" in i.args and " -e " in i.args)
    assert copy < project_install


def test_a_non_root_user_runs_the_command():
    users = index("USER")
    (cmd,) = index("CMD")
    assert users and users[-1] < cmd == len(INSTRUCTIONS) - 1
    user = INSTRUCTIONS[users[-1]].args.split(":")[0]
    assert user not in {"root", "0"}
    assert index("RUN", lambda i: re.search(rf"useradd\b.*\b{user}$", i.args.split("&&")[0].strip())), user


def test_the_command_serves_the_code_location():
    import click
    from dagster._cli.code_server import start_command

    argv = json.loads(INSTRUCTIONS[index("CMD")[0]].args)
    assert argv[:3] == ["dagster", "code-server", "start"]
    context = start_command.make_context("start", argv[3:], resilient_parsing=False)  # the CLI accepts every option
    assert isinstance(context, click.Context)
    dagster_settings = PYPROJECT["tool"]["dagster"]
    assert context.params["module_name"] == dagster_settings["module_name"] == "doge_dagster.definitions"
    assert context.params["location_name"] == dagster_settings["code_location_name"]
    assert context.params["host"] == "0.0.0.0"
    (expose,) = index("EXPOSE")
    assert int(INSTRUCTIONS[expose].args) == context.params["port"]


# -- no credentials ------------------------------------------------------------------------------------------
def test_no_secret_looking_value_is_baked_in():
    from resources.kubernetes import looks_secret

    settings = {**arg_defaults(), **env_values()}
    assert {"TORCH_VERSION", "TORCH_INDEX_URL", "EXTRAS", "DAGSTER_HOME", "PYTHONUNBUFFERED"} <= set(settings)
    for name, value in settings.items():
        assert not looks_secret(name), name
        assert not SECRET_LOOKING.search(f"{name}={value}"), f"{name}={value}"
    for i in index("COPY") + index("ADD"):
        assert not re.search(r"pip\.conf|netrc|\.pem|\.env|credentials", INSTRUCTIONS[i].args), INSTRUCTIONS[i]
    assert not index("ADD"), "ADD can fetch URLs; the image is built from the context only"


def test_the_secret_checks_catch_a_credential():
    """The patterns above are not vacuous."""
    for assignment in (
        "AWS_SECRET_ACCESS_KEY=x",
        "HF_TOKEN=hf_x",
        "DB_PASSWORD=x",
        "S3_KEY=abc",
        "URL=https://u:p@host/simple",
    ):
        assert SECRET_LOOKING.search(assignment), assignment


# -- the build context ---------------------------------------------------------------------------------------
def ignore_patterns(path: Path) -> set[str]:
    """Patterns, normalized: leading `/` and `**/`, trailing `/` dropped (both files mean the same folders)."""
    patterns = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.add(line.removeprefix("/").removeprefix("**/").removesuffix("/"))
    return patterns


def test_the_build_context_leaves_out_local_state():
    from resources.artifact_store import ArtifactStoreResource

    excluded = ignore_patterns(CONTAINERIGNORE)
    store = ArtifactStoreResource.model_fields["root"].default
    assert {".venv", ".git", store, ".dagster_home", "test-artifacts", "__pycache__"} <= excluded
    assert store == ".doge"
    missing = ignore_patterns(PROJECT_ROOT / ".gitignore") - excluded
    assert not missing, f"ignored by git but sent to the image build: {sorted(missing)}"
    assert {".env", "*.pem", "pip.conf"} <= excluded, "credential files never enter the build context"
