"""Losses on the logits (datafits), with what the solver and the certificate need.

Every datafit is the weighted mean over samples ``F(O) = sum_i w_i l(o_i, y_i)`` of a
per-sample loss on the logits ``o_i`` (shape ``(c,)``), with weights ``w_i >= 0`` that sum
to one (plain mean: ``w_i = 1/n``). Targets are one-hot rows ``Y`` of shape ``(n, c)``.

Besides value and gradient each datafit gives its Fenchel conjugate's value (for the dual
objective) and a map from the current gradient to a *dual-feasible* point: one in the
domain of the conjugate whose weighted sum over samples is zero, as the unpenalised
intercept requires. See ``docs/certificate.rst`` for the derivation.
"""

from __future__ import annotations

from ._backend import get_namespace

__all__ = ["LogLoss", "SquaredError", "get_datafit", "softmax"]


# Reductions along the short class axis of an ``(n, c)`` array are slow in NumPy (an inner
# loop of length c per row: 18 us for a row sum and 43 us for a row max at n=1000, c=3,
# against 1.8 us for a matrix-vector product), so row sums are products with a vector of
# ones and, for few classes, the row max runs over the c columns instead.
_COLUMN_MAX_UP_TO = 8


def _row_sum(A, xp):
    """``sum(A, axis=1)`` as a matrix-vector product."""
    return A @ xp.ones((A.shape[1],), dtype=A.dtype)


def _row_max(A, xp):
    """``max(A, axis=1)``: elementwise over the columns when there are few of them."""
    c = A.shape[1]
    if c > _COLUMN_MAX_UP_TO:
        return xp.max(A, axis=1)
    m = A[:, 0]
    for k in range(1, c):
        m = xp.maximum(m, A[:, k])
    return m


def _shifted_exp(O, xp):
    """``m = max(O, axis=1)``, ``E = exp(O - m)`` and the row sums ``S`` of ``E``: the
    overflow-safe pieces of ``logsumexp = log(S) + m`` and ``softmax = E / S``."""
    m = _row_max(O, xp)
    E = xp.exp(O - m[:, None])
    return m, E, _row_sum(E, xp)


def softmax(O):
    """Row-wise softmax of the logits ``O`` (``(n, c)``), in their namespace and dtype.

    Overflow-safe (the row maximum is subtracted); a row whose maximum is infinite gets
    the limit of the softmax (its infinite entries share the mass), and entries far below
    the maximum get probability 0.
    """
    xp = get_namespace(O)
    top = xp.max(O, axis=1, keepdims=True)
    finite = xp.isfinite(top)
    if not bool(xp.all(finite)):  # logits beyond the float range
        O = xp.where(finite, O, xp.where(O == top, xp.zeros_like(O), -xp.inf * xp.ones_like(O)))
        top = xp.where(finite, top, xp.zeros_like(top))
    E = xp.exp(O - top)
    return E / xp.sum(E, axis=1, keepdims=True)


def _logsumexp(O, xp):
    m, _, S = _shifted_exp(O, xp)
    return xp.log(S) + m


def _xlogx(P, xp):
    safe = xp.where(P > 0, P, xp.ones_like(P))
    return xp.where(P > 0, P * xp.log(safe), xp.zeros_like(P))


class _Datafit:
    """The weighted mean of a per-sample loss (``per_sample``, defined by each datafit)."""

    def value(self, O, Y, w):
        """``sum_i w_i l(o_i, y_i)``."""
        xp = get_namespace(O)
        return xp.sum(w * self.per_sample(O, Y))


