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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("chunk_rows", [None, 4])
def test_products_match_explicit_features_for_any_number_of_classes(c, dtype, chunk_rows):
    # the products take one GEMV per column for few classes and a GEMM otherwise
    # (features_times / features_adjoint): each route gives the explicit products
    X, fmap, w, Z, U, shape = _setup(c=c)
    X, Z, U = X.astype(dtype), Z.astype(dtype), U.astype(dtype)
    n = X.shape[0]
    Phi = fmap(X).reshape(n, -1)
    op = LiftedOperator(fmap, X, shape, chunk_rows)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    O = op.forward(Z)
    G = op.adjoint(U)
    assert O.dtype == dtype and G.dtype == dtype
    assert O.shape == (n, c) and G.shape == Z.shape
    np.testing.assert_allclose(O, Phi @ Z.reshape(-1, c), rtol=rtol, atol=rtol * 10)
    np.testing.assert_allclose(G, (Phi.T @ U).reshape(Z.shape), rtol=rtol, atol=rtol * 10)


def test_products_keep_the_features_dtype():
    # float64 outputs (a datafit's gradient) against float32 features: the product stays in
    # float32 instead of upcasting a copy of the features
    from skconvexattn._operator import features_adjoint, features_times

    rng = np.random.default_rng(0)
    Phi = rng.standard_normal((50, 30)).astype(np.float32)
    for c in (1, 2, 5):
        U = rng.standard_normal((50, c))
        Z = rng.standard_normal((30, c))
        G, O = features_adjoint(Phi, U), features_times(Phi, Z)
        assert G.dtype == np.float32 and O.dtype == np.float32
        np.testing.assert_allclose(G, Phi.T @ U.astype(np.float32), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(O, Phi @ Z.astype(np.float32), rtol=1e-5, atol=1e-5)


def test_products_in_another_namespace():
    xps = pytest.importorskip("array_api_strict")
    from skconvexattn._operator import features_adjoint, features_times

    rng = np.random.default_rng(1)
    Phi, U, Z = rng.standard_normal((20, 12)), rng.standard_normal((20, 2)), rng.standard_normal((12, 2))
    G = features_adjoint(xps.asarray(Phi), xps.asarray(U))
    O = features_times(xps.asarray(Phi), xps.asarray(Z))
    np.testing.assert_allclose(np.asarray(G), Phi.T @ U, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(O), Phi @ Z, rtol=1e-12)
