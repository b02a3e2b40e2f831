"""The CI guard against silent skips (tests/forbid_skips.py), run on a throwaway test file with pytester."""

from __future__ import annotations

import pytest

SKIPPING_TEST = """
import pytest

def test_passes():
    pass

def test_needs_a_service():
    pytest.skip("the service is not installed")
"""


def run_with_the_plugin(pytester: pytest.Pytester, monkeypatch, forbid: str | None):
    if forbid is None:
        monkeypatch.delenv("DOGE_TESTS_FORBID_SKIPS", raising=False)
    else:
        monkeypatch.setenv("DOGE_TESTS_FORBID_SKIPS", forbid)
    pytester.makepyfile(test_skipping=SKIPPING_TEST)
    return pytester.runpytest_inprocess("-p", "forbid_skips", "-p", "no:cacheprovider")


def test_a_skip_fails_the_run_in_ci(pytester, monkeypatch):
    result = run_with_the_plugin(pytester, monkeypatch, "1")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["*SKIPPED in CI: test_skipping.py::test_needs_a_service: *the service is not installed*"]
    )


def test_a_skip_is_only_a_skip_elsewhere(pytester, monkeypatch):
    result = run_with_the_plugin(pytester, monkeypatch, None)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=1)
