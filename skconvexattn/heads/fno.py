"""Convex Fourier-neural-operator (FNO) head and its recovered network (``docs/heads.rst``).

Non-convex block: a global circular convolution over the token axis, summed over the
channels, followed by a map to the classes,

    Yhat_i = sum_j sigma(C(X_i) k_j) w_2j^T,
    (C(X) k)[t] = sum_{tau, f} K[tau, f] X[(t - tau) mod s, f],

with one kernel ``K_j`` of shape ``(s, d)`` (``k_j = vec(K_j)``) and one output vector
``w_2j`` of shape ``(c,)`` per neuron, average-pooled over tokens. Its convex program has one
weight block per gate, ``Z_p`` of shape ``(s*d, c)`` (rows ``(tau, f)`` = ``vec(K)``), with
lifted features

    Phi_i^(p)[tau, f] = (1/s) sum_t D_p^(i)[t] X_i[(t - tau) mod s, f],

a circular cross-correlation of the gate mask ``D_p^(i)`` (a 0/1 vector over tokens) with
every channel of ``X_i``. By the correlation theorem its DFT along ``tau`` is
``conj(Xhat_i[k, f]) Dhat_p^(i)[k] / s``: two real FFTs along the token axis and a pointwise
product, ``O(s log s)`` per channel; the ``s x s`` circulant matrix is never formed.

Gates. ``D_p^(i)[t] = 1{(C(Xtilde_i) h_p)[t] >= 0}``: the sign of a random global circular
convolution of the token-standardised sample ``Xtilde_i = (X_i - mu) / sigma`` (``mu`` and
``sigma`` are the per-feature mean and scale over all training tokens, see
:mod:`skconvexattn._gates`) with a Gaussian kernel ``h_p`` of shape ``(s, d)``. No offset is
needed: the standardised pre-activations have zero mean over the training tokens, so every
gate splits the tokens roughly in half.

Padding. Padding tokens (rows entirely NaN) are zero tokens of the sequence: the circular
convolutions (of the gates and of the kernels) run over the full length ``s`` with the
padding positions as zeros, every gate mask is zero at padding positions (no output is
read there) and the pooling divides by the number ``s_i`` of real tokens,

    Phi_i^(p)[tau, f] = (1/s_i) sum_{t real} D_p^(i)[t] X_i[(t - tau) mod s, f].

So padding is part of the sequence geometry: the logits are those of the zero-filled
sequence pooled over its real positions. Trailing padding to ``s >= 2 s' - 1`` makes the
circular convolution of ``s'`` real tokens a linear (non-wrapping) one; the linear
activation's mask is the real-token indicator (the reduction to a head on the mean token
holds without padding only).

Fourier modes. With ``n_modes`` the kernels are restricted to the lowest ``n_modes``
frequencies ``k = 0, ..., n_modes - 1`` of the real DFT along the tokens (FNO's ``modes``):
``K = B W`` with ``B`` (``s x M``) the orthonormal real Fourier basis of those frequencies,
columns ``[1, cos_1, sin_1, cos_2, sin_2, ...]`` (scaled to unit norm; for even ``s`` the
Nyquist frequency ``k = s/2`` contributes one column ``(-1)^t``, its sine being zero), so
``M = 2 n_modes - 1``, minus one when the Nyquist frequency is kept. The features become
``B^T Phi``, read off the DFT directly. Since ``B`` has orthonormal columns,
``||B W||_* = ||W||_*``: the full spectrum (``n_modes = s // 2 + 1``) is an orthogonal change
of basis of the untruncated problem, with the same optimum and predictions.

Channel blocks. ``n_blocks`` splits the ``d`` channels into contiguous groups (sizes as
:func:`numpy.array_split`); each neuron's kernel reads one group only, and every
(gate, group) pair is a block with its own nuclear norm (block-diagonal channel mixing, as
in AFNO). Blocks are ordered gate-major (``p * n_blocks + g``); rows are
``(mode, channel in group)``, zero-padded to the largest group.
"""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np
from array_api_compat import device as _device
from sklearn.utils import Bunch
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from .._backend import get_namespace, scalar
from .._base import BaseConvexHead
from .._gates import sign_pattern_clusters, standardised_tokens
from .._network import RecoveredNetwork, _as_tokens, head_gate_masks, recover_heads
from .._padding import split_padding
from .._penalty import active_order

