"""Export a weight state the study knows as an ordinary ``save_pretrained`` directory.

A researcher who measured "the model for 2016" (an interpolation point, a soup, an analogy point, a
forecast, or simply a stored vector) wants to take it out and load it anywhere. This module turns a
**recipe** — a coefficient list over stored vectors, exactly as the adaptation stages build it —
into a directory that ``AutoModelForCausalLM.from_pretrained`` (or ``…Seq2SeqLM``) reads:

- ``config.json`` + ``model.safetensors`` + the tokenizer: θ_pre + Σ cᵢ·τᵢ written by the very
  :class:`~timevec.weights.vectors.WeightPatcher` (and merge method) the cells were evaluated with,
  inside a :class:`~timevec.evaluate.cells.CellEvaluator`, so the loaded model's metric is the
  study's value bit for bit (the tests load it in a fresh process and compare);
- ``README.md`` (a model card) and ``timevec_recipe.json``: base name and fingerprint, each vector
  with its shard digests and coefficient, the merge method, how α was chosen, and the scores the
  study measured for the combination with their bootstrap intervals (recomputed from these weights
  on the same splits; ``matches_study`` says whether the value equals the study's table);
- ``adapter/`` when every term is stored as LoRA factors (:mod:`timevec.adapt.lora_export`): one
  PEFT adapter holding the combination exactly, factors concatenated along the rank.

Recipes (``timevec export CONFIG SPEC``; :func:`parse_spec`), built by the study's own term builders
(:func:`~timevec.adapt.interpolation.interpolation_terms`, :func:`~timevec.adapt.analogy.analogy_terms`,
:func:`~timevec.adapt.forecast.forecast_coefficients`), never a second implementation:

- ``base`` — θ_pre itself (what a PEFT adapter is applied to);
- ``lm/2016`` — a stored vector;
- ``interpolation:task=lm,alpha=0.5`` (``first=``/``last=`` default to the ends the stage used);
- ``soup:task=lm,members=2014+2015``;
- ``analogy:task=classification,j=2014,k=2016,a1=1.0,a2=0.2,a3=0.1``;
- ``forecast:task=lm,method=taylor,target=2018`` (a held-out period: from the study's past periods;
  a later period: from every stored period before it — the model for next year);
- ``best:task=lm,protocol=time_proportional,period=2015`` (``kind=analogy`` for the analogy's
  ``oracle``/``past_only``), read from the protocol tables;
- ``best:task=lm,period=next`` (``granularity=`` default the config's first): the model for the period after
  the study's last, chosen past-only from the forecast table — the forecast method with the best mean gain
  over the latest vector on the held-out periods, from every stored period; the latest vector if none beats it.

A combination whose vectors are not all in the store is refused (:class:`~timevec.errors.ConfigError`,
exit 2) naming every missing vector, before anything is loaded or written. The directory appears only
complete (written under a temporary name, then renamed).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from timevec.config import ConfigError, ExperimentConfig
from timevec.periods import Period, sort_periods

log = logging.getLogger(__name__)

__all__ = ["Recipe", "export", "parse_spec", "resolve"]

RECIPE_FILE = "timevec_recipe.json"
FORMAT_VERSION = 1


@dataclass
class Recipe:
    """What to export: ``θ_pre + Σ cᵢ·τ(taskᵢ, periodᵢ)`` and what the study knows about it."""

    kind: str
    spec: str
    terms: list[tuple[float, str, str]]  # (coefficient, task, period)
    description: str
    selection: str  # how α was chosen
    target: str | None = None  # the period this model is meant for, if any
    task: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    study_rows: list[dict[str, Any]] = field(default_factory=list)  # the study's table rows for this combination
    protocol_rows: list[dict[str, Any]] = field(default_factory=list)  # best: the protocol table's row(s) that chose α

    @property
    def vectors(self) -> list[tuple[str, str]]:
        return [(t, p) for _, t, p in self.terms]


# ----------------------------------------------------------------------------- the spec


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"interpolation:task=lm,alpha=0.5"`` → ``("interpolation", {"task": "lm", "alpha": "0.5"})``;
    ``"lm/2016"`` → ``("vector", {"task": "lm", "period": "2016"})``; ``"base"`` → ``("base", {})``."""
    spec = spec.strip()
    if spec == "base":
        return "base", {}
    if ":" not in spec and "/" in spec:
        task, _, period = spec.partition("/")
        return "vector", {"task": task, "period": period}
    kind, _, rest = spec.partition(":")
    if kind not in KINDS:
        raise ConfigError(f"export: {spec!r} is not a recipe: use base, TASK/PERIOD or one of {', '.join(KINDS)}:key=value,…")
    params: dict[str, str] = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            raise ConfigError(f"export: {spec!r}: {part!r} is not key=value")
        params[key.strip()] = value.strip()
    return kind, params


