"""The results contract: every table a stage writes to ``<store>/results/``, its columns and its builder.

One module names the tables and fixes their schemas, so that the stages that write them, the
analysis and report that read them, and users' notebooks agree on one spelling. A builder turns
rows (dicts) into a frame with exactly the documented columns and fixed dtypes, so that appended
batches (resumable stages) always concatenate. Torch-free and Ray-free.

| table | written by | one row is |
| --- | --- | --- |
| ``cells`` | evaluate | one (vector or base, test period) evaluation |
| ``interpolation`` | interpolate | one α of (1−α)·τ_first + α·τ_last on one test period |
| ``interpolation_best`` | interpolate | the best α of one middle period, against every baseline |
| ``soups`` / ``patching`` | interpolate | a greedy time soup / a patched period, or one of its baselines |
| ``forecast`` | forecast | one forecast (or baseline) of one held-out period, δ periods ahead |
| ``analogy`` | analogy | one (α₁, α₂, α₃) grid point on one split |
| ``analogy_best`` | analogy | the best point, or one baseline, of one (j, k) pair on one split |
| ``interpolation_protocols`` | analyze | one middle period under one α-selection protocol or baseline (:mod:`timevec.adapt.selection`) |
| ``analogy_protocols`` | analyze | one (j, k) pair under one selection protocol or baseline (:mod:`timevec.adapt.selection`) |
| ``relative_change``, ``diagonal``, ``decay_*``, ``stripes`` | analyze | see :mod:`timevec.analyze.misalignment` |
| ``similarity``, ``similarity_centred`` | analyze | one pair of vectors (:mod:`timevec.analyze.similarity`) |
| ``group_norms``, ``group_similarity``, ``group_similarity_degradation`` | analyze | see :mod:`timevec.analyze.weight_groups` |
| ``group_swaps`` | groups | τ_j with one parameter group from τ_k, on k: :mod:`timevec.adapt.group_swaps` |
| ``merged_cells`` | forgetting | one running mean of independent vectors θ_pre + mean(τ_1..τ_t) on one test period (cells schema) |
| ``forgetting`` | forgetting | one (updating mode, test period s, train period t ≥ s): :mod:`timevec.analyze.forgetting` |
| ``merge_methods`` | ``bench/merge_methods.py --write`` | one (combination, method, test period): :mod:`timevec.adapt.merge_comparison` |
| ``fig_<figure>`` | report | the numbers behind one figure of the report |
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, overload

import pandas as pd
import pyarrow as pa

__all__ = [
    "CELLS_ADDED_COLUMNS",
    "CELLS_COLUMNS",
    "CELLS_SCHEMA",
    "CELL_KEY",
    "cell_values",
    "cells_frame",
    "cells_table",
    "CELLS_TABLE",
    "DECAY_BY_GAP_TABLE",
    "DECAY_FIT_TABLE",
    "DIAGONAL_TABLE",
    "FORECAST_COLUMNS",
    "FORECAST_KEY",
    "FORECAST_TABLE",
    "FINDINGS_TABLE",
    "FINDINGS_TEXT_FILE",
    "HEADLINE_FILE",
    "RELATIVE_CHANGE_TABLE",
    "REPORT_TABLES",
    "SIMILARITY_CENTRED_TABLE",
    "SIMILARITY_TABLE",
    "STRIPES_TABLE",
    "ANALOGY_BEST_COLUMNS",
    "ANALOGY_BEST_TABLE",
    "ANALOGY_COLUMNS",
    "ANALOGY_METHODS",
    "ANALOGY_TABLE",
    "INTERPOLATION_BEST_COLUMNS",
    "INTERPOLATION_BEST_TABLE",
    "INTERPOLATION_COLUMNS",
    "INTERPOLATION_KEY",
    "INTERPOLATION_TABLE",
    "INTERPOLATION_PROTOCOLS_TABLE",
    "INTERPOLATION_PROTOCOL_COLUMNS",
    "ANALOGY_PROTOCOLS_TABLE",
    "ANALOGY_PROTOCOL_COLUMNS",
    "with_split",
    "GROUP_NORMS_TABLE",
    "GROUP_SIMILARITY_TABLE",
    "GROUP_SIM_DEG_TABLE",
    "GROUP_SWAPS_TABLE",
    "GROUP_SWAPS_KEY",
    "group_norms_frame",
    "group_similarity_frame",
    "group_sim_deg_frame",
    "group_swaps_frame",
    "MERGE_METHODS_COLUMNS",
    "MERGE_METHODS_TABLE",
    "PATCHING_COLUMNS",
    "PATCHING_TABLE",
    "SOUPS_TABLE",
    "SOUP_COLUMNS",
    "alpha_key",
    "analogy_best_frame",
    "analogy_frame",
    "forecast_frame",
    "interpolation_frame",
    "merge_methods_frame",
    "FORGETTING_COLUMNS",
    "FORGETTING_TABLE",
    "MERGED_CELLS_TABLE",
    "forgetting_frame",
    "patching_frame",
    "soup_frame",
]

CELLS_TABLE = "cells"
INTERPOLATION_TABLE = "interpolation"
INTERPOLATION_BEST_TABLE = "interpolation_best"
SOUPS_TABLE = "soups"
PATCHING_TABLE = "patching"
FORECAST_TABLE = "forecast"
ANALOGY_TABLE = "analogy"
ANALOGY_BEST_TABLE = "analogy_best"
INTERPOLATION_PROTOCOLS_TABLE = "interpolation_protocols"
ANALOGY_PROTOCOLS_TABLE = "analogy_protocols"
# written by the analysis stage (schemas: the frames of timevec.analyze.misalignment / timevec.analyze.similarity)
RELATIVE_CHANGE_TABLE = "relative_change"
DIAGONAL_TABLE = "diagonal"
DECAY_BY_GAP_TABLE = "decay_by_gap"
DECAY_FIT_TABLE = "decay_fit"
STRIPES_TABLE = "stripes"
SIMILARITY_TABLE = "similarity"
SIMILARITY_CENTRED_TABLE = "similarity_centred"
FINDINGS_TABLE = "findings"  # the verdict per finding (timevec.analyze.findings)
MERGE_METHODS_TABLE = "merge_methods"  # merge methods against task arithmetic (timevec.adapt.merge_comparison)
HEADLINE_FILE = "results/headline.json"
FINDINGS_TEXT_FILE = "results/findings.txt"  # the verdict block and every findings row as text (timevec.analyze.verdict)
# where in the weights time lives (the GROUP_* schemas are at the end)
GROUP_NORMS_TABLE = "group_norms"
GROUP_SIMILARITY_TABLE = "group_similarity"
GROUP_SIM_DEG_TABLE = "group_similarity_degradation"
GROUP_SWAPS_TABLE = "group_swaps"
PROBE_TABLE = "probe"  # written by `timevec probe` (timevec.analyze.probe)
FORGETTING_TABLE = "forgetting"
MERGED_CELLS_TABLE = "merged_cells"  # cells schema; vector "task/mean(first..last)", train_period = last
#: What the report reads (figures get their own ``fig_<name>`` tables, written by the report); the report stage
#: declares the same (timevec.stages), and draws the probe and forgetting figures when those tables exist.
REPORT_TABLES: tuple[str, ...] = (CELLS_TABLE, INTERPOLATION_TABLE, SOUPS_TABLE, PATCHING_TABLE, ANALOGY_BEST_TABLE, ANALOGY_TABLE,
                                  FORECAST_TABLE, GROUP_NORMS_TABLE, GROUP_SIM_DEG_TABLE, GROUP_SWAPS_TABLE, PROBE_TABLE,
                                  FORGETTING_TABLE)


def alpha_key(alpha: float) -> float:
    """A mixing weight as stored in tables and keys: rounded so that 0.30000000000000004 and 0.3
    are the same point (every stage and every resume compares α through this one function)."""
    return round(float(alpha), 10)


# ----------------------------------------------------------------------------- cells

CELL_KEY = ["task", "granularity", "vector", "test_period"]
CELLS_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("granularity", pa.string()),
        ("vector", pa.string()),
        ("train_period", pa.string()),
        ("test_period", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("low", pa.float64()),  # the bootstrap interval of value (timevec.evaluate.bootstrap); NaN: none
        ("high", pa.float64()),
        ("higher_is_better", pa.bool_()),
        ("n_examples", pa.int64()),
        ("n_tokens", pa.int64()),
        ("seconds", pa.float64()),
    ]
)
CELLS_COLUMNS = CELLS_SCHEMA.names
#: Columns added to the cells table after stores were first written (a store written before lacks
#: them): readers fill them with NaN (:func:`cells_frame`), appends add them to the old rows.
CELLS_ADDED_COLUMNS = ("low", "high")


def cells_frame(rows: Iterable[dict] | pd.DataFrame) -> pd.DataFrame:
    """Rows (dicts, or a frame read from a store) as a DataFrame with exactly the cells columns, in
    order and with their dtypes. Keys outside the schema are dropped; a missing ``low``/``high``
    (rows of an evaluation without bounds, a table written before they existed) is NaN."""
    frame = pd.DataFrame(rows if isinstance(rows, pd.DataFrame) else list(rows), columns=CELLS_COLUMNS)
    return frame.astype(
        {"value": "float64", "low": "float64", "high": "float64", "higher_is_better": "bool", "n_examples": "int64",
         "n_tokens": "int64", "seconds": "float64"}
    )


def cell_values(cells: pd.DataFrame | None) -> dict[tuple[str, str, str, str], float]:
    """The cells as ``(task, granularity, source, test period) -> value``; source ``"base"`` or the
    train period; a cell written twice keeps its last value. Empty for no cells."""
    if cells is None or cells.empty:
        return {}
    sources = cells["train_period"].where(cells["train_period"].notna(), "base").astype(str)
    keys = zip(cells["task"].astype(str), cells["granularity"].astype(str), sources, cells["test_period"].astype(str))
    return dict(zip(keys, cells["value"].astype(float)))


def cells_table(frame: pd.DataFrame) -> pa.Table:
    """The fixed Arrow schema, so a first batch of base rows (train_period all None) is not
    written as a null-typed column that later appends could not extend."""
    return pa.Table.from_pandas(frame[CELLS_COLUMNS], schema=CELLS_SCHEMA, preserve_index=False)


# ----------------------------------------------------------------------------- interpolation

#: ``split``: ``test`` on every configured period; ``validation`` on the MIDDLE periods (strictly between
#: the ends), where the α-selection protocols (:mod:`timevec.adapt.selection`) choose α.
INTERPOLATION_COLUMNS = ["task", "granularity", "first", "last", "alpha", "test_period", "split", "metric", "value",
                         "higher_is_better"]
INTERPOLATION_KEY = ["task", "granularity", "first", "last", "alpha", "test_period", "split"]
INTERPOLATION_BEST_COLUMNS = [
    "task", "granularity", "first", "last", "test_period", "metric", "higher_is_better",
    "best_alpha", "best_value", "value_alpha0", "value_alpha1",
    "gain_vs_first", "gain_vs_last", "gain_vs_first_pct", "gain_vs_last_pct", "beats_both_ends",
    "in_period_value", "gain_vs_in_period", "gain_vs_in_period_pct",
    "latest_period", "latest_value", "gain_vs_latest", "gain_vs_latest_pct", "beats_latest",
    "previous_period", "previous_value", "gain_vs_previous", "gain_vs_previous_pct",
    "base_value", "selected_on",
]


def interpolation_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a frame with exactly :data:`INTERPOLATION_COLUMNS` and fixed dtypes (appendable)."""
    frame = pd.DataFrame(list(rows), columns=INTERPOLATION_COLUMNS)
    frame["split"] = frame["split"].astype(object).fillna("test")  # a row that names no split is a test value
    return frame.astype({"alpha": "float64", "value": "float64", "higher_is_better": "bool"})


