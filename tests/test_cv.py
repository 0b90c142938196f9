"""Cross-validated regularisation paths (``skconvexattn.model_selection``)."""

from __future__ import annotations

import copy
import inspect
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from skconvexattn import ConvexFNOClassifier, ConvexSelfAttentionClassifier
from skconvexattn import model_selection as ms
from skconvexattn.datasets import make_token_clusters

from _estimators import HEAD_CLASSES

CV_CLASSES = [ms.cv_estimator(cls) for cls in HEAD_CLASSES]


@pytest.fixture(scope="module")
def data():
    X, y = make_token_clusters(n_samples=120, n_tokens=6, n_features=4, random_state=0,
                               return_X_y=True)
    return X, y


# the scikit-learn common checks of the *CV estimators run in test_sklearn_contract.py


@pytest.mark.parametrize("cls", CV_CLASSES, ids=lambda c: c.__name__)
def test_one_mechanism_for_every_head(cls):
    head = cls._head_class
    assert issubclass(cls, ms.BaseConvexHeadCV)
    head_params = set(head._get_param_names()) - {"alpha", "alpha_ratio", "warm_start"}
    cv_params = {"alphas", "eps", "cv", "scoring", "n_jobs", "refit"}
    assert set(cls._get_param_names()) == head_params | cv_params
    # the head's defaults are the CV class's defaults
    est = cls()
    for name in head_params:
        assert getattr(est, name) == inspect.signature(head).parameters[name].default
    assert clone(cls(alphas=4, n_gates=3)).get_params()["n_gates"] == 3
    with pytest.raises(TypeError):
        cls(alpha=1.0)


# ------------------------------------------------------------------ selection
@pytest.mark.parametrize(
    "cv_cls, head",
    [
        (ms.ConvexSelfAttentionClassifierCV, ConvexSelfAttentionClassifier),
        (ms.ConvexFNOClassifierCV, ConvexFNOClassifier),
    ],
    ids=["attention", "fno"],
)
def test_selected_alpha_equals_gridsearchcv(data, cv_cls, head):
    X, y = data
    folds = StratifiedKFold(3, shuffle=True, random_state=0)
    params = dict(n_gates=2, random_state=0, tol=1e-8, max_iter=20000)
    cv_est = cv_cls(alphas=6, eps=1e-3, cv=folds, **params).fit(X, y)
    grid = GridSearchCV(head(**params), {"alpha": list(cv_est.alphas_)}, cv=folds).fit(X, y)
    np.testing.assert_allclose(cv_est.cv_results_["mean_test_score"],
                               grid.cv_results_["mean_test_score"], atol=1e-12)
    for k in range(3):
        np.testing.assert_allclose(cv_est.scores_[k], grid.cv_results_[f"split{k}_test_score"])
    np.testing.assert_array_equal(cv_est.cv_results_["rank_test_score"],
                                  grid.cv_results_["rank_test_score"])
    assert cv_est.alpha_ == grid.best_params_["alpha"]
    assert cv_est.best_index_ == grid.best_index_
    # the refit is the head fitted at alpha_ on all the data (same optimum)
    ref = head(alpha=cv_est.alpha_, **params).fit(X, y)
    assert abs(cv_est.objective_ - ref.objective_) <= 1e-6 * abs(ref.objective_)
    np.testing.assert_array_equal(cv_est.predict(X), ref.predict(X))
    np.testing.assert_allclose(cv_est.predict_proba(X), ref.predict_proba(X), atol=1e-4)


