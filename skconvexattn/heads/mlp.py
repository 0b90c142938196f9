"""Convex token-MLP head: the paper's MLP baseline.

Non-convex block: a two-layer MLP applied to every token and average-pooled,
``Yhat_i = sum_j sigma(X_i w_1j) w_2j^T`` with ``w_1j`` in ``R^d`` and ``w_2j`` in ``R^c``.
Its convex equivalent with gated ReLU is the convex gated-ReLU network of Mishkin et al.
(ICML 2022) on pooled features: one weight block per gate, ``Z_p`` of shape ``(d, c)``, and

    Phi_i^(p)[f] = (1/s) sum_t D_p(x_it) x_it[f],    D_p(x) = 1{h_p . x + c_p >= 0}

(block shape ``(P, d, 1)``): a single batched GEMM of the gate sides with the tokens.

Gates are the hyperplanes of the self-attention head
(:class:`~skconvexattn._gates.HyperplaneGatesMixin`): random normals in standardised token
coordinates, each through a random point near the data, so both sides hold tokens. With
``activation='linear'`` the head is a linear model on the mean token ``xbar_i``.

Padding. Padding tokens (rows entirely NaN) are zero and on no side of any gate, and the
pooling divides by the number ``s_i`` of real tokens: ``Phi_i^(p) = (1/s_i) sum over the
real tokens``, the features of the sample without its padding rows.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils import Bunch
from sklearn.utils._param_validation import StrOptions

from .._backend import get_namespace
from .._base import BaseConvexHead
from .._gates import HyperplaneGatesMixin, padding_ids, token_sides
from .._network import RecoveredNetwork, head_gate_masks
from .._operator import GatedTokenOperator
from .._padding import split_padding

__all__ = ["ConvexMLPClassifier", "TokenMLPNetwork", "mlp_features"]


def mlp_features(X, H=None, c=None):
    """Lifted token-MLP features.

    Parameters
    ----------
    X : array of shape (m, s, d)
        Token matrices; rows entirely NaN are padding (left out).
    H, c : arrays of shape (P, d) and (P,), or None
        Gate hyperplanes; ``None`` for the linear activation (one block: the mean token).

    Returns
    -------
    Phi : array of shape (m, P, d, 1)
        ``Phi[i, p, f, 0] = (1/s_i) sum_t D_p(x_it) x_it[f]``, the sum over the ``s_i``
        real tokens of sample ``i``.
    """
    xp = get_namespace(X)
    m, s, d = X.shape
    X, real, counts = split_padding(X)
    if H is None:
        return xp.reshape(xp.sum(X, axis=1) / counts[:, None], (m, 1, d, 1))
    P = H.shape[0]
    side = xp.permute_dims(token_sides(X, H, c) * real[:, :, None], (0, 2, 1))  # (m, P, s)
    Phi = (side @ X) / counts[:, None, None]  # (m, P, d)
    return xp.reshape(Phi, (m, P, d, 1))


def gated_token_operator(X, H, c, center=None):
    """The matrix-free operator of :func:`mlp_features` (gated), padding included.

    Padding tokens are zero and on no side of any gate; scaling the tokens of sample ``i``
    by ``s / s_i`` turns the operator's ``1 / s`` pooling into ``1 / s_i``.

    Parameters
    ----------
    X : array of shape (n, s, d)
        Token matrices; rows entirely NaN are padding.
    H, c : arrays of shape (P, d) and (P,)
        Gate hyperplanes.
    center : array of shape (n,) or None
        Sample weights to centre the features with.

    Returns
    -------
    op : :class:`~skconvexattn._operator.GatedTokenOperator`
    """
    s = X.shape[1]
    X0, real, counts = split_padding(X)
    D = token_sides(X0, H, c) * real[:, :, None]
    return GatedTokenOperator(X0 * (s / counts)[:, None, None], D, center=center)


class TokenMLPNetwork(RecoveredNetwork):
    """Recovered token MLP, with its own forward pass.

    ``o = sum_j (1/s) sum_t D_p(x_t) (x_t^T w_1j) w_2j + b``.

    ``W1`` has shape ``(n_heads, d)``, ``W2`` ``(n_heads, c)``;
    ``D_p(x) = 1{gates["H"][p] . x + gates["c"][p] >= 0}`` (one for linear), zero on
    padding tokens.
    """

    architecture = "mlp"
    _gate_buffers = ("H", "c")
    _work_per_head = staticmethod(lambda s, d: 2 * s)

    @staticmethod
    def _factor_shapes(s, d, c):
        return (d,), (c,)

    @classmethod
    def _head_outputs(cls, xp, X0, real, t):
        pre = (X0 @ xp.matrix_transpose(t["W1"])) * real[:, :, None]  # x_t . w_1j: (n, s, m)
        if "gate_H" in t:
            side = token_sides(X0, t["gate_H"], t["gate_c"])  # (n, s, P)
            pre = pre * head_gate_masks(xp, side, t["head_gate"], 2)
        return xp.sum(pre, axis=1) @ t["W2"]


class ConvexMLPClassifier(HyperplaneGatesMixin, BaseConvexHead):
    """Token-MLP classification head (the MLP baseline) trained to global optimality.

    Fits the convex equivalent of a two-layer MLP applied to every token with weight decay,
    ``Yhat_i = sum_j sigma(X_i w_1j) w_2j^T``, average-pooled over tokens (plus an
    intercept), with ``sigma`` linear or gated ReLU: the convex gated-ReLU network of
    Mishkin et al. (2022) on pooled token features, with a block nuclear-norm penalty,
    solved by accelerated proximal gradient to a certified duality gap. Tokens do not
    interact: it is the no-attention baseline of Sahiner et al. (ICML 2022).

    Parameters
    ----------
    %(alpha)s
    activation : {"gated_relu", "linear"}, default="gated_relu"
        ``"linear"``: a linear model on the mean token ``xbar_i`` (one block, trace-norm
        penalised). ``"gated_relu"``: ``n_gates`` random hyperplane gates; neuron group
        ``p`` sees only the tokens on one side of its hyperplane.
    %(n_gates)s
    gate_init : {"random", "prototypes"}, default="random"
        How the gate hyperplanes are drawn (from ``random_state``): ``"random"`` Gaussian
        normals through a random point near the mean token, or ``"prototypes"``
        hyperplanes that each separate a prototype region of the training tokens from
        the mean token (:func:`~skconvexattn._gates.prototype_gates`), which follow latent
        token clusters (as the self-attention head's, ``docs/clusters.rst``).
    %(fit_params)s

    Attributes
    ----------
    coef_ : ndarray of shape (n_blocks, n_features, n_classes)
        The convex weights ``Z_p`` (rows ``f`` index ``w_1``, columns ``b`` index ``w_2``).
    gates_ : dict of ndarray
        ``"H"`` (n_gates, n_features) and ``"c"`` (n_gates,): hyperplanes of the gates
        (empty for the linear activation).
    %(fitted_attributes)s

    Notes
    -----
    Convex program: ``Phi_i^(p) = (1/n_tokens) sum_t D_p(x_it) x_it`` with
    ``D_p(x) = 1{h_p . x + c_p >= 0}`` and ``o_i = sum_p Z_p^T Phi_i^(p) + b``. The compact
    SVD ``Z_p = sum_j sigma_j u_j v_j^T`` gives the neurons of an equivalent gated-ReLU MLP,
    ``w_1j = sqrt(sigma_j) u_j``, ``w_2j = sqrt(sigma_j) v_j``, predicting the same logits
    with weight decay ``sum_p ||Z_p||_*``. With ``activation="linear"`` the model is
    ``o_i = Z^T xbar_i + b``: a multinomial linear model on the mean token with a trace-norm
    penalty (GAP makes a linear token MLP see only the mean token).

    ``transform`` returns token clusters. Gated: bit ``j`` of a token's id is its side of
    the ``j``-th most important active gate (gates ordered by ``||Z_p||_*``, zero blocks
    ignored), so ids name the same region of token space in every sample. Linear: the id
    is the rank of the recovered neuron (singular vector of ``Z``, among the 8 leading
    ones) with the largest response ``sigma_j |u_j . x_t|`` to the token. See
    ``docs/clusters.rst`` and :meth:`token_cluster_info`; :meth:`to_nonconvex` returns the
    recovered gated-ReLU MLP.

    Padding tokens (token rows entirely NaN, for sequences of different lengths) are
    zero, on no side of any gate and left out of the pooling (``1 / s_i`` with ``s_i`` real
    tokens): padding at any positions gives the fit of the unpadded sequences, and
    ``transform`` gives padding the id -1 (``docs/padding.rst``).

    Examples
    --------
    >>> import numpy as np
    >>> from skconvexattn.heads.mlp import ConvexMLPClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((60, 4, 3))
    >>> y = (np.abs(X[:, :, 0]).mean(axis=1) > 0.8).astype(int)
    >>> clf = ConvexMLPClassifier(alpha=1e-2, n_gates=4, random_state=0).fit(X, y)
    >>> bool(clf.dual_gap_ <= 1e-4 * clf.objective_)
    True
    >>> clf.transform(X[:2]).shape
    (2, 4)
    """

    _parameter_constraints: dict = {
        **BaseConvexHead._parameter_constraints,
        "gate_init": [StrOptions({"random", "prototypes"})],
    }

    _reduce_hint = "n_gates or n_features (TokenPCA before the head)"

    _own_params = {"gate_init": "random"}

    def _block_shape(self, s, d):
        return (self._n_convex_blocks(), d, 1)

    def _work_per_sample(self, s, d):
        P = self._n_convex_blocks()
        return 2 * P * s + 2 * P * d + s * d

    def _feature_map(self, gates):
        if not gates:
            return mlp_features
        H, c = gates["H"], gates["c"]
        return lambda X: mlp_features(X, H, c)

    def _operator(self, gates, X, block_shape, n_outputs, plan, center=None):
        """Matrix-free products where they move less memory than the features.

        The materialised features hold ``P d`` floats per sample and every product is a
        pass over them; the matrix-free form (:class:`~skconvexattn._operator.GatedTokenOperator`)
        reads the ``s d`` token values and the masks and runs GEMMs with ``P c`` columns.
        With one token per sample (the convex gated-ReLU MLP) and two classes that is
        2.5-3x faster per product; it is used there, when it also moves less memory than the
        features (so it fits wherever they do).
        """
        if gates and plan.materialised:
            n, s, d = X.shape
            P, c = block_shape[0], n_outputs
            # measured (n=5000, d=20, P=32, float64): one token and c <= 2 is 2.5-3x
            # faster per product; with 3 tokens or 10 classes the features win
            if s * c <= 2 and s * (d + P * (1 + 2 * c)) < P * d:
                return gated_token_operator(X, gates["H"], gates["c"], center=center)
        return super()._operator(gates, X, block_shape, n_outputs, plan, center)

    _gate_side_definition = (
        "bit j of a token's id is its side (1: H[j] . x + c[j] >= 0) of the j-th most "
        "important active gate"
    )

    def _linear_token_clusters(self, X):
        return _leading_neuron_clusters(self, X)

    def _linear_token_cluster_info(self):
        S, U, _ = self.to_nonconvex().leading_heads(8)
        return Bunch(
            kind="leading_neurons",
            definition=(
                "the id is the rank of the recovered neuron j (among the 8 leading ones) with "
                "the largest response sigma_j |u_j . x| to the token"
            ),
            neurons=np.arange(S.size),
            singular_values=S,
            directions=U,
            block_norms=self.block_norms(),
        )

    _network_class = TokenMLPNetwork


def _leading_neuron_clusters(est, X, max_heads=8):
    """Linear token MLP: the leading recovered neuron (by singular value) with the largest
    response ``sigma_j |u_j . x_t|`` to each token."""
    S, U, _ = est.to_nonconvex().leading_heads(max_heads)
    X, real, _ = split_padding(np.asarray(X, dtype=np.float64))
    if S.size == 0:
        return padding_ids(np.zeros(X.shape[:2], dtype=np.int64), real)
    resp = np.abs(X @ U.T) * S  # (n, s, heads)
    return padding_ids(np.argmax(resp, axis=2), real)
