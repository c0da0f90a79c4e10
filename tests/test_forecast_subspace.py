"""Subspace forecasting (timevec.adapt.subspace): the coefficient list against an explicit PCA of
small dense vectors and statsmodels' AutoReg, for every candidate AR model at every k imposed, and as
chosen from the past alone on series that each candidate generates, the simplex variant, and a real
store (dense and LoRA-factor vectors) whose held-out vectors are corrupt: the forecast never reads them.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from statsmodels.tsa.ar_model import AutoReg

from timevec.adapt import forecast, subspace
from timevec.adapt.forecast import ForecastItem, ForecastParams
from timevec.adapt.subspace import ArModel
from timevec.data.examples import EvalSplit
from timevec.store import VectorStore
from timevec.weights.lowrank import Factor, LowRankVector
from timevec.weights.vectors import TimeVector

PAST = ["2010", "2011", "2012", "2013", "2014", "2015"]
HELD_OUT = ["2016", "2017"]
SHAPES = {"a.weight": (6, 5), "a.bias": (6,), "b.weight": (4, 6)}


def _series(n: int, seed: int, noise: float = 0.3) -> np.ndarray:
    """n flat vectors: a drifting mean, an oscillation and noise (so PCA has several directions)."""
    rng = np.random.default_rng(seed)
    a, b, c = rng.normal(size=(3, 40))
    t = np.arange(n, dtype=np.float64)
    return a + np.outer(t, b) * 0.5 + np.outer(np.sin(t), c) + noise * rng.normal(size=(n, 40))


def _params(x: np.ndarray, **kw) -> ForecastParams:
    return ForecastParams(gram=tuple(map(tuple, x @ x.T)), **kw)


def _pca(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(μ, Z, Vᵀ) from an SVD of the centred data matrix: row i of Z holds the coordinates of x_i − μ."""
    mean = x.mean(0)
    u, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, u * s, vt


def _ar_fit(z: np.ndarray, model: ArModel, steps: int) -> tuple[float, np.ndarray]:
    """(ẑ, params): the ``steps``-ahead forecast of ``z`` by AutoReg on its d-th differences, and the fit's
    parameters ([constant,] lag 1 … lag p; empty for the random walk)."""
    y = np.diff(z, n=model.d) if model.d else z
    if model.n_params() == 0:
        path, params = np.zeros(steps), np.zeros(0)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exactly determined fits: no residual degrees of freedom
            fit = AutoReg(y, lags=model.p, trend="c" if model.const else "n").fit()
        path, params = fit.predict(start=len(y), end=len(y) + steps - 1), np.asarray(fit.params)
    return (path[-1] if model.d == 0 else z[-1] + path.sum()), params


def _dense_reference(x: np.ndarray, k: int, model: ArModel, steps: int) -> np.ndarray:
    """μ + Σ_j ẑ_j·v_j from an SVD of the centred data matrix, each coordinate forecast by AutoReg itself."""
    mean, z, vt = _pca(x)
    return mean + sum(_ar_fit(z[:, j], model, steps)[0] * vt[j] for j in range(k))


#: The chooser's candidates at the default ``subspace_max_order``: every model it can pick.
MODELS = subspace.candidate_models(ForecastParams().subspace_max_order)


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("model", MODELS, ids=str)
def test_each_candidate_model_at_each_rank_equals_an_explicit_pca_and_autoregression(model: ArModel, k: int,
                                                                                     steps: int) -> None:
    """The forecast with (k, model) imposed, on data of rank 5: the chooser is not asked."""
    x = _series(len(PAST), 4)
    assert model.fits(len(PAST))  # no fallback hides the model
    times = [float(i) for i in range(len(PAST))]
    c = subspace.subspace_weights(x @ x.T, times, times[-1] + steps, k, model)
    np.testing.assert_allclose(c @ x, _dense_reference(x, k, model, steps), rtol=1e-8, atol=1e-8)


LONG_PAST = [str(y) for y in range(2006, 2016)]