def test_grid_and_attributes(data):
    X, y = data
    est = ms.ConvexSelfAttentionClassifierCV(alphas=5, eps=1e-2, cv=3, n_gates=2, random_state=0).fit(X, y)
    assert est.alphas_.shape == (5,)
    np.testing.assert_allclose(est.alphas_[0], est.alpha_max_, rtol=1e-10)
    np.testing.assert_allclose(est.alphas_[-1] / est.alphas_[0], 1e-2)
    assert np.all(np.diff(est.alphas_) < 0)
    assert est.scores_.shape == est.n_iter_path_.shape == (3, 5)
    assert est.n_iter_ == est.n_iter_path_.sum() + est.refit_n_iter_
    assert est.alpha_ in est.alphas_
    assert est.transform(X).shape == (X.shape[0], X.shape[1])
    assert est.score(X, y) == est.best_estimator_.score(X, y)
    # flattened input, as the heads accept it
    np.testing.assert_array_equal(est.predict(X.reshape(X.shape[0], -1)), est.predict(X))


def test_explicit_alphas_scoring_refit_false_and_n_jobs(data):
    X, y = data
    kw = dict(cv=3, n_gates=2, random_state=0, scoring="neg_log_loss")
    est = ms.ConvexSelfAttentionClassifierCV(alphas=[0.001, 0.1, 0.01], refit=False, **kw).fit(X, y)
    np.testing.assert_allclose(est.alphas_, [0.1, 0.01, 0.001])  # fitted decreasing
    assert np.all(est.scores_ <= 0)  # neg_log_loss
    assert not hasattr(est, "best_estimator_")
    with pytest.raises(AttributeError, match="has no attribute 'predict'"):
        est.predict(X)
    par = ms.ConvexSelfAttentionClassifierCV(alphas=[0.001, 0.1, 0.01], refit=False, n_jobs=2, **kw).fit(X, y)
    np.testing.assert_allclose(par.scores_, est.scores_, rtol=1e-10)


@pytest.mark.parametrize("alphas", [[], [0.1, -1.0], [np.inf]])
def test_bad_alphas(data, alphas):
    X, y = data
    with pytest.raises(ValueError, match="alphas"):
        ms.ConvexSelfAttentionClassifierCV(alphas=alphas, n_gates=2).fit(X, y)


# ------------------------------------------------------------------ warm starts
def test_warm_start_reuses_the_solution(data):
    X, y = data
    head = ConvexSelfAttentionClassifier(alpha=0.01, n_gates=2, random_state=0, warm_start=True,
                                         max_iter=40, tol_scale="objective")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        head.fit(X, y)  # stopped by max_iter
    gap, objective = head.dual_gap_, head.objective_
    head.set_params(max_iter=5000).fit(X, y)  # resumes exactly where it stopped
    np.testing.assert_allclose(head.convergence_["objective"][0], objective, rtol=1e-6)
    if head.solver_ == "fista":
        np.testing.assert_allclose(head.convergence_["dual_gap"][0], gap, rtol=1e-6)
    # (the factored solver certifies with the best dual point of its run: a resumed run
    # starts from the point's own)
    assert head.n_iter_ > 0
    head.fit(X, y)  # same alpha from its own certified solution: nothing left to do
    assert head.n_iter_ == 0
    # along a path every warm-started fit takes fewer iterations than a cold one
    # (iterations compared at the objective's scale: at the null scale the counts, in
    # steps of a certificate's 20 iterations, are too few to order)
    kw = dict(n_gates=2, random_state=0, max_iter=20000, tol_scale="objective")
    path = ms.regularization_path(ConvexSelfAttentionClassifier(**kw), X, y, 6, eps=1e-2)
    assert path["converged"].all()
    cold = [ConvexSelfAttentionClassifier(alpha=a, **kw).fit(X, y).n_iter_ for a in path["alphas"]]
    assert np.all(path["n_iter"] <= np.asarray(cold))
    # (230 against 272 iterations: the path's counts are those of one head per growth,
    # the cold fits at the two smallest alphas gained from several heads per growth)
    assert path["n_iter"][1:].sum() < 0.9 * np.sum(cold[1:])


