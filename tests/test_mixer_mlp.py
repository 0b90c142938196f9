"""MLP-Mixer and token-MLP heads: features, convex optimum, recovered networks, digits."""

from __future__ import annotations

import itertools
import time
import warnings

import numpy as np
import pytest

from skconvexattn._gates import sign_pattern_clusters
from skconvexattn.heads.attention import token_sides
from skconvexattn.heads.mixer import ConvexMixerClassifier, mixer_features, mixer_masks
from skconvexattn.heads.mlp import ConvexMLPClassifier, mlp_features

HEADS = [ConvexMixerClassifier, ConvexMLPClassifier]


# the scikit-learn common checks of these heads run in test_sklearn_contract.py


# --------------------------------------------------------------------- explicit formulas
def _explicit_mixer_masks(X, H, mu, sigma):
    """M_p^(i)[t, f] = 1{sum_u H_p[t, u] (X_i[u, f] - mu_f) / sigma_f >= 0}, by loops."""
    n, s, d = X.shape
    P = H.shape[0]
    M = np.zeros((n, P, s, d))
    for i, p, t, f in itertools.product(range(n), range(P), range(s), range(d)):
        z = sum(H[p, t, u] * (X[i, u, f] - mu[f]) / sigma[f] for u in range(s))
        M[i, p, t, f] = 1.0 if z >= 0 else 0.0
    return M


def _explicit_mixer_phi(X, M):
    """Phi_i^(p)[(t, t'), f] = (1/s) M_p^(i)[t, f] X_i[t', f], by loops."""
    n, s, d = X.shape
    P = M.shape[1]
    Phi = np.zeros((n, P, s * s, d))
    for i, p, t, u, f in itertools.product(range(n), range(P), range(s), range(s), range(d)):
        Phi[i, p, t * s + u, f] = M[i, p, t, f] * X[i, u, f] / s
    return Phi


def _explicit_mlp_sides(X, H, c):
    """D_p(x_it) = 1{h_p . x_it + c_p >= 0}, by loops: (n, s, P)."""
    n, s, d = X.shape
    P = H.shape[0]
    D = np.zeros((n, s, P))
    for i, t, p in itertools.product(range(n), range(s), range(P)):
        D[i, t, p] = 1.0 if sum(H[p, f] * X[i, t, f] for f in range(d)) + c[p] >= 0 else 0.0
    return D


def _explicit_mlp_phi(X, D):
    """Phi_i^(p)[f, 0] = (1/s) sum_t D_p(x_it) x_it[f], by loops."""
    n, s, d = X.shape
    P = D.shape[2]
    Phi = np.zeros((n, P, d, 1))
    for i, p, f in itertools.product(range(n), range(P), range(d)):
        Phi[i, p, f, 0] = sum(D[i, t, p] * X[i, t, f] for t in range(s)) / s
    return Phi


def _explicit_phi(clf, X):
    """The fitted head's lifted features, rebuilt from the SPEC formulas and its gates."""
    n, s, d = X.shape
    g = clf.gates_
    if isinstance(clf, ConvexMixerClassifier):
        if not g:
            return _explicit_mixer_phi(X, np.ones((n, 1, s, d)))
        return _explicit_mixer_phi(X, _explicit_mixer_masks(X, g["H"], g["mu"], g["sigma"]))
    D = np.ones((n, s, 1)) if not g else _explicit_mlp_sides(X, g["H"], g["c"])
    return _explicit_mlp_phi(X, D)


def _tiny(n=12, s=3, d=3, c=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, s, d))
    y = np.arange(n) % c  # every class present, balanced
    X[np.arange(n), 0, 0] += 0.8 * y  # some signal
    return X, y


