"""FISTA against L-BFGS on factors through the same lifted features, on real tokens.

For each case (data set, head, ``alpha / alpha_max``) one set-up of a cold fit (the same
gates, lifted operator and ``alpha_max``), then, in the same process, FISTA and the
factored L-BFGS (``LiftedFactorOperator`` over that operator, what ``solver="auto"``
takes when the lifted features are kept in memory) to the same ``tol`` and
``tol_scale``: iterations, seconds, whether each certified, the objectives, and the
speed ratio; ``--memory 10,50`` also compares L-BFGS memories on the same operator.
Results go to ``benchmarks/results/lifted_factors.json``.

Data: ``../shared/data`` (SST-2 MiniLM tokens, Fashion-MNIST patches; see
``benchmarks/_real_data.py``) or the digits (no data folder needed).

Run from the repository root::

    OMP_NUM_THREADS=2 python benchmarks/bench_lifted_factors.py --cases sst2:fno:0.03 sst2:mlp:0.01
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DEFAULT_CASES = ("sst2:mlp:0.01", "sst2:fno:0.03", "sst2:attention:0.1", "sst2:mixer:0.1",
                 "fashion:fno:0.01")


def _data(name, n_train):
    from sklearn.model_selection import train_test_split

    from _real_data import load

    Xtr, ytr, *_ = load(name)
    if n_train < len(ytr):
        Xtr, _, ytr, _ = train_test_split(Xtr, ytr, train_size=n_train, stratify=ytr,
                                          random_state=0)
    return np.asarray(Xtr, dtype=np.float32), ytr


def run_case(case, n_train, tol, tol_scale, max_iter, memories=(50,)):
    from skconvexattn._factored import factored_solve
    from skconvexattn._factored_ops import LiftedFactorOperator
    from skconvexattn._solver import fista
    from skconvexattn.heads import get_head

    name, head, ratio = case.split(":")
    X, y = _data(name, n_train)
    est = get_head(head).estimator(random_state=0, solver="fista")
    st = est._setup(X, y, None, reset=True)
    alpha = float(ratio) * st.alpha_max
    kw = dict(fit_intercept=True, max_iter=max_iter, tol=tol, tol_scale=tol_scale, warn=False)
    t0 = time.perf_counter()
    a = fista(st.op, st.datafit, st.Y, st.w, alpha, grad_at_zero=st.grad_at_zero, **kw)
    t_fista = time.perf_counter() - t0
    op = LiftedFactorOperator(st.op, st.block_shape)
    by_memory = {}
    for m in memories:
        t0 = time.perf_counter()
        r = factored_solve(op, st.datafit, st.Y, st.w, alpha, memory=m, **kw)
        by_memory[m] = (r, time.perf_counter() - t0)
    b, t_lbfgs = by_memory[memories[-1]]
    return {
        "case": case, "n_train": int(len(y)), "alpha_ratio": float(ratio), "tol": tol,
        "tol_scale": tol_scale,
        "fista": {"iterations": a.n_iter, "seconds": t_fista, "certified": bool(a.converged),
                  "objective": float(a.objective)},
        "lbfgs_factors": {"iterations": b.n_iter, "seconds": t_lbfgs,
                          "certified": bool(b.converged), "objective": float(b.objective),
                          "heads_per_block": int(b.A.shape[1])},
        "speed_ratio": t_fista / t_lbfgs,
        "lbfgs_memory": memories[-1],
        "by_memory": {str(m): {"iterations": r.n_iter, "seconds": t, "certified": bool(r.converged),
                               "objective": float(r.objective)}
                      for m, (r, t) in by_memory.items()},
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES),
                   help="data:head:ratio (data: sst2, fashion, digits)")
    p.add_argument("--n-train", type=int, default=1500)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--tol-scale", default="objective", choices=["objective", "null"])
    p.add_argument("--max-iter", type=int, default=5000)
    p.add_argument("--memory", default="50",
                   help="L-BFGS memories to compare, comma-separated (the last is reported "
                        "against FISTA)")
    p.add_argument("--out", default=str(HERE / "results" / "lifted_factors.json"))
    args = p.parse_args(argv)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case in args.cases:
            try:
                row = run_case(case, args.n_train, args.tol, args.tol_scale, args.max_iter,
                               tuple(int(m) for m in args.memory.split(",")))
            except FileNotFoundError as exc:  # no ../shared/data here
                print(f"{case}: skipped ({exc})")
                continue
            rows.append(row)
            f, g = row["fista"], row["lbfgs_factors"]
            print(f"{case:22s} FISTA {f['iterations']:5d} it {f['seconds']:8.1f} s "
                  f"{'cert' if f['certified'] else 'NOT '} | L-BFGS {g['iterations']:5d} it "
                  f"{g['seconds']:8.1f} s {'cert' if g['certified'] else 'NOT '} | "
                  f"x{row['speed_ratio']:.1f}", flush=True)
            for m, r in row["by_memory"].items():
                print(f"{'':22s}   L-BFGS memory {m:>3s}: {r['iterations']:5d} it "
                      f"{r['seconds']:8.1f} s {'cert' if r['certified'] else 'NOT '}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"rows": rows, "argv": sys.argv[1:]}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
