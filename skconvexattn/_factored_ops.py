"""Matrix-free products of the heads whose convex blocks are products of two weight
matrices (self-attention, MLP-Mixer), on *factors* instead of lifted features.

A block ``Z_p`` of shape ``(R, L c)`` is held as a sum of ``r`` rank-one terms, one head
of the non-convex network each: ``A[p, j]`` (the first-layer weight, shape ``a_shape``:
``(d, d)`` query-key for self-attention, ``(s, s)`` token mixing for the Mixer) and
``B[p, j]`` (the second-layer weight, ``(d, c)``), i.e. ``Z_p = sum_j vec(A_pj) vec(B_pj)^T``.
Arrays: ``A`` of shape ``(P, r) + a_shape``, ``B`` of shape ``(P, r, d, c)``.

Each operator gives, chunk by chunk of samples (never lifting a feature):

* ``forward(A, B)``: the logits ``o_i = sum_p <Phi_i^(p), Z_p>`` (no intercept), ``(n, c)``;
* ``grad_a(T, B)``: ``Grad_p v`` for every column ``v = vec(B_pj)``, shaped like ``A``;
* ``grad_b(T, A)``: ``Grad_p^T u`` for every column ``u = vec(A_pj)``, shaped like ``B``;

where ``Grad_p = sum_i Phi_i^(p) (x) T_i`` and ``T`` (``(n, c)``) holds the weighted loss
gradients ``w_i theta_i``. ``value_and_grads`` fuses the three for the factored
objective. ``docs/factored.rst`` derives and explains
them. Every product is a batched GEMM; the cost per sample, gate and head is about
``2 d^2 + s d + d c`` multiply-adds for self-attention (``s^2 d + s d c`` for the Mixer),
against ``d^3 c`` (``s^2 d c``) for one lifted product.

Padding. ``inv_len`` (``(n,)``) is ``1 / s_i`` with ``s_i`` the number of real tokens of
sample ``i``; padding tokens are zero rows of ``X`` and carry zero gate masks.
"""

from __future__ import annotations

import copy
import math

from ._backend import get_namespace

__all__ = ["AttentionFactorOperator", "LiftedFactorOperator", "MixerFactorOperator",
           "cast_operator", "floating_bytes"]