@overload
def with_split(frame: None, default: str = ...) -> None: ...
@overload
def with_split(frame: pd.DataFrame, default: str = ...) -> pd.DataFrame: ...
def with_split(frame: pd.DataFrame | None, default: str = "test") -> pd.DataFrame | None:
    """A table written before it had a ``split`` column (every row was a test value), with one.

    Interpolation tables before the selection protocols held test rows only; analogy grids before
    the scaled-alone points were recorded held analogy points only (``method`` filled likewise).
    """
    if frame is None or ("split" in frame and frame["split"].notna().all()):
        return frame
    if "split" in frame:
        return frame.assign(split=frame["split"].fillna(default))
    frame = frame.copy()
    frame.insert(frame.columns.get_loc("metric"), "split", default)
    return frame


INTERPOLATION_PROTOCOL_COLUMNS = [
    "task", "granularity", "first", "last", "test_period", "method", "selection", "alpha", "metric",
    "higher_is_better", "value", "gain_vs_latest", "gain_vs_latest_pct", "gain_vs_first", "beats_both_ends",
    "gain_vs_midpoint", "gain_vs_midpoint_pct", "gain_vs_uniform_soup", "gain_vs_uniform_soup_pct", "note",
]


# ----------------------------------------------------------------------------- soups and patching

