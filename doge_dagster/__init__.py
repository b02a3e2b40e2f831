"""doge-dagster: the SmallDoge training pipeline for Doge language models as a Dagster project."""
