"""pytest plugin: with DOGE_TESTS_FORBID_SKIPS=1 (set by `.ci/run`) a skipped test fails the run.

The Slurm, S3 and browser tests skip with an install hint where their service is missing, which is right on
a laptop and wrong in CI: there a missing `slurm-wlm` or `chromium` must not pass silently.
"""

from __future__ import annotations

import os

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Turn a passing run with skips into a failing one, naming the skipped tests and why."""
    if os.environ.get("DOGE_TESTS_FORBID_SKIPS") != "1" or exitstatus != pytest.ExitCode.OK:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            reporter.write_line(f"SKIPPED in CI: {report.nodeid}: {reason}", red=True)
        reporter.write_line(f"{len(skipped)} skipped test(s): DOGE_TESTS_FORBID_SKIPS=1 makes that a failure", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