SOUP_COLUMNS = [
    "task", "granularity", "period", "method", "members", "n_members", "split", "metric", "value",
    "higher_is_better", "gain",
]
PATCHING_COLUMNS = [
    "task", "granularity", "period", "method", "members", "split", "metric", "value", "higher_is_better", "gain",
]


def soup_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=SOUP_COLUMNS)
    return frame.astype({"n_members": "int64", "value": "float64", "higher_is_better": "bool", "gain": "float64"})


def patching_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=PATCHING_COLUMNS)
    return frame.astype({"value": "float64", "higher_is_better": "bool", "gain": "float64"})


# ----------------------------------------------------------------------------- forecasting

#: ``selection``: "past-only" (nothing of the held-out periods was seen) or "oracle" (in_period: the
#: target's own vector). ``horizon``: δ, target − latest past period in periods. ``history``: the
#: past periods the row's weights were built from, comma-joined. ``param``: λ (scaled_latest),
#: β (ema), m (trend), NaN otherwise. Gains are against ``latest`` on the same target, positive = better.
FORECAST_COLUMNS = [
    "task", "granularity", "method", "selection", "target_period", "horizon", "history", "param", "split",
    "metric", "value", "higher_is_better", "gain_vs_latest", "gain_vs_latest_pct",
    "gain_vs_latest_low", "gain_vs_latest_high", "gain_vs_latest_pct_low", "gain_vs_latest_pct_high",
]
FORECAST_KEY = ["task", "granularity", "method", "target_period", "horizon", "history"]