class _FactorOperator:
    """Shared chunking and the fused value-and-gradient pass."""

    castable = True  # see cast_operator

    def __init__(self, X, inv_len, chunk_rows):
        self.xp = get_namespace(X)
        self.X = X
        self.n_samples, self.s, self.d = (int(v) for v in X.shape)
        self.inv_len = inv_len
        self.chunk_rows = int(chunk_rows) if chunk_rows else self.n_samples
        #: ``rows_for(r, c)``: samples per chunk of a product with ``r`` heads per block
        #: and ``c`` outputs (set by the head from its scratch memory and budget); when
        #: ``None``, every product takes ``chunk_rows``
        self.rows_for = None

    def _rows(self, r, c):
        """Samples per chunk of a product with ``r`` heads per block and ``c`` outputs."""
        return self.chunk_rows if self.rows_for is None else max(1, int(self.rows_for(r, c)))

    def _chunks(self, r, c):
        rows = self._rows(r, c)
        for a in range(0, self.n_samples, rows):
            yield a, min(a + rows, self.n_samples)

    # heads implement _keys(a, b, A), _values(a, b, B), _contract(a, b, K, V),
    # _grad_a_chunk(a, b, V, T), _grad_b_chunk(a, b, K, T)

    def forward(self, A, B):
        """Logits without intercept, ``(n, c)``."""
        xp = self.xp
        parts = [
            self._contract(a, b, self._keys(a, b, A), self._values(a, b, B))
            for a, b in self._chunks(A.shape[1], B.shape[-1])
        ]
        O = parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)
        return O * self.inv_len[:, None]

    def grad_a(self, T, B):
        """``Grad_p vec(B_pj)`` reshaped like ``A`` (``T``: ``(n, c)`` weighted gradients)."""
        G = None
        Ts = T * self.inv_len[:, None]
        for a, b in self._chunks(B.shape[1], T.shape[1]):
            part = self._grad_a_chunk(a, b, self._values(a, b, B), Ts[a:b, ...])
            G = part if G is None else G + part
        return G

    def grad_b(self, T, A):
        """``Grad_p^T vec(A_pj)`` reshaped like ``B``."""
        G = None
        Ts = T * self.inv_len[:, None]
        for a, b in self._chunks(A.shape[1], T.shape[1]):
            part = self._grad_b_chunk(a, b, self._keys(a, b, A), Ts[a:b, ...])
            G = part if G is None else G + part
        return G

    def pair_logits(self, A, B):
        """The logits of every pair of a block's heads, ``(n, P, k, k, c)``: entry
        ``[i, p, a, b]`` is ``o_i`` of the rank-one block ``vec(A_pa) vec(B_pb)^T`` alone.

        One key and one value product with ``k`` heads per block, then a contraction
        over the tokens (``k^2`` pairs instead of ``k``): the directions of the
        certificate's Newton dual point (``_dual_points._newton_dual``).
        """
        xp = self.xp
        parts = [
            self._pair_chunk(a, b, self._keys(a, b, A), self._values(a, b, B))
            for a, b in self._chunks(A.shape[1] ** 2, B.shape[-1])
        ]
        D = parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)
        return D * self.inv_len[:, None, None, None, None]

    def value_and_grads(self, A, B, intercept, datafit, Y, w):
        """Datafit value, its gradients in ``A``, ``B`` and the intercept, and the logits.

        One pass over the samples when they fit in one chunk (keys and values are kept
        between the forward and the backward products); otherwise the forward pass runs
        first and the backward pass recomputes them chunk by chunk.
        """
        if self._rows(A.shape[1], Y.shape[1]) >= self.n_samples:
            K = self._keys(0, self.n_samples, A)
            V = self._values(0, self.n_samples, B)
            O = self._contract(0, self.n_samples, K, V) * self.inv_len[:, None]
            O = O + intercept[None, :]
            f, theta = datafit.value_and_gradient(O, Y, w)
            T = w[:, None] * theta
            Ts = T * self.inv_len[:, None]
            gA = self._grad_a_chunk(0, self.n_samples, V, Ts)
            gB = self._grad_b_chunk(0, self.n_samples, K, Ts)
        else:
            O = self.forward(A, B) + intercept[None, :]
            f, theta = datafit.value_and_gradient(O, Y, w)
            T = w[:, None] * theta
            gA, gB = self.grad_a(T, B), self.grad_b(T, A)
        gb = w @ theta
        return f, gA, gB, gb, O


