"""Dagster assets of the SmallDoge pipeline, one module per stage group."""
