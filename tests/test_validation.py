"""Bad input (SPEC 6): every user error is a ValueError/TypeError whose message names the
parameter and says how to fix it, raised before anything large is allocated.

One test per case, for every estimator and transformer of the package.
"""

import re
import tracemalloc
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

import skconvexattn
from skconvexattn._backend import cuda_available
from _estimators import HEAD_CLASSES, TRANSFORMER_CLASSES, estimator_params

HEADS = estimator_params(HEAD_CLASSES)
TRANSFORMERS = estimator_params(TRANSFORMER_CLASSES)
ALL = HEADS + TRANSFORMERS


def _make(cls, **params):
    """A small, fast instance: CPU, two gates, few iterations."""
    if cls in TRANSFORMER_CLASSES:
        return cls(**params)
    defaults = dict(n_gates=2, max_iter=30, random_state=0, device="cpu")
    defaults.update(params)
    return cls(**defaults)


def _is_head(est):
    return type(est) in HEAD_CLASSES


def _data(n=20, s=3, d=2, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, s, d)
    y = (X[:, :, 0].mean(axis=1) > 0).astype(int)
    y[:2] = [0, 1]  # both classes whatever the seed
    return X, y


def _fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y) if _is_head(est) else est.fit(X)


def _apply(est, X):
    """``predict`` for a head, ``transform`` for a transformer."""
    return est.predict(X) if _is_head(est) else est.transform(X)


def _check_message(excinfo, *patterns):
    """The message matches every regex in ``patterns`` (the parameter and the fix)."""
    msg = str(excinfo.value)
    assert msg.strip(), "empty error message"
    for pat in patterns:
        assert re.search(pat, msg), f"{pat!r} not found in the message:\n{msg}"


# --------------------------------------------------------------------------- X shape
@pytest.mark.parametrize("cls", ALL)
def test_1d_X(cls):
    X, y = _data()
    with pytest.raises(ValueError) as excinfo:
        _fit(_make(cls), X.ravel(), y)
    _check_message(excinfo, r"\bX\b", r"3-D", r"got a 1-D input", r"[Rr]eshape", r"X\[None\]")


@pytest.mark.parametrize("cls", ALL)
def test_4d_X(cls):
    X, y = _data()
    with pytest.raises(ValueError) as excinfo:
        _fit(_make(cls), X[..., None], y)
    _check_message(
        excinfo, r"\bX\b", r"got a 4-D input of shape \(20, 3, 2, 1\)", r"[Rr]eshape"
    )


@pytest.mark.parametrize("cls", ALL)
def test_1d_X_at_predict(cls):
    X, y = _data()
    est = _fit(_make(cls), X, y)
    with pytest.raises(ValueError) as excinfo:
        _apply(est, X[0].ravel())
    _check_message(excinfo, r"\bX\b", r"1-D", r"X\[None\]")


@pytest.mark.parametrize(
    "shape, named",
    [
        ((0, 3, 2), r"n_samples=0"),
        ((20, 0, 2), r"n_tokens=0"),
        ((20, 3, 0), r"n_features=0"),
        ((0, 6), r"n_samples=0"),
        ((20, 0), r"n_tokens \* n_features=0"),
    ],
    ids=["no-samples", "no-tokens", "no-features", "2d-no-samples", "2d-no-columns"],
)
@pytest.mark.parametrize("cls", ALL)
def test_empty_X(cls, shape, named):
    y = np.arange(shape[0]) % 2
    with pytest.raises(ValueError) as excinfo:
        _fit(_make(cls), np.zeros(shape), y)
    _check_message(
        excinfo, r"X is empty", re.escape(f"shape={shape}"), named, r"at least one sample"
    )


