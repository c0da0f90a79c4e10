"""Bench: the task-analogy α search — combination vs evaluation cost, Optuna vs the grid, Tune overhead.

    .venv/bin/python bench/analogy.py --prepare-only --trained-store DIR   # once: train (b)'s vectors, landscapes
    .venv/bin/python bench/analogy.py --trained-store DIR [--seeds 5] [--tune-grid 3x2x2] [--study CONFIG] [--quick]
    .venv/bin/python bench/analogy.py --scheduler [--scheduler-grid tiny|4x3x3|reference]   # (d) alone

Three measurements, printed side by side in one run:

(a) **weight combination vs evaluation, per trial.** One trial writes θ_pre + α₁τ₁ + α₂τ₂ − α₃τ₃
    into the live model in place and restores θ_pre (``patch``), and evaluates the validation and
    test splits (``eval``); both timed by the trial's own :class:`CellEvaluator` counters, for the
    demo-sized model (GPT-2 style, d128 × 2 layers, 466 K params) at the demo's split sizes and at
    small splits, and for a 4× wider model. Goal: patch ≤ 5 % of eval.
(b) **Optuna vs the grid.** Small classification and LM vectors are TRAINED here (the library's
    training loop, no Ray) for four years; for each pair (j, k) the whole 324-point reference grid is
    evaluated ONCE directly on k's validation split (no Tune) — the landscape. Then Optuna's TPE
    sampler, set up as :class:`ray.tune.search.optuna.OptunaSearch` is in the stage (the three grid
    INDICES as ordered integers, seeded), is REPLAYED against that landscape: each suggestion is
    answered from the table instead of a trial. Counted: evaluations until the best validation
    value seen is within 1 % of the grid's best (goal ≤ 25 % of the grid = 81), over pairs × seeds,
    next to uniform random search without replacement as the control. Sequential replay: the
    stage's 2 concurrent trials give TPE slightly less information per suggestion.
(c) **Tune per-trial overhead**, ``reuse_actors`` on vs off, with the stage's real trainable
    (:class:`AnalogyTrial`) on a tiny split, ``max_concurrent_trials=2``: wall time per trial minus the
    trial's own work.
(d) **full vs successive halving** (``analogy.scheduler: full | asha``): the stage itself
    (:func:`timevec.distributed.analogy.run_analogy`, on a local Ray of 2 CPUs) run four times (full,
    asha, asha, full: each mode once first) on fresh, identical stores — the tiny demo config
    (classification, its 2 × 2 × 2 grid unless ``--scheduler-grid`` names another) with seeded
    random vectors — with ASHA at its defaults (``grace_examples`` 16,
    ``reduction_factor`` 3; ``--grace-examples``/``--reduction-factor`` change them). Printed side by
    side: the examples the search scored (validation, and test for the points that completed; the
    baselines' evaluations, the same in both, are not counted), the points stopped, the stage's wall
    time (baselines included), and the chosen α with its validation and test values.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import statistics
import tempfile
import time

import harness
import numpy as np
import torch

from timevec.adapt import analogy as task_analogy
from timevec.config import AnalogyConfig, ExperimentConfig, TrainingConfig, load_config
from timevec.data.corpus import load_corpus
from timevec.data.examples import prepare_split, task_examples
from timevec.data.models import base_id, build_model, float_parameters, load_tokenizer
from timevec.evaluate.cells import CellEvaluator
from timevec.store import VectorStore
from timevec.train.loop import pretrain_base, train
from timevec.weights.vectors import TimeVector

TINY = harness.REPO / "timevec" / "demo" / "tiny.yaml"
log = logging.getLogger("bench.analogy")


REFERENCE_GRID = [  # the paper's 9 × 6 × 6 (AnalogyConfig's defaults; tiny.yaml has a 2 × 2 × 2 grid)
    "analogy.alpha1=[0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2]",
    "analogy.alpha2=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]",
    "analogy.alpha3=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]",
]


def config_for(root: str, overrides: list[str]) -> ExperimentConfig:
    return load_config(TINY, [f"store.url={root}", "tasks=[lm, classification]", "ray.max_failures=0", *REFERENCE_GRID,
                              *overrides])


def random_store(config: ExperimentConfig, keys: list[tuple[str, str]], scale: float = 0.05) -> VectorStore:
    """The (random-init) base and seeded random vectors: evaluation cost does not depend on the values."""
    tokenizer = load_tokenizer(config.base)
    base = {n: p.detach().clone() for n, p in float_parameters(build_model(config.base, tokenizer)).items()}
    store = VectorStore.from_config(config.store)
    store.init(base_id(config.base), base)
    for i, (task, period) in enumerate(keys):
        g = torch.Generator().manual_seed(i)
        store.put_vector(task, period, TimeVector({n: scale * torch.randn(t.shape, generator=g) for n, t in base.items()}))
    return store


# ----------------------------------------------------------------------------- (a)


def bench_combination(tmp: str, quick: bool) -> list[dict]:
    """patch (apply 3 terms + restore) vs evaluation (validation + test) per trial."""
    settings = [
        ("demo model, demo splits (300 texts)", "d_model: 128, num_layers: 2, num_heads: 4, d_ff: 512, max_positions: 160", 160, 300),
        ("demo model, small splits (32 texts)", "d_model: 128, num_layers: 2, num_heads: 4, d_ff: 512, max_positions: 160", 160, 32),
        ("4x wider, 2x deeper (d512, 4 layers), 16 texts",
         "d_model: 512, num_layers: 4, num_heads: 8, d_ff: 2048, max_positions: 160", 160, 16),
    ]
    if quick:
        settings = settings[1:2]
    out = []
    for i, (label, tiny, length, examples) in enumerate(settings):
        root = os.path.join(tmp, f"combo{i}")
        config = config_for(root, ["base.arch=gpt2", f"base.tiny={{{tiny}}}", f"evaluation.max_length={length}",
                                   f"evaluation.max_examples={examples}", "periods.start='2016'", "periods.end='2017'",
                                   "corpus.caps={train: 2000, validation: 300, test: 300}"])
        store = random_store(config, [("classification", "2016"), ("lm", "2017"), ("lm", "2016")])
        corpus = load_corpus(config.corpus)
        tokenizer = load_tokenizer(config.base)
        splits = [prepare_split("classification", corpus, "2017", tokenizer, False, config.evaluation, split=s)
                  for s in ("validation", "test")]
        torch.set_num_threads(1)  # as in a trial actor (ray.torch_threads)
        evaluator = CellEvaluator(config, store, device="cpu")
        tj, lk, lj = (evaluator.read_vector(t, p) for t, p in [("classification", "2016"), ("lm", "2017"), ("lm", "2016")])
        n_params = sum(v.numel() for v in tj.tensors.values())
        points = [(1.4, 0.3, 0.2), (2.2, 0.6, 0.6)]
        evaluator.patcher.apply_combination(task_analogy.analogy_terms(1.0, tj, 0.1, lk, 0.1, lj))  # warm-up (allocations)
        evaluator.patcher.restore()
        evaluator.stats.patch_seconds = evaluator.stats.forward_seconds = 0.0
        for a1, a2, a3 in points:
            evaluator.evaluate_weights(task_analogy.analogy_terms(a1, tj, a2, lk, a3, lj), splits)
        patch = evaluator.stats.patch_seconds / len(points)
        forward = evaluator.stats.forward_seconds / len(points)
        out.append({"setting": label, "params": n_params, "texts": f"{splits[0].n_examples}+{splits[1].n_examples}",
                    "patch_ms": patch * 1e3, "eval_ms": forward * 1e3, "ratio_pct": 100 * patch / forward})
    return out


# ----------------------------------------------------------------------------- (b)


def train_vectors(root: str, years: list[str], quick: bool) -> tuple[ExperimentConfig, VectorStore]:
    """A small pretrained base and classification + lm vectors per year, trained here (no Ray).

    Training is not what this bench measures: when ``root`` already holds a complete store from
    an earlier run (``--trained-store``), it is reused as is.
    """
    config = config_for(root, [
        "base.arch=gpt2", "base.tiny={d_model: 64, num_layers: 2, num_heads: 4, d_ff: 256, max_positions: 96}",
        f"periods.start='{years[0]}'", f"periods.end='{years[-1]}'", "evaluation.max_length=96",
        "evaluation.max_examples=48", "corpus.caps={train: 400, validation: 60, test: 60}",
    ])
    store = VectorStore.from_config(config.store)
    wanted = {(t, y) for t in ("lm", "classification") for y in years}
    if store.exists() and wanted <= set(store.list_vectors()):
        log.info("reusing the trained store %s", root)
        return config, store
    torch.set_num_threads(2)
    corpus = load_corpus(config.corpus)
    tokenizer = load_tokenizer(config.base)
    model = build_model(config.base, tokenizer)
    texts = list(dict.fromkeys(t for y in years for t in corpus.texts(y, "train")))
    began = time.perf_counter()
    model, _ = pretrain_base(model, texts, tokenizer, steps=40 if quick else 120, batch_size=16, lr=3e-3, max_length=96)
    base = {n: p.detach().clone() for n, p in float_parameters(model).items()}
    store.init(base_id(config.base), base)
    steps = {"lm": 20 if quick else 40, "classification": 30 if quick else 60}
    for task, year in itertools.product(("lm", "classification"), years):
        examples = task_examples(task, corpus, year, "train", tokenizer, False, 96)
        cfg = TrainingConfig(lr=2e-3, steps=steps[task], batch_size=16, max_length=96, schedule="constant")
        tuned, _ = train(copy.deepcopy(model), examples, cfg, tokenizer.pad_token_id)
        store.put_vector(task, year, TimeVector.between(float_parameters(tuned), base))
    log.info("trained base + %d vectors in %.0f s", 2 * len(years), time.perf_counter() - began)
    return config, store


def landscape(config: ExperimentConfig, store: VectorStore, j: str, k: str, cache: str | None = None) -> np.ndarray:
    """Validation macro-F1 of all 324 grid points (index order α₁, α₂, α₃), evaluated directly.

    Evaluations are deterministic, so a landscape computed by ``--prepare-only`` (saved next to
    the trained store) is reused as is: (b) measures how many points a searcher needs, not how
    long a point takes (that is (a)).
    """
    path = os.path.join(cache, f"landscape-{j}-{k}.npy") if cache else None
    if path and os.path.exists(path):
        return np.load(path)
    torch.set_num_threads(1)  # as a trial actor does; 2 threads on a shared 2-core machine thrash
    corpus = load_corpus(config.corpus)
    tokenizer = load_tokenizer(config.base)
    split = prepare_split("classification", corpus, k, tokenizer, False, config.evaluation, split="validation")
    evaluator = CellEvaluator(config, store, device="cpu")
    tj, lk, lj = (evaluator.read_vector(t, p) for t, p in [("classification", j), ("lm", k), ("lm", j)])
    cfg = config.analogy
    values = np.zeros((len(cfg.alpha1), len(cfg.alpha2), len(cfg.alpha3)))
    for (i, a1), (m, a2), (n, a3) in itertools.product(enumerate(cfg.alpha1), enumerate(cfg.alpha2), enumerate(cfg.alpha3)):
        values[i, m, n] = evaluator.evaluate_weights(task_analogy.analogy_terms(a1, tj, a2, lk, a3, lj), [split])[0]["value"]
    if path:
        np.save(path, values)
    return values


def evaluations_to_reach(values: np.ndarray, order: list[tuple[int, int, int]], tolerance: float = 0.01) -> int:
    """How many proposals until the best seen is within ``tolerance`` of the grid's best (max)."""
    target = values.max() - tolerance * abs(values.max())
    best = -np.inf
    for count, idx in enumerate(order, start=1):
        best = max(best, values[idx])
        if best >= target:
            return count
    return len(order) + 1  # never reached


