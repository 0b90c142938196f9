"""Spectral norms of the gradient blocks ``Grad_p = sum_i Phi_i^(p) (x) T_i`` and their
leading singular pairs, for the certificate and rank growth of the factored solver
(:mod:`~skconvexattn._factored`) and its dual points (:mod:`~skconvexattn._dual_points`).

:func:`block_spectra` works from the matrix-free products of a factor operator: exactly
(the whole block through ``min(R, L c)`` products) when that side is small, otherwise by
a Golub-Kahan-Lanczos bidiagonalisation with full reorthogonalisation, warm-started from
the previous leading vector. :func:`block_spectra_exact` takes blocks that are formed.
"""

from __future__ import annotations

import math

import numpy as np

from ._backend import get_namespace, to_numpy

__all__ = ["block_spectra"]

# blocks whose smaller side has at most this many entries get their spectrum exactly (the
# whole block through that many products); larger ones by Lanczos
EXACT_MAX = 64


def block_spectra(op, T, *, n_steps=30, start=None, rng=None, exact_max=None, n_pairs=None):
    """Largest singular value of every gradient block ``Grad_p = sum_i Phi_i^(p) (x) T_i``
    and its singular vectors, from the matrix-free products only.

    Parameters
    ----------
    op : factor operator (:mod:`~skconvexattn._factored_ops`)
    T : array (n, c)
        Weighted loss gradients (or dual point) ``w_i theta_i``.
    n_steps : int
        Lanczos steps (each: one product with ``Grad_p`` and one with its transpose, all
        blocks at once). Exact (a full Krylov space) when ``n_steps >= min(R, L c)``.
    start : array (P, d, c) or None
        Starting right vectors (the previous leading ones); random otherwise.
    exact_max : int or None
        When ``L c`` (or ``R``) is at most this (default :data:`EXACT_MAX`), the whole
        block is formed through that many products and its spectrum computed exactly.
    n_pairs : int or None
        Return the ``n_pairs`` leading triples of every block (each with an extra axis 1
        of that length) instead of the top one. Beyond the top triple Lanczos gives Ritz
        triples, not converged singular ones, but still with ``u_j^T Grad_p v_j =
        sigma_j`` (``U^T Grad_p V`` is the bidiagonal), which is all that rank growth
        needs: ``-u_j v_j^T`` decreases the convex objective at rate ``sigma_j - alpha``.
        Fewer than ``n_pairs`` triples come back when the block's smaller side, or the
        Krylov space, is smaller.

    Returns
    -------
    sigma : ndarray (P,) or (P, n_pairs)
        Float64 host array.
    u : array (P,) + a_shape or (P, n_pairs) + a_shape
        Left vectors (unit norm), in the namespace of ``T``.
    v : array (P, d, c) or (P, n_pairs, d, c)
        Right vectors.
    """
    xp = get_namespace(T)
    dtype = T.dtype
    P = op.P
    a_shape = op.a_shape
    d, c = op.d, T.shape[1]
    R, Lc = math.prod(a_shape), d * c
    rng = np.random.default_rng(0) if rng is None else rng
    exact_max = EXACT_MAX if exact_max is None else exact_max
    direct = getattr(op, "gradient_blocks", None)
    if direct is not None or Lc <= exact_max or R <= exact_max:
        if direct is not None:  # a lifted operator forms the blocks in one product
            Gm = to_numpy(direct(T)).astype(np.float64)
        elif Lc <= R:
            eye = xp.reshape(xp.eye(Lc, dtype=dtype), (1, Lc, d, c))
            G = op.grad_a(T, xp.broadcast_to(eye, (P, Lc, d, c)))  # (P, Lc) + a_shape
            Gm = np.transpose(to_numpy(xp.reshape(G, (P, Lc, R))).astype(np.float64), (0, 2, 1))
        else:
            eye = xp.reshape(xp.eye(R, dtype=dtype), (1, R) + a_shape)
            G = op.grad_b(T, xp.broadcast_to(eye, (P, R) + a_shape))  # (P, R, d, c)
            Gm = to_numpy(xp.reshape(G, (P, R, Lc))).astype(np.float64)
        m = 1 if n_pairs is None else min(int(n_pairs), R, Lc)
        S, Uf, Vf = _top_triples(Gm, m)
        u = np.transpose(Uf, (0, 2, 1)).reshape((P, m) + a_shape)
        v = np.transpose(Vf, (0, 2, 1)).reshape(P, m, d, c)
        return _pairs_out(xp, S, u, v, dtype, n_pairs)
    # with R < L c the start vector has a part in the null space of Grad_p, which the first
    # step removes: one more step makes the Krylov space full (exact) on small blocks
    k = int(min(n_steps, min(R, Lc) + (1 if R < Lc else 0)))
    f64 = xp.float64
    if start is None:
        v = xp.asarray(rng.standard_normal((P, Lc)))
    else:
        v = xp.astype(xp.reshape(start, (P, Lc)), f64)
        v = v + 1e-3 * xp.asarray(rng.standard_normal((P, Lc))) * xp.sqrt(
            xp.sum(v * v, axis=1, keepdims=True) / Lc
        )

    def nrm(x):
        return xp.sqrt(xp.sum(x * x, axis=1))

    def safe_div(x, a):
        return x / xp.where(a > 0, a, xp.ones_like(a))[:, None]

    def Gv(vec):
        Bv = xp.astype(xp.reshape(vec, (P, 1, d, c)), dtype)
        return xp.astype(xp.reshape(op.grad_a(T, Bv), (P, R)), f64)

    def GTu(vec):
        Au = xp.astype(xp.reshape(vec, (P, 1) + a_shape), dtype)
        return xp.astype(xp.reshape(op.grad_b(T, Au), (P, Lc)), f64)

    def reorth(x, basis):  # basis (P, j, n): remove components twice (stable)
        for _ in range(2):
            coef = basis @ x[:, :, None]  # (P, j, 1)
            x = x - xp.reshape(xp.matrix_transpose(basis) @ coef, x.shape)
        return x

    # products in float32 carry rounding of about 1e-7 relative: the residual cannot go far
    # below it there
    rtol = max(LANCZOS_RTOL, 8 * float(np.finfo(to_numpy(T[:1, :1]).dtype).eps))
    # the Krylov bases, filled row by row (no re-stacking of the growing bases per step:
    # on 384-feature attention a left vector has d**2 = 147,456 entries)
    Vb = xp.zeros((P, k, Lc), dtype=f64)
    Ub = xp.zeros((P, k, R), dtype=f64)
    v = safe_div(v, nrm(v))
    Vb[:, 0, :] = v
    alphas, betas = [], []
    u = Gv(v)
    a = nrm(u)
    u = safe_div(u, a)
    Ub[:, 0, :] = u
    alphas.append(a)
    j = 1  # steps taken: the bases hold j vectors
    while j < k:
        vn = GTu(Ub[:, j - 1, :]) - alphas[-1][:, None] * Vb[:, j - 1, :]
        vn = reorth(vn, Vb[:, :j, :])
        b = nrm(vn)
        if j >= LANCZOS_MIN_STEPS and j % LANCZOS_CHECK_EVERY == 0:
            # b closes the bidiagonal B_j: G^T U_j = V_j B_j^T + b v_{j+1} e_j^T, so the
            # top Ritz triple (theta, x, y) of B_j has residual |b x_j|, and theta is within
            # that residual of a singular value of G (within its square over the spectral
            # gap, in practice). Once it is tiny for every block, more steps would not move
            # theta: stop
            theta, resid = _ritz_top(to_numpy(xp.stack(alphas, axis=1)),
                                     to_numpy(xp.stack(betas, axis=1)), to_numpy(b))
            if _LANCZOS_TRACE is not None:
                _LANCZOS_TRACE.append((j, float(np.max(resid / np.maximum(theta, 1e-300)))))
            if np.all(resid <= rtol * np.maximum(theta, 1e-300)):
                return _ritz_vectors(xp, Ub[:, :j, :], Vb[:, :j, :], alphas, betas,
                                     P, a_shape, d, c, dtype, n_pairs)
        vn = safe_div(vn, b)
        un = Gv(vn) - b[:, None] * Ub[:, j - 1, :]
        un = reorth(un, Ub[:, :j, :])
        a = nrm(un)
        un = safe_div(un, a)
        Vb[:, j, :] = vn
        Ub[:, j, :] = un
        betas.append(b)
        alphas.append(a)
        j += 1
    return _ritz_vectors(xp, Ub, Vb, alphas, betas, P, a_shape, d, c, dtype, n_pairs)


