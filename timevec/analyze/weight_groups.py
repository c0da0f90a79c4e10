"""Where in the weights time lives: norms, cosines and similarity-vs-degradation per parameter group.

The paper's cosine is over all tensors at once (:mod:`timevec.analyze.similarity`); its public code also
had per-group cosine scripts (embeddings, attention, MLP, norms) that never reached the paper.
Here the question is asked of every group of :mod:`timevec.param_groups` and of every layer:

- how much of |τ|² each group and layer holds (against its share of the parameters);
- the cosine of every pair of vectors within each group (raw, and centred on each task's mean τ);
- r(cosine within group, degradation): which group's similarity predicts how badly a vector
  transfers to another period — the whole-vector correlation of :mod:`timevec.analyze.similarity`,
  computed by the same functions on each group's Gram matrix.

Everything starts from the per-``(group, layer)`` Gram matrices of ONE streaming pass over the
store's shard plan (:meth:`timevec.store.VectorStore.grouped_gram`): no vector, nor any group of
one, is ever whole in memory, and the group and layer matrices are sums of those. Torch-free and
Ray-free; the analyze stage calls :func:`group_analysis`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from timevec import results
from timevec.analyze.similarity import Key, grouped_similarity, similarity_table, similarity_vs_degradation
from timevec.param_groups import GROUPS, OTHER, group_of

if TYPE_CHECKING:
    from timevec.store import VectorStore

log = logging.getLogger(__name__)

__all__ = ["ALL", "GroupAnalysis", "group_analysis", "group_headline", "group_norms", "group_similarity", "part_grams",
           "part_sizes"]

ALL = "all"
#: (scope, part): ("all", "all"), ("group", "attention"), ("layer", "3") / ("layer", "encoder.3")
Part = tuple[str, str]


def _layer_order(layer: str) -> tuple[int, int]:
    stack, _, index = layer.rpartition(".")
    return ({"": 0, "encoder": 1, "decoder": 2}.get(stack, 3), int(index) if index.isdigit() else -1)


def _parts_of(keys: Sequence[tuple[str, str]]) -> list[Part]:
    groups = {g for g, _ in keys}
    layers = sorted({layer for _, layer in keys if layer}, key=_layer_order)
    return ([(ALL, ALL)] + [("group", g) for g in GROUPS if g in groups]
            + [("layer", layer) for layer in layers])


def _sum_parts(values: Mapping[tuple[str, str], Any]) -> dict[Part, Any]:
    out: dict[Part, Any] = {}
    for part in _parts_of(list(values)):
        scope, name = part
        members = [v for (g, layer), v in values.items()
                   if scope == ALL or (scope == "group" and g == name) or (scope == "layer" and layer == name)]
        total = members[0]
        for v in members[1:]:
            total = total + v
        out[part] = total
    return out


def part_grams(grams: Mapping[tuple[str, str], np.ndarray]) -> dict[Part, np.ndarray]:
    """Per-(group, layer) Gram matrices summed into the whole vector, each group and each layer."""
    return _sum_parts(grams)


def part_sizes(shapes: Mapping[str, Sequence[int]]) -> dict[Part, tuple[int, int]]:
    """(tensors, parameters) of every part, from the store's shapes."""
    per_key: dict[tuple[str, str], tuple[int, int]] = {}
    for name, shape in shapes.items():
        n, p = per_key.get(group_of(name), (0, 0))
        per_key[group_of(name)] = (n + 1, p + int(np.prod(shape, dtype=np.int64)))
    summed = _sum_parts({k: np.array(v, dtype=np.int64) for k, v in per_key.items()})
    return {part: (int(v[0]), int(v[1])) for part, v in summed.items()}


def group_norms(parts: Mapping[Part, np.ndarray], keys: Sequence[Key],
                sizes: Mapping[Part, tuple[int, int]]) -> pd.DataFrame:
    """|τ| of every vector in every part, its share of |τ|² and the part's share of the parameters."""
    total = np.diag(parts[(ALL, ALL)]).astype(np.float64)
    all_params = sizes[(ALL, ALL)][1]
    rows = []
    for (scope, name), gram in parts.items():
        sq = np.clip(np.diag(gram), 0.0, None)
        n_tensors, n_params = sizes.get((scope, name), (0, 0))
        for i, (task, period) in enumerate(keys):
            rows.append({"task": str(task), "period": str(period), "scope": scope, "part": name,
                         "n_tensors": n_tensors, "n_params": n_params, "norm": float(np.sqrt(sq[i])),
                         "norm_sq_share": float(sq[i] / total[i]) if total[i] > 0 else float("nan"),
                         "param_share": n_params / all_params if all_params else float("nan")})
    return results.group_norms_frame(rows)


