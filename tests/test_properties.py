"""Property-based tests (hypothesis) over random small problems: shapes (n <= 12,
n_tokens <= 4, n_features <= 4, zeros included), dtypes, scales, layouts and labels.

* Validation: whatever the input, fit/predict/transform either work or raise a
  ValueError/TypeError with a non-empty message; and they work exactly when the input is
  valid (no bad input slips through, no good input is refused).
* No fit, prediction or transform modifies its inputs (X, y, sample_weight).

Feature scales stay within 1e-2..1e2 here; the extremes (1e-6, 1e6) are
tests/test_robustness.py's subject.
"""

import inspect
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from _estimators import HEAD_CLASSES, TRANSFORMER_CLASSES, estimator_params

HEADS = estimator_params(HEAD_CLASSES)
ALL = HEADS + estimator_params(TRANSFORMER_CLASSES)

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _make(cls, n_tokens=None):
    if cls in TRANSFORMER_CLASSES:
        return cls(n_tokens=n_tokens)
    return cls(n_gates=2, max_iter=5, random_state=0, device="cpu", n_tokens=n_tokens)


def _is_head(est):
    return type(est) in HEAD_CLASSES


# --------------------------------------------------------------------------- strategies
DTYPES = ["float64", "float32", "int64", "int32"]


