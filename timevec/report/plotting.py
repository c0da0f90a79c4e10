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

from timevec.periods import Period

WriteBytes = Callable[[str, bytes], None]
WriteTable = Callable[[str, pd.DataFrame], None]

_MAX_TICK_LABELS = 24
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
    """Indices of the labels to show, at most ~24, aligned to calendar steps for months.

    A monthly matrix over nine years has 108 labels; printing all of them makes an unreadable black
    bar, so months are thinned to every 1, 2, 3, 4, 6 or 12 months (starting at January) and other
    labels to an even stride.
    """
    n = len(labels)
    if n <= _MAX_TICK_LABELS:
        return list(range(n))
    need = math.ceil(n / _MAX_TICK_LABELS)
    try:
        parsed = [Period.parse(x) for x in labels]
    except ValueError:
        parsed = []
    if parsed and all(p.month is not None for p in parsed):
        step = next((s for s in (1, 2, 3, 4, 6, 12) if s >= need), 12 * math.ceil(need / 12))
        if step <= 12:
            return [i for i, p in enumerate(parsed) if (p.month_of_year - 1) % step == 0]
        return [i for i, p in enumerate(parsed)
                if p.month == 1 and (p.year - parsed[0].year) % (step // 12) == 0]
    return list(range(0, n, need))


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
    """Fractional year, so years and months share one colour scale."""
    p = Period.parse(period)
    return p.year + ((p.month - 1) / 12.0 if p.month else 0.0)


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

