"""Float32 fits whose certificate stalls at float32's precision continue in float64.

Near an interpolating optimum float32 products round the gradient blocks to about
``eps * sum_i |w_i theta_i Phi_i|``: the active singular values of ``Grad_p`` stay a few
``1e-5`` to ``1e-4`` off ``alpha`` and the gap with them, however long L-BFGS runs. The
factored solver then stops (``precision_limited``) and the fit continues from its point
with float64 products, and returns float32 weights certified in float64.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from skconvexattn import ConvexFNOClassifier, ConvexMLPClassifier
from skconvexattn._base import BaseConvexHead
from skconvexattn._factored import _at_precision_floor
from skconvexattn._factored_ops import cast_operator, floating_bytes
from skconvexattn.datasets import load_digits_tokens


@pytest.fixture(scope="module")
def digits32():
    X, y = load_digits_tokens(return_X_y=True)
    return X[:300].astype(np.float32), y[:300]


def _head(cls, **kw):
    # relative to the objective: the floor float32 products leave is a few 1e-4 of it
    return cls(n_gates=4, random_state=0, alpha_ratio=0.01, tol=1e-6, max_iter=3000,
               tol_scale="objective", **kw)


@pytest.mark.parametrize("cls", [ConvexMLPClassifier, ConvexFNOClassifier])
def test_float32_fit_continues_in_float64_and_certifies(cls, digits32):
    X, y = digits32
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est = _head(cls).fit(X, y)
    assert est.solver_ == "factored"
    dtypes = est.convergence_["dtype"]
    assert dtypes[0] == "float32" and dtypes[-1] == "float64"
    assert len(dtypes) == len(est.convergence_["iteration"])
    assert est.dual_gap_ <= 1e-6 * est.objective_
    assert est.coef_.dtype == np.float32 and est.intercept_.dtype == np.float32
    # the certificate holds for the float32 weights returned: a tight float64 solve of
    # the program it certifies (the float32-built operator in float64) bounds the optimum
    # from below, and the gap covers the distance to it. (A float64 fit from the float64
    # data solves a program perturbed by float32 rounding, alpha_max 1.8e-7 apart for the
    # FNO: its optimum differs by 1.3e-9, more than a Newton-certified gap.)
    from skconvexattn._factored import factored_solve

    st = cls(n_gates=4, random_state=0)._setup(X, y, None, reset=True)
    op64 = cast_operator(st.op, np.float64)
    tight = factored_solve(op64, st.datafit, st.Y.astype(np.float64), st.w.astype(np.float64),
                           est.alpha_, tol=1e-12, tol_scale="objective", max_iter=5000,
                           warn=False)
    lower = tight.objective - tight.dual_gap
    assert est.objective_ - lower <= est.dual_gap_ + tight.dual_gap + 1e-12
    ref = cls(est.alpha_, n_gates=4, random_state=0, tol=1e-9, max_iter=5000,
              solver="fista").fit(X.astype(np.float64), y)
    assert est.objective_ == pytest.approx(ref.objective_, rel=2e-6)


def test_one_progress_report_for_both_precisions(digits32, capsys):
    """verbose reports the float32 stretch and its float64 continuation as one run: the
    iterations count on, and one closing line ends it."""
    X, y = digits32
    est = _head(ConvexMLPClassifier, verbose=2).fit(X, y)
    assert est.convergence_["dtype"][-1] == "float64"  # the continuation ran
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[skconv")]
    closing = [ln for ln in lines if "converged:" in ln or "stopped before tol" in ln]
    assert len(closing) == 1 and lines[-1] == closing[0]
    assert f"converged: {est.n_iter_} iterations" in closing[0]
    its = [int(ln.split("iter")[1].split()[0]) for ln in lines if " iter " in ln]
    assert its == sorted(its) and its[-1] == est.n_iter_


@pytest.mark.parametrize("cls", [ConvexMLPClassifier, ConvexFNOClassifier])
def test_without_the_float64_continuation_float32_stalls(cls, digits32, monkeypatch):
    # what the continuation buys: the same float32 fit stays above tol for 600 iterations
    X, y = digits32
    monkeypatch.setattr(BaseConvexHead, "_float64_refinement", lambda self, st: None)
    with pytest.warns(ConvergenceWarning, match="did not reach tol=1e-06"):
        est = _head(cls, solver="factored").set_params(max_iter=600).fit(X, y)
    assert est.dual_gap_ > 1e-6 * est.objective_
    assert set(est.convergence_["dtype"]) == {"float32"}


def test_float64_input_is_not_refined(digits32):
    X, y = digits32
    est = _head(ConvexMLPClassifier).fit(X.astype(np.float64), y)
    assert set(est.convergence_["dtype"]) == {"float64"}
    assert est.dual_gap_ <= 1e-6 * est.objective_


def test_no_refinement_beyond_the_memory_budget(digits32):
    # a float64 copy of the operator that would take more than half of memory_budget is
    # not made: the fit ends at float32's floor with a ConvergenceWarning
    X, y = digits32
    st = ConvexMLPClassifier(n_gates=4, random_state=0)._setup(X, y, None, reset=True)
    copy_bytes = floating_bytes(st.op)  # float64
    budget = 1.9 * copy_bytes / 1024**3  # the fit fits; the copy is above half of it
    with pytest.warns(ConvergenceWarning):
        est = _head(ConvexMLPClassifier, memory_budget=budget).set_params(max_iter=600).fit(X, y)
    assert set(est.convergence_["dtype"]) == {"float32"}


def test_cast_operator_products_and_refusals(digits32):
    X, y = digits32
    est = ConvexMLPClassifier(n_gates=4, random_state=0)
    st = est._setup(X, y, None, reset=True)
    op = st.op
    op64 = cast_operator(op, np.float64)
    assert floating_bytes(op) == floating_bytes(op, 8) > 0
    rng = np.random.default_rng(0)
    A = rng.standard_normal((op.P, 3) + op.a_shape).astype(np.float32)
    B = rng.standard_normal((op.P, 3, op.d, 10)).astype(np.float32)
    O32, O64 = op.forward(A, B), op64.forward(A.astype(np.float64), B.astype(np.float64))
    assert O32.dtype == np.float32 and O64.dtype == np.float64
    np.testing.assert_allclose(O64, O32, rtol=1e-4, atol=1e-5 * np.abs(O64).max())
    assert op.forward(A, B).dtype == np.float32  # the original is untouched

    class Remote:  # an operator that does not declare itself castable (Dask's)
        def __init__(self):
            self.X = np.ones(3, dtype=np.float32)

        def forward(self, Z):
            return Z

    assert cast_operator(Remote(), np.float64) is None
    wrapped = type("Wrapper", (), {"castable": True})()
    wrapped.op = Remote()
    assert cast_operator(wrapped, np.float64) is None


@pytest.mark.parametrize(
    "gaps, floor",
    [
        ([0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005], False),  # still closing
        ([0.5, 0.2, 2e-3, 1.9e-3, 1.9e-3, 1.8e-3, 1.9e-3, 1.9e-3], True),  # flat near floor
        ([0.5, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3], False),  # an early plateau is no floor
        ([1e-3] * 5, False),  # too few certificates to tell
    ],
)
def test_precision_floor_rule(gaps, floor):
    assert _at_precision_floor(gaps) is floor