@pytest.mark.parametrize("cls", ALL)
def test_n_tokens_not_dividing_columns(cls):
    X, y = _data(s=3, d=2)
    with pytest.raises(ValueError) as excinfo:
        _fit(_make(cls, n_tokens=4), X.reshape(20, 6), y)
    _check_message(
        excinfo, r"n_tokens=4", r"does not divide the 6 columns", r"divisor of 6", r"3-D"
    )


@pytest.mark.parametrize("cls", ALL)
def test_token_shape_differs_at_predict(cls):
    X, y = _data(s=3, d=2)
    est = _fit(_make(cls), X, y)
    with pytest.raises(ValueError) as excinfo:
        _apply(est, np.zeros((4, 2, 3)))
    _check_message(
        excinfo,
        re.escape("(n_tokens, n_features)=(2, 3)"),
        re.escape("fitted on (3, 2)"),
        r"same number of tokens and features",
    )


@pytest.mark.parametrize("cls", ALL)
def test_flat_width_differs_at_predict(cls):
    X, y = _data(s=3, d=2)
    est = _fit(_make(cls), X, y)
    with pytest.raises(ValueError) as excinfo:
        _apply(est, np.zeros((4, 5)))
    _check_message(excinfo, r"X has 5 features", r"expecting 6 features")


# --------------------------------------------------------------------------- X values
@pytest.mark.parametrize("where", ["fit", "predict"])
@pytest.mark.parametrize("bad, named", [(np.nan, r"NaN \(1 value\)"), (np.inf, r"infinity")])
@pytest.mark.parametrize("cls", ALL)
def test_non_finite_X(cls, bad, named, where):
    X, y = _data()
    Xbad = X.copy()
    Xbad[3, 1, 0] = bad
    est = _make(cls)
    if where == "predict":
        _fit(est, X, y)
    with pytest.raises(ValueError) as excinfo:
        _fit(est, Xbad, y) if where == "fit" else _apply(est, Xbad)
    _check_message(excinfo, r"Input X contains", named, r"finite", r"[Ii]mpute|replace")


@pytest.mark.parametrize("flat", [False, True], ids=["3d", "2d"])
@pytest.mark.parametrize("cls", ALL)
def test_complex_X(cls, flat):
    X, y = _data()
    Xc = X + 1j * X
    if flat:
        Xc = Xc.reshape(20, 6)
    with pytest.raises(ValueError) as excinfo:
        _fit(_make(cls), Xc, y)
    msg = str(excinfo.value)
    _check_message(excinfo, r"Complex data not supported", r"\bX\b", re.escape("X.real, X.imag"))
    assert len(msg) < 600, "the message should not dump the array"


@pytest.mark.parametrize("cls", ALL)
def test_object_X_of_numbers_is_accepted(cls):
    X, y = _data()
    ref = _fit(_make(cls), X, y)
    est = _fit(_make(cls), X.astype(object), y)
    np.testing.assert_array_equal(_apply(est, X.astype(object)), _apply(ref, X))


@pytest.mark.parametrize("cls", ALL)
def test_object_X_of_strings(cls):
    X, y = _data()
    Xo = X.astype(object)
    Xo[0, 0, 0] = "a"
    with pytest.raises(ValueError) as excinfo:
        _fit(_make(cls), Xo, y)
    _check_message(excinfo, r"X must hold numbers", r"'a'", r"Encode non-numeric")


@pytest.mark.parametrize("cls", ALL)
def test_object_X_of_other_objects(cls):
    X, y = _data()
    Xo = X.astype(object)
    Xo[0, 0, 0] = {"foo": "bar"}
    with pytest.raises(TypeError) as excinfo:
        _fit(_make(cls), Xo, y)
    _check_message(excinfo, r"X must hold numbers", r"dict", r"Encode non-numeric")


@pytest.mark.parametrize("cls", ALL)
def test_ragged_X(cls):
    with pytest.raises(ValueError) as excinfo:
        _fit(_make(cls), [[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0]]], [0, 1])
    _check_message(excinfo, r"\bX\b", r"ragged", r"regular array")


