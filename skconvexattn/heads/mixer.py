"""Convex MLP-Mixer head and its recovered network (``docs/heads.rst``).

Non-convex block: ``Yhat_i = sum_j sigma(W_1j X_i) W_2j`` with ``W_1j`` of shape ``(s, s)``
(token mixing) and ``W_2j`` of shape ``(d, c)`` (channel mixing), average-pooled over
tokens. With gate masks ``M_p`` in place of ``sigma`` the pooled logits are

    o_i[b] = (1/s) sum_{t, t', f} M_p^(i)[t, f] W_1[t, t'] X_i[t', f] W_2[f, b],

linear in the rank-one matrix ``vec(W_1) vec(W_2)^T``. The convex program therefore has one
weight block per gate, ``Z_p`` of shape ``(s*s, d*c)`` (rows ``(t, t')`` = ``vec(W_1)``,
columns ``(f, b)`` = ``vec(W_2)``, both row-major), and lifted features

    Phi_i^(p)[t, t', f] = (1/s) M_p^(i)[t, f] X_i[t', f]

(block shape ``(P, s*s, d)``): one broadcast product per chunk of samples.

Gates. ``M_p^(i) = 1{H_p Xtilde_i >= 0}`` with ``H_p`` an ``(s, s)`` standard Gaussian
matrix and ``Xtilde_i = (X_i - mu) / sigma`` the token-standardised sample (``mu`` and
``sigma``: weighted mean and standard deviation of each feature over all training
tokens, stored with ``H`` in ``gates_``). The sign of ``H_p Xtilde`` is unchanged by any
positive rescaling of a feature, and centring makes it unchanged by shifting a feature, so
the gates do not depend on the units of the features. With ``activation='linear'`` the
mask is all ones (one block). The gate matrices are drawn in nested "shells" (see
:func:`shell_gate_matrices`): the leading ``s' x s'`` block of ``H_p`` is the same for every
number of tokens ``s >= s'``.

Padding. Padding tokens (rows entirely NaN) are zero in ``X`` and in ``Xtilde`` (so no
position mixes them in, neither in the features nor in the gates), the gate-mask rows of
padding output positions are zero, and the pooling divides by the number ``s_i`` of real
tokens. Token mixing is position-specific, so padding is *positional*: with trailing
padding, a sample of ``s'`` real tokens padded to ``s`` has the features of the unpadded
``(s', d)`` sample in the leading ``s' x s'`` token block and zeros elsewhere, and the fit
equals the unpadded fit (the weights of the other positions stay zero).
"""

from __future__ import annotations

import numpy as np

from sklearn.utils import Bunch

from .._backend import get_namespace
from .._base import BaseConvexHead
from .._factored_ops import MixerFactorOperator
from .._gates import standardised_tokens
from .._network import RecoveredNetwork, _as_tokens, head_gate_masks
from .._padding import split_padding

__all__ = [
    "ConvexMixerClassifier",
    "MixerNetwork",
    "mixer_features",
    "mixer_masks",
    "shell_gate_matrices",
]


def shell_gate_matrices(rng, n_gates, s):
    """Standard Gaussian gate matrices ``H_p`` of shape ``(s, s)``, drawn in nested shells.

    The entries are drawn from ``rng`` shell by shell, ``k = 0, ..., s - 1``, shell ``k``
    being row ``k`` up to the diagonal and column ``k`` above it (``2k + 1`` entries per
    gate). The leading ``s' x s'`` block therefore uses the first ``s'`` shells of the
    stream only: it is the same for every ``s >= s'``, which makes a fit on sequences with
    trailing padding equal to the fit on the unpadded sequences.

    Parameters
    ----------
    rng : numpy.random.RandomState
    n_gates : int
    s : int
        Number of tokens.

    Returns
    -------
    H : ndarray of shape (n_gates, s, s)
    """
    H = np.empty((n_gates, s, s))
    for k in range(s):  # s draws, one per shell (a loop over positions, not samples)
        v = rng.standard_normal((n_gates, 2 * k + 1))
        H[:, k, : k + 1] = v[:, : k + 1]
        H[:, :k, k] = v[:, k + 1 :]
    return H


