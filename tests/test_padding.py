"""Padding tokens (token rows entirely NaN) through validation, heads, recovered networks,
preprocessing and model selection.

The central checks are invariances: a fit on sequences padded with NaN rows equals the fit
on the unpadded sequences (self-attention and MLP: padding at any positions; Mixer:
trailing padding), and the recovered network reproduces the logits and the objective.
"""

import math
import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline

from skconvexattn import (
    ConvexFNOClassifier,
    ConvexMixerClassifier,
    ConvexMLPClassifier,
    ConvexSelfAttentionClassifier,
)
from skconvexattn._gates import prototype_gates, token_moments
from skconvexattn._operator import LiftedOperator
from skconvexattn.heads.fno import fno_features
from skconvexattn.heads.mixer import shell_gate_matrices
from skconvexattn.heads.mlp import gated_token_operator, mlp_features
from skconvexattn.preprocessing import TokenPCA, TokenStandardScaler, pad_tokens, padding_mask

N, S_REAL, S, D = 40, 3, 5, 3


def _data(n=N, s=S_REAL, d=D, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, s, d)
    y = (X[:, :, 0].mean(axis=1) + 0.3 * X[:, 0, 1] > 0).astype(int)
    y[:2] = [0, 1]
    return X, y


def _pad_anywhere(X, s, seed=1):
    """Each sample's tokens, in order, at random positions of ``s`` rows; NaN elsewhere."""
    rng = np.random.RandomState(seed)
    n, sp, d = X.shape
    keys = rng.rand(n, s)
    pos = np.sort(np.argsort(keys, axis=1)[:, :sp], axis=1)  # sp random positions each
    Xp = np.full((n, s, d), np.nan, dtype=X.dtype)
    Xp[np.arange(n)[:, None], pos] = X
    assert not (padding_mask(Xp)[:, -1]).all()  # not only trailing padding
    return Xp


def _pad_trailing(X, s):
    n, sp, d = X.shape
    Xp = np.full((n, s, d), np.nan, dtype=X.dtype)
    Xp[:, :sp] = X
    return Xp


def _ragged(X, seed=2):
    """Sequences of 1..s real tokens (trailing padding)."""
    rng = np.random.RandomState(seed)
    lengths = rng.randint(1, X.shape[1] + 1, size=X.shape[0])
    return pad_tokens([x[:k] for x, k in zip(X, lengths)], max_tokens=X.shape[1])


FIT = dict(alpha=1e-2, n_gates=3, random_state=0, tol=1e-7, max_iter=4000)


def _assert_same_fit(a, b, Xa, Xb):
    assert a.n_iter_ == b.n_iter_
    assert abs(a.objective_ - b.objective_) <= 1e-8 * max(1.0, abs(a.objective_))
    np.testing.assert_allclose(b.intercept_, a.intercept_, rtol=0, atol=1e-8)
    np.testing.assert_allclose(b.decision_function(Xb), a.decision_function(Xa), atol=1e-8)
    np.testing.assert_array_equal(b.predict(Xb), a.predict(Xa))
    np.testing.assert_allclose(b.predict_proba(Xb), a.predict_proba(Xa), atol=1e-8)


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("flat", [False, True], ids=["3d", "2d"])
def test_padding_rows_are_accepted_and_partial_nan_refused(flat):
    X, y = _data()
    Xp = _pad_trailing(X, S)
    kw = dict(n_tokens=S) if flat else {}
    prep = (lambda A: A.reshape(A.shape[0], -1)) if flat else (lambda A: A)
    est = ConvexMLPClassifier(alpha=1e-2, n_gates=2, random_state=0, **kw).fit(prep(Xp), y)
    assert np.all(np.isfinite(est.decision_function(prep(Xp))))
    bad = Xp.copy()
    bad[4, 3, 0] = 0.5  # a padding row with one real value: some NaN, not all
    for action in (lambda: clone(est).fit(prep(bad), y), lambda: est.predict(prep(bad))):
        with pytest.raises(ValueError, match=r"NaN \(2 values\).*sample 4, token 3.*all 3"):
            action()