__all__ = [
    "ConvexFNOClassifier",
    "FNONetwork",
    "fno_features",
    "fno_gate_masks",
    "circular_convolution",
    "fourier_basis",
    "channel_groups",
]


# ---------------------------------------------------------------------------- helpers
def _n_columns(s, n_modes):
    """Real basis columns ``M`` kept by ``n_modes`` frequencies (``s`` for ``None``)."""
    if n_modes is None:
        return s
    nyquist = s % 2 == 0 and n_modes == s // 2 + 1
    return 2 * n_modes - 1 - int(nyquist)


def fourier_basis(s, n_modes=None):
    """Orthonormal real Fourier basis of the lowest ``n_modes`` token frequencies.

    Parameters
    ----------
    s : int
        Number of tokens.
    n_modes : int or None
        Frequencies kept, ``1 <= n_modes <= s // 2 + 1``; ``None`` keeps all of them.

    Returns
    -------
    B : ndarray of shape (s, M)
        Columns ``[1, cos_1, sin_1, ..., cos_k, sin_k, (nyquist)]`` scaled to unit norm,
        with ``M = 2 n_modes - 1`` (one less when the Nyquist frequency of an even ``s`` is
        kept). ``B.T @ B`` is the identity; with all modes ``B`` is orthogonal.
    """
    n_modes = s // 2 + 1 if n_modes is None else int(n_modes)
    t = np.arange(s)
    cols = [np.full(s, 1.0 / math.sqrt(s))]
    for k in range(1, n_modes):
        if 2 * k == s:
            cols.append(np.cos(np.pi * t) / math.sqrt(s))
        else:
            ang = 2.0 * np.pi * k * t / s
            cols.append(math.sqrt(2.0 / s) * np.cos(ang))
            cols.append(math.sqrt(2.0 / s) * np.sin(ang))
    return np.stack(cols, axis=1)


