"""Watching a fleet: a one-line progress view and per-run TensorBoard loss curves (Tune callbacks).

One job: what a person sees while the fleet runs. ``FleetProgress`` also counts each run's
attempts, which :func:`timevec.distributed.fleet.run_fleet` reports; ``LossCurves`` replaces Tune's
default TensorBoard logger with a cheaper one.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from ray import tune
from ray.tune.logger import TBXLoggerCallback

from timevec.distributed.fleet_trials import trial_name
from timevec.train.progress import log as progress_log

log = logging.getLogger(__name__)

__all__ = ["FleetProgress", "ForgetFinishedStats", "LossCurves"]


class FleetProgress(tune.Callback):
    """A live one-line view of the fleet: runs done / running / failed, retries and an ETA.

    Logged when a run fails or is retried, when the last one finishes, and at most every ``every_s``
    seconds in between (a finished run's own line, with its loss, is INFO: ``timevec -v``). The ETA
    extrapolates the completion rate since the first run started (the one-time start-up of the trial
    processes is not spread over the remaining runs). Also counts attempts
    per run (1 + Tune's retries), which ``run_fleet`` reports.
    """

    def __init__(self, total: int, skipped: int = 0, every_s: float = 15.0, verbose: bool = True) -> None:
        self.total, self.skipped, self.every_s, self.verbose = total, skipped, every_s, verbose
        self.attempts: dict[str, int] = {}
        self._running: set[str] = set()
        self._done: set[str] = set()
        self._failed: set[str] = set()
        self._began: float | None = None
        self._first_start: float | None = None
        self._last = 0.0

    @staticmethod
    def _key(trial: Any) -> str:
        return trial_name(trial)

    def line(self) -> str:
        """The current one-line summary."""
        now = time.monotonic()
        done, failed, running = len(self._done), len(self._failed), len(self._running)
        pending = self.total - done - failed - running
        retries = sum(a - 1 for a in self.attempts.values())
        elapsed = now - (self._began or now)
        left = pending + running
        if not left:
            eta = "0s"
        elif done + failed and self._first_start is not None:
            eta = f"{(now - self._first_start) / (done + failed) * left:.0f}s"
        else:
            eta = "-"
        return (
            f"fleet: {done}/{self.total} done, {running} running, {pending} pending, {failed} failed, "
            f"{retries} retried ({self.skipped} already in the store); {elapsed:.0f}s elapsed, ETA {eta}"
        )

    def _log(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.verbose and (force or now - self._last >= self.every_s):
            self._last = now
            progress_log.info("%s", self.line())

    def setup(self, **info: Any) -> None:  # type: ignore[override]  # Tune calls setup(**info)
        if self._began is None:  # a fleet in parts (ray.runs_per_experiment) sets up once per part
            self._began = time.monotonic()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        key = self._key(trial)
        self.attempts.setdefault(key, 1)
        self._running.add(key)
        if self._first_start is None:
            self._first_start = time.monotonic()
        self._log()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        key = self._key(trial)
        self.attempts[key] = self.attempts.get(key, 1) + 1
        self._running.discard(key)
        if self.verbose:
            log.warning("run %s failed; retrying from its latest checkpoint (attempt %d)", key, self.attempts[key])
        self._log(force=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._log()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        key = self._key(trial)
        self._running.discard(key)
        self._done.add(key)
        result = trial.last_result or {}
        if self.verbose and result.get("run_status") == "done":
            log.info(
                "run %s done: loss %.4f -> %.4f, %d steps (from %d), %.0f tokens/s",
                key, result.get("first_loss", math.nan), result.get("final_loss", math.nan),
                result.get("steps", 0), result.get("start_step", 0), result.get("tokens_per_second", 0.0),
            )
        self._log(force=len(self._done) + len(self._failed) >= self.total)  # the last one; else every every_s

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        key = self._key(trial)
        self._running.discard(key)
        self._failed.add(key)
        if self.verbose:
            log.error("run %s failed after %d attempt(s)", key, self.attempts.get(key, 1))
        self._log(force=True)


class LossCurves(TBXLoggerCallback):
    """Tune's TensorBoard logger, kept to a fine-tune's curves and flushed every few seconds.

    It replaces Tune's default ``TBXLoggerCallback`` (Tune adds the default only when no instance of
    it is given). The default writes every numeric field of every result — a dozen, mostly Tune's
    bookkeeping — and flushes the event file after each: measured ≈ 1.8 ms of driver CPU per
    result, on top of ≈ 0.9 ms for the rest of Tune's handling. With a report per step of a small
    model that was a third of the training throughput of two runs on two cores. This one writes
    ``SCALARS`` at the run's own step (continuous across resumptions), so TensorBoard shows each
    run's loss curve under ``<storage>/<experiment>/<run>_<trial id>/``.
    """

    SCALARS = ("loss", "lr", "first_loss", "final_loss", "tokens_per_second", "train_seconds")

    def __init__(self, flush_s: float = 5.0) -> None:
        super().__init__()  # raises ImportError without tensorboardX (a dependency of ray[tune])
        self._flush_s = flush_s
        self._flushed: dict[Any, float] = {}

    def log_trial_start(self, trial: Any) -> None:
        super().log_trial_start(trial)  # opens the trial's SummaryWriter in its directory
        self._flushed[trial] = time.monotonic()

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        if trial not in self._trial_writer:
            self.log_trial_start(trial)
        writer = self._trial_writer[trial]
        step = int(result.get("step") or result.get("training_iteration") or 0)
        for key in self.SCALARS:
            value = result.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                writer.add_scalar(f"ray/tune/{key}", value, global_step=step)
        now = time.monotonic()
        if now - self._flushed.get(trial, 0.0) >= self._flush_s:
            writer.flush()
            self._flushed[trial] = now

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        writer = self._trial_writer.pop(trial, None)
        self._trial_result.pop(trial, None)
        self._flushed.pop(trial, None)
        if writer is not None:
            writer.close()


class ForgetFinishedStats(tune.Callback):
    """Drops a finished trial's per-metric statistics, which Tune's driver keeps for every trial.

    For each numeric field of each result Tune keeps a trial's max, min, mean and last-5/-10 means
    (``Trial.run_metadata.metric_analysis`` and ``metric_n_steps``): ≈ 45 kB per run of the fleet's
    ≈ 25 fields, plus their JSON for the experiment's state file — the larger part of what the driver
    grows by per run (bench/fleet.py --warm: 1,000 runs). Only "best trial" queries read them, which
    the fleet never makes (it reads each trial's last result, which stays). Best effort: if a Ray
    version keeps them elsewhere, nothing is dropped.
    """

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        metadata = getattr(trial, "run_metadata", None)
        for name in ("metric_analysis", "metric_n_steps"):
            stats = getattr(metadata, name, None)
            if isinstance(stats, dict):
                stats.clear()
        invalidate = getattr(metadata, "invalidate_cache", None)
        if callable(invalidate):
            invalidate()  # its JSON for the state file, rebuilt without them
