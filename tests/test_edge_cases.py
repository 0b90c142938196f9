"""Edge cases of issue #15: inputs on which the heads crashed, returned NaN, certified
nothing or said the wrong thing, answered as the most trusted scikit-learn estimators
answer them."""

import time
import tracemalloc
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

import skconvexattn._solver as solver_module
from skconvexattn import (
    ConvexFNOClassifier,
    ConvexMixerClassifier,
    ConvexMLPClassifierCV,
    ConvexSelfAttentionClassifier,
    ConvexSelfAttentionClassifierCV,
    TokenStandardScaler,
)
from skconvexattn.datasets import make_token_clusters

from _estimators import HEAD_CLASSES, estimator_params

CV_CLASSES = [ConvexSelfAttentionClassifierCV, ConvexMLPClassifierCV]


@pytest.fixture(scope="module")
def data():
    X, y = make_token_clusters(n_samples=60, random_state=0, return_X_y=True)
    return X, y


def small(cls, **kw):
    return cls(n_gates=2, random_state=0, **kw)


# ---------------------------------------------------------------- 2. alpha_max_ == 0 in *CV
@pytest.mark.parametrize("cls", estimator_params(CV_CLASSES))
def test_cv_with_zero_alpha_max_fits_the_zero_model_at_once(cls):
    X = np.zeros((40, 3, 4))
    y = np.arange(40) % 2
    cv = small(cls, alphas=3, cv=2).fit(X, y)
    assert cv.alpha_max_ == 0.0
    assert cv.n_iter_ == 0  # no 7,000 iterations at alpha=0
    assert cv.dual_gap_ <= cv.tol * cv.null_objective_
    best = clone(cv.best_estimator_)  # a valid estimator: cloning re-validates nothing bad
    best.fit(X, y)
    assert best.alpha_ == 0.0 and best.n_iter_ == 0
    assert np.isfinite(cv.predict_proba(X)).all()


def test_head_with_zero_alpha_max_and_relative_alpha(data):
    X = np.ones((30, 3, 4))
    y = np.arange(30) % 3
    est = small(ConvexSelfAttentionClassifier).fit(X, y)
    assert est.alpha_max_ == 0.0 and est.alpha_ == 0.0
    assert est.n_iter_ == 0 and est.dual_gap_ <= est.tol * est.null_objective_


# ---------------------------------------------------------------- 3. no probe fit
@pytest.mark.parametrize("cls", estimator_params(CV_CLASSES))
def test_cv_in_float32_emits_no_runtime_warning(cls, data):
    X, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        cv = small(cls, alphas=3, cv=2, tol=1e-3).fit(X.astype(np.float32), y)
    assert np.isfinite(cv.alpha_max_) and cv.alpha_max_ > 0
    head = cv.best_estimator_
    assert np.isclose(head.alpha_max_, cv.alpha_max_, rtol=1e-5)


@pytest.mark.parametrize("cls", estimator_params(HEAD_CLASSES))
def test_compute_alpha_max_is_fits_alpha_max_and_changes_nothing(cls, data):
    X, y = data
    est = small(cls)
    amax = est.compute_alpha_max(X, y)
    assert not hasattr(est, "alpha_max_") and not hasattr(est, "n_features_in_")
    est.set_params(alpha=amax * 1.0001)
    with pytest.warns(UserWarning, match="all-zero"):
        est.fit(X, y)
    assert est.alpha_max_ == pytest.approx(amax, rel=1e-12)
    assert est.n_iter_ == 0  # at alpha_max the zero model is certified at once
    np.testing.assert_array_equal(est.coef_, 0.0)


# ---------------------------------------------------------------- 4. a class zeroed in a split
def test_cv_fits_a_split_on_the_classes_it_has(data):
    X, _ = data
    y = np.arange(len(X)) % 3
    # class 2 keeps positive weight only in samples of the first fold's test part
    sw = np.ones(len(y))
    idx2 = np.flatnonzero(y == 2)
    sw[idx2[2:]] = 0.0
    cv = small(ConvexMLPClassifierCV, alphas=2, cv=[
        (np.setdiff1d(np.arange(len(y)), idx2[:2]), idx2[:2]),
        (np.arange(len(y))[::2], np.arange(len(y))[1::2]),
    ]).fit(X, y, sample_weight=sw)
    assert list(cv.classes_) == list(np.unique(y))
    assert np.isfinite(cv.scores_).all()


