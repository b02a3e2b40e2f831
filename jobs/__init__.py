"""Asset jobs, the retraining schedule and the sensors of doge-dagster."""

from jobs.automation import evaluate_new_models, retrain_schedule, run_failure_summary, source_data_sensor
from jobs.pipelines import JOBS

SCHEDULES = [retrain_schedule]
SENSORS = [source_data_sensor, run_failure_summary, evaluate_new_models]

__all__ = ["JOBS", "SCHEDULES", "SENSORS"]