# --------------------------------------------------------------------------- labels
@pytest.mark.parametrize("cls", HEADS)
def test_string_labels_work(cls):
    X, y = _data()
    names = np.array(["cat", "dog"])
    ref = _fit(_make(cls), X, y)
    est = _fit(_make(cls), X, names[y])
    np.testing.assert_array_equal(est.classes_, names)
    pred = est.predict(X)
    assert pred.dtype == names.dtype
    np.testing.assert_array_equal(pred, names[ref.predict(X)])
    np.testing.assert_array_equal(est.coef_, ref.coef_)


@pytest.mark.parametrize("cls", HEADS)
def test_non_contiguous_labels_work(cls):
    X, y = _data()
    y3 = np.argmax(X.mean(axis=1) @ np.array([[1.0, -1.0, 0.2], [0.3, 0.5, -1.0]]), axis=1)
    values = np.array([-7, 3, 1000])
    ref = _fit(_make(cls), X, y3)
    est = _fit(_make(cls), X, values[y3])
    np.testing.assert_array_equal(est.classes_, values[np.unique(y3)])
    np.testing.assert_array_equal(est.predict(X), values[ref.predict(X)])
    assert set(np.unique(est.predict(X))) <= set(values)


@pytest.mark.parametrize("cls", HEADS)
def test_single_class(cls):
    X, _ = _data()
    with pytest.raises(ValueError) as excinfo:
        _fit(_make(cls), X, np.full(20, "only"))
    _check_message(excinfo, r"\by\b", r"only one class", r"'only'", r"at least 2 classes")


@pytest.mark.parametrize("n_labels", [19, 21])
@pytest.mark.parametrize("cls", HEADS)
def test_y_of_wrong_length(cls, n_labels):
    X, _ = _data()
    y = np.arange(n_labels) % 2
    with pytest.raises(ValueError) as excinfo:
        _fit(_make(cls), X, y)
    _check_message(
        excinfo, rf"y has {n_labels} labels but X has 20 samples", r"one label per sample"
    )


@pytest.mark.parametrize("cls", HEADS)
def test_y_of_wrong_length_flattened(cls):
    X, _ = _data()
    with pytest.raises(ValueError) as excinfo:
        _fit(_make(cls, n_tokens=3), X.reshape(20, 6), np.arange(19) % 2)
    _check_message(excinfo, r"y has 19 labels but X has 20 samples", r"one label per sample")


@pytest.mark.parametrize("cls", HEADS)
def test_continuous_y(cls):
    X, _ = _data()
    with pytest.raises(ValueError) as excinfo:
        _fit(_make(cls), X, np.linspace(0, 1, 20))
    _check_message(excinfo, r"label type: continuous", r"classifier")


@pytest.mark.parametrize("cls", HEADS)
def test_y_none(cls):
    X, _ = _data()
    with pytest.raises(ValueError) as excinfo:
        _make(cls).fit(X, None)
    _check_message(excinfo, r"requires y to be passed")


# --------------------------------------------------------------------------- sample_weight
@pytest.mark.parametrize(
    "weights, pattern",
    [
        (-np.ones(20), r"Negative values in data passed to `sample_weight`"),
        (np.ones(19), r"sample_weight\.shape == \(19,\), expected \(20,\)"),
        (np.r_[np.nan, np.ones(19)], r"sample_weight contains NaN"),
        (np.r_[np.zeros(10), np.ones(10)], r"sample_weight"),
    ],
    ids=["negative", "wrong-length", "nan", "one-class-left"],
)
@pytest.mark.parametrize("cls", HEADS)
def test_bad_sample_weight(cls, weights, pattern):
    X, _ = _data()
    y = np.r_[np.zeros(10, int), np.ones(10, int)]
    with pytest.raises(ValueError) as excinfo:
        _make(cls).fit(X, y, sample_weight=weights)
    _check_message(excinfo, pattern)