class LogLoss(_Datafit):
    """Multinomial logistic loss ``logsumexp(o) - o[y]`` (softmax cross-entropy).

    Its conjugate is ``l*(theta) = sum_k q_k log q_k`` with ``q = theta + e_y`` in the
    probability simplex (``+inf`` elsewhere), so the dual objective is a weighted mean
    entropy. The Hessian of ``logsumexp`` has spectral norm at most 1/2.
    """

    name = "log_loss"
    lipschitz = 0.5

    def per_sample(self, O, Y):
        """The loss of every sample, ``(n,)``."""
        xp = get_namespace(O)
        return _logsumexp(O, xp) - _row_sum(O * Y, xp)

    def proba(self, O):
        xp = get_namespace(O)
        _, E, S = _shifted_exp(O, xp)
        return E / S[:, None]

    def raw_gradient(self, O, Y):
        """Per-sample gradient ``theta_i = softmax(o_i) - e_{y_i}``."""
        return self.proba(O) - Y

    def value_and_gradient(self, O, Y, w):
        """:meth:`value` and :meth:`raw_gradient` sharing one pass of ``exp``."""
        xp = get_namespace(O)
        m, E, S = _shifted_exp(O, xp)
        per_sample = xp.log(S) + m - _row_sum(O * Y, xp)
        return xp.sum(w * per_sample), E / S[:, None] - Y

    def intercept_at_zero(self, prior):
        """Optimal intercept of the all-zero model: ``log(prior)`` (softmax(b) = prior)."""
        xp = get_namespace(prior)
        return xp.log(prior)

    def hessian_times(self, O, D):
        """``H_i D_i`` for every sample, with ``H_i = diag(q_i) - q_i q_i^T`` the Hessian
        of the loss in the logits ``o_i`` (``q_i = softmax(o_i)``); ``D`` is ``(..., n,
        c)``."""
        xp = get_namespace(O)
        Q = self.proba(O)
        return Q * D - Q * xp.sum(Q * D, axis=-1, keepdims=True)

    def dual_candidate(self, O, Y, w, prior, fit_intercept):
        """A point ``theta`` in the conjugate's domain with ``sum_i w_i theta_i = 0``.

        ``q_i = softmax(o_i)`` is mixed as ``(1 - eps) q_i + delta`` with the constant
        ``delta = prior - (1 - eps) sum_i w_i q_i >= 0`` (``eps`` the smallest value making
        it non-negative): rows stay in the simplex and their weighted mean becomes the
        class prior, which is what a zero intercept gradient means. At the optimal
        intercept ``eps = 0`` and nothing changes.
        """
        return self.dual_point(O, Y, w, prior, fit_intercept)[0]

    def dual_point(self, O, Y, w, prior, fit_intercept):
        """:meth:`dual_candidate` ``theta`` and ``(s, kappa, delta)`` with ``theta = s *
        raw_gradient + kappa * Y + delta`` (``delta`` added to every row), from one
        softmax: the dual point as an affine map of the loss gradient, whose gradient
        blocks are then those of the loss gradient combined with two fixed ones (the
        factored solver's dual probe)."""
        xp = get_namespace(O)
        Q = self.proba(O)
        if not fit_intercept:
            return Q - Y, (1.0, 0.0, xp.zeros_like(Q[0, :]))
        m = w @ Q
        ratio = xp.min(prior / m)
        keep = xp.minimum(ratio, xp.ones_like(ratio))  # 1 - eps
        delta = xp.clip(prior - keep * m, 0.0, None)
        return keep * Q + delta[None, :] - Y, (keep, keep - 1.0, delta)

    def dual_value(self, theta, Y, w):
        """``-sum_i w_i l*(theta_i)``: the weighted mean entropy of ``theta_i + e_{y_i}``."""
        xp = get_namespace(theta)
        Q = xp.clip(theta + Y, 0.0, 1.0)
        return -xp.sum(w * _row_sum(_xlogx(Q, xp), xp))


class SquaredError(_Datafit):
    """Squared error ``0.5 * ||o - e_y||^2`` against one-hot targets.

    Its conjugate is ``l*(theta) = 0.5 ||theta||^2 + theta[y]`` (finite everywhere), and
    its gradient is 1-Lipschitz.
    """

    name = "squared_error"
    lipschitz = 1.0

    def per_sample(self, O, Y):
        """The loss of every sample, ``(n,)``."""
        xp = get_namespace(O)
        R = O - Y
        return 0.5 * _row_sum(R * R, xp)

    def raw_gradient(self, O, Y):
        return O - Y

    def value_and_gradient(self, O, Y, w):
        """:meth:`value` and :meth:`raw_gradient` together."""
        xp = get_namespace(O)
        R = O - Y
        return 0.5 * xp.sum(w * _row_sum(R * R, xp)), R

    def intercept_at_zero(self, prior):
        return prior

    def hessian_times(self, O, D):
        """``H_i D_i``: the Hessian in the logits is the identity."""
        return D

    def dual_candidate(self, O, Y, w, prior, fit_intercept):
        """The residual, centred (weighted) when there is an intercept."""
        return self.dual_point(O, Y, w, prior, fit_intercept)[0]

    def dual_point(self, O, Y, w, prior, fit_intercept):
        """:meth:`dual_candidate` and its affine form (see :meth:`LogLoss.dual_point`)."""
        xp = get_namespace(O)
        theta = O - Y
        if not fit_intercept:
            return theta, (1.0, 0.0, xp.zeros_like(theta[0, :]))
        delta = -(w @ theta)
        return theta + delta[None, :], (1.0, 0.0, delta)

    def dual_value(self, theta, Y, w):
        xp = get_namespace(theta)
        per_sample = _row_sum(theta * (0.5 * theta + Y), xp)
        return -xp.sum(w * per_sample)


_DATAFITS = {"log_loss": LogLoss, "squared_error": SquaredError}


def get_datafit(name):
    """The datafit object for the ``loss`` parameter."""
    return _DATAFITS[name]()
