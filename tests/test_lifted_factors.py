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
