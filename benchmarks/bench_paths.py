"""Warm-started regularisation paths against one cold fit at the path's smallest alpha.

For each head: a 10-value path (``alphas=10``, ``eps=1e-3``, log grid from ``alpha_max_``)
fitted by :func:`skconvexattn.model_selection.regularization_path` (every fit warm-started
from the previous one), against a cold fit at the smallest alpha; the same path fitted
cold at every alpha shows what the warm starts save. Also the full
``*CV`` estimator (5 folds x 10 alphas + refit) against one cold fit. Target: the warm
path <= 3x the cold fit (iterations and time; minimum time over repeats).
"""

from __future__ import annotations

import warnings

import numpy as np

try:
    from . import _common as C
except ImportError:  # run as a script
    import _common as C

NAME = "paths"
SIZES = {
    "tiny": {"attention": (60, 4, 3, 2, 2), "mlp": (60, 4, 3, 2, 2)},
    "quick": {"attention": (300, 8, 6, 2, 4), "mixer": (300, 8, 6, 2, 4), "fno": (300, 16, 6, 2, 4),
              "mlp": (1000, 8, 12, 3, 8)},
    "full": {"attention": (1000, 16, 8, 5, 8), "mixer": (1000, 16, 8, 5, 8), "fno": (2000, 32, 16, 5, 8),
             "mlp": (5000, 16, 32, 5, 16)},
}


def main(argv=None):
    args = C.parse_args(argv, __doc__.splitlines()[0], heads=True)
    heads = args.heads
    repeat = args.repeat or (1 if args.size == "tiny" else 3)
    from skconvexattn import model_selection as ms

    rows = []
    for head, (n, s, d, c, P) in SIZES[args.size].items():
        if head not in heads:
            continue
        cls = C.head_class(head)
        X, y = C.make_data(n, s, d, c, seed=0)
        base = cls(n_gates=P, random_state=0, device="cpu", max_iter=20000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_path = C.min_time(lambda: ms.regularization_path(base, X, y, 10, eps=1e-3), repeat)
            path = ms.regularization_path(base, X, y, 10, eps=1e-3)
            a_min = path["alphas"][-1]
            cold = base.set_params(alpha=a_min).fit(X, y)
            t_cold = C.min_time(lambda: cls(**{**base.get_params(), "alpha": a_min}).fit(X, y), repeat)
            cold_iters = [cls(**{**base.get_params(), "alpha": a}).fit(X, y).n_iter_ for a in path["alphas"]]
            cv_cls = getattr(ms, cls.__name__ + "CV")
            params = {k: v for k, v in base.get_params().items() if k not in ("alpha", "alpha_ratio", "warm_start")}
            t_cv = C.min_time(lambda: cv_cls(alphas=10, eps=1e-3, cv=5, **params).fit(X, y), 1)
        rows.append({
            "head": head, "n": n, "s": s, "d": d, "c": c, "n_gates": P,
            "alphas": path["alphas"], "path_n_iter": path["n_iter"], "cold_n_iter_each_alpha": cold_iters,
            "path_iters": int(path["n_iter"].sum()), "cold_iters": int(cold.n_iter_),
            "cold_path_iters": int(np.sum(cold_iters)),
            "iter_ratio": path["n_iter"].sum() / max(cold.n_iter_, 1),
            "path_s": t_path, "cold_s": t_cold, "time_ratio": t_path / t_cold,
            "warm_saving": 1 - path["n_iter"].sum() / max(np.sum(cold_iters), 1),
            "cv_s": t_cv, "cv_over_cold": t_cv / t_cold,
            "objective_match": abs(path["objective"][-1] - cold.objective_) / abs(cold.objective_),
            "met_3x": bool(path["n_iter"].sum() / max(cold.n_iter_, 1) <= 3 and t_path / t_cold <= 3),
        })
    C.table(rows, ["head", "n", "path_iters", "cold_iters", "cold_path_iters", "iter_ratio", "path_s", "cold_s",
                   "time_ratio", "warm_saving", "cv_over_cold", "met_3x"],
            title="10-value warm path vs one cold fit at the smallest alpha")
    return C.write_json(args, NAME, {"rows": rows})


if __name__ == "__main__":
    main()
