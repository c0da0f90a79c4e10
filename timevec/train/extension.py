"""Adding periods to a finished study: what is reused, what is recomputed, what is kept apart.

Why: a new year (or a new year of months) arrives after a study has finished. Re-running
``timevec run`` with the later ``periods.end`` must train only the new runs and evaluate only the new
row and column of every all-pairs matrix, yet some results change their MEANING with the range and
must not be mixed with the new ones (ARCHITECTURE §15):

- **reused** (valid whatever the range): the base θ_pre (the store is its cache: it is not
  pretrained again on the new text), every stored vector (the fleet skips complete vectors), every
  cell of ``cells.parquet`` (keyed by vector × test period; a test split depends only on its own
  period), the analogy searches of every earlier (j, k) pair (``analogy``, ``analogy_best``: the
  terms and the "latest task vector before k" do not depend on later periods);
- **recomputed, the old version kept apart**: interpolation (its ends τ_first, τ_last change), the
  soups and patching (the uniform soup of every other vector and the "latest" baseline change),
  the forecast (its held-out last periods change), every analysis table, the headline, the figure
  tables and the report. Before any stage runs, these are moved from ``results/`` and ``reports/``
  into ``previous/<range>/`` (e.g. ``previous/year-2012-2016/results/interpolation.parquet``), so
  the stages rebuild them for the new range and nothing of the old range is averaged into them.

The finished study is read from the store itself: its period range per (task, granularity) from
the test periods of ``cells.parquet``, its training, corpus and evaluation settings from the stored
vectors' manifests. An extension must keep those (other tasks or granularities, a dropped period, or
other settings make the old and new cells incomparable): :func:`prepare_extension` refuses it with
a :class:`~timevec.config.ConfigError` naming the field. A range that only shrinks, or a store
without cells, is left alone (a sub-study reads what it needs, as before).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from timevec import results
from timevec.config import ConfigError
from timevec.periods import sort_periods
from timevec.results import ANALOGY_BEST_TABLE, ANALOGY_TABLE, CELLS_TABLE
from timevec.store.tables import table_of

if TYPE_CHECKING:
    import pandas as pd

    from timevec.config import ExperimentConfig
    from timevec.store import VectorStore

log = logging.getLogger(__name__)

ARCHIVE_ROOT = "previous"
"""Where the results of a finished study's range are kept apart: ``previous/<range>/results|reports/…``."""
REUSED_TABLES = (CELLS_TABLE, ANALOGY_TABLE, ANALOGY_BEST_TABLE)
"""Tables an extension keeps in place and adds to: their rows do not depend on the period range."""
MOVED_FOLDERS = ("results", "reports")
SETTINGS = ("seed", "corpus", "training", "evaluation")
"""Config sections an extension must keep: the new vectors and cells must be comparable with the old."""

Panel = tuple[str, str]  # (task, granularity)


@dataclass(frozen=True)
class Extension:
    """A finished study's periods per (task, granularity), and the periods the config adds."""

    before: dict[Panel, list[str]]
    added: dict[Panel, list[str]]

    @property
    def label(self) -> str:
        """The old range as a folder name: ``year-2012-2016`` (granularities joined by ``_``)."""
        ranges: dict[str, list[str]] = {}
        for (_task, granularity), periods in sorted(self.before.items()):
            ranges.setdefault(granularity, periods)
        return "_".join(f"{g}-{p[0]}-{p[-1]}" for g, p in sorted(ranges.items()))

    @property
    def archive(self) -> str:
        return f"{ARCHIVE_ROOT}/{self.label}"

    def new_runs(self) -> int:
        return sum(len(p) for p in self.added.values())

    def new_cells(self) -> int:
        """Cells the evaluate stage adds: per panel (N + M)² − N² vector cells plus M base cells.

        For one added period (M = 1) that is the new row and column, 2N + 1, and the base on the
        new period: 2N + 2 per (task, granularity).
        """
        total = 0
        for key, added in self.added.items():
            n, m = len(self.before[key]), len(added)
            total += (n + m) ** 2 - n * n + m
        return total


def study_periods(cells: pd.DataFrame) -> dict[Panel, list[str]]:
    """The periods of each (task, granularity) of the cells table: its test periods, in time order."""
    out: dict[Panel, list[str]] = {}
    for (task, granularity), group in cells.groupby(["task", "granularity"], sort=True):
        out[(str(task), str(granularity))] = sort_periods(group["test_period"].astype(str).unique())
    return out