@st.composite
def token_arrays(draw, min_n=0, min_s=0, min_d=0, ndims=(1, 2, 3, 3, 3, 4)):
    """``(X, info)``: a random array of token features and what makes it (in)valid."""
    ndim = draw(st.sampled_from(ndims))
    n = draw(st.integers(min_n, 12))
    s = draw(st.integers(min_s, 4))
    d = draw(st.integers(min_d, 4))
    shape = {1: (n * s * d,), 2: (n, s * d), 3: (n, s, d), 4: (n, s, d, 1)}[ndim]
    dtype = draw(st.sampled_from(DTYPES))
    if dtype.startswith("int"):
        X = draw(hnp.arrays(dtype, shape, elements=st.integers(-20, 20)))
    else:
        X = draw(hnp.arrays(dtype, shape, elements=dict(min_value=-1.0, max_value=1.0)))
        X = X * X.dtype.type(draw(st.sampled_from([1e-2, 1.0, 1e2])))
    finite = True
    if X.size and not dtype.startswith("int") and draw(st.integers(0, 4)) == 0:
        X.flat[draw(st.integers(0, X.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        finite = False
    layout = draw(st.sampled_from(["C", "F", "strided"]))
    if layout == "F":
        X = np.asfortranarray(X)
    elif layout == "strided" and X.ndim >= 1:
        X = np.repeat(X, 2, axis=-1)[..., ::2]  # a non-contiguous view
    n_tokens = draw(st.sampled_from([None, 1, 2, 3])) if ndim == 2 else None
    info = dict(ndim=ndim, n=n, s=s, d=d, finite=finite, n_tokens=n_tokens)
    return X, info


LABEL_KINDS = ["int", "str", "noncontig", "bool", "single", "continuous"]


@st.composite
def labels(draw, n, kinds=LABEL_KINDS, min_classes=2):
    kind = draw(st.sampled_from(kinds))
    k = draw(st.integers(min_classes, 3))
    base = np.asarray(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)), dtype=int)
    if n >= k and kind != "single":  # every class present
        base[:k] = np.arange(k)
    if kind == "int":
        y = base
    elif kind == "str":
        y = np.array(["ant", "bee", "cow"])[base]
    elif kind == "noncontig":
        y = np.array([-3, 10, 1000])[base]
    elif kind == "bool":
        y = base % 2 == 1
    elif kind == "single":
        y = np.full(n, 7)
    else:  # continuous
        y = np.linspace(0.0, 1.0, n) + 0.123
    n_classes = np.unique(y).size
    valid = kind != "continuous" and n_classes >= 2
    return y, valid


def _valid_X(info, X=None, token_shape=None):
    if info["ndim"] not in (2, 3):
        return False
    if info["n"] == 0 or info["s"] == 0 or info["d"] == 0:
        return False
    if info["ndim"] == 2:
        s = info["n_tokens"] or 1
        if (info["s"] * info["d"]) % s:
            return False
    return info["finite"] or _only_padding(X, info, token_shape)


def _only_padding(X, info, token_shape=None):
    """Whether the non-finite values of ``X`` are padding: whole token rows of NaN, every
    sample keeping a real token (docs/padding.rst)."""
    if X is None:
        return False
    X = np.asarray(X, dtype=np.float64)
    if np.isinf(X).any():
        return False
    n = X.shape[0]
    if token_shape is not None:
        X3 = X.reshape(n, *token_shape)
    elif info["ndim"] == 3:
        X3 = X
    else:
        X3 = X.reshape(n, info["n_tokens"] or 1, -1)
    nan = np.isnan(X3)
    pad = nan.all(axis=2)
    return bool(np.array_equal(nan.any(axis=2), pad) and not pad.all(axis=1).any())


def _expect(valid, action):
    """Run ``action``; valid input must work, invalid input must raise a ValueError or
    TypeError with a message (any other exception fails the test)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning, alpha >= alpha_max_
            out = action()
    except (ValueError, TypeError) as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        assert not valid, f"valid input refused: {type(exc).__name__}: {exc}"
        return None
    assert valid, "invalid input accepted"
    return out


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("cls", ALL)
@SETTINGS
@given(data=st.data())
def test_fit_validation_answers_every_input(cls, data):
    X, info = data.draw(token_arrays(), label="X")
    est = _make(cls, info["n_tokens"])
    valid = _valid_X(info, X)
    if _is_head(est):
        n_y = max(info["n"] + data.draw(st.sampled_from([0, 0, 0, -1, 1]), label="dn"), 0)
        y, y_valid = data.draw(labels(n_y), label="y")
        valid = valid and y_valid and n_y == info["n"]
        if valid and info["n"] < 2:
            valid = False  # one sample is one class
        fitted = _expect(valid, lambda: est.fit(X, y))
        if fitted is None:
            return
        pred = est.predict(X)
        assert pred.shape == (info["n"],) and np.isin(pred, est.classes_).all()
        assert set(np.unique(pred)) <= set(np.unique(y))
        assert np.all(np.isfinite(est.decision_function(X)))
        assert np.all(np.isfinite(est.coef_)) and np.isfinite(est.objective_)
    else:
        fitted = _expect(valid, lambda: est.fit(X))
        if fitted is None:
            return
        Xt = est.transform(X)
        assert Xt.ndim == X.ndim and Xt.shape[0] == info["n"]
        pad = np.isnan(np.asarray(X, dtype=np.float64))  # padding stays NaN, only there
        if Xt.shape == pad.shape:
            np.testing.assert_array_equal(np.isnan(Xt), pad)
        else:
            assert np.isnan(Xt).any() == pad.any()


@pytest.mark.parametrize("cls", ALL)
@SETTINGS
@given(data=st.data())
def test_predict_validation_answers_every_input(cls, data):
    """A model fitted on (n, 3, 2) tokens, asked about random arrays."""
    rng = np.random.RandomState(0)
    Xfit = rng.randn(10, 3, 2)
    yfit = np.arange(10) % 2
    est = _make(cls)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(Xfit, yfit) if _is_head(est) else est.fit(Xfit)
    X, info = data.draw(token_arrays(), label="X")
    if info["ndim"] == 2:
        same = info["s"] * info["d"] == 6
    else:
        same = (info["s"], info["d"]) == (3, 2)
    valid = same and _valid_X({**info, "n_tokens": None}, X, token_shape=(3, 2))
    methods = ["predict", "decision_function", "transform"] if _is_head(est) else ["transform"]
    for name in methods:
        out = _expect(valid, lambda: getattr(est, name)(X))
        if out is not None:
            assert out.shape[0] == info["n"]


# --------------------------------------------------------------------------- no mutation
@st.composite
def valid_problems(draw):
    X, info = draw(token_arrays(min_n=4, min_s=1, min_d=1, ndims=(2, 3)))
    if info["ndim"] == 2:  # one token per row unless n_tokens divides the width
        info["n_tokens"] = info["s"] if draw(st.booleans()) else None
    X = np.nan_to_num(X, nan=0.5, posinf=2.0, neginf=-2.0)
    y, _ = draw(labels(info["n"], kinds=["int", "str", "noncontig", "bool"]))
    sw = draw(
        st.one_of(
            st.none(),
            hnp.arrays("float64", info["n"], elements=st.floats(0.1, 10.0)),
            hnp.arrays("int64", info["n"], elements=st.integers(1, 3)),
        )
    )
    return X, y, sw, info


def _snapshot(a):
    if a is None:
        return None
    a = np.asarray(a)
    return a.copy(), a.dtype, a.shape, a.strides, a.flags["C_CONTIGUOUS"], a.flags.writeable


def _assert_unchanged(before, a, what):
    if before is None:
        assert a is None
        return
    copy, dtype, shape, strides, c_contig, writeable = before
    a = np.asarray(a)
    assert (a.dtype, a.shape, a.strides) == (dtype, shape, strides), f"{what} was reshaped"
    assert a.flags["C_CONTIGUOUS"] == c_contig and a.flags.writeable == writeable
    np.testing.assert_array_equal(a, copy, err_msg=f"{what} was modified")


@pytest.mark.parametrize("cls", ALL)
@SETTINGS
@given(problem=valid_problems())
def test_nothing_modifies_its_inputs(cls, problem):
    X, y, sw, info = problem
    est = _make(cls, info["n_tokens"])
    snaps = {"X": _snapshot(X), "y": _snapshot(y), "sample_weight": _snapshot(sw)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if _is_head(est):
            est.fit(X, y, sample_weight=sw)
            calls = [est.predict, est.decision_function, est.predict_proba, est.transform]
        else:
            if "sample_weight" in inspect.signature(est.fit).parameters:
                est.fit(X, sample_weight=sw)
            else:
                est.fit(X)
            calls = [est.transform, lambda Z: est.inverse_transform(est.transform(Z))]
        for call in calls:
            call(X)
    _assert_unchanged(snaps["X"], X, "X")
    _assert_unchanged(snaps["y"], y, "y")
    _assert_unchanged(snaps["sample_weight"], sw, "sample_weight")
