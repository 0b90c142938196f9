"""Input checks shared by every estimator and transformer of the package."""

from __future__ import annotations

import numpy as np
from sklearn.utils import check_array
from sklearn.utils.validation import validate_data

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


def check_tokens(estimator, X, y=None, *, reset, n_tokens=None):
    """Validate ``X`` (and ``y``) and return token matrices of shape ``(n, s, d)``.

    ``X`` is either 3-D ``(n_samples, n_tokens, n_features)`` or 2-D
    ``(n_samples, n_tokens * n_features)``. At fit (``reset=True``) a 2-D ``X`` is cut into
    ``n_tokens`` tokens (``None``: one token per row); afterwards 2-D input is cut like the
    training data, so a model fitted on 3-D data accepts it flattened, and the reverse.
    Sets ``n_features_in_`` (the flattened width) and ``token_shape_`` at fit.
    """
    ndim = _ndim(X)
    if ndim == 3:
        X3 = check_array(
            X, allow_nd=True, dtype=_FLOATS, input_name="X", estimator=estimator
        )
        n, s, d = X3.shape
        if not reset:
            _check_token_shape(estimator, (s, d))
        flat = X3.reshape(n, s * d)
        if y is None:
            validate_data(estimator, flat, reset=reset, dtype=_FLOATS)
        else:
            _, y = validate_data(estimator, flat, y, reset=reset, dtype=_FLOATS)
    elif ndim == 2:
        if y is None:
            flat = validate_data(estimator, X, reset=reset, dtype=_FLOATS)
        else:
            flat, y = validate_data(estimator, X, y, reset=reset, dtype=_FLOATS)
        n, f = flat.shape
        if reset:
            s = 1 if n_tokens is None else int(n_tokens)
            if f % s:
                raise ValueError(
                    f"n_tokens={s} does not divide the {f} columns of the 2-D X: a flattened "
                    "X must have n_tokens * n_features columns. Pass the 3-D array "
                    "(n_samples, n_tokens, n_features), or set n_tokens to a divisor of "
                    f"{f}."
                )
            s, d = s, f // s
        else:
            s, d = estimator.token_shape_
        X3 = flat.reshape(n, s, d)
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
