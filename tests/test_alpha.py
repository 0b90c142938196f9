"""Regularisation that travels (issue #14 item 1): ``alpha=None`` with ``alpha_ratio``,
the fitted absolute ``alpha_``, ``compute_alpha_max`` and the ``*CV`` grid in ratios."""

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from _estimators import HEAD_CLASSES, estimator_params
from skconvexattn import ConvexMLPClassifierCV, ConvexSelfAttentionClassifierCV
from skconvexattn._base import DEFAULT_ALPHA_RATIO
from skconvexattn.datasets import make_token_clusters


@pytest.fixture(scope="module")
def data():
    return make_token_clusters(n_samples=60, random_state=0, return_X_y=True)


def small(cls, **kw):
    return cls(n_gates=2, random_state=0, **kw)


@pytest.mark.parametrize("cls", estimator_params(HEAD_CLASSES))
def test_default_alpha_is_a_ratio_of_alpha_max(cls, data):
    X, y = data
    est = cls()
    assert est.alpha is None and est.alpha_ratio == DEFAULT_ALPHA_RATIO
    est = small(cls, alpha_ratio=0.05, tol=1e-6).fit(X, y)
    assert est.alpha_ == pytest.approx(0.05 * est.alpha_max_, rel=1e-12)
    # the same program as the absolute alpha it resolves to
    absolute = small(cls, alpha=est.alpha_, tol=1e-6).fit(X, y)
    assert absolute.alpha_ == est.alpha_
    assert absolute.objective_ == pytest.approx(est.objective_, rel=1e-6)
    np.testing.assert_allclose(absolute.predict_proba(X), est.predict_proba(X), atol=1e-4)


@pytest.mark.parametrize("cls", estimator_params(HEAD_CLASSES))
def test_alpha_ratio_travels_across_scales_and_absolute_alpha_does_not(cls, data):
    """The programs are homogeneous in X: a ratio gives the same model on t * X."""
    X, y = data
    a = small(cls, tol=1e-8, max_iter=5000).fit(X, y)
    b = small(cls, tol=1e-8, max_iter=5000).fit(7.0 * X, y)
    assert b.alpha_max_ / a.alpha_max_ == pytest.approx(7.0 ** cls._degree, rel=1e-8)
    assert b.objective_ == pytest.approx(a.objective_, rel=1e-6)
    np.testing.assert_allclose(b.predict_proba(7.0 * X), a.predict_proba(X), atol=1e-5)
    # the absolute alpha of the first fit means something else on 7 X
    c = small(cls, alpha=a.alpha_, tol=1e-8, max_iter=5000).fit(7.0 * X, y)
    assert abs(c.objective_ - a.objective_) > 1e-3 * a.objective_


@pytest.mark.parametrize("cls", estimator_params(HEAD_CLASSES))
def test_alpha_and_ratio_are_validated(cls, data):
    X, y = data
    for params, name in [({"alpha_ratio": 0.0}, "alpha_ratio"), ({"alpha_ratio": 1.5},
                         "alpha_ratio"), ({"alpha": 0.0}, "alpha"), ({"alpha": -1.0}, "alpha"),
                         ({"max_time": 0.0}, "max_time")]:
        with pytest.raises(ValueError, match=f"'{name}' parameter"):
            small(cls, **params).fit(X, y)
        with pytest.raises(ValueError, match=f"'{name}' parameter"):
            small(cls, **params).compute_alpha_max(X, y)


def test_ratio_one_is_the_zero_model(data):
    X, y = data
    cls = HEAD_CLASSES[0]
    est = small(cls, alpha_ratio=1.0).fit(X, y)
    assert est.n_iter_ == 0 and np.all(est.coef_ == 0)


def test_compute_alpha_max_sees_weights_and_class_weight(data):
    X, y = data
    cls = HEAD_CLASSES[3]
    sw = np.linspace(0.5, 2.0, len(y))
    est = small(cls)
    for kwargs, params in [({"sample_weight": sw}, {}), ({}, {"class_weight": {0: 1, 1: 3}})]:
        est.set_params(**params)
        amax = est.compute_alpha_max(X, y, **kwargs)
        fitted = clone(est).fit(X, y, **kwargs)
        assert fitted.alpha_max_ == pytest.approx(amax, rel=1e-12)
    assert est.compute_alpha_max(X, y) != est.compute_alpha_max(X, y, sample_weight=sw)


def test_grid_search_over_alpha_ratio(data):
    X, y = data
    cls = HEAD_CLASSES[3]
    search = GridSearchCV(small(cls, tol=1e-3), {"alpha_ratio": [0.3, 0.03]}, cv=2).fit(X, y)
    best = search.best_estimator_
    assert best.alpha_ == pytest.approx(best.alpha_ratio * best.alpha_max_)


