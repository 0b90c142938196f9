"""Reproducibility and invariances of every fit.

* permuting the samples, relabelling the classes (string labels, reordered label values)
  and duplicating the training set (the loss is a mean, so ``alpha`` is unchanged) leave the
  solution unchanged: ``objective_``, ``decision_function`` and ``coef_`` (up to the
  permutation of the class columns);
* ``random_state`` fixes the model bit for bit;
* float32 and float64 fits agree to float32 accuracy;
* pickle and joblib round trips predict identically (and a GPU fit predicts on the CPU);
* ``sample_weight`` and ``class_weight``: the objective is the documented weighted mean,
  the duality-gap certificate bounds the suboptimality, and integer weights are
  repetitions of samples.
"""

import pickle
import warnings

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.class_weight import compute_sample_weight

from skconvexattn._backend import cuda_available
from _estimators import HEAD_CLASSES, TRANSFORMER_CLASSES, estimator_params

# every head, with both activations
HEADS = estimator_params(HEAD_CLASSES, ("gated_relu", "linear"))
# every head, default (gated) activation only: for the costlier tests
GATED = estimator_params(HEAD_CLASSES, ("gated_relu",))
TRANSFORMERS = estimator_params(TRANSFORMER_CLASSES)

ALPHA = 3e-2  # a fraction of alpha_max_ for every head on the data below (0.3 - 2)
TOL = 1e-9  # tight: the invariances are then checked well below the differences they catch


def _head(cls, activation, **params):
    kw = dict(
        alpha=ALPHA,
        activation=activation,
        n_gates=2,
        tol=TOL,
        max_iter=5000,
        random_state=0,
        device="cpu",
    )
    kw.update(params)
    return cls(**kw)


def _data(n=24, s=3, d=3, n_classes=3, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, s, d)
    if n_classes == 2:
        y = (X[:, :, 0].mean(axis=1) > 0).astype(int)
    else:
        y = np.argmax(X.mean(axis=1)[:, :n_classes], axis=1)
    return X, y


