"""Tests of the convex FNO head (SPEC 2.3, 2.4).

The references here are written independently of the package: circular convolutions and
cross-correlations from explicit ``s x s`` shift matrices, the Fourier basis from its
definition, and the convex program built explicitly and solved by CVXPY + CLARABEL.
"""

import math
import time
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils._param_validation import InvalidParameterError

from skconvexattn.heads.fno import (
    ConvexFNOClassifier,
    channel_groups,
    fno_features,
    fno_gate_masks,
    fourier_basis,
)


# ---------------------------------------------------------------------------- references
def shift_matrices(s):
    """``S[tau]`` with ``(S[tau] X)[t] = X[(t - tau) mod s]``, built entry by entry."""
    S = np.zeros((s, s, s))
    for tau in range(s):
        for t in range(s):
            S[tau, t, (t - tau) % s] = 1.0
    return S


def conv_explicit(X, K):
    """``(C(X) K)[t] = sum_{tau,f} K[tau,f] X[(t-tau) mod s, f]`` for ``X (n,s,d)``: ``(n,s)``."""
    S = shift_matrices(X.shape[1])
    return sum((S[tau] @ X) @ K[tau] for tau in range(X.shape[1]))


def gates_explicit(X, H, mu, sigma):
    Xt = (X - mu) / sigma
    return np.stack([conv_explicit(Xt, Hp) >= 0 for Hp in H], axis=1).astype(float)  # (n,P,s)


def features_explicit(X, D):
    """``Phi[n, p, tau, f] = (1/s) sum_t D[n,p,t] X[n, (t - tau) mod s, f]``."""
    n, s, d = X.shape
    S = shift_matrices(s)
    Phi = np.zeros((n, D.shape[1], s, d))
    for tau in range(s):
        Phi[:, :, tau, :] = D @ (S[tau] @ X) / s
    return Phi


def basis_explicit(s, n_modes):
    """Real Fourier basis of frequencies ``0..n_modes-1`` from its definition."""
    t = np.arange(s)
    cols = [np.ones(s)]
    for k in range(1, n_modes):
        cols.append(np.cos(2 * np.pi * k * t / s))
        if 2 * k != s:  # the Nyquist sine vanishes
            cols.append(np.sin(2 * np.pi * k * t / s))
    B = np.stack(cols, axis=1)
    return B / np.linalg.norm(B, axis=0)


def explicit_blocks(clf, X):
    """Per-block feature matrices ``(n, rows)`` of the fitted model, without padding."""
    s, d = clf.token_shape_
    if clf.activation == "linear":
        D = np.ones((X.shape[0], 1, s))
    else:
        g = clf.gates_
        D = gates_explicit(X, g["H"], g["mu"], g["sigma"])
    Phi = features_explicit(X, D)  # (n, P, s, d)
    if clf.n_modes is not None:
        Phi = np.einsum("tk,nptf->npkf", basis_explicit(s, clf.n_modes), Phi)
    return [
        Phi[:, p, :, a:b].reshape(X.shape[0], -1)
        for p in range(D.shape[1])
        for a, b in channel_groups(d, clf.n_blocks)
    ]


def cvxpy_optimum(blocks, y, w, alpha, loss, penalty_scale=1.0):
    """Weighted mean loss + alpha * sum of nuclear norms, free intercept (CLARABEL)."""
    cp = pytest.importorskip("cvxpy")
    n = y.shape[0]
    classes = np.unique(y)
    c = classes.shape[0]
    Y = (y[:, None] == classes[None, :]).astype(float)
    Zs = [cp.Variable((F.shape[1], c)) for F in blocks]
    b = cp.Variable((1, c))
    O = sum(F @ Z for F, Z in zip(blocks, Zs)) + np.ones((n, 1)) @ b
    w = w / w.sum()
    if loss == "log_loss":
        data = w @ (cp.log_sum_exp(O, axis=1) - cp.sum(cp.multiply(Y, O), axis=1))
    else:
        data = 0.5 * w @ cp.sum(cp.square(O - Y), axis=1)
    pen = sum(cp.normNuc(Z) for Z in Zs)
    prob = cp.Problem(cp.Minimize(data + alpha * penalty_scale * pen))
    prob.solve(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    assert prob.status == "optimal", prob.status
    return prob.value, O.value


def tiny_problem(c, n=12, s=4, d=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, s, d))
    y = np.arange(n) % c
    rng.shuffle(y)
    sw = rng.uniform(0.5, 2.0, n)
    return X, y, sw


