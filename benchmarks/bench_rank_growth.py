"""How many heads the factored solver adds at each rank growth: one (the leading pair of
``-Grad_p``, the previous rule) or several (``_factored.GROW_PAIRS``, the pairs above
``alpha`` outside the tangent space of the current heads).

Each case fits one head at one ``alpha_ratio`` with ``solver="auto"``, ``tol=1e-4``
relative to the objective and ``--max-time`` seconds, twice in one process: with
``GROW_PAIRS = 1`` (the reference) and with the package's value. From ``convergence_`` it
records the seconds to a gap of ``1e-3`` and ``1e-4`` of the objective and ``1e-4`` of the
null loss (the intercept-only model's), the iterations, the heads per block at the end
and the test accuracy. The default cases are the ratios ``alpha_ratio="auto"`` picks on
1,500 training rows (``docs/alpha.rst``).

Data: ``sst2`` and ``fashion`` through ``tune_alpha_ratio.load``. Writes
``results/rank_growth_<size>.json``.

Usage::

    python benchmarks/bench_rank_growth.py --cases fashion:mixer:0.01,sst2:attention:0.03
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


def run_case(ds, head, ratio, n_train, max_time, grow_pairs):
    from skconvexattn import _factored
    from skconvexattn.heads import get_head

    Xtr, ytr, Xte, yte = load(ds, n_train)
    saved = _factored.GROW_PAIRS
    _factored.GROW_PAIRS = grow_pairs
    try:
        est = get_head(head).estimator(random_state=0, alpha_ratio=ratio, tol=1e-4,
                                       tol_scale="objective", max_time=max_time)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(Xtr, ytr)
        seconds = time.perf_counter() - t0
    finally:
        _factored.GROW_PAIRS = saved
    h = est.convergence_
    factors = getattr(est, "factors_", None)
    return {
        "dataset": ds, "head": head, "ratio": ratio, "grow_pairs": grow_pairs,
        "solver": getattr(est, "solver_", None), "seconds": seconds, "n_iter": est.n_iter_,
        "heads": None if factors is None else int(factors["A"].shape[1]),
        "relative_gap": h["relative_gap"][-1], "null_relative_gap": h["null_relative_gap"][-1],
        "t_obj_1e-3": _first(h, "relative_gap", 1e-3),
        "t_obj_1e-4": _first(h, "relative_gap", 1e-4),
        "t_null_1e-4": _first(h, "null_relative_gap", 1e-4),
        "test_accuracy": float(est.score(Xte, yte)),
    }


def main(argv=None):
    from skconvexattn import _factored

    def extra(p):
        p.add_argument("--max-time", type=float, default=300.0, help="seconds per fit")

    args, cases = C.parse_case_args(argv, __doc__.split("\n\n")[0], CASES, extra)
    if not DATA.exists():
        print(f"no data at {DATA}: nothing to measure")
        return 0
    rows = []
    for ds, head, ratio in cases:
        for gp in (1, _factored.GROW_PAIRS):
            rows.append(run_case(ds, head, ratio, args.n_train, args.max_time, gp))
            C.table(rows[-1:], ["dataset", "head", "ratio", "grow_pairs", "seconds", "n_iter",
                                "heads", "relative_gap", "t_obj_1e-3", "t_obj_1e-4",
                                "t_null_1e-4", "test_accuracy"])
        ref, new = rows[-2], rows[-1]
        for key in ("t_obj_1e-3", "t_obj_1e-4", "t_null_1e-4"):
            a, b = ref[key], new[key]
            new[f"speedup_{key}"] = (a if a is not None else math.inf) / b if b else None
    C.table(rows, ["dataset", "head", "ratio", "grow_pairs", "seconds", "n_iter", "heads",
                   "relative_gap", "t_obj_1e-3", "t_obj_1e-4", "t_null_1e-4",
                   "test_accuracy"], title="rank growth: one pair against several")
    C.write_json(args, "rank_growth", {"rows": rows, "n_train": args.n_train,
                                       "max_time": args.max_time,
                                       "grow_pairs": _factored.GROW_PAIRS})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
