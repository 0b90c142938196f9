"""Input checks shared by every estimator and transformer of the package."""

from __future__ import annotations

import numpy as np
from sklearn.utils import check_array
from sklearn.utils.validation import _num_samples, validate_data

__all__ = ["check_tokens"]

_FLOATS = [np.float64, np.float32]


def _ndim(X):
    nd = getattr(X, "ndim", None)
    if nd is not None:
        return nd
    try:
        return np.asarray(X).ndim
    except ValueError as exc:  # ragged nested sequences
        raise ValueError(
            "X could not be read as an array (ragged nested lists?). Pass a regular "
            "array of shape (n_samples, n_tokens, n_features)."
        ) from exc


def _check_3d_shape(estimator, shape, n_tokens, reset):
    """A 3-D ``X``: no ``n_tokens`` at fit (it is for flattened input), and afterwards the
    token shape seen at fit."""
    n, s, d = (int(v) for v in shape)
    if reset and n_tokens is not None and int(n_tokens) != s:
        raise ValueError(
            f"n_tokens={n_tokens} contradicts X of shape {tuple(shape)}, which already has "
            f"{s} tokens: n_tokens is for a flattened 2-D X (n_samples, n_tokens * "
            "n_features). Leave n_tokens=None for 3-D input."
        )
    if not reset:
        _check_token_shape(estimator, (s, d))


def _split_columns(f, n_tokens):
    """``(n_tokens, n_features)`` of a flattened ``X`` with ``f`` columns at fit."""
    s = 1 if n_tokens is None else int(n_tokens)
    if f % s:
        raise ValueError(
            f"n_tokens={s} does not divide the {f} columns of the 2-D X: a flattened "
            "X must have n_tokens * n_features columns. Pass the 3-D array "
            "(n_samples, n_tokens, n_features), or set n_tokens to a divisor of "
            f"{f}."
        )
    return s, f // s


def check_tokens(estimator, X, y=None, *, reset, n_tokens=None, require_y=False):
    """Validate ``X`` (and ``y``) and return token matrices of shape ``(n, s, d)``.

    ``X`` is either 3-D ``(n_samples, n_tokens, n_features)`` or 2-D
    ``(n_samples, n_tokens * n_features)``. At fit (``reset=True``) a 2-D ``X`` is cut into
    ``n_tokens`` tokens (``None``: one token per row); afterwards 2-D input is cut like the
    training data, so a model fitted on 3-D data accepts it flattened, and the reverse.
    Sets ``n_features_in_`` (the flattened width) and ``token_shape_`` at fit.
    ``require_y``: a classifier's fit, for which ``y=None`` is an error.

    Padding: a token row whose every feature is NaN is a padding token
    (:func:`~skconvexattn.preprocessing.padding_mask`) and is returned as is (NaN); every
    sample must keep at least one real token. A row with only some NaN features, or any
    infinite value, is an error.
    """
    if require_y and y is None:
        raise ValueError(
            f"{type(estimator).__name__} requires y to be passed, but the target y is None."
        )
    ndim = _ndim(X)
    if ndim in (2, 3):
        _check_not_empty(X, ndim)
        if y is not None:
            _check_n_labels(X, y)
    if ndim == 3:
        with _explain_conversion(X, estimator):
            X3 = check_array(
                X,
                allow_nd=True,
                dtype=_FLOATS,
                ensure_all_finite=False,
                input_name="X",
                estimator=estimator,
            )
        n, s, d = X3.shape
        _check_3d_shape(estimator, X3.shape, n_tokens, reset)
        flat = X3.reshape(n, s * d)
        if y is None:
            validate_data(estimator, flat, reset=reset, dtype=_FLOATS, ensure_all_finite=False)
        else:
            _, y = validate_data(
                estimator, flat, y, reset=reset, dtype=_FLOATS, ensure_all_finite=False
            )
        _check_finite(X3)
    elif ndim == 2:
        with _explain_conversion(X, estimator):
            if y is None:
                flat = validate_data(
                    estimator, X, reset=reset, dtype=_FLOATS, ensure_all_finite=False
                )
            else:
                flat, y = validate_data(
                    estimator, X, y, reset=reset, dtype=_FLOATS, ensure_all_finite=False
                )
        n, f = flat.shape
        if reset:
            s, d = _split_columns(f, n_tokens)
        else:
            s, d = estimator.token_shape_
        X3 = flat.reshape(n, s, d)
        _check_finite(X3)
    else:
        shape = getattr(X, "shape", None)
        raise ValueError(
            f"X must be a 3-D array (n_samples, n_tokens, n_features) or its 2-D "
            f"flattening (n_samples, n_tokens * n_features); got a {ndim}-D input"
            + (f" of shape {tuple(shape)}" if shape is not None else "")
            + ". Reshape your data, e.g. X.reshape(n_samples, n_tokens, n_features)"
            + (" (a single sample needs X[None])." if ndim in (1, 2) else ".")
        )
    if reset:
        estimator.token_shape_ = (int(X3.shape[1]), int(X3.shape[2]))
    return (X3, y) if y is not None else X3


def _check_token_shape(estimator, shape):
    fitted = tuple(estimator.token_shape_)
    if tuple(shape) != fitted:
        raise ValueError(
            f"X has tokens of shape (n_tokens, n_features)={tuple(shape)}, but "
            f"{type(estimator).__name__} was fitted on {fitted}. Pass data with the same "
            "number of tokens and features per token as at fit (the same token PCA, patch "
            "size and positional features)."
        )


_AXES = {
    3: ("n_samples", "n_tokens", "n_features"),
    2: ("n_samples", "n_tokens * n_features"),
}


