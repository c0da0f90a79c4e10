"""The forgetting stage on Ray: evaluate the merged states, then the forgetting table.

Runs in a continual study (``training.mode: continual``; the stage gets the continual store,
:func:`timevec.train.continual.for_mode`). It reads three sets of cells (:mod:`timevec.analyze.forgetting`):
the continual store's own ``cells`` (the evaluate stage, unchanged), the independent study's
``cells`` in the parent store, and ``merged_cells`` — θ_pre + mean(τ_1 … τ_t) of the INDEPENDENT
vectors, which this stage evaluates on the combination stages' actor pool
(:mod:`timevec.distributed.combinations`, actors over the independent store, one item per merged
state scored by :func:`score`, rows appended to the continual store as items finish, so a re-run evaluates
only the missing ones). Then ``results/forgetting.parquet``. In an independent study the stage
does nothing.
"""

from __future__ import annotations

import logging

import pandas as pd

from timevec import results
from timevec.analyze import forgetting
from timevec.config import ExperimentConfig
from timevec.data.examples import prepare_eval_sets
from timevec.distributed.combinations import Combinations, Rows, Scoring, run_combinations, stage_store
from timevec.periods import sort_periods
from timevec.stages import REGISTRY
from timevec.store import VectorStore
from timevec.train import continual

log = logging.getLogger(__name__)

__all__ = ["run_forgetting", "score"]


def score(on: Scoring, item: forgetting.MergedItem, splits: dict) -> Rows:
    """Cells rows of one merged state on its test splits."""
    available = splits.get((item.task, item.granularity), {})
    tests = [available[p] for p in item.test_periods if p in available]
    weight = 1.0 / len(item.members)
    vector = on.vectors(item.task)
    rows = on.evaluator.evaluate_weights([(weight, vector(p)) for p in item.members], tests)
    return {results.MERGED_CELLS_TABLE: [
        {**row, "task": item.task, "granularity": item.granularity, "vector": item.vector,
         "train_period": item.members[-1]} for row in rows]}


STAGE = Combinations(
    desc="merged states", unit="state", score=score,
    tables={results.MERGED_CELLS_TABLE: results.cells_frame}, flush_rows=64,
    label=lambda item: f"merged {item.vector}", failed="merged state(s)", log=log, name=lambda item: item.vector,
)


def _cells(store: VectorStore, name: str) -> pd.DataFrame | None:
    return results.read_table(store, name, default=None)  # None too when the store does not exist yet


def run_forgetting(config: ExperimentConfig, store: VectorStore | None = None) -> pd.DataFrame | None:
    """Merged states into ``merged_cells`` and the ``forgetting`` table into ``store`` (the continual one)."""
    why = REGISTRY["forgetting"].skip_reason(config)  # the stage's one rule of when it applies
    if why is not None:
        log.info("forgetting: skipped (%s; set training.mode=continual)", why)
        return None
    store = stage_store(config, store)
    root_config = config.with_overrides([f"store.url={continual.independent_url(config.store.url)}"])
    root = VectorStore.from_config(root_config.store)
    if not root.exists() or not root.list_vectors():
        log.warning("forgetting: no independent vectors in %s (run the study with training.mode: independent "
                    "first): the table has the continual rows only", root)
    elif root.base_fingerprint != store.base_fingerprint:
        raise ValueError(f"forgetting: the independent store {root} holds another base ({root.base_id}) than "
                         f"the continual store {store} ({store.base_id}); they must share θ_pre")
    merged = _cells(store, results.MERGED_CELLS_TABLE)
    done = set() if merged is None else set(zip(merged["task"], merged["granularity"], merged["vector"],
                                                merged["test_period"]))
    periods_of = {(t, g): config.period_list(g) for t in config.tasks for g in config.granularities}
    items: list[forgetting.MergedItem] = []
    if root.exists():
        for (task, granularity), periods in periods_of.items():
            stored = sort_periods(p for _, p in root.list_vectors(task))
            items.extend(forgetting.plan_merged(task, granularity, periods, stored, done))
    log.info("forgetting: %d merged state(s) to evaluate", len(items))
    if items:
        needed: dict[tuple[str, str], set[str]] = {}
        for item in items:
            needed.setdefault((item.task, item.granularity), set()).update(item.test_periods)
        run_combinations(config, store, items, STAGE, lambda: [prepare_eval_sets(config, needed, store=store)["test"]],
                         source=(root_config, root))
    equal = VectorStore.from_config(root_config.with_overrides(
        [f"store.url={continual.mode_url(root_config.store.url, mode='equal_steps')}"]).store)
    table = forgetting.forgetting_rows(periods_of, _cells(store, results.CELLS_TABLE),  # type: ignore[arg-type]  # Literal keys are str keys
                                       _cells(root, results.CELLS_TABLE), _cells(store, results.MERGED_CELLS_TABLE),
                                       _cells(equal, results.CELLS_TABLE))
    results.write_table(store, results.FORGETTING_TABLE, table)
    return table
