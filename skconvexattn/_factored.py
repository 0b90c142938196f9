"""The factored solver: L-BFGS on the heads of the non-convex network, with rank growth
and the convex program's duality-gap certificate (``docs/factored.rst``).

For the heads whose blocks are products of two weight matrices (self-attention, Mixer),
``Z_p = sum_j vec(A_pj) vec(B_pj)^T`` and the smooth objective

    F(A, B, b) = datafit(sum_p Phi^(p)(Z_p) + b) + (alpha / 2) sum_{p, j} (||A_pj||^2 + ||B_pj||^2)

has the convex program's optimal value once each block has enough columns
(``||Z||_* = min (||U||^2 + ||V||^2) / 2`` over ``U V^T = Z``). The solver alternates:

1. L-BFGS on ``F`` with the current columns (each evaluation: one forward and the two
   block-gradient products of :mod:`~skconvexattn._factored_ops`, never a lifted feature);
2. the certificate: the gradient blocks ``Grad_p`` at the dual candidate ``theta`` (the
   same as the lifted solver's), their spectral norms (exactly, from the whole block
   through ``min(R, L c)`` products, when that side is small; otherwise by a
   Golub-Kahan-Lanczos bidiagonalisation with full reorthogonalisation, warm-started from
   the previous leading vector), the primal value with the exact nuclear norm of each
   ``A B^T`` and the dual value at ``theta`` scaled into the dual-feasible set (where the
   operator forms its blocks, also at a Newton-corrected ``theta``, :func:`_newton_dual`,
   whose gap is second order in the distance to the optimum instead of first);
3. rank growth: every block whose ``||Grad_p||_2`` exceeds ``alpha`` gets new heads, the
   leading singular pairs of ``-Grad_p`` above ``alpha`` that lie outside the tangent
   space of its current heads (at most :data:`GROW_PAIRS`, and at most as many as the
   solve has added so far: the added rank at most doubles), with one line-searched
   scale; the leading pair alone when none is new (a descent direction of the convex
   program: a stationary point with ``||Grad_p||_2 <= alpha`` for every ``p`` is the
   global optimum).

The gap is the same quantity as :func:`~skconvexattn._solver.fista`'s, so ``dual_gap_``
keeps its meaning on both paths.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from ._backend import get_namespace, to_numpy
from ._progress import make_reporter
from ._solver import prior_and_start

__all__ = ["factored_solve", "FactoredResult", "block_spectra", "factor_nuclear_norms"]

# blocks whose smaller side has at most this many entries get their spectrum exactly (the
# whole block through that many products); larger ones by Lanczos
EXACT_MAX = 64


@dataclass
class FactoredResult:
    """What :func:`factored_solve` returns (arrays in the solver's namespace)."""

    A: object
    B: object
    intercept: object
    n_iter: int
    objective: float
    dual_objective: float
    dual_gap: float
    null_objective: float
    converged: bool
    history: dict = field(default_factory=dict)
    timed_out: bool = False  # stopped by max_time
    interrupted: bool = False  # stopped by KeyboardInterrupt (interruptible=True)
    precision_limited: bool = False  # stopped at the floor of the iterate's precision


# ---------------------------------------------------------------- small helpers
def _dot(a, b, xp):
    """Inner product accumulated in float64."""
    return xp.sum(xp.astype(a, xp.float64) * xp.astype(b, xp.float64))


def _tdot(x, y, xp):
    return sum(_dot(a, b, xp) for a, b in zip(x, y))


def _flatten(parts, xp):
    """The arrays ``parts`` as one float64 vector."""
    return xp.concat([xp.reshape(xp.astype(v, xp.float64), (-1,)) for v in parts])


def _unflatten(vec, like, xp):
    """Split ``vec`` into arrays shaped like ``like`` (arrays or shapes)."""
    out, start = [], 0
    for v in like:
        shape = tuple(getattr(v, "shape", v))
        size = math.prod(shape)
        out.append(xp.reshape(vec[start:start + size], shape))
        start += size
    return out


def _host(*values):
    """Several 0-d arrays as Python floats, in one transfer."""
    xp = get_namespace(values[0])
    vals = [xp.astype(v, xp.float64) for v in values]
    return [float(v) for v in to_numpy(xp.stack(vals))]


def factor_nuclear_norms(A, B):
    """``||sum_j vec(A_pj) vec(B_pj)^T||_*`` of every block (float64 NumPy, ``(P,)``).

    From the Gram matrices of the two factors (``r x r``): with ``U^T U = W1 L1 W1^T`` and
    ``V^T V = W2 L2 W2^T``, ``U V^T`` has the singular values of
    ``L1^(1/2) W1^T W2 L2^(1/2)``.
    """
    xp = get_namespace(A)
    P, r = A.shape[0], A.shape[1]
    U = xp.astype(xp.reshape(A, (P, r, -1)), xp.float64)
    V = xp.astype(xp.reshape(B, (P, r, -1)), xp.float64)
    GU = to_numpy(U @ xp.matrix_transpose(U))
    GV = to_numpy(V @ xp.matrix_transpose(V))
    return np.array([_nuc_from_grams(GU[p], GV[p]) for p in range(P)])


def _nuc_from_grams(GU, GV):
    l1, W1 = np.linalg.eigh(GU)
    l2, W2 = np.linalg.eigh(GV)
    M = (np.sqrt(np.clip(l1, 0, None))[:, None] * (W1.T @ W2)) * np.sqrt(np.clip(l2, 0, None))
    return float(np.linalg.svd(M, compute_uv=False).sum())


def balanced_heads(A, B):
    """The compact SVD of every block, as balanced heads (host, float64).

    Returns ``A2`` ``(P, k) + a_shape`` and ``B2`` ``(P, k, d, c)`` with
    ``vec(A2_pj) = sqrt(sigma_j) u_j``, ``vec(B2_pj) = sqrt(sigma_j) v_j`` (``k`` the largest
    rank over blocks; missing heads are zero), and the singular values ``(P, k)``.
    """
    A = np.asarray(to_numpy(A), dtype=np.float64)
    B = np.asarray(to_numpy(B), dtype=np.float64)
    P, r = A.shape[:2]
    a_shape, b_shape = A.shape[2:], B.shape[2:]
    if r == 0:  # the all-zero model
        return A, B, np.zeros((P, 0))
    U = np.transpose(A.reshape(P, r, -1), (0, 2, 1))  # (P, R, r)
    V = np.transpose(B.reshape(P, r, -1), (0, 2, 1))  # (P, Lc, r)
    Qu, Ru = np.linalg.qr(U)  # (P, R, ku), (P, ku, r)
    Qv, Rv = np.linalg.qr(V)
    X, S, Yh = np.linalg.svd(Ru @ np.transpose(Rv, (0, 2, 1)), full_matrices=False)
    root = np.sqrt(S)  # (P, k), k = min(r, R, Lc)
    Uh = (Qu @ X) * root[:, None, :]  # (P, R, k)
    Vh = (Qv @ np.transpose(Yh, (0, 2, 1))) * root[:, None, :]
    k = S.shape[1]
    A2 = np.transpose(Uh, (0, 2, 1)).reshape((P, k) + a_shape)
    B2 = np.transpose(Vh, (0, 2, 1)).reshape((P, k) + b_shape)
    return A2, B2, S


# ---------------------------------------------------------------- spectra
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
    u, v = xp.asarray(u), xp.asarray(v)
    if n_pairs is None:
        S, u, v = S[:, 0], u[:, 0], v[:, 0]
    return np.ascontiguousarray(S), xp.astype(u, dtype), xp.astype(v, dtype)


# ---------------------------------------------------------------- the solver
class _Objective:
    """``F(A, B, b)`` and its gradient; counts evaluations."""

    def __init__(self, op, datafit, Y, w, alpha, fit_intercept, keep_blocks=False):
        self.op, self.datafit, self.Y, self.w = op, datafit, Y, w
        self.alpha, self.fit_intercept = alpha, fit_intercept
        self.xp = get_namespace(Y)
        self.n_eval = 0
        self.keep_blocks = keep_blocks
        self.blocks = None  # the gradient blocks of the last evaluation (keep_blocks)

    def __call__(self, x):
        A, B, b = x
        xp = self.xp
        self.n_eval += 1
        if self.keep_blocks:
            f, gA, gB, gb, O, self.blocks = self.op.value_grads_blocks(
                A, B, b, self.datafit, self.Y, self.w)
        else:
            f, gA, gB, gb, O = self.op.value_and_grads(A, B, b, self.datafit, self.Y, self.w)
        al = self.alpha
        F = xp.astype(f, xp.float64) + 0.5 * al * (_dot(A, A, xp) + _dot(B, B, xp))
        g = [gA + al * A, gB + al * B, gb if self.fit_intercept else xp.zeros_like(gb)]
        return F, g, O


class _LBFGS:
    """L-BFGS (compact form, Armijo backtracking) whose memory survives between calls and
    across rank growth (stored pairs are padded with zero heads: they stay valid
    curvature pairs on the old coordinates).

    The pairs live as rows of two float64 ring buffers ``S`` and ``Y`` (``cap x N``, ``N``
    the number of variables), with their Gram matrices ``S Y^T`` and ``Y Y^T`` (factor and
    intercept parts apart) updated by one row per new pair: adding a pair costs three
    matrix-vector products with the buffers, a direction four (:meth:`direction`).
    ``cap`` is ``memory``, lowered so that the buffers stay under ``max_bytes``.
    """

    def __init__(self, memory, xp, rounding, max_bytes=None):
        self.memory, self.xp, self.rounding = int(memory), xp, rounding
        self.max_bytes = max_bytes
        self.gamma = (1.0, 1.0, 1.0)
        #: called as ``hook(F, O)`` after every accepted step; ``True`` ends :meth:`run`
        self.hook = None
        self.reset()

    def reset(self):
        """Forget every pair."""
        self._S = self._Y = self._SY = self._YYf = self._YYb = None
        self._order = []  # physical rows, oldest first
        self._shapes = None
        self._select = None

    def __len__(self):
        return len(self._order)

    def _capacity(self, N):
        cap = self.memory
        if self.max_bytes is not None:
            cap = min(cap, max(3, int(self.max_bytes // (16 * max(N, 1)))))
        return max(cap, 1)

    def _allocate(self, shapes):
        xp, f64 = self.xp, self.xp.float64
        N = sum(math.prod(sh) for sh in shapes)
        cap = self._capacity(N)
        self._S = xp.zeros((cap, N), dtype=f64)
        self._Y = xp.zeros((cap, N), dtype=f64)
        self._SY = xp.zeros((cap, cap), dtype=f64)
        self._YYf = xp.zeros((cap, cap), dtype=f64)
        self._YYb = xp.zeros((cap, cap), dtype=f64)
        self._order, self._shapes, self._select = [], [tuple(sh) for sh in shapes], None

    def add_pair(self, s, y):
        """Store the pair ``s`` (step) and ``y`` (gradient change), lists ``[A, B, b]``;
        the oldest goes when the buffers are full."""
        xp = self.xp
        shapes = [tuple(v.shape) for v in s]
        if self._S is None or shapes != self._shapes:
            self._allocate(shapes)
        sf, yf = _flatten(s, xp), _flatten(y, xp)
        cap, N = self._S.shape
        n_b = math.prod(shapes[2])
        if len(self._order) < cap:
            k = next(i for i in range(cap) if i not in self._order)
        else:
            k = self._order.pop(0)
        self._S[k, :] = sf
        self._Y[k, :] = yf
        col = self._S @ yf  # s_i . y_new
        row = self._Y @ sf  # s_new . y_i
        self._SY[:, k] = col
        self._SY[k, :] = row
        yy = self._Y @ yf
        yy_b = self._Y[:, N - n_b:] @ yf[N - n_b:]
        self._YYb[:, k] = yy_b
        self._YYb[k, :] = yy_b
        self._YYf[:, k] = yy - yy_b
        self._YYf[k, :] = yy - yy_b
        self._order.append(k)
        self._select = None

    def _rebuild(self, transform):
        """Apply ``transform`` (on ``[A, B, b]``) to every stored pair, oldest first."""
        if not self._order:
            self._S = None
            return
        xp = self.xp
        pairs = []
        for k in self._order:
            pairs.append((transform(_unflatten(self._S[k, :], self._shapes, xp)),
                          transform(_unflatten(self._Y[k, :], self._shapes, xp))))
        self._S = None
        for s_, y_ in pairs:
            self.add_pair(s_, y_)

    def pad(self, r_new):
        """Give every stored pair zero columns up to ``r_new`` heads."""
        xp = self.xp

        def grow(v):
            extra = r_new - v[0].shape[1]
            if extra <= 0:
                return v
            za = xp.zeros((v[0].shape[0], extra) + tuple(v[0].shape[2:]), dtype=v[0].dtype)
            zb = xp.zeros((v[1].shape[0], extra) + tuple(v[1].shape[2:]), dtype=v[1].dtype)
            return [xp.concat([v[0], za], axis=1), xp.concat([v[1], zb], axis=1), v[2]]

        self._rebuild(grow)

    def clear(self, heads):
        """Zero the stored pairs' entries of the heads ``heads`` (``(block, column)``
        pairs): a reused dead head starts without curvature history, as a new column."""
        if not self._order:
            return
        xp = self.xp
        mask = None

        def zero(v):
            nonlocal mask
            if mask is None:
                m = np.ones(v[0].shape[:2])
                for p, j in heads:
                    m[p, j] = 0.0
                mask = m
            ka = xp.asarray(mask.reshape(mask.shape + (1,) * (v[0].ndim - 2)), dtype=v[0].dtype)
            kb = xp.asarray(mask.reshape(mask.shape + (1,) * (v[1].ndim - 2)), dtype=v[1].dtype)
            return [v[0] * ka, v[1] * kb, v[2]]

        self._rebuild(zero)

    def take(self, idx):
        """Keep only the heads ``idx`` in the stored pairs."""
        xp = self.xp
        self._rebuild(lambda v: [xp.take(v[0], idx, axis=1), xp.take(v[1], idx, axis=1), v[2]])

    def direction(self, g):
        """``-H g``, with ``H`` the L-BFGS inverse Hessian in its compact form (Byrd,
        Nocedal and Schnabel 1994): with the ``m`` pairs as rows of ``S`` and ``Y``,
        ``H_0 = diag(h)`` (the factors' and the intercept's scales apart), ``R`` the upper
        triangle of ``S Y^T`` and ``D`` its diagonal,

            H g = h g + S^T (R^-T (D + Y H_0 Y^T) R^-1 S g - R^-T Y (h g)) - h Y^T R^-1 S g.

        Four matrix-vector products with the buffers and two ``m x m`` solves: the
        two-loop recursion's direction without its ``4 m`` small vector operations, which
        dominated the iteration on small blocks. No host transfer."""
        xp = self.xp
        dt = g[0].dtype
        f64 = xp.float64
        gf = _flatten(g, xp)
        if not self._order:
            gamma = 1.0 / xp.maximum(xp.sqrt(xp.sum(gf * gf)), xp.asarray(1e-300, dtype=f64))
            return [xp.astype(-v, dt) for v in _unflatten(gamma * gf, g, xp)]
        cap, N = self._S.shape
        n_b = math.prod(g[2].shape)
        g_f, _, g_b = self.gamma
        h = xp.concat([xp.full((N - n_b,), g_f, dtype=f64), xp.full((n_b,), g_b, dtype=f64)])
        if self._select is None:  # (m, cap): row j picks the j-th oldest physical row
            m = len(self._order)
            sel = np.zeros((m, cap))
            sel[np.arange(m), self._order] = 1.0
            self._select = xp.asarray(sel, dtype=f64)
        E = self._select
        Et = xp.matrix_transpose(E)
        hg = h * gf
        p = E @ (self._S @ gf)
        q = E @ (self._Y @ hg)
        SY = E @ self._SY @ Et
        YHY = E @ (g_f * self._YYf + g_b * self._YYb) @ Et
        R = xp.triu(SY)
        D = xp.linalg.diagonal(SY)
        Rp = xp.linalg.solve(R, p[:, None])[:, 0]
        c1 = xp.linalg.solve(xp.matrix_transpose(R), (D * Rp + YHY @ Rp - q)[:, None])[:, 0]
        d = hg + (Et @ c1) @ self._S - h * ((Et @ Rp) @ self._Y)
        return [xp.astype(-v, dt) for v in _unflatten(d, g, xp)]

    def run(self, fun, x, F, g, O, *, max_iter, deadline, stats):
        """At most ``max_iter`` iterations from ``x``; returns the new point, value,
        gradient, logits and whether the line search stalled (no decrease found)."""
        xp = self.xp
        Fh = _host(F)[0]
        for _ in range(max_iter):
            if time.perf_counter() > deadline:
                break
            direc = self.direction(g)
            slope = _host(_tdot(g, direc, xp))[0]
            if not slope < 0:  # not a descent direction: forget the curvature pairs
                self.reset()
                direc = self.direction(g)
                slope = _host(_tdot(g, direc, xp))[0]
                if not slope < 0:
                    return x, F, g, O, True
            t = 1.0
            gg = None
            for _ls in range(40):
                xn = [xi + t * di for xi, di in zip(x, direc)]
                Fn, gn, On = fun(xn)
                Fnh = _host(Fn)[0]
                if math.isfinite(Fnh) and Fnh <= Fh + 1e-4 * t * slope:
                    break
                # below the objective's rounding the decrease cannot be seen: accept a
                # step that keeps the value within rounding and shrinks the gradient
                if math.isfinite(Fnh) and abs(Fnh - Fh) <= self.rounding * abs(Fh):
                    if gg is None:
                        gg = _host(_tdot(g, g, xp))[0]
                    if _host(_tdot(gn, gn, xp))[0] < gg:
                        break
                t *= 0.5
            else:
                return x, F, g, O, True  # no decrease at this precision
            stats["iterations"] += 1
            s_ = [a - b for a, b in zip(xn, x)]
            y_ = [a - b for a, b in zip(gn, g)]
            sy, ss, yy, sy_b, yy_b = _host(
                _tdot(s_, y_, xp), _tdot(s_, s_, xp), _tdot(y_, y_, xp),
                _dot(s_[2], y_[2], xp), _dot(y_[2], y_[2], xp),
            )
            if sy > 1e-10 * math.sqrt(ss * yy):
                self.add_pair(s_, y_)
                sy_f, yy_f = sy - sy_b, yy - yy_b
                g_f = sy_f / yy_f if sy_f > 0 and yy_f > 0 else sy / yy
                g_b = sy_b / yy_b if sy_b > 0 and yy_b > 0 else sy / yy
                self.gamma = (g_f, g_f, g_b)
            x, F, g, O, Fh = xn, Fn, gn, On, Fnh
            if self.hook is not None and self.hook(Fnh, On):
                break
        return x, F, g, O, False


def factored_solve(
    op,
    datafit,
    Y,
    w,
    alpha,
    *,
    fit_intercept=True,
    max_iter=1000,
    tol=1e-4,
    tol_scale="null",
    check_every=20,
    memory=50,
    memory_bytes=None,
    A_init=None,
    B_init=None,
    intercept_init=None,
    max_time=None,
    n_lanczos=30,
    random_state=0,
    verbose=0,
    reporter=None,
    warn=True,
    interruptible=False,
    stop_at_precision=False,
    grow_pairs=None,
):
    """Solve the convex program on factors to a duality gap ``<= tol * scale``.

    Parameters
    ----------
    op : AttentionFactorOperator or MixerFactorOperator
    datafit : LogLoss or SquaredError
    Y : array (n, c)
        One-hot targets in the solver's namespace and dtype.
    w : array (n,)
        Sample weights summing to one.
    alpha : float
    fit_intercept : bool
    max_iter : int
        L-BFGS iterations in all (rank growth steps count as one).
    tol : float
    tol_scale : {"null", "objective"}
        The gap is compared with ``tol`` times the loss of the intercept-only model
        (``"null"``) or the primal objective.
    check_every : int
        L-BFGS iterations between certificates (rank growth). Where the operator forms
        the gradient blocks in every pass (the lifted ones), dual points are also scaled
        between certificates (:class:`_DualProbe`) and the solver stops at the first step
        whose objective is within ``tol`` of the best.
    memory : int
        L-BFGS memory (pairs). Measured on real tokens (``docs/factored.rst``): 50 pairs
        took 3x fewer seconds than 10 on SST-2 self-attention (fewer iterations and line
        search steps), and the compact form keeps their cost to a few matrix-vector
        products per iteration.
    memory_bytes : float or None
        Cap on the pairs' float64 buffers (``2 x memory x N x 8`` bytes for ``N``
        variables): fewer pairs are kept when the factors are large (at least 3).
    A_init, B_init, intercept_init : arrays or None
        Warm start (factors of shape ``(P, r) + a_shape`` and ``(P, r, d, c)``).
    max_time : float or None
        Seconds after which the solver stops like at ``max_iter``.
    n_lanczos : int
        Lanczos steps per spectral norm (at most: it stops once the top triple converged).
    verbose : int
        Progress reports (see :func:`~skconvexattn._progress.make_reporter`).
    reporter : reporter or None
        Report to this one instead (``verbose`` is then ignored) and leave it open: the
        caller closes it, e.g. after a continuation of this solve.
    interruptible : bool
        On :class:`KeyboardInterrupt`, return the last point L-BFGS accepted with its
        certificate (``interrupted`` is set) instead of propagating it.
    stop_at_precision : bool
        Return (``precision_limited`` set) once the certificate stops closing at the
        iterate's precision: the line search finds no decrease, or the relative gap,
        below ``PRECISION_FLOOR_GAP``, shrinks by less than a fifth over the last
        ``PRECISION_CHECKS`` certificates. Near an interpolating optimum float32
        gradients carry rounding of order ``eps * sum_i |w_i theta_i Phi_i|``, which
        leaves the active singular values of ``Grad_p`` a few ``1e-4`` off ``alpha`` and
        the gap there; the caller continues in float64.

    grow_pairs : int or None
        At most this many new heads per block at each rank growth (default
        :data:`GROW_PAIRS`), and at most as many as this solve has added so far: the leading
        singular pairs of ``-Grad_p`` above ``alpha`` outside the tangent space of the
        current heads (see :func:`_outside_heads`).

    Returns
    -------
    FactoredResult
    """
    xp = get_namespace(Y)
    grow_pairs = GROW_PAIRS if grow_pairs is None else max(1, int(grow_pairs))
    dtype = Y.dtype
    P, a_shape = op.P, op.a_shape
    d, c = op.d, Y.shape[1]
    R, Lc = math.prod(a_shape), d * c
    rng = np.random.default_rng(random_state)
    t0 = time.perf_counter()
    deadline = math.inf if max_time is None else t0 + float(max_time)
    prior, b0 = prior_and_start(datafit, Y, w, fit_intercept)
    O0 = xp.zeros_like(Y) + b0[None, :]
    null = _host(datafit.value(O0, Y, w))[0]

    if A_init is not None and B_init is not None and A_init.shape[1] > 0:
        A, B = A_init, B_init
        b = intercept_init if (fit_intercept and intercept_init is not None) else b0
    else:
        A = xp.zeros((P, 0) + a_shape, dtype=dtype)
        B = xp.zeros((P, 0, d, c), dtype=dtype)
        b = b0
    probe = _DualProbe.for_operator(op, datafit, Y, w, prior, fit_intercept, alpha)
    # Newton dual points where the probe runs (blocks formed, not tiny: on the MLP head's
    # 1.5 ms passes their fixed costs outweighed the iterations they saved, 2.25 s for
    # 369 iterations against 1.79 s for 929 on 1,500 Fashion rows)
    newton = (NEWTON_STEPS > 0 and probe is not None
              and getattr(op, "block_features_times", None) is not None)
    fun = _Objective(op, datafit, Y, w, alpha, fit_intercept, keep_blocks=probe is not None)
    history = {"iteration": [], "objective": [], "dual_gap": [], "time": [], "rank": [],
               "relative_gap": [], "null_relative_gap": []}
    stats = {"iterations": 0}
    # relative rounding of the objective (float64 accumulation of dtype products)
    lbfgs = _LBFGS(memory, xp, 64 * float(np.finfo(to_numpy(Y[:1]).dtype).eps),
                   max_bytes=memory_bytes)
    own_reporter = reporter is None
    if own_reporter:
        reporter = make_reporter(verbose, tol, max_iter, max_time=max_time)
    best_dual = best_cert = -math.inf
    cert_gaps = []
    v_start = None
    grown = 0  # heads added by rank growth in this solve
    converged = stalled = timed_out = interrupted = precision_limited = False
    primal = gap = math.inf
    if A.shape[1] > 0:
        O = fun([A, B, b])[2]
    else:
        O = xp.zeros_like(Y) + b[None, :]
    if probe is not None:
        def between_certificates(F_step, O_step):
            # a dual point from the blocks L-BFGS just formed: the gap closes at the first
            # iterate whose dual point is good enough, not at the next certificate
            nonlocal best_dual
            best_dual = max(best_dual, probe.dual_value(O_step, fun.blocks))
            stats["probes"] = stats.get("probes", 0) + 1
            # F_step (the factors' penalty) bounds the objective from above, best_dual
            # from below
            ref_ = null if tol_scale == "null" else max(best_dual, 0.0)
            return F_step - best_dual <= tol * ref_

        lbfgs.hook = between_certificates
    while True:
        # ---- certificate at the current point (logits O)
        theta = datafit.dual_candidate(O, Y, w, prior, fit_intercept)
        T = w[:, None] * theta
        # at most as many new heads as this solve has added so far (one at first): the
        # added rank at most doubles per growth, so it overshoots the optimum's by at most
        # a factor of two (surplus heads decay slowly under the factors' quadratic
        # penalty), also from a warm start that already has many heads
        sig_all, u_all, v_all = block_spectra(op, T, n_steps=n_lanczos, start=v_start,
                                              rng=rng, n_pairs=min(grow_pairs, max(1, grown)))
        sig = sig_all[:, 0]
        v_start = v_all[:, 0]
        spec = float(sig.max()) if sig.size else 0.0
        scale = min(1.0, alpha / spec) if spec > 0 else 1.0
        fval, dval = _host(datafit.value(O, Y, w), datafit.dual_value(scale * theta, Y, w))
        nuc = factor_nuclear_norms(A, B).sum() if A.shape[1] > 0 else 0.0
        primal = fval + alpha * nuc
        if (newton and alpha < spec <= (1.0 + NEWTON_MAX_EXCESS) * alpha
                and primal - max(best_dual, dval) > tol * (null if tol_scale == "null" else abs(primal))):
            dval = max(dval, _newton_dual(op, datafit, Y, w, prior, fit_intercept, alpha, O))
        best_dual = max(best_dual, dval)
        gap = max(primal - best_dual, 0.0)
        # the precision test reads the certificates' own dual points: the probe's
        # between them keep closing the gap slowly where float32 has stalled
        best_cert = max(best_cert, dval)
        cert_gaps.append(max(primal - best_cert, 0.0) / max(abs(primal), 1e-300))
        it = stats["iterations"]
        ref = null if tol_scale == "null" else abs(primal)
        history["iteration"].append(it)
        history["objective"].append(primal)
        history["dual_gap"].append(gap)
        history["time"].append(time.perf_counter() - t0)
        history["rank"].append(int(A.shape[1]))
        history["relative_gap"].append(gap / max(abs(primal), 1e-300))
        history["null_relative_gap"].append(gap / max(null, 1e-300))
        reporter.update(it, primal, gap / max(ref, 1e-300))
        if gap <= tol * ref:
            converged = True
            break
        if interrupted or it >= max_iter:
            break
        if stop_at_precision and _at_precision_floor(cert_gaps):
            precision_limited = True
            break
        if time.perf_counter() > deadline:
            timed_out = True
            break
        try:
            # ---- rank growth: leading pairs of -Grad_p above alpha, as new heads
            # a block of r >= min(R, L c) heads already spans every matrix of its shape (and
            # Burer-Monteiro has no spurious local minimum there): no column to add
            over = sig_all > alpha * (1.0 + 1e-6)  # (P, m)
            if grow_pairs > 1 and A.shape[1] > 0 and np.any(over):
                # pairs in the tangent space of the current heads are L-BFGS's to take;
                # new heads only for directions outside it (else the leading pairs).
                # grow_pairs=1 keeps the previous rule: the leading pair of every block
                # above alpha
                fresh = over & (_outside_heads(A, B, u_all, v_all) >= NEW_DIRECTION)
                if np.any(fresh):
                    over = fresh
                else:
                    over = over & (np.arange(over.shape[1]) == 0)[None, :]
            # new heads go to the block's dead heads first (zero where another block's
            # growth added the column, or decayed), then to new columns: a block whose
            # live heads are fewer than min(R, L c) can always grow
            slots = _growth_slots(_head_sizes(A, B), over, min(R, Lc))
            k_new = max((len(t) for t in slots), default=0)
            if stalled and k_new <= 0:
                # no descent left at this precision: the certificate is what it is
                precision_limited = True
                break
            if k_new > 0:
                r_old = A.shape[1]
                A, B, Anew, Bnew, cols, weight = _growth_heads(
                    A, B, u_all, v_all, over, slots, xp, dtype)
                if A.shape[1] > r_old:
                    lbfgs.pad(A.shape[1])
                if any(j < r_old for t in slots for j in t):
                    lbfgs.clear([(p, j) for p, t in enumerate(slots) for j in t if j < r_old])
                tau = _growth_step(op, datafit, Y, w, O, Anew, Bnew, alpha, weight,
                                   float(sig.max()))
                root = math.sqrt(tau)
                grown += k_new
                A = _scatter_heads(A, root * Anew, cols, xp)
                B = _scatter_heads(B, root * Bnew, cols, xp)
                stats["iterations"] += 1
            # ---- L-BFGS on the current columns
            F, g, O = fun([A, B, b])
            budget = min(check_every, max_iter - stats["iterations"])
            if budget <= 0:
                continue
            (A, B, b), F, g, O, stalled = lbfgs.run(
                fun, [A, B, b], F, g, O, max_iter=budget, deadline=deadline, stats=stats
            )
            keep = _nonzero_heads(A, B, xp)
            if keep is not None:
                A, B = xp.take(A, keep, axis=1), xp.take(B, keep, axis=1)
                lbfgs.take(keep)
            small = _compressed_heads(A, B)
            if small is not None:
                A, B = small
                lbfgs.reset()  # other coordinates: the stored pairs no longer apply
                stats["compressions"] = stats.get("compressions", 0) + 1
                O = fun([A, B, b])[2]
        except KeyboardInterrupt:
            if not interruptible:
                raise
            # the last accepted point, certified at the top of the loop, then returned
            interrupted = True
            O = fun([A, B, b])[2] if A.shape[1] > 0 else xp.zeros_like(Y) + b[None, :]
    if own_reporter:
        reporter.close(converged)
    if not converged and warn and not interrupted and not (stop_at_precision and precision_limited):
        warnings.warn(
            f"The factored solver stopped before the requested duality gap (relative gap "
            f"{gap / max(null if tol_scale == 'null' else abs(primal), 1e-300):.2e} > "
            f"tol={tol:g}). Increase max_iter or max_time, loosen tol, or increase alpha.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return FactoredResult(
        A=A, B=B, intercept=b, n_iter=stats["iterations"], objective=primal,
        dual_objective=best_dual, dual_gap=gap, null_objective=null, converged=converged,
        history=history, timed_out=timed_out, interrupted=interrupted,
        precision_limited=precision_limited,
    )


#: a run that may stop at its precision floor (``stop_at_precision``) does so once the
#: relative gap is below PRECISION_FLOOR_GAP and the best of the last PRECISION_CHECKS
#: certificates is above PRECISION_STALL times the best before them
PRECISION_FLOOR_GAP = 1e-2
PRECISION_CHECKS = 5
PRECISION_STALL = 0.8


def _at_precision_floor(gaps):
    """Whether the relative gaps (one per certificate) stopped closing near the floor."""
    k = PRECISION_CHECKS
    if len(gaps) <= k:
        return False
    recent, before = min(gaps[-k:]), min(gaps[:-k])
    return recent < PRECISION_FLOOR_GAP and recent > PRECISION_STALL * before


#: the dual probe runs after every accepted L-BFGS step of operators whose blocks hold
#: ``P R L c min(R, L c)`` of at least PROBE_MIN_WORK (the flops of its Gram matrices):
#: below that (the MLP head: blocks of ``s d x c``) the passes are so cheap that its fixed
#: costs (a few small array operations, one host transfer) are a large share of them, and
#: it gained no iterations there. A rule on the block sizes alone, not on ``n`` or on
#: timings: equal programs (repeated samples or integer weights) stop at the same step,
#: and fits stay reproducible. Its spectra cost about ``min(R, L c) / (2 n)`` of a pass;
#: never when that side exceeds PROBE_MAX_SIDE
PROBE_MIN_WORK = 1e5
PROBE_MAX_SIDE = 512


class _DualProbe:
    """Dual points between certificates, from the gradient blocks that every L-BFGS
    evaluation forms anyway (operators with ``value_grads_blocks``: the lifted ones).

    The certificate's dual point ``theta = s * theta_raw + kappa * Y + delta``
    (:meth:`dual_point` of the datafit) has the gradient blocks
    ``s * Grad(w theta_raw) + kappa * Grad(w Y) + Grad(w delta)``: the first is the
    evaluation's, the other two are fixed (``Grad(w delta)`` is ``delta_k`` times the
    weighted mean features in the columns of class ``k``). Their exact spectral norms (from
    the Gram matrix of each block's smaller side) scale ``theta`` into the dual feasible
    set. Near the optimum the certificate's gap is first order in the distance of the
    logits to the optimal ones (the dual scaling ``alpha / max_p ||Grad_p||_2``), and the
    iterates between two certificates, the growth's perturbation settling, differ in it;
    every dual point is feasible, so the best one counts.
    """

    def __init__(self, op, datafit, Y, w, prior, fit_intercept, alpha):
        xp = get_namespace(Y)
        self.datafit, self.Y, self.w = datafit, Y, w
        self.prior, self.fit_intercept, self.alpha = prior, fit_intercept, float(alpha)
        self.xp = xp
        self.G_y = op.gradient_blocks(w[:, None] * Y)
        P, R, Lc = self.G_y.shape
        c = Y.shape[1]
        # the columns of block p are (feature l, class k) pairs, k fastest (B is (L, c))
        G_1 = op.gradient_blocks(w[:, None] * xp.ones_like(Y))
        self.G_1 = xp.reshape(G_1, (P, R, Lc // c, c))
        self.shape = (P, R, Lc)

    @classmethod
    def for_operator(cls, op, datafit, Y, w, prior, fit_intercept, alpha):
        """The probe for ``op``, or ``None`` when it forms no blocks or they are large."""
        if getattr(op, "value_grads_blocks", None) is None or not hasattr(datafit, "dual_point"):
            return None
        R, Lc = math.prod(op.a_shape), op.d * Y.shape[1]
        side = min(R, Lc)
        if side > PROBE_MAX_SIDE:
            return None
        if op.P * R * Lc * side < PROBE_MIN_WORK:
            return None
        return cls(op, datafit, Y, w, prior, fit_intercept, alpha)

    def dual_value(self, O, G):
        """The dual objective at the scaled dual point of the logits ``O`` whose loss
        gradient has the blocks ``G``."""
        xp, df = self.xp, self.datafit
        theta, (s_, kappa, delta) = df.dual_point(
            O, self.Y, self.w, self.prior, self.fit_intercept)
        Gd = s_ * G + kappa * self.G_y + xp.reshape(self.G_1 * delta, self.shape)
        Gd = xp.astype(Gd, xp.float64)
        P, R, Lc = self.shape
        gram = (xp.matrix_transpose(Gd) @ Gd) if Lc <= R else (Gd @ xp.matrix_transpose(Gd))
        spec = xp.sqrt(xp.clip(xp.max(xp.linalg.eigvalsh(gram)), 0.0, None))
        # on the device: one host transfer per probe
        scale = xp.where(spec > self.alpha, self.alpha / xp.where(spec > 0, spec, 1.0), 1.0)
        return _host(df.dual_value(xp.astype(scale, theta.dtype) * theta, self.Y, self.w))[0]


#: Newton corrections of the certificate's dual point per certificate (0: none), for
#: operators that form their gradient blocks (the lifted ones) where the dual probe runs
#: (:data:`PROBE_MIN_WORK`); see :func:`_newton_dual`
NEWTON_STEPS = 2
#: singular values of ``Grad_p`` above ``(1 - NEWTON_BAND) alpha`` are active (their
#: subspace is pinned at ``alpha``), at most NEWTON_MAX_ACTIVE per block; the correction
#: runs once ``max_p ||Grad_p||_2 <= (1 + NEWTON_MAX_EXCESS) alpha``
NEWTON_BAND = 1e-2
NEWTON_MAX_ACTIVE = 6
NEWTON_MAX_EXCESS = 0.2
#: the correction's directions (``m x n x c`` float64, twice) stay under this many bytes:
#: fewer active pairs per block on many samples, none when not even one fits
NEWTON_MAX_BYTES = 2**28


def _block_spectra_exact(G, top):
    """All singular values of every formed block ``G`` (``(P, R, L c)``, on the host,
    float64) and the ``top`` leading singular pairs (``U`` ``(P, R, top)``, ``Vt``
    ``(P, top, L c)``, in the namespace of ``G``), from the Gram matrix of the smaller
    side."""
    xp = get_namespace(G)
    G = xp.astype(G, xp.float64)
    P, R, Lc = G.shape
    wide = Lc <= R
    gram = (xp.matrix_transpose(G) @ G) if wide else (G @ xp.matrix_transpose(G))
    lam, W = np.linalg.eigh(to_numpy(gram))
    lam, W = lam[:, ::-1], W[:, :, ::-1]
    S = np.sqrt(np.clip(lam, 0.0, None))
    if top <= 0:
        return S, None, None
    Wt = xp.asarray(np.ascontiguousarray(W[:, :, :top]), dtype=xp.float64)
    inv = xp.asarray(np.where(S[:, :top] > 0, 1.0 / np.where(S[:, :top] > 0, S[:, :top], 1.0),
                              0.0), dtype=xp.float64)
    if wide:  # W: right vectors
        return S, (G @ Wt) * inv[:, None, :], xp.matrix_transpose(Wt)
    return S, Wt, xp.matrix_transpose(xp.matrix_transpose(G) @ Wt) * inv[:, :, None]


def _newton_dual(op, datafit, Y, w, prior, fit_intercept, alpha, O, *, steps=None):
    """A better dual value than the certificate's scaled ``theta``: Newton steps on the
    logits that pin the active singular subspaces of the gradient blocks at ``alpha``.

    Scaling ``theta`` by ``alpha / max_p ||Grad_p||_2`` loses a first-order amount: near
    an optimum at distance ``eps`` in objective, ``theta`` is ``O(sqrt(eps))`` from the
    dual optimum and so is the gap. The dual optimum ``theta*`` satisfies ``U_p^T
    Grad_p(theta*) V_p = alpha I`` on each block's active singular subspace (``U_p``,
    ``V_p``: the singular vectors of the values at ``alpha``, those of ``Z_p``). A point
    ``theta'`` on that surface differs from ``theta*`` by a tangent vector, along which
    the dual objective changes to second order only; scaled into the feasible set it
    gives a gap of the order of ``eps`` itself.

    ``theta' = grad l(O + dO)`` with ``dO = sum beta_ab o_ab + 1 gamma^T`` (``o_ab`` the
    logits of the rank-one block ``u_a v_b^T``; the constant logits of each class for
    the intercept's condition ``sum_i w_i theta_i = 0``): one Gauss-Newton system in the
    ``sum_p k_p^2 + c`` coefficients, with the Hessian of the loss in the logits. Each
    step is line-searched on the dual value; every candidate is scaled into the feasible
    set with the exact spectral norms of its blocks, so the value returned is a valid
    lower bound whatever the step. Costs one adjoint product per candidate and the
    rank-one logits of the active pairs (``k_p`` products of one gate's features).
    """
    xp = get_namespace(Y)
    steps = NEWTON_STEPS if steps is None else int(steps)
    n, c = Y.shape
    f64 = xp.float64
    w64 = xp.astype(w, f64)
    Y64 = xp.astype(Y, f64)
    prior64 = xp.astype(prior, f64)

    def evaluate(O_):
        theta = datafit.dual_candidate(O_, Y64, w64, prior64, fit_intercept)
        G = op.gradient_blocks(xp.astype(w64[:, None] * theta, Y.dtype))
        return theta, G

    def value(theta, spec):
        scale = min(1.0, alpha / spec) if spec > 0 else 1.0
        return _host(datafit.dual_value(scale * theta, Y64, w64))[0]

    O = xp.astype(O, f64)
    theta, G = evaluate(O)
    P, R, Lc = G.shape
    L = Lc // c
    per_block = (NEWTON_MAX_BYTES / (16.0 * n * c) - c) / P  # k^2 directions per block
    top = min(NEWTON_MAX_ACTIVE, int(math.isqrt(max(int(per_block), 0))))
    S, U, Vt = _block_spectra_exact(G, top if steps > 0 else 0)
    best = value(theta, float(S[:, 0].max()))
    for _ in range(steps if top > 0 else 0):
        active = [np.flatnonzero(S[p, :top] >= (1 - NEWTON_BAND) * alpha) for p in range(P)]
        if not any(len(J) for J in active):
            break
        dirs, rhs = [], []
        for p, J in enumerate(active):
            k = len(J)
            if not k:
                continue
            idx = xp.asarray(J)
            Kf = xp.astype(op.block_features_times(p, xp.take(U[p, ...], idx, axis=1)), f64)
            Vb = xp.reshape(xp.take(Vt[p, ...], idx, axis=0), (k, L, c))
            Vb = xp.reshape(xp.permute_dims(Vb, (1, 0, 2)), (L, k * c))
            D = xp.reshape(xp.reshape(Kf, (n * k, L)) @ Vb, (n, k, k, c))  # (n, a, b, c)
            dirs.append(xp.reshape(xp.permute_dims(D, (1, 2, 0, 3)), (k * k, n, c)))
            target = np.zeros((k, k))
            target[np.arange(k), np.arange(k)] = alpha - S[p, J]
            rhs.append(target.ravel())
        if fit_intercept:
            dirs.append(xp.broadcast_to(xp.eye(c, dtype=f64)[:, None, :], (c, n, c)))
            rhs.append(-to_numpy(w64 @ theta))
        Dall = xp.concat(dirs, axis=0)  # (m, n, c)
        HD = datafit.hessian_times(O, Dall) * w64[None, :, None]
        m = Dall.shape[0]
        M = to_numpy(xp.reshape(Dall, (m, n * c)) @ xp.matrix_transpose(xp.reshape(HD, (m, n * c))))
        beta = np.linalg.lstsq(M, np.concatenate(rhs), rcond=1e-10)[0]
        dO = xp.reshape(xp.asarray(beta, dtype=f64)[None, :] @ xp.reshape(Dall, (m, n * c)), (n, c))
        moved = None
        for t in (1.0, 0.5, 0.25):
            theta_t, G_t = evaluate(O + t * dO)
            S_t = _block_spectra_exact(G_t, 0)[0]
            v = value(theta_t, float(S_t[:, 0].max()))
            if v > best:
                best, moved = v, (O + t * dO, theta_t, G_t)
                break
        if moved is None:
            break
        O, theta, G = moved
        S, U, Vt = _block_spectra_exact(G, top)
    return best


#: heads are compressed to the blocks' compact SVD when there are more than
#: COMPRESS_RATIO times as many columns as the largest block rank needs, and at least
#: COMPRESS_MIN_DROP more (each compression forgets L-BFGS's curvature pairs); singular
#: values below COMPRESS_TOL (or ten times the dtype's epsilon) of the block's largest
#: are dropped
COMPRESS_RATIO = 2
COMPRESS_MIN_DROP = 8
COMPRESS_TOL = 1e-9


def _compressed_heads(A, B):
    """The heads of every block as its balanced compact SVD, ``k`` columns (the largest
    numerical rank over the blocks), or ``None`` when the ``r`` columns are at most
    :data:`COMPRESS_RATIO` ``k`` or fewer than ``k +`` :data:`COMPRESS_MIN_DROP`.

    Rank growth adds a head per block and certificate, and near the optimum the new heads
    mostly fold into the span of the others: on Fashion-MNIST patches a self-attention fit
    ended with 92 columns for blocks of rank 3 to 6. The redundant heads cost time in every
    product with the factors and slow L-BFGS; the product ``Z_p`` is kept (up to the
    dropped singular values) and the penalty ``alpha/2 (|A|^2 + |B|^2)`` can only fall
    (balanced heads attain the nuclear norm). In the namespace of ``A``: only the
    ``r x r`` Gram matrices and maps go through the host.
    """
    xp = get_namespace(A)
    P, r = A.shape[0], A.shape[1]
    if r <= max(COMPRESS_RATIO, COMPRESS_MIN_DROP):
        return None
    dtype = A.dtype
    U = xp.astype(xp.reshape(A, (P, r, -1)), xp.float64)
    V = xp.astype(xp.reshape(B, (P, r, -1)), xp.float64)
    GU = to_numpy(U @ xp.matrix_transpose(U))
    GV = to_numpy(V @ xp.matrix_transpose(V))
    floor = max(COMPRESS_TOL, 10 * float(np.finfo(to_numpy(A[:1, :1]).dtype).eps))
    maps, ranks = [], []
    for p in range(P):
        l1, W1 = np.linalg.eigh(GU[p])
        l2, W2 = np.linalg.eigh(GV[p])
        i1 = np.where(l1 > 1e-14 * max(l1[-1], 1e-300), 1.0 / np.sqrt(np.clip(l1, 1e-300, None)), 0.0)
        i2 = np.where(l2 > 1e-14 * max(l2[-1], 1e-300), 1.0 / np.sqrt(np.clip(l2, 1e-300, None)), 0.0)
        C = (np.sqrt(np.clip(l1, 0, None))[:, None] * (W1.T @ W2)) * np.sqrt(np.clip(l2, 0, None))
        X, S, Yt = np.linalg.svd(C)
        root = np.sqrt(S)
        # A_new = diag(sqrt S) X^T L1^(-1/2) W1^T A, B_new likewise with Y and the B side
        Ma = (root[:, None] * X.T * i1[None, :]) @ W1.T
        Mb = (root[:, None] * Yt * i2[None, :]) @ W2.T
        maps.append((Ma, Mb))
        ranks.append(int(np.sum(S > floor * max(S[0], 1e-300))) if S[0] > 0 else 0)
    k = max(1, max(ranks))
    if r <= COMPRESS_RATIO * k or r - k < COMPRESS_MIN_DROP:
        return None
    Ma = xp.asarray(np.stack([m[0][:k] for m in maps]), dtype=dtype)  # (P, k, r)
    Mb = xp.asarray(np.stack([m[1][:k] for m in maps]), dtype=dtype)
    A2 = xp.reshape(Ma @ xp.reshape(A, (P, r, -1)), (P, k) + tuple(A.shape[2:]))
    B2 = xp.reshape(Mb @ xp.reshape(B, (P, r, -1)), (P, k) + tuple(B.shape[2:]))
    return A2, B2


def _nonzero_heads(A, B, xp):
    """Indices of the heads that are non-zero in some block (``None``: all are); zero
    heads stay zero under L-BFGS and only cost time."""
    P, r = A.shape[0], A.shape[1]
    if r <= 1:
        return None
    na = xp.sum(xp.reshape(xp.astype(A, xp.float64) ** 2, (P, r, -1)), axis=2)
    nb = xp.sum(xp.reshape(xp.astype(B, xp.float64) ** 2, (P, r, -1)), axis=2)
    size = to_numpy(xp.max(na + nb, axis=0))
    keep = np.flatnonzero(size > 1e-30 * max(size.max(), 1e-300))
    if keep.size == r:
        return None
    return xp.asarray(keep)


#: at most this many new heads per block at each rank growth (``grow_pairs``)
GROW_PAIRS = 8


#: a pair ``(u, v)`` of ``-Grad_p`` is a new direction for the heads when
#: ``(1 - |P_A u|^2) (1 - |P_B v|^2)`` (the parts of ``u`` and ``v`` outside the spans of
#: the block's heads) is at least this
NEW_DIRECTION = 0.25


def _outside_heads(A, B, u, v):
    """``(1 - |P_A u_j|^2) (1 - |P_B v_j|^2)`` for every pair ``j`` of every block (host,
    ``(P, m)``): near zero for the directions ``u v^T`` in the tangent space
    ``{dU V^T + U dV^T}`` of the block's heads (``u`` in the span of its ``A`` heads, or
    ``v`` in that of its ``B`` heads), which moving the current heads reaches; one for a
    direction that needs a new head. From the heads' Gram matrices (``r x r``)."""
    xp = get_namespace(A)
    P, r, m = A.shape[0], A.shape[1], u.shape[1]

    def inside(F, x):
        F = xp.astype(xp.reshape(F, (P, r, -1)), xp.float64)
        x = xp.astype(xp.reshape(x, (P, m, -1)), xp.float64)
        G = to_numpy(F @ xp.matrix_transpose(F))  # (P, r, r)
        C = to_numpy(x @ xp.matrix_transpose(F))  # (P, m, r)
        lam, W = np.linalg.eigh(G)
        keep = lam > 1e-10 * np.maximum(lam[:, -1:], 1e-300)
        inv = np.where(keep, 1.0 / np.where(keep, lam, 1.0), 0.0)  # pseudo-inverse
        return np.clip(np.sum((C @ W) ** 2 * inv[:, None, :], axis=2), 0.0, 1.0)

    return (1.0 - inside(A, u)) * (1.0 - inside(B, v))


#: a head of a block is dead (its slot takes a new head at the next growth) when
#: ``||a|| ||b||`` is at most this fraction of the block's largest head
DEAD_HEAD = 1e-8


def _head_sizes(A, B):
    """``||a_pj|| ||b_pj||`` of every head (host float64, ``(P, r)``): the nuclear norm
    each contributes to its block when the heads are balanced."""
    xp = get_namespace(A)
    P, r = A.shape[0], A.shape[1]
    if r == 0:
        return np.zeros((P, 0))
    na = xp.sum(xp.reshape(xp.astype(A, xp.float64) ** 2, (P, r, -1)), axis=2)
    nb = xp.sum(xp.reshape(xp.astype(B, xp.float64) ** 2, (P, r, -1)), axis=2)
    return np.sqrt(to_numpy(na * nb))


def _growth_slots(sizes, over, cap):
    """Where the new heads of a rank growth go: for every block ``p``, the columns its
    selected pairs (``over[p]``, in order) fill, dead heads of the block first
    (:data:`DEAD_HEAD`), then new columns ``r, r + 1, ...`` (as many as the block
    needing most of them asks, with ``r`` plus them at most ``cap``, the block's
    largest useful rank ``min(R, L c)``). A list of ``P`` lists of column indices."""
    P, r = sizes.shape
    top = sizes.max(axis=1, keepdims=True) if r else np.zeros((P, 1))
    dead = sizes <= DEAD_HEAD * top  # a block without live heads: every column
    wanted = over.sum(axis=1)
    extra = max(0, min(int(np.max(wanted - dead.sum(axis=1), initial=0)), cap - r))
    slots = []
    for p in range(P):
        free = list(np.flatnonzero(dead[p])) + list(range(r, r + extra))
        slots.append([int(j) for j in free[: int(wanted[p])]])
    return slots


def _growth_heads(A, B, u, v, over, slots, xp, dtype):
    """The new heads of a rank growth and where they go.

    Head ``(-u_pm, v_pm)`` (unit scale) for the selected pairs ``m`` of block ``p``
    (``over``, in order), into the columns ``slots[p]``: the convex objective decreases
    along ``sum -u_pm v_pm^T`` at rate ``sum (sigma - alpha)``, and its nuclear norm is
    the number of heads (the pairs are orthonormal). Every new head gets the same
    scale: weighting them by ``sigma - alpha`` (the soft-thresholded gradient) would
    start the heads of blocks with a small excess near zero, where the factors'
    gradient ``Grad_p B_j`` is as small.

    Returns ``A, B`` (with the new columns, zero, and the reused dead heads zeroed),
    ``Anew, Bnew`` (``(P, k)`` heads on the columns ``cols``, zero where a block takes
    none), ``cols`` and the number of heads (the nuclear norm per unit scale)."""
    P, m = over.shape
    r = A.shape[1]
    cols = sorted({j for t in slots for j in t})
    extra = max([j + 1 - r for j in cols] + [0])
    if extra:
        A = xp.concat([A, xp.zeros((P, extra) + tuple(A.shape[2:]), dtype=A.dtype)], axis=1)
        B = xp.concat([B, xp.zeros((P, extra) + tuple(B.shape[2:]), dtype=B.dtype)], axis=1)
    k = len(cols)
    where = {j: i for i, j in enumerate(cols)}
    # flat indices into (P * m) pairs and into (P * k) new heads
    src, dst, kill = [], [], np.ones((P, A.shape[1]))
    for p in range(P):
        chosen = np.flatnonzero(over[p])[: len(slots[p])]
        for pair, j in zip(chosen, slots[p]):
            src.append(p * m + int(pair))
            dst.append(p * k + where[j])
            kill[p, j] = 0.0
    if np.any(kill[:, :r] == 0):  # reused dead heads start from zero
        A = A * xp.asarray(kill.reshape(kill.shape + (1,) * (A.ndim - 2)), dtype=A.dtype)
        B = B * xp.asarray(kill.reshape(kill.shape + (1,) * (B.ndim - 2)), dtype=B.dtype)
    sel = np.zeros(P * k)
    sel[dst] = 1.0
    gather = np.zeros(P * k, dtype=np.int64)
    gather[dst] = src
    gather = xp.asarray(gather)
    mask = xp.asarray(sel, dtype=dtype)

    def pick(x):
        flat = xp.reshape(x, (P * m,) + tuple(x.shape[2:]))
        out = xp.take(flat, gather, axis=0)
        out = out * xp.reshape(mask, (P * k,) + (1,) * (out.ndim - 1))
        return xp.reshape(out, (P, k) + tuple(x.shape[2:]))

    return A, B, -pick(u), pick(v), cols, float(len(src))


def _scatter_heads(F, new, cols, xp):
    """``F`` with ``new`` (``(P, len(cols), ...)``) added to its columns ``cols``."""
    if not cols:
        return F
    r = F.shape[1]
    full = np.zeros((len(cols), r))
    full[np.arange(len(cols)), cols] = 1.0
    # (P, k, ...) -> (P, r, ...) by a 0/1 matrix: exact, and one array op on any backend
    E = xp.asarray(full, dtype=new.dtype)
    moved = xp.moveaxis(new, 1, -1) @ E  # (P, ..., r)
    return F + xp.moveaxis(moved, -1, 1)


def _growth_step(op, datafit, Y, w, O, Anew, Bnew, alpha, n_new, sig_max):
    """Scale ``tau`` of the new heads ``sqrt(tau) (Anew, Bnew)``: minimises
    ``datafit(O + tau dO) + alpha * n_new * tau`` (a 1-D convex problem on the logits;
    ``n_new`` is the nuclear norm the new heads add per unit of ``tau``)."""
    xp = get_namespace(O)
    dO = op.forward(Anew, Bnew)

    def phi(tau):
        return _host(datafit.value(O + tau * dO, Y, w))[0] + alpha * n_new * tau

    def dphi(tau):
        _, th = datafit.value_and_gradient(O + tau * dO, Y, w)
        return _host(_dot(w[:, None] * th, dO, xp))[0] + alpha * n_new

    # bracket the minimiser: the derivative at 0 is about alpha * n_new - sum sigma_p < 0
    lo, hi = 0.0, 1.0 / max(sig_max, 1e-300)
    for _ in range(60):
        if dphi(hi) >= 0:
            break
        lo, hi = hi, 2 * hi
    for _ in range(40):  # bisection on the derivative
        mid = 0.5 * (lo + hi)
        if dphi(mid) < 0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-3 * hi:
            break
    tau = 0.5 * (lo + hi)
    return tau if phi(tau) < phi(0.0) else lo
