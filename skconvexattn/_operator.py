"""The lifted-feature operator: a linear map from block weights to logits.

A head is defined by a *feature map* ``X -> Phi`` taking a chunk of token matrices
``(m, s, d)`` to lifted features of shape ``(m, P, R, L)``. With weights ``Z`` of shape
``(P, R, L * c)`` (block ``p`` has rows ``r`` and columns ``(l, b)`` in row-major order)
the logits are ``o_i[b] = sum_{p, r, l} Phi_i[p, r, l] Z[p, r, l, b]``: one GEMM
``Phi (n, K) @ Z (K, c)`` with ``K = P R L``, and its adjoint is ``Phi^T @ U``.

When the features fit in the memory budget they are computed once and kept
(*materialised*); otherwise they are recomputed chunk by chunk of samples at each
product, keeping memory flat. :func:`plan_memory` makes that choice, and refuses a problem
that cannot fit at all before anything large is allocated.
"""

from __future__ import annotations

import math

from ._backend import get_namespace, is_numpy_namespace

__all__ = ["LiftedOperator", "GatedTokenOperator", "plan_memory", "MemoryPlan"]

GiB = 1024**3


class MemoryPlan:
    """Outcome of :func:`plan_memory`: ``chunk_rows=None`` means materialise (the features
    are then computed ``build_rows`` samples at a time into one preallocated array)."""

    def __init__(self, chunk_rows, feature_bytes, weight_bytes, build_rows=None, peak_bytes=0):
        self.chunk_rows = chunk_rows
        self.feature_bytes = feature_bytes
        self.weight_bytes = weight_bytes
        self.build_rows = build_rows
        self.peak_bytes = peak_bytes

    @property
    def materialised(self):
        return self.chunk_rows is None


def _fmt(nbytes):
    return f"{nbytes / GiB:.3g} GiB" if nbytes >= 0.1 * GiB else f"{nbytes / 1024**2:.3g} MiB"