def test_sample_with_only_padding_is_refused():
    X, y = _data()
    Xp = _pad_trailing(X, S)
    Xp[7] = np.nan
    with pytest.raises(ValueError, match=r"sample 7.*only padding.*at least one real token"):
        ConvexSelfAttentionClassifier(**FIT).fit(Xp, y)
    with pytest.raises(ValueError, match=r"only padding"):
        TokenStandardScaler().fit(Xp)


# --------------------------------------------------------------------------- invariances
@pytest.mark.parametrize(
    "cls, params",
    [
        (ConvexSelfAttentionClassifier, {}),
        (ConvexSelfAttentionClassifier, {"gate_init": "prototypes"}),
        (ConvexSelfAttentionClassifier, {"activation": "linear"}),
        (ConvexMLPClassifier, {}),
        (ConvexMLPClassifier, {"gate_init": "prototypes"}),
        (ConvexMLPClassifier, {"activation": "linear"}),
    ],
)
def test_padding_anywhere_gives_the_unpadded_fit(cls, params):
    """Order-free heads: padding at any positions changes nothing (to 1e-8)."""
    X, y = _data()
    Xp = _pad_anywhere(X, S)
    a = cls(**FIT, **params).fit(X, y)
    b = cls(**FIT, **params).fit(Xp, y)
    _assert_same_fit(a, b, X, Xp)
    np.testing.assert_allclose(b.coef_, a.coef_, rtol=0, atol=1e-8)
    assert b.alpha_max_ == pytest.approx(a.alpha_max_, rel=1e-12)


@pytest.mark.parametrize("activation", ["gated_relu", "linear"])
def test_mixer_trailing_padding_gives_the_unpadded_fit(activation):
    X, y = _data()
    Xp = _pad_trailing(X, S)
    # FISTA: the same iterates to rounding. L-BFGS sums over the s**2 rows of the padded
    # blocks in another order, and its trajectory parts at rounding level: it agrees to
    # its certificate (test_mixer_trailing_padding_on_factors)
    a = ConvexMixerClassifier(**FIT, activation=activation, solver="fista").fit(X, y)
    b = ConvexMixerClassifier(**FIT, activation=activation, solver="fista").fit(Xp, y)
    _assert_same_fit(a, b, X, Xp)
    P = b.coef_.shape[0]
    coef = b.coef_.reshape(P, S, S, -1)
    np.testing.assert_allclose(
        coef[:, :S_REAL, :S_REAL].reshape(a.coef_.shape), a.coef_, rtol=0, atol=1e-8
    )
    outside = coef.copy()
    outside[:, :S_REAL, :S_REAL] = 0
    assert np.abs(outside).max() <= 1e-10  # positions never seen keep zero weights


@pytest.mark.parametrize("activation", ["gated_relu", "linear"])
def test_mixer_trailing_padding_on_factors(activation):
    X, y = _data()
    Xp = _pad_trailing(X, S)
    kw = dict(FIT, tol=1e-11, max_iter=20000)
    a = ConvexMixerClassifier(**kw, activation=activation).fit(X, y)
    b = ConvexMixerClassifier(**kw, activation=activation).fit(Xp, y)
    assert a.solver_ == b.solver_ == "factored"
    assert abs(a.objective_ - b.objective_) <= a.dual_gap_ + b.dual_gap_ + 1e-15
    np.testing.assert_allclose(b.decision_function(Xp), a.decision_function(X), atol=1e-6)
    np.testing.assert_array_equal(b.predict(Xp), a.predict(X))


def test_mixer_gate_matrices_are_nested():
    """The leading s' x s' block of H_p does not depend on s."""
    big = shell_gate_matrices(np.random.RandomState(3), 4, 7)
    for sp in (1, 2, 5, 7):
        small = shell_gate_matrices(np.random.RandomState(3), 4, sp)
        np.testing.assert_array_equal(big[:, :sp, :sp], small)
    assert big.shape == (4, 7, 7) and np.unique(big).size == big.size  # every entry drawn
    assert abs(big.mean()) < 0.3 and 0.7 < big.std() < 1.3  # standard Gaussian entries