def test_mixer_features_match_explicit_loops():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((4, 3, 2)) + 0.3
    H = rng.standard_normal((2, 3, 3))
    mu, sigma = np.array([0.2, -0.1]), np.array([1.5, 0.7])
    M = _explicit_mixer_masks(X, H, mu, sigma)
    assert 0 < M.mean() < 1
    np.testing.assert_array_equal(mixer_masks(X, H, mu, sigma), M)
    np.testing.assert_allclose(
        mixer_features(X, H, mu=mu, sigma=sigma), _explicit_mixer_phi(X, M), rtol=1e-14
    )
    np.testing.assert_allclose(
        mixer_features(X), _explicit_mixer_phi(X, np.ones((4, 1, 3, 2))), rtol=1e-14
    )


def test_mlp_features_match_explicit_loops():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((4, 3, 2))
    H, c = rng.standard_normal((3, 2)), rng.standard_normal(3) * 0.3
    D = _explicit_mlp_sides(X, H, c)
    assert 0 < D.mean() < 1
    np.testing.assert_allclose(mlp_features(X, H, c), _explicit_mlp_phi(X, D), rtol=1e-14)
    np.testing.assert_allclose(mlp_features(X), X.mean(axis=1)[:, None, :, None], rtol=1e-14)


@pytest.mark.parametrize("backend", ["array_api_strict", "torch"])
def test_features_array_api_namespaces(backend):
    """The feature maps use only array-API calls: same numbers in another namespace."""
    xp = pytest.importorskip(backend)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((5, 3, 4))
    Hm = rng.standard_normal((2, 3, 3))
    mu, sigma = rng.standard_normal(4), rng.uniform(0.5, 2, 4)
    Hl, cl = rng.standard_normal((3, 4)), rng.standard_normal(3)
    a = lambda v: xp.asarray(v)  # noqa: E731
    np_back = lambda v: np.asarray(v.cpu() if backend == "torch" else v)  # noqa: E731
    cases = [
        (mixer_features(X), mixer_features(a(X))),
        (
            mixer_features(X, Hm, mu=mu, sigma=sigma),
            mixer_features(a(X), a(Hm), mu=a(mu), sigma=a(sigma)),
        ),
        (mlp_features(X), mlp_features(a(X))),
        (mlp_features(X, Hl, cl), mlp_features(a(X), a(Hl), a(cl))),
    ]
    for ref, got in cases:
        np.testing.assert_allclose(np_back(got), ref, rtol=1e-13, atol=1e-15)


def test_gated_with_all_ones_masks_equals_linear():
    rng = np.random.default_rng(4)
    X = rng.uniform(0.1, 1.0, (5, 3, 2))  # positive tokens ...
    H = rng.uniform(0.1, 1.0, (3, 3, 3))  # ... and positive mixing: every mask is one
    Phi = mixer_features(X, H)
    assert np.all(mixer_masks(X, H) == 1)
    for p in range(3):
        np.testing.assert_allclose(Phi[:, p : p + 1], mixer_features(X), rtol=1e-15)
    # token MLP: a hyperplane with every token on its positive side
    Hl, cl = rng.standard_normal((2, 2)), np.full(2, 100.0)
    Phi = mlp_features(X, Hl, cl)
    for p in range(2):
        np.testing.assert_allclose(Phi[:, p : p + 1], mlp_features(X), rtol=1e-15)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_mixer_gates_invariant_to_feature_units():
    """Gates act on standardised tokens: rescaling and shifting features keeps the masks."""
    X, y = _tiny(n=20, s=3, d=3, c=2)
    scale, shift = np.array([10.0, 0.01, 3.0]), np.array([5.0, -2.0, 0.0])
    a = ConvexMixerClassifier(n_gates=3, random_state=0, max_iter=5).fit(X, y)
    b = ConvexMixerClassifier(n_gates=3, random_state=0, max_iter=5).fit(X * scale + shift, y)
    ga, gb = a.gates_, b.gates_
    np.testing.assert_array_equal(ga["H"], gb["H"])
    np.testing.assert_array_equal(
        mixer_masks(X, ga["H"], ga["mu"], ga["sigma"]),
        mixer_masks(X * scale + shift, gb["H"], gb["mu"], gb["sigma"]),
    )


