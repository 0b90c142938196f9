"""Block nuclear norm ``alpha * sum_p ||Z_p||_*`` and its proximal operator.

Weights are stored as one stacked array ``Z`` of shape ``(P, R, C)``: block ``p`` is the
``R x C`` matrix ``Z[p]``. Blocks of a head that are naturally smaller (uneven channel
groups of the FNO head) are zero-padded; zero rows change neither the nuclear norm nor the
solution, so a single batched SVD serves every head.

The prox uses the eigen-decomposition of each block's smaller Gram matrix (in float64),
1.4x (square blocks) to 5x (rectangular ones) faster than the batched SVD, for all but tiny
blocks; the Gram route does not resolve singular values below ``sqrt(eps) * s_max``, so it
is used only when the threshold lies far above that (all such values are then thresholded
to zero anyway), and the SVD otherwise.
"""

from __future__ import annotations

import numpy as np

from ._backend import get_namespace

__all__ = ["BlockNuclearNorm", "ACTIVE_RTOL", "active_singular_values", "active_order"]

#: The one rule for what is "active" in a fitted head: a singular value (a recovered head
#: or neuron) or a block norm (a gate) counts when it exceeds ``ACTIVE_RTOL`` times the
#: largest of its kind in the model. The prox sets inactive singular values to exact
#: zeros; this threshold only drops the rounding noise of an SVD of the stored weights.
#: ``to_nonconvex``, ``transform``, ``token_cluster_info`` and the CLI's ``info`` use it.
ACTIVE_RTOL = 1e-12

# blocks with at least _GRAM_MIN_SIZE entries and a smaller side of at least _GRAM_MIN_SIDE
# use the Gram-matrix prox (measured, 2 threads, 8 blocks: 4-5x faster than the SVD for
# 256 x 120, 1.4-1.7x for 64 x 64 and 36 x 24, 1.4x for 784 x 8; slower for thin blocks,
# 0.7x for 2000 x 3 and 0.6x for 128 x 6, whose SVD is cheap, and for tiny ones)
_GRAM_MIN_SIZE = 512
_GRAM_MIN_SIDE = 8
# the Gram route resolves singular values down to about sqrt(eps64) * s_max = 1.5e-8 s_max;
# it is used only when the threshold is far above that
_GRAM_RESOLVE = 1e-6