def _generated_by(model: ArModel, n: int, seed: int) -> tuple[np.ndarray, list[float]]:
    """(n flat vectors, φ): μ + Σ_j 0.7^j·z_j(t)·q_j (q_j orthonormal) from three series z_j that ``model``
    generates: their d-th differences follow y_t = c_j + Σ_i φ_i·y_{t−i}, φ SHARED by the three (so every
    principal coordinate, a linear combination of them, follows the same recursion), without noise except
    for the random walk and the mean (y_t = c_j + ε_t). The data's rank is that of the recursion's solutions:
    1 for the drift and AR(1), 2 for AR(2) (a damped oscillation) and ARI(1, 1), 3 for ARI(2, 1)."""
    rng = np.random.default_rng(seed)
    if model.p == 1:
        phi = [rng.uniform(0.4, 0.8) * rng.choice([-1.0, 1.0])]
    elif model.p == 2:
        r, w = rng.uniform(0.75, 0.95), rng.uniform(0.6, 2.4)
        phi = [2 * r * np.cos(w), -r * r]
    else:
        phi = []
    noise = 1.0 if model.p == 0 and model != ArModel(0, 1, True) else 0.0
    x = np.tile(rng.normal(size=40), (n, 1))
    q, _ = np.linalg.qr(rng.normal(size=(40, 3)))
    for j in range(3):
        c = rng.normal() if model.const else 0.0
        y = list(3 * rng.normal(size=model.p))
        for _t in range(model.p, n):
            y.append(c + sum(f * y[-1 - i] for i, f in enumerate(phi)) + noise * rng.normal())
        z = np.cumsum(y) if model.d else np.array(y)
        x += np.outer(0.7 ** j * z, q[:, j])
    return x, phi


#: (the model generating the series, steps ahead, seed, k): the chooser must pick that model, with k the data's
#: rank for the noise-free series; the random walk's three noisy series have rank 3 (this seed: k = 3), the
#: mean's too, but its forecast μ is the same at every k (a tie the smaller k wins). The seeds are ones where
#: the pick is clear: the backtest error of every candidate but the same model at a larger k (a tie) is at least
#: 5 % larger (asserted in the test).
CHOOSER_CASES = [
    (ArModel(0, 1, False), 1, 5, 3),
    (ArModel(0, 1, True), 1, 0, 1),
    (ArModel(0, 0, True), 1, 0, 1),
    (ArModel(1, 0, True), 1, 0, 1),
    (ArModel(1, 1, True), 1, 1, 2),
    (ArModel(1, 1, True), 2, 1, 2),
    (ArModel(2, 0, True), 1, 3, 2),
    (ArModel(2, 1, True), 1, 4, 3),
]


def test_the_chooser_cases_cover_every_candidate_model_and_rank() -> None:
    assert {case[0] for case in CHOOSER_CASES} == set(MODELS) and len(MODELS) == 7
    assert {case[3] for case in CHOOSER_CASES} == {1, 2, 3}


@pytest.mark.parametrize(("model", "steps", "seed", "k"), CHOOSER_CASES,
                         ids=[f"{m}-h{h}-k{k}" for m, h, _, k in CHOOSER_CASES])
def test_subspace_equals_an_explicit_pca_and_autoregression(model: ArModel, steps: int, seed: int, k: int) -> None:
    x, phi = _generated_by(model, len(LONG_PAST), seed)
    target = str(int(LONG_PAST[-1]) + steps)
    params = _params(x)  # the default candidates: k ≤ 3, AR order ≤ 2
    coefficients = forecast.forecast_coefficients("subspace", LONG_PAST, target, params)
    assert [p for _, p in coefficients] == LONG_PAST
    times = [float(i) for i in range(len(LONG_PAST))]
    choice = subspace.choose_subspace(x @ x.T, times, steps, 3, 2)
    assert (choice.k, choice.model) == (k, model)  # the model that generated the series, at the data's rank
    got = sum(c * x[i] for i, (c, _) in enumerate(coefficients))
    np.testing.assert_allclose(got, _dense_reference(x, k, model, steps), rtol=1e-8, atol=1e-8)
    if model.p:  # the reference's AR fit is a real one: every principal coordinate recovers the generating φ
        _, z, _ = _pca(x)
        for j in range(k):
            np.testing.assert_allclose(_ar_fit(z[:, j], model, steps)[1][1:], phi, rtol=1e-6)
    # the choice is the past-only backtest's, recomputed densely for every candidate: the chosen error is the
    # reference's, the same model at a larger k ties (the data have rank k), every other candidate is ≥ 5 % worse
    scale = float(np.mean(np.sum((x - x.mean(0)) ** 2, axis=1)))
    for kk in (1, 2, 3):
        for other in MODELS:
            errors = []
            for m in range(2, len(LONG_PAST) - steps + 1):
                use = other if other.fits(m) else MODELS[0]
                ref = _dense_reference(x[:m], min(kk, m - 1), use, steps)
                errors.append(float(np.sum((ref - x[m - 1 + steps]) ** 2)))
            error = float(np.mean(errors))
            if (kk, other) == (k, model):
                assert choice.error == pytest.approx(error, rel=1e-6, abs=1e-9 * scale)
            elif other == model and kk > k:
                assert error == pytest.approx(choice.error, rel=1e-6, abs=1e-9 * scale), kk
            else:
                assert error >= 1.05 * choice.error + 1e-9 * scale, (kk, str(other))
    row_k = forecast._param("subspace", LONG_PAST, target, params)
    assert row_k == choice.k and forecast.history_of("subspace", LONG_PAST, target, params) == ",".join(LONG_PAST)