#: Lanczos stops early (before ``n_steps``) once the top Ritz value of every block has a
#: residual below LANCZOS_RTOL (8 float32 epsilons for float32 products) times itself,
#: checked every LANCZOS_CHECK_EVERY steps from LANCZOS_MIN_STEPS on (each check moves the
#: ``P x steps`` Lanczos coefficients to the host)
LANCZOS_RTOL = 1e-9
LANCZOS_MIN_STEPS = 4
LANCZOS_CHECK_EVERY = 2
_LANCZOS_TRACE = None  # tests set a list: (step, max relative residual) at each check


def _bidiagonal(al, be):
    """The upper bidiagonal ``(P, j, j)`` of the Lanczos coefficients (host arrays)."""
    P, j = al.shape
    Bd = np.zeros((P, j, j))
    idx = np.arange(j)
    Bd[:, idx, idx] = al
    if j > 1:
        Bd[:, idx[:-1], idx[1:]] = be
    return Bd


def _ritz_top(al, be, b_next):
    """Top singular value of each block's bidiagonal and the residual ``|b_next x_j|`` of
    its Ritz triple."""
    X, S, _ = np.linalg.svd(_bidiagonal(al, be))
    return S[:, 0], np.abs(b_next * X[:, -1, 0])


def _ritz_vectors(xp, Ub, Vb, alphas, betas, P, a_shape, d, c, dtype, n_pairs=None):
    """The leading Ritz triples (the top one unless ``n_pairs``) from the Lanczos bases
    and coefficients."""
    al = to_numpy(xp.stack(alphas, axis=1))
    be = to_numpy(xp.stack(betas, axis=1)) if betas else np.zeros((P, 0))
    X, S, Yh = np.linalg.svd(_bidiagonal(al, be))
    m = 1 if n_pairs is None else min(int(n_pairs), S.shape[1])
    # (P, m, R) and (P, m, L c): the Ritz vectors as rows
    u = xp.asarray(np.transpose(X[:, :, :m], (0, 2, 1))) @ Ub
    v = xp.asarray(Yh[:, :m, :]) @ Vb
    u = xp.reshape(u, (P, m) + a_shape)
    v = xp.reshape(v, (P, m, d, c))
    return _pairs_out(xp, S[:, :m], u, v, dtype, n_pairs)