def optuna_order(values: np.ndarray, seed: int, budget: int) -> list[tuple[int, int, int]]:
    """Replay: TPE over the grid indices (as OptunaSearch gets them from tune.randint), seeded."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    n1, n2, n3 = values.shape
    distributions = {"alpha1_index": optuna.distributions.IntDistribution(0, n1 - 1),
                     "alpha2_index": optuna.distributions.IntDistribution(0, n2 - 1),
                     "alpha3_index": optuna.distributions.IntDistribution(0, n3 - 1)}
    order = []
    target = values.max() - 0.01 * abs(values.max())
    for _ in range(budget):
        trial = study.ask(distributions)
        idx = (trial.params["alpha1_index"], trial.params["alpha2_index"], trial.params["alpha3_index"])
        study.tell(trial, float(values[idx]))
        order.append(idx)
        if values[idx] >= target:
            break
    return order


PAIRS = [("2014", "2015"), ("2014", "2016"), ("2014", "2017")]


def real_study(path: str) -> tuple[ExperimentConfig, VectorStore, list[tuple[str, str]]]:
    """An existing study (e.g. the demo's, after ``timevec demo``): its store and (first year, k) pairs."""
    config = load_config(path, REFERENCE_GRID)
    store = VectorStore.from_config(config.store)
    stored = set(store.list_vectors())
    pairs, skipped = task_analogy.analogy_pairs(config, stored)
    for reason in skipped:
        log.warning("study %s: %s", path, reason)
    return config, store, pairs


def bench_optuna(tmp: str, seeds: int, quick: bool, trained: str | None, study: str | None = None) -> tuple[list[dict], dict]:
    if study:
        config, store, pairs = real_study(study)
        if not pairs:
            raise SystemExit(f"{study}: no analogy pair has its vectors stored")
    else:
        config, store = train_vectors(trained or os.path.join(tmp, "trained"), ["2014", "2015", "2016", "2017"], quick)
        pairs = PAIRS if not quick else PAIRS[1:2]
    grid_size = len(config.analogy.alpha1) * len(config.analogy.alpha2) * len(config.analogy.alpha3)
    rows = []
    for pair_index, (j, k) in enumerate(pairs):
        began = time.perf_counter()
        values = landscape(config, store, j, k, trained)
        grid_seconds = time.perf_counter() - began
        all_idx = list(itertools.product(*(range(s) for s in values.shape)))
        for seed in range(seeds):
            order = optuna_order(values, seed, grid_size)
            opt = evaluations_to_reach(values, order, 0.01)
            rng = np.random.default_rng([seed, pair_index])
            rand = evaluations_to_reach(values, [all_idx[i] for i in rng.permutation(len(all_idx))], 0.01)
            distinct = len(set(order)) if opt <= grid_size else grid_size + 1
            rows.append({"pair": f"{j}→{k}", "seed": seed, "optuna": opt, "optuna_distinct": distinct, "random": rand})
        best_idx = np.unravel_index(values.argmax(), values.shape)
        near = int((values >= values.max() - 0.01 * abs(values.max())).sum())
        log.info("%s→%s: grid of %d evaluated in %.0f s; best %.4f at α=(%.1f, %.1f, %.1f); %d points within 1%%; "
                 "spread %.4f..%.4f", j, k, values.size, grid_seconds, values.max(), config.analogy.alpha1[best_idx[0]],
                 config.analogy.alpha2[best_idx[1]], config.analogy.alpha3[best_idx[2]], near, values.min(), values.max())
        rows[-1]["near_best"] = near
        rows[-1]["random_expected"] = (values.size + 1) / (near + 1)  # without replacement, m targets
    return rows, {"grid": grid_size}


# ----------------------------------------------------------------------------- (c)


def bench_tune(tmp: str, shape: tuple[int, int, int]) -> list[dict]:
    """Wall time per trial of the stage's trainable with reuse_actors on vs off (same sub-grid)."""
    import ray
    from ray import tune

    from timevec.distributed import analogy_trial as dist

    root = os.path.join(tmp, "tune-store")
    config = config_for(root, ["periods.start='2016'", "periods.end='2017'", "evaluation.max_examples=4"])
    store = random_store(config, [("classification", "2016"), ("lm", "2017"), ("lm", "2016")])
    corpus = load_corpus(config.corpus)
    tokenizer = load_tokenizer(config.base)
    val, test = (prepare_split("classification", corpus, "2017", tokenizer, False, config.evaluation, split=s)
                 for s in ("validation", "test"))
    cfg = config.analogy
    payload = dist.AnalogyPayload(config, store, "classification", "2016", "2017", val, test,
                                  tuple(cfg.alpha1), tuple(cfg.alpha2), tuple(cfg.alpha3))
    space = {"alpha1": tune.grid_search(list(cfg.alpha1[: shape[0]])),
             "alpha2": tune.grid_search(list(cfg.alpha2[: shape[1]])),
             "alpha3": tune.grid_search(list(cfg.alpha3[: shape[2]]))}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = []
    try:
        for reuse in (True, False):
            trainable = tune.with_resources(tune.with_parameters(dist.AnalogyTrial, payload=payload), {"cpu": 1})
            tuner = tune.Tuner(
                trainable,
                param_space=space,
                tune_config=tune.TuneConfig(metric="validation", mode="max", reuse_actors=reuse, max_concurrent_trials=2),
                run_config=tune.RunConfig(name=f"reuse-{reuse}", storage_path=os.path.join(tmp, "tune"), verbose=0,
                                          checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False)),
            )
            began = time.perf_counter()
            results = list(tuner.fit())
            wall = time.perf_counter() - began
            errors = [r.error for r in results if r.error is not None]
            if errors:
                raise RuntimeError(f"{len(errors)} trials failed: {errors[0]}")
            work = [r.metrics["patch_seconds"] + r.metrics["eval_seconds"] for r in results]
            pids = {r.metrics["pid"] for r in results}
            finished = sorted(r.metrics["finished_at"] for r in results)
            out.append({"reuse_actors": reuse, "trials": len(results), "wall_s": wall, "per_trial_s": wall / len(results),
                        # after the first result (actor start-up, shared by both settings): the pace of the rest
                        "steady_s": (finished[-1] - finished[0]) / max(len(finished) - 1, 1),
                        "work_per_trial_s": statistics.mean(work), "processes": len(pids),
                        # two trials run at a time: the work's share of wall time is work / 2
                        "overhead_per_trial_s": wall / len(results) - statistics.mean(work) / 2})
    finally:
        ray.shutdown()
    return out