class AttentionFactorOperator(_FactorOperator):
    """Self-attention on factors: ``A`` ``(P, r, d, d)`` query-key, ``B`` ``(P, r, d, c)``.

    With ``S_sigma = sum_{t on side sigma} x_t`` (per sample and gate) the logits are
    ``o_i = (1/s_i) sum_{p, j} sum_t (x_t^T A_pj^T S_sigma(t)) (x_t^T B_pj)``:

    * keys ``K = S^T A`` (one batched GEMM over gates), scores ``e_t = x_t . K_sigma(t)``;
    * values ``x_t^T B`` (one GEMM over all tokens);
    * the logits contract scores and values over tokens and heads.

    Parameters
    ----------
    X : array (n, s, d)
        Tokens (padding rows zero).
    sides : array (n, s, P) or None
        0/1 side of each token for each gate hyperplane; ``None`` for the linear
        activation (one block, every token on one side).
    inv_len : array (n,)
    chunk_rows : int or None
    """

    def __init__(self, X, sides, inv_len, chunk_rows=None):
        super().__init__(X, inv_len, chunk_rows)
        xp = self.xp
        self.sides = sides
        self.P = 1 if sides is None else int(sides.shape[2])
        self.a_shape = (self.d, self.d)
        if sides is None:
            S = xp.sum(X, axis=1)[:, None, None, :]  # (n, 1, 1, d)
        else:
            side = xp.permute_dims(sides, (0, 2, 1))  # (n, P, s)
            S = xp.stack([side @ X, (1.0 - side) @ X], axis=2)  # (n, P, 2, d)
        # gate-major for the batched key GEMM: (P, n * n_sides, d)
        self.n_sides = int(S.shape[2])
        self.S = xp.reshape(
            xp.permute_dims(S, (1, 0, 2, 3)), (self.P, self.n_samples * self.n_sides, self.d)
        )

    def _S(self, a, b):
        k = self.n_sides
        return self.S[:, a * k : b * k, :]

    def _keys(self, a, b, A):
        """Scores ``e[i, t, p, j] = x_t^T A_pj^T S_sigma(t)``: ``(m, s, P, r)``."""
        xp = self.xp
        P, r, d = A.shape[0], A.shape[1], self.d
        m, k = b - a, self.n_sides
        Am = xp.reshape(xp.permute_dims(A, (0, 2, 1, 3)), (P, d, r * d))  # rows a, cols (j,k)
        K = xp.reshape(self._S(a, b) @ Am, (P, m, k, r, d))  # keys, one GEMM per gate
        # per sample: (s, d) @ (d, P k r), the scores of every token against every key
        Kt = xp.reshape(xp.permute_dims(K, (1, 4, 0, 2, 3)), (m, d, P * k * r))
        E = xp.reshape(self.X[a:b, ...] @ Kt, (m, self.s, P, k, r))
        if self.sides is None:
            return E[:, :, :, 0, :]
        side = self.sides[a:b, ...][:, :, :, None]  # (m, s, P, 1)
        return side * E[:, :, :, 0, :] + (1.0 - side) * E[:, :, :, 1, :]

    def _values(self, a, b, B):
        """``x_t^T B_pj``: ``(m, s, P, r, c)``."""
        xp = self.xp
        P, r, d, c = B.shape
        m = b - a
        Bm = xp.reshape(xp.permute_dims(B, (2, 0, 1, 3)), (d, P * r * c))
        V = xp.reshape(self.X[a:b, ...], (m * self.s, d)) @ Bm
        return xp.reshape(V, (m, self.s, P, r, c))

    def _contract(self, a, b, E, V):
        xp = self.xp
        m, s, P, r = E.shape
        c = V.shape[-1]
        O = xp.reshape(E, (m, 1, s * P * r)) @ xp.reshape(V, (m, s * P * r, c))
        return xp.reshape(O, (m, c))

    def _pair_chunk(self, a, b, E, V):
        """``sum_t e[i, t, p, a] (x_t^T B_pb)``: ``(m, P, k, k, c)``."""
        xp = self.xp
        m, s, P, k = E.shape
        c = V.shape[-1]
        Et = xp.permute_dims(E, (0, 2, 3, 1))  # (m, P, k, s)
        Vt = xp.reshape(xp.permute_dims(V, (0, 2, 1, 3, 4)), (m, P, s, k * c))
        return xp.reshape(Et @ Vt, (m, P, k, k, c))

    def _grad_b_chunk(self, a, b, E, T):
        """``sum_{i,t} x_t e[i,t,p,j] T_i``: ``(P, r, d, c)``."""
        xp = self.xp
        m, s, P, r = E.shape
        c = T.shape[1]
        M = E[:, :, :, :, None] * T[:, None, None, None, :]  # (m, s, P, r, c)
        G = xp.matrix_transpose(xp.reshape(self.X[a:b, ...], (m * s, self.d))) @ xp.reshape(
            M, (m * s, P * r * c)
        )
        return xp.permute_dims(xp.reshape(G, (self.d, P, r, c)), (1, 2, 0, 3))

    def _grad_a_chunk(self, a, b, V, T):
        """``sum_i sum_sigma S_sigma h_sigma^T`` with ``h_sigma = sum_{t in sigma} g_t x_t``
        and ``g_t = x_t^T B_pj T_i``: ``(P, r, d, d)``."""
        xp = self.xp
        m, s, P, r, c = V.shape
        d, k = self.d, self.n_sides
        g = xp.reshape(xp.reshape(V, (m, s * P * r, c)) @ T[:, :, None], (m, s, P, 1, r))
        if self.sides is not None:
            side = self.sides[a:b, ...][:, :, :, None, None]  # (m, s, P, 1, 1)
            g = xp.concat([g * side, g * (1.0 - side)], axis=3)  # (m, s, P, 2, r)
        # per sample: (P k r, s) @ (s, d)
        gt = xp.matrix_transpose(xp.reshape(g, (m, s, P * k * r)))
        H = xp.reshape(gt @ self.X[a:b, ...], (m, P, k, r, d))
        Hp = xp.reshape(xp.permute_dims(H, (1, 0, 2, 3, 4)), (P, m * k, r * d))
        G = xp.matrix_transpose(self._S(a, b)) @ Hp  # (P, d, r*d): rows a, cols (j, k)
        return xp.permute_dims(xp.reshape(G, (P, d, r, d)), (0, 2, 1, 3))


