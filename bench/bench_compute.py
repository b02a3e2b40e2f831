"""Added latency of the Slurm backend and of the S3 artifact store, measured in one run on this machine.

  python bench/bench_compute.py [--repeats 2] [--only slurm|s3] [--record]

1. Slurm: doge_base[tiny] (pretraining cut to 60 steps) materialized with the local backend and with the
   Slurm backend on a single-node slurm-wlm cluster started here (the tests' `tests/slurm_cluster.py`:
   needs root, munge and slurm-wlm), interleaved. From the run's event log: seconds from the step's start
   to the trainer's first progress line (for Slurm: sbatch, scheduling, job start, accelerate, model
   build), and the whole step.
2. S3: the whole tiny graph (`tokenizer*`) with the store on a moto S3 server on 127.0.0.1 against the
   same graph on a local folder.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import yaml
from measure import ROOT, machine, materialize, report, step_timings

SHORT_PRETRAIN = {"max_steps": 60, "warmup_steps": 5, "logging_steps": 5, "save_steps": 60,
                  "lr_scheduler_kwargs": {"num_decay_steps": 10, "min_lr_ratio": 0.0}}  # fmt: skip
S3_REGION = "eu-west-1"


def short_recipes(folder: Path) -> Path:
    """A recipes folder whose tiny pretraining is cut to SHORT_PRETRAIN."""
    folder.mkdir(parents=True)
    raw = yaml.safe_load((ROOT / "recipes" / "tiny.yaml").read_text())
    raw["stages"]["pretrain"]["training"].update(SHORT_PRETRAIN)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder


def bench_slurm(work: Path, repeats: int) -> list[str]:
    """Rows: local vs Slurm doge_base[tiny], time to the first training step and the whole step."""
    sys.path.insert(0, str(ROOT / "tests"))
    from slurm_cluster import start_cluster, stop_cluster

    cluster = start_cluster()
    try:
        store, recipes = work / "slurm-store", short_recipes(work / "slurm-recipes")
        base_env = {**os.environ, **cluster.env, "DOGE_ARTIFACT_ROOT": str(store), "DOGE_RECIPES_DIR": str(recipes)}
        homes = {backend: work / f"home-{backend}" for backend in ("local", "slurm", "data")}
        for home in homes.values():
            home.mkdir()
        materialize("tokenizer,pretrain_mixture", {**base_env, "DAGSTER_HOME": str(homes["data"])})
        timings: dict[str, list] = {"local": [], "slurm": []}
        for _ in range(repeats):
            for backend in ("local", "slurm"):
                shutil.rmtree(store / "doge_base", ignore_errors=True)  # published and .work: a fresh start
                env = {**base_env, "DAGSTER_HOME": str(homes[backend]), "DOGE_COMPUTE_BACKEND": backend,
                       "DOGE_SLURM_SHARED_DIR": str(cluster.shared_dir)}  # fmt: skip
                materialize("doge_base", env)
                timings[backend].append(step_timings(homes[backend])["doge_base"])
    finally:
        stop_cluster(cluster)
    first = {backend: statistics.median(t.first_progress for t in runs) for backend, runs in timings.items()}
    whole = {backend: statistics.median(t.whole for t in runs) for backend, runs in timings.items()}
    steps = SHORT_PRETRAIN["max_steps"]
    return [
        f"| doge_base[tiny] ({steps} steps), local: step start -> first training step | {first['local']:.1f} | |",
        f"| same, Slurm (sbatch, schedule, job start) -> first training step | {first['slurm']:.1f} | {first['slurm'] - first['local']:+.1f} s |",
        f"| doge_base[tiny] ({steps} steps) whole step, local | {whole['local']:.1f} | |",
        f"| same, Slurm | {whole['slurm']:.1f} | {whole['slurm'] - whole['local']:+.1f} s ({whole['slurm'] / whole['local']:.2f}x) |",
    ]


def bench_s3(work: Path) -> list[str]:
    """Rows: the whole tiny graph with the store on a local folder and on a moto S3 server."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        credentials = {"DOGE_S3_ACCESS_KEY_ID": "bench-key", "DOGE_S3_SECRET_ACCESS_KEY": "bench-secret"}
        client = boto3.client("s3", endpoint_url=url, region_name=S3_REGION, aws_access_key_id="bench-key",
                              aws_secret_access_key="bench-secret")  # fmt: skip
        client.create_bucket(Bucket="doge-bench", CreateBucketConfiguration={"LocationConstraint": S3_REGION})
        (work / "home-local-chain").mkdir()
        (work / "home-s3-chain").mkdir()
        local_s = materialize("tokenizer*", {**os.environ, "DAGSTER_HOME": str(work / "home-local-chain"),
                                            "DOGE_ARTIFACT_ROOT": str(work / "chain-store")})  # fmt: skip
        s3_s = materialize("tokenizer*", {**os.environ, **credentials, "DAGSTER_HOME": str(work / "home-s3-chain"),
                                         "DOGE_ARTIFACT_ROOT": "s3://doge-bench/chain", "DOGE_S3_ENDPOINT_URL": url,
                                         "DOGE_S3_REGION": S3_REGION, "DOGE_SCRATCH_DIR": str(work / "scratch")})  # fmt: skip
    finally:
        server.stop()
    return [
        f"| whole tiny graph (`tokenizer*`), local store | {local_s:.1f} | |",
        f"| same, store on S3 (moto on 127.0.0.1) | {s3_s:.1f} | {s3_s - local_s:+.1f} s ({s3_s / local_s:.2f}x) |",
    ]


def main() -> None:
    """Run the measurements and print (and optionally record) a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved local/Slurm rounds")
    parser.add_argument("--only", choices=("slurm", "s3"))
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="doge-bench-compute-"))
    load_start = os.getloadavg()[0]
    rows: list[str] = []
    try:
        if args.only in (None, "slurm"):
            rows += bench_slurm(work, args.repeats)
        if args.only in (None, "s3"):
            rows += bench_s3(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = "\n".join([
        f"### Compute backends and stores, {datetime.date.today()}, {machine()}",
        "",
        f"Slurm rows: medians of {args.repeats} interleaved rounds. "
        + f"1-min load average at start / end: {load_start:.2f} / {os.getloadavg()[0]:.2f}.",
        "",
        "| measurement | seconds | added |",
        "|---|---|---|",
        *rows,
    ])  # fmt: skip
    report(table, args.record)


if __name__ == "__main__":
    main()
