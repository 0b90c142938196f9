"""The solvers against each other on real tokens, in one process (issue 13's targets).

Each case ``data:head:ratio`` is fitted once per solver (``--solvers``, default
``auto,factored,fista``: factors through the lifted features where they are kept, the
matrix-free products of self-attention and the Mixer, proximal gradient) with the
estimators' defaults otherwise: ``tol=1e-4`` of the intercept-only loss, 8 gates, and
``--max-time`` seconds. From ``convergence_`` it records the seconds to a gap of ``1e-3``
and ``1e-4`` of the objective and ``1e-4`` of the null loss ("certified"), the
iterations, the heads per block and the test accuracy (``bench_rank_growth.run_case``).

The default cases are all training rows of the SST-2 tokens at the ratios the held-out
choice takes there (self-attention 0.03, Mixer 0.3) and the 384-feature re-embedding at
0.1. Data: ``sst2`` and ``fashion`` from ``../shared/data``, ``sst2_384`` re-embedded and
cached by ``_real_data``. Writes ``results/solvers_<size>.json``.

Usage::

    python benchmarks/bench_solvers.py --size full
    python benchmarks/bench_solvers.py --cases sst2:mixer:0.3 --solvers auto,fista
"""

from __future__ import annotations

try:
    from . import _common as C
    from .bench_rank_growth import run_case
    from .tune_alpha_ratio import DATA
except ImportError:  # run as a script
    import _common as C
    from bench_rank_growth import run_case
    from tune_alpha_ratio import DATA

CASES = "sst2:attention:0.03,sst2:mixer:0.3,sst2_384:attention:0.1"
SOLVERS = ("auto", "factored", "fista")


def main(argv=None):
    def extra(p):
        p.add_argument("--max-time", type=float, default=240.0, help="seconds per fit")
        p.add_argument("--solvers", default=",".join(SOLVERS),
                       help=f"comma-separated, among {','.join(SOLVERS)}")

    args, cases = C.parse_case_args(argv, __doc__.split("\n\n")[0], CASES, extra)
    solvers = args.solvers.split(",")
    for s in solvers:
        if s not in SOLVERS:
            raise SystemExit(f"--solvers: unknown solver {s!r}; choose among {','.join(SOLVERS)}")
    if not DATA.exists():
        print(f"no data at {DATA}: nothing to measure")
        return 0
    n_train = 10**9 if args.size == "full" else args.n_train
    cols = ["dataset", "head", "ratio", "solver", "matrix_free", "seconds", "n_iter", "heads",
            "null_relative_gap", "t_obj_1e-3", "t_null_1e-4", "test_accuracy"]
    rows = []
    for ds, head, ratio in cases:
        for solver in solvers:
            try:
                row = run_case(ds, head, ratio, n_train, args.max_time, {}, "null", solver)
            except (ValueError, MemoryError) as exc:  # refused up front (memory_budget)
                row = {"dataset": ds, "head": head, "ratio": ratio, "solver": solver,
                       "refused": str(exc)}
                print(f"[{ds}/{head}/{solver}] refused: {exc}", flush=True)
            else:
                row["solver"] = f"{solver} -> {row['solver']}"
            rows.append(row)
            C.table(rows[-1:], cols)
            C.write_json(args, "solvers", {"rows": rows, "max_time": args.max_time})
    C.table(rows, cols, title="solvers on real tokens (tol=1e-4 of the null loss)")
    return C.write_json(args, "solvers", {"rows": rows, "max_time": args.max_time})


if __name__ == "__main__":
    raise SystemExit(main())
