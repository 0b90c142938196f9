"""Non-convex networks recovered from fitted convex heads (SPEC 2.4).

Every fitted head is a block nuclear-norm-penalised linear model in lifted features. The
compact SVD of each block, ``Z_p = sum_j sigma_j u_j v_j^T``, turns it back into the
non-convex architecture the head stands for: one head (or neuron) per singular value,

    W_1j = sqrt(sigma_j) reshape(u_j),    W_2j = sqrt(sigma_j) reshape(v_j),

gated by gate ``p`` (no gate for the linear activation). The classes here hold those
weights and run the forward pass *of the architecture*, never through the lifted
features:

* self-attention: ``o = sum_j (1/s) 1^T (M_p o (X W_1j X^T)) X W_2j + b`` with ``M_p`` the
  gate's same-side mask (``M_p[t, t'] = 1`` when tokens ``t`` and ``t'`` lie on the same
  side of its hyperplane; all ones for linear);
* MLP-Mixer: ``o = sum_j (1/s) 1^T (M_p o (W_1j X)) W_2j + b``;
* FNO: ``o = sum_j (1/s) sum_t D_p[t] (C(X) K_j)[t] w_2j + b`` with ``C(X) K`` the circular
  convolution of the tokens with the kernel ``K_j = B W_1j`` (``B`` the Fourier basis of the
  kept modes; the kernel reads only its channel group);
* token MLP: ``o = sum_j (1/s) sum_t D_p(x_t) (x_t^T w_1j) w_2j + b``.

Because the SVD is exact, the network reproduces the head's logits, and its weight decay
``sum_j (||W_1j||_F^2 + ||W_2j||_F^2) / 2`` equals ``sum_p ||Z_p||_*``: its non-convex
objective ``mean loss + alpha * weight_decay`` equals the convex optimum ``objective_``,
below which no training run of the same architecture (same gates, weight decay ``alpha``)
can go. This is what "trained to global optimality" means, made checkable.

Padding tokens (token rows entirely NaN, see :func:`~skconvexattn.preprocessing.padding_mask`)
are handled as in the heads: they are zero, every gate mask is zero on them (no token
attends to, mixes in or gates on a padding token) and ``1/s`` becomes ``1/s_i``, the number
of real tokens of the sample, so the networks reproduce the heads' logits and objective
on padded data too (NumPy and torch).

``to_torch()`` gives the same network as a :class:`torch.nn.Module` (weights are
parameters, gates are buffers) that can be fine-tuned.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.utils.class_weight import compute_sample_weight

__all__ = [
    "RecoveredNetwork",
    "SelfAttentionNetwork",
    "MixerNetwork",
    "FNONetwork",
    "TokenMLPNetwork",
    "recover_heads",
    "heads_from_factors",
]

_ZERO_RTOL = 1e-12  # singular values below this fraction of the largest are dropped


def recover_heads(coef, row_shape, col_shape):
    """Heads of the blocks ``coef`` (``(P, R, C)``) by compact SVD (SPEC 2.4).

    Returns ``W1`` of shape ``(m,) + row_shape``, ``W2`` of shape ``(m,) + col_shape``,
    ``sigma`` ``(m,)`` and ``block`` ``(m,)`` (the block each head comes from), heads with a
    singular value below ``1e-12`` times the largest one dropped, most important first.
    """
    Z = np.asarray(coef, dtype=np.float64)
    U, S, Vh = np.linalg.svd(Z, full_matrices=False)  # (P, R, k), (P, k), (P, k, C)
    smax = S.max() if S.size else 0.0
    blk, j = np.nonzero(S > _ZERO_RTOL * smax) if smax > 0 else (np.zeros(0, int),) * 2
    sig = S[blk, j]
    order = np.argsort(-sig, kind="stable")
    blk, j, sig = blk[order], j[order], sig[order]
    r = np.sqrt(sig)
    W1 = (U[blk, :, j] * r[:, None]).reshape((blk.size,) + tuple(row_shape))
    W2 = (Vh[blk, j, :] * r[:, None]).reshape((blk.size,) + tuple(col_shape))
    return W1, W2, sig, blk


def heads_from_factors(A, B, sigma, row_shape, col_shape):
    """Heads of a factored fit (``factors_``: balanced heads from the compact SVD of every
    block, see :func:`~skconvexattn._factored.balanced_heads`), in the order and with the
    dropping rule of :func:`recover_heads`, without forming any block."""
    S = np.asarray(sigma, dtype=np.float64)
    smax = S.max() if S.size else 0.0
    blk, j = np.nonzero(S > _ZERO_RTOL * smax) if smax > 0 else (np.zeros(0, int),) * 2
    sig = S[blk, j]
    order = np.argsort(-sig, kind="stable")
    blk, j, sig = blk[order], j[order], sig[order]
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    W1 = A[blk, j].reshape((blk.size,) + tuple(row_shape))
    W2 = B[blk, j].reshape((blk.size,) + tuple(col_shape))
    return W1, W2, sig, blk


def _as_tokens(X, token_shape):
    X = np.asarray(X, dtype=np.float64)
    s, d = token_shape
    if X.ndim == 2 and X.shape[1] == s * d:
        X = X.reshape(X.shape[0], s, d)
    if X.ndim != 3 or X.shape[1:] != (s, d):
        raise ValueError(
            f"X has shape {X.shape}, but the network was recovered from a head fitted on "
            f"tokens of shape (n_tokens, n_features) = {(s, d)}: pass (n_samples, {s}, {d}) "
            f"or the flattened (n_samples, {s * d})."
        )
    return X


def _split(X):
    """Zero-filled tokens, real-token mask ``(n, s)`` (float) and counts ``(n,)``."""
    pad = np.isnan(X[:, :, 0])
    real = (~pad).astype(X.dtype)
    return np.where(pad[:, :, None], 0.0, X), real, real.sum(axis=1)


def _chunks(n, per_sample, budget=1 << 23):
    step = max(1, budget // max(per_sample, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


class RecoveredNetwork:
    """Base class of the recovered networks (use ``est.to_nonconvex()``).

    Attributes
    ----------
    W1, W2 : ndarray
        The heads' weights, one row per head, most important first (see the subclass).
    sigma : ndarray of shape (n_heads,)
        Singular value of each head: ``(||W_1j||_F^2 + ||W_2j||_F^2) / 2 = sigma_j``.
    block : ndarray of shape (n_heads,)
        The convex block ``Z_p`` each head comes from.
    gate : ndarray of shape (n_heads,)
        The gate of each head (index into ``gates``), ``-1`` for the linear activation.
    gates : dict of ndarray
        The head's fitted gates (``gates_``), unchanged.
    intercept : ndarray of shape (n_classes,)
    classes_ : ndarray of shape (n_classes,)
    alpha : float
        The weight-decay strength of the fit.
    loss : str
    class_weight : dict, "balanced" or None
    token_shape : tuple (n_tokens, n_features)
    """

    architecture = None

    def __init__(self, est, W1, W2, sigma, block, gate):
        self.W1, self.W2 = W1, W2
        self.sigma, self.block = sigma, block
        self.gate = np.asarray(gate, dtype=np.int64)
        self.gates = {k: np.asarray(v, dtype=np.float64).copy() for k, v in est.gates_.items()}
        self.intercept = np.asarray(est.intercept_, dtype=np.float64).copy()
        self.classes_ = np.asarray(est.classes_).copy()
        # a fit on inputs of extreme scale solved the program on X * 2**e (see the head's
        # input_scale_exp_): the weights, gates and alpha are in those units, and the
        # network scales its input the same way
        self.input_scale_exp = int(getattr(est, "input_scale_exp_", 0))
        self.alpha = math.ldexp(float(est.alpha_), self.input_scale_exp * est._degree)
        self.loss = est.loss
        self.class_weight = est.class_weight
        self.token_shape = tuple(int(v) for v in est.token_shape_)

    @classmethod
    def _from_estimator(cls, est):
        """One head per rank-one term of each block, the block ``p`` being gate ``p``."""
        s, d = est.token_shape_
        c = est.classes_.shape[0]
        shapes = cls._factor_shapes(s, d, c)
        if "factors_" in est.__dict__:  # a factored fit: its heads directly
            f = est.factors_
            W1, W2, sig, blk = heads_from_factors(
                f["A"], f["B"], est.factor_singular_values_, *shapes
            )
        else:
            W1, W2, sig, blk = recover_heads(est.coef_, *shapes)
        gate = blk if est.gates_ else np.full(blk.shape, -1)
        return cls(est, W1, W2, sig, blk, gate)

    # -------------------------------------------------------------- summaries
    @property
    def n_heads(self):
        """Number of heads (neurons) with a non-zero singular value."""
        return int(self.sigma.shape[0])

    @property
    def weight_decay(self):
        """``sum_j (||W_1j||_F^2 + ||W_2j||_F^2) / 2``; equals ``sum_p ||Z_p||_*``."""
        return 0.5 * float(np.sum(self.W1**2) + np.sum(self.W2**2))

    def __repr__(self):
        s, d = self.token_shape
        used = np.unique(self.gate[self.gate >= 0]).size
        return (
            f"{type(self).__name__}(n_heads={self.n_heads}, gates_used={used}, "
            f"token_shape={(s, d)}, n_classes={self.classes_.shape[0]})"
        )

    # -------------------------------------------------------------- forward
    def _logits(self, X):  # pragma: no cover - abstract
        raise NotImplementedError

    def logits(self, X):
        """All class logits ``o_i``, shape ``(n_samples, n_classes)``."""
        X = _as_tokens(X, self.token_shape)
        if self.input_scale_exp:
            X = np.ldexp(X, self.input_scale_exp)
        return self._logits(X)

    def decision_function(self, X):
        """Logits (``(n,)`` for two classes: ``o[:, 1] - o[:, 0]``), as the estimator."""
        O = self.logits(X)
        return O[:, 1] - O[:, 0] if O.shape[1] == 2 else O

    def predict(self, X):
        """Predicted class labels."""
        return self.classes_[np.argmax(self.logits(X), axis=1)]

    def predict_proba(self, X):
        """Softmax of the logits."""
        O = self.logits(X)
        E = np.exp(O - O.max(axis=1, keepdims=True))
        return E / E.sum(axis=1, keepdims=True)

    def objective(self, X, y, sample_weight=None):
        """Non-convex objective: weighted mean loss + ``alpha * weight_decay``.

        Computed as the head's fit computes it (``sample_weight`` times ``class_weight``,
        normalised to a weighted mean), so on the training data it equals the head's
        ``objective_``.
        """
        O = self.logits(X)
        y = np.asarray(y)
        idx = np.searchsorted(self.classes_, y)
        idx = np.clip(idx, 0, self.classes_.shape[0] - 1)
        if y.shape[0] != O.shape[0] or np.any(self.classes_[idx] != y):
            raise ValueError(
                "y must hold one label per sample, all among the fitted classes_ "
                f"{self.classes_.tolist()}."
            )
        sw = np.ones(O.shape[0]) if sample_weight is None else np.asarray(sample_weight, float)
        if self.class_weight is not None:
            sw = sw * compute_sample_weight(self.class_weight, y)
        w = sw / sw.sum()
        rows = np.arange(O.shape[0])
        if self.loss == "log_loss":
            m = O.max(axis=1)
            per = np.log(np.exp(O - m[:, None]).sum(axis=1)) + m - O[rows, idx]
        else:
            Y = np.zeros_like(O)
            Y[rows, idx] = 1.0
            per = 0.5 * np.sum((O - Y) ** 2, axis=1)
        return float(w @ per + self.alpha * self.weight_decay)

    # -------------------------------------------------------------- torch
    def _torch_tensors(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def to_torch(self):
        """The same network as a :class:`torch.nn.Module` (float64).

        Its ``forward(X)`` takes a tensor of shape ``(n, n_tokens, n_features)`` and returns
        the logits ``(n, n_classes)`` (all classes, also for two), equal to
        :meth:`logits`. The weights ``W1``, ``W2`` and ``intercept`` are
        :class:`torch.nn.Parameter` (fine-tune them with any optimiser; add
        ``alpha * module.weight_decay()`` to the loss to keep the objective); the gates are
        buffers and stay fixed.
        """
        _import_torch()
        params, buffers = self._torch_tensors()
        return _torch_class()(
            self.architecture, params, buffers, self.token_shape, self.input_scale_exp
        )


# ------------------------------------------------------------------ architectures
class SelfAttentionNetwork(RecoveredNetwork):
    """Recovered self-attention block, with its own forward pass.

    ``o = sum_j (1/s) 1^T (M_p o (X W_1j X^T)) X W_2j + b``.

    ``W1`` has shape ``(n_heads, d, d)`` (query-key), ``W2`` ``(n_heads, d, c)``
    (value-output); ``M_p[t, t'] = 1`` when tokens ``t`` and ``t'`` lie on the same side of
    the hyperplane ``gates["H"][p] . x + gates["c"][p] = 0`` (all ones for linear).
    """

    architecture = "self_attention"

    @staticmethod
    def _factor_shapes(s, d, c):
        return (d, d), (d, c)

    def attention_masks(self, X):
        """Same-side masks ``M_p[t, t']`` of every gate: ``(n, P, s, s)`` (ones if linear),
        zero in the rows and columns of padding tokens."""
        X, real, _ = _split(_as_tokens(X, self.token_shape))
        n, s, _ = X.shape
        pair = real[:, None, :, None] * real[:, None, None, :]  # both tokens real
        if not self.gates:
            return pair
        side = ((X @ self.gates["H"].T + self.gates["c"]) >= 0).astype(np.float64)  # (n,s,P)
        side = np.transpose(side, (0, 2, 1))
        return pair * (
            side[:, :, :, None] * side[:, :, None, :]
            + (1 - side)[:, :, :, None] * (1 - side)[:, :, None, :]
        )

    def _logits(self, X):
        n, s, d = X.shape
        O = np.tile(self.intercept, (n, 1))
        m = self.n_heads
        if m == 0:
            return O
        for sl in _chunks(n, m * s * (s + d)):
            M = self.attention_masks(X[sl])[:, np.maximum(self.gate, 0)]  # (n, m, s, s)
            Xc, _, counts = _split(X[sl])
            scores = np.einsum("nta,jak,nuk->njtu", Xc, self.W1, Xc)  # X W_1j X^T
            pooled = (M * scores).sum(axis=2)  # 1^T (M o scores): (n, m, s)
            values = np.einsum("nuk,jkb->njub", Xc, self.W2)  # X W_2j
            O[sl] += np.einsum("nju,njub->nb", pooled, values) / counts[:, None]
        return O

    def _torch_tensors(self):
        params = {"W1": self.W1, "W2": self.W2, "intercept": self.intercept}
        buffers = {"head_gate": self.gate}
        if self.gates:
            buffers.update(gate_H=self.gates["H"], gate_c=self.gates["c"])
        return params, buffers


class MixerNetwork(RecoveredNetwork):
    """Recovered MLP-Mixer block, with its own forward pass.

    ``o = sum_j (1/s) 1^T (M_p o (W_1j X)) W_2j + b``.

    ``W1`` has shape ``(n_heads, s, s)`` (token mixing), ``W2`` ``(n_heads, d, c)`` (channel
    mixing); ``M_p = 1{H_p (X - mu) / sigma >= 0}`` (all ones for linear).
    """

    architecture = "mixer"

    @staticmethod
    def _factor_shapes(s, d, c):
        return (s, s), (d, c)

    def gate_masks(self, X):
        """``M_p = 1{H_p (X - mu) / sigma >= 0}``: ``(n, P, s, d)`` (ones if linear)."""
        from .heads.mixer import mixer_masks

        X = _as_tokens(X, self.token_shape)
        if not self.gates:  # ones on the real positions
            real = _split(X)[1]
            return np.broadcast_to(real[:, None, :, None], (X.shape[0], 1) + X.shape[1:])
        g = self.gates
        return mixer_masks(X, g["H"], g["mu"], g["sigma"])

    def _logits(self, X):
        n, s, d = X.shape
        O = np.tile(self.intercept, (n, 1))
        m = self.n_heads
        if m == 0:
            return O
        for sl in _chunks(n, 2 * m * s * d):
            M = self.gate_masks(X[sl])[:, np.maximum(self.gate, 0)]  # (n, m, s, d)
            Xc, _, counts = _split(X[sl])
            mixed = np.einsum("jtu,nuf->njtf", self.W1, Xc)  # W_1j X
            pooled = (M * mixed).sum(axis=2)  # 1^T (M o W_1j X): (n, m, d)
            O[sl] += np.einsum("njf,jfb->nb", pooled, self.W2) / counts[:, None]
        return O

    def _torch_tensors(self):
        params = {"W1": self.W1, "W2": self.W2, "intercept": self.intercept}
        buffers = {"head_gate": self.gate}
        if self.gates:
            g = self.gates
            buffers.update(gate_H=g["H"], gate_mu=g["mu"], gate_sigma=g["sigma"])
        return params, buffers


class TokenMLPNetwork(RecoveredNetwork):
    """Recovered token MLP, with its own forward pass.

    ``o = sum_j (1/s) sum_t D_p(x_t) (x_t^T w_1j) w_2j + b``.

    ``W1`` has shape ``(n_heads, d)``, ``W2`` ``(n_heads, c)``;
    ``D_p(x) = 1{gates["H"][p] . x + gates["c"][p] >= 0}`` (one for linear).
    """

    architecture = "mlp"

    @staticmethod
    def _factor_shapes(s, d, c):
        return (d,), (c,)

    def _logits(self, X):
        n, s, d = X.shape
        O = np.tile(self.intercept, (n, 1))
        if self.n_heads == 0:
            return O
        X, real, counts = _split(X)
        pre = X @ self.W1.T * real[:, :, None]  # x_t . w_1j on real tokens: (n, s, m)
        if self.gates:
            side = (X @ self.gates["H"].T + self.gates["c"]) >= 0  # (n, s, P)
            pre = pre * side[:, :, self.gate]
        return O + pre.sum(axis=1) @ self.W2 / counts[:, None]

    def _torch_tensors(self):
        params = {"W1": self.W1, "W2": self.W2, "intercept": self.intercept}
        buffers = {"head_gate": self.gate}
        if self.gates:
            buffers.update(gate_H=self.gates["H"], gate_c=self.gates["c"])
        return params, buffers


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

    @classmethod
    def _from_estimator(cls, est):
        from .heads.fno import channel_groups, fourier_basis

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
        E = np.zeros((self.n_heads, gmax, d))
        for j, g in enumerate(self.group):
            a, b = self.channel_groups[g]
            E[j, np.arange(b - a), np.arange(a, b)] = 1.0
        return E

    @property
    def kernels(self):
        """The convolution kernels ``K_j`` in the token domain, ``(n_heads, s, d)``."""
        return np.einsum("tk,jkg,jgf->jtf", self.basis, self.W1, self._channel_select())

    def gate_masks(self, X):
        """``D_p[t]`` of every gate: ``(n, P, s)`` (ones if linear)."""
        from .heads.fno import fno_gate_masks

        X = _as_tokens(X, self.token_shape)
        if not self.gates:  # ones on the real positions
            return _split(X)[1][:, None, :]
        g = self.gates
        return fno_gate_masks(X, g["H"], g["mu"], g["sigma"])

    def _logits(self, X):
        n, s, d = X.shape
        O = np.tile(self.intercept, (n, 1))
        if self.n_heads == 0:
            return O
        K = self.kernels
        D = self.gate_masks(X)[:, np.maximum(self.gate, 0)]  # (n, m, s), zero on padding
        X, _, counts = _split(X)  # padding: zero tokens of the sequence
        # circular convolution along the tokens, a pointwise product of DFTs, summed over
        # the channels: (C(X) K_j)[t]
        conv = np.fft.irfft(
            np.einsum("nkf,jkf->njk", np.fft.rfft(X, axis=1), np.fft.rfft(K, axis=1)),
            n=s,
            axis=2,
        )  # (n, m, s)
        return O + (D * conv).sum(axis=2) @ self.W2 / counts[:, None]

    def _torch_tensors(self):
        params = {"W1": self.W1, "W2": self.W2, "intercept": self.intercept}
        buffers = {
            "head_gate": self.gate,
            "basis": self.basis,
            "channel_select": self._channel_select(),
        }
        if self.gates:
            g = self.gates
            buffers.update(gate_H=g["H"], gate_mu=g["mu"], gate_sigma=g["sigma"])
        return params, buffers


# ------------------------------------------------------------------ torch
def _import_torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "to_torch() needs PyTorch, which is not installed. Install it with "
            "`pip install torch` (CPU wheels are enough)."
        ) from exc
    return torch


_TORCH_CLASS = None


def _torch_class():
    """Build (once) the :class:`torch.nn.Module` subclass; torch is imported lazily."""
    global _TORCH_CLASS
    if _TORCH_CLASS is not None:
        return _TORCH_CLASS
    torch = _import_torch()
    nn = torch.nn

    def _split_t(X):
        # padding tokens (rows entirely NaN): zeros, a real-token mask and the counts
        pad = torch.isnan(X[:, :, 0])
        real = (~pad).to(X.dtype)
        return torch.where(pad[:, :, None], torch.zeros_like(X), X), real, real.sum(dim=1)

    def _fwd_self_attention(mod, X):
        n, s, d = X.shape
        m = mod.W1.shape[0]
        if m == 0:
            return mod.intercept.expand(n, -1)
        X, real, counts = _split_t(X)
        if hasattr(mod, "gate_H"):
            side = ((X @ mod.gate_H.T + mod.gate_c) >= 0).to(X.dtype)[:, :, mod.head_gate]
            side = side.permute(0, 2, 1)  # (n, m, s)
            M = side[..., :, None] * side[..., None, :] + (1 - side)[..., :, None] * (
                1 - side
            )[..., None, :]
        else:
            M = torch.ones((n, m, s, s), dtype=X.dtype, device=X.device)
        M = M * (real[:, None, :, None] * real[:, None, None, :])
        scores = torch.einsum("nta,jak,nuk->njtu", X, mod.W1, X)
        pooled = (M * scores).sum(dim=2)
        values = torch.einsum("nuk,jkb->njub", X, mod.W2)
        return torch.einsum("nju,njub->nb", pooled, values) / counts[:, None] + mod.intercept

    def _fwd_mixer(mod, X):
        n, s, d = X.shape
        m = mod.W1.shape[0]
        if m == 0:
            return mod.intercept.expand(n, -1)
        X, real, counts = _split_t(X)
        mixed = torch.einsum("jtu,nuf->njtf", mod.W1, X) * real[:, None, :, None]
        if hasattr(mod, "gate_H"):
            Xt = (X - mod.gate_mu) / mod.gate_sigma * real[:, :, None]
            M = (torch.einsum("ptu,nuf->nptf", mod.gate_H, Xt) >= 0).to(X.dtype)
            mixed = mixed * M[:, mod.head_gate]
        pooled = mixed.sum(dim=2)
        return torch.einsum("njf,jfb->nb", pooled, mod.W2) / counts[:, None] + mod.intercept

    def _fwd_mlp(mod, X):
        n, s, d = X.shape
        if mod.W1.shape[0] == 0:
            return mod.intercept.expand(n, -1)
        X, real, counts = _split_t(X)
        pre = X @ mod.W1.T * real[:, :, None]  # (n, s, m)
        if hasattr(mod, "gate_H"):
            side = ((X @ mod.gate_H.T + mod.gate_c) >= 0).to(X.dtype)
            pre = pre * side[:, :, mod.head_gate]
        return pre.sum(dim=1) @ mod.W2 / counts[:, None] + mod.intercept

    def _conv(X, K, s):
        Xh = torch.fft.rfft(X, dim=1)  # (n, F, d)
        Kh = torch.fft.rfft(K, dim=1)  # (m, F, d)
        return torch.fft.irfft(torch.einsum("nkf,jkf->njk", Xh, Kh), n=s, dim=2)

    def _fwd_fno(mod, X):
        n, s, d = X.shape
        if mod.W1.shape[0] == 0:
            return mod.intercept.expand(n, -1)
        X, real, counts = _split_t(X)
        K = torch.einsum("tk,jkg,jgf->jtf", mod.basis, mod.W1, mod.channel_select)
        act = _conv(X, K, s) * real[:, None, :]  # (n, m, s): outputs at real positions
        if hasattr(mod, "gate_H"):
            Xt = (X - mod.gate_mu) / mod.gate_sigma * real[:, :, None]
            D = (_conv(Xt, mod.gate_H, s) >= 0).to(X.dtype)  # (n, P, s)
            act = act * D[:, mod.head_gate]
        return act.sum(dim=2) @ mod.W2 / counts[:, None] + mod.intercept

    forwards = {
        "self_attention": _fwd_self_attention,
        "mixer": _fwd_mixer,
        "mlp": _fwd_mlp,
        "fno": _fwd_fno,
    }

    class TorchRecoveredNetwork(nn.Module):
        """A recovered convex head as a PyTorch module (see
        :meth:`RecoveredNetwork.to_torch`): ``forward(X)`` maps ``(n, s, d)`` tokens to
        ``(n, n_classes)`` logits; ``W1``, ``W2``, ``intercept`` are parameters, the gates
        buffers."""

        def __init__(self, architecture, params, buffers, token_shape, input_scale_exp=0):
            super().__init__()
            self.architecture = architecture
            self.token_shape = tuple(token_shape)
            self.input_scale_exp = int(input_scale_exp)
            for k, v in params.items():
                setattr(self, k, nn.Parameter(torch.as_tensor(np.asarray(v), dtype=torch.float64)))
            for k, v in buffers.items():
                v = np.asarray(v)
                dtype = torch.long if v.dtype.kind in "iu" else torch.float64
                self.register_buffer(k, torch.as_tensor(v, dtype=dtype))

        def forward(self, X):
            if X.ndim == 2:
                X = X.reshape(X.shape[0], *self.token_shape)
            if self.input_scale_exp:
                X = X * 2.0**self.input_scale_exp
            return forwards[self.architecture](self, X)

        def weight_decay(self):
            """``sum_j (||W_1j||^2 + ||W_2j||^2) / 2`` (differentiable)."""
            return 0.5 * ((self.W1**2).sum() + (self.W2**2).sum())

        def extra_repr(self):
            return f"architecture={self.architecture!r}, n_heads={self.W1.shape[0]}"

    TorchRecoveredNetwork.__module__ = __name__
    TorchRecoveredNetwork.__qualname__ = "TorchRecoveredNetwork"
    _TORCH_CLASS = TorchRecoveredNetwork
    return _TORCH_CLASS


def __getattr__(name):
    # the module class exists once torch is imported; this lets pickle find it
    if name == "TorchRecoveredNetwork":
        return _torch_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
