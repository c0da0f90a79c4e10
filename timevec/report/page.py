"""The self-contained HTML page: the findings table first, the figures by section, every raw number
and full table folded at the end. No script, no stylesheet link, no network."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from timevec.analyze import findings as findings_mod
from timevec.report.plotting import Figure, fmt

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#222}
h1{margin-bottom:0.2em} .meta{color:#666;font-size:0.9em}
table.headline{border-collapse:collapse;margin:1em 0;font-size:0.9em}
table.headline td,table.headline th{border:1px solid #ccc;padding:3px 8px;text-align:left}
table.headline td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.holds-yes td:nth-child(5){color:#1a7f37;font-weight:600} tr.holds-no td:nth-child(5){color:#cf222e;font-weight:600}
details{margin:0.6em 0} summary{cursor:pointer}
figure{margin:2em 0;border-top:1px solid #eee;padding-top:1em}
figure img{max-width:100%;height:auto;display:block}
figcaption{color:#444;font-size:0.9em;margin-top:0.5em} code{font-size:0.9em}
"""


def findings_html(findings: pd.DataFrame) -> list[str]:
    e = html.escape
    parts = ['<h2 id="findings">Findings</h2>',
             '<p class="meta">Each finding of Nylund et al. (2023) as measured here, with a 95 % interval. '
             "<b>holds</b>: yes = the whole interval is on the paper's side, no = on the other side, unclear = "
             "it straddles (or too little data). Intervals are over test periods and cells of this run.</p>",
             '<table class="headline" id="findings-table"><thead><tr><th>finding</th><th>panel</th>'
             "<th>measured [95 % interval]</th><th>the paper's</th><th>holds?</th><th>note</th></tr></thead><tbody>"]
    for r in findings.to_dict("records"):
        claim = findings_mod.PAPER_CLAIMS[r["finding"]][1]
        parts.append(f'<tr class="holds-{e(r["holds"])}"><td>{e(r["finding"])}</td><td>{e(r["panel"])}</td>'
                     f'<td class="num">{e(r["measured"])}</td><td title="{e(claim)}">{e(r["paper"])}</td>'
                     f'<td>{e(r["holds"])}</td><td>{e(str(r["note"]))}</td></tr>')
    parts.append("</tbody></table>")
    if findings.empty:
        parts.append("<p>No findings yet: the store holds no cells of trained vectors.</p>")
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


