"""Launching a stage or a report as its own process: the launch spec, the `accelerate launch` command, and
reporting back to Dagster through Pipes. Shared by training and evaluation alike."""
