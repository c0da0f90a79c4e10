"""The all-pairs cell matrix on a real local Ray cluster: completeness, values, restore, resumption."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest
import torch

from timevec.config import load_config
from timevec.data.corpus import load_corpus
from timevec.data.examples import prepare_eval_sets
from timevec.data.models import (
    assign_parameters,
    base_from_store,
    base_id,
    build_model,
    float_parameters,
    load_tokenizer,
)
from timevec.distributed.cells import read_cell_examples, read_cells, run_cells
from timevec.evaluate.cells import CellEvaluator
from timevec.evaluate.metrics import evaluate
from timevec.evaluate.sequential import example_order
from timevec.results import CELL_EXAMPLES_TABLE, CELL_KEY, CELLS_SCHEMA, CELLS_TABLE, TABLES
from timevec.results import CELLS_COLUMNS as COLUMNS
from timevec.store import StoreError, VectorStore
from timevec.weights.vectors import TimeVector

PERIODS = ["2014", "2015", "2016"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The tiny demo config over 2014–2016, a store with the (random-init) base and 3 vectors."""
    root = tmp_path_factory.mktemp("cells-store")
    config = load_config(
        "timevec/demo/tiny.yaml",
        [
            f"store.url={root}",
            "periods.start='2014'",
            "periods.end='2016'",
            "evaluation.max_examples=6",
            "tasks=[lm]",
            "granularities=[year]",
            "ray.eval_actors=2",
            "ray.max_failures=0",
        ],
    )
    tokenizer = load_tokenizer(config.base)
    base = {n: p.detach().clone() for n, p in float_parameters(build_model(config.base, tokenizer)).items()}
    store = VectorStore.from_config(config.store)
    store.init(base_id(config.base), base)
    for i, period in enumerate(PERIODS):
        g = torch.Generator().manual_seed(100 + i)
        store.put_vector("lm", period, TimeVector({n: 0.05 * torch.randn(t.shape, generator=g) for n, t in base.items()}))
    splits = prepare_eval_sets(config, corpus=load_corpus(config.corpus), tokenizer=tokenizer)["test"]
    return config, store, base, splits


def _direct_value(config, store, split, vector: TimeVector | None) -> float:
    """base (+ vector) put into a freshly loaded model by hand, no patcher, no Ray."""
    model, tokenizer = base_from_store(config.base, store)
    if vector is not None:
        base = store.get_base()
        assign_parameters(model, {n: base[n] + vector[n] for n in base})
    return evaluate(model, split, config.evaluation, tokenizer=tokenizer)["value"]


def test_matrix_is_complete_and_equals_direct_evaluation(ray_session, study):
    config, store, _, splits = study
    cells, stats = run_cells(config, store)
    assert list(cells.columns) == COLUMNS
    assert len(cells) == 3 * 3 + 3  # 3 vectors × 3 test periods + the base on each test period
    assert set(cells["vector"]) == {"base", "lm/2014", "lm/2015", "lm/2016"}
    assert cells.loc[cells["vector"] == "base", "train_period"].isna().all()
    assert (cells["metric"] == "perplexity").all() and not cells["higher_is_better"].any()
    assert (cells["granularity"] == "year").all()
    assert (cells["n_examples"] == 6).all() and (cells["n_tokens"] > 0).all() and (cells["seconds"] > 0).all()
    assert stats.cells_computed == 12 and stats.cells_skipped == 0
    assert stats.model_loads == stats.actors == 2  # one load per actor, not per cell
    assert stats.vector_reads == 3  # one read per vector, not per cell
    # the stored table has the exact schema other stages read
    stored = store.read_table(CELLS_TABLE)
    assert TABLES[CELLS_TABLE].arrow(stored).schema.equals(TABLES[CELLS_TABLE].arrow(cells).schema)
    schema = pq.read_schema(f"{store.url}/results/{CELLS_TABLE}.parquet")
    assert schema.remove_metadata().equals(CELLS_SCHEMA)
    assert len(stored) == 12
    # values equal a direct evaluation (spot-check the diagonal, an off-diagonal cell and the base)
    by_key = cells.set_index(["vector", "test_period"])["value"]
    lm = splits[("lm", "year")]
    for vector, test in [("lm/2015", "2015"), ("lm/2014", "2016"), ("base", "2014")]:
        tau = None if vector == "base" else store.get_vector("lm", vector.split("/")[1])
        assert by_key[(vector, test)] == pytest.approx(_direct_value(config, store, lm[test], tau), rel=1e-6)
    # vectors matter: each column differs across rows
    assert cells.groupby("test_period")["value"].nunique().min() == 4


