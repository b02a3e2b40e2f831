"""The README's copy-paste snippets stay valid."""

from pathlib import Path

import dagster as dg

README = Path(__file__).resolve().parents[1] / "README.md"


def yaml_block_after(heading: str) -> str:
    """The first ```yaml block after a heading."""
    return README.read_text().split(heading, 1)[1].split("```yaml", 1)[1].split("```", 1)[0]


def test_production_dagster_yaml_loads(tmp_path, monkeypatch):
    (tmp_path / "dagster.yaml").write_text(yaml_block_after("## Production instance settings"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    instance = dg.DagsterInstance.get()
    assert instance.run_monitoring_enabled
    assert instance.run_retries_max_retries == 2
    concurrency = instance.get_concurrency_config()
    assert concurrency.pool_config.default_pool_limit == 1, "one GPU stage at a time per pool"
    assert concurrency.run_queue_config.max_concurrent_runs == 8


def test_gpu_stages_share_the_gpu_pool():
    from doge_dagster.definitions import defs
    from doge_dagster.stages import CHAIN

    graph = defs.resolve_asset_graph()
    gpu_assets = {record.asset for record in (*CHAIN.stages, *CHAIN.reports)}
    pools = {key.to_user_string(): graph.get(key).pools for key in graph.get_all_asset_keys()}
    assert all(pools[asset] == {"gpu"} for asset in gpu_assets), {asset: pools[asset] for asset in gpu_assets}
    assert not any(pools[asset] for asset in set(pools) - gpu_assets), "data assets need no GPU slot"


def test_the_critical_path_goes_first_when_steps_queue():
    from doge_dagster.definitions import defs
    from doge_dagster.stages import CHAIN

    assets = {spec.key.to_user_string(): node for node in defs.assets for spec in getattr(node, "specs", ())}
    first = {name for name, node in assets.items() if int(node.op.tags.get("dagster/priority", 0)) > 0}
    assert first == {"pretrain_mixture", *(stage.asset for stage in CHAIN.stages)}, first


def test_recipe_launch_snippet_validates():
    import yaml

    from doge_dagster.recipes import LaunchRecipe

    snippet = yaml.safe_load(yaml_block_after("## Compute: local, Slurm, Kubernetes"))
    launch = LaunchRecipe.model_validate(snippet["stages"]["pretrain"]["launch"])
    assert launch.processes == 16


def test_the_stage_table_lists_the_chains_stages_in_order():
    from doge_dagster.stages import CHAIN

    table = README.read_text().split("## Training stages", 1)[1].split("\n\n", 2)[1]
    assets = [line.split("|")[1].strip().strip("`") for line in table.splitlines()[2:]]
    assert assets == [stage.asset for stage in CHAIN.stages]


def test_the_seed_call_snippet_runs_on_generated_data(tmp_path):
    """The README's example of the seed's `mix_datasets_by_radio` call runs as printed and saves a DatasetDict."""
    import subprocess
    import sys

    from datasets import load_from_disk

    section = README.read_text().split("**The seed's call runs as written**", 1)[1]
    script = section.split("```bash", 1)[1].split("```", 1)[0].replace(".venv/bin/python", sys.executable)
    completed = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    splits = load_from_disk(str(tmp_path / "pretrain_dataset"))
    assert set(splits) == {"train", "test"} and len(splits["train"]) > 10 * len(splits["test"]) > 0
    assert (tmp_path / "cache" / "mixtures").is_dir()