def forecast_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows of :data:`FORECAST_COLUMNS` as a frame with fixed dtypes (appendable)."""
    frame = pd.DataFrame(list(rows), columns=FORECAST_COLUMNS)
    return frame.astype({"horizon": "int64", "param": "float64", "value": "float64", "higher_is_better": "bool",
                         "gain_vs_latest": "float64", "gain_vs_latest_pct": "float64", "gain_vs_latest_low": "float64",
                         "gain_vs_latest_high": "float64", "gain_vs_latest_pct_low": "float64",
                         "gain_vs_latest_pct_high": "float64"})


# ----------------------------------------------------------------------------- task analogy

#: ``method``: ``analogy`` (a grid point) or ``task_j_scaled`` (α₁·τ_task(j) alone, α₂ = α₃ = 0), so that
#: either can be selected on one pair and applied to another (past-only selection).
ANALOGY_COLUMNS = ["task", "source_period", "target_period", "method", "alpha1", "alpha2", "alpha3", "split", "metric",
                   "value"]
ANALOGY_BEST_COLUMNS = [
    "task", "source_period", "target_period", "method", "alpha1", "alpha2", "alpha3", "split", "metric", "value",
    "higher_is_better", "vector", "note",
]
#: The methods of ``analogy_best``: the analogy's best point and every baseline it is compared with.
ANALOGY_METHODS = ("base", "task_j", "task_j_scaled", "latest", "in_period", "analogy")


def analogy_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows of :data:`ANALOGY_COLUMNS` as a frame with fixed dtypes (``method`` defaults to ``analogy``)."""
    frame = pd.DataFrame(list(rows), columns=ANALOGY_COLUMNS)
    frame["method"] = frame["method"].fillna("analogy")
    return frame.astype({"alpha1": "float64", "alpha2": "float64", "alpha3": "float64", "value": "float64"})