def _masks(X0, real, H, mu, sigma):
    """Gate masks of zero-padded tokens ``X0`` with real-token mask ``real``."""
    xp = get_namespace(X0)
    Xt = standardised_tokens(X0, real, mu, sigma)
    M = xp.astype((H[None, :, :, :] @ Xt[:, None, :, :]) >= 0, X0.dtype)
    return M * real[:, None, :, None]  # no output at padding positions


def mixer_masks(X, H, mu=None, sigma=None):
    """Gate masks ``M_p = 1{H_p (X - mu) / sigma >= 0}`` of every sample: ``(m, P, s, d)``.

    Padding tokens (rows of ``X`` entirely NaN) are zero in the standardised tokens that
    ``H_p`` mixes, and the mask rows of padding positions are zero.

    Parameters
    ----------
    X : array of shape (m, s, d)
    H : array of shape (P, s, s)
        Token-mixing gate matrices.
    mu, sigma : arrays of shape (d,), or None
        Token moments used to standardise ``X`` before gating (``None``: 0 and 1).
    """
    X0, real, _ = split_padding(X)
    return _masks(X0, real, H, mu, sigma)


def mixer_features(X, H=None, *, mu=None, sigma=None):
    """Lifted MLP-Mixer features.

    Parameters
    ----------
    X : array of shape (m, s, d)
        Token matrices; rows entirely NaN are padding (see the module docstring).
    H : array of shape (P, s, s), or None
        Gate matrices; ``None`` for the linear activation (one block, all-ones mask on the
        real positions).
    mu, sigma : arrays of shape (d,), or None
        Token standardisation applied before gating (the features themselves use the raw
        ``X``); ignored when ``H`` is None.

    Returns
    -------
    Phi : array of shape (m, P, s*s, d)
        ``Phi[i, p, (t, t'), f] = M_p^(i)[t, f] X_i[t', f] / s_i``: rows ``(t, t')``
        row-major, columns ``f``; ``s_i`` is the number of real tokens of sample ``i``.
    """
    xp = get_namespace(X)
    m, s, d = X.shape
    X0, real, counts = split_padding(X)
    Xs = X0 / counts[:, None, None]
    if H is None:
        Phi = real[:, None, :, None, None] * Xs[:, None, None, :, :]  # (m, 1, s, s, d)
        return xp.reshape(Phi, (m, 1, s * s, d))
    P = H.shape[0]
    M = _masks(X0, real, H, mu, sigma)  # (m, P, s, d)
    Phi = M[:, :, :, None, :] * Xs[:, None, None, :, :]  # (m, P, s, s, d)
    return xp.reshape(Phi, (m, P, s * s, d))


class MixerNetwork(RecoveredNetwork):
    """Recovered MLP-Mixer block, with its own forward pass.

    ``o = sum_j (1/s) 1^T (M_p o (W_1j X)) W_2j + b``.

    ``W1`` has shape ``(n_heads, s, s)`` (token mixing), ``W2`` ``(n_heads, d, c)`` (channel
    mixing); ``M_p = 1{H_p (X - mu) / sigma >= 0}`` (all ones for linear), zero in the rows
    of padding positions.
    """

    architecture = "mixer"
    _gate_buffers = ("H", "mu", "sigma")
    _work_per_head = staticmethod(lambda s, d: 3 * s * d)

    @staticmethod
    def _factor_shapes(s, d, c):
        return (s, s), (d, c)

    @classmethod
    def _head_outputs(cls, xp, X0, real, t):
        mixed = t["W1"][None, ...] @ X0[:, None, :, :]  # W_1j X: (n, m, s, d)
        if "gate_H" in t:
            M = _masks(X0, real, t["gate_H"], t["gate_mu"], t["gate_sigma"])  # (n, P, s, d)
            M = head_gate_masks(xp, M, t["head_gate"], 1)
        else:
            M = real[:, None, :, None]
        pooled = xp.sum(M * mixed, axis=2)  # 1^T (M o W_1j X): (n, m, d)
        return xp.sum((pooled[:, :, None, :] @ t["W2"][None, ...])[:, :, 0, :], axis=1)

    def gate_masks(self, X):
        """``M_p = 1{H_p (X - mu) / sigma >= 0}``: ``(n, P, s, d)`` (ones if linear)."""
        X = _as_tokens(X, self.token_shape)
        if not self.gates:  # ones on the real positions
            real = split_padding(X)[1]
            return np.broadcast_to(real[:, None, :, None], (X.shape[0], 1) + X.shape[1:])
        g = self.gates
        return mixer_masks(X, g["H"], g["mu"], g["sigma"])