# ----------------------------------------------------------------------------- (d)


def bench_scheduler(tmp: str, grid: str, grace: int = 16, factor: float = 3.0) -> list[dict]:
    """The analogy stage under ``analogy.scheduler: full`` and ``asha`` on one store (tiny demo config)."""
    import ray

    from timevec.distributed.analogy import ANALOGY_BEST_TABLE, ANALOGY_TABLE, run_analogy

    root = os.path.join(tmp, "scheduler-store")
    shapes = {"tiny": None, "reference": (9, 6, 6)}
    shape = shapes[grid] if grid in shapes else tuple(int(x) for x in grid.split("x"))
    overrides = ["periods.start='2016'", "periods.end='2017'", "ray.eval_actors=2", "analogy.max_concurrent_trials=2",
                 f"analogy.grace_examples={grace}", f"analogy.reduction_factor={factor}"]
    if shape is not None:  # a sub-grid of the paper's reference grid (AnalogyConfig's defaults)
        reference = AnalogyConfig()
        grids = (reference.alpha1, reference.alpha2, reference.alpha3)
        overrides += [f"analogy.alpha{i + 1}={list(g[:n])}" for i, (g, n) in enumerate(zip(grids, shape))]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = []
    try:
        # full, asha, asha, full: each mode once first and once after the other (the cluster's first run pays worker
        # start-up); each run on a store of its own with the same seeded vectors (nothing of the previous run is reused)
        for i, scheduler in enumerate(("full", "asha", "asha", "full")):
            base = load_config(TINY, [f"store.url={root}-{i}", "ray.max_failures=0", *overrides])
            # scale 0.3: the random tiny model's macro-F1 varies over the grid (tests/test_analogy.py's study)
            store = random_store(base, [("classification", "2016"), ("lm", "2017"), ("lm", "2016")], scale=0.3)
            config = base.with_overrides([f"analogy.scheduler={scheduler}", f"ray.storage_path={os.path.join(tmp, str(i))}"])
            began = time.perf_counter()
            run_analogy(config, store)
            wall = time.perf_counter() - began
            table = store.read_table(ANALOGY_TABLE)
            points = table[(table["method"] == "analogy") & (table["split"] == "validation")]
            best = store.read_table(ANALOGY_BEST_TABLE)
            best = best[best["method"] == "analogy"].set_index("split")
            complete = int((~points["stopped"]).sum())
            n_val = int(points["validation_examples"].max())
            out.append({"scheduler": scheduler, "points": len(points), "stopped": int(points["stopped"].sum()),
                        "validation_examples": int(points["validation_examples"].sum()),
                        "test_examples": complete * n_test(config, store), "n_validation": n_val, "wall_s": wall,
                        "grace": grace, "factor": factor, "alpha": tuple(float(best.loc["test", f"alpha{i}"]) for i in (1, 2, 3)),
                        "validation": float(best.loc["validation", "value"]), "test": float(best.loc["test", "value"])})
    finally:
        ray.shutdown()
    return out