ANALOGY_PROTOCOL_COLUMNS = [
    "task", "source_period", "target_period", "method", "selection", "chosen_on", "alpha1", "alpha2", "alpha3",
    "metric", "higher_is_better", "value", "gain_vs_task_j", "gain_vs_task_j_scaled", "gain_vs_latest", "note",
]


def analogy_best_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=ANALOGY_BEST_COLUMNS)
    return frame.astype({"alpha1": "float64", "alpha2": "float64", "alpha3": "float64", "value": "float64",
                         "higher_is_better": "bool"})


# ----------------------------------------------------------------------------- merge methods

#: One (task, granularity, combination, merge method, test period). ``combination``: ``uniform_soup``
#: (every stored vector, weight 1/n) or ``midpoint`` (½·τ_first + ½·τ_last); ``method``:
#: :attr:`timevec.weights.merging.MergeMethod.label`; ``gain_vs_task_arithmetic``: :func:`timevec.evaluate.gains.gain`
#: of the value against task arithmetic's on the same combination and period (0 on its own rows).
MERGE_METHODS_COLUMNS = ["task", "granularity", "combination", "method", "period", "metric", "value", "gain_vs_task_arithmetic"]


def merge_methods_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows of :data:`MERGE_METHODS_COLUMNS` as a frame with fixed dtypes."""
    frame = pd.DataFrame(list(rows), columns=MERGE_METHODS_COLUMNS)
    return frame.astype({"value": "float64", "gain_vs_task_arithmetic": "float64"})


# ----------------------------------------------------------------------------- parameter groups

#: Where in the weights time lives (:mod:`timevec.analyze.weight_groups`, :mod:`timevec.adapt.group_swaps`). ``scope``:
#: ``all`` (the whole vector), ``group`` (``part`` is one of :data:`timevec.param_groups.GROUPS`) or
#: ``layer`` (``part`` is ``"3"`` or ``"encoder.3"``: every group of that layer).
#: One (vector, part): |τ| on the part, its share of |τ|², the part's share of the parameters.
GROUP_NORMS_COLUMNS = ["task", "period", "scope", "part", "n_tensors", "n_params", "norm", "norm_sq_share",
                       "param_share"]
#: One pair of vectors on one part; ``centred``: within (task, granularity), on its mean τ.
GROUP_SIMILARITY_COLUMNS = ["scope", "part", "centred", "task_a", "period_a", "task_b", "period_b", "cosine"]
#: r(cosine on the part, degradation_pct) as :func:`timevec.analyze.similarity.correlate` computes it; the
#: pooled row over every task has task = granularity = metric = "all".
GROUP_SIM_DEG_COLUMNS = ["scope", "part", "centred", "task", "granularity", "metric", "n", "pearson_r", "pearson_p",
                         "pearson_low", "pearson_high", "spearman_rho", "spearman_p", "reason"]
#: θ_pre + τ_j with group G taken from τ_k, on k's test split. ``value_source``/``value_target``: τ_j / τ_k
#: on k; ``gap_share`` = gain(value, value_source) / gain(value_target, value_source) (:mod:`timevec.evaluate.gains`):
#: the share of the gap between τ_j and the in-period τ_k that group G closes (1: all of it);
#: ``gap_share_low``/``high``: its paired bootstrap interval over k's test examples (NaN: bootstrap off).
GROUP_SWAPS_COLUMNS = ["task", "granularity", "source_period", "target_period", "group", "n_tensors", "metric",
                       "value", "low", "high", "higher_is_better", "value_source", "value_target", "gain_vs_source",
                       "gap_share", "gap_share_low", "gap_share_high"]
GROUP_SWAPS_KEY = ["task", "granularity", "source_period", "target_period", "group"]


def group_norms_frame(rows: Iterable[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    frame = pd.DataFrame(rows if isinstance(rows, pd.DataFrame) else list(rows), columns=GROUP_NORMS_COLUMNS)
    return frame.astype({"n_tensors": "int64", "n_params": "int64", "norm": "float64", "norm_sq_share": "float64",
                         "param_share": "float64"})


def group_similarity_frame(rows: Iterable[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    frame = rows[GROUP_SIMILARITY_COLUMNS] if isinstance(rows, pd.DataFrame) else pd.DataFrame(
        list(rows), columns=GROUP_SIMILARITY_COLUMNS)
    return frame.astype({"centred": "bool", "cosine": "float64"}).reset_index(drop=True)


def group_sim_deg_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=GROUP_SIM_DEG_COLUMNS)
    return frame.astype({"centred": "bool", "n": "int64", "pearson_r": "float64", "pearson_p": "float64",
                         "pearson_low": "float64", "pearson_high": "float64", "spearman_rho": "float64",
                         "spearman_p": "float64"})


def group_swaps_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=GROUP_SWAPS_COLUMNS)
    return frame.astype({"n_tensors": "int64", "value": "float64", "low": "float64", "high": "float64",
                         "higher_is_better": "bool", "value_source": "float64", "value_target": "float64",
                         "gain_vs_source": "float64", "gap_share": "float64", "gap_share_low": "float64",
                         "gap_share_high": "float64"})


# ----------------------------------------------------------------------------- time probes

#: One (model, layer, pooling, probe). ``model``: ``base`` or ``task/period``; ``layer``: index into
#: ``output_hidden_states`` (0 = embeddings); ``pooling``: ``last`` | ``mean``; ``probe``: ``own`` (refitted
#: on this model's features) or ``base`` (θ_pre's probe applied to them; tuned models only). ``r2``,
#: ``spearman``: on the held-out texts' fractional-year dates. ``mean_shift``, ``shift_toward``,
#: ``shift_toward_other`` (``base`` rows only, years): the base probe's predictions on the tuned model
#: minus on θ_pre — the mean, the mean signed toward the model's own period, and toward the others.
PROBE_COLUMNS = ["model", "task", "train_period", "layer", "pooling", "probe", "alpha", "n_train", "n_test", "r2",
                 "spearman", "mean_shift", "shift_toward", "shift_toward_other"]


def probe_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows of :data:`PROBE_COLUMNS` as a frame with fixed dtypes."""
    frame = pd.DataFrame(list(rows), columns=PROBE_COLUMNS)
    return frame.astype({"layer": "int64", "alpha": "float64", "n_train": "int64", "n_test": "int64", "r2": "float64",
                         "spearman": "float64", "mean_shift": "float64", "shift_toward": "float64",
                         "shift_toward_other": "float64"})


