"""The result tables' names and schemas, and the few helpers every reader of them shares.

Each table's columns are declared once here, as an Arrow schema (:func:`schema`); the registry
(:mod:`timevec.results.registry`) says who writes each table and builds, writes and reads its rows
through that schema. Torch-free and Ray-free.
"""

from __future__ import annotations

from typing import overload

import pandas as pd
import pyarrow as pa

__all__ = [
    "CELLS_ADDED_COLUMNS",
    "CELLS_COLUMNS",
    "CELLS_SCHEMA",
    "CELL_KEY",
    "cell_values",
    "CELLS_TABLE",
    "CELL_EXAMPLES_SCHEMA",
    "CELL_EXAMPLES_TABLE",
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
    "ANALOGY_ADDED_COLUMNS",
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
    "MERGE_METHODS_COLUMNS",
    "MERGE_METHODS_TABLE",
    "PATCHING_COLUMNS",
    "PATCHING_TABLE",
    "SOUPS_TABLE",
    "SOUP_COLUMNS",
    "alpha_key",
    "FORGETTING_COLUMNS",
    "FORGETTING_TABLE",
    "MERGED_CELLS_TABLE",
]

#: A column's type in a schema spec (:func:`schema`): a bare name is a string column.
_TYPES = {"": pa.string(), "f64": pa.float64(), "i64": pa.int64(), "bool": pa.bool_(),
          "list<f64>": pa.list_(pa.float64()), "list<i64>": pa.list_(pa.int64()), "list<str>": pa.list_(pa.string())}


def schema(spec: str) -> pa.Schema:
    """``"task value:f64 n:i64 ok:bool"`` as an Arrow schema, in that order (a bare name: a string column)."""
    fields = []
    for token in spec.split():
        name, _, kind = token.partition(":")
        fields.append((name, _TYPES[kind]))
    return pa.schema(fields)


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
FINDINGS_SEEDS_TABLE = "findings_seeds"  # the verdict over replicate seeds (timevec.analyze.seeds)
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
CELLS_SCHEMA = schema(
    "task granularity vector train_period test_period metric value:f64 "
    "low:f64 high:f64 "  # the bootstrap interval of value (timevec.evaluate.bootstrap); NaN: none
    "halfwidth:f64 "  # its half-width: % of value (perplexity), points (macro-F1, ROUGE-L) (timevec.evaluate.sequential)
    "higher_is_better:bool n_examples:i64 n_tokens:i64 seconds:f64 "  # n_examples: the examples scored
    "estimated:bool"  # true: not evaluated, estimated by the complete stage (timevec.analyze.completion); low/high its interval
)
CELLS_COLUMNS = CELLS_SCHEMA.names
#: Columns added to the cells table after stores were first written (a store written before lacks
#: them): readers fill them with NaN (:func:`cells_frame`), appends add them to the old rows.
CELLS_ADDED_COLUMNS = ("low", "high", "halfwidth", "estimated")
#: What each cell's metric needs of every example it scored, in the split's seeded order: written by the
#: cells stage under ``evaluation.target_halfwidth`` (when cells may score different examples), so that two
#: cells are compared on the examples both scored (timevec.evaluate.per_example). One row per cell; the
#: lists its metric does not use are null (perplexity: loss, tokens; macro_f1: gold, pred; rougeL: score).
CELL_EXAMPLES_TABLE = "cell_examples"
CELL_EXAMPLES_SCHEMA = schema(
    "task granularity vector test_period metric n_examples:i64 "
    "loss:list<f64> tokens:list<i64> gold:list<str> pred:list<str> score:list<f64>"
)


def cell_values(cells: pd.DataFrame | None) -> dict[tuple[str, str, str, str], float]:
    """The evaluated cells as ``(task, granularity, source, test period) -> value``; source ``"base"`` or the
    train period; a cell written twice keeps its last value; estimated cells (the complete stage's) are left out.
    Empty for no cells."""
    if cells is None or cells.empty:
        return {}
    if "estimated" in cells:  # an estimate is never taken for a cell's value: a stage that needs it evaluates it
        cells = cells[~cells["estimated"].astype(object).fillna(False).astype(bool)]
    sources = cells["train_period"].where(cells["train_period"].notna(), "base").astype(str)
    keys = zip(cells["task"].astype(str), cells["granularity"].astype(str), sources, cells["test_period"].astype(str))
    return dict(zip(keys, cells["value"].astype(float)))


# ----------------------------------------------------------------------------- interpolation