def test_cv_reports_the_split_when_fewer_than_two_classes_remain(data):
    X, y = data
    sw = (y == 0).astype(float)
    sw[np.flatnonzero(y == 1)[:1]] = 1.0  # class 1: one weighted sample, in the test part
    test = np.flatnonzero(y == 1)[:1]
    train = np.setdiff1d(np.arange(len(y)), test)
    with pytest.raises(ValueError, match="split 0"):
        small(ConvexMLPClassifierCV, alphas=2, cv=[(train, test)]).fit(X, y, sample_weight=sw)


# ---------------------------------------------------------------- 5. huge weights
@pytest.mark.parametrize("cls", estimator_params(HEAD_CLASSES))
def test_sample_weights_whose_sum_overflows(cls, data):
    X, y = data
    sw = np.full(len(y), 1e308)
    est = small(cls, tol=1e-3).fit(X, y, sample_weight=sw)
    ref = small(cls, tol=1e-3).fit(X, y)
    assert np.isfinite(est.objective_)
    assert est.objective_ == pytest.approx(ref.objective_, rel=1e-6)


# ---------------------------------------------------------------- 6. memory budget
@pytest.mark.parametrize("cls", [ConvexSelfAttentionClassifier, ConvexMixerClassifier,
                                 ConvexFNOClassifier])
@pytest.mark.parametrize("mult", [1.2, 2.8, 4.0])
def test_peak_memory_stays_within_the_planned_budget(cls, mult):
    rng = np.random.default_rng(0)
    n, s, d = 200, 10, 12
    X = rng.standard_normal((n, s, d))
    y = rng.integers(0, 3, n)
    est = cls(n_gates=4, random_state=0, max_iter=5, tol=0.0)
    P, R, L = est._block_shape(s, d)
    budget = mult * n * P * R * L * X.itemsize  # around the materialisation threshold
    est.set_params(memory_budget=budget / 1024**3)
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X, y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the plan bounds the solver's memory; the input comes on top
    assert peak - X.nbytes <= budget, (est.memory_plan_, peak / budget)


# ---------------------------------------------------------------- 8. warm starts
@pytest.mark.parametrize("cls", estimator_params(HEAD_CLASSES))
def test_warm_start_on_new_data_solves_the_cold_problem(cls, data):
    X, y = data
    X2 = X * 3.0 + 2.0
    warm = small(cls, warm_start=True, tol=1e-4).fit(X, y)
    warm.fit(X2, y)
    cold = small(cls, tol=1e-4).fit(X2, y)
    for k in cold.gates_:
        np.testing.assert_allclose(warm.gates_[k], cold.gates_[k])
    assert warm.objective_ == pytest.approx(cold.objective_, rel=1e-3)


def test_warm_start_on_the_same_data_keeps_gates_and_starts_from_the_solution(data):
    X, y = data
    est = small(ConvexSelfAttentionClassifier, warm_start=True).fit(X, y)
    gates = {k: v.copy() for k, v in est.gates_.items()}
    est.fit(X, y)
    assert est.n_iter_ == 0
    for k in gates:
        assert est.gates_[k] is not None
        np.testing.assert_array_equal(est.gates_[k], gates[k])


# ---------------------------------------------------------------- 9. n_tokens with 3-D X
@pytest.mark.parametrize("cls", estimator_params(HEAD_CLASSES))
def test_n_tokens_contradicting_3d_input_raises(cls, data):
    X, y = data
    with pytest.raises(ValueError, match=r"n_tokens=5 contradicts X of shape"):
        small(cls, n_tokens=5).fit(X, y)
    small(cls, n_tokens=X.shape[1], max_iter=5, tol=1.0).fit(X, y)  # agreeing: fine


# ---------------------------------------------------------------- 10. messages
def test_negative_class_weight_is_named(data):
    X, y = data
    with pytest.raises(ValueError, match=r"class_weight must map classes.*\{0: -1\.0\}"):
        small(ConvexSelfAttentionClassifier, class_weight={0: -1.0}).fit(X, y)


def test_messages_print_plain_numbers(data):
    X, _ = data
    y = np.zeros(len(X), dtype=np.int64)
    with pytest.raises(ValueError) as info:
        small(ConvexSelfAttentionClassifier).fit(X, y)
    assert "np.int64" not in str(info.value) and "(0)" in str(info.value)
    y = np.arange(len(X)) % 3
    sw = np.where(y == 2, 0.0, 1.0)
    with pytest.raises(ValueError) as info:
        small(ConvexSelfAttentionClassifier).fit(X, y, sample_weight=sw)
    assert "np.int64" not in str(info.value) and "[2]" in str(info.value)


