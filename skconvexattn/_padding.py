"""Padding tokens: rows of ``X`` that are entirely NaN.

Sequences of different lengths are stored as one ``(n, s, d)`` array in which a sample with
``s_i < s`` real tokens has ``s - s_i`` *padding rows*: token rows whose every feature is NaN.
The rule travels with ``X`` itself (no separate mask to keep aligned), so it survives
``Pipeline``, ``GridSearchCV``, ``cross_val_score``, joblib and Dask unchanged. A row with
*some* NaN features is not padding; it stays an input error.
"""

from __future__ import annotations

import numpy as np

from ._backend import get_namespace

__all__ = ["padding_mask", "pad_tokens", "split_padding"]


def padding_mask(X):
    """Which token rows of ``X`` are padding.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_tokens, n_features)

    Returns
    -------
    mask : ndarray of bool, shape (n_samples, n_tokens)
        ``True`` where the whole token row is NaN. Rows with only some NaN features are
        ``False`` here (callers validate them as errors).
    """
    X = np.asarray(X)
    if X.ndim != 3:
        raise ValueError(f"padding_mask expects a 3-D array (n, s, d); got shape {X.shape}.")
    if X.shape[2] == 0 or not np.issubdtype(X.dtype, np.floating):
        return np.zeros(X.shape[:2], dtype=bool)
    return np.all(np.isnan(X), axis=2)


def pad_tokens(sequences, *, max_tokens=None, dtype=None):
    """Stack token matrices of different lengths into one NaN-padded array.

    Parameters
    ----------
    sequences : sequence of array-like, each of shape (s_i, n_features)
        The token features of each sample (``s_i >= 1`` real tokens).
    max_tokens : int or None, default=None
        Tokens per sample of the result; ``None`` means the longest sequence. Longer
        sequences are truncated to their first ``max_tokens`` tokens.
    dtype : dtype or None, default=None
        Floating dtype of the result; ``None`` keeps the common floating dtype of the
        sequences (float64 for integer input).

    Returns
    -------
    X : ndarray of shape (n_samples, max_tokens, n_features)
        Sample ``i`` holds its tokens in rows ``0 .. min(s_i, max_tokens) - 1``; the
        remaining rows are NaN (padding, see :func:`padding_mask`).

    Examples
    --------
    >>> import numpy as np
    >>> from skconvexattn.preprocessing import pad_tokens
    >>> X = pad_tokens([np.ones((2, 3)), np.zeros((1, 3))])
    >>> X.shape
    (2, 2, 3)
    >>> bool(np.isnan(X[1, 1]).all())
    True
    """
    seqs = [np.asarray(a) for a in sequences]
    if not seqs:
        raise ValueError("pad_tokens needs at least one sequence; got an empty list.")
    for i, a in enumerate(seqs):
        if a.ndim != 2:
            raise ValueError(
                f"sequence {i} has shape {a.shape}; each sequence must be a 2-D array "
                "(n_tokens_i, n_features)."
            )
        if a.shape[0] == 0:
            raise ValueError(f"sequence {i} has no tokens; every sample needs at least one.")
    d = {a.shape[1] for a in seqs}
    if len(d) != 1:
        raise ValueError(
            f"the sequences have different numbers of features {sorted(d)}; all must share "
            "n_features."
        )
    (d,) = d
    if max_tokens is None:
        max_tokens = max(a.shape[0] for a in seqs)
    elif int(max_tokens) < 1:
        raise ValueError(f"max_tokens must be a positive integer or None; got {max_tokens!r}.")
    max_tokens = int(max_tokens)
    if dtype is None:
        dtype = np.result_type(*[a.dtype for a in seqs], np.float32)
        if not np.issubdtype(dtype, np.floating):
            dtype = np.float64
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"dtype must be a floating dtype (padding is NaN); got {dtype}.")
    X = np.full((len(seqs), max_tokens, d), np.nan, dtype=dtype)
    for i, a in enumerate(seqs):  # one copy per sample: the input is a ragged list
        k = min(a.shape[0], max_tokens)
        X[i, :k] = a[:k]
    return X


def split_padding(X):
    """Padding tokens set to zero, the real-token mask and the real-token counts.

    The heads' kernels call this on every chunk of validated tokens (where a row with a
    NaN is entirely NaN, see :func:`~skconvexattn._validation.check_tokens`), in the
    namespace of ``X`` (NumPy, CuPy or any array-API library).

    Parameters
    ----------
    X : array of shape (m, s, d)
        Token matrices whose padding rows are NaN.

    Returns
    -------
    X0 : array of shape (m, s, d)
        ``X`` with the padding rows replaced by zeros.
    real : array of shape (m, s)
        1.0 on real tokens, 0.0 on padding, in the dtype of ``X``.
    counts : array of shape (m,)
        ``s_i``, the number of real tokens of each sample (``s`` without padding), in the
        dtype of ``X``: the heads pool with ``1 / s_i``.
    """
    xp = get_namespace(X)
    pad = xp.isnan(X[:, :, 0])  # validated: a row with a NaN is entirely NaN
    real = xp.astype(xp.logical_not(pad), X.dtype)
    counts = xp.sum(real, axis=1)
    if not bool(xp.any(pad)):  # no padding in this chunk: X as is (no copy)
        return X, real, counts
    return xp.where(pad[:, :, None], xp.zeros_like(X), X), real, counts
