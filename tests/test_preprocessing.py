"""Token-wise scaler and PCA: the scikit-learn contract, equality with the sklearn
transformers on stacked tokens, 3-D / flattened agreement, round trips, dtypes, pipelines."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.utils.estimator_checks import (
    check_dataframe_column_names_consistency,
    check_global_output_transform_pandas,
    check_set_output_transform_pandas,
    parametrize_with_checks,
)
from threadpoolctl import threadpool_limits

from skconvexattn.datasets import load_digits_tokens, make_token_clusters
from skconvexattn.preprocessing import TokenPCA, TokenStandardScaler


@pytest.fixture(autouse=True)
def _single_thread():
    """One BLAS/OpenMP thread: these small fits are 10x slower when threads oversubscribe
    a busy machine."""
    with threadpool_limits(1):
        yield

ESTIMATORS = [
    TokenStandardScaler(),
    TokenStandardScaler(with_mean=False),
    TokenPCA(),
    TokenPCA(n_components=2, whiten=True, random_state=0),
]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize("estimator", [TokenStandardScaler(), TokenPCA(n_components=2)], ids=repr)
@pytest.mark.parametrize(
    "check",
    [
        check_set_output_transform_pandas,
        check_global_output_transform_pandas,
        check_dataframe_column_names_consistency,
    ],
    ids=lambda c: c.__name__,
)
def test_pandas_output(estimator, check):
    pytest.importorskip("pandas")
    check(type(estimator).__name__, clone(estimator))


@pytest.fixture
def X3():
    rng = np.random.RandomState(0)
    # correlated, shifted, unevenly scaled token features
    A = rng.randn(5, 5)
    return rng.randn(30, 4, 5) @ A * np.array([1.0, 2.0, 0.5, 3.0, 1.0]) + np.arange(5)


def flatten(X):
    return X.reshape(X.shape[0], -1)


# ------------------------------------------------------------------ equality with sklearn
def test_scaler_equals_sklearn_on_stacked_tokens(X3):
    n, s, d = X3.shape
    ref = StandardScaler().fit(X3.reshape(-1, d))
    est = TokenStandardScaler().fit(X3)
    np.testing.assert_allclose(est.mean_, ref.mean_)
    np.testing.assert_allclose(est.var_, ref.var_)
    np.testing.assert_allclose(est.scale_, ref.scale_)
    assert est.n_tokens_seen_ == n * s
    Xt = est.transform(X3)
    np.testing.assert_allclose(Xt, ref.transform(X3.reshape(-1, d)).reshape(n, s, d))
    np.testing.assert_allclose(Xt.reshape(-1, d).mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(Xt.reshape(-1, d).std(0), 1)
    assert est.token_shape_ == (s, d) and est.n_features_in_ == s * d


def test_scaler_sample_weight_repeats_over_tokens(X3):
    n, s, d = X3.shape
    w = np.random.RandomState(1).randint(0, 4, size=n).astype(float)
    est = TokenStandardScaler().fit(X3, sample_weight=w)
    ref = StandardScaler().fit(X3.reshape(-1, d), sample_weight=np.repeat(w, s))
    np.testing.assert_allclose(est.mean_, ref.mean_)
    np.testing.assert_allclose(est.scale_, ref.scale_)
    # integer weights == repeating samples
    rep = TokenStandardScaler().fit(np.repeat(X3, w.astype(int), axis=0))
    np.testing.assert_allclose(est.mean_, rep.mean_)
    np.testing.assert_allclose(est.var_, rep.var_)


def test_scaler_options(X3):
    d = X3.shape[2]
    est = TokenStandardScaler(with_mean=False).fit(X3)
    np.testing.assert_allclose(est.transform(X3), X3 / est.scale_)
    est = TokenStandardScaler(with_std=False).fit(X3)
    assert est.scale_ is None
    assert TokenStandardScaler(with_mean=False, with_std=False).fit(X3).mean_ is None
    np.testing.assert_allclose(est.transform(X3), X3 - X3.reshape(-1, d).mean(0))
    # copy=False scales in place
    Xc = X3.copy()
    out = TokenStandardScaler(copy=False).fit(Xc).transform(Xc)
    assert np.shares_memory(out, Xc)


@pytest.mark.parametrize("k", [1, 3, 5, 0.9])
def test_pca_equals_sklearn_on_stacked_tokens(X3, k):
    n, s, d = X3.shape
    ref = PCA(n_components=k).fit(X3.reshape(-1, d))
    est = TokenPCA(n_components=k).fit(X3)
    assert est.n_components_ == ref.n_components_
    np.testing.assert_allclose(est.components_, ref.components_)
    np.testing.assert_allclose(est.explained_variance_ratio_, ref.explained_variance_ratio_)
    np.testing.assert_allclose(est.mean_, ref.mean_)
    Xt = est.transform(X3)
    assert Xt.shape == (n, s, ref.n_components_)
    np.testing.assert_allclose(Xt, ref.transform(X3.reshape(-1, d)).reshape(n, s, -1))


def test_pca_whiten(X3):
    Xt = TokenPCA(n_components=3, whiten=True).fit_transform(X3)
    T = Xt.reshape(-1, 3)
    np.testing.assert_allclose(np.cov(T, rowvar=False), np.eye(3), atol=1e-10)


# ------------------------------------------------------------------ 3-D and flattened
@pytest.mark.parametrize("est", [TokenStandardScaler(), TokenPCA(n_components=3)], ids=repr)
def test_3d_and_flattened_agree(X3, est):
    n, s, d = X3.shape
    a = clone(est).fit(X3)
    b = clone(est).set_params(n_tokens=s).fit(flatten(X3))
    assert a.token_shape_ == b.token_shape_ == (s, d)
    t3, t2 = a.transform(X3), b.transform(flatten(X3))
    assert t3.ndim == 3 and t2.ndim == 2
    np.testing.assert_allclose(t2, flatten(t3))
    # a transformer fitted on 3-D data takes it flattened, and the reverse
    np.testing.assert_allclose(a.transform(flatten(X3)), t2)
    np.testing.assert_allclose(b.transform(X3), t3)
    # default n_tokens=None on 2-D data: one token per row (plain sklearn behaviour)
    c = clone(est).fit(flatten(X3))
    assert c.token_shape_ == (1, s * d)


@pytest.mark.parametrize("est", [TokenStandardScaler(), TokenPCA(), TokenPCA(5, whiten=True)], ids=repr)
def test_inverse_transform_round_trip(X3, est):
    n, s, d = X3.shape
    fitted = clone(est).fit(X3)
    Xt = fitted.transform(X3)
    np.testing.assert_allclose(fitted.inverse_transform(Xt), X3, atol=1e-10)
    back2 = fitted.inverse_transform(flatten(Xt))
    assert back2.shape == (n, s * d)
    np.testing.assert_allclose(back2, flatten(X3), atol=1e-10)


def test_pca_partial_reconstruction_is_projection(X3):
    d = X3.shape[2]
    est = TokenPCA(n_components=2).fit(X3)
    ref = PCA(n_components=2).fit(X3.reshape(-1, d))
    back = est.inverse_transform(est.transform(X3))
    np.testing.assert_allclose(
        back.reshape(-1, d), ref.inverse_transform(ref.transform(X3.reshape(-1, d)))
    )


@pytest.mark.parametrize("est", [TokenStandardScaler(), TokenPCA(n_components=3)], ids=repr)
def test_float32_preserved(X3, est):
    X32 = X3.astype(np.float32)
    fitted = clone(est).fit(X32)
    out = fitted.transform(X32)
    assert out.dtype == np.float32
    assert fitted.transform(flatten(X32)).dtype == np.float32
    assert fitted.inverse_transform(out).dtype == np.float32
    np.testing.assert_allclose(out, clone(est).fit(X3).transform(X3), rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------ names and errors
def test_feature_names_out(X3):
    n, s, d = X3.shape
    names = TokenPCA(n_components=2).fit(X3).get_feature_names_out()
    assert list(names) == [f"token{t}_tokenpca{j}" for t in range(s) for j in range(2)]
    assert list(TokenPCA(2).fit(X3[:, 0]).get_feature_names_out()) == ["tokenpca0", "tokenpca1"]
    assert list(TokenStandardScaler().fit(X3).get_feature_names_out()) == [
        f"x{i}" for i in range(s * d)
    ]


def test_pca_n_components_too_large(X3):
    with pytest.raises(ValueError, match=r"n_components=6 is larger than the number of features per token, n_features=5"):
        TokenPCA(n_components=6).fit(X3)
    with pytest.raises(ValueError, match=r"n_components=3 is larger than the number of training tokens"):
        TokenPCA(n_components=3).fit(X3[:1, :2])
    with pytest.raises(ValueError, match="svd_solver='arpack'"):
        TokenPCA(n_components=5, svd_solver="arpack").fit(X3)


@pytest.mark.parametrize("est", [TokenStandardScaler(), TokenPCA(n_components=2)], ids=repr)
def test_bad_shapes(X3, est):
    fitted = clone(est).fit(X3)
    with pytest.raises(ValueError, match="tokens of shape"):
        fitted.transform(X3[:, :3])
    with pytest.raises(ValueError, match="3-D array"):
        fitted.transform(X3[0, 0])
    with pytest.raises(ValueError, match="does not divide"):
        clone(est).set_params(n_tokens=3).fit(flatten(X3))
    k = fitted.transform(X3).shape[2]
    with pytest.raises(ValueError, match="inverse_transform expects"):
        fitted.inverse_transform(np.zeros((2, 4, k + 1)))
    with pytest.raises(ValueError, match="inverse_transform expects"):
        fitted.inverse_transform(np.zeros((2, 4 * k + 1)))
    with pytest.raises(ValueError, match="DataFrame"):
        clone(fitted).set_output(transform="pandas").fit(X3).transform(X3)


# ------------------------------------------------------------------ pipelines
def test_pipeline_and_grid_search_on_digits():
    X, y = load_digits_tokens(n_class=4, patch_size=4, return_X_y=True)
    pipe = make_pipeline(
        TokenStandardScaler(),
        TokenPCA(random_state=0),
        FunctionTransformer(flatten),
        LogisticRegression(solver="newton-cholesky"),
    )
    search = GridSearchCV(pipe, {"tokenpca__n_components": [1, 10]}, cv=3).fit(X, y)
    assert search.best_params_ == {"tokenpca__n_components": 10}
    assert search.best_score_ > 0.9
    assert search.cv_results_["mean_test_score"][0] < search.best_score_
    assert search.predict(X[:5]).shape == (5,)
    # the fitted PCA reduces every token 20 -> 10 features
    assert search.best_estimator_[1].components_.shape == (10, 20)


def test_pipeline_on_planted_clusters_keeps_second_order_signal():
    """A token PCA that keeps the class direction keeps the label readable from the Gram."""
    ds = make_token_clusters(n_samples=300, random_state=0)
    gram = FunctionTransformer(lambda X: np.einsum("nsa,nsb->nab", X, X).reshape(len(X), -1))
    pipe = make_pipeline(
        TokenStandardScaler(), TokenPCA(n_components=4), gram, StandardScaler(),
        LogisticRegression(solver="newton-cholesky"),
    )
    pipe.fit(ds.data[:200], ds.target[:200])
    assert pipe.score(ds.data[200:], ds.target[200:]) >= 0.85