def test_mixed_column_names_are_not_blamed_on_the_values():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({0: [1.0, 2.0, 3.0, 4.0], "a": ["x", "y", "z", "w"]})
    with pytest.raises(TypeError) as info:
        small(ConvexSelfAttentionClassifier).fit(df, [0, 1, 0, 1])
    assert "numbers only" not in str(info.value)
    assert "feature names" in str(info.value).lower()


def test_transformer_complex_message_names_the_transformer():
    with pytest.raises(ValueError, match="TokenStandardScaler needs real"):
        TokenStandardScaler().fit(np.ones((3, 2, 2), dtype=complex))


@pytest.mark.parametrize("cls", estimator_params(HEAD_CLASSES))
def test_predict_proba_keeps_float32(cls, data):
    X, y = data
    est = small(cls, max_iter=20, tol=1e-2).fit(X.astype(np.float32), y)
    proba = est.predict_proba(X.astype(np.float32))
    assert proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert est.predict_proba(X).dtype == np.float64


# ---------------------------------------------------------------- 11. max_time and Ctrl-C
@pytest.mark.parametrize("cls", estimator_params(HEAD_CLASSES))
@pytest.mark.parametrize("solver", ["fista", "auto"])
def test_max_time_stops_like_max_iter(cls, data, solver, monkeypatch):
    X, y = data
    limit = 0.3
    if solver == "auto":
        # L-BFGS certifies these small programs to about 1e-13 in 0.06-0.3 s: give the
        # factored solver a clock that advances 10 ms per reading, so that it stops at
        # max_time after a few dozen iterations on any machine
        class Clock:
            now = 0.0

            def perf_counter(self):
                self.now += 1e-2
                return self.now

        from skconvexattn import _factored

        monkeypatch.setattr(_factored, "time", Clock())
    est = small(cls, alpha_ratio=1e-3, tol=1e-12, max_iter=100000, max_time=limit,
                solver=solver)
    t0 = time.perf_counter()
    with pytest.warns(ConvergenceWarning, match=f"max_time={limit:g}"):
        est.fit(X, y)
    assert time.perf_counter() - t0 < 10
    assert 0 < est.n_iter_ < 100000
    # the certificate is that of the returned iterate
    assert est.convergence_["iteration"][-1] == est.n_iter_
    assert est.dual_gap_ == pytest.approx(est.convergence_["dual_gap"][-1])
    assert 0 < est.dual_gap_ and np.isfinite(est.objective_)


@pytest.mark.parametrize("solver", ["fista", "factored"])
def test_max_time_counts_the_set_up(data, solver, monkeypatch):
    """``max_time`` bounds the whole fit: a set-up (gates, lifted features) that takes the
    whole budget leaves the solver a millisecond, not ``max_time`` again."""
    X, y = data
    est = small(ConvexSelfAttentionClassifier, alpha_ratio=1e-3, tol=1e-12, max_iter=100000,
                max_time=0.3, solver=solver)
    build = type(est)._build_operator  # the heavy half of the set-up

    def slow_setup(self, *args, **kwargs):
        time.sleep(0.35)
        return build(self, *args, **kwargs)

    monkeypatch.setattr(type(est), "_build_operator", slow_setup)
    with pytest.warns(ConvergenceWarning, match="max_time=0.3"):
        est.fit(X, y)
    assert est.convergence_["time"][-1] < 0.1  # the solver's own clock
    assert est.n_iter_ < 50


def test_fista_max_time_keyword(data):
    X, y = data
    est = small(ConvexSelfAttentionClassifier, solver="fista")
    st = est._setup(X, y, None, reset=True)
    res = solver_module.fista(st.op, st.datafit, st.Y, st.w, 1e-4 * st.alpha_max,
                              max_iter=10**6, tol=0.0, max_time=0.2, warn=False)
    assert res.timed_out and not res.converged and 0 < res.n_iter < 10**6