def _top_triples(G, m):
    """The ``m`` leading singular triples of every block of ``G`` ``(P, R, L)`` (float64).

    From the eigenvectors of the Gram matrix of the smaller side (one GEMM and an
    ``eigh`` of ``min(R, L)`` squared numbers), not a full SVD: a compact SVD of the
    Fashion-MNIST Mixer's blocks (8 x 2401 x 240) with its vectors takes about 40 times
    as long. The top singular value is as accurate as the SVD's (``lambda_1`` carries an
    absolute error of about ``eps sigma_1^2``); each ``sigma_j`` is the norm of ``G v_j``
    (or ``G^T u_j``), so ``u_j^T G v_j = sigma_j`` holds exactly in exact arithmetic, and a
    vector of a singular value that is zero (or lost in the rounding of the Gram matrix)
    becomes a unit vector of the other side's basis.

    Returns
    -------
    S : ndarray (P, m)
    U : ndarray (P, R, m)
        Unit left vectors.
    V : ndarray (P, L, m)
        Unit right vectors.
    """
    P, R, L = G.shape
    flip = R < L
    H = np.transpose(G, (0, 2, 1)) if flip else G  # (P, big, small)
    lam, W = np.linalg.eigh(np.transpose(H, (0, 2, 1)) @ H)
    Ws = W[:, :, ::-1][:, :, :m]  # leading eigenvectors: the small side's vectors
    Hw = H @ Ws  # (P, big, m)
    S = np.sqrt(np.sum(Hw * Hw, axis=1))  # (P, m)
    tiny = S <= 1e-12 * np.maximum(S[:, :1], 1e-300)
    Hw = np.where(tiny[:, None, :], 0.0, Hw / np.where(tiny, 1.0, S)[:, None, :])
    if np.any(tiny):  # no direction on the big side: any unit vector (sigma ~ 0 there)
        e = np.zeros(Hw.shape[1:])
        e[np.arange(m) % Hw.shape[1], np.arange(m)] = 1.0
        Hw = np.where(tiny[:, None, :], e[None], Hw)
        S = np.where(tiny, 0.0, S)
    return (S, Ws, Hw) if flip else (S, Hw, Ws)


def _pairs_out(xp, S, u, v, dtype, n_pairs):
    """The triples as :func:`block_spectra` returns them (the top one alone unless
    ``n_pairs``)."""
    # host arrays may be reversed views (negative strides), which torch refuses
    u, v = (xp.asarray(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
            for a in (u, v))
    if n_pairs is None:
        S, u, v = S[:, 0], u[:, 0, ...], v[:, 0, ...]
    return np.ascontiguousarray(S), xp.astype(u, dtype), xp.astype(v, dtype)