def test_warm_start_takes_the_best_candidate(data):
    """The path's predicted warm start is used only when its objective is lower."""
    X, y = data
    kw = dict(alpha=0.01, n_gates=2, random_state=0, warm_start=True, max_iter=5000,
              solver="fista")  # the path predictor is a FISTA warm start
    exact = ConvexSelfAttentionClassifier(**{**kw, "tol": 1e-10, "max_iter": 50000}).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = ConvexSelfAttentionClassifier(**{**kw, "max_iter": 30}).fit(X, y)
    plain, twin, third = (copy.deepcopy(start).set_params(max_iter=5000) for _ in range(3))
    plain.fit(X, y)
    # a far worse candidate is ignored: the same run as without it
    twin._warm_candidates = [(100 * start.coef_, start.intercept_)]
    twin.fit(X, y)
    assert twin.n_iter_ == plain.n_iter_ and plain.n_iter_ > 0
    np.testing.assert_array_equal(twin.coef_, plain.coef_)
    # the optimum as a candidate is taken: certified without an iteration
    third._warm_candidates = [(exact.coef_, exact.intercept_)]
    third.fit(X, y)
    assert third.n_iter_ == 0
    np.testing.assert_allclose(third.coef_, exact.coef_)
    assert not hasattr(third, "_warm_candidates")  # consumed by the fit


def test_path_predictor_is_polynomial_extrapolation():
    rng = np.random.default_rng(0)
    logs = [0.0, -0.5, -1.0]
    a, b, c = (rng.standard_normal((2, 3, 4)) for _ in range(3))
    coef = [a + l * b + l * l * c for l in logs]  # a quadratic path in log(alpha)
    prev = [(l, k, k[0, 0]) for l, k in zip(logs, coef)]
    (sec_c, sec_b), (quad_c, quad_b) = ms._predict_on_path(prev, -1.5)
    np.testing.assert_allclose(quad_c, a - 1.5 * b + 2.25 * c, atol=1e-12)
    np.testing.assert_allclose(quad_b, (a - 1.5 * b + 2.25 * c)[0, 0], atol=1e-12)
    np.testing.assert_allclose(sec_c, 2 * coef[2] - coef[1], atol=1e-12)
    assert len(ms._predict_on_path(prev[1:], -1.5)) == 1  # two points: the secant only


@pytest.mark.parametrize("head_name", ["attention", "mixer", "fno"])
def test_ten_value_path_costs_at_most_three_cold_fits(head_name):
    """A warm-started 10-value path (eps=1e-3) against one cold fit at its smallest alpha,
    counted in iterations (deterministic; the timed comparison is benchmarks/bench_paths.py).

    Measured here: attention 1.1x, mixer 2.3x, FNO 2.7x (the MLP head, 3.1x on its
    benchmark problem, is not held to it: see benchmarks/README.md).
    """
    from skconvexattn import ConvexMixerClassifier

    cls = {"attention": ConvexSelfAttentionClassifier, "mixer": ConvexMixerClassifier,
           "fno": ConvexFNOClassifier}[head_name]
    X, y = make_token_clusters(n_samples=300, n_tokens=8, random_state=0, return_X_y=True)
    # FISTA's path (warm starts and path predictors); L-BFGS cold fits need several times
    # fewer iterations, so its path costs 3.1x (Mixer) and 4.6x (FNO) of its own cold fit
    head = cls(n_gates=4, random_state=0, max_iter=20000, solver="fista", tol_scale="objective")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = ms.regularization_path(head, X, y, 10, eps=1e-3)
        cold = clone(head).set_params(alpha=path["alphas"][-1]).fit(X, y)
    assert path["converged"].all() and cold.n_iter_ > 0
    iter_ratio = path["n_iter"].sum() / cold.n_iter_
    print(f"{head_name} path/cold: iterations {iter_ratio:.2f}x")
    assert iter_ratio <= 3.0
    # the path ends at the cold fit's optimum (both certified to tol=1e-4)
    assert abs(path["objective"][-1] - cold.objective_) <= 2e-4 * cold.objective_
