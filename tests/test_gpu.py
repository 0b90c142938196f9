"""Every head on a CUDA GPU (CuPy): the same program as on the CPU, solved to the same
certificate, by both solvers.

These tests are marked ``gpu`` and skipped without CuPy and a CUDA device (CI has none). They
check properties, not timings:

* the GPU fit of each head and solver reaches the CPU's optimum, and its ``dual_gap_`` bounds
  its true suboptimality (measured against a tighter CPU fit);
* fitted attributes are NumPy arrays, so a GPU fit predicts, pickles and recovers its
  non-convex network on a machine without a GPU;
* float32 input stays float32 on the GPU, certifies (continuing in float64 where float32
  stalls) and emits no RuntimeWarning, also through the ``*CV`` estimators;
* padding (NaN token rows) and the automatic ``alpha`` give the CPU's results.
"""

import pickle
import warnings

import numpy as np
import pytest

from skconvexattn import ConvexSelfAttentionClassifier, ConvexSelfAttentionClassifierCV
from skconvexattn._backend import cuda_available
from skconvexattn.heads import registered_heads

from _estimators import estimator_params

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a CUDA GPU"),
]

GPU = "cuda"
HEADS = [spec.estimator for spec in registered_heads()]
N, S, D = 60, 4, 3


def _data(n=N, s=S, d=D, c=3, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, s, d))
    y = np.arange(n) % c
    X[:, 0, 0] += 0.8 * y
    X[:, 1, 1] -= 0.5 * y
    return X.astype(dtype), y


def _fit(cls, X, y, **kw):
    params = dict(alpha_ratio=0.05, n_gates=3, random_state=0, tol=1e-6, max_iter=20000)
    params.update(kw)
    return cls(**params).fit(X, y)


@pytest.mark.parametrize("solver", ["fista", "factored"])
@pytest.mark.parametrize("cls", estimator_params(HEADS))
def test_gpu_fit_is_the_cpu_fit(cls, solver):
    X, y = _data()
    gpu = _fit(cls, X, y, device=GPU, solver=solver)
    # the reference optimum: a tighter fit on the CPU
    ref = _fit(cls, X, y, device="cpu", solver=solver, tol=1e-10, max_iter=100000)
    assert gpu.device_ == "cuda" and ref.device_ == "cpu"
    assert gpu.solver_ == solver
    assert gpu.alpha_max_ == pytest.approx(ref.alpha_max_, rel=1e-10)
    assert gpu.alpha_ == pytest.approx(ref.alpha_, rel=1e-10)
    for k in ref.gates_:
        np.testing.assert_array_equal(gpu.gates_[k], ref.gates_[k])
    # certified, and the certificate is honest: gap >= objective - optimum
    assert gpu.dual_gap_ <= 1e-6 * abs(gpu.objective_)
    assert gpu.objective_ - ref.objective_ <= gpu.dual_gap_ + 1e-12 * abs(ref.objective_)
    assert gpu.objective_ == pytest.approx(ref.objective_, rel=1e-5)
    # fitted attributes live on the host
    assert isinstance(gpu.coef_, np.ndarray) and isinstance(gpu.intercept_, np.ndarray)
    assert all(isinstance(v, np.ndarray) for v in gpu.gates_.values())
    scores = gpu.decision_function(X)
    assert isinstance(scores, np.ndarray)
    np.testing.assert_allclose(scores, ref.decision_function(X), atol=1e-3 * np.abs(scores).max())
    # transform (token clusters) agrees except on near-ties
    assert np.mean(gpu.transform(X) == ref.transform(X)) >= 0.95


@pytest.mark.parametrize("cls", estimator_params(HEADS))
def test_gpu_fit_moves_to_a_cpu_machine(cls):
    """A GPU fit pickles, predicts with ``device='cpu'`` and recovers its network there."""
    X, y = _data()
    gpu = _fit(cls, X, y, device=GPU)
    labels, scores = gpu.predict(X), gpu.decision_function(X)
    cpu = pickle.loads(pickle.dumps(gpu)).set_params(device="cpu")
    np.testing.assert_array_equal(cpu.predict(X), labels)
    np.testing.assert_allclose(cpu.decision_function(X), scores, rtol=1e-6, atol=1e-9)
    net = cpu.to_nonconvex()
    got = net.decision_function(X)
    np.testing.assert_allclose(got, scores, rtol=0, atol=1e-8 * max(1.0, np.abs(scores).max()))


@pytest.mark.parametrize("cls", estimator_params(HEADS))
def test_gpu_float32_certifies_without_warnings(cls):
    X, y = _data(n=120, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        gpu = _fit(cls, X, y, device=GPU, tol=1e-5, max_iter=3000)
    assert gpu.coef_.dtype == np.float32
    ref = _fit(cls, X.astype(np.float64), y, device="cpu", tol=1e-10, max_iter=100000)
    # the float32 fit is certified (in float64 where the continuation took over) ...
    assert gpu.dual_gap_ <= 1e-5 * abs(gpu.objective_)
    # ... and its certificate bounds its distance to the float64 optimum (float32 data
    # rounding aside, which both fits share)
    assert gpu.objective_ - ref.objective_ <= gpu.dual_gap_ + 1e-6 * abs(ref.objective_)


def test_gpu_cv_float32_has_no_runtime_warning():
    X, y = _data(n=90, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        cv = ConvexSelfAttentionClassifierCV(
            alphas=3, cv=2, n_gates=2, random_state=0, device=GPU, max_iter=3000
        ).fit(X, y)
    assert cv.device_ == "cuda"
    ref = ConvexSelfAttentionClassifierCV(
        alphas=3, cv=2, n_gates=2, random_state=0, device="cpu", max_iter=3000
    ).fit(X, y)
    np.testing.assert_allclose(cv.alphas_, ref.alphas_, rtol=1e-5)


def test_gpu_padding_gives_the_unpadded_fit():
    """Padding rows (all-NaN tokens) at any positions: the unpadded fit, on the GPU too."""
    X, y = _data(s=3)
    n, s, d = X.shape
    rng = np.random.default_rng(1)
    pos = np.sort(np.argsort(rng.random((n, s + 2)), axis=1)[:, :s], axis=1)
    Xp = np.full((n, s + 2, d), np.nan)
    Xp[np.arange(n)[:, None], pos] = X
    a = _fit(ConvexSelfAttentionClassifier, X, y, device=GPU, tol=1e-8)
    b = _fit(ConvexSelfAttentionClassifier, Xp, y, device=GPU, tol=1e-8)
    assert b.objective_ == pytest.approx(a.objective_, rel=1e-8)
    np.testing.assert_allclose(b.decision_function(Xp), a.decision_function(X), atol=1e-7)
    assert np.all(b.transform(Xp)[np.isnan(Xp[:, :, 0])] == -1)


def test_gpu_automatic_alpha_is_the_cpu_choice():
    """The default (held-out choice of ``alpha_ratio``) picks the same ratio on both."""
    X, y = _data(n=120, c=2)
    kw = dict(n_gates=2, random_state=0, max_iter=2000)
    gpu = ConvexSelfAttentionClassifier(device=GPU, **kw).fit(X, y)
    cpu = ConvexSelfAttentionClassifier(device="cpu", **kw).fit(X, y)
    assert gpu.alpha_ratio_ == cpu.alpha_ratio_
    assert gpu.alpha_ == pytest.approx(cpu.alpha_, rel=1e-10)
