"""Evaluation with lighteval: custom tasks (`tasks`), compatibility fixes (`compat`), the report and its
gates (`report`), and the process the compute resource launches (`runner`, `python -m doge_dagster.evaluation`).

Nothing here imports lighteval at package import: `tasks` and `runner.evaluate` do, inside the process.
"""
