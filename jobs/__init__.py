"""Asset jobs, the retraining schedule and the sensors of doge-dagster (built per recipes folder and chain)."""

from jobs.automation import build_automation
from jobs.pipelines import build_jobs

__all__ = ["build_automation", "build_jobs"]