def _check_not_empty(X, ndim):
    """An empty axis, named in the message (the 3-D shape, not the flattened one)."""
    shape = getattr(X, "shape", None)
    if shape is None:
        shape = np.asarray(X).shape
    shape = tuple(int(v) for v in shape)
    empty = [name for name, size in zip(_AXES[ndim], shape) if size == 0]
    if empty:
        unit = "sample(s)" if shape[0] == 0 else "feature(s)"
        raise ValueError(
            f"X is empty: found array with 0 {unit} (shape={shape}) while a minimum of 1 "
            "is required ("
            + ", ".join(f"{name}=0" for name in empty)
            + "). Pass at least one sample with at least one token of at least one "
            "feature, as an array of shape (n_samples, n_tokens, n_features)."
        )


def _check_n_labels(X, y):
    """One label per sample, said with both names (before any conversion)."""
    try:
        n_x, n_y = _num_samples(X), _num_samples(y)
    except TypeError:  # a scalar y: validate_data says so
        return
    if n_x != n_y:
        raise ValueError(
            f"y has {n_y} labels but X has {n_x} samples: pass one label per sample, "
            "y of shape (n_samples,) matching the first axis of X."
        )


def _check_finite(X):
    """Validate the values of the ``(n, s, d)`` float array ``X``.

    Token rows entirely NaN are padding and allowed, as long as every sample keeps a real
    token; any other NaN (a row with *some* NaN features) or infinity is an error saying
    which, how many, and the fix.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.sum(X)):  # a finite sum means every entry is finite
            return
    nan = np.isnan(X)
    n_inf = int(np.count_nonzero(np.isinf(X)))
    pad = nan.all(axis=2)  # (n, s): padding tokens
    n_nan = int(np.count_nonzero(nan)) - int(np.count_nonzero(pad)) * X.shape[2]
    if not n_nan and not n_inf:
        if pad.any():
            empty = np.flatnonzero(pad.all(axis=1))
            if empty.size:
                raise ValueError(_empty_message(empty.size, int(empty[0])))
        return  # padding only, or the sum overflowed while the entries are finite
    first = None
    if n_nan:
        first = tuple(int(v) for v in np.argwhere(nan.any(axis=2) & ~pad)[0])
    raise ValueError(_nonfinite_message(n_nan, n_inf, first, X.shape[2]))


def _empty_message(n_empty, first):
    """The error of samples with only padding tokens (shared with the Dask path)."""
    return (
        f"{n_empty} sample(s) of X (e.g. sample {first}) have only "
        "padding tokens (token rows entirely NaN); every sample needs at least "
        "one real token. Drop those samples before calling this method."
    )


def _nonfinite_message(n_nan, n_inf, first, d):
    """The error of NaN outside padding rows or infinite values (shared with the Dask
    path): counts, the first bad ``(sample, token)`` and the fix."""
    what = []
    if n_nan:
        what.append(f"NaN ({n_nan} value{'s' * (n_nan > 1)})")
    if n_inf:
        what.append(f"infinity ({n_inf} value{'s' * (n_inf > 1)})")
    hint = ""
    if n_nan:
        i, t = first
        hint = (
            f" Token rows with only some NaN features are not padding (e.g. sample {i}, "
            f"token {t}); a padding token must be NaN in all {d} features."
        )
    return (
        f"Input X contains {' and '.join(what)}; the token features must be finite."
        + hint
        + " Impute missing values (e.g. sklearn.impute.SimpleImputer on "
        "X.reshape(-1, n_features)), drop the affected samples, or replace infinite "
        "values (np.nan_to_num, clipping) before calling this method."
    )


class _explain_conversion:
    """Re-raise a failed conversion of ``X`` to floats with a message naming ``X`` and
    the fix: complex input, and non-numeric (object, string) input. Other errors pass
    through unchanged."""

    def __init__(self, X, estimator=None):
        self.X = X
        self.name = type(estimator).__name__ if estimator is not None else "this estimator"

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or not issubclass(exc_type, (TypeError, ValueError)):
            return False
        if "feature names" in str(exc).lower():
            return False  # mixed column-name types: scikit-learn's message says the fix
        kinds = _dtype_kinds(self.X)
        if "c" in kinds and "omplex" in str(exc):
            raise ValueError(
                f"Complex data not supported: X has a complex dtype, and {self.name} "
                "needs real token features. Pass real features, e.g. the real and imaginary "
                "parts as separate features, np.concatenate([X.real, X.imag], axis=-1), "
                "or the magnitudes np.abs(X)."
            ) from exc
        if kinds & set("OUSV") and not _converts(self.X):
            # keep the kind of error numpy gave (TypeError for e.g. a dict in the array)
            new_type = ValueError if issubclass(exc_type, ValueError) else TypeError
            raise new_type(
                f"X must hold numbers only (float, int or bool), but converting it to "
                f"float failed ({exc}). Encode non-numeric token features as numbers first "
                "(e.g. with sklearn.preprocessing.OrdinalEncoder) or pass a float array."
            ) from exc
        return False


def _dtype_kinds(X):
    """The dtype kinds of ``X`` (several for a DataFrame); only called on errors."""
    dtypes = getattr(X, "dtypes", None)
    if dtypes is not None and not isinstance(dtypes, np.dtype):
        return {np.dtype(dt).kind if isinstance(dt, np.dtype) else "O" for dt in dtypes}
    dtype = getattr(X, "dtype", None)
    if dtype is None:
        try:
            dtype = np.asarray(X).dtype
        except Exception:
            return set()
    return {np.dtype(dtype).kind} if isinstance(dtype, np.dtype) else {"O"}


def _converts(X):
    """Whether ``X`` converts to float64 (only called on errors)."""
    try:
        np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return True
