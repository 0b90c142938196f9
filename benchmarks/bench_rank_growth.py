"""Rank growth of the factored solver, two rules against each other (``--compare``):

* ``grow_pairs``: how many heads each growth adds, one (the leading pair of ``-Grad_p``,
  the previous rule; ``GROW_PAIRS = 1``) or several (``_factored.GROW_PAIRS``, the pairs
  above ``alpha`` outside the tangent space of the current heads);
* ``dead_heads``: where they go, always into new columns (the previous rule;
  ``DEAD_HEAD = -1``) or into the block's dead heads first (``_factored.DEAD_HEAD``:
  a block whose heads are zero where other blocks grew can still grow once the columns
  reach ``min(R, L c)``);
* ``probe`` / ``compress`` / ``probe_compress``: without or with the dual points between
  certificates from the blocks each evaluation forms (``PROBE_MAX_SIDE = 0`` turns them
  off) and the compression of redundant heads to each block's compact SVD
  (``COMPRESS_RATIO`` huge turns it off);
* ``newton``: without or with the Newton correction of each certificate's dual point
  (``NEWTON_STEPS = 0`` turns it off).

Each case fits one head at one ``alpha_ratio`` with ``solver="auto"`` (``--solver``:
another, e.g. ``factored`` for the matrix-free products of self-attention and the Mixer), ``tol=1e-4``
relative to the objective (``--tol-scale null``: to the intercept-only loss, the
estimators' default) and ``--max-time`` seconds, twice in one process: with the
previous rule (the reference) and with the package's. From ``convergence_`` it
records the seconds to a gap of ``1e-3`` and ``1e-4`` of the objective and ``1e-4`` of the
null loss (the intercept-only model's), the iterations, the heads per block at the end
and the test accuracy. The default cases are the ratios ``alpha_ratio="auto"`` picks on
1,500 training rows (``docs/alpha.rst``).

Data: ``sst2`` and ``fashion`` through ``tune_alpha_ratio.load``. Writes
``results/rank_growth_<size>.json`` (``rank_growth_dead_heads_<size>.json``).

Usage::

    python benchmarks/bench_rank_growth.py --cases fashion:mixer:0.01,sst2:attention:0.03
    python benchmarks/bench_rank_growth.py --compare dead_heads
    python benchmarks/bench_rank_growth.py --compare probe_compress --cases sst2:attention:0.03
    python benchmarks/bench_rank_growth.py --compare newton --tol-scale null \
        --cases fashion:attention:0.003 --max-time 2000
"""

from __future__ import annotations

import math
import time
import warnings

try:
    from . import _common as C
    from .tune_alpha_ratio import DATA, load
except ImportError:  # run as a script
    import _common as C
    from tune_alpha_ratio import DATA, load

CASES = ("sst2:attention:0.03,sst2:mixer:0.1,fashion:fno:0.003,fashion:mlp:0.003,"
         "fashion:mixer:0.01")


def _first(history, key, level):
    """Seconds at the first certificate whose ``key`` is at most ``level`` (None: never)."""
    for t, g in zip(history["time"], history[key]):
        if g <= level:
            return float(t)
    return None


#: per ``--compare``: constants of the solver's modules (``_factored``, ``_dual_points``)
#: and their previous values
#: (``probe``: no dual points between certificates; ``compress``: redundant heads kept)
RULES = {
    "grow_pairs": {"GROW_PAIRS": 1},
    "dead_heads": {"DEAD_HEAD": -1.0},
    "probe": {"PROBE_MAX_SIDE": 0},
    "compress": {"COMPRESS_RATIO": 10**9},
    "probe_compress": {"PROBE_MAX_SIDE": 0, "COMPRESS_RATIO": 10**9},
    "newton": {"NEWTON_STEPS": 0},
}


def _module_of(name):
    """The solver module that holds the constant ``name``."""
    from skconvexattn import _dual_points, _factored

    return _factored if hasattr(_factored, name) else _dual_points


def run_case(ds, head, ratio, n_train, max_time, overrides, tol_scale="objective",
             solver="auto"):
    from skconvexattn.heads import get_head

    Xtr, ytr, Xte, yte = load(ds, n_train)
    saved = {k: getattr(_module_of(k), k) for k in overrides}
    for k, v in overrides.items():
        setattr(_module_of(k), k, v)
    try:
        est = get_head(head).estimator(random_state=0, alpha_ratio=ratio, tol=1e-4,
                                       tol_scale=tol_scale, max_time=max_time,
                                       solver=solver)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(Xtr, ytr)
        seconds = time.perf_counter() - t0
    finally:
        for k, v in saved.items():
            setattr(_module_of(k), k, v)
    h = est.convergence_
    factors = getattr(est, "factors_", None)
    return {
        "dataset": ds, "head": head, "ratio": ratio,
        "value": "previous" if overrides else "package",
        "solver": getattr(est, "solver_", None),
        "matrix_free": None if factors is None else bool(factors.get("matrix_free")),
        "seconds": seconds, "n_iter": est.n_iter_,
        "heads": None if factors is None else int(factors["A"].shape[1]),
        "relative_gap": h["relative_gap"][-1], "null_relative_gap": h["null_relative_gap"][-1],
        "t_obj_1e-3": _first(h, "relative_gap", 1e-3),
        "t_obj_1e-4": _first(h, "relative_gap", 1e-4),
        "t_null_1e-4": _first(h, "null_relative_gap", 1e-4),
        "test_accuracy": float(est.score(Xte, yte)),
    }


def main(argv=None):
    def extra(p):
        p.add_argument("--max-time", type=float, default=300.0, help="seconds per fit")
        p.add_argument("--tol-scale", choices=["objective", "null"], default="objective",
                       help="what tol=1e-4 is relative to")
        p.add_argument("--compare", choices=sorted(RULES), default="grow_pairs",
                       help="the rule compared with its previous version")
        p.add_argument("--solver", choices=["auto", "factored", "fista"], default="auto",
                       help="the estimators' solver")

    args, cases = C.parse_case_args(argv, __doc__.split("\n\n")[0], CASES, extra)
    before = RULES[args.compare]
    package = {k: getattr(_module_of(k), k) for k in before}
    cols = ["dataset", "head", "ratio", "value", "seconds", "n_iter", "heads",
            "relative_gap", "t_obj_1e-3", "t_obj_1e-4", "t_null_1e-4", "test_accuracy"]
    if not DATA.exists():
        print(f"no data at {DATA}: nothing to measure")
        return 0
    rows = []
    for ds, head, ratio in cases:
        for overrides in (before, {}):
            rows.append(run_case(ds, head, ratio, args.n_train, args.max_time, overrides,
                                 args.tol_scale, args.solver))
            rows[-1]["constants"] = overrides or package
            C.table(rows[-1:], cols)
        ref, new = rows[-2], rows[-1]
        for key in ("t_obj_1e-3", "t_obj_1e-4", "t_null_1e-4"):
            a, b = ref[key], new[key]
            new[f"speedup_{key}"] = (a if a is not None else math.inf) / b if b else None
    C.table(rows, cols, title=f"factored solver: {before} against {package}")
    out = "rank_growth" if args.compare == "grow_pairs" else f"rank_growth_{args.compare}"
    if args.solver != "auto":
        out += f"_{args.solver}"
    C.write_json(args, out, {"rows": rows, "n_train": args.n_train, "max_time": args.max_time,
                             "tol_scale": args.tol_scale,
                             "rule": args.compare, "before": before, "package": package})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
