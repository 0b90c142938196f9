"""Factors through the lifted features (``LiftedFactorOperator``): every head's L-BFGS path.

* its products equal the lifted operator's at ``Z_p = A_p^T B_p`` (forward, both block
  products, the fused value and gradients, the gradient blocks themselves);
* for every registered head and activation, ``solver="auto"`` takes it when the lifted
  features are kept in memory, and its optimum equals FISTA's within the two
  certificates, with the same ``alpha_max_``; stopped early, every recorded gap is at
  least the suboptimality; the recovered network reproduces its logits and objective;
* warm starts and float32 work on it.

(The agreement with cvxpy on the tiny self-attention programs is in ``test_optimality``,
whose reference fits take this path by default.)
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from skconvexattn._datafits import get_datafit
from skconvexattn._factored_ops import LiftedFactorOperator
from skconvexattn._operator import LiftedOperator
from skconvexattn.datasets import make_token_clusters
from skconvexattn.heads import registered_heads
from skconvexattn.heads.attention import self_attention_features

HEADS = [pytest.param(h.estimator, id=h.name) for h in registered_heads()]


def _data(n=60, seed=0, dtype=np.float64):
    X, y = make_token_clusters(n_samples=n, random_state=seed, return_X_y=True)
    return X.astype(dtype), y


def _wrapped(center):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 4, 3))
    H, c = rng.standard_normal((2, 3)), rng.standard_normal(2)
    w = np.full(30, 1 / 30) if center else None
    lifted = LiftedOperator(lambda Z: self_attention_features(Z, H, c), X, (2, 9, 3), center=w)
    return LiftedFactorOperator(lifted, (2, 9, 3), (3, 3)), lifted, rng


@pytest.mark.parametrize("center", [False, True])
def test_products_equal_the_lifted_operator(center):
    op, lifted, rng = _wrapped(center)
    A = rng.standard_normal((2, 5, 3, 3))
    B = rng.standard_normal((2, 5, 3, 4))
    Z = np.einsum("pjr,pjl->prl", A.reshape(2, 5, 9), B.reshape(2, 5, 12))
    np.testing.assert_allclose(op.forward(A, B), lifted.forward(Z), rtol=1e-12)
    T = rng.standard_normal((30, 4))
    G = lifted.adjoint(T)
    np.testing.assert_allclose(op.gradient_blocks(T), G, rtol=1e-12)
    np.testing.assert_allclose(
        op.grad_a(T, B).reshape(2, 5, 9), np.einsum("prl,pjl->pjr", G, B.reshape(2, 5, 12)),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        op.grad_b(T, A).reshape(2, 5, 12), np.einsum("prl,pjr->pjl", G, A.reshape(2, 5, 9)),
        rtol=1e-12,
    )
    np.testing.assert_allclose(op.intercept_shift(A, B), lifted.intercept_shift(Z), rtol=1e-12)


def test_fused_gradients_are_the_gradients():
    """value_and_grads against central finite differences of the value."""
    op, lifted, rng = _wrapped(True)
    A = rng.standard_normal((2, 2, 3, 3)) * 0.3
    B = rng.standard_normal((2, 2, 3, 3)) * 0.3
    b = rng.standard_normal(3)
    Y = np.eye(3)[rng.integers(0, 3, 30)]
    w = np.full(30, 1 / 30)
    fit = get_datafit("log_loss")
    f, gA, gB, gb, O = op.value_and_grads(A, B, b, fit, Y, w)
    np.testing.assert_allclose(O, op.forward(A, B) + b, rtol=1e-12)
    for arr, grad in ((A, gA), (B, gB), (b, gb)):
        E = np.zeros_like(arr)
        idx = tuple(rng.integers(0, k) for k in arr.shape)
        E[idx] = 1e-6
        arr += E
        fp = op.value_and_grads(A, B, b, fit, Y, w)[0]
        arr -= 2 * E
        fm = op.value_and_grads(A, B, b, fit, Y, w)[0]
        arr += E
        assert (fp - fm) / 2e-6 == pytest.approx(grad[idx], rel=1e-5, abs=1e-9)


def test_a_shape_must_hold_the_block_rows():
    lifted = LiftedOperator(self_attention_features, np.ones((2, 2, 2)), (1, 4, 2))
    with pytest.raises(ValueError, match="a_shape"):
        LiftedFactorOperator(lifted, (1, 4, 2), (3,))


@pytest.mark.parametrize("activation", ["gated_relu", "linear"])
@pytest.mark.parametrize("cls", HEADS)
def test_every_head_on_lifted_factors_equals_fista(cls, activation):
    X, y = _data()
    kw = dict(alpha=0.05, n_gates=3, activation=activation, random_state=0, tol=1e-8,
              tol_scale="objective", max_iter=20000, device="cpu")
    a = cls(solver="fista", **kw).fit(X, y)
    b = cls(solver="auto", **kw).fit(X, y)
    assert (a.solver_, b.solver_) == ("fista", "factored")
    assert b.memory_plan_.startswith("factored, lifted features")
    assert b.alpha_max_ == pytest.approx(a.alpha_max_, rel=1e-9)
    assert abs(a.objective_ - b.objective_) <= a.dual_gap_ + b.dual_gap_ + 1e-12
    assert b.dual_gap_ <= 1e-8 * b.objective_
    np.testing.assert_allclose(b.predict_proba(X), a.predict_proba(X), atol=1e-4)
    net = b.to_nonconvex()
    np.testing.assert_allclose(net.decision_function(X), b.decision_function(X),
                               rtol=1e-9, atol=1e-10)
    assert net.objective(X, y) == pytest.approx(b.objective_, rel=1e-9)


@pytest.mark.parametrize("cls", HEADS)
def test_stopped_early_every_gap_bounds_the_suboptimality(cls):
    X, y = _data()
    kw = dict(alpha=0.02, n_gates=3, random_state=0, device="cpu")
    ref = cls(solver="fista", tol=1e-10, max_iter=50000, **kw).fit(X, y)
    p_star = ref.objective_ - ref.dual_gap_  # a lower bound on the optimum
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = cls(solver="auto", tol=1e-12, max_iter=3, **kw).fit(X, y)
    assert est.objective_ - p_star > 1e-6  # stopped far from the optimum: the test has teeth
    for obj, gap in zip(est.convergence_["objective"], est.convergence_["dual_gap"]):
        assert gap >= obj - p_star - 1e-12


@pytest.mark.parametrize("cls", HEADS)
def test_warm_start_and_float32(cls):
    X, y = _data(dtype=np.float32)
    est = cls(alpha=0.05, n_gates=2, random_state=0, tol=1e-4, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est.fit(X, y)
        n_cold = est.n_iter_
        est.fit(X, y)
    assert est.solver_ == "factored"
    assert est.factors_["A"].dtype == np.float32 and est.coef_.dtype == np.float32
    assert est.n_iter_ < max(n_cold, 2)


@pytest.mark.parametrize("loss", ["log_loss", "squared_error"])
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("center", [False, True])
def test_dual_probe_forms_the_dual_points_blocks(loss, fit_intercept, center):
    """The probe's spectral norm and dual value equal those of the dual point's blocks
    formed directly (one adjoint of ``w theta``), from the loss gradient's blocks and the
    two fixed ones: the affine form of the dual point and the class layout of the columns."""
    from skconvexattn._backend import scalars as _host
    from skconvexattn._dual_points import _DualProbe
    from skconvexattn._factored_ops import LiftedFactorOperator as LFO
    from skconvexattn._solver import prior_and_start

    op, lifted, rng = _wrapped(center)
    assert isinstance(op, LFO)
    fit = get_datafit(loss)
    Y = np.eye(4)[rng.integers(0, 4, 30)]
    w = rng.uniform(0.5, 1.5, 30)
    w /= w.sum()
    prior, _ = prior_and_start(fit, Y, w, fit_intercept)
    A = rng.standard_normal((2, 3, 3, 3)) * 0.5
    B = rng.standard_normal((2, 3, 3, 4)) * 0.5
    b = rng.standard_normal(4)
    f, gA, gB, gb, O, G = op.value_grads_blocks(A, B, b, fit, Y, w)
    np.testing.assert_allclose(G, op.gradient_blocks(w[:, None] * fit.raw_gradient(O, Y)),
                               rtol=1e-12, atol=1e-14)
    theta = fit.dual_candidate(O, Y, w, prior, fit_intercept)
    theta_p, (s, kappa, delta) = fit.dual_point(O, Y, w, prior, fit_intercept)
    np.testing.assert_array_equal(theta_p, theta)
    np.testing.assert_allclose(s * fit.raw_gradient(O, Y) + kappa * Y + delta[None, :], theta,
                               rtol=1e-12, atol=1e-14)
    spec = max(np.linalg.norm(Gp, 2) for Gp in op.gradient_blocks(w[:, None] * theta))
    for alpha in (0.3 * spec, 3 * spec):
        probe = _DualProbe(op, fit, Y, w, prior, fit_intercept, alpha)
        expect = _host(fit.dual_value(min(1.0, alpha / spec) * theta, Y, w))[0]
        assert probe.dual_value(O, G) == pytest.approx(expect, rel=1e-10, abs=1e-13)


def test_compressed_heads_keep_the_blocks():
    """Redundant heads (many columns spanning a small rank) become the blocks' balanced
    compact SVD: the same products ``Z_p``, the nuclear norm as penalty, fewer columns."""
    from skconvexattn._factored import _compressed_heads, factor_nuclear_norms

    rng = np.random.default_rng(0)
    P, r = 3, 12
    mixA = rng.standard_normal((P, r, 2))  # every block has rank 2 (block 1: rank 1)
    A = np.einsum("pjk,pkr->pjr", mixA, rng.standard_normal((P, 2, 9))).reshape(P, r, 3, 3)
    B = np.einsum("pjk,pkl->pjl", rng.standard_normal((P, r, 2)),
                  rng.standard_normal((P, 2, 8))).reshape(P, r, 2, 4)
    B[1] = np.outer(rng.standard_normal(r), rng.standard_normal(8)).reshape(r, 2, 4)
    out = _compressed_heads(A, B)
    assert out is not None
    A2, B2 = out
    assert A2.shape == (P, 2, 3, 3) and B2.shape == (P, 2, 2, 4)

    def Z(A, B):
        return np.einsum("pjr,pjl->prl", A.reshape(P, A.shape[1], -1), B.reshape(P, B.shape[1], -1))

    np.testing.assert_allclose(Z(A2, B2), Z(A, B), rtol=1e-10, atol=1e-10 * np.abs(Z(A, B)).max())
    nuc = factor_nuclear_norms(A, B).sum()
    penalty = 0.5 * (np.sum(A2**2) + np.sum(B2**2))
    assert penalty == pytest.approx(nuc, rel=1e-8)  # both from r x r Gram matrices
    assert penalty < 0.5 * (np.sum(A**2) + np.sum(B**2))
    # full-rank heads are left alone
    assert _compressed_heads(rng.standard_normal((P, 4, 3, 3)), rng.standard_normal((P, 4, 2, 4))) is None


def _fits_with_and_without(monkeypatch, params, name, off):
    """A fit with a stopping aid of the factored solver and one with ``name`` set to
    ``off`` (tiny blocks probed too), their common certificates' objectives equal, and a
    much tighter fit as the reference. Returns ``(with, without, reference, k)``, ``k``
    the certificates of the first."""
    from skconvexattn import _dual_points
    from skconvexattn import ConvexSelfAttentionClassifier as Head

    X, y = _data(n=80, seed=3)
    monkeypatch.setattr(_dual_points, "PROBE_MIN_WORK", 0.0)  # tiny blocks: probe them too
    on = Head(**params).fit(X, y)
    assert on.solver_ == "factored" and "lifted" in on.memory_plan_
    monkeypatch.setattr(_dual_points, name, off)
    without = Head(**params).fit(X, y)
    h1, h0 = on.convergence_, without.convergence_
    k = len(h1["objective"])
    np.testing.assert_allclose(h1["objective"][: k - 1], h0["objective"][: k - 1], rtol=1e-12)
    ref = Head(**{**params, "tol": 1e-12, "tol_scale": "objective"}).fit(X, y)
    return on, without, ref, k


def test_dual_probe_only_stops_earlier(monkeypatch):
    """The dual points between certificates change when the fit stops, never its path:
    the same objectives at every common certificate, no more iterations, and a gap that
    still bounds the suboptimality (against a much tighter fit)."""
    params = dict(alpha_ratio=0.05, n_gates=2, tol=1e-6, max_iter=3000, random_state=0)
    with_probe, without, ref, k = _fits_with_and_without(
        monkeypatch, params, "PROBE_MAX_SIDE", 0)
    assert k <= len(without.convergence_["objective"])
    assert with_probe.n_iter_ <= without.n_iter_
    assert with_probe.dual_gap_ <= 1e-6 * with_probe.null_objective_
    assert with_probe.dual_gap_ >= with_probe.objective_ - ref.objective_ - 1e-12
    assert with_probe.n_iter_ < without.n_iter_  # it did stop earlier here


def _stopped_early(loss, fit_intercept, monkeypatch, solver="auto", op_type=LiftedFactorOperator):
    """A small factored program (through the lifted features unless ``solver`` says
    otherwise) stopped at a loose gap without Newton dual points (its operator, data,
    logits and alpha), and its optimum (a tight fit)."""
    from skconvexattn import _dual_points
    from skconvexattn import ConvexSelfAttentionClassifier as Head
    from skconvexattn._factored import factored_solve

    X, y = _data(n=70, seed=5)
    est = Head(alpha_ratio=0.02, n_gates=2, loss=loss, fit_intercept=fit_intercept,
               random_state=0, solver=solver)
    st = est._setup(X, y, None, reset=True)
    assert isinstance(st.op, op_type)
    alpha = 0.02 * st.alpha_max
    monkeypatch.setattr(_dual_points, "NEWTON_STEPS", 0)
    args = (st.op, st.datafit, st.Y, st.w, alpha)
    loose = factored_solve(*args, fit_intercept=fit_intercept, tol=1e-3, tol_scale="objective",
                           max_iter=3000, warn=False)
    tight = factored_solve(*args, fit_intercept=fit_intercept, tol=1e-11,
                           tol_scale="objective", max_iter=20000, warn=False)
    assert tight.converged and loose.converged
    O = st.op.forward(loose.A, loose.B) + loose.intercept[None, :]
    return st, alpha, O, loose, tight


@pytest.mark.parametrize("loss", ["log_loss", "squared_error"])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_newton_dual_is_a_bound_and_closes_the_gap(loss, fit_intercept, monkeypatch):
    """The Newton-corrected dual point is a valid lower bound (never above the optimum)
    and, near the optimum, much closer to it than the scaled loss gradient: the gap at
    the same primal point shrinks by an order of magnitude (first order -> second)."""
    from skconvexattn import _dual_points
    from skconvexattn._dual_points import _newton_dual
    from skconvexattn._solver import prior_and_start

    st, alpha, O, loose, tight = _stopped_early(loss, fit_intercept, monkeypatch)
    prior, _ = prior_and_start(st.datafit, st.Y, st.w, fit_intercept)
    optimum = tight.objective
    scaled = _newton_dual(st.op, st.datafit, st.Y, st.w, prior, fit_intercept, alpha, O,
                          steps=0)
    newton = _newton_dual(st.op, st.datafit, st.Y, st.w, prior, fit_intercept, alpha, O,
                          steps=2)
    assert scaled <= loose.dual_objective + 1e-12  # the certificate's own point, or worse
    assert newton <= optimum + 1e-12 * abs(optimum)
    assert newton >= scaled
    assert optimum - newton <= 0.1 * (optimum - scaled)
    # no room for the directions: the scaled point, no error
    monkeypatch.setattr(_dual_points, "NEWTON_MAX_BYTES", 1)
    assert _newton_dual(st.op, st.datafit, st.Y, st.w, prior, fit_intercept, alpha, O,
                        steps=2) == scaled


def test_newton_dual_only_stops_earlier(monkeypatch):
    """Newton dual points change when the fit stops, never its path: the same objectives
    at every common certificate, fewer iterations here, and a gap that still bounds the
    suboptimality (against a much tighter fit)."""
    params = dict(alpha_ratio=0.05, n_gates=2, tol=1e-7, tol_scale="objective",
                  max_iter=3000, random_state=0)
    with_newton, without, ref, _ = _fits_with_and_without(
        monkeypatch, params, "NEWTON_STEPS", 0)
    assert with_newton.dual_gap_ <= 1e-7 * with_newton.objective_
    assert with_newton.dual_gap_ >= with_newton.objective_ - ref.objective_ - 1e-13
    assert with_newton.n_iter_ < without.n_iter_