def plan_memory(
    n_samples, n_lifted, n_weights, itemsize, work_per_sample, budget_gib, what, reduce_hint
):
    """Choose materialised or chunked lifted features within ``budget_gib``.

    The plan is an upper bound on the solver's peak memory (beyond the input ``X``):
    ``peak_bytes`` counts the weight-sized arrays (about 8 copies of the weights), the
    logit-sized arrays (about 8 of ``(n, c)``) and, materialised, the features plus the
    output and scratch memory of the feature map for one build chunk (the features are
    computed chunk by chunk into one array and centred in place), or, chunked, the output
    and scratch of one chunk.

    Parameters
    ----------
    n_samples : int
    n_lifted : int
        Lifted features per sample (``K = P R L``).
    n_weights : int
        Number of weights (``K c``).
    itemsize : int
        Bytes per float.
    work_per_sample : int
        Floats of scratch memory the feature map needs per sample.
    budget_gib : float
        The estimator's ``memory_budget``.
    what : str
        The head's name, for messages.
    reduce_hint : str
        What the user can reduce, for messages.
    """
    budget = budget_gib * GiB
    n_outputs = max(1, n_weights // max(n_lifted, 1))
    # the solver keeps about 8 weight-sized arrays (iterate, extrapolation, gradient,
    # previous iterate, SVD factors and workspace) and as many logit-sized ones
    weight_bytes = 8 * n_weights * itemsize
    fixed = weight_bytes + 8 * n_samples * n_outputs * itemsize
    per_sample = (n_lifted + work_per_sample) * itemsize  # one sample's features + scratch
    feature_bytes = n_samples * n_lifted * itemsize
    if fixed + per_sample > budget:
        raise ValueError(
            f"{what}: this problem needs {n_weights:,} weights and {n_lifted:,} lifted "
            f"features per sample; the solver would need about "
            f"{_fmt(fixed + per_sample)}, more than memory_budget={budget_gib:g} GiB. "
            f"Reduce {reduce_hint}, or raise memory_budget if the machine has the memory."
        )
    # materialised: the features, plus one build chunk of the feature map
    room = budget - fixed - feature_bytes
    if room >= per_sample:
        build_rows = int(min(n_samples, room // per_sample))
        peak = fixed + feature_bytes + build_rows * per_sample
        return MemoryPlan(None, feature_bytes, weight_bytes, build_rows, peak)
    chunk_rows = int(min(n_samples, max(1, (budget - fixed) // per_sample)))
    return MemoryPlan(
        chunk_rows, feature_bytes, weight_bytes, peak_bytes=fixed + chunk_rows * per_sample
    )


def _device_kw(X):
    """``device=`` of ``X`` for array-creation functions (none for NumPy)."""
    device = getattr(X, "device", None)
    if device is None or type(X).__module__.startswith("numpy"):
        return {}
    return {"device": device}


# Products of the tall feature matrix ``Phi`` (n, K) with a few columns (c = classes).
# They are memory-bound: one pass over Phi should cost what one matrix-vector product
# does. OpenBLAS's GEMM with so few columns falls far short of that, and its transposed
# form more so; measured with 2 threads on (6920, 65536) float32 features (seconds):
#
#   c   Phi.T @ U   (U.T @ Phi).T   one GEMV per column | Phi @ Z   one GEMV per column
#   1   0.061       0.059           0.058               | 0.063     0.062
#   2   0.296       0.224           0.110               | 0.149     0.124
#   3   0.330       0.228           0.165               | 0.163     0.179
#   4   0.306       0.222           0.224               | 0.157     0.244
#  10   0.359       0.261           0.546               | 0.204     0.599
#
# so on NumPy the adjoint takes one GEMV per column up to _GEMV_ADJOINT_MAX columns and
# ``(U^T Phi)^T`` beyond, and the forward one GEMV per column up to _GEMV_FORWARD_MAX.
# Other namespaces (CuPy: cuBLAS handles skinny and transposed operands) keep the GEMM.
_GEMV_ADJOINT_MAX = 3
_GEMV_FORWARD_MAX = 2


def features_times(Phi, Z):
    """``Phi @ Z`` for the ``(n, K)`` features and ``(K, c)`` weights, shape ``(n, c)``."""
    xp = get_namespace(Phi)
    if Z.dtype != Phi.dtype:
        Z = xp.astype(Z, Phi.dtype)
    c = Z.shape[1]
    if is_numpy_namespace(xp) and 1 < c <= _GEMV_FORWARD_MAX:
        return xp.stack([Phi @ Z[:, k] for k in range(c)], axis=1)
    return Phi @ Z


def features_adjoint(Phi, U):
    """``Phi^T @ U`` for the ``(n, K)`` features and ``(n, c)`` outputs, shape ``(K, c)``."""
    xp = get_namespace(Phi)
    if U.dtype != Phi.dtype:
        U = xp.astype(U, Phi.dtype)
    c = U.shape[1]
    if not is_numpy_namespace(xp) or c == 1:
        return Phi.T @ U
    if c <= _GEMV_ADJOINT_MAX:
        return xp.stack([U[:, k] @ Phi for k in range(c)], axis=1)
    return (U.T @ Phi).T


class LiftedOperator:
    """Forward and adjoint products with a head's lifted features.

    Parameters
    ----------
    feature_map : callable
        ``X_chunk (m, s, d) -> Phi (m, P, R, L)`` in the namespace of ``X``.
    X : array of shape (n, s, d)
        Token matrices, already on the compute device.
    block_shape : tuple (P, R, L)
    chunk_rows : int or None
        ``None`` materialises the features; otherwise samples per chunk.
    build_rows : int or None
        Materialised: samples per call of the feature map while the features are built
        (``None``: all at once).
    center : array of shape (n,) or None
        Sample weights (summing to one) to centre the features with. With an unpenalised
        intercept, ``o = Phi Z + b = (Phi - mean) Z + (b + mean Z)``: the centred program
        has the same optimal value and ``Z``, while the constant directions of ``Phi``
        (for example positional features, identical in every sample) no longer inflate the
        Lipschitz constant. :meth:`intercept_shift` maps the intercept back.
    """

    castable = True  # the arrays may be cast (see _factored_ops.cast_operator)

    def __init__(self, feature_map, X, block_shape, chunk_rows=None, center=None, build_rows=None):
        self.xp = get_namespace(X)
        self.feature_map = feature_map
        self.X = X
        self.block_shape = tuple(int(v) for v in block_shape)
        self.n_samples = int(X.shape[0])
        self.n_lifted = math.prod(self.block_shape)
        self.chunk_rows = chunk_rows
        self.Phi = None
        self.mean = None
        if chunk_rows is None:
            self.Phi = self._build(build_rows)
        if center is not None:
            if self.Phi is not None:
                self.mean = center @ self.Phi
                if self._owned:  # built here: centred in place, no second copy
                    self.Phi -= self.mean[None, :]
                else:  # the feature map's output may be a view of X: never write to it
                    self.Phi = self.Phi - self.mean[None, :]
            else:
                self.mean = sum(
                    center[a:b] @ self._features(a, b) for a, b in self._chunks()
                )

    def _build(self, rows):
        """All the features, computed ``rows`` samples at a time into one array (the
        feature map's scratch memory is that of one chunk)."""
        n = self.n_samples
        self._owned = False
        if rows is None or rows >= n:
            return self._features(0, n)
        self._owned = True
        Phi = self.xp.empty((n, self.n_lifted), dtype=self.X.dtype, **_device_kw(self.X))
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            Phi[start:stop, ...] = self._features(start, stop)
        return Phi

    def intercept_shift(self, Z):
        """``mean . Z`` (shape ``(c,)``): the true intercept is the centred one minus this."""
        xp = self.xp
        if self.mean is None:
            return xp.zeros((Z.shape[-1] // self.block_shape[2],), dtype=Z.dtype)
        c = Z.shape[-1] // self.block_shape[2]
        return self.mean @ xp.reshape(Z, (self.n_lifted, c))

    def _features(self, start, stop):
        Phi = self.feature_map(self.X[start:stop, ...])
        return self.xp.reshape(Phi, (stop - start, self.n_lifted))

    def _chunks(self):
        step = self.chunk_rows or self.n_samples
        for start in range(0, self.n_samples, step):
            yield start, min(start + step, self.n_samples)

    def forward(self, Z):
        """Logits without intercept, shape ``(n, c)``, for weights ``Z`` ``(P, R, L c)``."""
        xp = self.xp
        c = Z.shape[-1] // self.block_shape[2]
        Zm = xp.reshape(Z, (self.n_lifted, c))
        if self.Phi is not None:
            return features_times(self.Phi, Zm)
        O = xp.concat([features_times(self._features(a, b), Zm) for a, b in self._chunks()],
                      axis=0)
        if self.mean is not None:
            O = O - (self.mean @ Zm)[None, :]
        return O

    def block_features_times(self, p, U):
        """``Phi_i^(p)^T U`` for every sample: the (centred) features of block ``p``
        contracted with the ``k`` columns of ``U`` (``(R, k)``) over ``R``, shape
        ``(n, k, L)``. ``k`` products of one gate, not of all ``P``: the rank-one logits
        of the certificate's Newton dual point (``_dual_points._newton_dual``)."""
        xp = self.xp
        P, R, L = self.block_shape
        U = xp.astype(U, self.X.dtype)

        def part(F, mean):
            Fp = xp.reshape(F, (F.shape[0], P, R, L))[:, p, ...]
            if mean is not None:
                Fp = Fp - xp.reshape(mean, (P, R, L))[p, ...][None, ...]
            return xp.matmul(xp.matrix_transpose(U)[None, ...], Fp)  # (m, k, L)

        if self.Phi is not None:  # already centred
            return part(self.Phi, None)
        return xp.concat([part(self._features(a, b), self.mean) for a, b in self._chunks()],
                         axis=0)

    def adjoint(self, U):
        """``sum_i Phi_i (x) U_i`` reshaped to blocks ``(P, R, L c)``; ``U`` is ``(n, c)``."""
        xp = self.xp
        P, R, L = self.block_shape
        c = U.shape[1]
        if self.Phi is not None:
            G = features_adjoint(self.Phi, U)
        else:
            G = None
            for a, b in self._chunks():
                part = features_adjoint(self._features(a, b), U[a:b, ...])
                G = part if G is None else G + part
            if self.mean is not None:
                G = G - self.mean[:, None] * xp.sum(U, axis=0)[None, :]
        return xp.reshape(G, (P, R, L * c))


class GatedTokenOperator:
    """Matrix-free operator for gated token-pooled features (the token-MLP program).

    ``Phi_i^(p)[f] = (1/s) sum_t D[i, t, p] X[i, t, f]`` (block shape ``(P, d, 1)``), the
    features of :func:`~skconvexattn.heads.mlp.mlp_features`, applied without forming them:

    * forward: ``o_i = (1/s) sum_t sum_p D[i, t, p] x_it^T Z_p``: the GEMM
      ``(n s, d) @ (d, P c)``, a mask, and a GEMM with the ``(P c, c)`` gate-summing matrix;
    * adjoint: ``Grad_p = (1/s) sum_{i,t} D[i, t, p] x_it U_i^T``: the outputs spread over
      the gates (a GEMM), a mask, and the GEMM ``(d, n s) @ (n s, P c)``.

    The materialised features hold ``n P d`` floats and every product is a pass over them;
    this form reads ``X`` (``n s d``) and the masks repeated per output (``n s P c``, kept
    once per ``c``). It moves less memory for few tokens and few outputs (one token per
    sample, two classes: the convex gated-ReLU MLP); with many tokens or classes the
    materialised features, which pool the tokens once, are cheaper. Same interface as
    :class:`LiftedOperator` (``forward``, ``adjoint``, ``intercept_shift``, centring).

    Parameters
    ----------
    X : array of shape (n, s, d)
    D : array of shape (n, s, P)
        0/1 gate masks in the dtype of ``X``.
    center : array of shape (n,) or None
        Sample weights to centre the features with (see :class:`LiftedOperator`).
    """

    plan_name = "matrix-free"
    castable = True  # the arrays may be cast (see _factored_ops.cast_operator)

    def __init__(self, X, D, center=None):
        xp = self.xp = get_namespace(X)
        n, s, d = X.shape
        P = D.shape[2]
        self.n_samples, self.s, self.d, self.P = int(n), int(s), int(d), int(P)
        self.block_shape = (self.P, self.d, 1)
        self.n_lifted = self.P * self.d
        self.Xf = xp.reshape(X, (n * s, d))
        self.D = xp.reshape(D, (n * s, P))
        self._cache = {}
        self.mean = None
        if center is not None:
            self.mean = xp.reshape(self._adjoint_raw(center[:, None]), (self.n_lifted,))

    def _expanded(self, c):
        """Gate masks repeated per output, ``(n s, P c)``, and the ``(P c, c)`` matrix that
        sums the ``P`` gates of each output: both products become plain GEMMs."""
        cached = self._cache.get(c)
        if cached is None:
            xp, P = self.xp, self.P
            ns = self.Xf.shape[0]
            ones = xp.ones((1, 1, c), dtype=self.Xf.dtype)
            Drep = xp.reshape(self.D[:, :, None] * ones, (ns, P * c))
            eye = xp.eye(c, dtype=self.Xf.dtype)
            Ssum = xp.reshape(xp.broadcast_to(eye[None, :, :], (P, c, c)), (P * c, c))
            cached = self._cache[c] = (Drep, Ssum)
        return cached

    def _adjoint_raw(self, U):
        xp = self.xp
        n, s, P = self.n_samples, self.s, self.P
        c = U.shape[1]
        Drep, Ssum = self._expanded(c)
        Ut = xp.reshape(xp.broadcast_to(U[:, None, :] / s, (n, s, c)), (n * s, c))
        W = Drep * (Ut @ xp.matrix_transpose(Ssum))  # (n s, P c)
        G = xp.matrix_transpose(self.Xf) @ W  # (d, P c)
        return xp.permute_dims(xp.reshape(G, (self.d, P, c)), (1, 0, 2))  # (P, d, c)

    def forward(self, Z):
        """Logits without intercept, shape ``(n, c)``, for ``Z`` of shape ``(P, d, c)``."""
        xp = self.xp
        n, s, P, d = self.n_samples, self.s, self.P, self.d
        c = Z.shape[-1]
        Drep, Ssum = self._expanded(c)
        Zc = xp.reshape(xp.permute_dims(Z, (1, 0, 2)), (d, P * c))
        T = ((self.Xf @ Zc) * Drep) @ Ssum  # (n s, c)
        O = xp.sum(xp.reshape(T, (n, s, c)), axis=1) / s
        if self.mean is not None:
            O = O - (self.mean @ xp.reshape(Z, (self.n_lifted, c)))[None, :]
        return O

    def adjoint(self, U):
        """``sum_i Phi_i (x) U_i`` as blocks ``(P, d, c)``; ``U`` is ``(n, c)``."""
        xp = self.xp
        G = self._adjoint_raw(U)
        if self.mean is not None:
            c = U.shape[1]
            G = G - xp.reshape(self.mean[:, None] * xp.sum(U, axis=0)[None, :], (self.P, self.d, c))
        return G

    def intercept_shift(self, Z):
        """``mean . Z`` (shape ``(c,)``): the true intercept is the centred one minus this."""
        xp = self.xp
        c = Z.shape[-1]
        if self.mean is None:
            return xp.zeros((c,), dtype=Z.dtype)
        return self.mean @ xp.reshape(Z, (self.n_lifted, c))