@pytest.mark.parametrize("cls", HEADS)
def test_class_weight_naming_unknown_class(cls):
    X, y = _data()
    with pytest.raises(ValueError) as excinfo:
        _fit(_make(cls, class_weight={0: 1.0, 5: 2.0}), X, y)
    _check_message(excinfo, r"class_weight")


# --------------------------------------------------------------------------- parameters
BAD_PARAMS = [
    ("alpha", 0.0, r"range \(0\.0, inf\)"),
    ("alpha", -1.0, r"range \(0\.0, inf\)"),
    ("n_gates", 0, r"range \[1, inf\)"),
    ("tol", -1e-4, r"range \[0\.0, inf\)"),
    ("max_iter", 0, r"range \[1, inf\)"),
    ("memory_budget", 0.0, r"range \(0\.0, inf\)"),
    ("n_tokens", 0, r"range \[1, inf\)"),
    ("device", "gpu", r"'cuda'"),
    ("loss", "hinge", r"'log_loss'"),
    ("activation", "relu", r"'gated_relu'"),
    ("class_weight", "uniform", r"'balanced'"),
]


@pytest.mark.parametrize(
    "name, value, allowed", BAD_PARAMS, ids=[f"{p[0]}={p[1]!r}" for p in BAD_PARAMS]
)
@pytest.mark.parametrize("cls", HEADS)
def test_out_of_range_parameter(cls, name, value, allowed):
    X, y = _data()
    with pytest.raises(ValueError) as excinfo:
        _make(cls, **{name: value}).fit(X, y)
    # InvalidParameterError: a ValueError (and a TypeError) naming the parameter, the
    # allowed range or options, and the value given
    assert isinstance(excinfo.value, TypeError)
    _check_message(excinfo, rf"'{name}' parameter", allowed, re.escape(f"Got {value!r}"))


@pytest.mark.parametrize("name", ["n_modes", "n_blocks"])
def test_fno_parameter_below_one(name):
    X, y = _data()
    with pytest.raises(ValueError) as excinfo:
        _make(skconvexattn.ConvexFNOClassifier, **{name: 0}).fit(X, y)
    _check_message(excinfo, rf"'{name}' parameter", r"range \[1, inf\)", r"Got 0")


@pytest.mark.parametrize("s, n_modes", [(3, 3), (4, 4), (8, 6)])
def test_fno_n_modes_beyond_the_spectrum(s, n_modes):
    X, y = _data(s=s)
    with pytest.raises(ValueError) as excinfo:
        _make(skconvexattn.ConvexFNOClassifier, n_modes=n_modes).fit(X, y)
    F = s // 2 + 1
    _check_message(
        excinfo,
        rf"n_modes={n_modes} is out of range",
        rf"n_tokens={s}",
        re.escape(f"[1, {F}]"),
        r"or None",
    )


def test_fno_n_blocks_beyond_the_features():
    X, y = _data(d=2)
    with pytest.raises(ValueError) as excinfo:
        _make(skconvexattn.ConvexFNOClassifier, n_blocks=3).fit(X, y)
    _check_message(excinfo, r"n_blocks=3", r"n_features=2", re.escape("n_blocks in [1, 2]"))


def test_token_pca_too_many_components():
    X, _ = _data(d=2)
    with pytest.raises(ValueError) as excinfo:
        skconvexattn.TokenPCA(n_components=3).fit(X)
    _check_message(excinfo, r"n_components=3", r"n_features=2", r"n_components <= 2")


@pytest.mark.parametrize("cls", TRANSFORMERS)
def test_transformer_bad_n_tokens(cls):
    X, _ = _data()
    with pytest.raises(ValueError) as excinfo:
        cls(n_tokens=0).fit(X.reshape(20, 6))
    _check_message(excinfo, r"'n_tokens' parameter", r"range \[1, inf\)")


