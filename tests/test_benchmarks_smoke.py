"""Every benchmark script's ``main`` runs at a tiny size in seconds and writes its JSON."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

SCRIPTS = {
    "bench_paths": [],
    "bench_iteration": [],
    "bench_generic_solvers": ["cvxpy", "clarabel", "scs"],
    "bench_nonconvex": ["torch"],
    "bench_pyscnn": ["scnn"],
    "bench_scaling": [],
    "bench_gpu": [],
}


@pytest.fixture(autouse=True, scope="module")
def _bench_path():
    sys.path.insert(0, str(BENCH))
    yield
    sys.path.remove(str(BENCH))


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_benchmark_runs_tiny(name, tmp_path, monkeypatch):
    for mod in SCRIPTS[name]:
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    module = importlib.import_module(name)
    path = module.main(["--size", "tiny", "--out", str(tmp_path)])
    data = json.loads(Path(path).read_text())
    assert data["size"] == "tiny"
    assert data["environment"]["OMP_NUM_THREADS"] == "1"
    if name == "bench_gpu":
        assert "GPU" in data["status"] or data["status"] == "ok"


def test_run_all_tiny(tmp_path):
    pytest.importorskip("cvxpy")
    module = importlib.import_module("run_all")
    path = module.main(["--size", "tiny", "--out", str(tmp_path), "--only", "bench_paths,bench_iteration"])
    data = json.loads(Path(path).read_text())
    assert not data["errors"]
    assert any("warm 10-value path" in r["what"] for r in data["figures"])


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("namespace", ["numpy", "array_api_strict"])
def test_gated_token_operator_matches_lifted_features(center, namespace):
    """The matrix-free operator of the pyscnn comparison equals the materialised one."""
    import numpy as np

    from skconvexattn._operator import GatedTokenOperator, LiftedOperator
    from skconvexattn.heads.attention import token_sides
    from skconvexattn.heads.mlp import mlp_features

    xp = pytest.importorskip(namespace)
    if namespace == "numpy":
        from array_api_compat import numpy as xp
    rng = np.random.default_rng(0)
    n, s, d, P, c = 30, 3, 4, 5, 2
    X = xp.asarray(rng.standard_normal((n, s, d)))
    H, cc = xp.asarray(rng.standard_normal((P, d))), xp.asarray(0.1 * rng.standard_normal(P))
    w = rng.random(n)
    w = xp.asarray(w / w.sum()) if center else None
    A = LiftedOperator(lambda T: mlp_features(T, H, cc), X, (P, d, 1), None, center=w)
    B = GatedTokenOperator(X, token_sides(X, H, cc), center=w)
    Z = xp.asarray(rng.standard_normal((P, d, c)))
    U = xp.asarray(rng.standard_normal((n, c)))
    np.testing.assert_allclose(np.asarray(B.forward(Z)), np.asarray(A.forward(Z)), atol=1e-12)
    np.testing.assert_allclose(np.asarray(B.adjoint(U)), np.asarray(A.adjoint(U)), atol=1e-12)
    np.testing.assert_allclose(np.asarray(B.intercept_shift(Z)), np.asarray(A.intercept_shift(Z)), atol=1e-12)
