"""Factored solver against FISTA on real tokens, and the Mixer at the paper's 196 tokens.

For each case and solver: fit time (set-up included), solver iterations, heads per block,
the time at which the certificate first reached a gap of 1e-3 relative to the objective and
of 1e-4 times the intercept-only loss ("certified"), the final gaps, and test accuracy.
Speed is reported as the ratio FISTA / factored measured in the same process.

Cases:

* ``sst2-attention`` / ``sst2-mixer``: the SST-2 MiniLM tokens of ``../shared/data``
  (6,920 train / 1,821 test sentences, 32 tokens, 16 features; padding rows are NaN), 8
  gates, ``alpha = ratio * alpha_max_``;
* ``mixer196``: the Mixer at the paper's scale, ``n=5000, s=196, d=32, c=100`` (Gaussian
  tokens, labels from a random token-mixing teacher), 8 gates: its lifted weights (983 M)
  cannot be stored, the factored solver fits it in the default memory budget.

Usage::

    python benchmarks/bench_factored.py --size quick           # CPU, subsampled
    python benchmarks/bench_factored.py --device cuda --size full

Without ``../shared/data`` the SST-2 cases are skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

import numpy as np

try:
    from . import _common as C
except ImportError:  # run as a script
    import _common as C

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("SKCONVEXATTN_DATA", HERE.parent.parent / "shared" / "data"))
SIZES = {
    "tiny": dict(n_train=120, max_time=20, mixer196=dict(n=60, s=12, d=8, c=5)),
    "quick": dict(n_train=1500, max_time=240, mixer196=None),
    "full": dict(n_train=None, max_time=600, mixer196=dict(n=5000, s=196, d=32, c=100)),
}


def _first_time(hist, key, level):
    for t, g in zip(hist["time"], hist[key]):
        if g <= level:
            return t
    return None


def load_sst2(n_train):
    path = DATA / "sst2_minilm_s32_pca16.npz"
    if not path.exists():
        print(f"skipping SST-2: {path} not found (set SKCONVEXATTN_DATA)")
        return None
    z = np.load(path, allow_pickle=False)
    Xtr, ytr, Xte, yte = z["X_train"], z["y_train"], z["X_test"], z["y_test"]
    Xtr = np.where(z["mask_train"][:, :, None], Xtr, np.nan).astype(np.float32)
    Xte = np.where(z["mask_test"][:, :, None], Xte, np.nan).astype(np.float32)
    if n_train is not None and n_train < Xtr.shape[0]:
        idx = np.random.default_rng(0).choice(Xtr.shape[0], n_train, replace=False)
        Xtr, ytr = Xtr[idx], ytr[idx]
    return Xtr, ytr, Xte, yte


def make_mixer196(n, s, d, c, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((2 * n, s, d)).astype(np.float32)
    W1 = rng.standard_normal((4, s, s)) / np.sqrt(s)
    W2 = rng.standard_normal((4, d, c)) / np.sqrt(d)
    o = sum(np.maximum(np.einsum("ts,nsd->ntd", W1[j], X), 0).mean(axis=1) @ W2[j] for j in range(4))
    y = np.argmax(o + 0.1 * rng.standard_normal(o.shape), axis=1)
    return X[:n], y[:n], X[n:], y[n:]


def run_case(cls, Xtr, ytr, Xte, yte, *, solver, alpha, device, max_time, max_iter=100000):
    est = cls(alpha=alpha, n_gates=8, random_state=0, solver=solver, tol=1e-4,
              tol_scale="null", max_iter=max_iter, device=device)
    if "max_time" in est.get_params():
        est.set_params(max_time=max_time)
    fit_s, caught = C.timed_fit(est, Xtr, ytr)
    h = est.convergence_
    setup = fit_s - h["time"][-1]
    t3 = _first_time(h, "relative_gap", 1e-3)
    t4 = _first_time(h, "null_relative_gap", 1e-4)
    return {
        "solver": est.solver_, "fit_s": fit_s, "n_iter": int(est.n_iter_),
        "objective": float(est.objective_), "dual_gap": float(est.dual_gap_),
        "null_objective": float(est.null_objective_),
        "relative_gap": float(est.dual_gap_ / abs(est.objective_)),
        "null_relative_gap": float(est.dual_gap_ / est.null_objective_),
        "time_to_rel_1e-3": None if t3 is None else t3 + setup,
        "time_to_certified": None if t4 is None else t4 + setup,
        "heads_per_block": (
            int(est.factors_["A"].shape[1]) if "factors_" in est.__dict__ else None
        ),
        "alpha": alpha, "alpha_max": float(est.alpha_max_),
        "test_accuracy": float(est.score(Xte, yte)),
        "train_accuracy": float(est.score(Xtr, ytr)),
        "warnings": caught,
    }


def main(argv=None):
    from skconvexattn import ConvexMixerClassifier, ConvexSelfAttentionClassifier

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="quick")
    p.add_argument("--device", default="cpu")
    p.add_argument("--ratio", type=float, default=0.01, help="alpha / alpha_max_")
    p.add_argument("--cases", default="sst2-attention,sst2-mixer,mixer196")
    p.add_argument("--solvers", default="fista,factored")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--max-time", type=float, default=None, help="seconds per fit")
    p.add_argument("--max-iter", type=int, default=5000)
    a = p.parse_args(argv)
    size = SIZES[a.size]
    cases = a.cases.split(",")
    solvers = a.solvers.split(",")
    rows = []
    sst = load_sst2(size["n_train"]) if any(c.startswith("sst2") for c in cases) else None
    heads = {"attention": ConvexSelfAttentionClassifier, "mixer": ConvexMixerClassifier}
    for case in cases:
        if case.startswith("sst2"):
            if sst is None:
                continue
            cls = heads[case.split("-")[1]]
            data, slv = sst, solvers
        elif case == "mixer196":
            if size["mixer196"] is None:
                continue
            cls, data, slv = ConvexMixerClassifier, make_mixer196(**size["mixer196"]), ["factored"]
        else:
            raise SystemExit(f"unknown case {case!r}")
        probe = cls(alpha=1e30, n_gates=8, random_state=0, solver="factored", max_iter=1,
                    device=a.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe.fit(data[0], data[1])
        alpha = a.ratio * probe.alpha_max_
        for solver in slv:
            row = run_case(cls, *data, solver=solver, alpha=alpha, device=a.device,
                           max_time=a.max_time or size["max_time"], max_iter=a.max_iter)
            row.update(case=case, device=a.device, n_train=int(data[0].shape[0]),
                       shape=list(data[0].shape[1:]))
            rows.append(row)
            print(json.dumps(row), flush=True)
            _save(rows, a)
    by = {(r["case"], r["solver"]): r for r in rows}
    for case in cases:
        f, g = by.get((case, "fista")), by.get((case, "factored"))
        if f and g and g["time_to_certified"] and f["time_to_certified"]:
            print(f"{case}: certified FISTA/factored time ratio "
                  f"{f['time_to_certified'] / g['time_to_certified']:.2f}")
    print(f"{'case':16s} {'solver':9s} {'fit s':>8s} {'iter':>6s} {'cert s':>8s} "
          f"{'rel1e-3 s':>9s} {'null gap':>9s} {'heads':>5s} {'test acc':>8s}")
    for r in rows:
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        print(f"{r['case']:16s} {r['solver']:9s} {r['fit_s']:8.1f} {r['n_iter']:6d} "
              f"{fmt(r['time_to_certified']):>8s} {fmt(r['time_to_rel_1e-3']):>9s} "
              f"{r['null_relative_gap']:9.2e} {str(r['heads_per_block']):>5s} "
              f"{r['test_accuracy']:8.3f}")
    _save(rows, a)
    return rows


def _save(rows, a):
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"factored_{a.size}_{a.device}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