def _need(params: dict[str, str], key: str, spec: str) -> str:
    if key not in params:
        raise ConfigError(f"export: {spec!r} needs {key}=")
    return params[key]


def _float(params: dict[str, str], key: str, spec: str) -> float:
    try:
        return float(_need(params, key, spec))
    except ValueError:
        raise ConfigError(f"export: {spec!r}: {key}={params[key]!r} is not a number") from None


def _table(store, name: str):
    from timevec import results

    return results.read_table(store, name, default=None)


def _records(frame) -> list[dict[str, Any]]:
    """Rows as plain dicts, floats exact (a JSON round trip through pandas would round them), NaN as None."""
    if frame is None or frame.empty:
        return []
    out = []
    for row in frame.to_dict(orient="records"):
        clean = {}
        for key, value in row.items():
            value = value.item() if hasattr(value, "item") else value
            clean[key] = None if isinstance(value, float) and math.isnan(value) else value
        out.append(clean)
    return out


def _stored(store, task: str, granularity: str) -> list[str]:
    return [p for t, p in store.list_vectors(task) if Period.parse(p).granularity == granularity]


def resolve(config: ExperimentConfig, store, spec: str) -> Recipe:
    """The recipe a spec names, with the study's rows for it (no weights are read)."""
    from timevec.adapt.selection import INTERPOLATION_SELECTIONS

    kind, params = parse_spec(spec)
    if kind == "base":
        rows = _records(_rows(_table(store, "cells"), vector="base"))
        return Recipe("base", spec, [], "θ_pre, the base model", "none: no coefficients", study_rows=rows)
    task = _need(params, "task", spec)
    if kind == "best" and params.get("period") == "next":
        return _best_next(config, store, spec, task, params.get("granularity", config.granularities[0]), params)
    granularity = params.get("granularity", Period.parse(params["period"]).granularity if "period" in params else "year")
    if kind == "vector":
        period = str(Period.parse(params["period"]))
        rows = _records(_rows(_table(store, "cells"), vector=f"{task}/{period}"))
        return Recipe("vector", spec, [(1.0, task, period)], f"θ_pre + τ_{task}({period})", "none: the stored vector as trained",
                      target=period, task=task, study_rows=rows)
    if kind == "best":
        protocol = _need(params, "protocol", spec)
        period = str(Period.parse(_need(params, "period", spec)))
        if params.get("kind", "interpolation") == "analogy":
            return _best_analogy(config, store, spec, task, protocol, period, params)
        if protocol not in INTERPOLATION_SELECTIONS:
            raise ConfigError(f"export: {spec!r}: protocol {protocol!r} is not one of {', '.join(INTERPOLATION_SELECTIONS)}")
        table = _rows(_table(store, "interpolation_protocols"), task=task, granularity=Period.parse(period).granularity,
                      test_period=period, method=protocol)
        if table is None or table.empty or math.isnan(float(table["alpha"].iloc[0])):
            raise ConfigError(f"export: {spec!r}: no {protocol} α for {task}/{period} in results/interpolation_protocols "
                              f"of {store.url} (run the interpolate stage)")
        row = table.iloc[0]
        recipe = _interpolation(store, spec, task, str(row["granularity"]), float(row["alpha"]), str(row["first"]), str(row["last"]))
        recipe.selection, recipe.target = str(row["selection"]), period
        recipe.protocol_rows = _records(table)
        return recipe
    if kind == "interpolation":
        return _interpolation(store, spec, task, granularity, _float(params, "alpha", spec), params.get("first"), params.get("last"))
    if kind == "soup":
        members = sort_periods(str(Period.parse(m)) for m in _need(params, "members", spec).split("+"))
        rows = _rows(_table(store, "soups"), task=task, members=",".join(members), method="soup")
        return Recipe("soup", spec, [(1.0 / len(members), task, p) for p in members], f"uniform soup of {task} {', '.join(members)}",
                      "as given: the members named (the soup stage chooses them greedily on each period's validation split)",
                      task=task, study_rows=_records(rows))
    if kind == "analogy":
        j, k = str(Period.parse(_need(params, "j", spec))), str(Period.parse(_need(params, "k", spec)))
        alphas = tuple(_float(params, a, spec) for a in ("a1", "a2", "a3"))
        return _analogy(store, spec, task, j, k, alphas, "as given: α₁, α₂, α₃ named in the recipe")
    if kind == "forecast":
        return _forecast(config, store, spec, task, granularity, _need(params, "method", spec),
                         str(Period.parse(_need(params, "target", spec))), params)
    raise ConfigError(f"export: unknown recipe kind {kind!r}")


