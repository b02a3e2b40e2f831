"""deploy/dagster.yaml, the team instance: checked with Dagster's own instance schema, without a database.

The file is validated by Dagster's instance schema (which includes the PostgreSQL storage's config), its storage is
checked to point at dagster-postgres through a driver that is installed, and every other setting is loaded into a
real `DagsterInstance` with the storage swapped for SQLite. Running it for real, on a PostgreSQL server with
`dagster-daemon` and `dagster-webserver`, is `test_team_deployment.py` (see README.md, "Deploying for a team").
"""

from __future__ import annotations

import os
import shutil

import dagster as dg
import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config
from dagster._core.instance.ref import InstanceRef
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager
from helpers import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy" / "dagster.yaml"
README = PROJECT_ROOT / "README.md"
PG_ENV = {
    "hostname": "DAGSTER_PG_HOST",
    "port": "DAGSTER_PG_PORT",
    "username": "DAGSTER_PG_USER",
    "password": "DAGSTER_PG_PASSWORD",
    "db_name": "DAGSTER_PG_DB",
}
COMPUTE_LOGS_ENV = "DAGSTER_COMPUTE_LOGS_DIR"
# The driver named in the URL: SQLAlchemy 2.1 reads a bare `postgresql://` as psycopg 3, which dagster-postgres
# does not install (it installs psycopg2-binary).
PG_SCHEME = "postgresql+psycopg2"


def deploy_config() -> dict:
    return yaml.safe_load(DEPLOY.read_text())


def leaves(config, path=()):
    """(path, value) of every scalar in a nested mapping."""
    if isinstance(config, dict):
        for key, value in config.items():
            yield from leaves(value, (*path, key))
    else:
        yield path, config


@pytest.fixture
def no_deploy_env(monkeypatch):
    for name in (*PG_ENV.values(), COMPUTE_LOGS_ENV):
        monkeypatch.delenv(name, raising=False)


def test_the_file_passes_dagster_s_instance_schema(tmp_path, no_deploy_env):
    """The whole file, PostgreSQL storage included, against the schema `dagster-daemon` and the webserver load."""
    shutil.copy(DEPLOY, tmp_path / "dagster.yaml")
    config, custom_instance_class = dagster_instance_config(str(tmp_path))
    assert custom_instance_class is None
    assert set(config) >= {"storage", "run_coordinator", "run_monitoring", "run_retries", "concurrency", "compute_logs"}

    ref = InstanceRef.from_dir(str(tmp_path))
    assert (ref.storage_data.module_name, ref.storage_data.class_name) == ("dagster_postgres", "DagsterPostgresStorage")
    storages = (ref.run_storage_data, ref.event_storage_data, ref.schedule_storage_data)
    assert [data.class_name for data in storages] == [
        "PostgresRunStorage",
        "PostgresEventLogStorage",
        "PostgresScheduleStorage",
    ]
    assert isinstance(ref.run_coordinator, QueuedRunCoordinator)


def test_credentials_and_hosts_come_only_from_the_environment():
    postgres_db = dict(deploy_config()["storage"]["postgres"]["postgres_db"])
    assert postgres_db.pop("scheme") == PG_SCHEME
    assert postgres_db == {field: {"env": name} for field, name in PG_ENV.items()}
    assert "postgres_url" not in deploy_config()["storage"]["postgres"], "a URL would carry the password"
    for path, value in leaves(deploy_config()):
        if any(part in {"password", "username", "hostname", "postgres_url"} for part in path):
            assert path[-1] == "env", f"{'.'.join(path)} is written in the file"


def test_the_storage_url_names_an_installed_driver(monkeypatch):
    """The URL dagster-postgres builds from the file loads a database driver that is installed (no server needed)."""
    import sqlalchemy
    from dagster_postgres.utils import pg_url_from_config

    for field, name in PG_ENV.items():
        monkeypatch.setenv(name, "5432" if field == "port" else f"test-{field}")
    postgres = deploy_config()["storage"]["postgres"]
    resolved = {
        "postgres_db": {
            field: (os.environ[value["env"]] if isinstance(value, dict) else value)
            for field, value in postgres["postgres_db"].items()
        }
    }
    url = sqlalchemy.engine.make_url(pg_url_from_config(resolved))
    assert url.drivername == PG_SCHEME
    assert url.get_dialect().import_dbapi().__name__ == "psycopg2"


def test_the_readme_s_production_settings_are_kept():
    """Every setting of README.md's "Production instance settings" block, with the same value."""
    block = README.read_text().split("## Production instance settings", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    production = dict(leaves(yaml.safe_load(block)))
    deploy = dict(leaves(deploy_config()))
    assert production and {path: deploy.get(path) for path in production} == production


def test_the_settings_load_into_an_instance(tmp_path, monkeypatch):
    """Everything but the storage, loaded by Dagster as the daemon would (storage swapped for SQLite here)."""
    config = deploy_config()
    config["storage"] = {"sqlite": {"base_dir": str(tmp_path / "storage")}}
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv(COMPUTE_LOGS_ENV, str(tmp_path / "compute-logs"))

    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0, "a killed run frees its slot"
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.default_pool_limit == 1, "one step of the gpu pool at a time"
        assert concurrency.run_queue_config.max_concurrent_runs == 8
        assert isinstance(instance.compute_log_manager, LocalComputeLogManager)
        assert instance.compute_log_manager._base_dir == str(tmp_path / "compute-logs")
        assert not instance.telemetry_enabled


def test_the_gpu_pool_is_the_only_pool():
    """`pools.default_limit` is the limit of the `gpu` pool only while no other pool exists."""
    from doge_dagster.definitions import defs

    graph = defs.resolve_asset_graph()
    pools = set().union(*(graph.get(key).pools or set() for key in graph.get_all_asset_keys()))
    assert pools == {"gpu"}


def test_the_readme_names_every_variable_the_file_reads():
    section = README.read_text().split("### Deploying for a team", 1)[1].split("\n## ", 1)[0]
    variables = [value for path, value in leaves(deploy_config()) if path[-1] == "env"]
    assert sorted(variables) == sorted([*PG_ENV.values(), COMPUTE_LOGS_ENV])
    assert [name for name in variables if f"`{name}`" not in section] == []
