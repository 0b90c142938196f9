"""Accelerated proximal gradient (FISTA) with backtracking, adaptive restart and a
duality-gap stopping rule, for

    min_{Z, b}  F(Phi Z + b) + alpha * sum_p ||Z_p||_*

where ``F`` is a datafit (weighted mean loss on the logits) and ``Phi`` a
:class:`~skconvexattn._operator.LiftedOperator`.

Each iteration costs one adjoint product (gradient at the extrapolated point), one batched
SVD (the prox) and one forward product (logits of the new iterate, which the backtracking
test needs); the extrapolated point's logits follow from linearity. Every
``check_every`` iterations one more adjoint product gives the duality gap. The host
transfers in the loop are three scalars per iteration (sent together), the prox's
largest singular value and rank, and two scalars per gap evaluation.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from ._backend import get_namespace, scalar, to_numpy
from ._penalty import BlockNuclearNorm
from ._progress import make_reporter

__all__ = ["fista", "SolverResult", "alpha_max", "primal_dual_values"]


@dataclass
class SolverResult:
    """What :func:`fista` returns (arrays in the solver's namespace)."""

    coef: object
    intercept: object
    n_iter: int
    objective: float
    dual_objective: float
    dual_gap: float
    converged: bool
    step_size: float  # the last step, for the operator scaled by 1 / kappa
    history: dict = field(default_factory=dict)
    null_objective: float = math.nan  # loss of the intercept-only model
    timed_out: bool = False  # stopped by max_time
    interrupted: bool = False  # stopped by KeyboardInterrupt (interruptible=True)


def _vdot(a, b, xp):
    """Inner product accumulated in float64 (float32 sums of squares overflow and drift)."""
    if a.dtype != xp.float64:
        a = xp.astype(a, xp.float64)
    if b.dtype != xp.float64:
        b = xp.astype(b, xp.float64)
    return xp.sum(a * b)


class _ScaledOperator:
    """``Phi / kappa``: with ``Z' = kappa Z`` and ``alpha' = alpha / kappa`` the program,
    its objective values and its duality gap are unchanged, while the features' curvature
    is brought to that of the intercept (1), so a single step size suits both."""

    def __init__(self, op, kappa):
        self.op, self.kappa, self.block_shape = op, kappa, op.block_shape

    def forward(self, Z):
        return self.op.forward(Z) / self.kappa

    def adjoint(self, U):
        return self.op.adjoint(U) / self.kappa


def prior_and_start(datafit, Y, w, fit_intercept):
    """Weighted class prior and the optimal intercept of the all-zero model."""
    xp = get_namespace(Y)
    prior = xp.sum(w[:, None] * Y, axis=0)
    if fit_intercept:
        b0 = datafit.intercept_at_zero(prior)
    else:
        b0 = xp.zeros_like(prior)
    return prior, b0


def alpha_max(op, datafit, Y, w, fit_intercept):
    """Smallest ``alpha`` for which the all-zero model (with its best intercept) is optimal.

    It is the largest spectral norm over blocks of the gradient at ``Z = 0``.
    """
    xp = get_namespace(Y)
    prior, b0 = prior_and_start(datafit, Y, w, fit_intercept)
    O0 = xp.zeros_like(Y) + b0[None, :]
    G0 = op.adjoint(w[:, None] * datafit.raw_gradient(O0, Y))
    return BlockNuclearNorm().dual_norm(G0), G0


def primal_dual_values(op, datafit, Y, w, alpha, O, pen, prior, fit_intercept):
    """Primal and dual objective values at a point with logits ``O`` and penalty ``pen``;
    their difference is the duality gap.

    The dual point is the datafit's feasible candidate ``theta`` scaled by
    ``min(1, alpha / max_p ||Grad_p(theta)||_2)`` so that every block's spectral norm
    constraint holds; the gap bounds the suboptimality of the primal point.
    """
    xp = get_namespace(O)
    theta = datafit.dual_candidate(O, Y, w, prior, fit_intercept)
    G = op.adjoint(w[:, None] * theta)
    spec = BlockNuclearNorm().dual_norm(G)
    scale = xp.minimum(alpha / xp.maximum(spec, 1e-300 * xp.ones_like(spec)), 1.0)
    dual = datafit.dual_value(scale * theta, Y, w)
    primal = datafit.value(O, Y, w) + alpha * pen
    return primal, dual


def _lipschitz(op, Y, w, fit_intercept, start, n_iter=10):
    """Power iteration for the largest eigenvalue of ``A^T diag(w) A`` (A: features + 1)."""
    xp = get_namespace(Y)
    v = start
    vb = xp.ones((Y.shape[1],), dtype=Y.dtype) if fit_intercept else None
    big = xp.max(xp.abs(v))
    v = v / big if scalar(big) > 0 else v  # keep float32 squares finite
    nrm = math.sqrt(scalar(_vdot(v, v, xp)) + (Y.shape[1] if fit_intercept else 0))
    if nrm == 0.0:
        v = xp.ones_like(v)
        nrm = math.sqrt(scalar(_vdot(v, v, xp)) + (Y.shape[1] if fit_intercept else 0))
    lam = 1.0
    for _ in range(n_iter):
        v = v / nrm
        U = op.forward(v)
        if fit_intercept:
            vb = vb / nrm
            U = U + vb[None, :]
        U = w[:, None] * U
        v = op.adjoint(U)
        sq = _vdot(v, v, xp)
        if fit_intercept:
            vb = xp.sum(U, axis=0)
            sq = sq + _vdot(vb, vb, xp)
        lam = math.sqrt(scalar(sq))
        if lam == 0.0:
            return 1.0
        nrm = lam
    return lam


def fista(
    op,
    datafit,
    Y,
    w,
    alpha,
    *,
    fit_intercept=True,
    max_iter=1000,
    tol=1e-4,
    tol_scale="objective",
    check_every=10,
    coef_init=None,
    intercept_init=None,
    step_init=None,
    grad_at_zero=None,
    verbose=0,
    warn=True,
    step_growth=1.2,
    grow_after=1,
    max_time=None,
    interruptible=False,
):
    """Solve the convex program to a relative duality gap ``<= tol``.

    Parameters
    ----------
    op : LiftedOperator
    datafit : LogLoss or SquaredError
    Y : array of shape (n, c)
        One-hot targets, in the solver's namespace and dtype.
    w : array of shape (n,)
        Non-negative sample weights summing to one.
    alpha : float
        Regularisation strength (> 0).
    fit_intercept : bool
    max_iter : int
    tol : float
        Stop when ``(primal - dual) <= tol * scale``.
    tol_scale : {"objective", "null"}
        ``scale``: the primal objective, or the loss of the intercept-only model (as
        scikit-learn's Lasso does; it does not shrink when the model nearly
        interpolates).
    check_every : int
        Iterations between duality-gap evaluations (each costs one adjoint product).
    step_growth : float
        Each iteration first tries the previous step times this factor, then halves it
        until the sufficient-decrease test holds (adaptive backtracking: the step follows
        the local curvature, which for the log-loss is often far below its global bound).
    grow_after : int
        The step is only grown after this many consecutive iterations without a
        rejected trial (a rejected trial costs one more prox and forward product; growing
        at every iteration measured fewest forward products on digit tokens).
    coef_init, intercept_init : arrays or None
        Warm start.
    step_init : float or None
        First step size to try (the final step of a previous solve, in this function's
        scaled units, see ``SolverResult.step_size``); the line search starts from the
        larger of it and the inverse Lipschitz bound.
    grad_at_zero : array or None
        The gradient at ``Z = 0`` (second output of :func:`alpha_max`), where the power
        iteration for the Lipschitz constant starts; computed (one adjoint product) when
        None.
    verbose : int
        Report progress at every gap evaluation (iteration, objective, relative gap,
        elapsed time, ETA): 1 a progress bar when stderr is a terminal and plain lines
        otherwise, 2 plain lines (see :func:`~skconvexattn._progress.make_reporter`).
    max_time : float or None
        Seconds after which the solver stops as at ``max_iter``: with the current iterate
        and its duality gap (``timed_out`` is set). Checked once per iteration.
    interruptible : bool
        Catch a :class:`KeyboardInterrupt` during the iterations and return the current
        iterate with its duality gap (``interrupted`` is set) instead of propagating it.

    Returns
    -------
    SolverResult
    """
    xp = get_namespace(Y)
    pen_op = BlockNuclearNorm()
    P, R, L = op.block_shape
    c = Y.shape[1]
    prior, b0 = prior_and_start(datafit, Y, w, fit_intercept)
    if grad_at_zero is None:
        grad_at_zero = alpha_max(op, datafit, Y, w, fit_intercept)[1]
    G0 = grad_at_zero  # the power iteration's start

    if coef_init is not None:
        x = coef_init
        b = intercept_init if fit_intercept else xp.zeros_like(b0)
        pen = pen_op.value(x)
    else:
        x = xp.zeros((P, R, L * c), dtype=Y.dtype)
        b = b0
        pen = xp.zeros((), dtype=Y.dtype)
    Ox = op.forward(x) + b[None, :]

    kappa = 1.0
    if fit_intercept:
        # the features are centred (see LiftedOperator), so the curvature splits into the
        # features' and the intercept's (= 1); scale the former to 1 as well
        lam = _lipschitz(op, Y, w, False, G0)
        if lam > 0 and math.isfinite(lam):
            kappa = math.sqrt(lam)
            op = _ScaledOperator(op, kappa)
            alpha = alpha / kappa
            x = x * kappa
            pen = pen * kappa
        lip = datafit.lipschitz * max(lam / kappa**2, 1.0) if lam > 0 else datafit.lipschitz
    else:
        lip = datafit.lipschitz * _lipschitz(op, Y, w, fit_intercept, G0)
    t = 1.0 / lip
    if step_init is not None and math.isfinite(step_init) and step_init > t:
        t = float(step_init)
    eps = float(np.finfo(to_numpy(Y).dtype).eps)

    y, by, Oy = x, b, Ox
    tau = 1.0
    streak = 0
    history = {"iteration": [], "objective": [], "dual_gap": [], "time": []}
    t_start = time.perf_counter()
    converged = False
    primal = dual = gap = math.inf
    it = 0

    best_dual = [-math.inf]
    reporter = make_reporter(verbose, tol, max_iter, max_time=max_time)
    null = scalar(datafit.value(xp.zeros_like(Y) + b0[None, :], Y, w))

    def ref(p):
        return null if tol_scale == "null" else abs(p)

    def check(it):
        # every dual-feasible point bounds the optimum from below: keep the best one
        p, d = primal_dual_values(op, datafit, Y, w, alpha, Ox, pen, prior, fit_intercept)
        p, d = (float(v) for v in to_numpy(xp.stack([p, d])))
        d = best_dual[0] = max(d, best_dual[0])
        history["iteration"].append(it)
        history["objective"].append(p)
        history["dual_gap"].append(p - d)
        history["time"].append(time.perf_counter() - t_start)
        reporter.update(it, p, (p - d) / max(ref(p), 1e-300))
        return p, d

    primal, dual = check(0)
    gap = primal - dual
    if gap <= tol * ref(primal):
        converged = True

    timed_out = interrupted = False
    completed = it
    try:
        while not converged and it < max_iter:
            if max_time is not None and time.perf_counter() - t_start >= max_time:
                timed_out = True
                break
            it += 1
            fy, Gy = datafit.value_and_gradient(Oy, Y, w)
            g = op.adjoint(w[:, None] * Gy)
            gb = w @ Gy if fit_intercept else None  # column sums as a matrix-vector product
            if streak >= grow_after:
                t *= step_growth
                streak = 0
            streak += 1
            for _ in range(60):  # backtracking on the step size
                x_new, S = pen_op.prox(y - t * g, t * alpha)
                b_new = by - t * gb if fit_intercept else b
                O_new = op.forward(x_new) + b_new[None, :]
                f_new = datafit.value(O_new, Y, w)
                # quadratic model <g, d> + |d|^2 / (2 t) of the step d = x_new - y
                d = x_new - y
                quad = _vdot(g + (0.5 / t) * d, d, xp)
                if fit_intercept:
                    db = b_new - by
                    quad = quad + _vdot(gb + (0.5 / t) * db, db, xp)
                # restart test (O'Donoghue & Candes): <y - x_new, x_new - x> > 0
                r = -_vdot(d, x_new - x, xp)
                if fit_intercept:
                    r = r - _vdot(db, b_new - b, xp)
                excess, restart, fy_host = (
                    float(v) for v in to_numpy(xp.stack([f_new - fy - quad, r, fy]))
                )
                if math.isfinite(excess) and excess <= 10 * eps * (abs(fy_host) + 1):
                    break
                t *= 0.5
                streak = 0
            else:
                raise FloatingPointError(
                    "the line search found no step that decreases the objective (non-finite "
                    "values?): check the input for extreme scales, or use float64."
                )
            pen = xp.sum(S)
            if restart > 0:
                tau = 1.0
                beta = 0.0
            else:
                tau_new = (1.0 + math.sqrt(1.0 + 4.0 * tau * tau)) / 2.0
                beta = (tau - 1.0) / tau_new
                tau = tau_new
            if beta > 0:
                y = x_new + beta * (x_new - x)
                by = b_new + beta * (b_new - b) if fit_intercept else b_new
                Oy = O_new + beta * (O_new - Ox)
            else:
                y, by, Oy = x_new, b_new, O_new
            x, b, Ox = x_new, b_new, O_new
            completed = it  # the iterate x is that of iteration `completed`

            if it % check_every == 0 or it == max_iter:
                primal, dual = check(it)
                gap = primal - dual
                if gap <= tol * ref(primal):
                    converged = True

    except KeyboardInterrupt:
        if not interruptible:
            raise
        interrupted = True
        it = completed  # an iteration cut short leaves the previous iterate
    if (timed_out or interrupted) and history["iteration"][-1] != it:
        # the certificate of the iterate returned
        pen = pen_op.value(x)
        primal, dual = check(it)
        gap = primal - dual
        converged = gap <= tol * ref(primal)
    # the penalty tracked through the loop comes from the prox's Gram eigenvalues; report
    # the objective with the exact (SVD) nuclear norm of the returned point
    exact = scalar(datafit.value(Ox, Y, w) + alpha * pen_op.value(x))
    gap = max(gap + (exact - primal), 0.0) if math.isfinite(gap) else gap
    primal = exact
    if history["iteration"] and history["iteration"][-1] == it:
        history["objective"][-1] = primal
        history["dual_gap"][-1] = gap
    history["relative_gap"] = [g / max(abs(p), 1e-300) for g, p in
                               zip(history["dual_gap"], history["objective"])]
    history["null_relative_gap"] = [g / max(null, 1e-300) for g in history["dual_gap"]]
    reporter.close(converged)
    if not converged and warn and not interrupted:
        limit = f"max_time={max_time:g} s" if timed_out else f"max_iter={max_iter} iterations"
        warnings.warn(
            f"The solver did not reach the requested duality gap in {limit} "
            f"(relative gap {gap / max(ref(primal), 1e-300):.2e} > tol={tol:g}). "
            "Increase max_iter, loosen tol, or increase alpha.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return SolverResult(
        coef=x / kappa if kappa != 1.0 else x,
        intercept=b,
        n_iter=it,
        objective=primal,
        dual_objective=dual,
        dual_gap=gap,
        converged=converged,
        step_size=t,
        history=history,
        null_objective=null,
        timed_out=timed_out,
        interrupted=interrupted,
    )
