"""Training progress: a `TrainerCallback` that logs each logging step into the run and keeps the curves."""

from __future__ import annotations

import time

from doge_dagster.launching.reporting import Reporter


def progress_callback(reporter: Reporter):
    """A transformers `TrainerCallback` that logs step, loss, LR and tokens/s and keeps the loss curve."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def __init__(self) -> None:
            self.curve: list[tuple[int, float]] = []
            self.eval_losses: list[tuple[int, float]] = []
            self.rewards: list[tuple[int, float]] = []
            self.reward_parts: dict[str, list[tuple[int, float]]] = {}
            self.started = time.monotonic()
            self.train_started: float | None = None
            self.first_step: int | None = None
            self.first_tokens = 0
            self.tokens_seen = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.train_started = time.monotonic()
            self.first_step = state.global_step
            self.first_tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
            # A resumed trainer's state is the checkpoint's `trainer_state.json`, whose `log_history` holds the
            # values logged before the kill: start from them, so the published curves cover the whole run and
            # equal an uninterrupted run's (a fresh state has no history: the curves start empty).
            self.curve, self.eval_losses, self.rewards, self.reward_parts = [], [], [], {}
            for logged in state.log_history:
                if logged.get("step", 0) <= state.global_step:
                    self._record(logged["step"], logged)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            self.tokens_seen = int(getattr(state, "num_input_tokens_seen", 0) or 0)
            self._record(state.global_step, logs)
            elapsed = time.monotonic() - (self.train_started or self.started)
            rate = (self.tokens_seen - self.first_tokens) / elapsed if elapsed > 0 else 0.0
            parts = [f"step {state.global_step}/{state.max_steps}"]
            for key in ("loss", "eval_loss", "reward", "learning_rate", "grad_norm"):
                if key in logs:
                    parts.append(f"{key} {logs[key]:.4g}")
            parts.append(f"tokens/s {rate:,.0f}")
            reporter.info(" | ".join(parts))

        def _record(self, step: int, logs: dict) -> None:
            if "loss" in logs:
                self.curve.append((step, float(logs["loss"])))
            if "eval_loss" in logs:
                self.eval_losses.append((step, float(logs["eval_loss"])))
            if "reward" in logs:
                self.rewards.append((step, float(logs["reward"])))
            for key, value in logs.items():  # TRL logs each reward function's mean as rewards/<name>/mean
                if key.startswith("rewards/") and key.endswith("/mean"):
                    name = key.removeprefix("rewards/").removesuffix("/mean")
                    self.reward_parts.setdefault(name, []).append((step, float(value)))

        def tokens_per_second(self) -> float:
            elapsed = time.monotonic() - (self.train_started or self.started)
            return (self.tokens_seen - self.first_tokens) / elapsed if elapsed > 0 else 0.0

    return ProgressCallback()