@pytest.mark.parametrize("cls", [ConvexSelfAttentionClassifierCV, ConvexMLPClassifierCV])
def test_cv_grid_is_in_ratios_of_alpha_max(cls, data):
    X, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cv = small(cls, alphas=4, eps=1e-2, cv=2, tol=1e-3).fit(X, y)
    np.testing.assert_allclose(cv.alphas_ / cv.alpha_max_, np.logspace(0, -2, 4))
    head = cv.best_estimator_
    assert cv.alpha_max_ == pytest.approx(head.compute_alpha_max(X, y), rel=1e-12)
    assert head.alpha_ == pytest.approx(cv.alpha_)
    assert "alpha_ratio" not in cls().get_params()


# ------------------------------------------------------------ alpha_ratio="auto"
@pytest.fixture(scope="module")
def large():
    """Enough samples for the held-out choice (>= 500, >= 10 per class)."""
    X, y = make_token_clusters(n_samples=600, n_tokens=6, n_features=4, random_state=1,
                               return_X_y=True)
    return X, y


def test_auto_ratio_is_the_best_held_out_ratio(large):
    from skconvexattn import ConvexMLPClassifier
    from skconvexattn._auto_alpha import AUTO_RATIOS, VALIDATION_FRACTION

    X, y = large
    est = ConvexMLPClassifier(n_gates=2, random_state=0).fit(X, y)
    sel = est.alpha_selection_
    assert sel["method"] == "holdout"
    assert sel["ratios"] == list(AUTO_RATIOS[: len(sel["ratios"])])
    assert sel["n_validation"] == round(VALIDATION_FRACTION * len(y))
    # the largest ratio whose mean held-out loss is within half a standard error (of the
    # paired per-sample difference) of the smallest
    from skconvexattn._auto_alpha import SE_FRACTION

    losses, ses = np.asarray(sel["losses"]), np.asarray(sel["standard_errors"])
    top = int(np.argmin(losses))
    assert ses[top] == 0.0 and np.all(ses >= 0)
    within = losses <= losses[top] + SE_FRACTION * ses
    first = int(np.argmax(within))
    assert sel["ratio"] == sel["ratios"][first] == est.alpha_ratio_
    assert first <= top and not np.any(within[:first])
    assert est.alpha_ == pytest.approx(est.alpha_ratio_ * est.alpha_max_, rel=1e-12)
    # the final fit is the fixed-ratio fit on all samples at the chosen ratio
    fixed = ConvexMLPClassifier(n_gates=2, random_state=0, alpha_ratio=est.alpha_ratio_)
    fixed.fit(X, y)
    assert fixed.alpha_selection_["method"] == "given"
    assert "started_from_path" not in fixed.alpha_selection_
    assert sel["started_from_path"] is True
    assert fixed.objective_ == pytest.approx(est.objective_, rel=1e-6)
    # the held-out scores are those of the path's fits: recompute one
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state

    seed = check_random_state(0).randint(np.iinfo(np.int32).max)
    tr, va = train_test_split(np.arange(len(y)), test_size=VALIDATION_FRACTION,
                              stratify=y, random_state=seed)
    one = ConvexMLPClassifier(n_gates=2, random_state=0, alpha_ratio=sel["ratios"][0],
                              tol=1e-3)
    # the path solves the final fit's program (its gates, drawn from all the samples) on
    # the 80 %: a fit with gates drawn from the 80 % scores otherwise
    own = clone(one).fit(X[np.sort(tr)], y[np.sort(tr)])
    assert not np.allclose(own.gates_["H"], est.gates_["H"])
    one._path_gates = (est.gates_, est.input_scale_exp_)
    one.fit(X[np.sort(tr)], y[np.sort(tr)])
    assert one.gates_ is est.gates_
    assert one.score(X[np.sort(va)], y[np.sort(va)]) == pytest.approx(sel["scores"][0])
    from sklearn.metrics import log_loss

    held = log_loss(y[np.sort(va)], one.predict_proba(X[np.sort(va)]), labels=one.classes_)
    assert sel["losses"][0] == pytest.approx(held, rel=1e-6)
    # same random_state, same choice
    again = ConvexMLPClassifier(n_gates=2, random_state=0).fit(X, y)
    assert again.alpha_selection_["scores"] == sel["scores"]
    assert again.alpha_selection_["losses"] == sel["losses"]


@pytest.mark.parametrize("curve, n_fitted", [
    # (offset of each ratio's mean held-out loss, spread of its per-sample noise)
    ([(1.0, 0.01), (0.5, 0.01), (0.9, 0.01)], 3),  # a clear rise: stop at once
    ([(1.0, 0.01), (0.5, 0.01), (0.52, 1.0), (0.53, 1.0)], 4),  # within noise: two worse
    ([(1.0, 0.01), (0.5, 0.01), (0.52, 1.0), (0.45, 0.01), (0.7, 0.01)], 5),
])
def test_auto_path_stops_past_its_minimum(large, monkeypatch, curve, n_fitted):
    """The path stops at the first ratio worse than the best by more than STOP_SE
    standard errors of the paired difference, or after PATIENCE worse ratios in a row."""
    from skconvexattn import ConvexMLPClassifier, _auto_alpha

    X, y = large
    rng = np.random.default_rng(0)
    calls = []

    def fake_held_out(probe, X_va, y_va):
        mean, spread = curve[len(calls)]
        noise = rng.standard_normal(len(y_va))
        calls.append(probe.alpha_ratio)
        return mean + spread * (noise - noise.mean()), np.ones(len(y_va))

    monkeypatch.setattr(_auto_alpha, "_held_out", fake_held_out)
    sel = ConvexMLPClassifier(n_gates=2, random_state=0).fit(X, y).alpha_selection_
    assert len(sel["ratios"]) == len(calls) == n_fitted
    assert sel["losses"] == pytest.approx([m for m, _ in curve[:n_fitted]])
    assert sel["ratio"] == sel["ratios"][int(np.argmin(sel["losses"]))]


