"""Figures and one self-contained HTML report from the result tables.

May import every Ray-free package (it reads what they wrote); never Ray.

Design choices, and why:

* Output goes through two callables (``write_bytes(path, data)`` and ``write_table(name, df)``)
  so the report knows nothing about where the store lives (local folder or ``s3://``).
* Every figure has the table it was drawn from written next to it (``fig_<name>``), so any number
  in a picture can be checked or re-plotted without re-running the study.
* ``reports/index.html`` embeds every PNG as a base64 data URI and loads nothing from the network:
  it can be mailed, attached to a CI run or opened from object storage as one file.
* Matplotlib is used through :class:`matplotlib.figure.Figure` with the Agg canvas, never pyplot,
  so building a report neither changes a global backend nor leaks figures in long-lived workers.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from timevec import results
from timevec.analyze import analysis as an
from timevec.analyze import similarity
from timevec.report.adaptation import adaptation_figures, analogy_figures, forecast_figures, interpolation_figures
from timevec.report.forgetting import forgetting_figures
from timevec.report.groups import group_figures
from timevec.report.page import page
from timevec.report.plotting import Figure, WriteBytes, WriteTable
from timevec.report.probe import probe_figures
from timevec.report.selection import analogy_protocol_figures, interpolation_protocol_figures
from timevec.report.structure import decay_figures, matrix_figures, similarity_figures, umap_figure

__all__ = ["build_report"]

log = logging.getLogger(__name__)


def build_report(tables: Mapping[str, pd.DataFrame | None], gram: np.ndarray | None,
                 keys: Sequence[similarity.Key] | None, write_bytes: WriteBytes,
                 write_table: WriteTable, title: str = "timevec report",
                 *, generated: dt.datetime | None = None) -> list[str]:
    """Draw every figure the available tables support and write one self-contained HTML report.

    ``tables``: by their :mod:`timevec.results` names, ``cells`` (required), optionally
    ``interpolation``, ``soups``, ``patching``, ``forecast``, ``analogy_best`` and ``analogy`` (the grid,
    for the selection protocols); absent or empty optional tables just mean fewer
    figures. ``gram``/``keys``: the time vectors' Gram matrix (may be ``None``: no similarity
    figures). Figures go to ``reports/<name>.png``, their tables to ``fig_<name>``, the page to
    ``reports/index.html``. Returns the figure paths in page order.
    """
    cells = tables.get(results.CELLS_TABLE)
    if cells is None:
        raise ValueError(f"build_report needs tables[{results.CELLS_TABLE!r}] (results/{results.CELLS_TABLE}.parquet)")
    interp = tables.get(results.INTERPOLATION_TABLE)
    analogy = tables.get(results.ANALOGY_BEST_TABLE)
    forecast = tables.get(results.FORECAST_TABLE)
    key_list = [(str(t), str(p)) for t, p in keys] if keys is not None else []
    have_gram = gram is not None and len(key_list) > 0
    res = an.analyze(cells, gram if have_gram else None, key_list if have_gram else None,
                     interp, analogy, soups=tables.get(results.SOUPS_TABLE),
                     analogy_grid=tables.get(results.ANALOGY_TABLE), forecast=forecast,
                     group_swaps=tables.get(results.GROUP_SWAPS_TABLE))
    figures: list[Figure] = []
    notes: list[str] = []
    if not res.rel.empty:
        matrix_figures(cells, res.rel, figures, write_table)
        decay_figures(res.decay, res.rel, figures, write_table)
    else:
        notes.append("No cells of trained vectors: no misalignment figures.")
    if have_gram:
        similarity_figures(np.asarray(gram), key_list, res, figures, write_table)
        umap_figure(np.asarray(gram), key_list, figures, write_table)
    else:
        notes.append("No Gram matrix given: no similarity or UMAP figures.")
    if interp is not None and not interp.empty:
        interpolation_figures(interp, res.interpolation, figures, write_table)
    else:
        notes.append("No interpolation table: no interpolation figures.")
    for kind in (results.SOUPS_TABLE, results.PATCHING_TABLE):
        table = tables.get(kind)
        if table is not None and not table.empty:
            adaptation_figures(table, kind, figures, write_table)
    if forecast is not None and not forecast.empty:
        forecast_figures(forecast, figures, write_table)
    if not res.analogy.empty:
        analogy_figures(res.analogy, figures, write_table)
    else:
        notes.append("No analogy table: no analogy figures.")
    if res.interpolation_protocols is not None and not res.interpolation_protocols.empty:
        interpolation_protocol_figures(res.interpolation_protocols, figures, write_table)
    if res.analogy_protocols is not None and not res.analogy_protocols.empty:
        analogy_protocol_figures(res.analogy_protocols, figures, write_table)
    forgetting = tables.get(results.FORGETTING_TABLE)
    if forgetting is not None and not forgetting.empty:
        forgetting_figures(forgetting, figures, write_table)
    group_figures(tables, figures, write_table)  # where in the weights time lives (timevec.report.groups)
    probe = tables.get(results.PROBE_TABLE)  # `timevec probe` (timevec.analyze.probe); absent: no probe figures
    if probe is not None and not probe.empty:
        probe_figures(probe, figures, write_table)

    paths: list[str] = []
    for f in figures:
        path = f"reports/{f.name}.png"
        write_bytes(path, f.png)
        paths.append(path)
    when = (generated or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="seconds")
    folded = {"own period best (diagonal)": res.diagonal, "decay fit": res.decay.fit, "stripes": res.stripes,
              "interpolation: oracle α per middle period": res.interpolation, "task analogies vs baselines": res.analogy,
              "interpolation under each α-selection protocol": res.interpolation_protocols,
              "task analogies under each selection protocol": res.analogy_protocols,
              "time soups": tables.get(results.SOUPS_TABLE), "patching": tables.get(results.PATCHING_TABLE),
              "forecasts (past-only) and baselines vs the latest vector": forecast,
              "forgetting: continual vs independent vs merged updating": forgetting,
              "group swaps: share of the gap to the in-period vector": tables.get(results.GROUP_SWAPS_TABLE)}
    folded["time probes (R² and Spearman per model, layer, pooling)"] = probe
    write_bytes("reports/index.html", page(title, res.findings, res.headline, figures, when, notes, folded))
    log.info("report: %d figures and reports/index.html written", len(figures))
    return paths

