"""Submitting a run through the GraphQL API of a running `dagster dev` (`dagster_graphql.DagsterGraphQLClient`)."""

from __future__ import annotations

import time

import pytest
from dagster_dev import start_dagster_dev
from helpers import DATA_ASSETS, published_versions


@pytest.mark.slow
def test_submit_the_data_job_for_tiny_and_poll_it_to_success(tmp_path):
    with start_dagster_dev(tmp_path / "dev") as server:
        client = server.client()
        run_id = client.submit_job_execution("data", tags={"dagster/partition": "tiny"})
        deadline = time.monotonic() + 600
        statuses = []
        while time.monotonic() < deadline:
            status = client.get_run_status(run_id).value
            if not statuses or statuses[-1] != status:
                statuses.append(status)
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            time.sleep(2)
        assert statuses[-1] == "SUCCESS", (
            f"run {run_id}: {statuses}\n{server.run_failure_text(run_id)}\n{server.log_tail()}"
        )
        (run,) = server.runs({"dagster/partition": "tiny"})
        assert run["runId"] == run_id and run["jobName"] == "data"
        for asset in DATA_ASSETS:  # every data asset built into this server's store
            assert len(published_versions(server.artifact_root, asset)) == 1, asset
        assert not published_versions(server.artifact_root, "doge_base"), "the data job trains nothing"