KINDS = ("base", "vector", "interpolation", "soup", "analogy", "forecast", "best")


def _rows(frame, **equal):
    if frame is None:
        return None
    for column, value in equal.items():
        frame = frame.loc[frame[column].astype(str) == str(value)]
    return frame


def _interpolation(store, spec, task, granularity, alpha, first, last) -> Recipe:
    from timevec.adapt.interpolation import interpolation_ends
    from timevec.results import alpha_key

    if first is None or last is None:
        stored = _stored(store, task, granularity)
        if len(stored) < 2:
            raise ConfigError(f"export: {spec!r}: interpolation needs two stored {task} {granularity} vectors in {store.url}")
        first, last = interpolation_ends(stored)
    first, last = str(Period.parse(first)), str(Period.parse(last))
    table = _table(store, "interpolation")
    rows = None
    if table is not None:
        rows = _rows(table, task=task, first=first, last=last)
        rows = rows.loc[rows["alpha"].map(alpha_key) == alpha_key(alpha)]
    # interpolation_terms' coefficients, over the stored vectors' names (the vectors are read at export)
    terms = [(1.0 - alpha, task, first), (alpha, task, last)]
    return Recipe("interpolation", spec, terms, f"(1−α)·τ_{task}({first}) + α·τ_{task}({last}), α = {alpha:g}",
                  "as given: α named in the recipe", task=task, params={"alpha": alpha, "first": first, "last": last},
                  study_rows=_records(rows))


def _analogy(store, spec, task, j, k, alphas, selection) -> Recipe:
    a1, a2, a3 = alphas
    rows = _rows(_table(store, "analogy"), task=task, source_period=j, target_period=k, method="analogy")
    if rows is not None:
        rows = rows.loc[(rows["alpha1"] == a1) & (rows["alpha2"] == a2) & (rows["alpha3"] == a3)]
    terms = [(a1, task, j), (a2, "lm", k), (-a3, "lm", j)]  # analogy_terms' signs
    return Recipe("analogy", spec, terms, f"α₁·τ_{task}({j}) + α₂·τ_lm({k}) − α₃·τ_lm({j}), α = ({a1:g}, {a2:g}, {a3:g})",
                  selection, target=k, task=task, params={"alpha1": a1, "alpha2": a2, "alpha3": a3, "j": j, "k": k},
                  study_rows=_records(rows))


def _best_analogy(config, store, spec, task, protocol, k, params) -> Recipe:
    table = _rows(_table(store, "analogy_protocols"), task=task, target_period=k, method="analogy", selection=protocol)
    if table is not None and "source" in params:
        table = _rows(table, source_period=str(Period.parse(params["source"])))
    if table is None or table.empty or table["alpha1"].isna().all():
        raise ConfigError(f"export: {spec!r}: no {protocol} analogy point for {task} → {k} in results/analogy_protocols of {store.url}")
    row = table.dropna(subset=["alpha1"]).iloc[0]
    recipe = _analogy(store, spec, task, str(row["source_period"]), k, (float(row["alpha1"]), float(row["alpha2"]), float(row["alpha3"])),
                      f"{protocol}: the grid point best on {row['chosen_on']}'s validation split")
    recipe.protocol_rows = _records(table)
    return recipe