def test_keyboard_interrupt_keeps_the_iterate_and_its_certificate(data, monkeypatch):
    X, y = data
    est = small(ConvexSelfAttentionClassifier, alpha_ratio=1e-3, tol=1e-12, solver="fista")
    calls = {"n": 0}
    prox = solver_module.BlockNuclearNorm.prox

    def interrupted_prox(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt
        return prox(self, *args, **kwargs)

    monkeypatch.setattr(solver_module.BlockNuclearNorm, "prox", interrupted_prox)
    with pytest.raises(KeyboardInterrupt):
        est.fit(X, y)
    assert est.interrupted_ and 0 < est.n_iter_ < 25
    assert est.convergence_["iteration"][-1] == est.n_iter_
    assert np.isfinite(est.dual_gap_) and est.dual_gap_ > 0
    monkeypatch.undo()
    # the kept iterate predicts, and its objective is the one certified
    assert est.predict(X).shape == y.shape
    net = est.to_nonconvex()
    assert net.objective(X, y) == pytest.approx(est.objective_, rel=1e-6)


@pytest.mark.parametrize("solver", ["auto", "factored"])
def test_keyboard_interrupt_in_the_factored_solver(data, monkeypatch, solver):
    """The same on factors (through the lifted features, or matrix-free)."""
    from skconvexattn import _factored

    X, y = data
    est = small(ConvexSelfAttentionClassifier, alpha_ratio=1e-3, tol=1e-12, solver=solver)
    calls = {"n": 0}
    call = _factored._Objective.__call__

    def interrupted_call(self, x):
        calls["n"] += 1
        if calls["n"] == 30:
            raise KeyboardInterrupt
        return call(self, x)

    monkeypatch.setattr(_factored._Objective, "__call__", interrupted_call)
    with pytest.raises(KeyboardInterrupt):
        est.fit(X, y)
    monkeypatch.undo()
    assert est.interrupted_ and est.solver_ == "factored" and 0 < est.n_iter_ < 30
    assert est.convergence_["iteration"][-1] == est.n_iter_
    assert np.isfinite(est.dual_gap_) and est.dual_gap_ > 0
    assert est.predict(X).shape == y.shape
    net = est.to_nonconvex()
    assert net.objective(X, y) == pytest.approx(est.objective_, rel=1e-6)


# ---------------------------------------------------------------- 5. extreme scales
@pytest.mark.parametrize("cls", estimator_params(HEAD_CLASSES))
@pytest.mark.parametrize("factor, dtype", [(1e13, np.float32), (1e30, np.float32),
                                           (1e-30, np.float32), (1e103, np.float64),
                                           (1e200, np.float64)])
def test_extreme_scales_fit_the_same_program(cls, factor, dtype, data):
    """The programs are homogeneous in X: X * factor is fitted (to the same objective
    and predictions) with finite probabilities, and no RuntimeWarning."""
    X, y = data
    ref = small(cls, tol=1e-3).fit(X.astype(dtype), y)
    Xs = (X * factor).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        est = small(cls, tol=1e-3).fit(Xs, y)
        proba = est.predict_proba(Xs)
        # a model fitted at the usual scale predicts the huge (or tiny) inputs too
        proba_ref = ref.predict_proba(Xs)
    assert est.objective_ == pytest.approx(ref.objective_, rel=1e-3)
    assert np.isfinite(proba).all() and np.isfinite(proba_ref).all()
    np.testing.assert_array_equal(est.predict(Xs), ref.predict(X.astype(dtype)))
    if np.isfinite(est.alpha_max_):
        assert est.alpha_ == pytest.approx(est.alpha_ratio_ * est.alpha_max_)


@pytest.mark.parametrize("scale", [1e13, 1e-13])
def test_recovered_network_of_an_extreme_scale_fit(scale):
    """A fit solved on X * 2**input_scale_exp_ recovers a network that takes X itself:
    same logits and the same objective as the head (NumPy and torch)."""
    from skconvexattn import ConvexSelfAttentionClassifier
    from skconvexattn.datasets import make_token_clusters

    X, y = make_token_clusters(n_samples=40, random_state=0, return_X_y=True)
    Xs = X * scale
    est = ConvexSelfAttentionClassifier(n_gates=2, random_state=0, tol=1e-6).fit(Xs, y)
    assert est.input_scale_exp_ != 0
    net = est.to_nonconvex()
    D = est.decision_function(Xs)
    np.testing.assert_allclose(net.decision_function(Xs), D, rtol=1e-8, atol=1e-10 * np.abs(D).max())
    assert net.objective(Xs, y) == pytest.approx(est.objective_, rel=1e-8)
    torch = pytest.importorskip("torch")
    O = net.to_torch()(torch.as_tensor(Xs)).detach().numpy()
    np.testing.assert_allclose(O[:, 1] - O[:, 0], D, rtol=1e-8, atol=1e-10 * np.abs(D).max())
