"""Progress of a long step, in one style everywhere: ``<step>: 12/60 (20 %), 1m05s elapsed, ETA 4m20s``.

Base pretraining, the fine-tune fleet, cell evaluation, interpolation and the analogy search all
report through this one class, so a newcomer sees the same kind of line for every stage, at most
every ``every_s`` seconds plus a final one — never a silent minute, never a flood. Plain
``logging`` lines (no carriage returns, no colour), so they read the same in a terminal, a
``ray job logs`` stream and a CI log.

Their logger, :data:`PROGRESS_LOGGER`, is the one channel a quiet terminal shows besides warnings
and errors (:func:`timevec.cli.configure_logging`): the fleet's line, the stage times and where to
look (the dashboard) go through it too; every other INFO line waits for ``timevec -v``.
"""

from __future__ import annotations

import logging
import time

__all__ = ["PROGRESS_LOGGER", "Progress", "duration", "log"]

PROGRESS_LOGGER = "timevec.train.progress"
log = logging.getLogger(PROGRESS_LOGGER)


def duration(seconds: float) -> str:
    """``75.2`` → ``1m15s``; under a minute ``42s``; an unknown ETA ``?``."""
    if seconds != seconds or seconds < 0:  # NaN
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Counts units of one step and logs a line at most every ``every_s`` seconds (and at the end)."""

    def __init__(self, step: str, total: int, unit: str = "", every_s: float = 15.0, logger: logging.Logger | None = None,
                 clock=time.monotonic) -> None:
        self.step, self.total, self.unit, self.every_s = step, int(total), unit, every_s
        self.log = logger or log
        self._clock = clock
        self.began = self._last = clock()
        self.done = 0

    def line(self, extra: str = "") -> str:
        elapsed = self._clock() - self.began
        pct = f" ({100 * self.done / self.total:.0f} %)" if self.total else ""
        left = self.total - self.done
        eta = elapsed / self.done * left if self.done else float("nan")
        unit = f" {self.unit}" if self.unit else ""
        tail = f", ETA {duration(eta)}" if 0 < left and self.done else ""
        return f"{self.step}: {self.done}/{self.total}{unit}{pct}, {duration(elapsed)} elapsed{tail}" + (f"; {extra}" if extra else "")

    def advance(self, n: int = 1, extra: str = "") -> None:
        self.done += n
        now = self._clock()
        if self.done >= self.total or now - self._last >= self.every_s:
            self._last = now
            self.log.info(self.line(extra))

    def finish(self, extra: str = "") -> None:
        """The final line, unless :meth:`advance` just wrote it."""
        if self.done < self.total:
            self.log.info(self.line(extra))