class MixerFactorOperator(_FactorOperator):
    """MLP-Mixer on factors: ``A`` ``(P, r, s, s)`` token mixing, ``B`` ``(P, r, d, c)``.

    ``o_i = (1/s_i) sum_{p, j} 1^T (M_p^(i) o (A_pj X_i)) B_pj``: the mixed tokens
    ``A_pj X_i`` (one GEMM over all samples), masked and pooled over tokens, then one GEMM
    with the stacked ``B``.

    Everything per sample is held gate-major with the samples' features as columns,
    ``(P, r, s, m d)``, the layout of the token-mixing GEMM's output: the masks multiply
    it and the adjoint's GEMM reads it without a transposed copy. The gate masks are
    computed once and kept when they take at most ``cache_bytes`` (``P s n d`` numbers);
    otherwise they are recomputed chunk by chunk at every product.

    Parameters
    ----------
    X : array (n, s, d)
        Tokens (padding rows zero).
    masks : callable or None
        ``masks(a, b)`` gives the gate masks ``(m, P, s, d)`` of samples ``a:b`` (zero on
        padding positions); ``None`` for the linear activation (all ones, one block).
    n_blocks : int
    inv_len : array (n,)
    chunk_rows : int or None
    cache_bytes : float, default=0
        Largest size of the kept masks, in bytes.
    """

    def __init__(self, X, masks, n_blocks, inv_len, chunk_rows=None, cache_bytes=0):
        super().__init__(X, inv_len, chunk_rows)
        self.masks = masks
        self.P = int(n_blocks)
        self.a_shape = (self.s, self.s)
        xp = self.xp
        # tokens as columns: (s, n d), for the token-mixing GEMM over all samples
        self.Xc = xp.reshape(xp.permute_dims(X, (1, 0, 2)), (self.s, self.n_samples * self.d))
        self.Mc = None
        if masks is not None and self.keeps_masks(
            self.P, self.n_samples, self.s, self.d, xp.finfo(X.dtype).bits // 8, cache_bytes
        ):
            self.Mc = xp.astype(self._gate_major(0, self.n_samples), X.dtype)

    @staticmethod
    def keeps_masks(n_blocks, n, s, d, itemsize, cache_bytes):
        """Whether the operator keeps the gate masks (``n_blocks s d`` numbers per sample)
        within ``cache_bytes``."""
        return n_blocks * n * s * d * itemsize <= cache_bytes

    def _gate_major(self, a, b):
        """The masks of samples ``a:b`` as ``(P', s, m d)`` (``P'``: 1 or ``P``)."""
        xp = self.xp
        M = self.masks(a, b)  # (m, P', s, d), or (m, P', s, 1) alike for every feature
        m, Pm = M.shape[0], M.shape[1]
        M = xp.broadcast_to(M, (m, Pm, self.s, self.d))
        return xp.reshape(xp.permute_dims(M, (1, 2, 0, 3)), (Pm, self.s, m * self.d))

    def _masks_of(self, a, b):
        if self.masks is None:
            return None
        if self.Mc is not None:
            return self.Mc[:, :, a * self.d : b * self.d]
        return self._gate_major(a, b)

    def _keys(self, a, b, A):
        """Pooled masked mixing ``sum_t M[t, f] (A X)[t, f]``: ``(P, r, m d)``."""
        xp = self.xp
        P, r, s, _ = A.shape
        Y = xp.reshape(xp.reshape(A, (P * r * s, s)) @ self.Xc[:, a * self.d : b * self.d],
                       (P, r, s, (b - a) * self.d))
        M = self._masks_of(a, b)
        if M is not None:
            Y *= M[:, None, :, :]
        return xp.sum(Y, axis=2)

    def _values(self, a, b, B):
        return B

    def _contract(self, a, b, K, B):
        xp = self.xp
        P, r, c = B.shape[0], B.shape[1], B.shape[-1]
        m, d = b - a, self.d
        Km = xp.reshape(xp.permute_dims(xp.reshape(K, (P * r, m, d)), (1, 0, 2)), (m, P * r * d))
        return Km @ xp.reshape(B, (P * r * d, c))

    def _pair_chunk(self, a, b, K, B):
        """``sum_f K[p, a, i, f] B[p, b, f, :]``: ``(m, P, k, k, c)``."""
        xp = self.xp
        P, k, d, c = B.shape
        m = b - a
        Bt = xp.reshape(xp.permute_dims(B, (0, 2, 1, 3)), (P, d, k * c))
        D = xp.reshape(xp.reshape(K, (P, k * m, d)) @ Bt, (P, k, m, k, c))
        return xp.permute_dims(D, (2, 0, 1, 3, 4))

    def _grad_b_chunk(self, a, b, K, T):
        xp = self.xp
        P, r = K.shape[0], K.shape[1]
        m, d, c = b - a, self.d, T.shape[1]
        G = xp.matrix_transpose(xp.reshape(K, (P * r, m, d))) @ T  # (P r, d, c)
        return xp.reshape(G, (P, r, d, c))

    def _grad_a_chunk(self, a, b, B, T):
        """``sum_{i, f} M[t, f] (B_pj T_i)[f] X_i[t', f]``: ``(P, r, s, s)``."""
        xp = self.xp
        P, r, d, c = B.shape
        m, s = b - a, self.s
        beta = xp.reshape(B, (P * r, d, c)) @ xp.matrix_transpose(T)  # (P r, d, m)
        beta = xp.reshape(xp.permute_dims(beta, (0, 2, 1)), (P, r, 1, m * d))
        M = self._masks_of(a, b)
        if M is None:
            N = xp.broadcast_to(beta, (P, r, s, m * d))
        else:
            N = M[:, None, :, :] * beta  # (P, r, s, m d)
        N = xp.reshape(N, (P * r * s, m * d))
        return xp.reshape(N @ xp.matrix_transpose(self.Xc[:, a * d : b * d]), (P, r, s, s))