class ConvexMixerClassifier(BaseConvexHead):
    """MLP-Mixer classification head trained to global optimality.

    Fits the convex equivalent of a token-mixing MLP-Mixer block with weight decay,
    ``Yhat_i = sum_j sigma(W_1j X_i) W_2j`` (``W_1j``: ``(n_tokens, n_tokens)`` token
    mixing, ``W_2j``: ``(n_features, n_classes)`` channel mixing), average-pooled over tokens
    (plus an intercept), with ``sigma`` linear or gated ReLU. The convex program is a linear
    model in lifted token features with a block nuclear-norm penalty (low rank jointly in
    the token-mixing and feature dimensions), solved by accelerated proximal gradient to a
    certified duality gap (Sahiner et al., ICML 2022).

    Parameters
    ----------
    %(alpha)s
    activation : {"gated_relu", "linear"}, default="gated_relu"
        ``"linear"``: linear token mixing, one block. ``"gated_relu"``: ``n_gates`` random
        gates ``1{H_p Xtilde_i >= 0}`` on the (standardised) token-mixed features, one block
        each.
    %(n_gates)s
    %(fit_params)s

    Attributes
    ----------
    coef_ : ndarray of shape (n_blocks, n_tokens**2, n_features * n_classes)
        The convex weights ``Z_p``: rows ``(t, t')`` index ``W_1``, columns ``(f, b)``
        index ``W_2`` (row-major).
    gates_ : dict of ndarray
        ``"H"`` (n_gates, n_tokens, n_tokens): gate matrices; ``"mu"`` and ``"sigma"``
        (n_features,): the token standardisation applied before gating (empty for the
        linear activation).
    %(fitted_attributes)s

    Notes
    -----
    Convex program: ``Phi_i^(p)[t, t', f] = M_p^(i)[t, f] X_i[t', f] / n_tokens`` and
    ``o_i = sum_p <Phi_i^(p), Z_p> + b``. The compact SVD of each block,
    ``Z_p = sum_j sigma_j u_j v_j^T``, gives the heads of an equivalent non-convex Mixer,
    ``W_1j = sqrt(sigma_j) u_j`` reshaped to ``(n_tokens, n_tokens)`` and
    ``W_2j = sqrt(sigma_j) v_j`` reshaped to ``(n_features, n_classes)``; it predicts the
    same logits and its weight decay equals ``sum_p ||Z_p||_*``.

    Gates act on ``Xtilde = (X - mu) / sigma``: the sign of ``H_p Xtilde`` does not change
    when a feature is rescaled or shifted, so the gates are invariant to feature units.
    Lifted features and weights grow as ``n_tokens**2 * n_features`` per gate: use a few
    tokens (larger patches, token pooling) and ``TokenPCA`` for wide features.

    ``transform`` returns clusters of token *positions* learned by the token mixing, the
    same row for every sample: the recovered heads of all blocks are ordered by singular
    value (most important first, negligible ones dropped), and token position ``t'`` gets
    the rank of the head that mixes it most, ``argmax_j sigma_j ||U_j[:, t']||`` with
    ``U_j`` the ``(n_tokens, n_tokens)`` reshape of ``u_j`` (equivalently
    ``||W_1j[:, t']|| ||W_2j||_F``: the size of the contribution of token ``t'`` through
    head ``j``). An all-zero model puts every token in cluster 0.

    Padding tokens (token rows entirely NaN, for sequences of different lengths) are
    zero, mixed into no position, their gate-mask rows are zero and the pooling is over the
    ``s_i`` real tokens; trailing padding gives the fit of the unpadded sequences (the gate
    matrices are drawn so that their leading blocks do not depend on ``n_tokens``), and
    ``transform`` gives padding the id -1 (``docs/padding.rst``).

    Examples
    --------
    >>> import numpy as np
    >>> from skconvexattn.heads.mixer import ConvexMixerClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((60, 4, 3))
    >>> y = (X[:, 0, 0] > X[:, 1, 0]).astype(int)
    >>> clf = ConvexMixerClassifier(alpha=1e-2, n_gates=4, random_state=0).fit(X, y)
    >>> bool(clf.dual_gap_ <= 1e-4 * clf.objective_)
    True
    >>> clf.transform(X[:2]).shape
    (2, 4)
    """

    _parameter_constraints: dict = {
        **BaseConvexHead._parameter_constraints,
    }

    _reduce_hint = (
        "n_tokens (s; lifted features grow as s**2 * n_features per gate — use larger "
        "patches or pool tokens), n_features (TokenPCA before the head) or n_gates"
    )

    _own_params = {}

    def _block_shape(self, s, d):
        return (self._n_convex_blocks(), s * s, d)

    def _work_per_sample(self, s, d):
        # broadcast product (P s^2 d), masks and their pre-activations (2 P s d), X / s
        P = self._n_convex_blocks()
        return P * s * s * d + 2 * P * s * d + 2 * s * d

    def _draw_gates(self, rng, mu, sigma, s, d):
        if self.activation == "linear":
            return {}
        H = shell_gate_matrices(rng, self.n_gates, s)
        return {
            "H": H,
            "mu": np.asarray(mu, dtype=np.float64),
            "sigma": np.asarray(sigma, dtype=np.float64),
        }

    def _feature_map(self, gates):
        if not gates:
            return mixer_features
        H, mu, sigma = gates["H"], gates["mu"], gates["sigma"]
        return lambda X: mixer_features(X, H, mu=mu, sigma=sigma)

    def _factor_a_shape(self, s, d):
        return (s, s)

    def _factor_scratch(self, s, d, c, r):
        # mixed tokens and the masked products (2 P r s d), masks (P s d)
        P = self._n_convex_blocks()
        return 2 * P * r * s * d + P * s * d + 2 * s * d

    def _factor_kept(self, n, s, d, itemsize):
        # the gate masks (P s d per sample), when kept (see MixerFactorOperator)
        P = self._n_convex_blocks()
        keep = MixerFactorOperator.keeps_masks(P, n, s, d, itemsize, self._factor_cache_bytes())
        return P * n * s * d if keep else 0

    def _factor_operator(self, gates, X, chunk_rows):
        xp = get_namespace(X)
        X0, real, counts = split_padding(X)
        P = self._n_convex_blocks()
        if gates:
            H, mu, sigma = gates["H"], gates["mu"], gates["sigma"]

            def masks(a, b):
                return mixer_masks(X[a:b], H, mu, sigma)

        elif bool(xp.any(real < 1)):

            def masks(a, b):  # linear: the real positions only
                return real[a:b, None, :, None]

        else:
            masks = None
        return MixerFactorOperator(X0, masks, P, 1.0 / counts, chunk_rows,
                                   cache_bytes=self._factor_cache_bytes())

    def _token_clusters(self, X):
        s = self.token_shape_[0]
        ids = np.broadcast_to(self._mixing_scores()[2], (X.shape[0], s)).copy()
        ids[np.isnan(np.asarray(X)[:, :, 0])] = -1  # padding
        return ids

    def _mixing_scores(self):
        """Per recovered head (all blocks, by singular value) the score of every token
        position, ``sigma_j ||U_j[:, t']||`` (``(heads, s)``), and the position clusters."""
        net = self.to_nonconvex()
        S, U, _ = net.leading_heads()
        score = S[:, None] * np.linalg.norm(U, axis=1)  # (heads, s): per t'
        if S.size == 0:
            return net, score, np.zeros(self.token_shape_[0], dtype=np.int64)
        return net, score, np.argmax(score, axis=0).astype(np.int64)

    def _token_cluster_info(self):
        net, score, clusters = self._mixing_scores()
        return Bunch(
            kind="token_positions",
            definition=(
                "token position t gets the rank of the recovered head j (all blocks, by "
                "singular value) that mixes it most, argmax_j sigma_j ||U_j[:, t]||"
            ),
            position_clusters=clusters,
            blocks=net.block,
            singular_values=net.sigma,
            position_scores=score,
            block_norms=self.block_norms(),
        )

    _network_class = MixerNetwork