def test_evaluator_restores_the_base_exactly(study):
    config, store, base, splits = study
    evaluator = CellEvaluator(config, store, splits, device="cpu")
    before = evaluator.evaluate_base("lm", "year")
    rows = []
    for period in PERIODS:
        rows += evaluator.evaluate_vector(("lm", period))
    assert len(rows) == 9 and {r["vector"] for r in rows} == {"lm/2014", "lm/2015", "lm/2016"}
    stored_base = store.get_base()
    for name, param in float_parameters(evaluator.model).items():
        assert torch.equal(param.detach(), stored_base[name]), name
        assert torch.equal(param.detach(), base[name]), name
    after = evaluator.evaluate_base("lm", "year")
    assert [r["value"] for r in after] == [r["value"] for r in before]
    # combinations (interpolation/analogy stages): 0.5·τ + 0.5·τ evaluates like τ, then restores
    tau = store.get_vector("lm", "2015")
    split = splits[("lm", "year")]["2016"]
    half = evaluator.evaluate_weights([(0.5, tau), (0.5, tau)], [split])[0]
    full = evaluator.evaluate_weights([(1.0, tau)], [split])[0]
    assert half["value"] == pytest.approx(full["value"], rel=1e-5)
    assert half["task"] == "lm" and half["test_period"] == "2016"
    for name, param in float_parameters(evaluator.model).items():
        assert torch.equal(param.detach(), stored_base[name]), name
    assert evaluator.stats.model_loads == 1 and evaluator.stats.vector_reads == 3
    assert 0 < evaluator.stats.forward_cpu_seconds  # the bench's load-independent cost of the forward passes


def test_rerun_computes_only_missing_cells_and_names_a_broken_vector(ray_session, study):
    config, store, _, _ = study
    if not store.has_table(CELLS_TABLE):
        run_cells(config, store)
    first = read_cells(store)
    again, stats = run_cells(config, store)
    assert stats.cells_computed == 0 and stats.model_loads == 0 and stats.cells_skipped == 12
    assert len(store.read_table(CELLS_TABLE)) == 12
    assert again.sort_values(CELL_KEY).reset_index(drop=True).equals(first.sort_values(CELL_KEY).reset_index(drop=True))

    # delete 3 cells of lm/2015 and the base, and all of lm/2016, whose shard is then corrupted
    dropped = (
        ((first["vector"] == "lm/2015") & (first["test_period"] != "2014"))
        | ((first["vector"] == "base") & (first["test_period"] == "2016"))
        | (first["vector"] == "lm/2016")
    )
    store.write_table(CELLS_TABLE, TABLES[CELLS_TABLE].arrow(first[~dropped]))
    tau_2016 = store.get_vector("lm", "2016")
    shard = next(p for p in store.list_paths("vectors/lm/2016") if p.endswith(".safetensors"))
    data = bytearray(store.read_bytes(shard))
    data[-1] ^= 0xFF
    store.write_bytes(shard, bytes(data))
    try:
        with pytest.raises(StoreError, match="lm/2016"):  # the run fails naming the vector …
            run_cells(config, store)
    finally:
        store.put_vector("lm", "2016", tau_2016)
    redone = read_cells(store)  # … after storing every other cell
    assert len(redone) == 9 and "lm/2016" not in set(redone["vector"])
    merged = redone.merge(first, on=CELL_KEY, suffixes=("", "_old"))
    recomputed = merged["seconds"] != merged["seconds_old"]
    assert sorted(map(tuple, merged.loc[recomputed, ["vector", "test_period"]].to_numpy())) == [
        ("base", "2016"), ("lm/2015", "2015"), ("lm/2015", "2016")
    ]  # only the deleted cells were computed again, with the same values
    assert merged["value"].to_numpy() == pytest.approx(merged["value_old"].to_numpy(), rel=1e-6)


def test_cells_to_a_target_precision_store_the_examples_they_scored(ray_session, study, tmp_path):
    """evaluation.target_halfwidth: every cell stops after its first block here (a loose target); the cells record
    the examples scored and the half-width, and cell_examples holds their statistics, whose value is the cell's."""
    config, store, _, splits = study
    shutil.copytree(store.url, tmp_path / "store", ignore=shutil.ignore_patterns("results"))
    config = config.model_copy(update={
        "store": config.store.model_copy(update={"url": str(tmp_path / "store")}),
        "evaluation": config.evaluation.model_copy(update={"target_halfwidth": 1000.0, "block_examples": 2}),
    })
    target_store = VectorStore.from_config(config.store)
    cells, _ = run_cells(config, target_store)
    assert len(cells) == 12 and (cells["n_examples"] == 2).all()  # 2 of the 6 examples of each split
    assert ((cells["halfwidth"] > 0) & (cells["halfwidth"] <= 1000.0)).all()
    examples = read_cell_examples(target_store, config.evaluation.bootstrap_samples, config.evaluation.bootstrap_seed)
    assert len(examples) == 12
    for row in cells.itertuples(index=False):
        stats = examples[(row.task, row.granularity, row.vector, row.test_period)]
        assert len(stats) == 2 and stats.value() == row.value
        interval = stats.interval(config.evaluation.confidence)
        assert (interval.low, interval.high) == (row.low, row.high)
    # the first two examples of the split's seeded order, the same for every vector
    split = splits[("lm", "year")]["2015"]
    order = example_order(split.n_examples, config.evaluation.bootstrap_seed, "lm", "2015")
    counts = [sum(t != -100 for t in split.examples[i].labels) - 1 for i in order[:2]]  # decoder-only: not the 1st
    for vector in ("base", "lm/2014", "lm/2016"):
        assert examples[("lm", "year", vector, "2015")].tokens.tolist() == counts
    # the study's own store (the target off) has no cell_examples: every cell scored every example
    assert not store.has_table(CELL_EXAMPLES_TABLE)
