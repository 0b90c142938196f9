"""Convex self-attention head and its recovered network (``docs/heads.rst``).

Non-convex block: ``Yhat_i = sum_j sigma(X_i W_1j X_i^T) X_i W_2j``, average-pooled over
tokens. Its convex program has one weight block per gate, ``Z_p`` of shape
``(d*d, d*c)`` (rows ``(a, k)`` = ``vec(W_1)``, columns ``(l, b)`` = ``vec(W_2)``), with
lifted features

    Phi_i^(p)[a, k, l] = (1/s) sum_{t, t'} M_p[t, t'] x_t[a] x_t'[k] x_t'[l].

Gates. ``M_p[t, t'] = 1`` exactly when tokens ``t`` and ``t'`` lie on the same side of a
random hyperplane ``h_p . x + c_p = 0`` (``H_p = h_p h_p^T`` of the paper, plus an offset
so that the hyperplane passes through the data). Splitting the token sum by side gives
the features without ever forming the ``s x s`` masks:

    Phi^(p) = (1/s) (S1 (x) G1 + S0 (x) G0),   S1 = sum_{t on side 1} x_t,
                                               G1 = sum_{t on side 1} x_t x_t^T

(and the same for side 0): two batched GEMMs per gate. With ``activation='linear'`` the
mask is all ones and ``Phi = xbar (x) X^T X``.

Padding. Padding tokens (rows entirely NaN) are set to zero and are on neither side of
any gate, so no token attends to them, and the pooling divides by the number ``s_i`` of
real tokens of the sample instead of ``s``: the features of a padded sample are those of
the sample without its padding rows, wherever the padding sits.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils import Bunch
from sklearn.utils._param_validation import StrOptions

from .._backend import get_namespace
from .._base import BaseConvexHead
from .._factored_ops import AttentionFactorOperator
from .._gates import HyperplaneGatesMixin, padding_ids, token_sides
from .._network import RecoveredNetwork, _as_tokens, head_gate_masks
from .._padding import split_padding

__all__ = [
    "ConvexSelfAttentionClassifier",
    "SelfAttentionNetwork",
    "self_attention_features",
    "token_sides",
]


def self_attention_features(X, H=None, c=None):
    """Lifted self-attention features.

    Parameters
    ----------
    X : array of shape (m, s, d)
        Token matrices; rows entirely NaN are padding (zero, on no side of any gate,
        left out of the pooling).
    H, c : arrays of shape (P, d) and (P,), or None
        Gate hyperplanes; ``None`` for the linear activation (one block).

    Returns
    -------
    Phi : array of shape (m, P, d*d, d)
        Rows ``(a, k)``, columns ``l``; pooled with ``1 / s_i`` (``s_i`` real tokens).
    """
    xp = get_namespace(X)
    m, s, d = X.shape
    X, real, counts = split_padding(X)
    XT = xp.matrix_transpose(X)  # (m, d, s)
    if H is None:
        S = xp.sum(X, axis=1)  # (m, d)
        G = XT @ X  # (m, d, d)
        Phi = S[:, :, None, None] * G[:, None, :, :] / counts[:, None, None, None]
        return xp.reshape(Phi, (m, 1, d * d, d))
    P = H.shape[0]
    # padding tokens are on neither side: the masks are zero there
    side = xp.permute_dims(token_sides(X, H, c) * real[:, :, None], (0, 2, 1))  # (m, P, s)
    on = real[:, None, :]
    Phi = None
    for mask in (side, on - side):
        Sx = mask @ X  # (m, P, d)
        Gx = (XT[:, None, :, :] * mask[:, :, None, :]) @ X[:, None, :, :]  # (m, P, d, d)
        part = Sx[:, :, :, None, None] * Gx[:, :, None, :, :]
        Phi = part if Phi is None else Phi + part
    return xp.reshape(Phi / counts[:, None, None, None, None], (m, P, d * d, d))


class SelfAttentionNetwork(RecoveredNetwork):
    """Recovered self-attention block, with its own forward pass.

    ``o = sum_j (1/s) 1^T (M_p o (X W_1j X^T)) X W_2j + b``.

    ``W1`` has shape ``(n_heads, d, d)`` (query-key), ``W2`` ``(n_heads, d, c)``
    (value-output); ``M_p[t, t'] = 1`` when tokens ``t`` and ``t'`` lie on the same side of
    the hyperplane ``gates["H"][p] . x + gates["c"][p] = 0`` (all ones for linear), zero
    in the rows and columns of padding tokens.
    """

    architecture = "self_attention"
    _gate_buffers = ("H", "c")
    _work_per_head = staticmethod(lambda s, d: 4 * s + 6 * d)

    @staticmethod
    def _factor_shapes(s, d, c):
        return (d, d), (d, c)

    @staticmethod
    def _masks(xp, X0, real, t):
        """Same-side masks of every head's gate, ``(n, m, s, s)`` (or ``(n, 1, s, s)``)."""
        pair = (real[:, :, None] * real[:, None, :])[:, None, :, :]  # both tokens real
        if "gate_H" not in t:
            return pair
        side = head_gate_masks(xp, token_sides(X0, t["gate_H"], t["gate_c"]), t["head_gate"], 2)
        side = xp.permute_dims(side, (0, 2, 1))  # (n, m, s)
        other = 1 - side
        return pair * (
            side[:, :, :, None] * side[:, :, None, :] + other[:, :, :, None] * other[:, :, None, :]
        )

    @classmethod
    def _head_outputs(cls, xp, X0, real, t):
        # 1^T (M o X W_1j X^T) without the (s, s) scores: column t' of the masked scores sums
        # x_t^T W_1j x_t' over the real tokens t on the side of t', so it is
        # k_sigma^T x_t' with the key k_sigma = W_1j^T S_sigma of that side's token sum
        # S_sigma. O(d^2 + s d) per sample and head instead of O(s^2 d), and no (n, m, s, s)
        # tensors (the recovered network trains in torch at the convex head's cost)
        if "gate_H" in t:
            side = head_gate_masks(xp, token_sides(X0, t["gate_H"], t["gate_c"]), t["head_gate"], 2)
            side = xp.permute_dims(side, (0, 2, 1)) * real[:, None, :]  # (n, m, s)
            sides = (side, real[:, None, :] - side)
        else:
            sides = (real[:, None, :],)  # one side: every real token
        XT = xp.matrix_transpose(X0)  # (n, d, s)
        W1, W2 = t["W1"], t["W2"]
        m, d = W1.shape[0], W1.shape[1]
        pooled = None
        for on in sides:
            S = xp.permute_dims(on @ X0, (1, 0, 2))  # token sums, head-major: (m, n, d)
            K = xp.permute_dims(S @ W1, (1, 0, 2))  # keys S^T W_1j, one GEMM per head
            part = on * (K @ XT)  # k^T x_t' for the tokens t' on that side: (n, m, s)
            pooled = part if pooled is None else pooled + part
        H = pooled @ X0  # sum_t' pooled_t' x_t': (n, m, d)
        # sum_j H_j W_2j: one GEMM over (head, feature)
        return xp.reshape(H, (H.shape[0], m * d)) @ xp.reshape(W2, (m * d, W2.shape[2]))

    def attention_masks(self, X):
        """Same-side masks ``M_p[t, t']`` of every gate: ``(n, P, s, s)`` (ones if linear),
        zero in the rows and columns of padding tokens."""
        X0, real, _ = split_padding(_as_tokens(X, self.token_shape))
        xp = get_namespace(X0)
        t = {}
        if self.gates:
            P = self.gates["H"].shape[0]
            t = {"gate_H": self.gates["H"].astype(X0.dtype),
                 "gate_c": self.gates["c"].astype(X0.dtype), "head_gate": np.arange(P)}
        return self._masks(xp, X0, real, t)


class ConvexSelfAttentionClassifier(HyperplaneGatesMixin, BaseConvexHead):
    """Self-attention classification head trained to global optimality.

    Fits the convex equivalent of a self-attention block with weight decay,
    ``Yhat_i = sum_j sigma(X_i W_1j X_i^T) X_i W_2j``, average-pooled over tokens (plus an
    intercept), with ``sigma`` linear or gated ReLU. The convex program is a linear model
    in lifted token features with a block nuclear-norm penalty, solved by accelerated
    proximal gradient to a certified duality gap (Sahiner et al., ICML 2022).

    Parameters
    ----------
    %(alpha)s
    activation : {"gated_relu", "linear"}, default="gated_relu"
        ``"linear"``: linear attention, one block. ``"gated_relu"``: ``n_gates`` random
        hyperplane gates; token ``t`` attends to token ``t'`` through gate ``p`` only when
        both lie on the same side of its hyperplane (latent clusters).
    %(n_gates)s
    gate_init : {"random", "prototypes"}, default="random"
        How the gate hyperplanes are drawn (from ``random_state``). ``"random"``: Gaussian
        normals in standardised token coordinates, through a random point near the mean
        token. ``"prototypes"``: each hyperplane separates a prototype region of the
        training tokens from the mean token (the perpendicular bisector of the mean token
        and a prototype: the training token nearest a random point, moved to the mean of
        the tokens nearer to it than to the mean token), see
        :func:`~skconvexattn._gates.prototype_gates`. With latent token clusters each such
        gate is close to one cluster's indicator: attention stays inside clusters and
        ``transform`` recovers them (``docs/clusters.rst``).
    %(fit_params)s

    Attributes
    ----------
    coef_ : ndarray of shape (n_blocks, n_features**2, n_features * n_classes)
        The convex weights ``Z_p``.
    gates_ : dict of ndarray
        ``"H"`` (n_gates, n_features) and ``"c"`` (n_gates,): hyperplanes of the gates
        (empty for the linear activation).
    %(fitted_attributes)s

    Notes
    -----
    ``transform`` returns token clusters, a function of the fitted solution and of the
    token alone, so an id names the same region of token space in every sample (see
    ``docs/clusters.rst`` and :meth:`token_cluster_info`). Gated: bit ``j`` of a token's id
    is its side of the ``j``-th most important active gate (gates ordered by
    ``||Z_p||_*``, zero blocks ignored); tokens with the same id attend to each other
    through every active gate. With ``gate_init="prototypes"`` the gates follow the
    latent clusters of the training tokens, and the ids recover them. Linear: the id is
    the leading recovered head (singular vector of ``Z``) that reads the token most
    strongly, ``argmax_j sigma_j ||U_j x_t|| ||V_j^T x_t||``.

    :meth:`to_nonconvex` returns the recovered non-convex attention network
    (:class:`SelfAttentionNetwork`, ``docs/convexity.rst``),
    whose own forward pass reproduces the logits and whose weight-decay objective equals
    ``objective_``.

    Padding tokens (token rows entirely NaN, for sequences of different lengths) are
    zero, on neither side of any gate and left out of the pooling (``1 / s_i`` with ``s_i``
    real tokens): padding at any positions gives the fit of the unpadded sequences, and
    ``transform`` gives padding the id -1 (``docs/padding.rst``).

    Examples
    --------
    >>> from skconvexattn import ConvexSelfAttentionClassifier
    >>> from skconvexattn.datasets import make_token_clusters
    >>> X, y = make_token_clusters(n_samples=60, random_state=0, return_X_y=True)
    >>> clf = ConvexSelfAttentionClassifier(alpha=0.1, n_gates=2, random_state=0).fit(X, y)
    >>> bool(clf.dual_gap_ <= clf.tol * clf.objective_)  # certified optimal to 1e-4
    True
    >>> clf.score(X, y)
    1.0
    """

    _parameter_constraints: dict = {
        **BaseConvexHead._parameter_constraints,
        "gate_init": [StrOptions({"random", "prototypes"})],
    }

    _degree = 3  # the lifted features X_i^T D X_i x X_i are cubic in X
    _reduce_hint = (
        "n_features (d; lifted features grow as d**3 — put TokenPCA before the head) "
        "or n_gates"
    )

    _own_params = {"gate_init": "random"}

    def _block_shape(self, s, d):
        return (self._n_convex_blocks(), d * d, d)

    def _work_per_sample(self, s, d):
        P = self._n_convex_blocks()
        return 2 * P * d**3 + 2 * P * d * d + P * s * d

    def _feature_map(self, gates):
        if not gates:
            return self_attention_features
        H, c = gates["H"], gates["c"]
        return lambda X: self_attention_features(X, H, c)

    def _factor_a_shape(self, s, d):
        return (d, d)

    def _factor_scratch(self, s, d, c, r):
        # keys (P k r d twice), scores (s P k r), values and their products (2 s P r c)
        P = self._n_convex_blocks()
        return P * r * (4 * d + 3 * s + 2 * s * c) + 2 * s * d

    def _factor_operator(self, gates, X, chunk_rows):
        X0, real, counts = split_padding(X)
        sides = None
        if gates:
            sides = token_sides(X0, gates["H"], gates["c"]) * real[:, :, None]
        return AttentionFactorOperator(X0, sides, 1.0 / counts, chunk_rows)

    _gate_side_definition = (
        "bit j of a token's id is its side (1: H[j] . x + c[j] >= 0) of the j-th most "
        "important active gate; tokens with the same id attend to each other through "
        "every active gate"
    )

    def _linear_token_clusters(self, X):
        return _leading_head_clusters(self, X)

    def _linear_token_cluster_info(self):
        S, U, V = self.to_nonconvex().leading_heads(_MAX_HEADS)
        return Bunch(
            kind="leading_heads",
            definition=(
                "the id is the rank of the recovered head j (among the leading ones) that "
                "reads the token most strongly, argmax_j sigma_j ||U_j x|| ||V_j^T x||"
            ),
            heads=np.arange(S.size),
            singular_values=S,
            query_key=U,
            value_output=V,
            block_norms=self.block_norms(),
        )

    _network_class = SelfAttentionNetwork


_MAX_HEADS = 8


def _leading_head_clusters(est, X, max_heads=_MAX_HEADS):
    """Linear attention: the leading recovered head (by singular value) that reads the
    token most strongly, ``argmax_j sigma_j ||U_j x_t|| ||V_j^T x_t||`` with ``U_j``
    (``(d, d)``, query-key) and ``V_j`` (``(d, c)``, value-output) the unit-norm reshapes of
    the singular vectors: the token's key response times its value, a function of the
    token alone (the same token gets the same id in every sample)."""
    S, U, V = est.to_nonconvex().leading_heads(max_heads)
    X, real, _ = split_padding(np.asarray(X, dtype=np.float64))
    if S.size == 0:
        return padding_ids(np.zeros(X.shape[:2], dtype=np.int64), real)
    Xt = X[:, :, None, None, :]  # (n, s, 1, 1, d): every token against every head
    key = np.linalg.norm(Xt @ np.swapaxes(U, 1, 2), axis=-1)[..., 0]  # ||U_j x_t||: (n, s, j)
    val = np.linalg.norm(Xt @ V, axis=-1)[..., 0]  # ||V_j^T x_t||
    return padding_ids(np.argmax(S * key * val, axis=2), real)
