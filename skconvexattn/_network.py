"""What every recovered non-convex network shares (see ``docs/convexity.rst``).

Every fitted head is a block nuclear-norm-penalised linear model in lifted features. The
compact SVD of each block, ``Z_p = sum_j sigma_j u_j v_j^T``, turns it back into the
non-convex architecture the head stands for: one head (or neuron) per active singular
value (:func:`~skconvexattn._penalty.active_singular_values`),

    W_1j = sqrt(sigma_j) reshape(u_j),    W_2j = sqrt(sigma_j) reshape(v_j),

gated by gate ``p`` (no gate for the linear activation). Each architecture's network
class lives in its head's module (:mod:`skconvexattn.heads`) and writes its forward pass
once, against the array API (``_head_outputs``); :class:`RecoveredNetwork` runs it on
NumPy arrays (:meth:`~RecoveredNetwork.logits`) and, wrapped in a
:class:`torch.nn.Module`, on torch tensors (:meth:`~RecoveredNetwork.to_torch`, through
``array_api_compat``'s torch namespace), in the dtype of the input.

Because the SVD is exact, the network reproduces the head's logits, and its weight decay
``sum_j (||W_1j||_F^2 + ||W_2j||_F^2) / 2`` equals ``sum_p ||Z_p||_*``: its non-convex
objective ``mean loss + alpha * weight_decay`` equals the convex optimum ``objective_``.
Padding tokens (rows entirely NaN) are handled as in the heads.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.utils.class_weight import compute_sample_weight

from ._backend import get_namespace, import_optional
from ._datafits import get_datafit, softmax
from ._padding import split_padding
from ._penalty import active_singular_values

__all__ = [
    "RecoveredNetwork",
    "recover_heads",
    "heads_from_factors",
    "network_logits",
    "head_gate_masks",
]


def _active_heads(S):
    """``(block, index)`` of the active singular values of ``S`` (``(P, k)``), largest
    first, and those values."""
    S = np.asarray(S, dtype=np.float64)
    blk, j = np.nonzero(active_singular_values(S))
    sig = S[blk, j]
    order = np.argsort(-sig, kind="stable")
    return blk[order], j[order], sig[order]


def recover_heads(coef, row_shape, col_shape):
    """Heads of the blocks ``coef`` (``(P, R, C)``) by compact SVD.

    Returns ``W1`` of shape ``(m,) + row_shape``, ``W2`` of shape ``(m,) + col_shape``,
    ``sigma`` ``(m,)`` and ``block`` ``(m,)`` (the block each head comes from), one head
    per active singular value (:func:`~skconvexattn._penalty.active_singular_values`),
    most important first.
    """
    Z = np.asarray(coef, dtype=np.float64)
    U, S, Vh = np.linalg.svd(Z, full_matrices=False)  # (P, R, k), (P, k), (P, k, C)
    blk, j, sig = _active_heads(S)
    r = np.sqrt(sig)
    W1 = (U[blk, :, j] * r[:, None]).reshape((blk.size,) + tuple(row_shape))
    W2 = (Vh[blk, j, :] * r[:, None]).reshape((blk.size,) + tuple(col_shape))
    return W1, W2, sig, blk


def heads_from_factors(A, B, sigma, row_shape, col_shape):
    """Heads of a factored fit (``factors_``: balanced heads from the compact SVD of every
    block, see :func:`~skconvexattn._factored.balanced_heads`), in the order and with the
    rule of :func:`recover_heads`, without forming any block."""
    blk, j, sig = _active_heads(sigma)
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    W1 = A[blk, j].reshape((blk.size,) + tuple(row_shape))
    W2 = B[blk, j].reshape((blk.size,) + tuple(col_shape))
    return W1, W2, sig, blk


def _as_tokens(X, token_shape):
    """``X`` as ``(n, s, d)`` floats (float32 stays float32; other input becomes float64)."""
    X = np.asarray(X)
    if X.dtype != np.float32:
        X = X.astype(np.float64)
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


def _chunks(n, per_sample, budget=1 << 23):
    """Slices of at most ``budget / per_sample`` samples (bounds the scratch memory)."""
    step = max(1, budget // max(per_sample, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def network_logits(cls, X, tensors, input_scale_exp=0):
    """Logits ``(n, c)`` of the network class ``cls`` with weights ``tensors`` (arrays of
    the namespace of ``X``, cast to its dtype): the one forward pass of NumPy and torch.

    ``X`` is ``(n, s, d)`` or flattened ``(n, s*d)`` with the token shape of ``tensors``;
    padding rows (all NaN) are zero tokens on no gate, and the pooling is ``1 / s_i``.
    """
    xp = get_namespace(X)
    if input_scale_exp:
        X = X * 2.0**input_scale_exp
    X0, real, counts = split_padding(X)
    t = {k: (v if v.dtype in (xp.int64, xp.int32) else xp.astype(v, X.dtype))
         for k, v in tensors.items()}
    b = t["intercept"]
    if t["W1"].shape[0] == 0:  # the all-zero model: the intercept alone
        return X0[:, 0, :1] * 0 + b  # (n, c), on the device of X
    return cls._head_outputs(xp, X0, real, t) / counts[:, None] + b


class RecoveredNetwork:
    """Base class of the recovered networks (use ``est.to_nonconvex()``).

    A subclass (one per architecture, in the head's module) sets ``architecture``,
    ``_factor_shapes(s, d, c)`` (the shapes of one head's ``W1`` and ``W2``),
    ``_gate_buffers`` (the names of the fitted gates it reads) and the forward pass
    ``_head_outputs(xp, X0, real, t)``: the heads' outputs summed over heads and tokens,
    ``(n, c)``, before the pooling ``1 / s_i`` and the intercept, written against the
    array API (``xp``: NumPy or torch).

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
    #: names of the fitted gates (``gates_`` keys) the forward pass reads
    _gate_buffers = ()
    #: scratch floats per sample and head of the NumPy forward (chunks bound the memory)
    _work_per_head = staticmethod(lambda s, d: s * d)

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
        """One head per active rank-one term of each block, the block ``p`` being gate
        ``p``."""
        s, d = est.token_shape_
        c = est.classes_.shape[0]
        shapes = cls._factor_shapes(s, d, c)
        if "coef_" not in est.__dict__:  # a factored fit, blocks never formed: its heads
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
        """Number of heads (neurons) with an active singular value."""
        return int(self.sigma.shape[0])

    @property
    def weight_decay(self):
        """``sum_j (||W_1j||_F^2 + ||W_2j||_F^2) / 2``; equals ``sum_p ||Z_p||_*``."""
        return 0.5 * float(np.sum(self.W1**2) + np.sum(self.W2**2))

    def leading_heads(self, max_heads=None):
        """The first ``max_heads`` heads (most important first) as unit-norm factors:
        ``(sigma, U, V)`` with ``W1 = sqrt(sigma) U`` and ``W2 = sqrt(sigma) V``, i.e. the
        singular values and the reshaped singular vectors of the blocks."""
        k = self.n_heads if max_heads is None else min(int(max_heads), self.n_heads)
        r = np.sqrt(self.sigma[:k])
        U = self.W1[:k] / r.reshape((k,) + (1,) * (self.W1.ndim - 1))
        V = self.W2[:k] / r.reshape((k,) + (1,) * (self.W2.ndim - 1))
        return self.sigma[:k], U, V

    def __repr__(self):
        s, d = self.token_shape
        used = np.unique(self.gate[self.gate >= 0]).size
        return (
            f"{type(self).__name__}(n_heads={self.n_heads}, gates_used={used}, "
            f"token_shape={(s, d)}, n_classes={self.classes_.shape[0]})"
        )

    # -------------------------------------------------------------- forward
    def _tensors(self):
        """The weights (``W1``, ``W2``, ``intercept``) and buffers (``head_gate`` and the
        gates) of the forward pass, as NumPy arrays."""
        params = {"W1": self.W1, "W2": self.W2, "intercept": self.intercept}
        buffers = {"head_gate": self.gate}
        if self.gates:
            buffers.update({f"gate_{k}": self.gates[k] for k in self._gate_buffers})
        return params, buffers

    def logits(self, X):
        """All class logits ``o_i``, shape ``(n_samples, n_classes)``, in the dtype of
        ``X`` (float32 stays float32, other input is float64)."""
        X = _as_tokens(X, self.token_shape)
        params, buffers = self._tensors()
        tensors = {**params, **buffers}
        n, s, d = X.shape
        per = max(1, self.n_heads) * self._work_per_head(s, d)
        parts = [
            network_logits(type(self), X[sl], tensors, self.input_scale_exp)
            for sl in _chunks(n, per)
        ]
        if not parts:
            return np.zeros((0, self.intercept.shape[0]), dtype=X.dtype)
        return np.concatenate(parts, axis=0)

    def decision_function(self, X):
        """Logits (``(n,)`` for two classes: ``o[:, 1] - o[:, 0]``), as the estimator."""
        O = self.logits(X)
        return O[:, 1] - O[:, 0] if O.shape[1] == 2 else O

    def predict(self, X):
        """Predicted class labels."""
        return self.classes_[np.argmax(self.logits(X), axis=1)]

    def predict_proba(self, X):
        """Softmax of the logits."""
        return softmax(self.logits(X))

    def objective(self, X, y, sample_weight=None):
        """Non-convex objective: weighted mean loss + ``alpha * weight_decay``.

        Computed as the head's fit computes it (``sample_weight`` times ``class_weight``,
        normalised to a weighted mean, with the head's datafit), so on the training data
        it equals the head's ``objective_``.
        """
        O = self.logits(X).astype(np.float64)
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
        Y = np.zeros_like(O)
        Y[np.arange(O.shape[0]), idx] = 1.0
        data = get_datafit(self.loss).value(O, Y, w)
        return float(data + self.alpha * self.weight_decay)

    # -------------------------------------------------------------- torch
    def to_torch(self):
        """The same network as a :class:`torch.nn.Module`.

        Its ``forward(X)`` takes a tensor of shape ``(n, n_tokens, n_features)`` (or
        flattened) and returns the logits ``(n, n_classes)`` (all classes, also for two),
        equal to :meth:`logits`, in the dtype of ``X`` (the module's float64 weights are
        cast to it: ``module.float()`` makes float32 weights for float32 training). It runs
        the same forward pass as :meth:`logits`, through ``array_api_compat``'s torch
        namespace. The weights ``W1``, ``W2`` and ``intercept`` are
        :class:`torch.nn.Parameter` (fine-tune them with any optimiser; add
        ``alpha * module.weight_decay()`` to the loss to keep the objective); the gates
        are buffers and stay fixed.
        """
        _import_torch()
        params, buffers = self._tensors()
        return _torch_class()(type(self), params, buffers, self.token_shape, self.input_scale_exp)


# ------------------------------------------------------------------ torch
def _import_torch():
    return import_optional(
        "torch", "to_torch()", "PyTorch", "pip install torch", " (CPU wheels are enough)"
    )


_TORCH_CLASS = None


def _torch_class():
    """Build (once) the :class:`torch.nn.Module` subclass; torch is imported lazily."""
    global _TORCH_CLASS
    if _TORCH_CLASS is not None:
        return _TORCH_CLASS
    torch = _import_torch()
    nn = torch.nn

    class TorchRecoveredNetwork(nn.Module):
        """A recovered convex head as a PyTorch module (see
        :meth:`RecoveredNetwork.to_torch`): ``forward(X)`` maps ``(n, s, d)`` tokens to
        ``(n, n_classes)`` logits; ``W1``, ``W2``, ``intercept`` are parameters, the gates
        buffers."""

        def __init__(self, network_class, params, buffers, token_shape, input_scale_exp=0):
            super().__init__()
            self.network_class = network_class
            self.architecture = network_class.architecture
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
            if not X.is_floating_point():
                X = X.to(self.W1.dtype)
            tensors = dict(self.named_parameters())
            tensors.update(self.named_buffers())
            return network_logits(self.network_class, X, tensors, self.input_scale_exp)

        def weight_decay(self):
            """``sum_j (||W_1j||^2 + ||W_2j||^2) / 2`` (differentiable)."""
            return 0.5 * ((self.W1**2).sum() + (self.W2**2).sum())

        def extra_repr(self):
            return f"architecture={self.architecture!r}, n_heads={self.W1.shape[0]}"

    # pickles find the class through skconvexattn.nonconvex (see its __getattr__)
    TorchRecoveredNetwork.__module__ = "skconvexattn.nonconvex"
    TorchRecoveredNetwork.__qualname__ = "TorchRecoveredNetwork"
    _TORCH_CLASS = TorchRecoveredNetwork
    return _TORCH_CLASS


def head_gate_masks(xp, masks, head_gate, axis):
    """The masks of each head's gate: ``take(masks, head_gate, axis)`` (``masks`` has one
    entry per gate along ``axis``; linear heads have gate -1 and a single all-ones gate)."""
    idx = xp.where(head_gate >= 0, head_gate, xp.zeros_like(head_gate))
    return xp.take(masks, idx, axis=axis)