def channel_groups(d, n_blocks):
    """Contiguous channel groups ``[(start, stop), ...]`` (sizes as ``array_split``)."""
    q, r = divmod(d, n_blocks)
    bounds, start = [], 0
    for g in range(n_blocks):
        stop = start + q + (1 if g < r else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def circular_convolution(X, kernels):
    """Per-token outputs ``(C(X) K_p)[t] = sum_{tau,f} K_p[tau,f] X[(t-tau) mod s, f]``.

    Parameters
    ----------
    X : array of shape (m, s, d)
    kernels : array of shape (P, s, d)

    Returns
    -------
    U : array of shape (m, P, s)
        Computed as a pointwise product of real FFTs along the token axis.
    """
    xp = get_namespace(X, kernels)
    s = X.shape[1]
    Xh = xp.fft.rfft(X, axis=1)  # (m, F, d)
    Kh = xp.fft.rfft(kernels, axis=1)  # (P, F, d)
    # elementwise product and a sum over channels (not a GEMM): every sample's result is
    # then independent of the batch it is computed in, so gate signs never depend on it
    Uh = xp.sum(Xh[:, None, :, :] * Kh[None, :, :, :], axis=-1)  # (m, P, F)
    return xp.fft.irfft(Uh, n=s, axis=-1)


def _gate_masks(X0, real, kernels, mu, sigma):
    """Gate masks of zero-padded tokens ``X0`` with real-token mask ``real``."""
    xp = get_namespace(X0)
    Xt = standardised_tokens(X0, real, mu, sigma)
    return xp.astype(circular_convolution(Xt, kernels) >= 0, X0.dtype) * real[:, None, :]


def fno_gate_masks(X, kernels, mu=None, sigma=None):
    """Gate masks ``D_p[t] = 1{(C((X - mu) / sigma) h_p)[t] >= 0}``, shape ``(m, P, s)``.

    ``mu`` and ``sigma`` (shape ``(d,)``) standardise the token features; ``None`` means 0
    and 1. The masks have the dtype of ``X`` (0.0 or 1.0). Padding tokens (rows of ``X``
    entirely NaN) are zero tokens of the standardised sequence, and the masks are zero at
    padding positions.
    """
    X0, real, _ = split_padding(X)
    return _gate_masks(X0, real, kernels, mu, sigma)


def _real_modes(Ph, s, n_modes):
    """``B^T Phi`` from the DFT ``Ph`` of ``Phi`` along axis 2: ``(m, P, M, d)``."""
    xp = get_namespace(Ph)
    re = xp.real(Ph[:, :, :n_modes, :])
    im = -xp.imag(Ph[:, :, :n_modes, :])  # sum_t sin(2 pi k t / s) Phi[t]
    nyquist = s % 2 == 0 and n_modes == s // 2 + 1
    k_pairs = n_modes - 1 - int(nyquist)  # frequencies 1..k_pairs get a cos and a sin
    parts = [re[:, :, 0:1, :] / math.sqrt(s)]
    if k_pairs > 0:
        m, P, _, d = re.shape
        pairs = xp.stack([re[:, :, 1 : k_pairs + 1, :], im[:, :, 1 : k_pairs + 1, :]], axis=3)
        parts.append(xp.reshape(pairs, (m, P, 2 * k_pairs, d)) * math.sqrt(2.0 / s))
    if nyquist:
        parts.append(re[:, :, s // 2 : s // 2 + 1, :] / math.sqrt(s))
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=2)


def _split_channels(Phi, n_blocks):
    """``(m, P, M, d)`` -> ``(m, P * n_blocks, M * gmax)``, groups zero-padded to ``gmax``."""
    xp = get_namespace(Phi)
    m, P, M, d = Phi.shape
    if n_blocks == 1:
        return xp.reshape(Phi, (m, P, M * d))
    groups = channel_groups(d, n_blocks)
    gmax = max(b - a for a, b in groups)
    parts = []
    for a, b in groups:
        part = Phi[:, :, :, a:b]
        if b - a < gmax:
            pad = xp.zeros((m, P, M, gmax - (b - a)), dtype=Phi.dtype, device=_device(Phi))
            part = xp.concat([part, pad], axis=3)
        parts.append(part)
    blocks = xp.stack(parts, axis=2)  # (m, P, n_blocks, M, gmax)
    return xp.reshape(blocks, (m, P * n_blocks, M * gmax))


def fno_features(X, kernels=None, n_modes=None, n_blocks=1, mu=None, sigma=None):
    """Lifted FNO features.

    Parameters
    ----------
    X : array of shape (m, s, d)
        Token matrices; tokens in sequence order (the convolution is circular along it).
        Rows entirely NaN are padding: zero tokens, no output read there, left out of
        the pooling (see the module docstring).
    kernels : array of shape (P, s, d), or None
        Gate kernels ``h_p``; ``None`` for the linear activation (one gate, one on the
        real positions).
    n_modes : int or None
        Keep the lowest ``n_modes`` Fourier frequencies of the kernels (features
        ``B^T Phi``, see :func:`fourier_basis`); ``None`` keeps the token domain ``tau``.
    n_blocks : int
        Contiguous channel groups, one block each (see :func:`channel_groups`).
    mu, sigma : arrays of shape (d,), or None
        Token standardisation applied before the gates (not to the features).

    Returns
    -------
    Phi : array of shape (m, P * n_blocks, M * gmax, 1)
        Blocks gate-major, rows ``(mode or tau, channel in group)``; ``M = s`` without
        ``n_modes`` and ``gmax = ceil(d / n_blocks)``.
    """
    xp = get_namespace(X)
    m, s, d = X.shape
    X, real, counts = split_padding(X)
    D = None
    if kernels is not None:
        D = _gate_masks(X, real, kernels, mu, sigma)  # (m, P, s)
    elif scalar(xp.min(counts)) < s:
        D = real[:, None, :]  # linear with padding: the mask of the real positions
    if D is None:
        # all-ones gate: Phi[tau, f] = xbar[f] for every tau (B^T 1 = sqrt(s) e_0)
        xbar = xp.mean(X, axis=1)[:, None, None, :]  # (m, 1, 1, d)
        if n_modes is None:
            Phi = xp.broadcast_to(xbar, (m, 1, s, d))
        else:
            rest = xp.zeros((m, 1, _n_columns(s, n_modes) - 1, d), dtype=X.dtype, device=_device(X))
            Phi = xp.concat([xbar * math.sqrt(s), rest], axis=2)
    else:
        Xh = xp.fft.rfft(X, axis=1)  # (m, F, d)
        Dh = xp.fft.rfft(D, axis=-1)  # (m, P, F)
        Ph = xp.conj(Xh)[:, None, :, :] * Dh[:, :, :, None] / counts[:, None, None, None]
        if n_modes is None:
            Phi = xp.fft.irfft(Ph, n=s, axis=2)  # (m, P, s, d)
        else:
            Phi = _real_modes(Ph, s, n_modes)
    Phi = _split_channels(Phi, n_blocks)
    return Phi[..., None]


class FNONetwork(RecoveredNetwork):
    """Recovered FNO block, with its own forward pass.

    ``o = sum_j (1/s) sum_t D_p[t] (C(X) K_j)[t] w_2j + b``.

    ``W1`` has shape ``(n_heads, M, gmax)``: each neuron's kernel in the real Fourier basis
    ``basis`` (``(s, M)``; the identity without ``n_modes``) over the channels of its group
    ``group[j]`` (``channel_groups[group[j]]``, zero-padded to ``gmax``); the kernel is
    ``kernels[j] = basis @ W1[j]`` on those channels, zero elsewhere. ``W2`` has shape
    ``(n_heads, c)``. ``C(X) K`` is the circular convolution along the tokens,
    ``(C(X) K)[t] = sum_{tau, f} K[tau, f] X[(t - tau) mod s, f]``, and
    ``D_p[t] = 1{(C((X - mu) / sigma) h_p)[t] >= 0}`` (ones for linear). Since the basis
    has orthonormal columns, ``||kernels[j]||_F = ||W1[j]||_F``.
    """

    architecture = "fno"
    _gate_buffers = ("H", "mu", "sigma")
    _work_per_head = staticmethod(lambda s, d: 4 * s)

    @classmethod
    def _from_estimator(cls, est):
        s, d = est.token_shape_
        c = est.classes_.shape[0]
        groups = channel_groups(d, est.n_blocks)
        gmax = max(b - a for a, b in groups)
        basis = fourier_basis(s, est.n_modes) if est.n_modes is not None else np.eye(s)
        M = basis.shape[1]
        W1, W2, sig, blk = recover_heads(est.coef_, (M, gmax), (c,))
        gate, group = np.divmod(blk, est.n_blocks)
        if not est.gates_:
            gate = np.full(blk.shape, -1)
        net = cls(est, W1, W2, sig, blk, gate)
        net.group = group
        net.channel_groups = groups
        net.basis = basis
        net.n_modes = est.n_modes
        net.n_blocks = est.n_blocks
        return net

    def _channel_select(self):
        """``E[j]`` of shape ``(gmax, d)``: row ``g`` picks channel ``a_j + g`` of the group."""
        d = self.token_shape[1]
        gmax = self.W1.shape[2]
        bounds = np.asarray(self.channel_groups, dtype=np.int64).reshape(-1, 2)[self.group]
        g = np.arange(gmax)
        col = bounds[:, :1] + g[None, :]  # (heads, gmax): channel a_j + g
        picks = (col[:, :, None] == np.arange(d)) & (col < bounds[:, 1:])[:, :, None]
        return picks.astype(np.float64)

    @property
    def kernels(self):
        """The convolution kernels ``K_j`` in the token domain, ``(n_heads, s, d)``."""
        return (self.basis @ self.W1) @ self._channel_select()

    def _tensors(self):
        params, buffers = super()._tensors()
        buffers.update(basis=self.basis, channel_select=self._channel_select())
        return params, buffers

    @classmethod
    def _head_outputs(cls, xp, X0, real, t):
        K = (t["basis"] @ t["W1"]) @ t["channel_select"]  # (m, s, d)
        act = circular_convolution(X0, K) * real[:, None, :]  # (n, m, s): real positions
        if "gate_H" in t:
            D = _gate_masks(X0, real, t["gate_H"], t["gate_mu"], t["gate_sigma"])  # (n, P, s)
            act = act * head_gate_masks(xp, D, t["head_gate"], 1)
        return xp.sum(act, axis=2) @ t["W2"]

    def gate_masks(self, X):
        """``D_p[t]`` of every gate: ``(n, P, s)`` (ones if linear)."""
        X = _as_tokens(X, self.token_shape)
        if not self.gates:  # ones on the real positions
            return split_padding(X)[1][:, None, :]
        g = self.gates
        return fno_gate_masks(X, g["H"], g["mu"], g["sigma"])


# ---------------------------------------------------------------------------- estimator
class ConvexFNOClassifier(BaseConvexHead):
    """Fourier-neural-operator (global convolution) classification head trained to
    global optimality.

    Fits the convex equivalent of an FNO block with weight decay,
    ``Yhat_i = sum_j sigma(C(X_i) k_j) w_2j^T``, average-pooled over tokens (plus an
    intercept), where ``C(X_i) k_j`` is the circular convolution of the token sequence with a
    kernel ``K_j`` of shape ``(n_tokens, n_features)`` summed over channels (a pointwise
    product in the DFT domain), and ``sigma`` gated ReLU or linear. The convex program is a
    linear model in lifted features (circular cross-correlations of the gate masks with the
    tokens, computed with FFTs) with a block nuclear-norm penalty, solved by accelerated
    proximal gradient to a certified duality gap (Sahiner et al., ICML 2022).

    Parameters
    ----------
    %(alpha)s
    activation : {"gated_relu", "linear"}, default="gated_relu"
        ``"gated_relu"``: ``n_gates`` random gates; neuron ``j`` of gate ``p`` outputs
        ``D_p[t] (C(X) K_j)[t]`` at token ``t``, where ``D_p[t]`` is the sign pattern of a
        random global convolution of the standardised tokens. ``"linear"``: one block, no
        gates; with average pooling the head then collapses exactly to a linear head on the
        mean token (see Notes), which is why ``"gated_relu"`` is the default.
    n_gates : int, default=8
        Number of gates for ``activation="gated_relu"``.
    n_modes : int or None, default=None
        Keep only the lowest ``n_modes`` Fourier frequencies of the kernels along the tokens,
        ``1 <= n_modes <= n_tokens // 2 + 1`` (as FNO's ``modes``); ``None`` keeps all. The
        kernels are parametrised as ``K = B W`` with ``B`` an orthonormal real Fourier basis
        (:func:`fourier_basis`), which leaves the nuclear norms unchanged: fewer weights,
        still convex, and ``n_modes = n_tokens // 2 + 1`` gives the same solution as
        ``None``.
    n_blocks : int, default=1
        Split the ``n_features`` channels into ``n_blocks`` contiguous groups
        (``n_blocks <= n_features``); each neuron's kernel reads one group, with one nuclear
        norm per (gate, group) block: block-diagonal channel mixing, as in AFNO.
    %(fit_params)s

    Attributes
    ----------
    coef_ : ndarray of shape (n_gates * n_blocks, M * gmax, n_classes)
        The convex weights ``Z_p``, blocks gate-major (``p * n_blocks + g``), rows
        ``(tau, f)`` (or ``(mode, f)`` with ``n_modes``; ``M`` = ``n_tokens`` or the number of
        real Fourier columns), ``f`` running over the group's channels zero-padded to the
        largest group ``gmax = ceil(n_features / n_blocks)``. One gate for ``"linear"``.
    gates_ : dict of ndarray
        ``"H"`` (n_gates, n_tokens, n_features): the gate kernels ``h_p``; ``"mu"`` and
        ``"sigma"`` (n_features,): the token standardisation they act on. Empty for the
        linear activation.
    %(fitted_attributes)s

    Notes
    -----
    Token order. The convolution is circular along the tokens in the order given. A 2-D
    token grid (image patches) is treated as the 1-D sequence of its tokens in row-major
    order, circular along that sequence: a shift by one token moves one patch to the right,
    wrapping from the end of a row to the start of the next (and from the last patch to the
    first). Append positional features (e.g. one-hot patch positions) when absolute
    positions matter.

    Linear activation. With all-ones gates ``Phi_i[tau, f] = xbar_i[f]`` for every shift
    ``tau``: the logits are ``xbar_i^T V + b`` with ``V = sum_tau Z[tau]``, and the smallest
    nuclear norm of a ``Z`` with a given ``V`` is ``||V||_* / sqrt(n_tokens)``. The linear
    FNO head is therefore exactly the nuclear-norm-regularised linear head on the mean
    token with strength ``alpha / sqrt(n_tokens)`` (and ``n_modes`` changes nothing).

    Recovering the network. For the compact SVD ``Z_p = sum_j sigma_j u_j v_j^T`` of a
    block (gate ``p``, group ``g``), neuron ``j`` has kernel
    ``K_j = sqrt(sigma_j) B reshape(u_j, (M, gmax))`` on the group's channels (``B`` the
    identity without ``n_modes``) and output weights ``w_2j = sqrt(sigma_j) v_j``; gated by
    ``D_p``, these neurons reproduce the convex predictions and their weight decay equals
    ``sum_p ||Z_p||_*``.

    ``transform`` returns token clusters. Gated: bit ``j`` of a token's id is its gate value
    ``D_p[t]`` for the ``j``-th most important active gate (gates ordered by the sum of
    their blocks' nuclear norms over the channel groups), so ids name the same pattern in
    every sample. Linear: the id is the leading recovered neuron (by singular value) with
    the largest ``sigma_j |(C(X) K_j)[t]|`` at the token.

    Padding tokens (token rows entirely NaN, for sequences of different lengths) are
    zero tokens of the circular sequence: the convolutions run over all ``n_tokens``
    positions, no output is read at padding positions and the pooling is over the ``s_i``
    real ones (with padding, the linear activation is no longer the head on the mean
    token); ``transform`` gives padding the id -1 (``docs/padding.rst``).

    Examples
    --------
    >>> import numpy as np
    >>> from skconvexattn.heads.fno import ConvexFNOClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((60, 8, 3))
    >>> y = (X[:, :, 0].max(axis=1) > 1.5).astype(int)
    >>> clf = ConvexFNOClassifier(alpha=1e-2, n_gates=4, random_state=0).fit(X, y)
    >>> bool(clf.dual_gap_ <= 1e-4 * clf.objective_)
    True
    """

    _parameter_constraints: dict = {
        **BaseConvexHead._parameter_constraints,
        "n_modes": [Interval(Integral, 1, None, closed="left"), None],
        "n_blocks": [Interval(Integral, 1, None, closed="left")],
    }

    _reduce_hint = (
        "n_tokens or n_features (lifted features grow as n_tokens * n_features per gate; "
        "use n_modes to keep fewer Fourier modes, or TokenPCA), or n_gates"
    )

    _own_params = {"n_modes": None, "n_blocks": 1}

    # ------------------------------------------------------------------ hooks
    def _n_gate_patterns(self):
        return 1 if self.activation == "linear" else self.n_gates

    def _n_convex_blocks(self):
        return self._n_gate_patterns() * self.n_blocks

    def _group_width(self, d):
        return -(-d // self.n_blocks)

    def _block_shape(self, s, d):
        return (self._n_convex_blocks(), _n_columns(s, self.n_modes) * self._group_width(d), 1)

    def _work_per_sample(self, s, d):
        G = self._n_gate_patterns()
        F = s // 2 + 1
        d_pad = self.n_blocks * self._group_width(d)
        # standardised copy and spectrum of X, gate spectra and masks, the complex feature
        # spectrum, the feature array and its blocked (padded) copy
        return 3 * s * d + 2 * G * (s + 2 * F) + 6 * G * F * d + 3 * G * s * d_pad

    def _check_head_params(self, s, d):
        if self.n_modes is not None and not 1 <= self.n_modes <= s // 2 + 1:
            raise ValueError(
                f"n_modes={self.n_modes} is out of range: with n_tokens={s} the real DFT along "
                f"the tokens has {s // 2 + 1} frequencies, so n_modes must be an integer in "
                f"[1, {s // 2 + 1}] (or None to keep all of them)."
            )
        if self.n_blocks > d:
            raise ValueError(
                f"n_blocks={self.n_blocks} is larger than the number of features per token "
                f"(n_features={d}): each channel block needs at least one feature. Pass "
                f"n_blocks in [1, {d}]."
            )

    def _draw_gates(self, rng, mu, sigma, s, d):
        if self.activation == "linear":
            return {}
        H = rng.standard_normal((self.n_gates, s, d))
        H /= np.linalg.norm(H.reshape(self.n_gates, -1), axis=1)[:, None, None]
        return {"H": H, "mu": np.asarray(mu, np.float64), "sigma": np.asarray(sigma, np.float64)}

    def _feature_map(self, gates):
        n_modes, n_blocks = self.n_modes, self.n_blocks
        if not gates:
            return lambda X: fno_features(X, None, n_modes, n_blocks)
        H, mu, sigma = gates["H"], gates["mu"], gates["sigma"]
        return lambda X: fno_features(X, H, n_modes, n_blocks, mu, sigma)

    def _token_clusters(self, X):
        norms = self.block_norms().reshape(self._n_gate_patterns(), self.n_blocks).sum(axis=1)
        if self.activation == "gated_relu":
            g = self.gates_
            D = fno_gate_masks(
                X, g["H"].astype(X.dtype), g["mu"].astype(X.dtype), g["sigma"].astype(X.dtype)
            )
            ids = sign_pattern_clusters(np.transpose(np.asarray(D), (0, 2, 1)), norms)
        else:
            ids = self._leading_neuron_clusters(X)
        ids[np.isnan(np.asarray(X)[:, :, 0])] = -1  # padding
        return ids

    def _token_cluster_info(self):
        block_norms = self.block_norms()
        norms = block_norms.reshape(self._n_gate_patterns(), self.n_blocks).sum(axis=1)
        if self.activation == "gated_relu":
            order = active_order(norms)
            return Bunch(
                kind="gate_patterns",
                definition=(
                    "bit j of a token's id is its gate value D_p[t] for the j-th most "
                    "important active gate (a sign of a global convolution of the sample: "
                    "it depends on the token's circular neighbourhood)"
                ),
                gates=order,
                kernels=self.gates_["H"][order],
                mu=self.gates_["mu"],
                sigma=self.gates_["sigma"],
                importance=norms[order],
                block_norms=block_norms,
            )
        S = self.to_nonconvex().sigma[:8]
        keep = np.arange(S.size)
        return Bunch(
            kind="leading_neurons",
            definition=(
                "the id is the rank of the recovered neuron j (among the 8 leading ones) to "
                "which the token contributes most, sigma_j |x . kappa_j|"
            ),
            neurons=keep,
            singular_values=S[keep],
            block_norms=block_norms,
        )

    _network_class = FNONetwork

    # ------------------------------------------------------------------ inspection
    def _neurons(self):
        """The neurons of the non-convex network recovered from the fit
        (:class:`FNONetwork`).

        Returns
        -------
        neurons : list of dict
            One entry per neuron (active singular value), most important first, with
            ``"gate"`` (index into ``gates_["H"]``; ``None`` for linear), ``"group"``
            (channel block), ``"kernel"`` ``K_j`` of shape ``(n_tokens, n_features)`` (zero
            outside the group's channels), ``"weight"`` ``w_2j`` of shape ``(n_classes,)``
            and ``"sigma"`` (the singular value: ``(||K_j||^2 + ||w_2j||^2) / 2``).
        """
        check_is_fitted(self)
        net = self.to_nonconvex()
        linear = self.activation == "linear"
        return [
            {
                "gate": None if linear else int(p),
                "group": int(g),
                "kernel": K,
                "weight": w,
                "sigma": float(sig),
            }
            for p, g, K, w, sig in zip(net.gate, net.group, net.kernels, net.W2, net.sigma)
        ]

    def _leading_neuron_clusters(self, X, max_neurons=8):
        """Linear activation: the leading recovered neuron (by singular value) to which the
        token contributes most. Pooled, neuron ``j`` outputs
        ``(1/s) sum_t x_t^T kappa_j`` with ``kappa_j = sum_tau K_j[tau]``, so token ``t``
        contributes ``sigma_j |x_t^T kappa_j|`` (``K_j`` of unit norm)."""
        net = self.to_nonconvex()
        k = min(max_neurons, net.n_heads)
        if k == 0:
            return np.zeros(X.shape[:2], dtype=np.int64)
        S = net.sigma[:k]
        kappa = net.kernels[:k].sum(axis=1) / np.sqrt(S)[:, None]  # (J, d)
        X0 = np.nan_to_num(np.asarray(X, dtype=np.float64), nan=0.0)  # padding: -1 later
        contrib = np.abs(X0 @ kappa.T) * S  # (n, s, J)
        return np.argmax(contrib, axis=2)
