"""Training entrypoints run on compute nodes under `accelerate launch -m doge_dagster.training STAGE`.

Dagster-free: only `dagster_pipes` is imported, and only on global rank 0.
"""
