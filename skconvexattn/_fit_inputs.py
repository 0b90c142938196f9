"""What a fit takes from ``y`` and ``sample_weight`` before any solver work: the classes,
the checked and normalised weights, and the key that says whether a warm start may keep
its gates. Shared by the in-memory set-up (:mod:`skconvexattn._base`) and the Dask one
(:mod:`skconvexattn._dask`)."""

from __future__ import annotations

import numpy as np
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight


def _plain(value):
    """A NumPy scalar as the Python value it holds (messages print ``0``, not
    ``np.int64(0)``)."""
    return value.item() if isinstance(value, np.generic) else value


def _checked_class_weight(class_weight, y, sw, classes):
    """``sample_weight`` times the weights of ``class_weight``, whose values must be
    finite and non-negative (the message names ``class_weight``)."""
    if class_weight is None:
        return sw
    if isinstance(class_weight, dict):
        bad = {
            _plain(k): _plain(v)
            for k, v in class_weight.items()
            if not (np.isscalar(v) and np.isreal(v) and np.isfinite(v) and v >= 0)
        }
        if bad:
            raise ValueError(
                f"class_weight must map classes to finite non-negative weights; got {bad}. "
                "Give every class a weight >= 0 (0 drops the class's samples)."
            )
    return sw * compute_sample_weight(class_weight, y)


def _normalised_weights(sw):
    """``sw / sw.sum()`` in float64 without overflow (weights up to the float64 maximum)."""
    sw = np.asarray(sw, dtype=np.float64)
    top = sw.max()
    if not np.isfinite(top):
        raise ValueError("sample_weight must be finite; got an infinite weight.")
    scaled = sw / top if top > 0 else sw
    return scaled / scaled.sum()


def _classes_and_weights(est, y, sample_weight, X2):
    """Classes, encoded labels and the sample weights times ``class_weight`` of a fit,
    with the checks on ``y`` and the weights (``X2``: anything with ``n_samples`` rows;
    the Dask path passes a placeholder)."""
    check_classification_targets(y)
    classes, y_enc = np.unique(y, return_inverse=True)
    if classes.shape[0] < 2:
        raise ValueError(
            f"y has only one class ({_plain(classes[0])!r}); a classifier needs samples "
            "of at least 2 classes."
        )
    sw = _check_sample_weight(sample_weight, X2, ensure_non_negative=True)
    sw = _checked_class_weight(est.class_weight, y, sw, classes)
    class_totals = np.bincount(y_enc, weights=sw, minlength=classes.shape[0])
    if np.count_nonzero(class_totals > 0) < 2:
        raise ValueError(
            "sample_weight leaves only one class with positive total weight; a "
            "classifier needs at least 2 classes with positive weight."
        )
    if np.any(class_totals <= 0):
        empty = [_plain(v) for v in classes[class_totals <= 0]]
        raise ValueError(
            f"class(es) {empty} have zero total sample_weight; drop those samples "
            "or give them positive weight."
        )
    return classes, y_enc, sw


#: parameters that change how a fit is solved, not its gates
_SOLVER_ONLY_PARAMS = frozenset(
    {"alpha", "alpha_ratio", "max_iter", "max_time", "tol", "tol_scale", "solver",
     "verbose", "warm_start", "device", "memory_budget"}
)


def _same_gate_key(old, new):
    """Whether a warm start sees the data its gates were drawn from (same shape and token
    moments): then a cold fit would draw the same gates."""
    if old is None:
        return False
    return (
        old[0] == new[0]
        and np.array_equal(old[1], new[1])
        and np.array_equal(old[2], new[2])
    )