# --------------------------------------------------------------------------- memory
def _peak_bytes_of(fn):
    """Run ``fn`` (expected to raise ValueError) and return the traced peak allocation."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as excinfo:
            fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return excinfo, peak


def _assert_refused_cleanly(excinfo, peak, est, reduce_words):
    _check_message(
        excinfo,
        r"this problem needs [\d,]+ weights",
        r"about [\d.e+]+ (GiB|MiB)",
        r"more than memory_budget=",
        r"Reduce ",
        r"raise memory_budget",
        *reduce_words,
    )
    # refused before anything large was allocated (the refused problem needs GiBs)
    assert peak < 8 * 1024**2, f"peak allocation {peak / 1024**2:.1f} MiB before the refusal"
    assert not hasattr(est, "coef_") and not hasattr(est, "gates_")


@pytest.mark.parametrize("cls", HEADS)
def test_memory_refusal_many_gates(cls):
    X, y = _data(n=6, s=3, d=2)
    # at least 10**7 * 2 * 2 weights, 8 solver arrays of them: over 2 GiB for every head
    est = _make(cls, n_gates=10**7, memory_budget=1.0)
    excinfo, peak = _peak_bytes_of(lambda: est.fit(X, y))
    _assert_refused_cleanly(excinfo, peak, est, [r"n_gates", r"memory_budget=1 GiB"])
    # the size is stated, in GiB
    size = re.search(r"about ([\d.e+]+) (GiB|MiB)", str(excinfo.value))
    assert size.group(2) == "GiB" and float(size.group(1)) > 2


@pytest.mark.parametrize("activation", ["gated_relu", "linear"])
def test_memory_refusal_attention_wide_tokens(activation):
    """d = 200 features per token: d**3 = 8e6 lifted features per sample and gate."""
    cls = skconvexattn.ConvexSelfAttentionClassifier
    rng = np.random.RandomState(0)
    X = rng.randn(4, 3, 200)
    y = np.array([0, 1, 0, 1])
    est = _make(cls, activation=activation, memory_budget=0.01)
    excinfo, peak = _peak_bytes_of(lambda: est.fit(X, y))
    n_lifted = (1 if activation == "linear" else 2) * 200**3  # blocks * d**3
    _assert_refused_cleanly(
        excinfo, peak, est, [f"{n_lifted:,} lifted features", r"TokenPCA", r"memory_budget=0.01"]
    )


def test_memory_refusal_mixer_many_tokens():
    """s = 300 tokens: s**2 * d lifted features per sample and gate."""
    cls = skconvexattn.ConvexMixerClassifier
    rng = np.random.RandomState(0)
    X = rng.randn(4, 300, 2)
    y = np.array([0, 1, 0, 1])
    est = _make(cls, memory_budget=0.01)
    excinfo, peak = _peak_bytes_of(lambda: est.fit(X, y))
    _assert_refused_cleanly(excinfo, peak, est, [r"n_tokens", r"memory_budget=0.01"])


@pytest.mark.parametrize("cls", HEADS)
def test_memory_refusal_at_predict(cls):
    X, y = _data()
    est = _fit(_make(cls), X, y)
    est.set_params(memory_budget=1e-9)
    with pytest.raises(ValueError) as excinfo:
        est.predict(X)
    _check_message(excinfo, r"more than memory_budget=1e-09 GiB", r"Reduce ")


# --------------------------------------------------------------------------- device
@pytest.mark.skipif(cuda_available(), reason="a CUDA GPU is visible: device='cuda' is valid")
@pytest.mark.parametrize("cls", HEADS)
def test_cuda_without_gpu(cls):
    X, y = _data()
    est = _make(cls, device="cuda")
    with pytest.raises(ValueError) as excinfo:
        est.fit(X, y)
    _check_message(excinfo, r"device='cuda'", r"no CUDA GPU", r"device='cpu'")
    assert not hasattr(est, "coef_")
