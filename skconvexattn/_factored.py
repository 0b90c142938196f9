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
   ``A B^T`` and the dual value at ``theta`` scaled into the dual-feasible set (also at a
   Newton-corrected ``theta``, :func:`~skconvexattn._dual_points._newton_dual`, whose gap
   is second order in the distance to the optimum instead of first; the spectra are in
   :mod:`~skconvexattn._spectra`);
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

from ._backend import get_namespace, scalars, to_numpy
from ._dual_points import _DualProbe, _newton_dual, newton_window
from ._progress import make_reporter
from ._solver import prior_and_start
from ._spectra import block_spectra

__all__ = ["factored_solve", "FactoredResult", "block_spectra", "factor_nuclear_norms"]

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
        Fh = scalars(F)[0]
        for _ in range(max_iter):
            if time.perf_counter() > deadline:
                break
            direc = self.direction(g)
            slope = scalars(_tdot(g, direc, xp))[0]
            if not slope < 0:  # not a descent direction: forget the curvature pairs
                self.reset()
                direc = self.direction(g)
                slope = scalars(_tdot(g, direc, xp))[0]
                if not slope < 0:
                    return x, F, g, O, True
            t = 1.0
            gg = None
            for _ls in range(40):
                xn = [xi + t * di for xi, di in zip(x, direc)]
                Fn, gn, On = fun(xn)
                Fnh = scalars(Fn)[0]
                if math.isfinite(Fnh) and Fnh <= Fh + 1e-4 * t * slope:
                    break
                # below the objective's rounding the decrease cannot be seen: accept a
                # step that keeps the value within rounding and shrinks the gradient
                if math.isfinite(Fnh) and abs(Fnh - Fh) <= self.rounding * abs(Fh):
                    if gg is None:
                        gg = scalars(_tdot(g, g, xp))[0]
                    if scalars(_tdot(gn, gn, xp))[0] < gg:
                        break
                t *= 0.5
            else:
                return x, F, g, O, True  # no decrease at this precision
            stats["iterations"] += 1
            s_ = [a - b for a, b in zip(xn, x)]
            y_ = [a - b for a, b in zip(gn, g)]
            sy, ss, yy, sy_b, yy_b = scalars(
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
    null = scalars(datafit.value(O0, Y, w))[0]

    if A_init is not None and B_init is not None and A_init.shape[1] > 0:
        A, B = A_init, B_init
        b = intercept_init if (fit_intercept and intercept_init is not None) else b0
    else:
        A = xp.zeros((P, 0) + a_shape, dtype=dtype)
        B = xp.zeros((P, 0, d, c), dtype=dtype)
        b = b0
    probe = _DualProbe.for_operator(op, datafit, Y, w, prior, fit_intercept, alpha)
    # Newton dual points on the matrix-free products, and where the blocks are formed
    # where the probe runs (not tiny: on the MLP head's 1.5 ms passes their fixed costs
    # outweighed the iterations they saved, 2.25 s for 369 iterations against 1.79 s for
    # 929 on 1,500 Fashion rows)
    formed = getattr(op, "gradient_blocks", None) is not None
    newton_steps, newton_excess = newton_window()
    newton = (newton_steps > 0 and getattr(op, "pair_logits", None) is not None
              and (probe is not None or not formed))
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
        v_start = v_all[:, 0, ...]
        spec = float(sig.max()) if sig.size else 0.0
        scale = min(1.0, alpha / spec) if spec > 0 else 1.0
        fval, dval = scalars(datafit.value(O, Y, w), datafit.dual_value(scale * theta, Y, w))
        nuc = factor_nuclear_norms(A, B).sum() if A.shape[1] > 0 else 0.0
        primal = fval + alpha * nuc
        if (newton and alpha < spec <= (1.0 + newton_excess) * alpha
                and primal - max(best_dual, dval) > tol * (null if tol_scale == "null" else abs(primal))):
            dval = max(dval, _newton_dual(op, datafit, Y, w, prior, fit_intercept, alpha, O,
                                            n_lanczos=n_lanczos, start=v_start))
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
        return scalars(datafit.value(O + tau * dO, Y, w))[0] + alpha * n_new * tau

    def dphi(tau):
        _, th = datafit.value_and_gradient(O + tau * dO, Y, w)
        return scalars(_dot(w[:, None] * th, dO, xp))[0] + alpha * n_new

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