def _best_next(config, store, spec, task, granularity, params) -> Recipe:
    """The model for the period after the study's last, chosen past-only: the forecast method with the best mean
    gain over the latest vector on the study's held-out periods (the forecast table's test rows), built from every
    stored period; the latest vector itself when no method beats it there."""
    stored = sort_periods(_stored(store, task, granularity))
    if not stored:
        raise ConfigError(f"export: {spec!r}: no {task} vector of granularity {granularity} in {store.url}")
    target = str(Period.parse(stored[-1]).shift(1))
    rows = _rows(_table(store, "forecast"), task=task, granularity=granularity, selection="past-only", split="test")
    gains = (rows.loc[~rows["method"].isin(["base", "latest"])].groupby("method")["gain_vs_latest_pct"].mean().dropna()
             if rows is not None and not rows.empty else None)
    if gains is None or gains.empty:
        raise ConfigError(f"export: {spec!r}: no past-only forecast of {task}/{granularity} in results/forecast of "
                          f"{store.url} to choose from (run the forecast stage)")
    method, gain = str(gains.idxmax()), float(gains.max())
    held_out = sort_periods(set(rows["target_period"].astype(str)))
    why = (f"past-only: on the study's held-out {', '.join(held_out)}, {{}} (mean gain over the latest vector of "
           f"each method: {', '.join(f'{m} {g:+.3g} %' for m, g in gains.sort_values(ascending=False).items())})")
    if gain <= 0:
        recipe = Recipe("vector", spec, [(1.0, task, stored[-1])], f"θ_pre + τ_{task}({stored[-1]}), the latest vector",
                        why.format(f"no forecast beat the latest vector (best: {method} {gain:+.3g} %)"), target=target,
                        task=task)
    else:
        recipe = _forecast(config, store, spec, task, granularity, method, target, params)
        recipe.selection = why.format(f"{method} beat the latest vector most ({gain:+.3g} %)")
    recipe.protocol_rows = _records(rows)
    return recipe


def _forecast(config, store, spec, task, granularity, method, target, params) -> Recipe:
    from timevec.adapt.forecast import ForecastParams, forecast_coefficients, split_history

    configured = config.period_list(granularity)
    stored = _stored(store, task, granularity)
    if target in configured:  # a held-out period of the study: its past, as the forecast stage saw it
        past = [p for p in split_history(configured, config.forecast.horizon, granularity)[0] if p in stored]
        if target not in split_history(configured, config.forecast.horizon, granularity)[1]:
            past = [p for p in past if Period.parse(p) < Period.parse(target)]
    else:  # after the study: every stored period before it
        past = [p for p in stored if Period.parse(p) < Period.parse(target)]
    forecast_params = ForecastParams.from_config(config.forecast)
    rows = _rows(_table(store, "forecast"), task=task, granularity=granularity, method=method, target_period=target)
    if method == "scaled_latest":
        scale = params.get("lambda")
        if scale is None and rows is not None and not rows.empty:
            scale = rows["param"].dropna().iloc[0] if rows["param"].notna().any() else None
        if scale is None:
            raise ConfigError(f"export: {spec!r}: scaled_latest needs lambda= (none in results/forecast for {target})")
        forecast_params = replace(forecast_params, scale=float(scale))
    try:
        coefficients = forecast_coefficients(method, past, target, forecast_params)
    except ValueError as exc:
        raise ConfigError(f"export: {spec!r}: {exc}") from None
    selection = ("past-only: λ best on the last past period's validation split" if method == "scaled_latest"
                 else "past-only: fixed coefficients from the dates of the past periods (forecast." + method + ")")
    return Recipe("forecast", spec, [(c, task, p) for c, p in coefficients], f"forecast {method} of {task}/{target} from {', '.join(past)}",
                  selection, target=target, task=task, params={"method": method, "past": past}, study_rows=_records(rows))


# ----------------------------------------------------------------------------- writing


def check_vectors(store, recipe: Recipe) -> list[dict[str, Any]]:
    """The manifest of every vector the recipe needs; a ConfigError naming every missing one."""
    missing = [f"{t}/{p}" for t, p in dict.fromkeys(recipe.vectors) if not store.has_vector(t, p)]
    if missing:
        raise ConfigError(f"export {recipe.spec!r}: vector(s) not in the store {store.url}: {', '.join(missing)}")
    return [store.manifest(t, p) for t, p in recipe.vectors]


