"""Asset jobs, schedules and sensors."""

import dagster as dg

from assets.partitions import RECIPE_PARTITIONS

data_job = dg.define_asset_job(
    "data",
    selection=dg.AssetSelection.groups("data"),
    partitions_def=RECIPE_PARTITIONS,
    description="Tokenizer and the five data mixtures of one recipe.",
)

JOBS = [data_job]