class BlockNuclearNorm:
    """Sum of nuclear norms of the blocks of a ``(P, R, C)`` array."""

    def value(self, Z):
        """``sum_p ||Z_p||_*`` (a 0-d array)."""
        xp = get_namespace(Z)
        return xp.sum(xp.linalg.svdvals(Z))

    def block_norms(self, Z):
        """Nuclear norm of each block, shape ``(P,)``."""
        xp = get_namespace(Z)
        return xp.sum(xp.linalg.svdvals(Z), axis=-1)

    def prox(self, Z, threshold):
        """Singular-value soft-thresholding of every block.

        Returns the thresholded array and its singular values (shape ``(P, k)``), whose
        sum is the new nuclear norm: the solver gets the penalty value for free.

        Blocks of at least ``_GRAM_MIN_SIZE`` entries, neither side thinner than
        ``_GRAM_MIN_SIDE``, go through the eigen-decomposition of
        their smaller Gram matrix, computed in float64 (see :meth:`_prox_gram`); tiny
        blocks, and thresholds too small for the Gram route to resolve, use the batched
        SVD.
        """
        xp = get_namespace(Z)
        P, R, C = Z.shape
        if R * C >= _GRAM_MIN_SIZE and min(R, C) >= _GRAM_MIN_SIDE:
            out = self._prox_gram(Z, threshold, xp)
            if out is not None:
                return out
        U, S, Vh = xp.linalg.svd(Z, full_matrices=False)
        S = S - threshold
        S = xp.maximum(S, xp.zeros_like(S))
        return (U * S[:, None, :]) @ Vh, S

    def _prox_gram(self, Z, threshold, xp):
        """Soft-thresholding through ``eigh`` of the ``k x k`` Gram matrix (``k = min(R, C)``).

        With ``Z^T Z = V diag(s^2) V^T``, the prox is ``Z V diag((s - thr)_+ / s) V^T``: one
        ``R x k x k`` product for the Gram matrix, a ``k x k`` eigen-decomposition and two
        products with the kept columns only. The Gram matrix squares the condition number,
        so singular values below ``sqrt(eps) * s_max`` are not resolved; they are all
        thresholded to zero whenever ``threshold`` exceeds ``_GRAM_RESOLVE * s_max``, which is
        checked, and otherwise the caller falls back to the SVD (returns ``None``). The
        Gram matrix and eigen-decomposition are computed in float64 for any input dtype.
        """
        P, R, C = Z.shape
        dtype = Z.dtype
        Z64 = xp.astype(Z, xp.float64)
        tall = R >= C
        Zt = xp.matrix_transpose(Z64)
        G = (Zt @ Z64) if tall else (Z64 @ Zt)  # (P, k, k)
        w, V = xp.linalg.eigh(G)  # ascending
        s = xp.sqrt(xp.clip(w, 0.0, None))
        s_max = float(xp.max(s))
        thr = float(threshold)
        if s_max == 0.0:
            return xp.zeros_like(Z), xp.zeros((P, min(R, C)), dtype=dtype)
        if thr < _GRAM_RESOLVE * s_max:
            return None
        keep = s > thr
        n_keep = int(xp.max(xp.sum(xp.astype(keep, xp.int32), axis=1)))
        S_new = xp.clip(s - thr, 0.0, None)
        if n_keep == 0:
            return xp.zeros_like(Z), xp.astype(xp.flip(S_new, axis=1), dtype)
        k = min(R, C)
        # the largest n_keep (eigh sorts ascending), copied: a contiguous operand keeps the
        # batched products on BLAS (NumPy loops without it over strided ones: 2.4x slower)
        Vk = xp.asarray(V[:, :, k - n_keep :], copy=True)
        sk = s[:, k - n_keep :]
        # (s - thr)_+ / s on the kept columns: zero wherever s <= thr (s = 0 included)
        scale = S_new[:, k - n_keep :] / xp.where(sk > thr, sk, xp.ones_like(sk))
        if tall:
            out = ((Z64 @ Vk) * scale[:, None, :]) @ xp.matrix_transpose(Vk)
        else:
            out = Vk @ (scale[:, :, None] * (xp.matrix_transpose(Vk) @ Z64))
        # singular values in decreasing order, as the SVD gives them
        return xp.astype(out, dtype), xp.astype(xp.flip(S_new, axis=1), dtype)

    def dual_norm(self, G):
        """Largest spectral norm over blocks: the dual norm of the block nuclear norm."""
        xp = get_namespace(G)
        return xp.max(xp.linalg.svdvals(G))


def active_singular_values(S, rtol=ACTIVE_RTOL):
    """Which of the non-negative values ``S`` (any shape, e.g. the ``(P, k)`` singular
    values of every block) are active: ``S > rtol * S.max()`` (none when all are zero).

    Parameters
    ----------
    S : ndarray
        Singular values (or block norms), non-negative.
    rtol : float, default=ACTIVE_RTOL
        Relative threshold (see :data:`ACTIVE_RTOL`).

    Returns
    -------
    mask : ndarray of bool, the shape of ``S``
    """
    S = np.asarray(S, dtype=np.float64)
    top = S.max() if S.size else 0.0
    if not top > 0:
        return np.zeros(S.shape, dtype=bool)
    return S > rtol * top


def active_order(values, rtol=ACTIVE_RTOL):
    """Indices of the active entries of the 1-D ``values`` (see
    :func:`active_singular_values`), largest first (ties in index order)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(-values, kind="stable")
    return order[active_singular_values(values, rtol)[order]]
