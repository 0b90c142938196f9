"""Dual points of the factored solver beyond the certificate's scaled loss gradient
(``docs/certificate.rst``): :class:`_DualProbe` scales the dual point of every L-BFGS
evaluation whose gradient blocks are formed, and :func:`_newton_dual` corrects the
certificate's by Newton steps on the logits, so that its gap is second order in the
distance to the optimum instead of first.

Every value returned is the dual objective at a point scaled into the dual-feasible set,
a lower bound on the optimum (with exact spectral norms where the blocks are formed; by
Lanczos on the matrix-free operators, as their certificate).
"""

from __future__ import annotations

import math

import numpy as np

from ._backend import get_namespace, scalars, to_numpy
from ._spectra import block_spectra

__all__ = ["newton_window"]

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
        return scalars(df.dual_value(xp.astype(scale, theta.dtype) * theta, self.Y, self.w))[0]


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


def newton_window():
    """``(steps, max_excess)``: Newton steps per certificate (0: off) and the largest
    ``max_p ||Grad_p||_2 / alpha - 1`` at which they run (read at call time, so that the
    module's constants can be changed)."""
    return NEWTON_STEPS, NEWTON_MAX_EXCESS


def _newton_dual(op, datafit, Y, w, prior, fit_intercept, alpha, O, *, steps=None,
                 n_lanczos=30, start=None):
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
    logits of the rank-one block ``u_a v_b^T``, from ``op.pair_logits``; the constant
    logits of each class for the intercept's condition ``sum_i w_i theta_i = 0``): one
    Gauss-Newton system in the ``sum_p k_p^2 + c`` coefficients, with the Hessian of the
    loss in the logits. Each step is line-searched on the dual value, and every candidate
    is scaled into the feasible set with its blocks' spectral norms: exact where the
    operator forms the blocks (from the Gram matrix of each block's smaller side), so the
    value returned is a valid lower bound whatever the step; by Lanczos
    (:func:`block_spectra`, ``n_lanczos`` steps from the previous leading vectors) on the
    matrix-free operators, as their certificate is (``start``: the leading right vectors
    ``(P, d, c)`` of the certificate's run at ``O``, to start from). Costs one adjoint
    product (or one Lanczos run) per candidate and the pair logits of the active pairs.
    """
    xp = get_namespace(Y)
    steps = NEWTON_STEPS if steps is None else int(steps)
    n, c = Y.shape
    P, d = op.P, op.d
    R, Lc = math.prod(op.a_shape), d * c
    f64 = xp.float64
    w64 = xp.astype(w, f64)
    Y64 = xp.astype(Y, f64)
    prior64 = xp.astype(prior, f64)
    per_block = (NEWTON_MAX_BYTES / (16.0 * n * c) - c) / P  # k^2 directions per block
    top = min(NEWTON_MAX_ACTIVE, int(math.isqrt(max(int(per_block), 0))), R, Lc)
    if steps <= 0:
        top = 0
    rng = np.random.default_rng(0)

    def evaluate(O_):
        """The dual candidate at logits ``O_``, its largest spectral norm, and the ``top``
        leading singular values ``(P, top)`` and vectors as rows ``(P, top, R)``,
        ``(P, top, L c)`` of its gradient blocks."""
        nonlocal start
        theta = datafit.dual_candidate(O_, Y64, w64, prior64, fit_intercept)
        T = xp.astype(w64[:, None] * theta, Y.dtype)
        # exact where the operator forms its blocks, by Lanczos otherwise
        sig, u, v = block_spectra(op, T, n_steps=n_lanczos, start=start, rng=rng,
                                  n_pairs=max(top, 1))
        start = v[:, 0, ...]
        k = sig.shape[1]
        return (theta, float(sig[:, 0].max()), sig[:, :top],
                xp.astype(xp.reshape(u, (P, k, R)), f64), xp.astype(xp.reshape(v, (P, k, Lc)), f64))

    def value(theta, spec):
        scale = min(1.0, alpha / spec) if spec > 0 else 1.0
        return scalars(datafit.dual_value(scale * theta, Y64, w64))[0]

    O = xp.astype(O, f64)
    theta, spec, S, U, Vt = evaluate(O)
    best = value(theta, spec)
    for _ in range(steps if top > 0 else 0):
        active = S >= (1 - NEWTON_BAND) * alpha  # (P, k)
        k = int(active.sum(axis=1).max())
        if k == 0:
            break
        # the active pairs first in every block (up to k slots; the rest zero heads)
        order = np.argsort(~active, axis=1, kind="stable")[:, :k]
        keep = xp.asarray(np.take_along_axis(active, order, axis=1)[:, :, None], dtype=f64)
        Ua = _take_rows(xp, U, order) * keep
        Va = _take_rows(xp, Vt, order) * keep
        D = op.pair_logits(xp.astype(xp.reshape(Ua, (P, k) + op.a_shape), Y.dtype),
                           xp.astype(xp.reshape(Va, (P, k, d, c)), Y.dtype))
        D = xp.astype(D, f64)  # (n, P, a, b, c)
        dirs, rhs = [], []
        for p in range(P):
            kp = int(active[p].sum())
            if not kp:
                continue
            Dp = D[:, p, :kp, :kp, :]
            dirs.append(xp.reshape(xp.permute_dims(Dp, (1, 2, 0, 3)), (kp * kp, n, c)))
            target = np.zeros((kp, kp))
            target[np.arange(kp), np.arange(kp)] = alpha - S[p, order[p, :kp]]
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
            cand = evaluate(O + t * dO)
            v = value(cand[0], cand[1])
            if v > best:
                best, moved = v, (O + t * dO,) + cand
                break
        if moved is None:
            break
        O, theta, spec, S, U, Vt = moved
    return best


def _take_rows(xp, M, order):
    """``M[p, order[p]]`` for every block: ``M`` ``(P, k, N)``, ``order`` ``(P, m)``."""
    return xp.stack([xp.take(M[p, ...], xp.asarray(order[p]), axis=0)
                     for p in range(order.shape[0])], axis=0)