#: ``split``: ``test`` on every configured period; ``validation`` on the MIDDLE periods (strictly between
#: the ends), where the α-selection protocols (:mod:`timevec.adapt.selection`) choose α.
INTERPOLATION_SCHEMA = schema(
    "task granularity first last alpha:f64 test_period split metric value:f64 higher_is_better:bool"
)
INTERPOLATION_COLUMNS = INTERPOLATION_SCHEMA.names
INTERPOLATION_KEY = ["task", "granularity", "first", "last", "alpha", "test_period", "split"]
INTERPOLATION_BEST_SCHEMA = schema(
    "task granularity first last test_period metric higher_is_better:bool best_alpha:f64 best_value:f64 "
    "value_alpha0:f64 value_alpha1:f64 gain_vs_first:f64 gain_vs_last:f64 gain_vs_first_pct:f64 "
    "gain_vs_last_pct:f64 beats_both_ends:bool in_period_value:f64 gain_vs_in_period:f64 "
    "gain_vs_in_period_pct:f64 latest_period latest_value:f64 gain_vs_latest:f64 gain_vs_latest_pct:f64 "
    "beats_latest:bool previous_period previous_value:f64 gain_vs_previous:f64 gain_vs_previous_pct:f64 "
    "base_value:f64 selected_on"
)
INTERPOLATION_BEST_COLUMNS = INTERPOLATION_BEST_SCHEMA.names


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


INTERPOLATION_PROTOCOL_SCHEMA = schema(
    "task granularity first last test_period method selection alpha:f64 metric higher_is_better:bool "
    "value:f64 gain_vs_latest:f64 gain_vs_latest_pct:f64 gain_vs_first:f64 beats_both_ends:bool "
    "gain_vs_midpoint:f64 gain_vs_midpoint_pct:f64 gain_vs_uniform_soup:f64 gain_vs_uniform_soup_pct:f64 "
    "note"
)
INTERPOLATION_PROTOCOL_COLUMNS = INTERPOLATION_PROTOCOL_SCHEMA.names


# ----------------------------------------------------------------------------- soups and patching

SOUP_SCHEMA = schema(
    "task granularity period method members n_members:i64 split metric value:f64 higher_is_better:bool "
    "gain:f64"
)
SOUP_COLUMNS = SOUP_SCHEMA.names
PATCHING_SCHEMA = schema(
    "task granularity period method members split metric value:f64 higher_is_better:bool gain:f64"
)
PATCHING_COLUMNS = PATCHING_SCHEMA.names


# ----------------------------------------------------------------------------- forecasting

#: ``selection``: "past-only" (nothing of the held-out periods was seen) or "oracle" (in_period: the
#: target's own vector). ``horizon``: δ, target − latest past period in periods. ``history``: the
#: past periods the row's weights were built from, comma-joined. ``param``: λ (scaled_latest),
#: β (ema), m (trend), NaN otherwise. Gains are against ``latest`` on the same target, positive = better.
FORECAST_SCHEMA = schema(
    "task granularity method selection target_period horizon:i64 history param:f64 split metric value:f64 "
    "higher_is_better:bool gain_vs_latest:f64 gain_vs_latest_pct:f64 gain_vs_latest_low:f64 "
    "gain_vs_latest_high:f64 gain_vs_latest_pct_low:f64 gain_vs_latest_pct_high:f64"
)
FORECAST_COLUMNS = FORECAST_SCHEMA.names
FORECAST_KEY = ["task", "granularity", "method", "target_period", "horizon", "history"]


# ----------------------------------------------------------------------------- task analogy

#: ``method``: ``analogy`` (a grid point) or ``task_j_scaled`` (α₁·τ_task(j) alone, α₂ = α₃ = 0), so that
#: either can be selected on one pair and applied to another (past-only selection).
#: ``validation_examples``: the validation examples the point was scored on (NaN: written before it was
#: recorded); ``stopped``: ASHA (``analogy.scheduler: asha``) stopped the point before the whole validation
#: split — its ``value`` is NaN on both splits (a partial validation value is never a result, and is never chosen).
ANALOGY_SCHEMA = schema(
    "task source_period target_period method alpha1:f64 alpha2:f64 alpha3:f64 split metric value:f64 "
    "validation_examples:f64 stopped:bool"
)
ANALOGY_COLUMNS = ANALOGY_SCHEMA.names
#: Columns of ``analogy`` added after stores were first written (older tables read as null / ``stopped`` false).
ANALOGY_ADDED_COLUMNS = ("validation_examples", "stopped")
ANALOGY_BEST_SCHEMA = schema(
    "task source_period target_period method alpha1:f64 alpha2:f64 alpha3:f64 split metric value:f64 "
    "higher_is_better:bool vector note "
    "experiment"  # the Tune experiment the row came from (timevec.distributed.analogy)
)
ANALOGY_BEST_COLUMNS = ANALOGY_BEST_SCHEMA.names
#: The methods of ``analogy_best``: the analogy's best point and every baseline it is compared with.
ANALOGY_METHODS = ("base", "task_j", "task_j_scaled", "latest", "in_period", "analogy")


