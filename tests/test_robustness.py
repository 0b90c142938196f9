"""Numerical robustness: extreme feature scales, constant and duplicate tokens, separable
data, tiny ``alpha``, a class with one sample.

Every fit either converges (relative duality gap <= tol) or warns with scikit-learn's
``ConvergenceWarning``; no other warning is raised (no overflow), and ``coef_``,
``intercept_``, ``objective_``, ``dual_gap_`` and every prediction are finite.
"""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

import skconvexattn
from _estimators import HEAD_CLASSES, estimator_params

HEADS = estimator_params(HEAD_CLASSES, ("gated_relu", "linear"))
MAX_ITER = 300


def _head(cls, activation, **params):
    kw = dict(activation=activation, n_gates=2, max_iter=MAX_ITER, random_state=0, device="cpu")
    kw.update(params)
    return cls(**kw)


def _data(n=24, s=3, d=3, seed=0, n_classes=2):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, s, d)
    if n_classes == 2:
        y = (X[:, :, 0].mean(axis=1) + 0.3 * X[:, 0, 1] > 0).astype(int)
    else:
        y = np.argmax(X.mean(axis=1)[:, :n_classes], axis=1)
    return X, y


def _alpha_max(cls, activation, X, y, sample_weight=None, **params):
    """``alpha_max_`` of the problem (computed before the solver's first iteration)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = {**params, "alpha": 1.0, "max_iter": 1}
        est = _head(cls, activation, **params)
        return est.fit(X, y, sample_weight=sample_weight).alpha_max_


def _fit_checked(est, X, y, allow_zero_model=False, **fit_params):
    """Fit; only ConvergenceWarning may be raised (and the documented alpha >= alpha_max_
    UserWarning where the all-zero model is expected); return whether it converged."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        est.fit(X, y, **fit_params)
    converged = True
    for w in record:
        if issubclass(w.category, ConvergenceWarning):
            converged = False
        elif allow_zero_model and w.category is UserWarning and "alpha_max_" in str(w.message):
            pass
        else:
            pytest.fail(f"unexpected {w.category.__name__} during fit: {w.message}")
    _assert_finite(est, X)
    if converged:
        scale = est.null_objective_ if est.tol_scale == "null" else abs(est.objective_)
        assert est.dual_gap_ <= est.tol * scale * (1 + 1e-9) + 1e-300
    return converged


def _assert_finite(est, X):
    assert np.all(np.isfinite(est.coef_)), "NaN/inf in coef_"
    assert np.all(np.isfinite(est.intercept_)), "NaN/inf in intercept_"
    assert np.isfinite(est.objective_), f"objective_={est.objective_}"
    assert np.isfinite(est.dual_gap_) and est.dual_gap_ >= 0, f"dual_gap_={est.dual_gap_}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow in the predictions either
        D = est.decision_function(X)
        pred = est.predict(X)
        P = est.predict_proba(X) if est.loss == "log_loss" else None
    assert np.all(np.isfinite(D)), "NaN/inf in decision_function"
    assert np.isin(pred, est.classes_).all()
    if P is not None:
        assert np.all(np.isfinite(P)) and np.all((P >= 0) & (P <= 1))
        np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-5)


# --------------------------------------------------------------------------- scales
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("scale", [1e-6, 1e6])
@pytest.mark.parametrize("cls, activation", HEADS)
def test_extreme_feature_scale(cls, activation, scale, dtype):
    X, y = _data()
    X = (X * scale).astype(dtype)
    amax = _alpha_max(cls, activation, X, y)
    assert np.isfinite(amax) and amax > 0
    _fit_checked(_head(cls, activation, alpha=0.1 * amax), X, y)


