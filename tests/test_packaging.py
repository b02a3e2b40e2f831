"""Every extra the project asks for is one its package provides, spelled exactly as that package spells it.

The README's quick start installs with a fresh venv's own pip (23.x), which matches extras literally and only
warns when one does not exist: `lighteval[extended_tasks]` once silently left out `emoji`, and the first
evaluation failed on import. Newer pip normalizes names, so this check reads the installed metadata.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, metadata

import pytest
from helpers import PROJECT_ROOT
from packaging.requirements import Requirement


def requirements_with_extras() -> list[Requirement]:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *(r for group in project["optional-dependencies"].values() for r in group)]
    return [requirement for requirement in map(Requirement, declared) if requirement.extras]


@pytest.mark.parametrize("requirement", requirements_with_extras(), ids=str)
def test_each_requested_extra_is_provided_under_that_exact_name(requirement):
    try:
        provided = set(metadata(requirement.name).get_all("Provides-Extra") or [])
    except PackageNotFoundError:
        pytest.fail(f"{requirement.name} is declared in pyproject.toml but not installed")
    missing = sorted(requirement.extras - provided)
    assert not missing, f"{requirement}: {requirement.name} provides {sorted(provided)}, not {missing}"


def test_there_are_extras_to_check():
    assert any(requirement.name == "lighteval" for requirement in requirements_with_extras())