__all__ += ["PROBE_COLUMNS", "PROBE_TABLE", "probe_frame"]


# ----------------------------------------------------------------------------- continual updating and forgetting

#: One (task, granularity, mode, test period s, train period t ≥ s) of :mod:`timevec.analyze.forgetting`. ``mode``:
#: continual | independent | merged; ``lag``: t − s in periods; ``value_at_learning``: the same mode's score
#: on s after learning s; ``forgetting``: −gain(value, value_at_learning) (positive = worse than when
#: learned; ``_pct``: in % of it); ``in_period_value``: the independent τ_s on s; ``gap_to_in_period_pct``:
#: −gain_pct(value, in_period_value).
FORGETTING_COLUMNS = [
    "task", "granularity", "mode", "test_period", "train_period", "lag", "metric", "higher_is_better", "value",
    "value_at_learning", "forgetting", "forgetting_pct", "in_period_value", "gap_to_in_period_pct",
]


def forgetting_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows of :data:`FORGETTING_COLUMNS` as a frame with fixed dtypes."""
    frame = pd.DataFrame(list(rows), columns=FORGETTING_COLUMNS)
    return frame.astype({"lag": "int64", "higher_is_better": "bool", "value": "float64", "value_at_learning": "float64",
                         "forgetting": "float64", "forgetting_pct": "float64", "in_period_value": "float64",
                         "gap_to_in_period_pct": "float64"})


# ----------------------------------------------------------------------------- the table registry


@dataclass(frozen=True)
class Table:
    """One result table, declared once: its name, who writes it (a stage of :mod:`timevec.stages`, or a command),
    its columns (None: the analysis module that builds it owns them) and the columns that identify a row (None:
    not declared); readers that sort or de-duplicate rows (``bench/compare_tables.py``) take the key from here."""

    name: str
    written_by: str
    columns: tuple[str, ...] | None = None
    key: tuple[str, ...] | None = None


def _declare(*tables: Table) -> dict[str, Table]:
    return {table.name: table for table in tables}


TABLES: dict[str, Table] = _declare(
    Table(CELLS_TABLE, "evaluate", tuple(CELLS_COLUMNS), tuple(CELL_KEY)),
    Table(INTERPOLATION_TABLE, "interpolate", tuple(INTERPOLATION_COLUMNS), tuple(INTERPOLATION_KEY)),
    Table(INTERPOLATION_BEST_TABLE, "interpolate", tuple(INTERPOLATION_BEST_COLUMNS),
          ("task", "granularity", "first", "last", "test_period")),
    Table(SOUPS_TABLE, "interpolate", tuple(SOUP_COLUMNS), ("task", "granularity", "period", "method", "split")),
    Table(PATCHING_TABLE, "interpolate", tuple(PATCHING_COLUMNS), ("task", "granularity", "period", "method", "split")),
    Table(FORECAST_TABLE, "forecast", tuple(FORECAST_COLUMNS), tuple(FORECAST_KEY)),
    Table(ANALOGY_TABLE, "analogy", tuple(ANALOGY_COLUMNS),
          ("task", "source_period", "target_period", "method", "alpha1", "alpha2", "alpha3", "split")),
    Table(ANALOGY_BEST_TABLE, "analogy", (*ANALOGY_BEST_COLUMNS, "experiment"),  # + the Tune experiment it came from
          ("task", "source_period", "target_period", "method", "split")),
    Table(GROUP_SWAPS_TABLE, "groups", tuple(GROUP_SWAPS_COLUMNS), tuple(GROUP_SWAPS_KEY)),
    Table(MERGED_CELLS_TABLE, "forgetting", tuple(CELLS_COLUMNS), tuple(CELL_KEY)),
    Table(FORGETTING_TABLE, "forgetting", tuple(FORGETTING_COLUMNS),
          ("task", "granularity", "mode", "test_period", "train_period")),
    Table(INTERPOLATION_PROTOCOLS_TABLE, "analyze", tuple(INTERPOLATION_PROTOCOL_COLUMNS)),
    Table(ANALOGY_PROTOCOLS_TABLE, "analyze", tuple(ANALOGY_PROTOCOL_COLUMNS)),
    Table(GROUP_NORMS_TABLE, "analyze", tuple(GROUP_NORMS_COLUMNS)),
    Table(GROUP_SIMILARITY_TABLE, "analyze", tuple(GROUP_SIMILARITY_COLUMNS)),
    Table(GROUP_SIM_DEG_TABLE, "analyze", tuple(GROUP_SIM_DEG_COLUMNS)),
    *(Table(name, "analyze") for name in (RELATIVE_CHANGE_TABLE, DIAGONAL_TABLE, DECAY_BY_GAP_TABLE, DECAY_FIT_TABLE,
                                          STRIPES_TABLE, SIMILARITY_TABLE, SIMILARITY_CENTRED_TABLE, FINDINGS_TABLE)),
    Table(PROBE_TABLE, "timevec probe", tuple(PROBE_COLUMNS)),
    Table(MERGE_METHODS_TABLE, "bench/merge_methods.py --write", tuple(MERGE_METHODS_COLUMNS)),
)


#: The numbers behind one figure of the report: ``fig_<figure>``, columns the figure's own.
FIGURE_TABLE_PREFIX = "fig_"


def table(name: str) -> Table:
    """The declaration of table ``name`` (a ``fig_<figure>`` table: the report's); an unknown name is one clear
    error naming the known ones."""
    if name in TABLES:
        return TABLES[name]
    if name.startswith(FIGURE_TABLE_PREFIX) and len(name) > len(FIGURE_TABLE_PREFIX):
        return Table(name, "report")
    raise ValueError(f"unknown result table {name!r}; the tables: {', '.join(sorted(TABLES))} and fig_<figure>")


__all__ += ["FIGURE_TABLE_PREFIX", "TABLES", "Table", "table"]