ANALOGY_PROTOCOL_SCHEMA = schema(
    "task source_period target_period method selection chosen_on alpha1:f64 alpha2:f64 alpha3:f64 metric "
    "higher_is_better:bool value:f64 gain_vs_task_j:f64 gain_vs_task_j_scaled:f64 gain_vs_latest:f64 note"
)
ANALOGY_PROTOCOL_COLUMNS = ANALOGY_PROTOCOL_SCHEMA.names


# ----------------------------------------------------------------------------- merge methods

#: One (task, granularity, combination, merge method, test period). ``combination``: ``uniform_soup``
#: (every stored vector, weight 1/n) or ``midpoint`` (½·τ_first + ½·τ_last); ``method``:
#: :attr:`timevec.weights.merging.MergeMethod.label`; ``gain_vs_task_arithmetic``: :func:`timevec.evaluate.gains.gain`
#: of the value against task arithmetic's on the same combination and period (0 on its own rows).
MERGE_METHODS_SCHEMA = schema(
    "task granularity combination method period metric value:f64 gain_vs_task_arithmetic:f64"
)
MERGE_METHODS_COLUMNS = MERGE_METHODS_SCHEMA.names


# ----------------------------------------------------------------------------- parameter groups

#: Where in the weights time lives (:mod:`timevec.analyze.weight_groups`, :mod:`timevec.adapt.group_swaps`). ``scope``:
#: ``all`` (the whole vector), ``group`` (``part`` is one of :data:`timevec.param_groups.GROUPS`) or
#: ``layer`` (``part`` is ``"3"`` or ``"encoder.3"``: every group of that layer).
#: One (vector, part): |τ| on the part, its share of |τ|², the part's share of the parameters.
GROUP_NORMS_SCHEMA = schema(
    "task period scope part n_tensors:i64 n_params:i64 norm:f64 norm_sq_share:f64 param_share:f64"
)
GROUP_NORMS_COLUMNS = GROUP_NORMS_SCHEMA.names
#: One pair of vectors on one part; ``centred``: within (task, granularity), on its mean τ.
GROUP_SIMILARITY_SCHEMA = schema(
    "scope part centred:bool task_a period_a task_b period_b cosine:f64"
)
GROUP_SIMILARITY_COLUMNS = GROUP_SIMILARITY_SCHEMA.names
#: r(cosine on the part, degradation_pct) as :func:`timevec.analyze.similarity.correlate` computes it; the
#: pooled row over every task has task = granularity = metric = "all".
GROUP_SIM_DEG_SCHEMA = schema(
    "scope part centred:bool task granularity metric n:i64 pearson_r:f64 pearson_p:f64 pearson_low:f64 "
    "pearson_high:f64 spearman_rho:f64 spearman_p:f64 reason"
)
GROUP_SIM_DEG_COLUMNS = GROUP_SIM_DEG_SCHEMA.names
#: θ_pre + τ_j with group G taken from τ_k, on k's test split. ``value_source``/``value_target``: τ_j / τ_k
#: on k; ``gap_share`` = gain(value, value_source) / gain(value_target, value_source) (:mod:`timevec.evaluate.gains`):
#: the share of the gap between τ_j and the in-period τ_k that group G closes (1: all of it);
#: ``gap_share_low``/``high``: its paired bootstrap interval over k's test examples (NaN: bootstrap off).
GROUP_SWAPS_SCHEMA = schema(
    "task granularity source_period target_period group n_tensors:i64 metric value:f64 low:f64 high:f64 "
    "higher_is_better:bool value_source:f64 value_target:f64 gain_vs_source:f64 gap_share:f64 "
    "gap_share_low:f64 gap_share_high:f64"
)
GROUP_SWAPS_COLUMNS = GROUP_SWAPS_SCHEMA.names
GROUP_SWAPS_KEY = ["task", "granularity", "source_period", "target_period", "group"]


# ----------------------------------------------------------------------------- time probes

