"""The lifted operator's products: plain GEMMs against the skinny-product dispatch.

The forward ``Phi @ Z`` and the adjoint ``Phi^T @ U`` have as many columns as classes,
and are memory-bound passes over the ``(n, K)`` features. On NumPy the operator now takes
one matrix-vector product per column where OpenBLAS's GEMM is slow on so few columns
(``skconvexattn._operator.features_times`` / ``features_adjoint``). For each case, in one
process and on the same features: seconds per product with the plain GEMM
(``Phi @ Z``, ``Phi.T @ U``, what the operator did before) and with the dispatch, and their
ratio; at ``--size full`` also a whole cold fit of the head (``solver="auto"``) with either
product, its iterations, certificate and seconds.

Data: the digits (always), the SST-2 MiniLM tokens and Fashion-MNIST patches in
``../shared/data`` when present (``benchmarks/_real_data.py``); skipped otherwise.

Run from the repository root::

    OMP_NUM_THREADS=2 python benchmarks/bench_products.py --size full
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import parse_args, table, timed, write_json  # noqa: E402
from _real_data import DataUnavailable  # noqa: E402

# (data, head, n_train) per size; n_train None = every training row
CASES = {
    "tiny": [("digits", "mixer", 300), ("digits", "attention", 300)],
    "quick": [("digits", "mixer", None), ("sst2", "mixer", 2000), ("sst2", "attention", 2000),
              ("fashion", "fno", 2000)],
    "full": [("sst2", "mixer", None), ("sst2", "attention", None), ("fashion", "fno", 5000),
             ("digits", "mixer", None)],
}


def _data(name, n_train):
    if name == "digits":
        from skconvexattn.datasets import load_digits_tokens

        X, y = load_digits_tokens(return_X_y=True)
        X = np.asarray(X, dtype=np.float32)
    else:
        from _real_data import load

        X, y, *_ = load(name)
        X = np.asarray(X, dtype=np.float32)
    if n_train is not None and n_train < len(y):
        X, y = X[:n_train], y[:n_train]
    return X, y


def _plain():
    """The plain GEMMs, as the operator computed them before the dispatch."""
    return (lambda Phi, Z: Phi @ Z), (lambda Phi, U: Phi.T @ U)


def _fit(est_cls, X, y, products):
    import skconvexattn._operator as ops

    saved = ops.features_times, ops.features_adjoint
    ops.features_times, ops.features_adjoint = products
    try:
        est = est_cls(alpha_ratio=0.1, n_gates=8, random_state=0, tol=1e-4, tol_scale="null")
        t0 = time.perf_counter()
        est.fit(X, y)
        seconds = time.perf_counter() - t0
    finally:
        ops.features_times, ops.features_adjoint = saved
    return {"seconds": seconds, "n_iter": int(est.n_iter_), "solver": est.solver_,
            "null_gap": float(est.convergence_["null_relative_gap"][-1]),
            "objective": float(est.objective_)}


def run_case(name, head, n_train, repeat, fits):
    import skconvexattn._operator as ops
    from skconvexattn.heads import get_head

    X, y = _data(name, n_train)
    est_cls = get_head(head).estimator
    st = est_cls(random_state=0, solver="fista", n_gates=8)._setup(X, y, None, reset=True)
    Phi = st.op.Phi
    if Phi is None:
        return None  # chunked features: nothing materialised to time
    c = st.Y.shape[1]
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((Phi.shape[1], c)).astype(Phi.dtype)
    U = rng.standard_normal((Phi.shape[0], c)).astype(Phi.dtype)
    plain_f, plain_a = _plain()
    t_pf, ref_f = timed(lambda: plain_f(Phi, Z), repeat)
    t_df, new_f = timed(lambda: ops.features_times(Phi, Z), repeat)
    t_pa, ref_a = timed(lambda: plain_a(Phi, U), repeat)
    t_da, new_a = timed(lambda: ops.features_adjoint(Phi, U), repeat)
    scale = float(np.abs(ref_a).max()) or 1.0
    row = {
        "case": f"{name}:{head}", "n": int(Phi.shape[0]), "K": int(Phi.shape[1]), "c": int(c),
        "GB": Phi.nbytes / 1e9,
        "forward_plain_s": t_pf, "forward_s": t_df, "forward_ratio": t_pf / t_df,
        "adjoint_plain_s": t_pa, "adjoint_s": t_da, "adjoint_ratio": t_pa / t_da,
        "max_rel_diff": float(max(np.abs(new_f - ref_f).max() / (np.abs(ref_f).max() or 1.0),
                                  np.abs(new_a - ref_a).max() / scale)),
    }
    st = Phi = None  # free the features before the fits
    if fits:
        plain = _fit(est_cls, X, y, _plain())
        new = _fit(est_cls, X, y, (ops.features_times, ops.features_adjoint))
        row.update({"fit_plain": plain, "fit": new,
                    "fit_ratio": plain["seconds"] / new["seconds"]})
    return row


def main(argv=None):
    args = parse_args(argv, __doc__.splitlines()[0])
    repeat = args.repeat or (1 if args.size == "tiny" else 3)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, head, n_train in CASES[args.size]:
            try:
                row = run_case(name, head, n_train, repeat, fits=args.size == "full")
            except (FileNotFoundError, DataUnavailable) as exc:  # no ../shared/data here
                print(f"{name}:{head}: skipped ({exc})")
                continue
            if row is not None:
                rows.append(row)
    for r in rows:
        if "fit" in r:
            r["fit_plain_s"], r["fit_s"] = r["fit_plain"]["seconds"], r["fit"]["seconds"]
    table(rows, ["case", "n", "K", "c", "forward_plain_s", "forward_s", "forward_ratio",
                 "adjoint_plain_s", "adjoint_s", "adjoint_ratio", "fit_plain_s", "fit_s"],
          "lifted products: plain GEMM vs dispatch (same process, same features)")
    return write_json(args, "bench_products", {"rows": rows})


if __name__ == "__main__":
    main()
