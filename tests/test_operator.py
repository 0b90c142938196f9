"""The lifted-feature operator: centring with an unpenalised intercept, memory planning."""

import numpy as np
import pytest

from skconvexattn._operator import LiftedOperator, plan_memory
from skconvexattn.heads.attention import self_attention_features


def _setup(seed=0, n=11, s=3, d=3, c=4):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, s, d) + 2.0
    H, cc = rng.randn(2, d), rng.randn(2)
    fmap = lambda Xc: self_attention_features(Xc, H, cc)  # noqa: E731
    w = rng.rand(n)
    w /= w.sum()
    Z = rng.randn(2, d * d, d * c)
    U = rng.randn(n, c)
    return X, fmap, w, Z, U, (2, d * d, d)


@pytest.mark.parametrize("chunk_rows", [None, 1, 4])
def test_centered_operator_is_explicit_centering(chunk_rows):
    X, fmap, w, Z, U, shape = _setup()
    n = X.shape[0]
    Phi = fmap(X).reshape(n, -1)
    Phic = Phi - w @ Phi
    op = LiftedOperator(fmap, X, shape, chunk_rows, center=w)
    c = U.shape[1]
    np.testing.assert_allclose(op.forward(Z), Phic @ Z.reshape(-1, c), rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(
        op.adjoint(U), (Phic.T @ U).reshape(Z.shape), rtol=1e-12, atol=1e-10
    )
    # the same logits once the intercept is shifted back
    b = np.arange(c, dtype=float)
    plain = LiftedOperator(fmap, X, shape, chunk_rows)
    np.testing.assert_allclose(
        op.forward(Z) + b, plain.forward(Z) + (b - op.intercept_shift(Z)), rtol=1e-12, atol=1e-10
    )


def test_plan_memory_materialises_chunks_and_refuses():
    GiB = 1024**3
    small = plan_memory(100, 1000, 10_000, 8, 2000, 4.0, "Head", "d")
    assert small.materialised
    big = plan_memory(10**6, 10**4, 10**5, 8, 2 * 10**4, 4.0, "Head", "d")
    assert not big.materialised and 1 <= big.chunk_rows < 10**6
    # chunks respect the budget
    assert big.chunk_rows * (10**4 + 2 * 10**4) * 8 <= 4.0 * GiB
    assert big.peak_bytes <= 4.0 * GiB and small.peak_bytes <= 4.0 * GiB
    with pytest.raises(ValueError, match=r"memory_budget=0.001 GiB.*Reduce d"):
        plan_memory(10, 10**6, 10**6, 8, 0, 0.001, "Head", "d")