@pytest.mark.parametrize("scale", [1e-6, 1e6])
@pytest.mark.parametrize("cls, activation", HEADS)
def test_scale_covariance_without_intercept(cls, activation, scale):
    """Scaling X by c scales the lifted features by c**k (k = 3 for self-attention, 1
    otherwise; the gates act on standardised tokens) and alpha_max_ by the same factor:
    with alpha a fixed fraction of alpha_max_ the problem is the same up to units, and
    the solver must treat it the same (same optimum, same iterations)."""
    X, y = _data(n_classes=3)
    kw = dict(fit_intercept=False, tol=1e-7, max_iter=2000)
    ref_amax = _alpha_max(cls, activation, X, y, **kw)
    ref = _head(cls, activation, alpha=0.05 * ref_amax, **kw)
    assert _fit_checked(ref, X, y)
    Xs = X * scale
    amax = _alpha_max(cls, activation, Xs, y, **kw)
    k = 3 if cls.__name__ == "ConvexSelfAttentionClassifier" else 1
    assert amax == pytest.approx(ref_amax * scale**k, rel=1e-9)
    est = _head(cls, activation, alpha=0.05 * amax, **kw)
    assert _fit_checked(est, Xs, y)
    assert est.objective_ == pytest.approx(ref.objective_, rel=1e-6)
    # two certified fits agree in objective to about tol, in logits to about sqrt(tol)
    # (the loss is strongly convex in the logits near the optimum)
    D = ref.decision_function(X)
    np.testing.assert_allclose(est.decision_function(Xs), D,
                               atol=np.sqrt(kw["tol"]) * np.abs(D).max())
    np.testing.assert_array_equal(est.predict(Xs), ref.predict(X))
    assert abs(est.n_iter_ - ref.n_iter_) <= _iteration_slack(ref)


def _iteration_slack(ref):
    """FISTA takes the same iterations to 20; L-BFGS on factors (the default where the
    lifted features are kept) balances each head's two layers, which rescaling X moves
    off balance: its count varies more (measured up to 40 of 63), its optimum does not."""
    return 20 if ref.solver_ == "fista" else max(20, ref.n_iter_)


GATED = estimator_params(HEAD_CLASSES, ("gated_relu",))
SCALED = [
    pytest.param(*p.values, scale, id=f"{p.id}-{scale:g}")
    for p in GATED
    for scale in (1e-6, 1e6)
] + [
    # self-attention features are cubic in X: unnormalised features of scale 10 suffice
    pytest.param(*p.values, 10.0, id=f"{p.id}-10")
    for p in GATED
    if p.values[0] is skconvexattn.ConvexSelfAttentionClassifier
]


@pytest.mark.parametrize("cls, activation, scale", SCALED)
def test_scale_covariance_with_intercept(cls, activation, scale):
    """The same with the (default) intercept: the scaled problem must reach the unit-scale
    optimum within a few times the iterations the unit-scale problem needs."""
    X, y = _data(n_classes=3)
    kw = dict(tol=1e-6, max_iter=600)
    ref = _head(cls, activation, alpha=0.05 * _alpha_max(cls, activation, X, y), **kw)
    assert _fit_checked(ref, X, y) and ref.n_iter_ <= 300
    Xs = X * scale
    est = _head(cls, activation, alpha=0.05 * _alpha_max(cls, activation, Xs, y), **kw)
    assert _fit_checked(est, Xs, y), (
        f"not converged in {kw['max_iter']} iterations (unit scale: {ref.n_iter_}); "
        f"relative gap {est.dual_gap_ / est.objective_:.2e}, objective {est.objective_:.6g} "
        f"vs {ref.objective_:.6g}"
    )
    assert est.objective_ == pytest.approx(ref.objective_, rel=1e-5)


# --------------------------------------------------------------------------- degenerate data
@pytest.mark.parametrize("cls, activation", HEADS)
def test_constant_feature(cls, activation):
    X, y = _data()
    X[:, :, 1] = 3.0  # zero variance over all tokens
    _fit_checked(_head(cls, activation, alpha=1e-2), X, y)


@pytest.mark.parametrize("cls, activation", HEADS)
def test_constant_tokens_within_samples(cls, activation):
    X, y = _data()
    X = np.repeat(X[:, :1, :], 3, axis=1)  # every token of a sample is the same
    _fit_checked(_head(cls, activation, alpha=1e-2), X, y)