def fit_quiet(clf, X, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (ConvergenceWarning, UserWarning))
        return clf.fit(X, y, **kw)


def clone_with(est, **params):
    return clone(est).set_params(**params)


def logits(clf, X):
    """All class logits (decision_function gives their difference for 2 classes)."""
    return clf._logits(np.asarray(X, dtype=float))


# (a) the scikit-learn common checks of this head run in test_sklearn_contract.py


# ---------------------------------------------------------------------------- (b) features
@pytest.mark.parametrize("s", [1, 2, 3, 4, 5, 7, 8])
def test_fft_features_equal_circulant_construction(s):
    rng = np.random.default_rng(s)
    n, d, P = 5, 3, 4
    X = rng.standard_normal((n, s, d)) + 0.3
    H = rng.standard_normal((P, s, d))
    mu, sigma = rng.standard_normal(d), rng.uniform(0.5, 2.0, d)

    D = gates_explicit(X, H, mu, sigma)
    np.testing.assert_array_equal(fno_gate_masks(X, H, mu, sigma), D)
    Phi = features_explicit(X, D)
    got = fno_features(X, H, mu=mu, sigma=sigma)
    assert got.shape == (n, P, s * d, 1)
    np.testing.assert_allclose(got[..., 0], Phi.reshape(n, P, s * d), rtol=0, atol=1e-12)

    # lowest Fourier modes: B^T Phi, B orthonormal, M = 2 n_modes - 1 (- 1 with Nyquist)
    for n_modes in range(1, s // 2 + 2):
        B = basis_explicit(s, n_modes)
        M = 2 * n_modes - 1 - int(s % 2 == 0 and n_modes == s // 2 + 1)
        assert B.shape == (s, M)
        np.testing.assert_allclose(fourier_basis(s, n_modes), B, atol=1e-13)
        np.testing.assert_allclose(B.T @ B, np.eye(M), atol=1e-13)
        ref = np.einsum("tk,nptf->npkf", B, Phi).reshape(n, P, M * d)
        got = fno_features(X, H, n_modes=n_modes, mu=mu, sigma=sigma)
        np.testing.assert_allclose(got[..., 0], ref, rtol=0, atol=1e-12)
    assert fourier_basis(s).shape == (s, s)  # the full spectrum is a square basis

    # channel blocks: contiguous groups, gate-major, zero-padded to the largest group
    for n_blocks in range(1, d + 1):
        groups = channel_groups(d, n_blocks)
        sizes = [len(g) for g in np.array_split(np.arange(d), n_blocks)]
        assert [b - a for a, b in groups] == sizes
        gmax = max(b - a for a, b in groups)
        got = fno_features(X, H, n_blocks=n_blocks, mu=mu, sigma=sigma)[..., 0]
        assert got.shape == (n, P * n_blocks, s * gmax)
        for p in range(P):
            for g, (a, b) in enumerate(groups):
                ref = np.zeros((n, s, gmax))
                ref[:, :, : b - a] = Phi[:, p, :, a:b]
                np.testing.assert_allclose(
                    got[:, p * n_blocks + g], ref.reshape(n, -1), rtol=0, atol=1e-12
                )


def test_features_array_api_strict():
    xps = pytest.importorskip("array_api_strict")
    rng = np.random.default_rng(0)
    X, H = rng.standard_normal((4, 6, 3)), rng.standard_normal((2, 6, 3))
    mu, sigma = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
    for kw in [{}, {"n_modes": 2}, {"n_modes": 4, "n_blocks": 2}]:
        for kernels in (H, None):
            ref = fno_features(X, kernels, mu=mu if kernels is not None else None,
                               sigma=sigma if kernels is not None else None, **kw)
            args = [xps.asarray(X), None if kernels is None else xps.asarray(kernels)]
            extra = {} if kernels is None else {"mu": xps.asarray(mu), "sigma": xps.asarray(sigma)}
            got = fno_features(*args, **kw, **extra)
            np.testing.assert_allclose(np.asarray(got), ref, atol=1e-12)


def test_float32_features_and_fit():
    X, y, _ = tiny_problem(3, n=30, s=5, d=3)
    X32 = X.astype(np.float32)
    clf = ConvexFNOClassifier(alpha=1e-2, n_gates=3, random_state=0, device="cpu")
    fit_quiet(clf, X32, y)
    assert clf.predict(X32).shape == (30,)
    assert fno_features(X32, clf.gates_["H"].astype(np.float32)).dtype == np.float32


# ---------------------------------------------------------------------------- (c) n_modes
@pytest.mark.parametrize("s", [5, 6])
@pytest.mark.parametrize("activation", ["gated_relu", "linear"])
def test_full_spectrum_equals_no_truncation(s, activation):
    X, y, _ = tiny_problem(3, n=24, s=s, d=2, seed=1)
    kw = dict(alpha=2e-2, activation=activation, n_gates=3, random_state=0, device="cpu",
              tol=1e-9, max_iter=20000)
    full = ConvexFNOClassifier(**kw).fit(X, y)
    modes = ConvexFNOClassifier(n_modes=s // 2 + 1, **kw).fit(X, y)
    assert modes.coef_.shape == full.coef_.shape
    np.testing.assert_allclose(modes.objective_, full.objective_, rtol=1e-8)
    # Two fits certified to a relative gap <= tol agree in objective to ~tol but in logits only
    # to ~sqrt(tol) (the loss is quadratic near its optimum): 1.5e-6 was seen on another BLAS.
    # Dropping one mode moves the gated logits by ~0.4 of their scale, so this still bites.
    scale = np.abs(full.decision_function(X)).max()
    np.testing.assert_allclose(modes.decision_function(X), full.decision_function(X),
                               rtol=0, atol=np.sqrt(kw["tol"]) * scale)
    # truncation is a restriction: fewer weights, an objective no lower
    low = ConvexFNOClassifier(n_modes=1, **kw).fit(X, y)
    assert low.coef_.shape[1] == 2
    assert low.objective_ >= full.objective_ - full.dual_gap_ - 1e-12


def test_parameter_errors():
    X, y, _ = tiny_problem(2, s=4, d=2)
    with pytest.raises(ValueError, match=r"n_modes=4 is out of range.*\[1, 3\]"):
        ConvexFNOClassifier(n_modes=4, device="cpu").fit(X, y)
    with pytest.raises(ValueError, match=r"n_blocks=3 .*n_features=2.*\[1, 2\]"):
        ConvexFNOClassifier(n_blocks=3, device="cpu").fit(X, y)
    with pytest.raises(InvalidParameterError, match="n_modes"):
        ConvexFNOClassifier(n_modes=0).fit(X, y)
    with pytest.raises(InvalidParameterError, match="n_blocks"):
        ConvexFNOClassifier(n_blocks=0).fit(X, y)


# ---------------------------------------------------------------------------- (d) linear
@pytest.mark.parametrize("loss", ["log_loss", "squared_error"])
def test_linear_fno_is_linear_head_on_mean_token(loss):
    X, y, sw = tiny_problem(3, n=20, s=5, d=3, seed=2)
    n, s, d = X.shape
    xbar = X.mean(axis=1)
    for n_modes in (None, 2):
        Phi = fno_features(X, n_modes=n_modes)[:, 0, :, 0].reshape(n, -1, d)
        if n_modes is None:
            np.testing.assert_allclose(Phi, np.broadcast_to(xbar[:, None], (n, s, d)), atol=1e-14)
        else:  # B^T 1 = sqrt(s) e_0
            np.testing.assert_allclose(Phi[:, 0], math.sqrt(s) * xbar, atol=1e-14)
            np.testing.assert_allclose(Phi[:, 1:], 0.0, atol=1e-14)

    # logits xbar^T V + b with V = sum_tau Z[tau]; min ||Z||_* given V is ||V||_* / sqrt(s)
    alpha = 5e-3
    ref, _ = cvxpy_optimum([xbar], y, sw, alpha, loss, penalty_scale=1 / math.sqrt(s))
    for n_modes in (None, 2):
        clf = ConvexFNOClassifier(alpha=alpha, activation="linear", n_modes=n_modes, loss=loss,
                                  tol=1e-9, max_iter=20000, device="cpu")
        clf.fit(X, y, sample_weight=sw)
        np.testing.assert_allclose(clf.objective_, ref, rtol=1e-6)


# ---------------------------------------------------------------------------- (e) cvxpy
CONFIGS = {"plain": {}, "n_blocks=2": {"n_blocks": 2}, "n_modes=2": {"n_modes": 2}}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("loss", ["log_loss", "squared_error"])
@pytest.mark.parametrize("activation", ["gated_relu", "linear"])
@pytest.mark.parametrize("c", [2, 3])
def test_matches_cvxpy(c, activation, loss, config):
    X, y, sw = tiny_problem(c)
    clf = ConvexFNOClassifier(activation=activation, n_gates=3, loss=loss, random_state=0,
                              device="cpu", tol=1e-9, max_iter=20000, **CONFIGS[config])
    alpha = 0.2 * fit_quiet(clone_with(clf, max_iter=1), X, y, sample_weight=sw).alpha_max_
    clf.set_params(alpha=alpha).fit(X, y, sample_weight=sw)
    ref, O_ref = cvxpy_optimum(explicit_blocks(clf, X), y, sw, alpha, loss)
    assert abs(clf.objective_ - ref) <= 1e-6 * abs(ref)
    assert clf.dual_gap_ >= clf.objective_ - ref - 1e-9
    assert clf.dual_gap_ <= 1e-9 * clf.objective_
    if loss == "squared_error":  # unique logits
        np.testing.assert_allclose(logits(clf, X), O_ref, atol=1e-4)
    else:  # unique probabilities
        P_ref = np.exp(O_ref - O_ref.max(1, keepdims=True))
        np.testing.assert_allclose(clf.predict_proba(X), P_ref / P_ref.sum(1, keepdims=True),
                                   atol=1e-4)


def test_gap_bounds_suboptimality_along_the_path():
    """Early-stopped fits: the reported gap is never below the true suboptimality."""
    X, y, sw = tiny_problem(3, seed=3)
    kw = dict(n_gates=3, random_state=0, device="cpu", n_blocks=2, n_modes=2)
    first = fit_quiet(ConvexFNOClassifier(max_iter=1, **kw), X, y)  # same gates as below
    alpha = 0.1 * first.alpha_max_
    ref, _ = cvxpy_optimum(explicit_blocks(first, X), y, np.ones(12), alpha, "log_loss")
    for max_iter in (1, 5, 20, 80, 320):
        clf = fit_quiet(ConvexFNOClassifier(alpha=alpha, tol=0, max_iter=max_iter, **kw), X, y)
        assert clf.objective_ >= ref - 1e-9
        assert clf.dual_gap_ >= clf.objective_ - ref - 1e-9


# ---------------------------------------------------------------------------- (f) recovery
def recover(clf):
    """SPEC 2.4, from the fitted blocks: (gate, kernel (s,d), w_2 (c,), sigma) per neuron."""
    s, d = clf.token_shape_
    groups = channel_groups(d, clf.n_blocks)
    gmax = max(b - a for a, b in groups)
    B = np.eye(s) if clf.n_modes is None else basis_explicit(s, clf.n_modes)
    neurons = []
    for blk, Zp in enumerate(clf.coef_):
        p, g = divmod(blk, clf.n_blocks)
        a, b = groups[g]
        U, S, Vh = np.linalg.svd(Zp, full_matrices=False)
        for j in range(S.size):
            K = np.zeros((s, d))
            K[:, a:b] = np.sqrt(S[j]) * (B @ U[:, j].reshape(-1, gmax))[:, : b - a]
            neurons.append((p, K, np.sqrt(S[j]) * Vh[j], S[j]))
    return neurons


def nonconvex_forward(clf, neurons, X):
    """Yhat = sum_j (D_p * C(X) K_j) w_2j^T, average-pooled, plus the intercept."""
    n, s, _ = X.shape
    if clf.activation == "linear":
        D = np.ones((n, 1, s))
    else:
        D = gates_explicit(X, clf.gates_["H"], clf.gates_["mu"], clf.gates_["sigma"])
    O = np.tile(clf.intercept_, (n, 1))
    for p, K, w2, _ in neurons:
        act = D[:, p, :] * conv_explicit(X, K)  # gated ReLU at every token, (n, s)
        O += act.mean(axis=1)[:, None] * w2[None, :]
    return O


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"n_modes": 3},
        {"n_blocks": 2},
        {"n_modes": 2, "n_blocks": 3},
        {"activation": "linear"},
        {"activation": "linear", "n_modes": 2, "n_blocks": 2},
    ],
)
def test_recovered_network_reproduces_fit(kw):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((30, 6, 5))
    y = np.arange(30) % 3
    clf = fit_quiet(
        ConvexFNOClassifier(alpha=3e-3, n_gates=3, random_state=0, device="cpu", tol=1e-6, **kw),
        X, y,
    )
    neurons = recover(clf)
    O = nonconvex_forward(clf, neurons, X)
    np.testing.assert_allclose(O, clf.decision_function(X), rtol=0,
                               atol=1e-8 * max(1.0, np.abs(O).max()))
    decay = sum(0.5 * (np.sum(K**2) + np.sum(w2**2)) for _, K, w2, _ in neurons)
    np.testing.assert_allclose(decay, clf.block_norms().sum(), rtol=1e-10)
    # the estimator's own recovery agrees (used by the linear transform)
    own = clf._neurons()
    assert len(own) <= len(neurons)
    np.testing.assert_allclose(sum(nr["sigma"] for nr in own), clf.block_norms().sum(), rtol=1e-8)