def _term_record(coef: float, task: str, period: str, manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "vector": f"{task}/{period}", "task": task, "period": period, "coefficient": coef,
        "kind": manifest.get("vector_kind", "dense"), "l2_norm": manifest.get("l2_norm"), "checksum": manifest.get("checksum", "sha256"),
        "shards": [{k: v for k, v in s.items() if k != "tensors"} for s in manifest["shards"]],
        "run": {k: manifest.get("run", {}).get(k) for k in ("kind", "seed", "metrics") if k in manifest.get("run", {})},
    }


def _score(evaluator, config, recipe: Recipe, terms) -> list[dict[str, Any]]:
    """The combination on the test split of every period the study measured it on (or its target),
    with bootstrap intervals, beside the study's value (from its cell rows: a protocol row only
    says how α was chosen; a forecast row's ``selection`` column is part of the cell)."""
    from timevec.data.examples import prepare_eval_sets

    task = recipe.task or (config.tasks[0] if config.tasks else "lm")
    tasks_periods: dict[tuple[str, str], float | None] = {}
    for row in recipe.study_rows:
        period = row.get("test_period") or row.get("target_period") or row.get("period")
        if period and row.get("split", "test") == "test":
            tasks_periods[(str(row.get("task", task)), str(period))] = float(row["value"]) if row.get("value") is not None else None
    if not tasks_periods and recipe.target:
        tasks_periods[(task, recipe.target)] = None
    wanted: dict[tuple[str, str], set[str]] = {}
    for t, p in tasks_periods:
        wanted.setdefault((t, Period.parse(p).granularity), set()).add(p)
    splits = prepare_eval_sets(config, wanted, tokenizer=evaluator.tokenizer)["test"]
    prepared = [s for (_, _), by_period in splits.items() for s in by_period.values()]
    scores = []
    for split, row in zip(prepared, evaluator.evaluate_weights(terms, prepared)):
        study = tasks_periods.get((split.task, split.period))
        scores.append({"task": split.task, "test_period": split.period, "split": "test", "metric": row["metric"],
                       "value": row["value"], "low": row["low"], "high": row["high"], "n_examples": row["n_examples"],
                       "study_value": study, "matches_study": None if study is None else row["value"] == study})
    return scores