def test_a_straight_line_is_continued_exactly_and_the_simplex_variant_stays_in_the_hull() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 30))
    x = np.stack([a + i * b for i in range(len(PAST))])
    params = _params(x)
    for target in HELD_OUT:
        c = np.array([c for c, _ in forecast.forecast_coefficients("subspace", PAST, target, params)])
        np.testing.assert_allclose(c @ x, a + (int(target) - int(PAST[0])) * b, rtol=1e-9, atol=1e-9)
    # the simplex variant: wᵢ ≥ 0, Σ wᵢ = 1, and no point of the simplex is closer to the forecast
    y = _series(len(PAST), 5)
    params = _params(y)
    c = np.array([c for c, _ in forecast.forecast_coefficients("subspace", PAST, "2017", params)])
    w = np.array([c for c, _ in forecast.forecast_coefficients("subspace_simplex", PAST, "2017", params)])
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0)
    best = np.sum((w @ y - c @ y) ** 2)
    others = rng.dirichlet(np.ones(len(PAST)), size=2000)
    assert best <= np.min(np.sum((others @ y - c @ y) ** 2, axis=1)) + 1e-9
    # no Gram attached: a clear error, not a guess
    with pytest.raises(ValueError, match="Gram matrix was not attached"):
        forecast.forecast_coefficients("subspace", PAST, "2016", ForecastParams())


def _vector(seed: int, low_rank: bool) -> TimeVector | LowRankVector:
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    if low_rank:
        return LowRankVector({"a.weight": Factor(rnd(6, 2), rnd(2, 5), 2.0), "b.weight": Factor(rnd(4, 1), rnd(1, 6), 0.5)},
                             {"a.bias": rnd(6)}, SHAPES)
    return TimeVector({n: rnd(*s) for n, s in SHAPES.items()})


class _Evaluator:
    """value = ‖Σ cᵢτᵢ‖ on every split (the combined weights' norm): reads nothing but the terms."""

    def __call__(self, terms, splits):
        total = {n: torch.zeros(s, dtype=torch.float64) for n, s in SHAPES.items()}
        for c, v in terms:
            for n in SHAPES:
                total[n] += c * v[n].double()
        norm = float(sum((t ** 2).sum() for t in total.values()) ** 0.5)
        return [{"task": "lm", "test_period": s.period, "metric": "perplexity", "value": norm, "higher_is_better": False}
                for s in splits]