# ---------------------------------------------------------------------------- transform
def test_transform_gate_bits():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((40, 6, 4))
    y = (X[:, :, 0].sum(1) > 0).astype(int)
    clf = fit_quiet(ConvexFNOClassifier(alpha=1e-3, n_gates=4, n_blocks=2, random_state=0,
                                        device="cpu"), X, y)
    ids = clf.transform(X)
    assert ids.shape == (40, 6) and ids.dtype == np.int64
    norms = clf.block_norms().reshape(4, 2).sum(axis=1)
    order = np.argsort(-norms, kind="stable")
    order = order[norms[order] > 1e-8 * norms.max()]
    D = gates_explicit(X, clf.gates_["H"], clf.gates_["mu"], clf.gates_["sigma"])
    for j, p in enumerate(order):
        np.testing.assert_array_equal((ids >> j) & 1, D[:, p, :])
    assert ids.max() < 2 ** order.size
    np.testing.assert_array_equal(clf.transform(X.reshape(40, -1)), ids)  # flattened input


def test_transform_linear():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((40, 6, 4))
    y = np.arange(40) % 3
    clf = fit_quiet(ConvexFNOClassifier(alpha=1e-3, activation="linear", device="cpu"), X, y)
    ids = clf.transform(X)
    assert ids.shape == (40, 6) and ids.dtype == np.int64
    assert 0 <= ids.min() and ids.max() < 8
    # zero model: one cluster
    big = fit_quiet(ConvexFNOClassifier(alpha=10.0, activation="linear", device="cpu"), X, y)
    assert np.all(big.transform(X) == 0)