def group_similarity(parts: Mapping[Part, np.ndarray], keys: Sequence[Key]) -> pd.DataFrame:
    """Cosine of every pair of vectors within each part: raw (every pair) and centred (within each
    (task, granularity), on its mean τ — :func:`timevec.analyze.similarity.grouped_similarity`)."""
    frames = []
    for (scope, name), gram in parts.items():
        for centred, table in ((False, similarity_table(gram, keys)), (True, grouped_similarity(gram, keys))):
            frames.append(table.assign(scope=scope, part=name, centred=centred))
    return results.group_similarity_frame(pd.concat(frames, ignore_index=True) if frames else [])


def group_sim_vs_degradation(similarity: pd.DataFrame, rel: pd.DataFrame) -> pd.DataFrame:
    """r(cosine within the part, degradation) per part, centring and (task, granularity, metric),
    plus the pooled row (task = granularity = metric = "all"), by
    :func:`timevec.analyze.similarity.similarity_vs_degradation` — the whole-vector statistic, per part."""
    rows = []
    for (scope, name, centred), sim in similarity.groupby(["scope", "part", "centred"], sort=False):
        svd = similarity_vs_degradation(sim.drop(columns=["scope", "part", "centred"]), rel)
        head = {"scope": scope, "part": name, "centred": bool(centred)}
        pooled = {k: svd[k] for k in ("n", "pearson_r", "pearson_p", "pearson_low", "pearson_high",
                                      "spearman_rho", "spearman_p", "reason")}
        rows.append({**head, "task": ALL, "granularity": ALL, "metric": ALL, **pooled})
        rows.extend({**head, **row} for row in svd["by_group"].to_dict("records"))
    return results.group_sim_deg_frame(rows)


class GroupAnalysis(NamedTuple):
    norms: pd.DataFrame
    similarity: pd.DataFrame
    sim_vs_deg: pd.DataFrame
    tensor_counts: dict[str, int]  # tensors per group (OTHER: names no rule matched)


def group_analysis(store: VectorStore, rel: pd.DataFrame, keys: Sequence[Key] | None = None) -> GroupAnalysis | None:
    """The three per-group tables of ``store``'s vectors (``keys``; default every stored vector),
    from one grouped streaming pass; None when the store holds no vector."""
    keys = [(str(t), str(p)) for t, p in (store.list_vectors() if keys is None else keys)]
    if not keys:
        return None
    grams = store.grouped_gram(keys, group_of)
    parts = part_grams(grams)  # type: ignore[arg-type]  # group_of returns (part, layer) keys
    sizes = part_sizes(store.shapes)
    counts = {g: sizes.get(("group", g), (0, 0))[0] for g in GROUPS}
    if counts[OTHER]:
        others = sorted(n for n in store.shapes if group_of(n)[0] == OTHER)
        log.warning("groups: %d tensor(s) match no group and are counted as %r: %s", counts[OTHER], OTHER,
                    ", ".join(others[:8]) + (" …" if len(others) > 8 else ""))
    sim = group_similarity(parts, keys)
    return GroupAnalysis(group_norms(parts, keys, sizes), sim, group_sim_vs_degradation(sim, rel), counts)


def group_headline(norms: pd.DataFrame, sim_vs_deg: pd.DataFrame, swaps: pd.DataFrame | None = None) -> dict[str, str]:
    """Which group carries time, per task, in three numbers: the largest share of |τ|² (against
    its share of the parameters), the most negative r(raw cosine, degradation) with its interval,
    and the largest mean share of the gap closed by a swap (when the swaps table is given)."""
    out: dict[str, str] = {}
    groups = norms[norms["scope"] == "group"]
    for task, grp in groups.groupby("task", sort=True):
        mean = grp.groupby("part")[["norm_sq_share", "param_share"]].mean()
        top = mean["norm_sq_share"].idxmax()
        out[f"groups: largest |τ|² share, {task}"] = (
            f"{top} {mean.loc[top, 'norm_sq_share']:.1%} of |τ|² ({mean.loc[top, 'param_share']:.1%} of the parameters)")
    rs = sim_vs_deg[(sim_vs_deg["scope"] == "group") & ~sim_vs_deg["centred"] & (sim_vs_deg["task"] != ALL)]
    for (task, gran, _metric), grp in rs.dropna(subset=["pearson_r"]).groupby(["task", "granularity", "metric"]):
        row = grp.loc[grp["pearson_r"].idxmin()]
        out[f"groups: cosine best predicts degradation, {task}/{gran}"] = (
            f"{row['part']} r {row['pearson_r']:+.2f} [{row['pearson_low']:+.2f}, {row['pearson_high']:+.2f}] (n {row['n']})")
    if swaps is not None and len(swaps):
        for task, grp in swaps.dropna(subset=["gap_share"]).groupby("task", sort=True):
            share = grp.groupby("group")["gap_share"].mean()
            out[f"groups: swap closing most of the gap, {task}"] = (
                f"{share.idxmax()} {share.max():.2f} of the gap to the in-period vector "
                f"(mean over {grp[['source_period', 'target_period']].drop_duplicates().shape[0]} pair(s))")
    return out