# --------------------------------------------------------------------- convex optimum
def _cvxpy_optimum(Phi, Y, alpha, loss):
    cp = pytest.importorskip("cvxpy")
    n, P, R, L = Phi.shape
    c = Y.shape[1]
    Z = [cp.Variable((R, L * c)) for _ in range(P)]
    b = cp.Variable(c)
    O = None
    for p in range(P):
        for l in range(L):
            # o_i[b] += sum_r Phi_i[p, r, l] Z_p[r, l * c + b]
            term = Phi[:, p, :, l] @ Z[p][:, l * c : (l + 1) * c]
            O = term if O is None else O + term
    O = O + np.ones((n, 1)) @ cp.reshape(b, (1, c), order="C")
    if loss == "log_loss":
        data = cp.sum(cp.log_sum_exp(O, axis=1) - cp.sum(cp.multiply(O, Y), axis=1)) / n
    else:
        data = 0.5 * cp.sum_squares(O - Y) / n
    pen = sum(cp.normNuc(Zp) for Zp in Z)
    prob = cp.Problem(cp.Minimize(data + alpha * pen))
    prob.solve(
        solver="CLARABEL",
        tol_gap_abs=1e-10,
        tol_gap_rel=1e-10,
        tol_feas=1e-10,
    )
    assert prob.status == "optimal", prob.status
    return prob.value


@pytest.mark.parametrize("Est", HEADS, ids=lambda e: e.__name__)
@pytest.mark.parametrize("c", [2, 3])
@pytest.mark.parametrize("activation", ["linear", "gated_relu"])
@pytest.mark.parametrize("loss", ["log_loss", "squared_error"])
def test_objective_matches_cvxpy(Est, c, activation, loss):
    X, y = _tiny(n=12, s=3, d=3, c=c)
    alpha = 0.04
    clf = Est(
        alpha=alpha,
        activation=activation,
        n_gates=2,
        loss=loss,
        tol=1e-10,
        max_iter=20000,
        random_state=0,
        device="cpu",
    ).fit(X, y)
    assert alpha < 0.75 * clf.alpha_max_  # a non-trivial solution
    Phi = _explicit_phi(clf, X)
    Y = np.eye(c)[y]
    opt = _cvxpy_optimum(Phi, Y, alpha, loss)
    assert abs(clf.objective_ - opt) <= 1e-6 * abs(opt)
    # the certificate is never below the true suboptimality
    assert clf.dual_gap_ >= clf.objective_ - opt - 1e-9
    assert clf.dual_gap_ <= 1e-9 * clf.objective_


# --------------------------------------------------------------------- recovered networks
def _recover(Z, row_shape, col_shape):
    """W_1j = sqrt(s_j) reshape(u_j), W_2j = sqrt(s_j) reshape(v_j) for every block."""
    heads = []
    for Zp in Z:
        U, S, Vh = np.linalg.svd(Zp, full_matrices=False)
        r = np.sqrt(S)
        heads.append(
            [
                (r[j] * U[:, j].reshape(row_shape), r[j] * Vh[j].reshape(col_shape))
                for j in range(S.size)
            ]
        )
    return heads


def _mixer_forward(clf, X, heads):
    """Non-convex Mixer: o_i = sum_{p, j} (1/s) 1^T (M_p^(i) * (W_1j X_i)) W_2j + b."""
    n, s, d = X.shape
    g = clf.gates_
    M = np.ones((n, 1, s, d)) if not g else _explicit_mixer_masks(X, g["H"], g["mu"], g["sigma"])
    O = np.tile(clf.intercept_, (n, 1))
    for i in range(n):
        for p, block in enumerate(heads):
            for W1, W2 in block:
                O[i] += np.ones(s) @ (M[i, p] * (W1 @ X[i])) @ W2 / s
    return O


def _mlp_forward(clf, X, heads):
    """Non-convex token MLP: o_i = sum_{p, j} (1/s) sum_t D_p(x_it) (x_it . w_1j) w_2j + b."""
    n, s, d = X.shape
    g = clf.gates_
    D = np.ones((n, s, 1)) if not g else _explicit_mlp_sides(X, g["H"], g["c"])
    O = np.tile(clf.intercept_, (n, 1))
    for i in range(n):
        for p, block in enumerate(heads):
            for w1, w2 in block:
                for t in range(s):
                    O[i] += D[i, t, p] * (X[i, t] @ w1[:, 0]) * w2 / s
    return O


