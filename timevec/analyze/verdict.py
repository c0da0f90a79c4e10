"""The verdict at a glance: the paper's findings one row each, and ONE table of every adaptation
against the latest vector.

Both are read off the findings table (:func:`timevec.analyze.findings.findings_table`, or the same
columns over seeds from :func:`timevec.train.replicates.findings_over_seeds`): no number is computed
again here, the rows are only grouped and put into words.

- :func:`paper_findings`: one row per finding, ``holds`` yes (every panel yes), no (every panel
  no) or unclear, the panels' verdicts counted, and WHY it is not settled in words: the interval
  includes the line, or there is no interval because of one target period / one middle period /
  no spread at all (:func:`no_interval_reason`).
- :func:`adaptation_vs_latest`: rows = method × how α was chosen (oracle, past-only), columns =
  tasks, each cell the mean gain over the latest vector with its 95 % interval (> 0: better than
  the latest vector). The averaging controls (midpoint α, uniform soup) stay in the full table.

:func:`format_verdict` writes both as plain text (the terminal); :mod:`timevec.report.page` draws
them in HTML. Torch-free and Ray-free.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import pandas as pd

from timevec.analyze.findings import COMPLETED, MATRIX_FINDINGS, PAPER_CLAIMS, PROTOCOL_WORDS, text_table, verdict

__all__ = ["ADAPTATION_FINDINGS", "adaptation_cells", "adaptation_vs_latest", "cell_text", "format_verdict", "gain_side",
           "no_interval_reason", "paper_findings"]

#: the findings that make up the adaptation table (and are left out of the findings block) -> method
ADAPTATION_FINDINGS = {"interpolation vs latest vector": "interpolation", "analogy vs latest vector": "analogy",
                       "forecast vs latest vector": "forecast"}

#: a panel's protocol words -> (how α was chosen, the protocol) for the adaptation table; None: a control
_SELECTION = {PROTOCOL_WORDS["oracle"]: ("oracle", ""),
              PROTOCOL_WORDS["time_proportional"]: ("past-only", "time-proportional"),
              PROTOCOL_WORDS["leave_one_out"]: ("past-only", "leave-one-out"),
              PROTOCOL_WORDS["past_only"]: ("past-only", ""),
              PROTOCOL_WORDS["midpoint"]: None, PROTOCOL_WORDS["uniform_soup"]: None}

#: finding -> (the count in its note, the thing counted); the notes are written by timevec.analyze.findings
_COUNTS: dict[str, tuple[str, str]] = {
    "forecast vs latest vector": (r"(\d+) target\(s\)", "target period"),
    "interpolation vs latest vector": (r"over (\d+) middle period", "middle period"),
    "interpolation vs midpoint": (r"over (\d+) middle period", "middle period"),  # counted on its sibling row
    "analogy vs τ_task(j)": (r"(\d+) \(j, k\) pair", "(j, k) pair"),
    "analogy vs τ_task(j) scaled": (r"(\d+) \(j, k\) pair", "(j, k) pair"),
    "analogy vs latest vector": (r"(\d+) \(j, k\) pair", "(j, k) pair"),
    "decay with the gap": (r"n (\d+) cells", "cell"),
    "cosine vs degradation": (r"n (\d+) cells", "cell"),
}


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _count(row: dict[str, Any], findings: pd.DataFrame | None) -> int | None:
    pattern, _ = _COUNTS.get(row["finding"], ("", ""))
    if not pattern:
        return None
    note = str(row.get("note", ""))
    if row["finding"] == "interpolation vs midpoint" and findings is not None:  # its note has no count
        sibling = findings.loc[(findings["finding"] == "interpolation vs latest vector") & (findings["panel"] == row["panel"])]
        note = str(sibling["note"].iloc[0]) if len(sibling) else ""
    hit = re.search(pattern, note)
    return int(hit.group(1)) if hit else None


def no_interval_reason(row: dict[str, Any], findings: pd.DataFrame | None = None, counted: bool = True) -> str:
    """Why a findings row has no interval, in words (``""`` when it has one).

    No estimate: the row's note (the reason it could not be computed). One unit of data: "one
    target period", "one middle period", "one (j, k) pair". Several but no interval: every value
    the same, so there is no spread to draw one from (``counted``: say over how many). Over seeds
    (an ``n_seeds`` column) the count is the seeds'. ``findings``:
    the whole table, where a row counts its periods on a sibling row (``interpolation vs midpoint``).
    """
    if not (_nan(row.get("low")) or _nan(row.get("high"))):
        return ""
    if _nan(row.get("estimate")):
        return str(row.get("note") or "not computable")
    if not _nan(row.get("n_seeds")):  # over seeds (timevec.train.replicates): the interval is over the seeds
        n, noun = int(row["n_seeds"]), "seed"
    else:
        count, noun = _count(row, findings), _COUNTS.get(row["finding"], ("", "value"))[1]
        n = count if count is not None else 0
    if n == 1:
        return f"one {noun}"
    if n == 0:
        return "no data"
    if n is None:
        return "no interval"
    return f"no spread over {n} {noun}s" if counted else "no spread: every value the same"


def _line_words(row: dict[str, Any]) -> str:
    line = float(row.get("line", 0.0))
    if row["unit"] == "share":
        return ("chance " if row["finding"] == "own period best" else "") + f"{line:.0%}"
    return f"{line:g}"


def _why(row: dict[str, Any], findings: pd.DataFrame | None) -> str:
    """Why one panel is neither yes nor no (``""`` when it is)."""
    if row["holds"] in ("yes", "no"):
        return ""
    return no_interval_reason(row, findings, counted=False) or f"interval includes {_line_words(row)}"


def _short_panel(panel: str) -> str:
    return panel.split(" · ")[0] if " · " in panel else panel


def paper_findings(findings: pd.DataFrame) -> pd.DataFrame:
    """One row per finding (in the paper's order), the adaptation-vs-latest ones left to their table.

    Columns: ``finding``, ``paper`` (the paper's result in a few words), ``holds`` (yes: every panel
    with a verdict says yes; no: every one says no; unclear otherwise), ``panels`` (the verdicts
    counted) and ``why`` (for the panels that are not yes/no: the reason, with the panel when only
    one has it).
    """
    rows = []
    records = findings.to_dict("records")
    for finding in PAPER_CLAIMS:
        if finding in ADAPTATION_FINDINGS:
            continue
        panels = [r for r in records if r["finding"] == finding]
        if not panels:
            continue
        counts = Counter(str(r["holds"]) for r in panels)
        settled = {h for h in counts if h != "n/a"}
        holds = next(iter(settled)) if len(settled) == 1 and settled <= {"yes", "no"} else "unclear"
        reasons: dict[str, list[str]] = {}
        for r in panels:
            why = _why(r, findings)
            if why:
                reasons.setdefault(why, []).append(_short_panel(str(r["panel"])))
        if holds == "unclear" and settled >= {"yes", "no"}:
            reasons = {f"panels disagree ({counts['yes']} yes, {counts['no']} no)": [], **reasons}
        why = "; ".join(
            reason if not where else f"{reason} ({where[0]})" if len(set(where)) == 1 else f"{reason} ({len(where)} panels)"
            for reason, where in reasons.items()
        )
        rows.append({"finding": finding, "paper": PAPER_CLAIMS[finding][0], "holds": holds,
                     "panels": ", ".join(f"{n} {h}" for h, n in counts.most_common()), "why": why})
    return pd.DataFrame(rows, columns=["finding", "paper", "holds", "panels", "why"])


def gain_side(low: float, high: float) -> str:
    """``better`` / ``worse`` than the latest vector (the whole interval above / below 0), else ``unclear``."""
    return {"yes": "better", "no": "worse"}[v] if (v := verdict(low, high, 0.0, "above")) != "unclear" else "unclear"


def _adaptation_row(r: dict[str, Any]) -> tuple[str, str, str] | None:
    """(method, how α was chosen, task) of a findings row of :data:`ADAPTATION_FINDINGS`; None for a control."""
    method, panel = ADAPTATION_FINDINGS[r["finding"]], str(r["panel"])
    if method == "forecast":  # "<task> <forecast method>", always past-only
        task, _, name = panel.partition(" ")
        return f"forecast: {name}", "past-only", task
    where, _, words = panel.partition(" · ")
    chosen = _SELECTION.get(words)
    if chosen is None:
        return None
    how, protocol = chosen
    if method == "analogy":
        return "analogy", how, where
    task, _, span = where.partition("/")  # "<task>/<granularity> <first>→<last>"
    return f"interpolation {span}", (f"{how} ({protocol})" if protocol else how), task


def adaptation_vs_latest(findings: pd.DataFrame) -> pd.DataFrame:
    """Every adaptation against the latest vector, one row per (method, α chosen, task).

    Columns: ``method``, ``alpha`` (oracle / past-only), ``task``, ``estimate``, ``low``, ``high``,
    ``unit``, ``measured`` (the findings table's text: gain [interval] unit), ``side``
    (:func:`gain_side`) and ``why`` (why there is no interval, in words). Pivot on ``task`` for
    the table a reader sees (:func:`format_verdict`, the report).
    """
    rows = []
    for r in findings.to_dict("records"):
        if r["finding"] not in ADAPTATION_FINDINGS:
            continue
        key = _adaptation_row(r)
        if key is None:
            continue
        method, how, task = key
        rows.append({"method": method, "alpha": how, "task": task, "estimate": r["estimate"], "low": r["low"],
                     "high": r["high"], "unit": r["unit"], "measured": r["measured"],
                     "side": gain_side(float(r["low"]), float(r["high"])), "why": no_interval_reason(r, findings)})
    columns = ["method", "alpha", "task", "estimate", "low", "high", "unit", "measured", "side", "why"]
    return pd.DataFrame(rows, columns=columns)


def adaptation_cells(table: pd.DataFrame) -> tuple[list[tuple[str, str]], list[str], dict[tuple[str, str, str], dict[str, Any]]]:
    """The adaptation table laid out: row keys (method, α chosen) in order, the tasks, and each cell's record."""
    rows = list(dict.fromkeys(zip(table["method"], table["alpha"])))
    tasks = list(dict.fromkeys(table["task"]))
    cells = {(r["method"], r["alpha"], r["task"]): r for r in table.to_dict("records")}
    return rows, tasks, cells


def cell_text(record: dict[str, Any] | None) -> str:
    """``+0.03 [-1.25, +1.30] %``, with the reason when there is no interval, ``-`` for no cell."""
    if record is None:
        return "-"
    why = record["why"]
    if why and not str(record["measured"]).startswith("n/a"):
        return f"{record['measured']} ({why})"
    return str(record["measured"])


_MARK = {"better": "▲ ", "worse": "▼ ", "unclear": "  "}


def format_verdict(findings: pd.DataFrame, full_table: str | None = None) -> str:
    """The verdict block as plain text: the paper's findings, then the adaptation table.

    ``full_table``: where the full findings table is (a path), named in the block's first line.
    """
    if findings.empty:
        return "Verdict: no findings — the store holds no cells yet"
    where = f"; all {len(findings)} rows: {full_table}" if full_table else ""
    lines = [f"Verdict (95 % intervals over this run's test periods and cells{where})", ""]
    noted = [m.group(0) for m in findings["note"].fillna("").astype(str).map(lambda n: re.search(f"{COMPLETED}: [^;]*", n))
             if m]
    if noted:  # the findings read off the matrix used estimated cells: say so before any of them
        lines[1:1] = [f"On a {noted[0]}: the findings {', '.join(MATRIX_FINDINGS)} are read off it"]
    paper = paper_findings(findings)
    lines += text_table(["the paper's finding", "the paper", "holds", "panels", "why not settled"],
                         [[r["finding"], r["paper"], r["holds"], r["panels"], r["why"]] for r in paper.to_dict("records")])
    table = adaptation_vs_latest(findings)
    if len(table):
        rows, tasks, cells = adaptation_cells(table)
        lines += ["", "Adaptation vs the latest vector: gain [95 % interval] (> 0 = better than the latest vector; "
                  "▲/▼ the interval is above/below 0)"]
        body = []
        for method, how in rows:
            texts = []
            for task in tasks:
                record = cells.get((method, how, task))
                texts.append((_MARK[record["side"]] if record else "  ") + cell_text(record))
            body.append([method, how, *texts])
        lines += text_table(["method", "α chosen", *tasks], body)
    return "\n".join(lines)