def test_gate_statistics_ignore_padding():
    X, _ = _data()
    w = np.full(N, 1.0 / N)
    Xp = _pad_anywhere(X, S)
    for a, b in zip(token_moments(X, w), token_moments(Xp, w)):
        np.testing.assert_allclose(b, a, rtol=1e-13)
    mu, sigma = token_moments(X, w)
    Ha, ca = prototype_gates(np.random.RandomState(0), 3, X, w, mu, sigma)
    Hb, cb = prototype_gates(np.random.RandomState(0), 3, Xp, w, mu, sigma)
    np.testing.assert_allclose(Hb, Ha, rtol=1e-12)
    np.testing.assert_allclose(cb, ca, rtol=1e-12)


def test_mlp_matrix_free_operator_with_padding():
    """The matrix-free fast path equals the materialised features on padded data."""
    X, _ = _data()
    Xp = _ragged(_pad_trailing(X, S)[:, :S], seed=4)
    rng = np.random.RandomState(0)
    H, c = rng.randn(4, D), rng.randn(4)
    w = np.full(N, 1.0 / N)
    fast = gated_token_operator(Xp, H, c, center=w)
    ref = LiftedOperator(lambda A: mlp_features(A, H, c), Xp, (4, D, 1), center=w)
    Z, U = rng.randn(4, D, 2), rng.randn(N, 2)
    np.testing.assert_allclose(fast.forward(Z), ref.forward(Z), atol=1e-12)
    np.testing.assert_allclose(fast.adjoint(U), ref.adjoint(U), atol=1e-12)
    np.testing.assert_allclose(fast.intercept_shift(Z), ref.intercept_shift(Z), atol=1e-12)


# --------------------------------------------------------------------------- FNO
def _fno_features_brute(X, kernels, mu, sigma):
    """Phi[tau, f] = (1/s_i) sum_{t real} D[t] X0[(t - tau) mod s, f], by explicit sums."""
    n, s, d = X.shape
    P = kernels.shape[0]
    out = np.zeros((n, P, s, d))
    for i in range(n):
        real = ~np.isnan(X[i, :, 0])
        X0 = np.where(real[:, None], X[i], 0.0)
        Xt = np.where(real[:, None], (X0 - mu) / sigma, 0.0)
        for p in range(P):
            conv = np.array([
                sum(kernels[p, tau] @ Xt[(t - tau) % s] for tau in range(s)) for t in range(s)
            ])
            Dp = (conv >= 0) & real
            for tau in range(s):
                out[i, p, tau] = sum(Dp[t] * X0[(t - tau) % s] for t in range(s)) / real.sum()
    return out


def test_fno_padding_is_zero_tokens_pooled_over_real_positions():
    """As documented: padding is a zero token of the circular sequence, no output is read
    at padding positions, and the pooling divides by the number of real tokens."""
    X, _ = _data(n=6, s=S)
    Xp = _ragged(X)
    rng = np.random.RandomState(0)
    K = rng.randn(2, S, D)
    mu, sigma = rng.randn(D), rng.rand(D) + 0.5
    got = fno_features(Xp, K, mu=mu, sigma=sigma)[..., 0].reshape(6, 2, S, D)
    np.testing.assert_allclose(got, _fno_features_brute(Xp, K, mu, sigma), atol=1e-12)


@pytest.mark.parametrize("activation", ["gated_relu", "linear"])
def test_fno_padded_logits(activation):
    """Padding never reaches the real part: the logits of a padded sample do not depend
    on the rest of the batch, are invariant to rolling the whole (padded) sequence, and
    the recovered network reproduces them and the objective."""
    X, y = _data(s=4)
    Xp = _ragged(_pad_trailing(X, 6))
    est = ConvexFNOClassifier(**FIT, activation=activation).fit(Xp, y)
    D_all = est.decision_function(Xp)
    np.testing.assert_allclose(est.decision_function(Xp[5:9]), D_all[5:9], atol=1e-10)
    np.testing.assert_allclose(est.decision_function(np.roll(Xp, 2, axis=1)), D_all, atol=1e-9)
    net = est.to_nonconvex()
    np.testing.assert_allclose(net.decision_function(Xp), D_all, atol=1e-9)
    assert net.objective(Xp, y) == pytest.approx(est.objective_, rel=1e-9)