@pytest.mark.parametrize("cls, activation", HEADS)
def test_all_samples_identical(cls, activation):
    """Nothing to learn: the all-zero model with the class prior as probabilities."""
    X, y = _data()
    X = np.broadcast_to(X[:1], X.shape).copy()
    est = _head(cls, activation, alpha=1e-3)
    assert _fit_checked(est, X, y, allow_zero_model=True)
    prior = np.bincount(y) / len(y)
    np.testing.assert_allclose(est.predict_proba(X), np.tile(prior, (len(y), 1)), atol=1e-6)
    assert est.objective_ == pytest.approx(-(prior * np.log(prior)).sum(), rel=1e-6)
    assert np.abs(est.coef_).max() <= 1e-8


@pytest.mark.parametrize("cls, activation", HEADS)
def test_all_tokens_zero(cls, activation):
    X, y = _data()
    X[:] = 0.0
    est = _head(cls, activation)
    assert _fit_checked(est, X, y, allow_zero_model=True)
    assert np.all(est.coef_ == 0)


@pytest.mark.parametrize("cls, activation", HEADS)
def test_duplicate_tokens(cls, activation):
    X, y = _data(s=4)
    X[:, 2] = X[:, 0]
    X[:, 3] = X[:, 1]
    _fit_checked(_head(cls, activation, alpha=1e-2), X, y)


@pytest.mark.parametrize("cls, activation", HEADS)
def test_duplicate_samples_with_conflicting_labels(cls, activation):
    X, y = _data()
    X2, y2 = np.concatenate([X, X]), np.concatenate([y, 1 - y])
    est = _head(cls, activation, alpha=1e-3)
    assert _fit_checked(est, X2, y2, allow_zero_model=True)
    # every sample has both labels equally often: the prior is the best one can do
    np.testing.assert_allclose(est.predict_proba(X), 0.5, atol=1e-3)


# --------------------------------------------------------------------------- hard problems
def _separable(n_classes=2):
    X, y = _data(n_classes=n_classes, seed=3)
    if n_classes == 2:
        X[:, :, 0] += 2.0 * (2 * y - 1)[:, None]
    else:
        X[np.arange(len(y)), :, y] += 3.0
    return X, y


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("cls, activation", HEADS)
def test_separable_data_with_log_loss(cls, activation, n_classes):
    """Without the penalty the logistic optimum is at infinity; with a small alpha the
    solution is finite and the training set is classified perfectly."""
    X, y = _separable(n_classes)
    amax = _alpha_max(cls, activation, X, y)
    est = _head(cls, activation, alpha=1e-4 * amax, loss="log_loss")
    _fit_checked(est, X, y)
    assert est.score(X, y) == 1.0
    assert est.objective_ < 0.05 * np.log(n_classes)


@pytest.mark.parametrize("loss", ["log_loss", "squared_error"])
@pytest.mark.parametrize("cls, activation", HEADS)
def test_very_small_alpha(cls, activation, loss):
    X, y = _data(n_classes=3)
    amax = _alpha_max(cls, activation, X, y, loss=loss)
    est = _head(cls, activation, alpha=1e-8 * amax, loss=loss)
    _fit_checked(est, X, y)
    zero_model = _head(cls, activation, alpha=amax, loss=loss)
    _fit_checked(zero_model, X, y, allow_zero_model=True)
    # a little alpha can only do better than the all-zero model
    assert est.objective_ <= zero_model.objective_ * (1 + 1e-9)


@pytest.mark.parametrize("class_weight", [None, "balanced"])
@pytest.mark.parametrize("cls, activation", HEADS)
def test_class_with_a_single_sample(cls, activation, class_weight):
    X, y = _data(n_classes=2)
    y = y.copy()
    y[5] = 2
    est = _head(cls, activation, alpha=1e-2, class_weight=class_weight)
    _fit_checked(est, X, y)
    np.testing.assert_array_equal(est.classes_, [0, 1, 2])
    assert est.predict_proba(X).shape == (len(y), 3)


@pytest.mark.parametrize("cls, activation", HEADS)
def test_heavily_skewed_sample_weights(cls, activation):
    X, y = _data()
    sw = np.ones(len(y))
    sw[0] = 1e8
    sw[1] = 1e-8
    amax = _alpha_max(cls, activation, X, y, sample_weight=sw)
    assert np.isfinite(amax) and amax > 0
    _fit_checked(_head(cls, activation, alpha=0.1 * amax), X, y, sample_weight=sw)
