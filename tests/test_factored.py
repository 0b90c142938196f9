"""The factored solver (``solver="factored"``): products, spectra, optimum, certificate.

* the matrix-free products on factors equal the lifted operator's (forward, ``Grad_p v``,
  ``Grad_p^T u``), with gates, padding and chunks;
* the block spectra (exact and Lanczos) equal the SVD of the explicit gradient blocks;
* the factored optimum equals cvxpy's on the tiny problems of ``test_optimality`` and
  FISTA's on the Mixer, and its ``dual_gap_`` is never below the true suboptimality, also
  when stopped early and when the spectra come from Lanczos;
* the recovered network reads the factors and reproduces logits and objective, also when
  the blocks are never formed (a width whose lifted problem is refused);
* float32 stays float32 with no RuntimeWarning; ``solver="auto"`` picks by memory.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from skconvexattn import ConvexMixerClassifier, ConvexSelfAttentionClassifier
from skconvexattn import _base, _dual_points, _factored, _spectra
from skconvexattn._factored import block_spectra
from skconvexattn._factored_ops import AttentionFactorOperator, MixerFactorOperator
from skconvexattn._operator import LiftedOperator
from skconvexattn._padding import split_padding
from skconvexattn.datasets import make_token_clusters
from skconvexattn.heads.attention import self_attention_features, token_sides
from skconvexattn.heads.mixer import mixer_features, mixer_masks

HEADS = (ConvexSelfAttentionClassifier, ConvexMixerClassifier)


def _blocks(A, B):
    """``Z_p = sum_j vec(A_pj) vec(B_pj)^T``: ``(P, R, L c)``."""
    P, r = A.shape[:2]
    return np.einsum("pjr,pjc->prc", A.reshape(P, r, -1), B.reshape(P, r, -1))


def _operators(kind, gated, X, P=2, seed=0, chunk=None, cache=0):
    """A factor operator and the lifted operator of the same head and gates (``cache``:
    the bytes of gate masks the Mixer's operator may keep)."""
    rng = np.random.default_rng(seed)
    n, s, d = X.shape
    X0, real, counts = split_padding(X)
    if kind == "attention":
        H, c = (rng.standard_normal((P, d)), rng.standard_normal(P)) if gated else (None, None)
        sides = token_sides(X0, H, c) * real[:, :, None] if gated else None
        op = AttentionFactorOperator(X0, sides, 1.0 / counts, chunk)
        fmap = (lambda Z: self_attention_features(Z, H, c)) if gated else self_attention_features
        lifted = LiftedOperator(fmap, X, (P if gated else 1, d * d, d))
        return op, lifted, (d, d)
    Hm = rng.standard_normal((P, s, s)) if gated else None
    mu, sg = rng.standard_normal(d), rng.random(d) + 0.5
    if gated:
        masks = lambda a, b: mixer_masks(X[a:b], Hm, mu, sg)  # noqa: E731
        fmap = lambda Z: mixer_features(Z, Hm, mu=mu, sigma=sg)  # noqa: E731
    else:
        masks = lambda a, b: real[a:b, None, :, None]  # noqa: E731
        fmap = mixer_features
    op = MixerFactorOperator(X0, masks, P if gated else 1, 1.0 / counts, chunk, cache)
    lifted = LiftedOperator(fmap, X, (P if gated else 1, s * s, d))
    return op, lifted, (s, s)


# the Mixer's operator with its gate masks recomputed per chunk (0) and kept (inf)
@pytest.mark.parametrize("kind,cache", [("attention", 0), ("mixer", 0), ("mixer", np.inf)])
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("chunk", [None, 3])
@pytest.mark.parametrize("padded", [False, True])
def test_products_equal_lifted(kind, gated, chunk, padded, cache):
    rng = np.random.default_rng(1)
    n, s, d, c, r = 7, 5, 3, 2, 3
    X = rng.standard_normal((n, s, d))
    if padded:  # trailing padding for the Mixer (its documented case), any rows otherwise
        X[0, 3:] = np.nan
        X[4, 1 if kind == "attention" else 4] = np.nan
    op, lifted, a_shape = _operators(kind, gated, X, chunk=chunk, cache=cache)
    assert kind == "attention" or (op.Mc is not None) == bool(cache)
    P = lifted.block_shape[0]
    A = rng.standard_normal((P, r) + a_shape)
    B = rng.standard_normal((P, r, d, c))
    T = rng.standard_normal((n, c))
    Z = _blocks(A, B)
    np.testing.assert_allclose(op.forward(A, B), lifted.forward(Z), rtol=1e-12, atol=1e-12)
    G = lifted.adjoint(T)  # (P, R, L c)
    ga = np.einsum("prc,pjc->pjr", G, B.reshape(P, r, -1)).reshape(A.shape)
    gb = np.einsum("prc,pjr->pjc", G, A.reshape(P, r, -1)).reshape(B.shape)
    np.testing.assert_allclose(op.grad_a(T, B), ga, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(op.grad_b(T, A), gb, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("kind,cache", [("attention", 0), ("mixer", 0), ("mixer", np.inf)])
@pytest.mark.parametrize("chunk", [None, 3])
@pytest.mark.parametrize("padded", [False, True])
def test_pair_logits_are_the_rank_one_blocks_logits(kind, chunk, padded, cache):
    """``pair_logits(A, B)[i, p, a, b]`` is the logits of the rank-one block
    ``vec(A_pa) vec(B_pb)^T`` alone, through the lifted features (the directions of the
    Newton dual point), with gates, padding and chunks."""
    rng = np.random.default_rng(7)
    n, s, d, c, k = 7, 5, 3, 2, 3
    X = rng.standard_normal((n, s, d))
    if padded:
        X[0, 3:] = np.nan
        X[4, 1 if kind == "attention" else 4] = np.nan
    op, lifted, a_shape = _operators(kind, True, X, chunk=chunk, cache=cache)
    P, R = lifted.block_shape[:2]
    A = rng.standard_normal((P, k) + a_shape)
    B = rng.standard_normal((P, k, d, c))
    D = op.pair_logits(A, B)
    assert D.shape == (n, P, k, k, c)
    for p in range(P):
        for a in range(k):
            for b in range(k):
                Z = np.zeros((P, R, d * c))
                Z[p] = np.outer(A[p, a].ravel(), B[p, b].ravel())
                np.testing.assert_allclose(D[:, p, a, b], lifted.forward(Z), rtol=1e-11,
                                           atol=1e-12)
    # the same through the lifted features (factors on the lifted operator)
    from skconvexattn._factored_ops import LiftedFactorOperator

    wrapped = LiftedFactorOperator(lifted, lifted.block_shape, a_shape)
    np.testing.assert_allclose(wrapped.pair_logits(A, B), D, rtol=1e-11, atol=1e-12)


def test_newton_dual_on_matrix_free_products(monkeypatch):
    """On the matrix-free products the Newton-corrected dual point is a lower bound on the
    optimum and much closer to it than the scaled loss gradient, with spectra by Lanczos
    and through the formed blocks alike (the same value)."""
    from test_lifted_factors import _stopped_early

    from skconvexattn._dual_points import _newton_dual
    from skconvexattn._solver import prior_and_start

    st, alpha, O, loose, tight = _stopped_early(
        "log_loss", True, monkeypatch, solver="factored", op_type=AttentionFactorOperator)
    prior, _ = prior_and_start(st.datafit, st.Y, st.w, True)
    call = (st.datafit, st.Y, st.w, prior, True, alpha, O)
    optimum = tight.objective
    values = {}
    for route, exact_max in (("lanczos", 0), ("exact", 10**6)):
        monkeypatch.setattr(_spectra, "EXACT_MAX", exact_max)
        scaled = _newton_dual(st.op, *call, steps=0)
        newton = _newton_dual(st.op, *call, steps=2)
        assert scaled <= loose.dual_objective + 1e-12
        assert scaled <= newton <= optimum + 1e-12 * abs(optimum)
        assert optimum - newton <= 0.1 * (optimum - scaled)
        values[route] = newton
    assert values["lanczos"] == pytest.approx(values["exact"], rel=1e-9)


@pytest.mark.parametrize("kind", ["attention", "mixer"])
@pytest.mark.parametrize("exact_max", [0, 10**6])
def test_block_spectra_equal_svd(kind, exact_max):
    """Lanczos (exact_max=0; full Krylov space here) and the exact route both give the
    top singular triple of every explicit gradient block."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((30, 4, 3))
    op, lifted, a_shape = _operators(kind, True, X, P=3)
    T = rng.standard_normal((30, 2))
    G = lifted.adjoint(T)
    ref = np.linalg.svd(G, compute_uv=False)[:, 0]
    sig, u, v = block_spectra(op, T, n_steps=60, exact_max=exact_max)
    np.testing.assert_allclose(sig, ref, rtol=1e-10)
    uGv = np.einsum("pr,prc,pc->p", u.reshape(3, -1), G, v.reshape(3, -1))
    np.testing.assert_allclose(uGv, ref, rtol=1e-8)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lanczos_stops_early_once_the_top_triple_converged(dtype, monkeypatch):
    """Lanczos stops before its step limit once every block's top Ritz triple has a tiny
    residual, with the top singular value to the tolerance of its precision."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((60, 5, 8))
    X[:, :, 0] *= 4.0  # a dominant direction: a well separated top singular value
    op, lifted, _ = _operators("attention", True, X.astype(dtype), P=2)
    T = rng.standard_normal((60, 3)).astype(dtype)
    ref = np.linalg.svd(lifted.adjoint(T.astype(np.float64)), compute_uv=False)[:, 0]
    trace = []
    monkeypatch.setattr(_spectra, "_LANCZOS_TRACE", trace)
    sig, u, v = block_spectra(op, T, n_steps=24, exact_max=0)  # min(R, L c) = 24
    steps = trace[-1][0]
    assert steps < 24
    rtol = _spectra.LANCZOS_RTOL if dtype == np.float64 else 8 * np.finfo(np.float32).eps
    assert trace[-1][1] <= rtol
    np.testing.assert_allclose(sig, ref, rtol=1e-9 if dtype == np.float64 else 1e-5)
    assert np.allclose(np.linalg.norm(u.reshape(2, -1), axis=1), 1.0, rtol=1e-5)
    # the same answer as the full Krylov space
    monkeypatch.setattr(_spectra, "LANCZOS_RTOL", 0.0)
    monkeypatch.setattr(_spectra, "LANCZOS_MIN_STEPS", 10**6)
    full = block_spectra(op, T, n_steps=25, exact_max=0)[0]
    np.testing.assert_allclose(sig, full, rtol=1e-9 if dtype == np.float64 else 1e-5)


def test_lanczos_few_steps_is_a_lower_bound():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 5, 6))
    op, lifted, _ = _operators("attention", True, X, P=2)
    T = rng.standard_normal((40, 3))
    ref = np.linalg.svd(lifted.adjoint(T), compute_uv=False)[:, 0]
    sig = block_spectra(op, T, n_steps=4, exact_max=0)[0]
    assert np.all(sig <= ref * (1 + 1e-12))
    assert np.all(sig >= 0.5 * ref)


# ----------------------------------------------------------------- optimum vs cvxpy
try:  # the independent cvxpy formulation (skips without cvxpy)
    import test_optimality as opt
except (ImportError, pytest.skip.Exception):  # pragma: no cover - cvxpy missing
    opt = None
needs_cvxpy = pytest.mark.skipif(opt is None, reason="needs cvxpy")
CASES = opt.CASES if opt else []
CASE_IDS = opt.CASE_IDS if opt else []


@pytest.fixture(params=[None, 0], ids=["exact-spectra", "lanczos"])
def spectra(request, monkeypatch):
    if request.param is not None:
        monkeypatch.setattr(_spectra, "EXACT_MAX", request.param)
    return request.param


@needs_cvxpy
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_factored_matches_cvxpy(case, spectra):
    S = opt.solved(case)
    est = ConvexSelfAttentionClassifier(
        alpha=S.alpha, random_state=0, solver="factored", tol=1e-9, tol_scale="objective",
        max_iter=20000, **S.params
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est.fit(S.X, S.y)
    assert est.solver_ == "factored"
    assert est.alpha_max_ == pytest.approx(S.alpha_max, rel=1e-9)
    assert est.objective_ == pytest.approx(S.p_cvx, rel=1e-6)
    # objective_ is the primal objective of the returned heads
    ours = opt.explicit_objective(S.Phi, est.coef_, est.intercept_, S.Y, S.w, S.alpha, S.loss)
    assert est.objective_ == pytest.approx(ours, rel=1e-9)
    assert est.dual_gap_ >= est.objective_ - S.p_star - 1e-9
    assert est.dual_gap_ <= 1e-9 * est.objective_ + 1e-15


@pytest.mark.parametrize("max_iter", [1, 3, 10])
@needs_cvxpy
@pytest.mark.parametrize("case", CASES[::2], ids=CASE_IDS[::2])
def test_factored_certificate_under_converged(case, max_iter, spectra):
    """Stopped early, every recorded gap bounds the true suboptimality."""
    S = opt.solved(case)
    est = ConvexSelfAttentionClassifier(
        alpha=S.alpha, random_state=0, solver="factored", tol=1e-12, max_iter=max_iter,
        **S.params,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(S.X, S.y)
    subopt = est.objective_ - S.p_star
    assert subopt >= -1e-9
    assert est.dual_gap_ >= subopt - 1e-9
    for obj, gap in zip(est.convergence_["objective"], est.convergence_["dual_gap"]):
        assert gap >= obj - S.p_star - 1e-9
    if max_iter == 1:
        assert subopt > 1e-6  # the test has teeth


# ----------------------------------------------------------------- estimators
def _data(n=60, seed=0, dtype=np.float64):
    X, y = make_token_clusters(n_samples=n, random_state=seed, return_X_y=True)
    return X.astype(dtype), y


@pytest.mark.parametrize("cls", HEADS)
@pytest.mark.parametrize("activation", ["gated_relu", "linear"])
def test_factored_equals_fista(cls, activation):
    X, y = _data()
    kw = dict(alpha=0.05, n_gates=3, activation=activation, random_state=0, tol=1e-8,
              max_iter=20000, device="cpu")
    a = cls(solver="fista", **kw).fit(X, y)
    b = cls(solver="factored", **kw).fit(X, y)
    assert (a.solver_, b.solver_) == ("fista", "factored")
    assert b.alpha_max_ == pytest.approx(a.alpha_max_, rel=1e-9)
    assert abs(a.objective_ - b.objective_) <= a.dual_gap_ + b.dual_gap_ + 1e-12
    np.testing.assert_allclose(b.predict_proba(X), a.predict_proba(X), atol=1e-4)
    # weights within a gap eps of the optimum are O(sqrt(eps)) from the optimal ones
    np.testing.assert_allclose(b.block_norms(), a.block_norms(), rtol=1e-3, atol=1e-4)
    for est in (a, b):
        net = est.to_nonconvex()
        np.testing.assert_allclose(net.decision_function(X), est.decision_function(X),
                                   rtol=1e-9, atol=1e-10)
        assert net.objective(X, y) == pytest.approx(est.objective_, rel=1e-9)


@pytest.mark.parametrize("cls", HEADS)
def test_factored_without_blocks(cls, monkeypatch):
    """Past the materialisation limit ``coef_`` is not formed: prediction, the recovered
    network, block norms and transform read the factors."""
    X, y = _data()
    kw = dict(alpha=0.05, n_gates=2, random_state=0, tol=1e-6, solver="factored")
    ref = cls(**kw).fit(X, y)
    monkeypatch.setattr(_base, "_MATERIALISE_MAX", 0)
    est = cls(**kw).fit(X, y)
    assert not hasattr(est, "coef_")
    np.testing.assert_allclose(est.decision_function(X), ref.decision_function(X), rtol=1e-12)
    np.testing.assert_allclose(est.block_norms(), ref.block_norms(), rtol=1e-12)
    net = est.to_nonconvex()
    np.testing.assert_allclose(net.decision_function(X), est.decision_function(X),
                               rtol=1e-9, atol=1e-10)
    assert net.objective(X, y) == pytest.approx(est.objective_, rel=1e-9)
    if cls is ConvexSelfAttentionClassifier:  # gate sides: no block needed
        np.testing.assert_array_equal(est.transform(X), ref.transform(X))


def test_auto_takes_factored_where_lifted_is_refused():
    """A width whose lifted problem exceeds the memory budget: FISTA refuses it, the
    default solver fits it on factors (and certifies)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((80, 6, 40))
    y = (X[:, :, 0].mean(axis=1) > 0).astype(int)
    kw = dict(alpha=0.5, n_gates=2, random_state=0, memory_budget=0.01, tol=1e-4,
              tol_scale="objective")
    with pytest.raises(ValueError, match="memory_budget"):
        ConvexSelfAttentionClassifier(solver="fista", **kw).fit(X, y)
    est = ConvexSelfAttentionClassifier(**kw).fit(X, y)
    assert est.solver_ == "factored"
    assert est.dual_gap_ <= 1e-4 * est.objective_
    assert est.score(X, y) > 0.8


def test_auto_takes_lifted_factors_when_the_features_are_kept():
    """The cost model: lifted features in memory -> factors through them; the same
    features in chunks and no matrix-free products (FNO) -> FISTA; explicit "factored"
    -> the matrix-free products of the heads that have them."""
    X, y = _data()
    kw = dict(alpha=0.05, n_gates=2, random_state=0)
    for cls in HEADS:
        est = cls(**kw).fit(X, y)
        assert est.solver_ == "factored"
        assert est.memory_plan_ == "factored, lifted features materialised"
        assert est.factors_["matrix_free"] is False
        free = cls(solver="factored", **kw).fit(X, y)
        assert free.memory_plan_.startswith("factored, chunks of")
        assert free.factors_["matrix_free"] is True
    # an FNO whose lifted features only fit in chunks
    from skconvexattn import ConvexFNOClassifier
    from skconvexattn._operator import plan_memory

    fno = ConvexFNOClassifier(alpha=0.05, n_gates=2, random_state=0)
    n, c = X.shape[0], np.unique(y).shape[0]
    P, R, L = fno._block_shape(*X.shape[1:])
    full = plan_memory(n, P * R * L, P * R * L * c, 8, fno._work_per_sample(
        *X.shape[1:]), 4.0, "FNO", "")
    # too small to keep the features, enough for chunks of them
    budget = (full.weight_bytes + 8 * n * c * 8 + full.feature_bytes / 2) / 1024**3
    assert not plan_memory(n, P * R * L, P * R * L * c, 8, fno._work_per_sample(
        *X.shape[1:]), budget, "FNO", "").materialised
    est = fno.set_params(memory_budget=budget).fit(X, y)
    assert est.solver_ == "fista" and not est.memory_plan_.endswith("materialised")
    est = fno.set_params(solver="factored").fit(X, y)
    assert est.solver_ == "factored" and "in chunks" in est.memory_plan_


@pytest.mark.parametrize("cls", HEADS)
def test_factored_float32(cls):
    X, y = _data(dtype=np.float32)
    est = cls(alpha=0.05, n_gates=2, random_state=0, solver="factored", tol=1e-4,
              tol_scale="null")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est.fit(X, y)
        P = est.predict_proba(X)
    assert est.factors_["A"].dtype == np.float32
    assert np.all(np.isfinite(P))
    assert est.dual_gap_ <= 1e-4 * est.null_objective_


@pytest.mark.parametrize("cls", HEADS)
def test_tol_scale_null(cls):
    """``tol_scale="null"`` compares the gap with the intercept-only loss; the history
    reports the gap relative to both scales."""
    X, y = _data()
    for solver in ("fista", "factored"):
        est = cls(alpha=0.02, n_gates=2, random_state=0, solver=solver, tol=1e-3,
                  tol_scale="null").fit(X, y)
        null = est.null_objective_
        assert null == pytest.approx(np.log(2), rel=1e-6)  # balanced binary classes
        assert est.dual_gap_ <= 1e-3 * null
        h = est.convergence_
        np.testing.assert_allclose(h["null_relative_gap"], np.array(h["dual_gap"]) / null)
        np.testing.assert_allclose(
            h["relative_gap"], np.array(h["dual_gap"]) / np.abs(h["objective"])
        )


def test_factored_padding_invariance():
    """Sequences with s' real tokens padded to s at any positions: same optimum as the
    unpadded array (within the two certificates)."""
    X, y = _data(n=40)
    n, s, d = X.shape
    rng = np.random.default_rng(0)
    Xp = np.full((n, s + 3, d), np.nan)
    for i in range(n):
        pos = np.sort(rng.choice(s + 3, size=s, replace=False))
        Xp[i, pos] = X[i]
    kw = dict(alpha=0.05, n_gates=2, random_state=0, solver="factored", tol=1e-7,
              max_iter=5000)
    a = ConvexSelfAttentionClassifier(**kw).fit(X, y)
    b = ConvexSelfAttentionClassifier(**kw).fit(Xp, y)
    assert abs(a.objective_ - b.objective_) <= a.dual_gap_ + b.dual_gap_ + 1e-12
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(Xp), atol=1e-5)


def test_factored_warm_start():
    X, y = _data()
    est = ConvexSelfAttentionClassifier(alpha=0.05, n_gates=2, random_state=0,
                                        solver="factored", tol=1e-7, warm_start=True)
    est.fit(X, y)
    cold_iter, obj = est.n_iter_, est.objective_
    est.set_params(alpha=0.04).fit(X, y)
    cold = ConvexSelfAttentionClassifier(alpha=0.04, n_gates=2, random_state=0,
                                         solver="factored", tol=1e-7).fit(X, y)
    assert abs(est.objective_ - cold.objective_) <= est.dual_gap_ + cold.dual_gap_ + 1e-12
    assert est.n_iter_ < cold.n_iter_
    assert cold_iter > 0 and obj > est.objective_


def test_factored_warm_start_needs_the_same_classes():
    """A warm start on relabelled classes (same number) starts from zero: the previous
    factors belong to other classes."""
    X, y = _data()
    est = ConvexSelfAttentionClassifier(alpha=0.05, n_gates=2, random_state=0,
                                        solver="factored", warm_start=True).fit(X, y)
    assert est.fit(X, y).convergence_["objective"][0] < est.null_objective_
    est.fit(X, np.asarray(y) + 10)
    np.testing.assert_array_equal(est.classes_, np.unique(np.asarray(y) + 10))
    assert est.convergence_["objective"][0] == pytest.approx(est.null_objective_)


def test_factored_refuses_beyond_budget():
    """The factored path plans its memory too: a problem whose heads alone exceed the
    budget is refused before anything large is allocated, naming memory_budget."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4, 3, 200))
    y = np.array([0, 1, 0, 1])
    est = ConvexSelfAttentionClassifier(solver="factored", memory_budget=0.01)
    with pytest.raises(ValueError, match=r"factored solver needs about .* memory_budget=0.01"):
        est.fit(X, y)
    assert not hasattr(est, "gates_")


def _two_loop(S, Y, gamma, g):
    """Reference: the textbook two-loop recursion with H_0 = diag(gamma per part)."""
    flat = lambda parts: np.concatenate([np.ravel(p) for p in parts])  # noqa: E731
    q = flat(g)
    Sf, Yf = [flat(s) for s in S], [flat(y) for y in Y]
    rho = [1.0 / (s @ y) for s, y in zip(Sf, Yf)]
    n_b = g[2].size
    h = np.concatenate([np.full(q.size - n_b, gamma[0]), np.full(n_b, gamma[2])])
    coefs = []
    for s, y, r in zip(reversed(Sf), reversed(Yf), reversed(rho)):
        a = r * (s @ q)
        coefs.append(a)
        q = q - a * y
    q = h * q
    for s, y, r, a in zip(Sf, Yf, rho, reversed(coefs)):
        q = q + (a - r * (y @ q)) * s
    return -q


@pytest.mark.parametrize("m", [1, 3, 12])
def test_lbfgs_compact_direction_is_the_two_loop_recursion(m):
    # the GEMM-shaped compact form (Byrd, Nocedal and Schnabel) is the same inverse
    # Hessian as the two-loop recursion, with the factors' and intercept's scales apart
    from array_api_compat import numpy as xp

    rng = np.random.default_rng(m)
    shapes = [(2, 3, 4), (2, 3, 2, 3), (3,)]
    H = rng.standard_normal((2 * 3 * 4 + 2 * 3 * 2 * 3 + 3,) * 2)
    H = H @ H.T + np.eye(H.shape[0])  # curvature pairs of a convex quadratic: s.y > 0

    def split(v):
        out, i = [], 0
        for sh in shapes:
            k = int(np.prod(sh))
            out.append(v[i:i + k].reshape(sh))
            i += k
        return out

    memory = max(m - 2, 1)  # the buffer wraps around: only the newest `memory` pairs count
    lb = _factored._LBFGS(memory, xp, 1e-12)
    S, Y = [], []
    for _ in range(m):
        sv = rng.standard_normal(H.shape[0])
        S.append(split(sv))
        Y.append(split(H @ sv))
        lb.add_pair(S[-1], Y[-1])
    lb.gamma = (0.7, 0.7, 1.9)
    g = split(rng.standard_normal(H.shape[0]))
    got = np.concatenate([np.ravel(v) for v in lb.direction(g)])
    ref = _two_loop(S[-memory:], Y[-memory:], lb.gamma, g)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
    assert got @ np.concatenate([np.ravel(v) for v in g]) < 0  # a descent direction


def test_lbfgs_pairs_follow_rank_growth_and_pruning():
    # pad / take rewrite the stored pairs on the new heads: the direction equals the
    # two-loop recursion on pairs padded (or cut) by hand
    from array_api_compat import numpy as xp

    rng = np.random.default_rng(5)

    def rand(r):
        return [rng.standard_normal((2, r, 3)), rng.standard_normal((2, r, 2, 2)),
                rng.standard_normal(2)]

    lb = _factored._LBFGS(4, xp, 1e-12)
    S, Y = [], []
    for _ in range(3):
        s_ = rand(2)
        y_ = [v + 0.1 * w for v, w in zip(s_, rand(2))]  # s.y > 0
        S.append(s_)
        Y.append(y_)
        lb.add_pair(s_, y_)
    lb.gamma = (0.5, 0.5, 2.0)

    def pad(v):
        return [np.concatenate([v[0], np.zeros((2, 1, 3))], 1),
                np.concatenate([v[1], np.zeros((2, 1, 2, 2))], 1), v[2]]

    lb.pad(3)
    g = rand(3)
    got = np.concatenate([np.ravel(v) for v in lb.direction(g)])
    ref = _two_loop([pad(v) for v in S], [pad(v) for v in Y], lb.gamma, g)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
    idx = np.array([0, 2])
    lb.take(idx)

    def cut(v):
        v = pad(v)
        return [v[0][:, idx], v[1][:, idx], v[2]]

    g = rand(2)
    got = np.concatenate([np.ravel(v) for v in lb.direction(g)])
    ref = _two_loop([cut(v) for v in S], [cut(v) for v in Y], lb.gamma, g)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cls", HEADS)
def test_matrix_free_predictions_refuse_beyond_the_budget(cls):
    """Predictions of a matrix-free fit plan their memory like the lifted ones: below the
    tokens, factors and one sample's scratch, a clear refusal naming the budget."""
    X, y = _data()
    est = cls(alpha=0.05, n_gates=2, random_state=0, solver="factored").fit(X, y)
    assert est.factors_["matrix_free"] is True
    est.predict(X)
    est.set_params(memory_budget=1e-9)
    with pytest.raises(ValueError, match=r"more than memory_budget=1e-09 GiB.*predict in batches"):
        est.predict(X)


# ----------------------------------------------------------------- rank growth
@pytest.mark.parametrize("exact_max", [0, 10**6], ids=["lanczos", "exact"])
def test_block_spectra_leading_pairs(exact_max):
    """``n_pairs``: the exact route gives the leading singular triples; Lanczos gives Ritz
    triples, orthonormal, with ``u_j^T Grad_p v_j = sigma_j`` (what rank growth relies
    on), and the top one converged."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((40, 4, 3))
    op, lifted, _ = _operators("attention", True, X, P=3)
    T = rng.standard_normal((40, 2))
    G = lifted.adjoint(T)  # (3, 9, 6)
    ref = np.linalg.svd(G, compute_uv=False)
    sig, u, v = block_spectra(op, T, n_steps=8, exact_max=exact_max, n_pairs=4)
    assert sig.shape == (3, 4) and u.shape == (3, 4, 3, 3) and v.shape == (3, 4, 3, 2)
    U, V = u.reshape(3, 4, -1), v.reshape(3, 4, -1)
    np.testing.assert_allclose(U @ np.transpose(U, (0, 2, 1)), np.broadcast_to(np.eye(4), (3, 4, 4)), atol=1e-9)
    np.testing.assert_allclose(V @ np.transpose(V, (0, 2, 1)), np.broadcast_to(np.eye(4), (3, 4, 4)), atol=1e-9)
    uGv = np.einsum("pjr,prc,pjc->pj", U, G, V)
    np.testing.assert_allclose(uGv, sig, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(sig[:, 0], ref[:, 0], rtol=1e-8)
    if exact_max:
        np.testing.assert_allclose(sig, ref[:, :4], rtol=1e-10)
    # the single-pair form is the first of them
    s1, u1, v1 = block_spectra(op, T, n_steps=8, exact_max=exact_max)
    np.testing.assert_allclose(s1, sig[:, 0], rtol=1e-12)


def test_outside_heads_separates_tangent_from_new_directions():
    """Directions of the heads' own spans score 0, directions orthogonal to both spans 1,
    and a direction with ``u`` in the span of the ``A`` heads is in the tangent space."""
    rng = np.random.default_rng(6)
    P, r, R, L = 2, 3, 10, 8
    A = rng.standard_normal((P, r, R))
    B = rng.standard_normal((P, r, L))
    QA = np.linalg.qr(np.transpose(A, (0, 2, 1)), mode="complete")[0]  # (P, R, R)
    QB = np.linalg.qr(np.transpose(B, (0, 2, 1)), mode="complete")[0]
    u = np.stack([QA[:, :, 0], QA[:, :, r], QA[:, :, 1], QA[:, :, r + 1]], axis=1)
    v = np.stack([QB[:, :, 1], QB[:, :, r], QB[:, :, r + 1], QB[:, :, 2]], axis=1)
    out = _factored._outside_heads(A, B, u, v)
    np.testing.assert_allclose(out, [[0, 1, 0, 0]] * P, atol=1e-10)
    # half in, half out: (1 - 1/2)^2
    w = (QA[:, :, 0] + QA[:, :, r]) / np.sqrt(2)
    z = (QB[:, :, 0] + QB[:, :, r]) / np.sqrt(2)
    half = _factored._outside_heads(A, B, w[:, None], z[:, None])
    np.testing.assert_allclose(half, 0.25, atol=1e-10)
    # a zero head does not widen the span
    A0, B0 = np.concatenate([A, 0 * A[:, :1]], 1), np.concatenate([B, 0 * B[:, :1]], 1)
    np.testing.assert_allclose(_factored._outside_heads(A0, B0, u, v), out, atol=1e-10)


@pytest.mark.parametrize("cls", HEADS)
def test_growth_of_several_heads_reaches_the_same_optimum(cls, monkeypatch):
    """Several new heads per certificate: the rank grows by more than one at a time and
    the fit ends at the optimum that one head at a time reaches (within the gaps), each
    gap above that fit's true suboptimality (the smaller gap bounds it)."""
    X, y = _data(n=120)
    kw = dict(alpha_ratio=0.003, n_gates=3, random_state=0, solver="factored", tol=1e-7,
              tol_scale="objective", max_iter=20000, device="cpu")
    fits = {}
    for gp in (1, 8):
        monkeypatch.setattr(_factored, "GROW_PAIRS", gp)
        fits[gp] = cls(**kw).fit(X, y)
    one, many = fits[1], fits[8]
    ranks = np.array(many.convergence_["rank"])
    if cls is ConvexMixerClassifier:  # here the Mixer's gradient has two new pairs at once
        assert np.diff(ranks).max() > 1
    assert np.diff(np.array(one.convergence_["rank"])).max() <= 1
    assert abs(one.objective_ - many.objective_) <= one.dual_gap_ + many.dual_gap_ + 1e-12
    lower = max(one.objective_ - one.dual_gap_, many.objective_ - many.dual_gap_)
    for obj, gap in zip(many.convergence_["objective"], many.convergence_["dual_gap"]):
        assert gap >= obj - one.objective_ - one.dual_gap_ - 1e-12
        assert obj >= lower - 1e-12


def test_growth_slots_fill_dead_heads_first():
    """New heads go to a block's dead heads (zero, or decayed below DEAD_HEAD of its
    largest) before new columns, and the columns never exceed the block's rank cap."""
    sizes = np.array([[1.0, 0.0, 1e-12], [2.0, 1.0, 0.5]])
    over = np.array([[True, True, True, False], [True, False, False, False]])
    # block 0 wants 3 heads and has 2 dead ones: one new column, which block 1 takes too
    assert _factored._growth_slots(sizes, over, cap=5) == [[1, 2, 3], [3]]
    # at the cap: block 0 still grows into its dead heads, block 1 has no room
    assert _factored._growth_slots(sizes, over, cap=3) == [[1, 2], []]
    # no heads yet: new columns only
    assert _factored._growth_slots(np.zeros((2, 0)), over, cap=5) == [[0, 1, 2], [0]]


def test_lbfgs_clear_zeroes_the_reused_heads():
    from array_api_compat import numpy as xp

    rng = np.random.default_rng(6)

    def rand():
        return [rng.standard_normal((2, 3, 3)), rng.standard_normal((2, 3, 2, 2)),
                rng.standard_normal(2)]

    lb = _factored._LBFGS(4, xp, 1e-12)
    S, Y = [], []
    for _ in range(3):
        s_ = rand()
        y_ = [v + 0.1 * w for v, w in zip(s_, rand())]
        S.append(s_)
        Y.append(y_)
        lb.add_pair(s_, y_)
    lb.gamma = (0.5, 0.5, 2.0)
    lb.clear([(1, 2), (0, 0)])

    def zero(v):
        a, b = v[0].copy(), v[1].copy()
        a[1, 2] = a[0, 0] = 0.0
        b[1, 2] = b[0, 0] = 0.0
        return [a, b, v[2]]

    g = rand()
    got = np.concatenate([np.ravel(v) for v in lb.direction(g)])
    ref = _two_loop([zero(v) for v in S], [zero(v) for v in Y], lb.gamma, g)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


def test_block_at_full_width_with_dead_heads_still_grows():
    """A start whose heads fill every column (``min(R, L c)`` of them: no column can be
    added) but are all zero in one block: the block's dead heads take the new heads and
    the fit reaches the cold fit's optimum. (Before, that block stayed at zero, a saddle
    of the factored objective, and the gap stalled at 0.34 for 3000 iterations.)"""
    X, y = make_token_clusters(n_samples=120, n_tokens=6, n_features=2, random_state=0,
                               return_X_y=True)
    kw = dict(alpha_ratio=0.01, n_gates=2, random_state=0, solver="factored", tol=1e-8,
              tol_scale="objective", max_iter=3000)
    cold = ConvexSelfAttentionClassifier(**kw).fit(X, y)
    A, B = cold.factors_["A"], cold.factors_["B"]
    P, r = A.shape[:2]
    cap = 4  # d * d = d * c = 4
    live = _factored._head_sizes(A, B) > 1e-6
    assert live[1].any() and live[0].sum() < cap  # the optimum uses block 1
    A2 = np.zeros((P, cap) + A.shape[2:])
    B2 = np.zeros((P, cap) + B.shape[2:])
    A2[0, :r], B2[0, :r] = A[0], B[0]
    # block 0's unused columns get small live heads: no column is empty (and removed)
    rng = np.random.default_rng(0)
    unused = np.flatnonzero(_factored._head_sizes(A2, B2)[0] <= 1e-6)
    A2[0, unused] = 1e-2 * rng.standard_normal(A2[0, unused].shape)
    B2[0, unused] = 1e-2 * rng.standard_normal(B2[0, unused].shape)
    warm = ConvexSelfAttentionClassifier(**kw, warm_start=True).fit(X, y)
    warm.factors_ = {"A": A2, "B": B2, "matrix_free": True}
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        warm.fit(X, y)
    assert abs(warm.objective_ - cold.objective_) <= warm.dual_gap_ + cold.dual_gap_ + 1e-12
    assert (_factored._head_sizes(warm.factors_["A"], warm.factors_["B"])[1] > 1e-6).any()
