"""The numerical kernels give the same results on every array namespace (SPEC 4).

Each kernel runs on ``array_api_compat.numpy`` (the reference), on ``array_api_strict``
(which rejects any NumPy-only call, implicit conversion or non-standard promotion) and,
when it imports, on ``torch`` (CPU) through ``array_api_compat.torch``; results must agree
to about 1e-12 relative in float64 and stay in the caller's namespace.

Adding a feature map (a new head) means adding **one entry** to ``FEATURE_MAPS`` below:
either a direct kernel (:func:`kernel_case`) or a head class whose module may not exist
yet (:func:`head_case`, built through the ``BaseConvexHead`` hooks ``_draw_gates``,
``_block_shape`` and ``_feature_map``, and skipped while the module is missing). Every
operator and solver test is parametrised over that list.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

array_api_compat = pytest.importorskip("array_api_compat")
from array_api_compat import array_namespace  # noqa: E402

from skconvexattn._base import BaseConvexHead  # noqa: E402
from skconvexattn._datafits import get_datafit  # noqa: E402
from skconvexattn._gates import token_moments  # noqa: E402
from skconvexattn._operator import LiftedOperator  # noqa: E402
from skconvexattn._penalty import BlockNuclearNorm  # noqa: E402
from skconvexattn._solver import alpha_max, fista  # noqa: E402
from skconvexattn._solver import primal_dual_values as duality_gap  # noqa: E402
from skconvexattn.heads.attention import self_attention_features  # noqa: E402

RTOL = 1e-12

# --------------------------------------------------------------------------- namespaces


def _have(module):
    return importlib.util.find_spec(module) is not None


NAMESPACES = [
    pytest.param("numpy", id="numpy"),
    pytest.param(
        "array_api_strict",
        id="array_api_strict",
        marks=pytest.mark.skipif(not _have("array_api_strict"), reason="needs array-api-strict"),
    ),
    pytest.param(
        "torch",
        id="torch",
        marks=pytest.mark.skipif(not _have("torch"), reason="torch is not installed"),
    ),
]


def get_xp(name):
    if name == "numpy":
        import array_api_compat.numpy as xp
    elif name == "array_api_strict":
        import array_api_strict as xp
    else:
        import array_api_compat.torch as xp
        import torch

        # tiny tensors: intra-op threads only add contention (100x slower FFTs on a
        # shared 2-core machine), and one thread keeps results deterministic
        torch.set_num_threads(1)
    return xp


@pytest.fixture(params=NAMESPACES)
def xp(request):
    return get_xp(request.param)


@pytest.fixture
def xp_ref():
    return get_xp("numpy")


def to_xp(xp, a, dtype=None):
    if a is None:
        return None
    a = np.asarray(a)
    if dtype is None:
        dtype = xp.float32 if a.dtype == np.float32 else xp.float64
    return xp.asarray(a, dtype=dtype)


def to_host(a):
    if isinstance(a, (np.ndarray, np.generic, float, int)):
        return np.asarray(a)
    try:
        return np.from_dlpack(a)
    except Exception:  # pragma: no cover - a namespace without DLPack
        return np.asarray(a)


def assert_in_namespace(a, xp):
    """The kernel returned an array of the caller's library, not a NumPy fallback.

    (NumPy reductions return NumPy scalars, which is what NumPy does under
    ``array_api_compat.numpy`` too.)"""
    expected = (np.ndarray, np.generic) if xp.__name__.endswith("numpy") else type(xp.asarray(0.0))
    assert isinstance(a, expected), (type(a), xp.__name__)


def assert_close(a, ref, rtol=RTOL, what=""):
    """Relative agreement measured against the size of the reference."""
    a, ref = to_host(a), to_host(ref)
    assert a.shape == ref.shape, (what, a.shape, ref.shape)
    scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-300)
    err = float(np.max(np.abs(a - ref))) if ref.size else 0.0
    assert err <= rtol * scale, f"{what}: max abs deviation {err:.3e} > {rtol:g} * {scale:.3e}"


# --------------------------------------------------------------------------- feature maps


@dataclass
class FeatureMap:
    """A feature map built on the host: ``fn(X, **gates)`` with gates as NumPy arrays,
    and the block shape ``(P, R, L)`` (``None``: read from the output)."""

    fn: Callable
    gates: dict
    block_shape: tuple | None = None


@dataclass
class FeatureCase:
    id: str
    build: Callable  # (rng, X_host) -> FeatureMap
    s: int = 4
    d: int = 3


def kernel_case(id, fn, n_gates=0, **fixed):
    """A direct kernel ``fn(X, H, c)`` with random hyperplane gates (none if ``n_gates=0``)."""

    def build(rng, X):
        gates = {}
        if n_gates:
            d = X.shape[2]
            gates = {
                "H": rng.standard_normal((n_gates, d)),
                "c": 0.3 * rng.standard_normal(n_gates),
            }
        return FeatureMap(lambda Xd, **g: fn(Xd, **g, **fixed), gates)

    return FeatureCase(id, build)


def _head_class(module):
    found = [
        v
        for v in vars(module).values()
        if inspect.isclass(v)
        and issubclass(v, BaseConvexHead)
        and v is not BaseConvexHead
        and v.__module__ == module.__name__
    ]
    assert len(found) == 1, f"expected one head class in {module.__name__}, found {found}"
    return found[0]


def head_case(id, module_name, s=4, d=3, **params):
    """The feature map of a head class, through the ``BaseConvexHead`` hooks; skipped
    while ``module_name`` does not exist."""

    def build(rng, X):
        module = pytest.importorskip(module_name)
        est = _head_class(module)(**params)
        n, s_, d_ = X.shape
        est._check_head_params(s_, d_)
        mu, sigma = token_moments(X, np.full(n, 1.0 / n))
        drawn = est._draw_gates(rng, mu, sigma, s_, d_)
        gates = {k: np.asarray(v, dtype=np.float64) for k, v in drawn.items()}

        def fn(Xd, **g):
            return est._feature_map(g)(Xd)

        return FeatureMap(fn, gates, tuple(est._block_shape(s_, d_)))

    return FeatureCase(id, build, s, d)


FEATURE_MAPS = [
    kernel_case("attention-linear", self_attention_features),
    kernel_case("attention-gated", self_attention_features, n_gates=3),
    head_case("attention-head-linear", "skconvexattn.heads.attention", activation="linear"),
    head_case(
        "attention-head-gated", "skconvexattn.heads.attention",
        activation="gated_relu", n_gates=2,
    ),
    head_case("mixer-linear", "skconvexattn.heads.mixer", activation="linear"),
    head_case("mixer-gated", "skconvexattn.heads.mixer", activation="gated_relu", n_gates=2),
    head_case("fno-gated", "skconvexattn.heads.fno", activation="gated_relu", n_gates=2),
    head_case("fno-linear", "skconvexattn.heads.fno", activation="linear"),
    head_case(
        "fno-modes-blocks", "skconvexattn.heads.fno", s=5, d=3,
        activation="gated_relu", n_gates=2, n_modes=2, n_blocks=2,
    ),
    head_case("mlp-linear", "skconvexattn.heads.mlp", activation="linear"),
    head_case("mlp-gated", "skconvexattn.heads.mlp", activation="gated_relu", n_gates=2),
]
FEATURE_IDS = [f.id for f in FEATURE_MAPS]
N = 7  # samples: chunks of 3 give 3 + 3 + 1


def setup_case(case, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, case.s, case.d))
    fm = case.build(rng, X)
    return X, fm


def features_on(xp, X, fm, dtype=None):
    gates = {k: to_xp(xp, v, dtype) for k, v in fm.gates.items()}
    return fm.fn(to_xp(xp, X, dtype), **gates)


def operator_on(xp, X, fm, block_shape, chunk_rows):
    gates = {k: to_xp(xp, v) for k, v in fm.gates.items()}
    return LiftedOperator(lambda Xc: fm.fn(Xc, **gates), to_xp(xp, X), block_shape, chunk_rows)


def block_shape_of(X, fm):
    Phi = np.asarray(fm.fn(X, **fm.gates))
    shape = tuple(Phi.shape[1:])
    if fm.block_shape is not None:
        assert shape == fm.block_shape, (shape, fm.block_shape)
    return shape


@pytest.mark.parametrize("case", FEATURE_MAPS, ids=FEATURE_IDS)
def test_feature_map(case, xp, xp_ref):
    X, fm = setup_case(case)
    ref = features_on(xp_ref, X, fm)
    Phi = features_on(xp, X, fm)
    assert_in_namespace(Phi, xp)
    assert Phi.dtype == xp.float64
    assert len(Phi.shape) == 4 and Phi.shape[0] == N
    if fm.block_shape is not None:
        assert tuple(Phi.shape[1:]) == tuple(fm.block_shape)
    assert_close(Phi, ref, what=f"{case.id} features")
    # features of a sub-batch are the rows of the full batch (what chunking relies on)
    part = fm.fn(to_xp(xp, X)[2:5, ...], **{k: to_xp(xp, v) for k, v in fm.gates.items()})
    assert_close(part, to_host(ref)[2:5], what=f"{case.id} sub-batch")


@pytest.mark.parametrize("case", FEATURE_MAPS, ids=FEATURE_IDS)
def test_feature_map_keeps_float32(case, xp):
    """float32 in, float32 out: no silent promotion to float64 by Python scalars."""
    X, fm = setup_case(case)
    X32 = X.astype(np.float32)
    Phi = features_on(xp, X32, fm, dtype=xp.float32)
    assert Phi.dtype == xp.float32
    ref = features_on(get_xp("numpy"), X, fm)
    assert_close(Phi, ref, rtol=1e-5, what=f"{case.id} float32")


# --------------------------------------------------------------------------- operator


@pytest.mark.parametrize("chunk_rows", [None, 3], ids=["materialised", "chunked"])
@pytest.mark.parametrize("case", FEATURE_MAPS, ids=FEATURE_IDS)
def test_operator_forward_adjoint(case, chunk_rows, xp, xp_ref):
    X, fm = setup_case(case)
    shape = block_shape_of(X, fm)
    P, R, L = shape
    c = 3
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((P, R, L * c))
    U = rng.standard_normal((N, c))
    ref_op = operator_on(xp_ref, X, fm, shape, None)
    op = operator_on(xp, X, fm, shape, chunk_rows)
    assert (op.Phi is None) == (chunk_rows is not None)
    O, G = op.forward(to_xp(xp, Z)), op.adjoint(to_xp(xp, U))
    assert_in_namespace(O, xp)
    assert_in_namespace(G, xp)
    assert O.shape == (N, c) and G.shape == (P, R, L * c)
    O_ref, G_ref = ref_op.forward(to_xp(xp_ref, Z)), ref_op.adjoint(to_xp(xp_ref, U))
    assert_close(O, O_ref, what="forward")
    assert_close(G, G_ref, what="adjoint")
    # the reference itself is the plain contraction of the features
    Phi = np.asarray(fm.fn(X, **fm.gates)).reshape(N, P, R, L)
    assert_close(O_ref, np.einsum("nprl,prlb->nb", Phi, Z.reshape(P, R, L, c)), what="einsum")
    # adjoint identity <A Z, U> = <Z, A* U>
    lhs = float(np.sum(to_host(O) * U))
    rhs = float(np.sum(Z * to_host(G)))
    assert math.isclose(lhs, rhs, rel_tol=1e-11, abs_tol=1e-12)


@pytest.mark.parametrize("case", FEATURE_MAPS, ids=FEATURE_IDS)
def test_chunked_equals_materialised(case, xp):
    X, fm = setup_case(case, seed=2)
    shape = block_shape_of(X, fm)
    rng = np.random.default_rng(3)
    Z = to_xp(xp, rng.standard_normal((*shape[:2], shape[2] * 2)))
    U = to_xp(xp, rng.standard_normal((N, 2)))
    full = operator_on(xp, X, fm, shape, None)
    for rows in (1, 3, N, N + 5):
        part = operator_on(xp, X, fm, shape, rows)
        assert_close(part.forward(Z), full.forward(Z), what=f"forward chunk_rows={rows}")
        assert_close(part.adjoint(U), full.adjoint(U), what=f"adjoint chunk_rows={rows}")


# --------------------------------------------------------------------------- penalty


@pytest.mark.parametrize("shape", [(3, 5, 4), (2, 4, 6), (1, 9, 6)])
def test_block_nuclear_norm(shape, xp, xp_ref):
    rng = np.random.default_rng(sum(shape))
    Z = rng.standard_normal(shape)
    Z[0] = np.outer(rng.standard_normal(shape[1]), rng.standard_normal(shape[2]))  # rank 1
    pen = BlockNuclearNorm()
    sv = np.linalg.svd(Z, compute_uv=False)  # independent reference
    thr = float(np.median(sv))
    Zx = to_xp(xp, Z)
    value, norms, dual = pen.value(Zx), pen.block_norms(Zx), pen.dual_norm(Zx)
    Zt, S = pen.prox(Zx, thr)
    for a in (value, norms, dual, Zt, S):
        assert_in_namespace(a, xp)
    assert_close(value, np.asarray(sv.sum()), what="value")
    assert_close(norms, sv.sum(axis=1), what="block_norms")
    assert_close(dual, np.asarray(sv.max()), what="dual_norm")
    U, s, Vh = np.linalg.svd(Z, full_matrices=False)
    s_t = np.clip(s - thr, 0.0, None)
    assert_close(S, s_t, what="prox singular values")
    assert_close(Zt, (U * s_t[:, None, :]) @ Vh, what="prox")
    # and the same as the numpy namespace
    Zt_ref, S_ref = pen.prox(to_xp(xp_ref, Z), thr)
    assert_close(Zt, Zt_ref, what="prox vs numpy")
    # thresholding above every singular value gives exactly zero
    Z0, S0 = pen.prox(Zx, float(sv.max()) * 1.01)
    assert float(np.max(np.abs(to_host(Z0)))) == 0.0
    assert float(np.max(to_host(S0))) == 0.0


# --------------------------------------------------------------------------- datafits


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("loss", ["log_loss", "squared_error"])
def test_datafit(loss, fit_intercept, xp, xp_ref):
    rng = np.random.default_rng(4)
    n, c = 9, 3
    O = 2.0 * rng.standard_normal((n, c))
    y = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])
    Y = np.eye(c)[y]
    w = rng.uniform(0.1, 1.0, n)
    w[0] = 0.0
    w /= w.sum()
    prior = w @ Y
    df = get_datafit(loss)
    results = []
    for ns in (xp_ref, xp):
        Ox, Yx, wx, px = (to_xp(ns, a) for a in (O, Y, w, prior))
        theta = df.dual_candidate(Ox, Yx, wx, px, fit_intercept)
        out = {
            "value": df.value(Ox, Yx, wx),
            "raw_gradient": df.raw_gradient(Ox, Yx),
            "intercept_at_zero": df.intercept_at_zero(px),
            "dual_candidate": theta,
            "dual_value": df.dual_value(theta, Yx, wx),
            "dual_value_scaled": df.dual_value(0.5 * theta, Yx, wx),
        }
        if loss == "log_loss":
            out["proba"] = df.proba(Ox)
        for a in out.values():
            assert_in_namespace(a, ns)
        results.append(out)
    ref, got = results
    for key in ref:
        assert_close(got[key], ref[key], what=key)


# --------------------------------------------------------------------------- solver


# the attention head cases duplicate the direct attention kernels in a solver run
SOLVER_MAPS = [f for f in FEATURE_MAPS if not f.id.startswith("attention-head")]
SOLVER_IDS = [f.id for f in SOLVER_MAPS]


def _solver_problem(case, c=3):
    X, fm = setup_case(case, seed=5)
    shape = block_shape_of(X, fm)
    rng = np.random.default_rng(6)
    y = np.concatenate([np.arange(c), rng.integers(0, c, N - c)])
    Y = np.eye(c)[y]
    w = rng.uniform(0.5, 1.5, N)
    w /= w.sum()
    return X, fm, shape, Y, w


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("loss", ["log_loss", "squared_error"])
def test_alpha_max_and_gap(loss, fit_intercept, xp, xp_ref):
    case = FEATURE_MAPS[1]
    X, fm, shape, Y, w = _solver_problem(case)
    df = get_datafit(loss)
    out = []
    for ns in (xp_ref, xp):
        op = operator_on(ns, X, fm, shape, None)
        Yx, wx = to_xp(ns, Y), to_xp(ns, w)
        amax, G0 = alpha_max(op, df, Yx, wx, fit_intercept)
        Z_host = 0.1 * np.random.default_rng(7).standard_normal((*shape[:2], shape[2] * 3))
        Z = to_xp(ns, Z_host)
        O = op.forward(Z) + to_xp(ns, np.full(3, 0.2))[None, :]
        pen = BlockNuclearNorm().value(Z)
        alpha = 0.3 * float(to_host(amax))
        primal, dual = duality_gap(op, df, Yx, wx, alpha, O, pen, wx @ Yx, fit_intercept)
        for a in (amax, G0, primal, dual):
            assert_in_namespace(a, ns)
        out.append((amax, G0, primal, dual))
    names = ("alpha_max", "G0", "primal", "dual")
    for a, b, what in zip(out[1], out[0], names):
        assert_close(a, b, what=what)


@pytest.mark.parametrize("chunk_rows", [None, 3], ids=["materialised", "chunked"])
@pytest.mark.parametrize("loss, fit_intercept", [("log_loss", True), ("squared_error", False)])
@pytest.mark.parametrize("case", SOLVER_MAPS, ids=SOLVER_IDS)
def test_fista_run(case, loss, fit_intercept, chunk_rows, xp, xp_ref):
    """A whole FISTA run (30 iterations, tol=0) is the same computation on every namespace."""
    X, fm, shape, Y, w = _solver_problem(case)
    df = get_datafit(loss)
    runs = []
    for ns, rows in ((xp_ref, None), (xp, chunk_rows)):
        op = operator_on(ns, X, fm, shape, rows)
        Yx, wx = to_xp(ns, Y), to_xp(ns, w)
        amax = float(to_host(alpha_max(op, df, Yx, wx, fit_intercept)[0]))
        res = fista(
            op, df, Yx, wx, 0.2 * amax, fit_intercept=fit_intercept, max_iter=30, tol=0.0,
            check_every=10, warn=False,
        )
        assert_in_namespace(res.coef, ns)
        assert_in_namespace(res.intercept, ns)
        runs.append(res)
    ref, got = runs  # numpy materialised vs this namespace (chunked or not)
    assert got.n_iter == ref.n_iter == 30
    assert not got.converged
    # 30 iterations amplify last-bit differences of other BLAS/LAPACK builds a little
    rtol = 1e-10 if "torch" in xp.__name__ else 1e-11
    assert_close(got.coef, ref.coef, rtol=rtol, what="coef")
    assert_close(got.intercept, ref.intercept, rtol=rtol, what="intercept")
    assert math.isclose(got.objective, ref.objective, rel_tol=rtol)
    assert math.isclose(got.dual_objective, ref.dual_objective, rel_tol=rtol)
    assert isinstance(got.objective, float) and isinstance(got.dual_gap, float)
    np.testing.assert_allclose(got.history["objective"], ref.history["objective"], rtol=rtol)


@pytest.mark.parametrize("chunk_rows", [None, 3], ids=["materialised", "chunked"])
@pytest.mark.parametrize("loss, fit_intercept", [("log_loss", True), ("squared_error", False)])
def test_newton_dual_point(loss, fit_intercept, chunk_rows, xp, xp_ref):
    """The rank-one logits of one gate (``block_features_times``) are the features'
    contraction, and the certificate's Newton-corrected dual value is the same
    computation on every namespace."""
    from skconvexattn._dual_points import _newton_dual
    from skconvexattn._factored_ops import LiftedFactorOperator
    from skconvexattn._solver import prior_and_start

    case = FEATURE_MAPS[1]
    X, fm, shape, Y, w = _solver_problem(case)
    P, R, L = shape
    df = get_datafit(loss)
    rng = np.random.default_rng(7)
    U = rng.standard_normal((R, 2))
    Phi = np.asarray(fm.fn(X, **fm.gates)).reshape(N, P, R, L)
    values = []
    for ns, rows in ((xp_ref, None), (xp, chunk_rows)):
        op = operator_on(ns, X, fm, shape, rows)
        K = op.block_features_times(1, to_xp(ns, U))
        assert_in_namespace(K, ns)
        assert_close(K, np.einsum("nrl,rk->nkl", Phi[:, 1], U), what="block_features_times")
        Yx, wx = to_xp(ns, Y), to_xp(ns, w)
        prior, _ = prior_and_start(df, Yx, wx, fit_intercept)
        amax = float(to_host(alpha_max(op, df, Yx, wx, fit_intercept)[0]))
        O = to_xp(ns, 0.3 * rng.standard_normal((N, Y.shape[1]))) if not values else O_next
        O_next = to_xp(xp, to_host(O))
        lop = LiftedFactorOperator(op, shape)
        values.append(_newton_dual(lop, df, Yx, wx, prior, fit_intercept, 0.5 * amax, O,
                                   steps=2))
    assert math.isclose(values[1], values[0], rel_tol=1e-10)


@pytest.mark.parametrize("kind", ["attention", "mixer"])
def test_matrix_free_pair_logits_and_newton_dual(kind, xp, xp_ref):
    """The matrix-free products' pair logits and the Newton-corrected dual value (spectra
    by Lanczos) are the same computation on every namespace, and stay in it."""
    from skconvexattn._dual_points import _newton_dual
    from skconvexattn._factored_ops import AttentionFactorOperator, MixerFactorOperator
    from skconvexattn._solver import prior_and_start

    rng = np.random.default_rng(11)
    n, s, d, c, P, k = 12, 4, 3, 2, 2, 2
    X = rng.standard_normal((n, s, d))
    side = (rng.random((n, s, P)) > 0.5).astype(np.float64)
    masks = (rng.random((n, P, s, d)) > 0.4).astype(np.float64)
    inv_len = np.full(n, 1.0 / s)
    a_shape = (d, d) if kind == "attention" else (s, s)
    A = rng.standard_normal((P, k) + a_shape)
    B = rng.standard_normal((P, k, d, c))
    Y = np.eye(c)[rng.integers(0, c, n)]
    w = np.full(n, 1.0 / n)
    O = 0.3 * rng.standard_normal((n, c))
    df = get_datafit("log_loss")
    results = []
    for ns in (xp_ref, xp):
        Xx = to_xp(ns, X)
        if kind == "attention":
            op = AttentionFactorOperator(Xx, to_xp(ns, side), to_xp(ns, inv_len))
        else:
            Mx = to_xp(ns, masks)
            op = MixerFactorOperator(Xx, lambda a, b, Mx=Mx: Mx[a:b, ...], P,
                                     to_xp(ns, inv_len))
        D = op.pair_logits(to_xp(ns, A), to_xp(ns, B))
        assert_in_namespace(D, ns)
        Yx, wx = to_xp(ns, Y), to_xp(ns, w)
        prior, _ = prior_and_start(df, Yx, wx, True)
        T = wx[:, None] * (to_xp(ns, O) - Yx)
        amax = float(np.max(np.linalg.svd(_explicit_blocks(op, T, P, a_shape, d, c),
                                           compute_uv=False)))
        value = _newton_dual(op, df, Yx, wx, prior, True, 0.5 * amax, to_xp(ns, O), steps=2)
        results.append((to_host(D), value))
    assert_close(results[1][0], results[0][0], what="pair_logits")
    assert math.isclose(results[1][1], results[0][1], rel_tol=1e-9)


def _explicit_blocks(op, T, P, a_shape, d, c):
    """The gradient blocks of a factor operator through ``grad_b`` on a basis (host)."""
    R = math.prod(a_shape)
    ns = array_namespace(T)
    eye = ns.reshape(ns.eye(R, dtype=T.dtype), (1, R) + a_shape)
    G = op.grad_b(T, ns.broadcast_to(eye, (P, R) + a_shape))
    return to_host(G).reshape(P, R, d * c)