# --------------------------------------------------------------------------- recovery
HEADS = [
    (ConvexSelfAttentionClassifier, {}),
    (ConvexSelfAttentionClassifier, {"activation": "linear"}),
    (ConvexMixerClassifier, {}),
    (ConvexMixerClassifier, {"activation": "linear"}),
    (ConvexMLPClassifier, {}),
    (ConvexMLPClassifier, {"activation": "linear"}),
    (ConvexFNOClassifier, {}),
    (ConvexFNOClassifier, {"activation": "linear", "n_modes": 2}),
]


@pytest.mark.parametrize("cls, params", HEADS)
def test_recovered_network_with_padding(cls, params):
    X, y = _data(n=30, s=S)
    Xp = _ragged(X)
    est = cls(**{**FIT, "tol": 1e-5}, **params).fit(Xp, y)
    net = est.to_nonconvex()
    O = est.decision_function(Xp)
    np.testing.assert_allclose(net.decision_function(Xp), O, atol=1e-9)
    assert net.objective(Xp, y) == pytest.approx(est.objective_, rel=1e-9)
    torch = pytest.importorskip("torch")
    mod = net.to_torch()
    with torch.no_grad():
        T = mod(torch.as_tensor(Xp)).numpy()
    O3 = T[:, 1] - T[:, 0]
    np.testing.assert_allclose(O3, O, atol=1e-9)


@pytest.mark.parametrize("cls, params", HEADS)
def test_transform_gives_padding_minus_one(cls, params):
    X, y = _data(n=30, s=S)
    Xp = _ragged(X)
    est = cls(**{**FIT, "tol": 1e-4}, **params).fit(Xp, y)
    ids = est.transform(Xp)
    pad = padding_mask(Xp)
    assert pad.any()
    assert np.all(ids[pad] == -1)
    assert np.all(ids[~pad] >= 0)


def test_float32_padding():
    X, y = _data()
    Xp = _pad_anywhere(X, S).astype(np.float32)
    est = ConvexSelfAttentionClassifier(**{**FIT, "tol": 1e-4}).fit(Xp, y)
    ref = ConvexSelfAttentionClassifier(**{**FIT, "tol": 1e-4}).fit(X.astype(np.float32), y)
    assert est.coef_.dtype == np.float32
    np.testing.assert_allclose(est.objective_, ref.objective_, rtol=1e-4)


# --------------------------------------------------------------------------- preprocessing
def test_scaler_and_pca_ignore_padding():
    X, _ = _data(s=S, d=4)
    Xp = _ragged(X)
    pad = padding_mask(Xp)
    real_rows = Xp[~pad]
    w = np.random.RandomState(0).rand(N) + 0.5

    sc = TokenStandardScaler().fit(Xp, sample_weight=w)
    wt = np.broadcast_to(w[:, None], pad.shape)[~pad]
    mean = wt @ real_rows / wt.sum()
    np.testing.assert_allclose(sc.mean_, mean, rtol=1e-12)
    np.testing.assert_allclose(sc.var_, wt @ (real_rows - mean) ** 2 / wt.sum(), rtol=1e-10)
    assert sc.n_tokens_seen_ == pytest.approx(wt.sum())
    Xs = sc.transform(Xp)
    assert np.array_equal(padding_mask(Xs), pad) and np.all(np.isfinite(Xs[~pad]))
    np.testing.assert_allclose(sc.inverse_transform(Xs)[~pad], real_rows, atol=1e-12)
    assert np.array_equal(padding_mask(sc.inverse_transform(Xs)), pad)

    pca = TokenPCA(2).fit(Xp)
    centred = real_rows - real_rows.mean(axis=0)
    top = np.linalg.svd(centred, full_matrices=False)[2][:2]
    np.testing.assert_allclose(np.abs(pca.components_ @ top.T), np.eye(2), atol=1e-8)
    Xt = pca.transform(Xp)
    assert Xt.shape == (N, S, 2) and np.array_equal(padding_mask(Xt), pad)
    assert np.all(np.isfinite(Xt[~pad]))
    back = pca.inverse_transform(Xt)
    assert np.array_equal(padding_mask(back), pad)
    flat = pca.transform(Xp.reshape(N, -1))
    np.testing.assert_array_equal(np.isnan(flat), np.isnan(Xt.reshape(N, -1)))


