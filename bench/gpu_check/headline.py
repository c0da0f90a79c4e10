"""(e) The study's headline at this scale: interpolate + analyze, then the findings rows own period best,
decay, cosine r and interpolation (oracle α)."""

from __future__ import annotations

from typing import Any

from .context import GpuCheck

HEADLINE = ("own period best", "decay with the gap", "cosine vs degradation", "interpolation beats both ends",
            "interpolation vs latest vector")


def headline_estimate(check: GpuCheck) -> float:
    """Seconds the interpolation will take, roughly: actor start-up + its evaluations at the cells' steady rate
    (every α on the validation and test split of each middle period; soups and patching add ≈ a half)."""
    cells = check.summary["sections"]["cells"]
    middle = sum(max(len(check.config.period_list(g)) - 2, 0) for g in check.config.granularities) * len(check.config.tasks)
    evaluations = 1.5 * middle * len(check.config.interpolation.alphas) * 2
    return cells["startup_seconds"] + evaluations / cells["cells_per_second_steady"] + 5.0


def headline(check: GpuCheck) -> dict[str, Any]:
    """:func:`timevec.distributed.pipeline.run_pipeline` of interpolate + analyze; the headline findings rows."""
    from timevec.distributed.pipeline import run_pipeline

    result = run_pipeline(check.config, ["interpolate", "analyze"])
    findings = result["findings"]
    keep = findings["finding"].isin(HEADLINE)
    interp = findings["finding"].str.startswith("interpolation")
    keep &= ~interp | findings["panel"].str.contains("oracle α", regex=False)
    rows = findings.loc[keep, ["finding", "panel", "measured", "paper", "holds"]].to_dict("records")
    check.say(f"[e] headline: {len(rows)} findings rows (interpolate {result['headline'].get('seconds_interpolate', 0):.1f} s, "
              f"analyze {result['headline'].get('seconds_analyze', 0):.1f} s)")
    for row in rows:
        check.say(f"    {row['finding']} | {row['panel']} | {row['measured']} | paper: {row['paper']} | holds: {row['holds']}")
    return {"findings": rows, "seconds_interpolate": result["headline"].get("seconds_interpolate"),
            "seconds_analyze": result["headline"].get("seconds_analyze")}
