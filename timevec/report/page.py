"""The self-contained HTML page: the verdict at a glance first (the paper's findings one row each, the
adaptation-vs-latest table, coloured; :mod:`timevec.analyze.verdict`), every findings row folded below
it, the figures by section, every raw number and full table folded at the end. No script, no
stylesheet link, no network."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from timevec.analyze import findings as findings_mod
from timevec.analyze import verdict as verdict_mod
from timevec.report.plotting import Figure, fmt

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#222}
h1{margin-bottom:0.2em} .meta{color:#666;font-size:0.9em}
table.headline{border-collapse:collapse;margin:1em 0;font-size:0.9em}
table.headline td,table.headline th{border:1px solid #ccc;padding:3px 8px;text-align:left}
table.headline td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.holds-yes td:nth-child(5){color:#1a7f37;font-weight:600} tr.holds-no td:nth-child(5){color:#cf222e;font-weight:600}
td.better{background:#dafbe1} td.worse{background:#ffebe9} td.unclear{background:#f6f8fa;color:#555}
td.holds-yes{color:#1a7f37;font-weight:600} td.holds-no{color:#cf222e;font-weight:600} td.nowrap{white-space:nowrap}
details{margin:0.6em 0} summary{cursor:pointer}
figure{margin:2em 0;border-top:1px solid #eee;padding-top:1em}
figure img{max-width:100%;height:auto;display:block}
figcaption{color:#444;font-size:0.9em;margin-top:0.5em} code{font-size:0.9em}
"""


def verdict_html(findings: pd.DataFrame) -> list[str]:
    """The verdict at a glance: the paper's findings one row each, then the adaptation-vs-latest table."""
    e = html.escape
    parts = ['<h2 id="verdict">Verdict</h2>',
             '<p class="meta">Each finding of Nylund et al. (2023) as measured here, with 95 % intervals over this '
             "run's test periods and cells. <b>holds</b>: yes = every panel's interval is on the paper's side, "
             "no = every one on the other side, unclear otherwise (why: in words).</p>",
             '<table class="headline" id="verdict-findings"><thead><tr><th>the paper\'s finding</th><th>the paper</th>'
             "<th>holds?</th><th>panels</th><th>why not settled</th></tr></thead><tbody>"]
    for r in verdict_mod.paper_findings(findings).to_dict("records"):
        claim = findings_mod.PAPER_CLAIMS[r["finding"]][1]
        parts.append(f'<tr><td>{e(r["finding"])}</td><td title="{e(claim)}">{e(r["paper"])}</td>'
                     f'<td class="holds-{e(r["holds"])}">{e(r["holds"])}</td><td class="nowrap">{e(r["panels"])}</td>'
                     f'<td>{e(r["why"])}</td></tr>')
    parts.append("</tbody></table>")
    table = verdict_mod.adaptation_vs_latest(findings)
    if len(table):
        rows, tasks, cells = verdict_mod.adaptation_cells(table)
        parts += ['<h3 id="adaptation">Adaptation vs the latest vector</h3>',
                  '<p class="meta">The adapted model\'s gain over the latest stored vector, mean [95 % interval] '
                  "(points of macro-F1/ROUGE-L, percent of perplexity; &gt; 0 = better than the latest vector). "
                  'Green: the whole interval above 0; red: below 0; grey: unclear. Oracle α is chosen on the target\'s '
                  "own labels (an upper bound); past-only α never reads them.</p>",
                  '<table class="headline" id="adaptation-table"><thead><tr><th>method</th><th>α chosen</th>'
                  + "".join(f"<th>{e(t)}</th>" for t in tasks) + "</tr></thead><tbody>"]
        for method, how in rows:
            tds = []
            for task in tasks:
                record = cells.get((method, how, task))
                side = record["side"] if record else "none"
                tds.append(f'<td class="num {side}">{e(verdict_mod.cell_text(record))}</td>')
            parts.append(f"<tr><td>{e(method)}</td><td>{e(how)}</td>{''.join(tds)}</tr>")
        parts.append("</tbody></table>")
    return parts