@pytest.mark.parametrize("solver", ["factored", "fista"])
def test_auto_final_fit_starts_from_the_path(large, solver):
    """The path solves the final fit's program (its gates) on 80 % of the data; the final
    fit starts from the path's solution at the chosen ratio, much closer to its optimum
    than zero, and still certifies to tol and reaches the fixed-ratio fit's objective."""
    from skconvexattn import ConvexMLPClassifier

    X, y = large
    kw = dict(n_gates=2, random_state=0, solver=solver)
    est = ConvexMLPClassifier(**kw).fit(X, y)
    sel, h = est.alpha_selection_, est.convergence_
    assert sel["method"] == "holdout" and sel["started_from_path"] is True
    assert sel["path_converged"] is True
    assert est.solver_ == solver
    # the first iterate is the path's solution: within 5 % of the way from zero (the
    # intercept-only objective) to the optimum; a start from zero is at 100 %
    gain = est.null_objective_ - est.objective_
    assert gain > 0 and h["objective"][0] - est.objective_ <= 0.05 * gain
    assert est.dual_gap_ <= est.tol * est.null_objective_
    cold = ConvexMLPClassifier(alpha_ratio=est.alpha_ratio_, **kw).fit(X, y)
    assert cold.convergence_["objective"][0] == pytest.approx(est.null_objective_)
    assert abs(cold.objective_ - est.objective_) <= cold.dual_gap_ + est.dual_gap_
    np.testing.assert_array_equal(cold.gates_["H"], est.gates_["H"])
    # a previous solution (warm_start) comes first
    again = clone(est).set_params(warm_start=True).fit(X, y)
    assert again.fit(X, y).alpha_selection_["started_from_path"] is False
    assert again.n_iter_ <= 1


def test_auto_final_fit_from_zero_after_an_unconverged_path_fit(large, monkeypatch):
    """A path fit stopped by PATH_MAX_ITER before its tol is no start: the final fit
    starts from zero (and is still certified)."""
    from skconvexattn import ConvexMLPClassifier, _auto_alpha

    X, y = large
    monkeypatch.setattr(_auto_alpha, "PATH_MAX_ITER", 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        est = ConvexMLPClassifier(n_gates=2, random_state=0).fit(X, y)
    sel = est.alpha_selection_
    assert sel["path_converged"] is False and sel["started_from_path"] is False
    assert est.convergence_["objective"][0] == pytest.approx(est.null_objective_)
    assert est.dual_gap_ <= est.tol * est.null_objective_


def test_auto_final_fit_from_zero_without_the_path_start(large, monkeypatch):
    """``PATH_START=False`` restores the previous rule: path gates from the 80 %, a final
    fit from zero (what ``bench_defaults.py --compare path_start`` measures against)."""
    from skconvexattn import ConvexMLPClassifier, _auto_alpha

    X, y = large
    monkeypatch.setattr(_auto_alpha, "PATH_START", False)
    est = ConvexMLPClassifier(n_gates=2, random_state=0).fit(X, y)
    assert est.alpha_selection_["started_from_path"] is False
    assert est.convergence_["objective"][0] == pytest.approx(est.null_objective_)


def test_auto_ratio_falls_back_on_small_data(data):
    from skconvexattn import ConvexMLPClassifier
    from skconvexattn._auto_alpha import FALLBACK_RATIO

    X, y = data
    est = ConvexMLPClassifier(n_gates=2, random_state=0).fit(X, y)
    assert est.alpha_selection_["method"] == "fixed"
    assert est.alpha_ratio_ == FALLBACK_RATIO
    assert est.alpha_ == pytest.approx(FALLBACK_RATIO * est.alpha_max_, rel=1e-12)
    absolute = ConvexMLPClassifier(n_gates=2, random_state=0, alpha=est.alpha_).fit(X, y)
    assert absolute.alpha_selection_ == {"method": "absolute"}
    assert absolute.alpha_ratio_ == pytest.approx(FALLBACK_RATIO, rel=1e-12)


def test_auto_ratio_respects_max_time(large):
    import time

    from skconvexattn import ConvexSelfAttentionClassifier

    X, y = large
    est = ConvexSelfAttentionClassifier(n_gates=2, random_state=0, max_time=1.0, tol=1e-12)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    assert time.perf_counter() - t0 < 1.0 + 3.0  # the budget plus set-up costs
    assert est.alpha_selection_["method"] == "holdout"