def test_pca_counts_real_tokens():
    Xp = _pad_trailing(np.random.RandomState(0).randn(2, 1, 4), 3)
    with pytest.raises(ValueError, match=r"n_components=3 .* training tokens, 2 \(the real tokens"):
        TokenPCA(3).fit(Xp)


# --------------------------------------------------------------------------- model selection
def _pipe():
    return make_pipeline(
        TokenStandardScaler(),
        TokenPCA(3),
        ConvexSelfAttentionClassifier(alpha=1e-2, n_gates=2, tol=1e-4, random_state=0),
    )


def test_padding_through_pipeline_search_and_cv():
    X, y = _data(n=60, s=4, d=4, seed=5)
    Xp = _pad_anywhere(X, 6, seed=3)
    a = _pipe().fit(X, y)
    b = _pipe().fit(Xp, y)
    # scaler and PCA ignore padding, the head is order-free: the same model
    np.testing.assert_allclose(b.decision_function(Xp), a.decision_function(X), atol=1e-8)
    np.testing.assert_array_equal(b[-1].transform(b[:-1].transform(Xp)) == -1, padding_mask(Xp))
    sa = cross_val_score(_pipe(), X, y, cv=3)
    sb = cross_val_score(_pipe(), Xp, y, cv=3)
    np.testing.assert_allclose(sb, sa)
    grid = {"convexselfattentionclassifier__alpha": [1e-2, 1e-1]}
    ga = GridSearchCV(_pipe(), grid, cv=3).fit(X, y)
    gb = GridSearchCV(_pipe(), grid, cv=3).fit(Xp, y)
    assert ga.best_params_ == gb.best_params_
    np.testing.assert_allclose(gb.cv_results_["mean_test_score"], ga.cv_results_["mean_test_score"])
    c = pickle.loads(pickle.dumps(clone(b).fit(Xp, y)))
    np.testing.assert_allclose(c.predict_proba(Xp), b.predict_proba(Xp), atol=1e-12)
    assert math.isfinite(c.score(Xp, y))


# --------------------------------------------------------------------------- helpers
def test_pad_tokens_and_padding_mask():
    rng = np.random.RandomState(0)
    seqs = [rng.randn(k, 3).astype(np.float32) for k in (2, 5, 1)]
    X = pad_tokens(seqs)
    assert X.shape == (3, 5, 3) and X.dtype == np.float32
    np.testing.assert_array_equal(
        padding_mask(X), np.arange(5)[None, :] >= np.array([2, 5, 1])[:, None]
    )
    for x, k in zip(X, (2, 5, 1)):
        np.testing.assert_array_equal(x[:k], seqs[[2, 5, 1].index(k)])
    T = pad_tokens(seqs, max_tokens=3, dtype=np.float64)
    assert T.shape == (3, 3, 3) and T.dtype == np.float64
    np.testing.assert_array_equal(T[1], seqs[1][:3])  # truncated to the first tokens
    assert pad_tokens([np.ones((2, 2), dtype=int)]).dtype == np.float64
    with pytest.raises(ValueError, match="sequence 1 has no tokens"):
        pad_tokens([np.ones((1, 2)), np.ones((0, 2))])
    with pytest.raises(ValueError, match="different numbers of features"):
        pad_tokens([np.ones((1, 2)), np.ones((1, 3))])
    with pytest.raises(ValueError, match="floating dtype"):
        pad_tokens([np.ones((1, 2))], dtype=int)
    partial = X.copy()
    partial[0, 0, 1] = np.nan  # some NaN: not padding
    assert not padding_mask(partial)[0, 0]