@pytest.mark.parametrize("Est", HEADS, ids=lambda e: e.__name__)
@pytest.mark.parametrize("activation", ["linear", "gated_relu"])
def test_recovered_network_reproduces_convex_model(Est, activation):
    X, y = _tiny(n=15, s=3, d=3, c=3, seed=5)
    clf = Est(alpha=0.01, activation=activation, n_gates=3, random_state=0, device="cpu")
    clf.fit(X, y)
    n, s, d = X.shape
    c = 3
    if Est is ConvexMixerClassifier:
        heads = _recover(clf.coef_, (s, s), (d, c))
        O = _mixer_forward(clf, X, heads)
    else:
        heads = _recover(clf.coef_, (d, 1), (c,))
        O = _mlp_forward(clf, X, heads)
    np.testing.assert_allclose(O, clf.decision_function(X), rtol=0, atol=1e-8)
    decay = sum((np.sum(W1**2) + np.sum(W2**2)) / 2 for block in heads for W1, W2 in block)
    np.testing.assert_allclose(decay, clf.block_norms().sum(), rtol=1e-10)
    assert decay > 0  # a non-trivial network


# --------------------------------------------------------------------- transform
def test_mixer_transform_clusters_token_positions():
    X, y = _tiny(n=20, s=4, d=3, c=2, seed=6)
    for activation in ["linear", "gated_relu"]:
        clf = ConvexMixerClassifier(
            alpha=0.01, activation=activation, n_gates=3, random_state=0
        ).fit(X, y)
        T = clf.transform(X)
        assert T.shape == (20, 4) and T.dtype == np.int64
        assert np.all(T == T[0])  # positions: the same ids in every sample
        S = np.linalg.svd(clf.coef_, compute_uv=False).ravel()
        assert 0 <= T.min() and T.max() < np.count_nonzero(S > 1e-8 * S.max())
        # explicit definition: the head with the largest sigma_j ||U_j[:, t']||
        U, S, _ = np.linalg.svd(clf.coef_, full_matrices=False)
        score = [
            (S[p, j], S[p, j] * np.linalg.norm(U[p, :, j].reshape(4, 4), axis=0))
            for p in range(U.shape[0])
            for j in range(S.shape[1])
            if S[p, j] > 1e-8 * S.max()
        ]
        score.sort(key=lambda v: -v[0])
        expected = np.argmax(np.stack([v[1] for v in score]), axis=0)
        np.testing.assert_array_equal(T[0], expected)


def test_mixer_transform_zero_model():
    X, y = _tiny(n=20, s=3, d=2, c=2)
    with pytest.warns(UserWarning, match="alpha_max"):
        clf = ConvexMixerClassifier(alpha=1e3, random_state=0).fit(X, y)
    np.testing.assert_array_equal(clf.transform(X), 0)


def test_mlp_transform_is_a_token_function():
    X, y = _tiny(n=20, s=3, d=3, c=2, seed=7)
    clf = ConvexMLPClassifier(alpha=0.005, n_gates=4, random_state=0).fit(X, y)
    T = clf.transform(X)
    assert T.shape == (20, 3) and T.dtype == np.int64
    sides = token_sides(X, clf.gates_["H"], clf.gates_["c"])
    np.testing.assert_array_equal(T, sign_pattern_clusters(sides, clf.block_norms()))
    # the same token gets the same id whatever sample (and position) it is in
    X2 = X.copy()
    X2[:, 2] = X[0, 0]
    assert np.all(clf.transform(X2)[:, 2] == T[0, 0])
    lin = ConvexMLPClassifier(alpha=0.005, activation="linear").fit(X, y)
    Tl = lin.transform(X)
    assert Tl.shape == (20, 3) and Tl.min() >= 0 and Tl.max() < 2  # rank <= min(d, c)


