"""What every figure of the report shares: a figure record, an Agg canvas (never pyplot), PNG bytes,
readable ticks, cell annotations and number formats."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from timevec.periods import Period, fractional_year

WriteBytes = Callable[[str, bytes], None]
WriteTable = Callable[[str, pd.DataFrame], None]

_MAX_TICK_LABELS = 24
#: the widest figure, in inches (2000 pixels): a bar chart over hundreds of periods stays one screen wide
MAX_WIDTH = 20.0
_ANNOTATE_MAX = 12
_DPI = 100


@dataclass
class Figure:
    name: str
    section: str
    caption: str
    png: bytes


# --------------------------------------------------------------------------------------------
# plotting helpers
# --------------------------------------------------------------------------------------------


def new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def tick_positions(labels: Sequence[str]) -> list[int]:
    """Indices of the labels to show, at most ~24, aligned to calendar steps.

    A monthly matrix over nine years has 108 labels, a weekly one over four years 209, a daily one over
    two 731; printing all of them makes an unreadable black bar. Months are thinned to every 1, 2, 3,
    4, 6 or 12 months (starting at January); quarters, ISO weeks and days to the finest calendar step
    that fits (:func:`_calendar_marks`: every other quarter, Q1s; weeks 1, 14, 27, 40; Mondays, the
    first of each month, …) and then to the first period of every k-th year; other labels (years,
    or several granularities together) to an even stride.
    """
    n = len(labels)
    if n <= _MAX_TICK_LABELS:
        return list(range(n))
    need = math.ceil(n / _MAX_TICK_LABELS)
    try:
        parsed = [Period.parse(x) for x in labels]
    except ValueError:
        parsed = []
    if parsed and all(p.granularity == "month" for p in parsed):
        step = next((s for s in (1, 2, 3, 4, 6, 12) if s >= need), 12 * math.ceil(need / 12))
        if step <= 12:
            return [i for i, p in enumerate(parsed) if (p.month_of_year - 1) % step == 0]
        return [i for i, p in enumerate(parsed)
                if p.month == 1 and (p.year - parsed[0].year) % (step // 12) == 0]
    granularity = parsed[0].granularity if parsed else None
    if granularity in ("quarter", "week", "day") and all(p.granularity == granularity for p in parsed):
        for mark in _calendar_marks(parsed):
            shown = [i for i, p in enumerate(parsed) if mark(p)]
            if 0 < len(shown) <= _MAX_TICK_LABELS:
                return shown
    return list(range(0, n, need))


Mark = Callable[[Period], bool]


def _calendar_marks(parsed: Sequence[Period]) -> list[Mark]:
    """Which periods carry a label, finest first, for quarters, ISO weeks or days (one granularity)."""
    granularity = parsed[0].granularity
    first_year = parsed[0].year

    def every(k: int, cycle: int) -> Mark:  # every k-th step of the cycle, from its start (week 53 never: it crowds week 1)
        return lambda p: p.in_cycle < cycle and p.in_cycle % k == 0

    def month_start(k: int) -> Mark:  # the first day of every k-th month, from January
        return lambda p: p.day == 1 and ((p.month or 1) - 1) % k == 0

    def year_start(k: int) -> Mark:  # the year's first quarter, ISO week or day, every k-th year
        return lambda p: p == Period.first_of_year(p.year, granularity) and (p.year - first_year) % k == 0

    marks: list[Mark]
    if granularity == "quarter":
        marks = [every(2, 4)]
    elif granularity == "week":
        marks = [every(k, 52) for k in (2, 4, 13, 26)]
    else:
        marks = [lambda p: p.start().weekday() == 0, lambda p: p.day in (1, 15), *(month_start(k) for k in (1, 2, 3, 4, 6))]
    return marks + [year_start(k) for k in range(1, parsed[-1].year - first_year + 2)]


def set_ticks(ax: Any, xlabels: Sequence[str] | None, ylabels: Sequence[str] | None) -> None:
    if xlabels is not None:
        pos = tick_positions(xlabels)
        ax.set_xticks(pos)
        ax.set_xticklabels([xlabels[i] for i in pos], rotation=90, fontsize=8)
    if ylabels is not None:
        pos = tick_positions(ylabels)
        ax.set_yticks(pos)
        ax.set_yticklabels([ylabels[i] for i in pos], fontsize=8)


def annotate(ax: Any, im: Any, mat: np.ndarray, fmt: str) -> None:
    """Write values into small heatmaps, in black or white by the cell colour's luminance."""
    if mat.shape[0] > _ANNOTATE_MAX or mat.shape[1] > _ANNOTATE_MAX:
        return
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            if np.isfinite(mat[i, j]):
                r, g, b, _ = im.cmap(im.norm(mat[i, j]))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(j, i, format(mat[i, j], fmt), ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")


def time_value(period: str) -> float:
    """Fractional year, so every granularity shares one colour scale (a year or a month: its year plus
    the twelfths gone by; a quarter, week or day: its first day, :func:`timevec.periods.fractional_year`)."""
    p = Period.parse(period)
    if p.granularity in ("year", "month"):
        return p.year + ((p.month - 1) / 12.0 if p.month else 0.0)
    return fractional_year(p.start())


def fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


def fmt_p(p: Any) -> str:
    try:
        v = float(p)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(v) else f"{v:.2g}"



def year_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    def fmt(v: float, _pos: int) -> str:
        year = int(math.floor(v + 1e-9))
        month = int(round((v - year) * 12)) + 1
        return f"{year}" if month == 1 else f"{year}-{month:02d}"

    return FuncFormatter(fmt)