def export(config: ExperimentConfig, spec: str | Recipe, out: str | os.PathLike, score: bool = True,
           lora: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Write the recipe's weights, tokenizer and model card to ``out``; returns the card's JSON."""
    import torch

    from timevec.evaluate.cells import CellEvaluator
    from timevec.store import VectorStore

    store = VectorStore.from_config(config.store)
    recipe = spec if isinstance(spec, Recipe) else resolve(config, store, spec)
    manifests = check_vectors(store, recipe)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"export: {out} exists and is not empty (--force replaces it)")
    evaluator = CellEvaluator(config, store, device="cpu")
    vectors = {(t, p): evaluator.read_vector(t, p) for t, p in dict.fromkeys(recipe.vectors)}
    terms = [(c, vectors[(t, p)]) for c, t, p in recipe.terms]
    scores = _score(evaluator, config, recipe, terms) if score else []
    card: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "recipe": {"spec": recipe.spec, "kind": recipe.kind, "description": recipe.description, "target_period": recipe.target,
                   "params": recipe.params},
        "base": {"id": store.base_id, "fingerprint": store.base_fingerprint, "store": str(store.url)},
        "terms": [_term_record(c, t, p, m) for (c, t, p), m in zip(recipe.terms, manifests)],
        "merge": {"method": evaluator.merge.label,
                  "applies": len([c for c, _, _ in recipe.terms if c != 0.0]) >= 2 and not evaluator.merge.is_task_arithmetic},
        "alpha_selection": recipe.selection,
        "scores": scores,
        "study_rows": recipe.protocol_rows + recipe.study_rows,
        "versions": {"torch": torch.__version__, "transformers": _version("transformers"), "timevec": _version("timevec")},
    }
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with evaluator.patcher.applied_combination(terms, evaluator.merge) if terms else _nothing():
            evaluator.model.save_pretrained(tmp)
        evaluator.tokenizer.save_pretrained(tmp)
        card["model_class"] = type(evaluator.model).__name__
        dense = [f"{t}/{p}" for (t, p), v in vectors.items() if not hasattr(v, "factors")]
        if lora and terms and dense:
            card["adapter"] = {"skipped": f"{', '.join(dense)} {'is' if len(dense) == 1 else 'are'} stored dense, not as "
                                          "LoRA factors (training.lora.store: factors stores a run's vector as an adapter)"}
        elif lora and terms:
            from timevec.adapt.lora_export import write_adapter

            card["adapter"] = write_adapter(evaluator.model, terms, evaluator.merge, tmp / "adapter", store.base_id)
        (tmp / RECIPE_FILE).write_text(json.dumps(card, indent=2, default=str))
        (tmp / "README.md").write_text(model_card(card))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s to %s", recipe.spec, out)
    return card


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def model_card(card: dict[str, Any]) -> str:
    """The README.md of an export: front matter, the recipe, the terms, α's selection and the scores."""
    recipe, base, merge = card["recipe"], card["base"], card["merge"]
    meant = f" — meant for period {recipe['target_period']}." if recipe["target_period"] else "."
    how = " (applied: ≥ 2 terms)" if merge["applies"] else " (plain Σ cᵢ·τᵢ)"
    lines = [
        "---", "library_name: transformers", "tags: [timevec, time-vectors, model-merging]", "---", "",
        f"# timevec export: {recipe['spec']}", "",
        f"**Weights**: θ = θ_pre + {recipe['description']}{meant}", "",
        f"**Base**: `{base['id']}` (fingerprint `{base['fingerprint']}`), from the store `{base['store']}`.",
        f"**Merge method**: {merge['method']}{how}.",
        f"**How α was chosen**: {card['alpha_selection']}.", "",
        "| vector | coefficient | kind | shards (digest) |", "| --- | --- | --- | --- |",
    ]
    for term in card["terms"]:
        digests = ", ".join(f"{s['file']} ({s.get(term['checksum'], s.get('sha256', '?'))})" for s in term["shards"])
        lines.append(f"| {term['vector']} | {term['coefficient']:+.6g} | {term['kind']} | {digests} |")
    if card["scores"]:
        lines += ["", "## Scores (test split; 95 % bootstrap interval over its examples)", "",
                  "| task | period | metric | value | interval | study's value | equal |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for s in card["scores"]:
            lines.append(f"| {s['task']} | {s['test_period']} | {s['metric']} | {_fmt(s['value'])} | "
                         f"[{_fmt(s['low'])}, {_fmt(s['high'])}] | {_fmt(s['study_value'])} | {_fmt(s['matches_study'])} |")
    lines += ["", "## Loading", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer  # AutoModelForSeq2SeqLM for T5",
              "model = AutoModelForCausalLM.from_pretrained(DIR)", "tokenizer = AutoTokenizer.from_pretrained(DIR)", "```"]
    adapter = card.get("adapter", {})
    if "rank" in adapter:
        lines += ["", f"`adapter/` holds the same combination as ONE PEFT LoRA adapter (rank {adapter['rank']}, "
                  f"{adapter['bytes']} bytes). Apply it to θ_pre, exported by `timevec export CONFIG base --out BASE_DIR`:",
                  "", "```python", "from peft import PeftModel",
                  "model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE_DIR), DIR + '/adapter')", "```"]
    elif adapter:
        lines += ["", f"No PEFT adapter: {adapter['skipped']}."]
    lines += ["", f"The full recipe (shard digests, the study's table rows) is `{RECIPE_FILE}`.", ""]
    return "\n".join(lines)


def export_summary(card: dict[str, Any]) -> Sequence[str]:
    """Lines the CLI prints."""
    out = [f"{card['recipe']['spec']}: {card['recipe']['description']} ({card['alpha_selection']})"]
    for s in card["scores"]:
        out.append(f"  {s['task']} {s['test_period']}: {s['metric']} {_fmt(s['value'])} [{_fmt(s['low'])}, {_fmt(s['high'])}]"
                   f"  study {_fmt(s['study_value'])}")
    if "rank" in card.get("adapter", {}):
        out.append(f"  PEFT adapter: rank {card['adapter']['rank']}, {card['adapter']['bytes']} bytes")
    return out