def find_extension(config: ExperimentConfig, store: VectorStore) -> Extension | None:
    """The extension ``config`` makes of the study in ``store``, checked; None when it adds no period.

    Only (task, granularity) panels the finished study has count: a panel with no cells yet is a
    new matrix, evaluated in full as before, not an extension.
    """
    if not store.exists() or not store.has_table(CELLS_TABLE):
        return None
    before = study_periods(results.read_table(store, CELLS_TABLE))
    wanted = {(t, g): config.period_list(g) for t in config.tasks for g in config.granularities}
    added = {key: [p for p in periods if p not in set(before[key])] for key, periods in wanted.items() if key in before}
    added = {key: periods for key, periods in added.items() if periods}
    if not added:
        return None
    extension = Extension({key: before[key] for key in added}, added)  # type: ignore[arg-type]  # Literal keys are str keys
    check_compatible(config, store, before, wanted)  # type: ignore[arg-type]  # Literal keys are str keys
    return extension


def _range_field(config: ExperimentConfig, granularity: str) -> str:
    return "month_periods" if granularity == "month" and config.month_periods is not None else "periods"


def check_compatible(config: ExperimentConfig, store: VectorStore, before: dict[Panel, list[str]],
                     wanted: dict[Panel, list[str]]) -> None:
    """Refuse an extension whose new cells could not stand beside the old ones, naming the field."""
    where = f"the study in store {store.url}"
    for name, have, want in (("tasks", {t for t, _ in before}, set(config.tasks)),
                             ("granularities", {g for _, g in before}, set(config.granularities))):
        if have != want:
            raise ConfigError(
                f"{name}: {where} has {sorted(have)}, the config {sorted(want)}; adding periods needs the same "
                f"{name} (a new one needs its whole matrix: run it with the study's periods first, or use another store.url)"
            )
    for (task, granularity), old in before.items():
        new = wanted.get((task, granularity), [])
        dropped = [p for p in old if p not in set(new)]
        if dropped:
            field = _range_field(config, granularity)
            bound = "start" if new and sort_periods([dropped[0], new[0]])[0] == dropped[0] else "end"
            raise ConfigError(
                f"{field}.{bound}: the config adds periods to {where} but drops {', '.join(dropped)} "
                f"({task}/{granularity}: the study has {old[0]}–{old[-1]}); an extension keeps every period"
            )
    for task in config.tasks:
        stored = sort_periods(p for _, p in store.list_vectors(task))
        if not stored:
            continue
        trained = store.manifest(task, stored[-1]).get("run", {}).get("config") or {}
        mine = config.model_dump(mode="json")
        for section in SETTINGS:
            if section not in trained:
                continue
            difference = first_difference(trained[section], mine[section], section)
            if difference is not None:
                path, old_value, new_value = difference
                raise ConfigError(
                    f"{path}: {where} was run with {old_value!r} (manifest of vector {task}/{stored[-1]}), the config "
                    f"has {new_value!r}; new periods must be trained and evaluated as the old ones were"
                )


def first_difference(old: Any, new: Any, path: str) -> tuple[str, Any, Any] | None:
    """The first (dotted path, old value, new value) where two config dumps differ, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = first_difference(old.get(key), new.get(key), f"{path}.{key}")
            if found is not None:
                return found
        return None
    return None if old == new else (path, old, new)


def keep_apart(store: VectorStore, extension: Extension) -> list[str]:
    """Move every range-dependent file of ``results/`` and ``reports/`` into ``extension.archive``.

    Each file is copied (published under its final name) before it is removed, and a file already
    in the archive is never overwritten, so a run killed half-way and re-run loses nothing.
    Returns the paths moved.
    """
    moved = []
    for folder in MOVED_FOLDERS:
        for rel in store.list_paths(folder):
            if table_of(rel) in REUSED_TABLES:  # the table file and any appended parts of it stay
                continue
            target = f"{extension.archive}/{rel}"
            if not store.exists_path(target):
                store.write_bytes(target, store.read_bytes(rel))
            store.remove_paths([rel])
            moved.append(rel)
    return moved


def prepare_extension(config: ExperimentConfig, store: VectorStore) -> Extension | None:
    """Before the stages of a run: detect an extension of the study in ``store``, check it, keep the
    old range's results apart and log what the stages will and will not do. None: no extension."""
    extension = find_extension(config, store)
    if extension is None:
        return None
    moved = keep_apart(store, extension)
    added = sorted({p for periods in extension.added.values() for p in periods})
    log.info(
        "extending the study in %s (%s) by %s: %d new fine-tune run(s), %d new cells (the new rows and columns, "
        "the base included); the old vectors, cells and analogy pairs are reused; interpolation, soups, patching, "
        "forecast, analysis and report depend on the range and are recomputed, the old ones kept in %s (%d files)",
        store.url, extension.label, ", ".join(added), extension.new_runs(), extension.new_cells(),
        extension.archive, len(moved),
    )
    return extension
