"""Forwarding a training loop's metrics and checkpoints to Ray from a thread beside the loop.

One job: ``ray.tune.report`` / ``ray.train.report`` block (ARCHITECTURE §5 measured it), so the
training thread only snapshots a handed state and queues it; one reporter thread sends everything
in order. Used by both kinds of fleet trial (:mod:`timevec.distributed.fleet_trials`).
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable

from timevec.distributed.checkpoints import save_checkpoint
from timevec.train.run import RunJob

__all__ = ["Reporter"]


class Reporter:
    """Forwards the loop's per-step metrics (and checkpoints) to Ray without stalling training.

    ``report`` blocks: a Tune function trial's until the driver has taken the result (≈ 7 ms on
    the 2-core machine, as long as a tiny model's step), a Train V2 worker's until the controller's
    next poll (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, 2 s by default). So the training thread only
    snapshots a handed state to a local directory (it must: the state refers to live tensors) and
    queues it; one thread reports everything in order. Every Train worker queues the same
    sequence, so V2's per-report collective still lines up across ranks. ``close`` waits until all
    is reported (before the vector is written) and re-raises a reporting error.

    ``min_interval_s`` > 0 coalesces the metric-only reports: at most one per interval is sent,
    the newest (a report with a checkpoint always goes, and ``close`` sends the last one held
    back). Each report costs the trial ≈ 1 ms and Tune's driver ≈ 2 ms of CPU (bench/README.md,
    fleet): at a tiny model's 12 ms steps that is a fifth of the machine; per interval it is
    nothing. Time-based, so it suits one process only — Train workers keep 0, because every rank
    must report the same sequence.
    """

    def __init__(
        self,
        report_fn: Callable[..., None],
        checkpoint_cls: type,
        job: RunJob,
        start_step: int,
        resume_meta: dict | None,
        with_checkpoint: bool = True,
        min_interval_s: float = 0.0,
    ) -> None:
        self._report_fn, self._checkpoint_cls = report_fn, checkpoint_cls
        self._extra = {"start_step": start_step, "run_status": "training"}
        self._meta = {"fingerprint": job.fingerprint, "run": job.run.as_dict()}
        self._with_checkpoint = with_checkpoint
        # The first loss of the whole run, carried from checkpoint to checkpoint across resumptions.
        self._first_loss: float | None = (resume_meta or {}).get("first_loss")
        self._error: BaseException | None = None
        self._min_interval_s = min_interval_s
        self._last_queued = -float("inf")
        self._held: tuple[dict, None] | None = None  # the newest metric-only report not sent yet
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = threading.Thread(target=self._drain, name="timevec-report", daemon=True)
        self._thread.start()

    def __call__(self, metrics: dict, state: dict | None) -> None:
        if self._error is not None:
            raise RuntimeError("reporting to Ray failed") from self._error
        if self._first_loss is None:
            self._first_loss = float(metrics["loss"])
        out = {**metrics, **self._extra}
        directory = None
        if state is not None and self._with_checkpoint:
            directory = tempfile.mkdtemp(prefix="timevec-ckpt-")
            meta = {**self._meta, "step": int(metrics["step"]), "loss": float(metrics["loss"]), "first_loss": self._first_loss}
            save_checkpoint(directory, state, meta)
        now = time.monotonic()
        if directory is None and now - self._last_queued < self._min_interval_s:
            self._held = (out, None)
            return
        self._held = None
        self._last_queued = now
        self._queue.put((out, directory))

    def _send(self, metrics: dict, directory: str | None) -> None:
        try:
            if directory is None:
                self._report_fn(metrics)
            else:
                self._report_fn(metrics, checkpoint=self._checkpoint_cls.from_directory(directory))  # type: ignore[attr-defined]  # ray.train.Checkpoint, imported lazily
        finally:
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    self._send(*item)
                except BaseException as exc:  # noqa: BLE001 - handed to the training thread in close()
                    self._error = exc
            elif item[1] is not None:
                shutil.rmtree(item[1], ignore_errors=True)

    def close(self) -> None:
        if self._thread is not None:
            if self._held is not None:
                self._queue.put(self._held)
                self._held = None
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise RuntimeError("reporting to Ray failed") from self._error
