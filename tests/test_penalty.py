"""The block nuclear norm's prox: the Gram-matrix route agrees with the SVD's."""

import numpy as np
import pytest

from skconvexattn import _penalty
from skconvexattn._penalty import BlockNuclearNorm


def _svd_prox(Z, thr):
    U, S, Vh = np.linalg.svd(Z.astype(np.float64), full_matrices=False)
    S = np.maximum(S - thr, 0.0)
    return (U * S[:, None, :]) @ Vh, S


# shapes on both sides of the routing rule (tiny, thin, square, wide, tall)
SHAPES = [(4, 16, 12), (8, 36, 24), (2, 32, 3), (3, 12, 40), (4, 64, 20), (2, 300, 8), (5, 9, 9)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("keep", [0, 1, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_prox_matches_svd_soft_thresholding(shape, keep, dtype):
    rng = np.random.default_rng(sum(shape) + keep)
    P, R, C = shape
    # low rank plus noise, so the threshold falls inside the spectrum
    Z = rng.standard_normal((P, R, 3)) @ rng.standard_normal((P, 3, C)) + 0.1 * rng.standard_normal(shape)
    Z = Z.astype(dtype)
    sv = np.linalg.svd(Z.astype(np.float64), compute_uv=False)
    thr = 0.99 * float(sv[:, min(keep, sv.shape[1] - 1)].min())
    out, S = BlockNuclearNorm().prox(Z, thr)
    ref, S_ref = _svd_prox(Z, thr)
    assert out.dtype == dtype and out.shape == Z.shape
    rtol = 1e-10 if dtype == np.float64 else 2e-5
    scale = np.abs(ref).max()
    assert np.abs(out - ref).max() <= rtol * scale
    # the singular values returned sum to the new nuclear norm
    np.testing.assert_allclose(np.sort(S, axis=1), np.sort(S_ref, axis=1), rtol=0, atol=rtol * sv.max())


def test_gram_route_taken_and_refused():
    """The Gram route serves mid-size blocks and declines thresholds it cannot resolve."""
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((8, 36, 24))
    pen = BlockNuclearNorm()
    s_max = np.linalg.svd(Z, compute_uv=False).max()
    assert 36 * 24 >= _penalty._GRAM_MIN_SIZE and 24 >= _penalty._GRAM_MIN_SIDE
    assert pen._prox_gram(Z, 0.5 * s_max, np) is not None
    assert pen._prox_gram(Z, 1e-9 * s_max, np) is None  # falls back to the SVD
    out, _ = pen.prox(Z, 1e-9 * s_max)
    np.testing.assert_allclose(out, _svd_prox(Z, 1e-9 * s_max)[0], rtol=0, atol=1e-12 * s_max)


def test_zero_block_and_all_thresholded():
    pen = BlockNuclearNorm()
    Z = np.zeros((3, 40, 20))
    out, S = pen.prox(Z, 1.0)
    assert np.all(out == 0) and np.all(S == 0)
    Z = np.random.default_rng(1).standard_normal((3, 40, 20))
    out, S = pen.prox(Z, 1e3)
    assert np.all(out == 0) and np.all(S == 0)