@pytest.mark.parametrize("low_rank", [False, True], ids=["dense", "lora-factors"])
def test_held_out_vectors_are_never_read(tmp_path, low_rank: bool) -> None:
    store = VectorStore(str(tmp_path / "store"))
    store.init("toy", {n: torch.zeros(s) for n, s in SHAPES.items()})
    vectors = {p: _vector(i, low_rank and i % 2 == 1) for i, p in enumerate(PAST + HELD_OUT)}  # mixed kinds
    for p, v in vectors.items():
        store.put_vector("lm", p, v)
    for p in HELD_OUT:  # corrupt the held-out vectors: any read of them fails its checksum
        for shard in (tmp_path / "store" / "vectors" / "lm" / p).glob("*.safetensors"):
            data = bytearray(shard.read_bytes())
            data[-8:] = b"\xff" * 8
            shard.write_bytes(bytes(data))
    grams: list[tuple[str, ...]] = []

    def gram_of(past):
        grams.append(past)
        return store.gram([("lm", p) for p in past])

    items, note = forecast.plan_forecast("lm", "year", PAST + HELD_OUT, PAST + HELD_OUT, 2,
                                         ForecastParams(subspace_max_order=1), ["subspace", "subspace_simplex"],
                                         gram_of=gram_of)
    assert note is None and grams == [tuple(PAST)]  # one Gram, of the past vectors only
    split = lambda p: EvalSplit(task="lm", period=p, encoder_decoder=False, pad_id=0, eos_id=1,  # noqa: E731
                                examples=(None,), split="test", n_rows=1)
    tests = {p: split(p) for p in HELD_OUT}
    rows = {}
    for item in items:
        if item.method in ("subspace", "subspace_simplex"):
            rows[item.method] = forecast.evaluate_item(_Evaluator(), lambda p: store.get_vector("lm", p), item, tests, {})
    # the values are the dense combination's: Σ cᵢτᵢ over the past vectors as written
    dense = {p: np.concatenate([(v.to_dense() if isinstance(v, LowRankVector) else v)[n].double().numpy().ravel()
                                for n in SHAPES]) for p, v in vectors.items()}
    for method, got in rows.items():
        assert [r["target_period"] for r in got] == HELD_OUT and {r["selection"] for r in got} == {"past-only"}
        for r in got:
            c = forecast.forecast_coefficients(method, PAST, r["target_period"], items[-1].params)
            assert r["value"] == pytest.approx(np.linalg.norm(sum(ci * dense[p] for ci, p in c)), rel=1e-5)
    # the corruption is real: the oracle row, which does read a held-out vector, fails
    oracle = ForecastItem("lm", "year", "in_period", tuple(PAST), tuple(HELD_OUT), ForecastParams())
    with pytest.raises(Exception, match="(?i)checksum|corrupt|hash|safetensors|header"):
        forecast.evaluate_item(_Evaluator(), lambda p: store.get_vector("lm", p), oracle, tests, {},
                               load_oracle=lambda p: store.get_vector("lm", p))


class _PairedEvaluator(_Evaluator):
    """As :class:`_Evaluator`, plus bootstrap replicates value·f_b + d_b: the same draws b for every weight state."""

    F = np.linspace(0.8, 1.2, 40)
    D = np.cos(np.arange(40.0))

    def __call__(self, terms, splits, keep_replicates: bool = False):
        rows = super().__call__(terms, splits)
        if keep_replicates:
            for r in rows:
                r["replicates"] = r["value"] * self.F + self.D
        return rows


def test_each_gain_carries_its_paired_bootstrap_interval() -> None:
    x = _series(len(PAST) + 2, 7)
    vectors = {p: TimeVector({"a.weight": torch.tensor(x[i][:30].reshape(6, 5)), "a.bias": torch.tensor(x[i][30:36]),
                              "b.weight": torch.zeros(4, 6, dtype=torch.float64)}) for i, p in enumerate(PAST + HELD_OUT)}
    params = ForecastParams(gram=tuple(map(tuple, x[:len(PAST)] @ x[:len(PAST)].T)))
    split = lambda p: EvalSplit(task="lm", period=p, encoder_decoder=False, pad_id=0, eos_id=1,  # noqa: E731
                                examples=(None,), split="test", n_rows=1)
    tests = {p: split(p) for p in HELD_OUT}
    for method in ("subspace", "uniform_soup", "base", "in_period"):
        item = ForecastItem("lm", "year", method, tuple(PAST), tuple(HELD_OUT), params)
        rows = forecast.evaluate_item(_PairedEvaluator(), vectors.__getitem__, item, tests, {},
                                      load_oracle=vectors.__getitem__)
        plain = forecast.evaluate_item(_Evaluator(), vectors.__getitem__, item, tests, {}, load_oracle=vectors.__getitem__)
        assert [r["value"] for r in rows] == [r["value"] for r in plain]  # the interval changes no value
        assert all(math.isnan(r["gain_vs_latest_pct_low"]) for r in plain)  # no replicates: no interval
        for r in rows:
            ref = _Evaluator()([(1.0, vectors[PAST[-1]])], [tests[r["target_period"]]])[0]["value"]  # the latest vector
            v_b, ref_b = r["value"] * _PairedEvaluator.F + _PairedEvaluator.D, ref * _PairedEvaluator.F + _PairedEvaluator.D
            low, high = np.quantile((ref_b - v_b) / np.abs(ref_b) * 100, [0.025, 0.975])  # lower is better
            assert (r["gain_vs_latest_pct_low"], r["gain_vs_latest_pct_high"]) == (pytest.approx(low), pytest.approx(high))
            low, high = np.quantile(ref_b - v_b, [0.025, 0.975])
            assert (r["gain_vs_latest_low"], r["gain_vs_latest_high"]) == (pytest.approx(low), pytest.approx(high))