def chunk_rows_for(n, per_sample_floats, itemsize, budget_bytes):
    """Samples per chunk so that the scratch arrays of one product fit ``budget_bytes``."""
    per = max(per_sample_floats * itemsize, 1)
    return int(max(1, min(n, math.floor(budget_bytes / per))))


class LiftedFactorOperator:
    """Factors on any lifted operator: ``Z_p = A_p^T B_p`` formed, then one lifted product.

    For heads whose blocks are small enough to hold (``coef_`` of ``P R L c`` weights; the
    MLP and FNO heads, and the attention heads on few features), the factored solver runs
    on the lifted operator itself: each value-and-gradient pass is one ``forward`` and one
    ``adjoint`` of it, as one FISTA step is, plus GEMMs of ``P r (R + L c)`` numbers.
    ``A`` has shape ``(P, r, R)``, ``B`` ``(P, r, L, c)``; ``intercept_shift`` is the lifted
    operator's (its features may be centred).
    """

    castable = True  # see cast_operator

    def __init__(self, op, block_shape, a_shape=None):
        self.op = op
        self.P, self.R, self.d = (int(v) for v in block_shape)
        self.a_shape = (self.R,) if a_shape is None else tuple(int(v) for v in a_shape)
        if math.prod(self.a_shape) != self.R:
            raise ValueError(f"a_shape {self.a_shape} does not hold R={self.R} numbers")
        self.chunk_rows = getattr(op, "chunk_rows", None)

    def _flat(self, A):
        xp = get_namespace(A)
        return xp.reshape(A, (A.shape[0], A.shape[1], self.R))

    def _Z(self, A, B):
        xp = get_namespace(A)
        P, r = B.shape[0], B.shape[1]
        return xp.matmul(xp.permute_dims(self._flat(A), (0, 2, 1)), xp.reshape(B, (P, r, -1)))

    def intercept_shift(self, A, B):
        """The intercept correction of the lifted operator at ``Z = A^T B``."""
        return self.op.intercept_shift(self._Z(A, B))

    def forward(self, A, B):
        """Logits without intercept, ``(n, c)``."""
        return self.op.forward(self._Z(A, B))

    def _blocks(self, T):
        return self.op.adjoint(T)  # (P, R, L c)

    def grad_a(self, T, B):
        """``Grad_p vec(B_pj)``, shaped like ``A``."""
        xp = get_namespace(B)
        P, r = B.shape[0], B.shape[1]
        G = self._blocks(T)
        gA = xp.matmul(xp.reshape(B, (P, r, -1)), xp.permute_dims(G, (0, 2, 1)))
        return xp.reshape(gA, (P, r) + self.a_shape)

    def grad_b(self, T, A):
        """``Grad_p^T vec(A_pj)``, shaped ``(P, r, L, c)``."""
        xp = get_namespace(A)
        P, r = A.shape[0], A.shape[1]
        G = self._blocks(T)
        return xp.reshape(xp.matmul(self._flat(A), G), (P, r, self.d, T.shape[1]))

    def gradient_blocks(self, T):
        """The gradient blocks ``Grad_p`` themselves, ``(P, R, L c)``."""
        return self._blocks(T)

    @property
    def pair_logits(self):
        """The logits of every pair of a block's heads, ``(n, P, k, k, c)`` (see
        :meth:`_FactorOperator.pair_logits`), through the lifted operator's
        :meth:`~skconvexattn._operator.LiftedOperator.block_features_times` (``k``
        products of one gate per block); ``None`` when it has none."""
        features_times = getattr(self.op, "block_features_times", None)
        if features_times is None:
            return None

        def pair_logits(A, B):
            xp = get_namespace(A)
            P, k = A.shape[0], A.shape[1]
            L, c = B.shape[2], B.shape[3]
            Af = self._flat(A)
            parts = []
            for p in range(P):
                K = features_times(p, xp.matrix_transpose(Af[p, ...]))  # (n, k, L)
                n = K.shape[0]
                Bp = xp.reshape(xp.permute_dims(B[p, ...], (1, 0, 2)), (L, k * c))
                parts.append(xp.reshape(xp.reshape(K, (n * k, L)) @ xp.astype(Bp, K.dtype),
                                        (n, 1, k, k, c)))
            return xp.concat(parts, axis=1)

        return pair_logits

    def value_and_grads(self, A, B, intercept, datafit, Y, w):
        """Datafit value, its gradients in ``A``, ``B`` and the intercept, and the logits:
        one forward and one adjoint product."""
        return self.value_grads_blocks(A, B, intercept, datafit, Y, w)[:5]

    def value_grads_blocks(self, A, B, intercept, datafit, Y, w):
        """:meth:`value_and_grads` and the gradient blocks ``Grad_p`` it formed on the
        way, ``(P, R, L c)`` (the factored solver's dual probe reads them)."""
        xp = get_namespace(A)
        P, r = A.shape[0], A.shape[1]
        O = self.op.forward(self._Z(A, B)) + intercept[None, :]
        f, theta = datafit.value_and_gradient(O, Y, w)
        G = self._blocks(w[:, None] * theta)
        Bm = xp.reshape(B, (P, r, -1))
        gA = xp.reshape(xp.matmul(Bm, xp.permute_dims(G, (0, 2, 1))), A.shape)
        gB = xp.reshape(xp.matmul(self._flat(A), G), B.shape)
        gb = w @ theta
        return f, gA, gB, gb, O, G


