"""The report end to end on synthetic tables, then rendered in headless Chromium."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.components import require, require_that
from timevec.periods import Period, period_range
from timevec.report import build_report

CHROMIUM = "/usr/bin/chromium"
YEARS = [str(y) for y in range(2012, 2017)]
MONTHS = [f"{y}-{m:02d}" for y in (2014, 2015) for m in range(1, 13)] + ["2016-01", "2016-02"]


def _cells() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    specs = (("lm", "year", YEARS, "perplexity", False),
             ("classification", "month", MONTHS, "macro_f1", True))
    for task, gran, periods, metric, higher in specs:
        for b in periods:
            for a in [None, *periods]:
                if a is None:
                    value = 40.0 if not higher else 0.2
                else:
                    gap = abs(Period.parse(a).distance(b))
                    season = 1.0 if gap % 12 else 0.5
                    noise = rng.normal(0, 0.05 if higher else 0.3)
                    value = (20 + 1.5 * gap * season if not higher
                             else 0.8 - 0.01 * gap * season) + noise
                rows.append(dict(task=task, granularity=gran,
                                 vector="base" if a is None else f"{task}/{a}", train_period=a,
                                 test_period=b, metric=metric, value=float(value),
                                 higher_is_better=higher, n_examples=50, n_tokens=5000,
                                 seconds=0.5))
    return pd.DataFrame(rows)


def _gram(keys: list[tuple[str, str]]) -> np.ndarray:
    """Vectors drifting smoothly in time on top of a shared per-task component."""
    rng = np.random.default_rng(1)
    d = 64
    tasks = sorted({k[0] for k in keys})
    task_dir = {t: rng.standard_normal(d) * 2 for t in tasks}
    drift = {t: rng.standard_normal(d) for t in tasks}
    x = np.stack([task_dir[t] + (_year(p) - 2012) * drift[t] + 0.3 * rng.standard_normal(d)
                  for t, p in keys])
    return x @ x.T


def _year(period: str) -> float:
    p = Period.parse(period)
    return p.year + ((p.month or 1) - 1) / 12


def _interpolation() -> pd.DataFrame:
    rows = []
    for k, test in enumerate(YEARS):
        best = k / (len(YEARS) - 1)
        for a in np.round(np.linspace(0, 1, 11), 1):
            rows.append(dict(task="lm", granularity="year", first=YEARS[0], last=YEARS[-1],
                             alpha=float(a), test_period=test, metric="perplexity",
                             value=19 + 8 * (a - best) ** 2, higher_is_better=False))
    return pd.DataFrame(rows)


ANALOGY_PAIRS = (("2014-01", "2014-06"), ("2014-01", "2015-01"), ("2014-01", "2015-12"))


def _analogy_grid() -> pd.DataFrame:
    """Every point of a 2-point analogy grid and of the scaled-alone α₁ (the ``analogy`` table)."""
    rows = []
    for n, (j, k) in enumerate(ANALOGY_PAIRS):
        for method, a1, a2, a3 in (("analogy", 1.0, 0.3, 0.2), ("analogy", 1.4, 0.3, 0.2),
                                   ("task_j_scaled", 1.0, 0.0, 0.0), ("task_j_scaled", 1.4, 0.0, 0.0)):
            for split in ("validation", "test"):
                value = 0.7 + 0.02 * a1 * (1 if n % 2 else -1) + (0.03 if method == "analogy" else 0.0)
                rows.append(dict(task="classification", source_period=j, target_period=k, method=method, alpha1=a1,
                                 alpha2=a2, alpha3=a3, split=split, metric="macro_f1", value=value))
    return pd.DataFrame(rows)


def _analogy() -> pd.DataFrame:
    rows = []
    for j, k in ANALOGY_PAIRS:
        for split in ("validation", "test"):
            for m, v in (("base", 0.2), ("task_j", 0.7), ("task_j_scaled", 0.72), ("latest", 0.71),
                         ("in_period", 0.8), ("analogy", 0.74)):
                rows.append(dict(task="classification", source_period=j, target_period=k,
                                 method=m, alpha1=1.4 if m == "analogy" else np.nan,
                                 alpha2=0.3 if m == "analogy" else np.nan,
                                 alpha3=0.2 if m == "analogy" else np.nan, split=split,
                                 metric="macro_f1", value=v))
    return pd.DataFrame(rows)


def _soups_and_patching() -> tuple[pd.DataFrame, pd.DataFrame]:
    from timevec.results import patching_frame, soup_frame

    soups, patches = [], []
    for i, p in enumerate(YEARS[1:-1]):
        common = dict(task="lm", granularity="year", period=p, metric="perplexity", higher_is_better=False)
        soups += [dict(common, method="soup", members=f"{p},{YEARS[i]}", n_members=2, split=s, value=v, gain=np.nan)
                  for s, v in (("validation", 19.0), ("test", 19.5))]
        soups += [dict(common, method=m, members=p, n_members=1, split="test", value=v, gain=v - 19.5)
                  for m, v in (("in_period", 20.0), ("latest", 21.0), ("base", 40.0))]
        patches.append(dict(common, method="patched", members=f"{YEARS[i]},{YEARS[i + 2]}", split="test", value=20.5, gain=np.nan))
        patches += [dict(common, method=m, members=p, split="test", value=v, gain=v - 20.5)
                    for m, v in (("in_period", 20.0), ("latest", 21.0))]
    return soup_frame(soups), patching_frame(patches)


EXPECTED = {
    "matrix_lm_year", "pct_change_lm_year", "decay_lm_year",
    "matrix_classification_month", "pct_change_classification_month",
    "decay_classification_month", "similarity", "similarity_vs_degradation", "umap",
    "interpolation_lm_year_2012_2016", "interpolation_gain_lm_year_2012_2016",
    "analogy_classification", "soups_lm_year", "patching_lm_year",
    "protocols_lm_year_2012_2016", "analogy_protocols_classification",
}


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")

    def write_bytes(path: str, data: bytes) -> None:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def write_table(name: str, df: pd.DataFrame) -> None:
        target = root / "results" / f"{name}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(target)

    keys = [("lm", p) for p in YEARS] + [("classification", p) for p in MONTHS]
    soups, patching = _soups_and_patching()
    tables = {"cells": _cells(), "interpolation": _interpolation(), "analogy_best": _analogy(),
              "analogy": _analogy_grid(), "soups": soups, "patching": patching}
    paths = build_report(tables, _gram(keys), keys, write_bytes, write_table, "synthetic study")
    assert paths == [f"reports/{n}.png" for n in _order(paths)]
    return root


def _order(paths: list[str]) -> list[str]:
    return [Path(p).stem for p in paths]


def test_every_figure_has_png_and_table(report_dir: Path) -> None:
    pngs = {p.stem for p in (report_dir / "reports").glob("*.png")}
    assert pngs == EXPECTED
    for name in EXPECTED:
        png = report_dir / "reports" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        table = pd.read_parquet(report_dir / "results" / f"fig_{name}.parquet")
        assert len(table) > 0, name
    html = (report_dir / "reports" / "index.html").read_text()
    assert html.count("data:image/png;base64,") == len(EXPECTED)
    for banned in ("http://", "https://", "<script", "<link"):
        assert banned not in html
    assert "synthetic study" in html and "Generated " in html


@contextlib.contextmanager
def _chromium_page(index: Path, requests: list[str]) -> Iterator[Any]:
    """``index`` loaded in headless Chromium (the chromium component), every URL it requests put in ``requests``."""
    require_that(os.path.exists(CHROMIUM), "chromium", f"{CHROMIUM} not installed")
    try:
        from playwright import sync_api
    except ImportError as exc:
        require("chromium", f"playwright not importable: {exc}")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"])
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(index.as_uri(), wait_until="load")
            yield page
        finally:
            browser.close()


_IMAGES = ("() => Array.from(document.images).map(i => "
           "({alt: i.alt, ok: i.complete, w: i.naturalWidth, h: i.naturalHeight, shown: i.getBoundingClientRect().width}))")


def test_html_renders_in_chromium(report_dir: Path) -> None:
    index = report_dir / "reports" / "index.html"
    requests: list[str] = []
    with _chromium_page(index, requests) as page:
        images = page.evaluate(_IMAGES)
        tables = page.evaluate("() => Array.from(document.querySelectorAll('table')).map(t => t.id)")
        verdict_text = page.locator("#verdict-findings").inner_text()
        page.locator("#findings > summary").click()  # every findings row is folded below the verdict
        findings = page.locator("#findings-table tbody tr").count()
        findings_text = page.locator("#findings-table").inner_text()
        page.get_by_text("Headline numbers", exact=True).click()  # the raw numbers are folded
        rows = page.locator("#headline-table tbody tr").count()
        headline_text = page.locator("#headline-table").inner_text()
    assert {i["alt"] for i in images} == EXPECTED
    bad = [i for i in images if not (i["ok"] and i["w"] > 0 and i["h"] > 0)]
    assert not bad, f"images that did not render: {bad}"
    assert tables[0] == "verdict-findings", "the verdict comes first"
    assert tables.index("verdict-findings") < tables.index("findings-table")
    assert "decay with the gap" in verdict_text and "holds?" in verdict_text
    assert findings >= 6
    for finding in ("own period best", "decay with the gap", "cosine vs degradation", "12-month stripes",
                    "interpolation beats both ends", "analogy vs τ_task(j) scaled"):
        assert finding in findings_text, finding
    assert "yes" in findings_text  # the synthetic study is built to show the paper's decay and stripes
    assert rows >= 10
    assert "lm/year diagonal share" in headline_text
    assert "cosine vs degradation Pearson r" in headline_text
    # nothing but the page itself and its data: URIs was requested
    assert all(u.startswith(("file:", "data:")) for u in requests), requests


# ---- hundreds of periods (issue 39): the heatmaps scale and their axes label a readable few -----------------------

WEEKS_200 = [str(p) for p in period_range("2014-W01", "2017-W44")][:200]


def _weekly_cells() -> pd.DataFrame:
    """200 ISO weeks of one task: degradation growing with the gap, a base row."""
    rng = np.random.default_rng(2)
    index = {p: i for i, p in enumerate(WEEKS_200)}
    rows = [dict(task="lm", granularity="week", vector="base", train_period=None, test_period=b, metric="perplexity",
                 value=40.0, higher_is_better=False, n_examples=50, n_tokens=5000, seconds=0.5) for b in WEEKS_200]
    rows += [dict(task="lm", granularity="week", vector=f"lm/{a}", train_period=a, test_period=b, metric="perplexity",
                  value=20 + 0.05 * abs(index[a] - index[b]) + rng.normal(0, 0.2), higher_is_better=False,
                  n_examples=50, n_tokens=5000, seconds=0.5) for a in WEEKS_200 for b in WEEKS_200]
    return pd.DataFrame(rows)


def _is_period(text: str) -> bool:
    try:
        return bool(Period.parse(text))
    except ValueError:  # "base", the colour bar's numbers
        return False


def _svg_tick_labels(fig) -> dict[str, list[tuple[float, str]]]:
    """Each axis of ``fig`` as drawn in SVG: (position along the axis, label text) of every labelled tick."""
    import io
    import re
    import xml.etree.ElementTree as ET

    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # real <text> elements, not glyph paths
        fig.savefig(buf, format="svg")
    svg = "{http://www.w3.org/2000/svg}"
    axes: dict[str, list[tuple[float, str]]] = {}
    for axis in ET.fromstring(buf.getvalue()).iter(f"{svg}g"):
        if not (axis.get("id") or "").startswith("matplotlib.axis_"):
            continue
        for tick in axis:
            kind = (tick.get("id") or "").split("_")[0]
            if kind not in ("xtick", "ytick"):
                continue  # the axis' own label ("test period")
            for text in tick.iter(f"{svg}text"):  # placed by x/y, or (rotated labels) by a translate
                moved = re.match(r"translate\(([-\d.]+) ([-\d.]+)\)", text.get("transform", ""))
                x, y = map(float, moved.groups()) if moved else (float(text.get("x", "nan")), float(text.get("y", "nan")))
                axes.setdefault(f"{axis.get('id')} {kind}", []).append((x if kind == "xtick" else y, text.text or ""))
    return axes


def test_a_report_of_200_weekly_periods_keeps_its_axes_readable(tmp_path: Path) -> None:
    import struct
    from html.parser import HTMLParser

    from timevec.report.structure import matrix_figure

    written: dict[str, bytes] = {}
    tables: dict[str, pd.DataFrame] = {}
    build_report({"cells": _weekly_cells()}, None, None, written.__setitem__, tables.__setitem__, "weekly study")
    png = written["reports/matrix_lm_week.png"]
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk: the heatmap grows up to 16 × 16 in, no more
    assert 1200 <= width <= 1600 and 1200 <= height <= 1600

    alts: list[str] = []

    class Images(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "img":
                alts.append(dict(attrs)["alt"])

    Images().feed(written["reports/index.html"].decode())  # the page's DOM holds the figures
    assert {"matrix_lm_week", "pct_change_lm_week", "decay_lm_week"} <= set(alts)
    # and headless Chromium renders every figure of the page, none wider than the page shows it
    index = tmp_path / "reports" / "index.html"
    index.parent.mkdir(parents=True)
    for rel, data in written.items():
        (tmp_path / rel).write_bytes(data)
    requests: list[str] = []
    with _chromium_page(index, requests) as page:
        images = page.evaluate(_IMAGES)
        viewport = page.evaluate("() => document.documentElement.clientWidth")
    assert {i["alt"] for i in images} == set(alts)
    assert all(i["ok"] and i["w"] > 0 and i["h"] > 0 for i in images), images
    assert all(0 < i["shown"] <= viewport for i in images), (viewport, images)  # scaled to the page, never cut off
    assert all(u.startswith(("file:", "data:")) for u in requests), requests

    # the same heatmap drawn from the numbers the report wrote beside it, as SVG: every axis labels ≤ 24 weeks,
    # on the calendar (weeks 1, 14, 27, 40 of each ISO year), and no two labels closer than their font
    table = tables["fig_matrix_lm_week"]
    cells = table[table["vector"] != "base"].pivot(index="train_period", columns="test_period", values="value")
    cells = cells.reindex(index=WEEKS_200, columns=WEEKS_200)
    base = table[table["vector"] == "base"].set_index("test_period")["value"].reindex(WEEKS_200)
    fig = matrix_figure(cells.to_numpy(), base.to_numpy(), WEEKS_200, WEEKS_200, "lm (week)", "perplexity", False)
    axes = _svg_tick_labels(fig)
    period_axes = {name: labels for name, labels in axes.items() if labels and all(map(_is_period, (t for _, t in labels)))}
    assert sorted(name.split()[1] for name in period_axes) == ["xtick", "ytick"]  # test periods across, train down
    for name, labels in period_axes.items():
        assert 8 <= len(labels) <= 24, (name, len(labels))
        assert {Period.parse(text).week for _, text in labels} == {1, 14, 27, 40}, name
        positions = sorted(pos for pos, _ in labels)
        assert min(b - a for a, b in zip(positions, positions[1:])) >= 8.0, name  # 8 px labels never overlap
