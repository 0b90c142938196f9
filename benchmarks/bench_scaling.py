"""(e) Scaling: fit time against n, s, d and n_gates.

The self-attention head (and the others at their own base sizes) is fitted from cold at
``alpha = 0.05 * alpha_max_`` to the default ``tol=1e-4``, varying one of ``n``, ``s``, ``d``,
``n_gates`` around a base size. Reported: fit time (median), iterations, time per
iteration, and the log-log slope of time against each parameter (expected: about 1 in ``n``
and ``n_gates`` per iteration, 3 in ``d`` for self-attention, where the lifted features
grow as ``d**3``; iterations depend on the conditioning).
"""

from __future__ import annotations

import time
import warnings

import numpy as np

try:
    from . import _common as C
except ImportError:  # run as a script
    import _common as C

NAME = "scaling"
BASE = {  # head -> base (n, s, d, c, n_gates)
    "tiny": {"attention": (40, 4, 3, 2, 2), "mlp": (40, 4, 3, 2, 2)},
    "quick": {"attention": (500, 8, 6, 3, 4), "fno": (500, 16, 8, 3, 4), "mixer": (500, 8, 6, 3, 4),
              "mlp": (2000, 8, 16, 3, 8)},
    "full": {"attention": (2000, 16, 8, 5, 8), "fno": (2000, 32, 16, 5, 8), "mixer": (2000, 16, 8, 5, 8),
             "mlp": (10000, 16, 32, 5, 16)},
}
FACTORS = {"tiny": [1, 2], "quick": [0.5, 1, 2], "full": [0.5, 1, 2, 4]}
PARAMS = ("n", "s", "d", "n_gates")


def fit_time(head, n, s, d, c, P, repeat):
    cls = C.head_class(head)
    X, y = C.make_data(n, s, d, c, seed=0)
    kw = dict(n_gates=P, random_state=0, device="cpu", max_iter=5000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alpha = 0.05 * cls(alpha=1e300, **kw).fit(X, y).alpha_max_
        t, est = C.timed(lambda: cls(alpha=alpha, **kw).fit(X, y), repeat=repeat)
    return t, est.n_iter_


def main(argv=None):
    args = C.parse_args(argv, __doc__.splitlines()[0])
    repeat = args.repeat or (1 if args.size == "tiny" else 3)
    rows, slopes = [], []
    for head, base in BASE[args.size].items():
        if head not in C.available_heads():
            continue
        for k, param in enumerate(PARAMS):
            xs, ts, tis = [], [], []
            for f in FACTORS[args.size]:
                size = list(base)
                idx = {"n": 0, "s": 1, "d": 2, "n_gates": 4}[param]
                size[idx] = max(2, int(round(base[idx] * f)))
                t, it = fit_time(head, *size, repeat)
                rows.append({"head": head, "vary": param, "n": size[0], "s": size[1], "d": size[2],
                             "c": size[3], "n_gates": size[4], "time_s": t, "n_iter": it,
                             "time_per_iter_ms": 1e3 * t / max(it, 1)})
                xs.append(size[idx])
                ts.append(t)
                tis.append(t / max(it, 1))
            if len(set(xs)) > 1:
                slopes.append({"head": head, "vary": param,
                               "slope_time": float(np.polyfit(np.log(xs), np.log(ts), 1)[0]),
                               "slope_time_per_iter": float(np.polyfit(np.log(xs), np.log(tis), 1)[0])})
    C.table(rows, ["head", "vary", "n", "s", "d", "n_gates", "time_s", "n_iter", "time_per_iter_ms"],
            title="fit time against size (cold fit, alpha = 0.05 alpha_max_, tol=1e-4)")
    C.table(slopes, ["head", "vary", "slope_time", "slope_time_per_iter"], title="log-log slopes")
    return C.write_json(args, NAME, {"rows": rows, "slopes": slopes})


if __name__ == "__main__":
    main()