def test_mixer_memory_refusal_names_tokens():
    X = np.random.default_rng(0).standard_normal((10, 40, 8))
    y = np.arange(10) % 2
    with pytest.raises(ValueError, match="n_tokens"):
        ConvexMixerClassifier(memory_budget=1e-4).fit(X, y)


# --------------------------------------------------------------------- digits
def _digits_tokens():
    try:
        from skconvexattn.datasets import load_digits_tokens
    except ImportError:
        from sklearn.datasets import load_digits

        digits = load_digits()
        n = digits.images.shape[0]
        patches = (
            (digits.images / 16.0).reshape(n, 4, 2, 4, 2).transpose(0, 1, 3, 2, 4).reshape(n, 16, 4)
        )
        pos = np.broadcast_to(np.eye(16), (n, 16, 16))
        return np.concatenate([patches, pos], axis=2), digits.target
    return load_digits_tokens(return_X_y=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    "Est, params",
    [
        (ConvexMixerClassifier, dict(activation="linear", alpha=1e-3)),
        (ConvexMixerClassifier, dict(activation="gated_relu", n_gates=2, alpha=1e-3)),
        (ConvexMLPClassifier, dict(activation="gated_relu", n_gates=16, alpha=3e-4)),
        (ConvexMLPClassifier, dict(activation="gated_relu", n_gates=32, alpha=1e-4)),
    ],
    ids=["mixer-linear", "mixer-gated2", "mlp-gated16", "mlp-gated32"],
)
def test_digits_accuracy(Est, params):
    from sklearn.model_selection import train_test_split

    X, y = _digits_tokens()
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    clf = Est(random_state=0, max_iter=2000, device="cpu", **params)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(Xtr, ytr)
    acc = clf.score(Xte, yte)
    print(
        f"{Est.__name__} {params}: test accuracy {acc:.4f}, fit {time.perf_counter() - t0:.1f}s, "
        f"{clf.n_iter_} iterations, relative gap {clf.dual_gap_ / clf.objective_:.1e}"
    )
    assert acc >= 0.93


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_mlp_matrix_free_operator_same_fit(fit_intercept, monkeypatch):
    """One token per sample, two classes: the MLP head takes the matrix-free products,
    and reaches the same certified solution as with materialised features."""
    from skconvexattn._base import BaseConvexHead

    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 1, 10))
    y = (X[:, 0, 0] * X[:, 0, 1] + 0.3 * X[:, 0, 2] > 0).astype(int)
    kw = dict(alpha=1e-3, n_gates=16, random_state=0, tol=1e-8, max_iter=20000,
              fit_intercept=fit_intercept, solver="fista")  # the operator, not the solver
    free = ConvexMLPClassifier(**kw).fit(X, y)
    assert free.memory_plan_ == "matrix-free"
    monkeypatch.setattr(ConvexMLPClassifier, "_operator", BaseConvexHead._operator)
    feat = ConvexMLPClassifier(**kw).fit(X, y)
    assert feat.memory_plan_ == "materialised"
    np.testing.assert_allclose(free.objective_, feat.objective_, rtol=1e-7)
    np.testing.assert_allclose(free.coef_, feat.coef_, rtol=1e-3, atol=1e-4 * np.abs(feat.coef_).max())
    np.testing.assert_allclose(free.intercept_, feat.intercept_, rtol=1e-3, atol=1e-4)
    # predictions go through the same operator choice
    np.testing.assert_allclose(free.decision_function(X), feat.decision_function(X), rtol=1e-4, atol=1e-6)
    # many tokens: the materialised features pool them once and stay the choice
    X16 = rng.standard_normal((100, 16, 10))
    many = ConvexMLPClassifier(**{**kw, "tol": 1e-3}).fit(X16, y[:100])
    monkeypatch.undo()
    assert ConvexMLPClassifier(**{**kw, "tol": 1e-3}).fit(X16, y[:100]).memory_plan_ == "materialised"
    assert many.memory_plan_ == "materialised"