# ---------------------------------------------------------------------------- (g) digits
def digits_tokens():
    """Digits cut into 2x2 patches (16 tokens, row-major) plus one-hot positions."""
    try:
        from skconvexattn.datasets import load_digits_tokens
    except ImportError:  # built here the same way when the dataset module is absent
        from sklearn.datasets import load_digits

        dg = load_digits()
        n = dg.images.shape[0]
        patches = (dg.images / 16.0).reshape(n, 4, 2, 4, 2).transpose(0, 1, 3, 2, 4)
        patches = patches.reshape(n, 16, 4)
        pos = np.broadcast_to(np.eye(16), (n, 16, 16))
        return np.concatenate([patches, pos], axis=2), dg.target
    return load_digits_tokens(patch_size=2, positional=True, return_X_y=True)


@pytest.mark.slow
def test_digits_accuracy():
    X, y = digits_tokens()
    assert X.shape[1:] == (16, 20)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    scores = {}
    for alpha in (3e-3, 1e-3):
        t0 = time.perf_counter()
        clf = fit_quiet(
            ConvexFNOClassifier(alpha=alpha, n_gates=8, random_state=0, device="cpu",
                                tol=1e-3, max_iter=2000), Xtr, ytr,
        )
        scores[alpha] = clf.score(Xte, yte)
        print(f"FNO digits alpha={alpha:g}: test accuracy {scores[alpha]:.4f}, "
              f"{clf.n_iter_} iterations, relative gap {clf.dual_gap_ / clf.objective_:.1e}, "
              f"{time.perf_counter() - t0:.1f} s")
    assert max(scores.values()) >= 0.93