def _fit(est, X, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # these fits must converge
        return est.fit(X, y, **kw)


_REF = {}


def _reference(cls, activation):
    """The fit on the unmodified data, shared by the tests of this module."""
    key = (cls.__name__, activation)
    if key not in _REF:
        X, y = _data()
        _REF[key] = _fit(_head(cls, activation), X, y)
    return _REF[key]


def _assert_same_solution(est, ref, X, class_perm=None, rtol_obj=1e-7, atol=1e-5):
    """Same objective, logits and weights; ``class_perm[k]`` is the column of ``est``
    holding class ``k`` of ``ref``."""
    assert est.objective_ == pytest.approx(ref.objective_, rel=rtol_obj)
    D, Dref = est.decision_function(X), ref.decision_function(X)
    C = est.coef_
    if class_perm is not None:
        D = D[:, class_perm]
        P, R, Lc = C.shape
        c = len(class_perm)
        C = C.reshape(P, R, Lc // c, c)[..., class_perm].reshape(P, R, Lc)
    scale = max(1.0, np.abs(Dref).max())
    np.testing.assert_allclose(D, Dref, rtol=0, atol=atol * scale)
    cscale = max(np.abs(ref.coef_).max(), 1e-12)
    np.testing.assert_allclose(C, ref.coef_, rtol=0, atol=atol * cscale)


# --------------------------------------------------------------------------- samples
@pytest.mark.parametrize("cls, activation", HEADS)
def test_permuting_samples(cls, activation):
    ref = _reference(cls, activation)
    X, y = _data()
    perm = np.random.RandomState(1).permutation(len(y))
    est = _fit(_head(cls, activation), X[perm], y[perm])
    _assert_same_solution(est, ref, X)
    np.testing.assert_array_equal(est.predict(X), ref.predict(X))
    np.testing.assert_allclose(est.alpha_max_, ref.alpha_max_, rtol=1e-10)


@pytest.mark.parametrize("cls, activation", HEADS)
def test_duplicating_the_training_set(cls, activation):
    """The data term is a mean: two copies of every sample give the same problem."""
    ref = _reference(cls, activation)
    X, y = _data()
    est = _fit(_head(cls, activation), np.concatenate([X, X]), np.concatenate([y, y]))
    _assert_same_solution(est, ref, X)
    np.testing.assert_allclose(est.alpha_max_, ref.alpha_max_, rtol=1e-10)


# --------------------------------------------------------------------------- labels
@pytest.mark.parametrize("cls, activation", HEADS)
def test_reordered_label_values(cls, activation):
    """Class k of the reference is called lab[k]: the class columns are permuted."""
    ref = _reference(cls, activation)
    X, y = _data()
    lab = np.array([2, 0, 1])
    est = _fit(_head(cls, activation), X, lab[y])
    np.testing.assert_array_equal(est.classes_, [0, 1, 2])
    _assert_same_solution(est, ref, X, class_perm=lab)
    np.testing.assert_array_equal(est.predict(X), lab[ref.predict(X)])


@pytest.mark.parametrize("cls, activation", HEADS)
def test_string_labels(cls, activation):
    ref = _reference(cls, activation)
    X, y = _data()
    # same order as the integers: the very same computation
    names = np.array(["ant", "bee", "cow"])
    est = _fit(_head(cls, activation), X, names[y])
    np.testing.assert_array_equal(est.coef_, ref.coef_)
    assert est.objective_ == ref.objective_
    np.testing.assert_array_equal(est.predict(X), names[ref.predict(X)])
    # another order: a permutation of the class columns
    names = np.array(["zebra", "ant", "mole"])  # class k is names[k]; sorted: ant, mole, zebra
    est = _fit(_head(cls, activation), X, names[y])
    np.testing.assert_array_equal(est.classes_, ["ant", "mole", "zebra"])
    _assert_same_solution(est, ref, X, class_perm=np.searchsorted(est.classes_, names))
    np.testing.assert_array_equal(est.predict(X), names[ref.predict(X)])


@pytest.mark.parametrize("cls, activation", GATED)
def test_binary_label_swap_flips_the_decision(cls, activation):
    X, y = _data(n_classes=2)
    a = _fit(_head(cls, activation), X, y)
    b = _fit(_head(cls, activation), X, 1 - y)
    assert b.objective_ == pytest.approx(a.objective_, rel=1e-7)
    Da = a.decision_function(X)
    np.testing.assert_allclose(b.decision_function(X), -Da, atol=1e-5 * np.abs(Da).max())
    np.testing.assert_array_equal(b.predict(X), 1 - a.predict(X))


# --------------------------------------------------------------------------- random_state
@pytest.mark.parametrize("cls, activation", HEADS)
def test_random_state_fixes_the_model_exactly(cls, activation):
    X, y = _data()
    fits = [
        _head(cls, activation, tol=1e-6, random_state=rs).fit(X, y)
        for rs in (7, 7, np.random.RandomState(7), np.random.RandomState(7))
    ]
    a = fits[0]
    for b in fits[1:]:
        np.testing.assert_array_equal(b.coef_, a.coef_)
        np.testing.assert_array_equal(b.intercept_, a.intercept_)
        assert b.gates_.keys() == a.gates_.keys()
        for k in a.gates_:
            np.testing.assert_array_equal(b.gates_[k], a.gates_[k])
        assert (b.objective_, b.dual_gap_, b.n_iter_) == (a.objective_, a.dual_gap_, a.n_iter_)
        np.testing.assert_array_equal(b.decision_function(X), a.decision_function(X))


@pytest.mark.parametrize("cls, activation", GATED)
def test_random_state_draws_the_gates(cls, activation):
    X, y = _data()
    a = _head(cls, activation, tol=1e-4).fit(X, y)
    b = _head(cls, activation, tol=1e-4, random_state=1).fit(X, y)
    assert any(not np.array_equal(a.gates_[k], b.gates_[k]) for k in a.gates_)


# --------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("cls, activation", HEADS)
def test_float32_and_float64_agree(cls, activation):
    # well-separated classes: the predictions must agree exactly
    X, y = _data(n_classes=2, seed=3)
    X[:, :, 0] += 1.5 * (2 * y - 1)[:, None]
    # FISTA: at tol=1e-6 the float32 L-BFGS of the factored solver can stall on rounding
    # (3.6e-6 after 3000 iterations for linear self-attention), see docs/factored.rst
    kw = dict(tol=1e-6, max_iter=3000, solver="fista")
    f64 = _fit(_head(cls, activation, **kw), X, y)
    f32 = _fit(_head(cls, activation, **kw), X.astype(np.float32), y)
    assert f32.coef_.dtype == np.float32 and f64.coef_.dtype == np.float64
    np.testing.assert_array_equal(f32.predict(X.astype(np.float32)), f64.predict(X))
    assert f32.objective_ == pytest.approx(f64.objective_, rel=1e-3)
    D64 = f64.decision_function(X)
    np.testing.assert_allclose(
        f32.decision_function(X.astype(np.float32)), D64, atol=1e-2 * np.abs(D64).max()
    )
    # either model predicts the other dtype's data identically
    np.testing.assert_array_equal(f32.predict(X), f64.predict(X))


# --------------------------------------------------------------------------- persistence
def _outputs(est, X):
    if hasattr(est, "predict"):
        out = [est.predict(X), est.decision_function(X), est.transform(X)]
        if est.loss == "log_loss":
            out.append(est.predict_proba(X))
        return out
    return [est.transform(X), est.inverse_transform(est.transform(X))]


def _assert_round_trip(est, X, tmp_path):
    before = _outputs(est, X)
    restored = [pickle.loads(pickle.dumps(est))]
    path = tmp_path / "model.joblib"
    joblib.dump(est, path)
    restored.append(joblib.load(path))
    for other in restored:
        assert type(other) is type(est)
        assert other.get_params() == est.get_params()
        for a, b in zip(before, _outputs(other, X)):
            np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("loss", ["log_loss", "squared_error"])
@pytest.mark.parametrize("cls, activation", HEADS)
def test_pickle_round_trip(cls, activation, loss, tmp_path):
    X, y = _data()
    est = _fit(_head(cls, activation, loss=loss, tol=1e-4), X, y)
    _assert_round_trip(est, X, tmp_path)


@pytest.mark.parametrize("cls", TRANSFORMERS)
def test_pickle_round_trip_transformers(cls, tmp_path):
    X, _ = _data(d=4)
    _assert_round_trip(cls().fit(X), X, tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a CUDA GPU")
@pytest.mark.parametrize("cls, activation", GATED)
def test_gpu_fit_pickles_and_predicts_on_cpu(cls, activation, tmp_path):
    X, y = _data(n_classes=2, seed=3)
    X[:, :, 0] += 1.5 * (2 * y - 1)[:, None]
    gpu = _fit(_head(cls, activation, device="cuda", tol=1e-6), X, y)
    assert gpu.device_ == "cuda"
    assert isinstance(gpu.coef_, np.ndarray) and isinstance(gpu.intercept_, np.ndarray)
    assert all(isinstance(v, np.ndarray) for v in gpu.gates_.values())
    labels, scores = gpu.predict(X), gpu.decision_function(X)
    path = tmp_path / "gpu.joblib"
    joblib.dump(gpu, path)
    cpu = joblib.load(path).set_params(device="cpu")
    np.testing.assert_array_equal(cpu.predict(X), labels)
    np.testing.assert_allclose(cpu.decision_function(X), scores, rtol=1e-6, atol=1e-9)
    cpu2 = pickle.loads(pickle.dumps(gpu)).set_params(device="cpu")
    np.testing.assert_array_equal(cpu2.predict(X), labels)
    # and the same problem solved on the CPU: the same gates and the same optimum
    ref = _fit(_head(cls, activation, device="cpu", tol=1e-6), X, y)
    for k in ref.gates_:
        np.testing.assert_array_equal(gpu.gates_[k], ref.gates_[k])
    assert gpu.objective_ == pytest.approx(ref.objective_, rel=1e-5)


# --------------------------------------------------------------------------- weights
def _objective(est, X, y, sample_weight):
    """The documented objective, recomputed from the public outputs: weighted mean loss
    of the logits plus alpha times the sum of the blocks' nuclear norms."""
    w = np.asarray(sample_weight, dtype=np.float64)
    w = w / w.sum()
    yi = np.searchsorted(est.classes_, y)
    D = est.decision_function(X).astype(np.float64)
    if D.ndim == 1:  # binary: logits (0, D) up to a common shift
        D = np.stack([np.zeros_like(D), D], axis=1)
    # the log-loss depends on the logits only through their differences, which the
    # decision function gives for two classes too
    assert est.loss == "log_loss"
    m = D.max(axis=1, keepdims=True)
    lse = np.log(np.exp(D - m).sum(axis=1)) + m[:, 0]
    per_sample = lse - D[np.arange(len(yi)), yi]
    nuc = sum(np.linalg.svd(Z.astype(np.float64), compute_uv=False).sum() for Z in est.coef_)
    return float(w @ per_sample + est.alpha * nuc)


WEIGHTINGS = ["sample_weight", "balanced", "dict", "both"]


def _weights(kind, y, rng):
    """(sample_weight, class_weight) for fit, and their product per sample."""
    sw = rng.uniform(0.2, 3.0, size=len(y)) if kind in ("sample_weight", "both") else None
    cw = {"sample_weight": None, "balanced": "balanced", "dict": {0: 3.0, 1: 0.5, 2: 1.5}}.get(
        kind, "balanced"
    )
    total = np.ones(len(y)) if sw is None else sw.copy()
    if cw is not None:
        total = total * compute_sample_weight(cw, y)
    return sw, cw, total


@pytest.mark.parametrize("kind", WEIGHTINGS)
@pytest.mark.parametrize("cls, activation", GATED)
def test_weighted_certificate(cls, activation, kind):
    """With weights, ``objective_`` is the weighted objective and ``dual_gap_`` bounds the
    suboptimality of every early-stopped fit against a tight reference fit."""
    X, y = _data()
    X[:, 0, 0] += 0.5 * (y == 2)  # a little less balanced than chance
    sw, cw, total = _weights(kind, y, np.random.RandomState(5))
    ref = _fit(_head(cls, activation, class_weight=cw, tol=1e-8), X, y, sample_weight=sw)
    assert ref.objective_ == pytest.approx(_objective(ref, X, y, total), rel=1e-9)
    lower = ref.objective_ - ref.dual_gap_  # a certified lower bound on the optimum
    n_checked = 0
    for max_iter in (1, 10, 30, 100):
        est = _head(cls, activation, class_weight=cw, tol=0.0, max_iter=max_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X, y, sample_weight=sw)
        assert est.objective_ == pytest.approx(_objective(est, X, y, total), rel=1e-9)
        assert est.dual_gap_ >= 0
        # optimum <= ref.objective_: the suboptimality is at least objective_ - ref
        assert est.objective_ - ref.objective_ <= est.dual_gap_ * (1 + 1e-9) + 1e-14
        # and the dual bound never exceeds the (certified) optimum
        assert est.objective_ - est.dual_gap_ <= ref.objective_ + 1e-14
        n_checked += est.objective_ - ref.objective_ > 1e-6 * ref.objective_
    assert n_checked >= 2, "the early-stopped fits were already optimal: nothing tested"
    assert lower <= ref.objective_


@pytest.mark.parametrize("cls, activation", HEADS)
def test_integer_weights_are_repetitions(cls, activation):
    X, y = _data()
    k = np.random.RandomState(2).randint(0, 4, size=len(y))  # 0 drops the sample
    k[:3] = 1
    for c in range(3):  # every class keeps a sample
        k[np.flatnonzero(y == c)[0]] = 2
    weighted = _fit(_head(cls, activation), X, y, sample_weight=k)
    repeated = _fit(_head(cls, activation), np.repeat(X, k, axis=0), np.repeat(y, k))
    _assert_same_solution(weighted, repeated, X)
    # float weights with the same ratios: the same problem (weights are normalised)
    scaled = _fit(_head(cls, activation), X, y, sample_weight=0.37 * k)
    _assert_same_solution(scaled, repeated, X)


@pytest.mark.parametrize("cls, activation", GATED)
def test_class_weight_is_repetition_of_a_class(cls, activation):
    X, y = _data()
    dup = np.concatenate([np.arange(len(y)), np.flatnonzero(y == 1)])  # class 1 twice
    repeated = _fit(_head(cls, activation), X[dup], y[dup])
    weighted = _fit(_head(cls, activation, class_weight={0: 1, 1: 2, 2: 1}), X, y)
    _assert_same_solution(weighted, repeated, X)


@pytest.mark.parametrize("cls, activation", GATED)
def test_balanced_is_repetition_to_equal_counts(cls, activation):
    """Two classes with counts 8 and 16: 'balanced' weighs the small class twice as much,
    which is the same problem as repeating its samples once."""
    X, y = _data(n=24, n_classes=2, seed=4)
    y = np.r_[np.zeros(8, int), np.ones(16, int)]
    X[:8, :, 1] += 1.0
    balanced = _fit(_head(cls, activation, class_weight="balanced"), X, y)
    dup = np.r_[np.arange(24), np.arange(8)]
    repeated = _fit(_head(cls, activation), X[dup], y[dup])
    _assert_same_solution(balanced, repeated, X)
    bincount = np.bincount(y, weights=compute_sample_weight("balanced", y))
    np.testing.assert_allclose(bincount[0], bincount[1])


@pytest.mark.parametrize("cls, activation", GATED)
def test_unit_weights_change_nothing(cls, activation):
    ref = _reference(cls, activation)
    X, y = _data()
    est = _fit(clone(ref), X, y, sample_weight=np.ones(len(y)))
    _assert_same_solution(est, ref, X, rtol_obj=1e-12, atol=1e-12)