def n_test(config: ExperimentConfig, store: VectorStore) -> int:
    """The examples of the pair's test split (2017's classification test set, as the stage prepares it)."""
    from timevec.data.examples import prepare_eval_sets

    sets = prepare_eval_sets(config, {("classification", "year"): ["2017"]}, ("test",), store=store, keep_empty=True)
    return sets["test"][("classification", "year")]["2017"].n_examples


def print_scheduler(rows: list[dict], seconds: float) -> None:
    print(f"\n(d) the analogy stage, full vs ASHA (grace_examples {rows[1]['grace']}, reduction_factor {rows[1]['factor']:g}), "
          "runs in the order full, asha, asha, full, 1 pair, "
          f"{rows[0]['points']} points, {rows[0]['n_validation']} validation examples   [{seconds:.0f} s]")
    print(f"{'scheduler':>9s} {'stopped':>7s} {'val ex':>7s} {'test ex':>7s} {'all ex':>7s} {'wall s':>7s} "
          f"{'chosen α':>18s} {'validation':>10s} {'test':>8s}")
    for r in rows:
        alpha = "(" + ", ".join(f"{a:g}" for a in r["alpha"]) + ")"
        print(f"{r['scheduler']:>9s} {r['stopped']:7d} {r['validation_examples']:7d} {r['test_examples']:7d} "
              f"{r['validation_examples'] + r['test_examples']:7d} {r['wall_s']:7.1f} {alpha:>18s} "
              f"{r['validation']:10.4f} {r['test']:8.4f}")
    by = {m: [r for r in rows if r["scheduler"] == m] for m in ("full", "asha")}
    total = {m: statistics.mean(r["validation_examples"] + r["test_examples"] for r in by[m]) for m in by}
    wall = {m: statistics.mean(r["wall_s"] for r in by[m]) for m in by}
    print(f"asha: {100 * total['asha'] / total['full']:.0f}% of full's examples, {100 * wall['asha'] / wall['full']:.0f}% of its "
          f"mean wall time; same α in every run: {len({r['alpha'] for r in rows}) == 1}")


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tune-grid", default="3x2x2", help="sub-grid of the reference grid for (c): n1xn2xn3")
    parser.add_argument("--quick", action="store_true", help="one setting / one pair (smoke run)")
    parser.add_argument("--trained-store", help="folder for (b)'s trained vectors, reused when complete")
    parser.add_argument("--prepare-only", action="store_true",
                        help="train (b)'s vectors and evaluate its landscapes into --trained-store, then stop")
    parser.add_argument("--study", help="(b) on an existing study's store instead (its YAML config, e.g. the demo's); "
                        "landscapes are cached in --trained-store when given")
    parser.add_argument("--scheduler", action="store_true", help="(d) alone: the stage, full vs asha")
    parser.add_argument("--scheduler-grid", default="tiny",
                        help="(d)'s grid: tiny (the demo's 2x2x2), reference (9x6x6) or n1xn2xn3 (a sub-grid of the reference)")
    parser.add_argument("--grace-examples", type=int, default=16, help="(d): analogy.grace_examples of the asha run")
    parser.add_argument("--reduction-factor", type=float, default=3.0, help="(d): analogy.reduction_factor of the asha run")
    args = parser.parse_args()
    harness.output_block()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    began = time.perf_counter()
    if args.scheduler:
        with tempfile.TemporaryDirectory(prefix="bench-analogy-") as tmp:
            rows = bench_scheduler(tmp, args.scheduler_grid, args.grace_examples, args.reduction_factor)
        print_scheduler(rows, time.perf_counter() - began)
        print(f"\ntotal {time.perf_counter() - began:.0f} s; {harness.load_note()} on {os.cpu_count()} cores")
        return
    if args.prepare_only:
        if not args.trained_store:
            parser.error("--prepare-only needs --trained-store")
        config, store = train_vectors(args.trained_store, ["2014", "2015", "2016", "2017"], args.quick)
        for j, k in PAIRS:
            landscape(config, store, j, k, args.trained_store)
        log.info("prepared %s in %.0f s", args.trained_store, time.perf_counter() - began)
        return
    with tempfile.TemporaryDirectory(prefix="bench-analogy-") as tmp:
        t0 = time.perf_counter()
        combo = bench_combination(tmp, args.quick)
        t1 = time.perf_counter()
        optuna_rows, info = bench_optuna(tmp, args.seeds, args.quick, args.trained_store, args.study)
        t2 = time.perf_counter()
        shape = tuple(int(x) for x in args.tune_grid.split("x"))
        tune_rows = bench_tune(tmp, shape)  # type: ignore[arg-type]
        t3 = time.perf_counter()
        scheduler_rows = bench_scheduler(tmp, args.scheduler_grid, args.grace_examples, args.reduction_factor)
        t4 = time.perf_counter()
    print(f"\n(a) weight combination vs evaluation per trial (1 torch thread)   [{t1 - t0:.0f} s]")
    print(f"{'setting':48s} {'params':>9s} {'texts':>9s} {'patch ms':>9s} {'eval ms':>10s} {'patch/eval':>10s}")
    for r in combo:
        print(f"{r['setting']:48s} {r['params']:9d} {r['texts']:>9s} {r['patch_ms']:9.2f} {r['eval_ms']:10.1f} {r['ratio_pct']:9.2f}%")
    grid = info["grid"]
    print(f"\n(b) evaluations to reach within 1% of the grid's best validation macro-F1 (grid = {grid})   [{t2 - t1:.0f} s]")
    print("(TPE replayed against the directly evaluated grid; 'distinct' = distinct points among its proposals;"
          f" {grid + 1} = not reached in {grid} proposals)")
    print(f"{'pair':12s} {'seed':>4s} {'optuna':>7s} {'distinct':>8s} {'random':>7s}")
    for r in optuna_rows:
        print(f"{r['pair']:12s} {r['seed']:4d} {r['optuna']:7d} {r['optuna_distinct']:8d} {r['random']:7d}" +
              (f"   ({r['near_best']} grid point(s) within 1%: random needs {r['random_expected']:.0f} on average)"
               if "near_best" in r else ""))
    opt = [r["optuna"] for r in optuna_rows]
    dis = [r["optuna_distinct"] for r in optuna_rows]
    rnd = [r["random"] for r in optuna_rows]
    print(f"{'median':12s} {'':4s} {statistics.median(opt):7.0f} {statistics.median(dis):8.0f} {statistics.median(rnd):7.0f}"
          f"   = {100 * statistics.median(opt) / grid:.0f}% (trials), {100 * statistics.median(dis) / grid:.0f}% (distinct "
          f"evaluations, repeats answered by the trial cache) vs {100 * statistics.median(rnd) / grid:.0f}% of the grid")
    print(f"{'within 25%':12s} {'':4s} {sum(o <= grid / 4 for o in opt):4d}/{len(opt)} {sum(o <= grid / 4 for o in dis):5d}/{len(dis)}"
          f" {sum(o <= grid / 4 for o in rnd):4d}/{len(rnd)}   runs that reached 1% of the best within 81 evaluations")
    print(f"\n(c) Tune per-trial overhead, {tune_rows[0]['trials']} trials, max_concurrent_trials=2   [{t3 - t2:.0f} s]")
    print(f"{'reuse_actors':>12s} {'wall s':>7s} {'s/trial':>8s} {'steady s/trial':>14s} {'work s':>7s} "
          f"{'overhead s':>10s} {'processes':>9s}")
    for r in tune_rows:
        print(f"{str(r['reuse_actors']):>12s} {r['wall_s']:7.1f} {r['per_trial_s']:8.3f} {r['steady_s']:14.3f} "
              f"{r['work_per_trial_s']:7.3f} {r['overhead_per_trial_s']:10.3f} {r['processes']:9d}")
    on, off = tune_rows
    print(f"reuse_actors=True: {off['per_trial_s'] / on['per_trial_s']:.1f}x less wall time per trial overall, "
          f"{off['steady_s'] / on['steady_s']:.1f}x after the first result "
          "(steady = time between the first and last result / (trials - 1), 2 trials at a time)")
    print_scheduler(scheduler_rows, t4 - t3)
    print(f"\ntotal {time.perf_counter() - began:.0f} s; {harness.load_note()} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