def cast_operator(op, dtype):
    """A copy of the operator ``op`` whose floating arrays are cast to ``dtype`` (its
    products then run in that precision), or ``None`` when ``op`` (or an operator it
    wraps) is not one of the in-memory operators that allow it (a Dask operator, say).

    Arrays are cast whole (the feature map of chunked lifted features computes from the
    cast tokens); caches are dropped. The caller bounds the memory: see
    :func:`floating_bytes`.
    """
    if not getattr(op, "castable", False):
        return None
    new = copy.copy(op)
    for key, value in vars(op).items():
        if getattr(value, "castable", False):
            inner = cast_operator(value, dtype)
            if inner is None:
                return None
            setattr(new, key, inner)
        elif callable(getattr(value, "forward", None)):
            return None  # wraps an operator that cannot be cast
        elif _is_floating(value):
            setattr(new, key, get_namespace(value).astype(value, dtype))
        elif isinstance(value, dict):
            setattr(new, key, {})
    return new


def floating_bytes(op, itemsize=8):
    """Bytes of ``op``'s floating arrays (and those of the operators it wraps) at
    ``itemsize`` bytes per number: the memory :func:`cast_operator` allocates."""
    total = 0
    for value in vars(op).values():
        if getattr(value, "castable", False):
            total += floating_bytes(value, itemsize)
        elif _is_floating(value):
            total += math.prod(value.shape) * itemsize
    return total


def _is_floating(value):
    if not (hasattr(value, "dtype") and hasattr(value, "shape")):
        return False
    try:
        return bool(get_namespace(value).isdtype(value.dtype, "real floating"))
    except TypeError:  # not an array of a namespace
        return False