def findings_html(findings: pd.DataFrame) -> list[str]:
    """Every findings row (finding × panel), folded: the verdict above is its summary."""
    e = html.escape
    parts = [f'<details id="findings"><summary>Every finding per panel ({len(findings)} rows)</summary>',
             '<table class="headline" id="findings-table"><thead><tr><th>finding</th><th>panel</th>'
             "<th>measured [95 % interval]</th><th>the paper's</th><th>holds?</th><th>note</th></tr></thead><tbody>"]
    for r in findings.to_dict("records"):
        claim = findings_mod.PAPER_CLAIMS[r["finding"]][1]
        parts.append(f'<tr class="holds-{e(r["holds"])}"><td>{e(r["finding"])}</td><td>{e(r["panel"])}</td>'
                     f'<td class="num">{e(r["measured"])}</td><td title="{e(claim)}">{e(r["paper"])}</td>'
                     f'<td>{e(r["holds"])}</td><td>{e(str(r["note"]))}</td></tr>')
    parts.append("</tbody></table></details>")
    return parts


def folded_table(title: str, frame: pd.DataFrame) -> str:
    e = html.escape
    body = frame.to_html(index=False, border=0, classes="headline", na_rep="", float_format=lambda v: f"{v:.4g}")
    return f"<details><summary>{e(title)} ({len(frame)} rows)</summary>{body}</details>"


def page(title: str, findings: pd.DataFrame, head: Mapping[str, Any], figures: Sequence[Figure], generated: str,
          notes: Sequence[str], folded: Mapping[str, pd.DataFrame]) -> bytes:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{e(title)}</h1>",
             f'<p class="meta">Generated {e(generated)} by timevec. Every figure below has its '
             "data table in the store as <code>fig_&lt;name&gt;</code> (Parquet).</p>"]
    if findings.empty:
        parts.append("<p>No findings yet: the store holds no cells of trained vectors.</p>")
    else:
        parts.extend(verdict_html(findings))
        parts.extend(findings_html(findings))
    if notes:
        parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    if figures:
        parts.append("<h2>Contents</h2><ul>")
        for sec in dict.fromkeys(f.section for f in figures):
            names = ", ".join(f'<a href="#fig-{e(f.name)}">{e(f.name)}</a>' for f in figures if f.section == sec)
            parts.append(f"<li><b>{e(sec)}</b>: {names}</li>")
        parts.append('<li><a href="#tables">All numbers and tables</a></li></ul>')
    section = None
    for f in figures:
        if f.section != section:
            section = f.section
            parts.append(f"<h2>{e(section)}</h2>")
        data = base64.b64encode(f.png).decode("ascii")
        parts.append(f'<figure id="fig-{e(f.name)}"><img alt="{e(f.name)}" '
                     f'src="data:image/png;base64,{data}">'
                     f"<figcaption><b>{e(f.name)}</b> — {e(f.caption)} "
                     f"<span class=\"meta\">(table: <code>fig_{e(f.name)}</code>)</span>"
                     "</figcaption></figure>")
    parts.append('<h2 id="tables">All numbers and tables</h2>')
    parts.append('<details><summary>Headline numbers</summary><table class="headline" id="headline-table">'
                 "<thead><tr><th>finding</th><th>value</th></tr></thead><tbody>")
    for k, v in head.items():
        num = isinstance(v, (int, float)) and not isinstance(v, bool)
        cls = ' class="num"' if num else ""
        parts.append(f"<tr><td>{e(str(k))}</td><td{cls}>{e(fmt(v))}</td></tr>")
    parts.append("</tbody></table></details>")
    parts.extend(folded_table(name, frame) for name, frame in folded.items() if frame is not None and len(frame))
    parts.append("</body></html>")
    return "\n".join(parts).encode("utf-8")