#: One (model, layer, pooling, probe). ``model``: ``base`` or ``task/period``; ``layer``: index into
#: ``output_hidden_states`` (0 = embeddings); ``pooling``: ``last`` | ``mean``; ``probe``: ``own`` (refitted
#: on this model's features) or ``base`` (θ_pre's probe applied to them; tuned models only). ``r2``,
#: ``spearman``: on the held-out texts' fractional-year dates. ``mean_shift``, ``shift_toward``,
#: ``shift_toward_other`` (``base`` rows only, years): the base probe's predictions on the tuned model
#: minus on θ_pre — the mean, the mean signed toward the model's own period, and toward the others.
PROBE_SCHEMA = schema(
    "model task train_period layer:i64 pooling probe alpha:f64 n_train:i64 n_test:i64 r2:f64 spearman:f64 "
    "mean_shift:f64 shift_toward:f64 shift_toward_other:f64"
)
PROBE_COLUMNS = PROBE_SCHEMA.names


__all__ += ["PROBE_COLUMNS", "PROBE_TABLE"]


# ----------------------------------------------------------------------------- continual updating and forgetting

#: One (task, granularity, mode, test period s, train period t ≥ s) of :mod:`timevec.analyze.forgetting`. ``mode``:
#: continual | independent | merged; ``lag``: t − s in periods; ``value_at_learning``: the same mode's score
#: on s after learning s; ``forgetting``: −gain(value, value_at_learning) (positive = worse than when
#: learned; ``_pct``: in % of it); ``in_period_value``: the independent τ_s on s; ``gap_to_in_period_pct``:
#: −gain_pct(value, in_period_value).
FORGETTING_SCHEMA = schema(
    "task granularity mode test_period train_period lag:i64 metric higher_is_better:bool value:f64 "
    "value_at_learning:f64 forgetting:f64 forgetting_pct:f64 in_period_value:f64 gap_to_in_period_pct:f64"
)
FORGETTING_COLUMNS = FORGETTING_SCHEMA.names


# ----------------------------------------------------------------------------- the analysis

#: The cells with their change against the test period's column mean (:func:`timevec.analyze.misalignment.relative_change`).
RELATIVE_CHANGE_SCHEMA = pa.schema([*CELLS_SCHEMA, *schema("column_mean:f64 pct_change:f64 degradation_pct:f64 gap:f64")])
DIAGONAL_SCHEMA = schema(
    "task granularity metric n_test_periods:i64 n_diagonal_best:i64 diagonal_share:f64 mean_diagonal_degradation_pct:f64 "
    "mean_offdiagonal_degradation_pct:f64 best_not_own n_separated:i64 separated"
)
DECAY_BY_GAP_SCHEMA = schema("task granularity metric abs_gap:i64 mean_degradation_pct:f64 std_degradation_pct:f64 n:i64")
DECAY_FIT_SCHEMA = schema(
    "task granularity metric slope:f64 slope_low:f64 slope_high:f64 intercept:f64 r2:f64 r:f64 p:f64 stderr:f64 n:i64 "
    "n_gaps:i64 max_gap:i64 reason"
)
STRIPES_SCHEMA = schema(
    "task granularity metric stripe_gaps n_stripe:i64 n_other:i64 mean_stripe:f64 mean_other:f64 difference:f64 "
    "low:f64 high:f64 t:f64 p:f64 window:i64 reason"
)
#: One pair of vectors (:mod:`timevec.analyze.similarity`); ``similarity_centred``: on their (task, granularity) mean τ.
SIMILARITY_SCHEMA = schema("task_a period_a task_b period_b cosine:f64")
#: One finding of the verdict (:mod:`timevec.analyze.findings`); ``findings_seeds``: over replicate seeds, + ``n_seeds``.
FINDINGS_SCHEMA = schema("finding panel estimate:f64 low:f64 high:f64 unit measured paper holds note line:f64 side")
FINDINGS_COLUMNS = FINDINGS_SCHEMA.names
FINDINGS_SEEDS_SCHEMA = pa.schema([*FINDINGS_SCHEMA, *schema("n_seeds:i64")])

__all__ += ["DECAY_BY_GAP_SCHEMA", "DECAY_FIT_SCHEMA", "DIAGONAL_SCHEMA", "FINDINGS_COLUMNS", "FINDINGS_SCHEMA",
            "FINDINGS_SEEDS_SCHEMA", "FINDINGS_SEEDS_TABLE", "RELATIVE_CHANGE_SCHEMA", "SIMILARITY_SCHEMA",
            "STRIPES_SCHEMA", "schema"]
