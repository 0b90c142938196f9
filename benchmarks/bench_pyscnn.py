"""(c) Against pyscnn (Mishkin, Sahiner & Pilanci 2022; ``pip install pyscnn``, imported as
``scnn``): its R-FISTA on the convex gated-ReLU MLP, against our FISTA on the identical
program.

Identical programs: one token per sample, one output (a binary target in {-1, +1}), squared
loss, no intercept, the same gates ``D_p = 1{X g_p >= 0}`` (pyscnn's ``G`` = our gate
hyperplanes with zero offsets), and the same scaling,

    min_U  (1/(2n)) || sum_p D_p X u_p - y ||^2 + lambda sum_p ||u_p||_2,

which is pyscnn's objective (squared error over ``2 n c`` with ``c = 1``, ``NeuronGL1``) and
ours (the mean of ``0.5 (o_i - y_i)^2`` plus ``alpha`` times the nuclear norms of the ``d x 1``
blocks, i.e. their Euclidean norms). pyscnn runs with ``unitize_data=False`` (its default
rescales the columns, which changes the penalty) and ``dtype='float64'``.

Ours: the token-MLP lifted features (``heads.mlp.mlp_features``) in a
:class:`skconvexattn._operator.LiftedOperator`, solved by :func:`skconvexattn._solver.fista`
(the machinery of :class:`~skconvexattn.heads.mlp.ConvexMLPClassifier`, which fits one output
per class and an intercept and so solves a different program), with two operators:
``LiftedOperator`` with materialised features, and the matrix-free
:class:`skconvexattn._operator.GatedTokenOperator` (what the head uses for one token per
sample and at most two outputs; GEMMs with ``X`` and
the masks per product instead of a pass over the ``n x P d`` features, as pyscnn does).

Both solvers are run from cold with decreasing tolerances; the time of the cheapest run
whose objective (evaluated by the same float64 formula) is within ``1e-6`` relative of the
best objective either reached is that solver's time. Target: >= 2x faster than pyscnn.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np

try:
    from . import _common as C
except ImportError:  # run as a script
    import _common as C

NAME = "pyscnn"
SIZES = {  # (n, d, n_gates)
    "tiny": [(100, 5, 4)],
    "quick": [(2000, 20, 32), (5000, 50, 64)],
    "full": [(2000, 20, 32), (10000, 50, 64), (50000, 100, 128)],
}
LAMBDA_FRACTION = 0.05
MAX_ITERS = 20000  # both solvers


def problem(n, d, P, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w = rng.standard_normal(d)
    y = np.sign(np.maximum(X @ w, 0) - np.median(np.maximum(X @ w, 0)) + 0.1 * rng.standard_normal(n))
    y[y == 0] = 1.0
    G = rng.standard_normal((d, P))
    return X, y, G


def objective(X, y, G, U, lam):
    """``(1/(2n)) ||sum_p D_p X u_p - y||^2 + lam sum_p ||u_p||`` with ``U`` of shape (P, d)."""
    D = (X @ G >= 0).astype(np.float64)  # (n, P)
    pred = np.einsum("np,nd,pd->n", D, X, U)
    return float(0.5 * np.mean((pred - y) ** 2) + lam * np.linalg.norm(U, axis=1).sum())


class Ours:
    def __init__(self, X, y, G, matrix_free=False):
        self.matrix_free = matrix_free
        from array_api_compat import numpy as xp

        from skconvexattn._datafits import SquaredError
        from skconvexattn._operator import LiftedOperator
        from skconvexattn.heads.mlp import mlp_features

        n, d = X.shape
        P = G.shape[1]
        H, c = np.ascontiguousarray(G.T), np.zeros(P)
        self.args = (xp, LiftedOperator, mlp_features, H, c, SquaredError)
        self.X3 = X[:, None, :]
        self.Y = y[:, None].astype(np.float64)
        self.w = np.full(n, 1.0 / n)
        self.shape = (P, d, 1)

    def operator(self):
        xp, LiftedOperator, mlp_features, H, c, SquaredError = self.args
        if self.matrix_free:
            from skconvexattn._operator import GatedTokenOperator
            from skconvexattn.heads.attention import token_sides

            return GatedTokenOperator(self.X3, token_sides(self.X3, H, c))
        return LiftedOperator(lambda X: mlp_features(X, H, c), self.X3, self.shape)

    def solve(self, lam, tol):
        """Build the operator (features included) and solve; return U (P, d)."""
        from skconvexattn._solver import fista

        xp, LiftedOperator, mlp_features, H, c, SquaredError = self.args
        op = self.operator()
        res = fista(op, SquaredError(), self.Y, self.w, lam, fit_intercept=False, tol=tol,
                    max_iter=MAX_ITERS, warn=False)
        return np.asarray(res.coef)[:, :, 0]

    def alpha_max(self):
        from skconvexattn._solver import alpha_max

        xp, LiftedOperator, mlp_features, H, c, SquaredError = self.args
        return float(alpha_max(self.operator(), SquaredError(), self.Y, self.w, False)[0])


def pyscnn_solve(X, y, G, lam, tol):
    from scnn.metrics import Metrics
    from scnn.models import ConvexGatedReLU
    from scnn.optimize import optimize_model
    from scnn.regularizers import NeuronGL1
    from scnn.solvers import RFISTA

    model = ConvexGatedReLU(G, c=1)
    solver = RFISTA(model, max_iters=MAX_ITERS, tol=tol)
    metrics = Metrics(metric_freq=10**9, objective=False, grad_norm=False, time=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = optimize_model(model, solver, metrics, X, y, regularizer=NeuronGL1(lam),
                                  return_convex=True, unitize_data=False, dtype="float64",
                                  verbose=False)
    # pyscnn sorts the gates by activation pattern (np.unique) and drops duplicate and
    # all-zero patterns: the same program up to a permutation; evaluate with its own G
    return np.asarray(model.parameters[0])[0], np.asarray(model.G)  # (P, d), (d, P)


def time_to(solve, target, tols, f, repeat):
    for tol in tols:
        t0 = time.perf_counter()
        U = solve(tol)
        first = time.perf_counter() - t0
        if f(U) <= target:
            times = [first]
            for _ in range(repeat - 1):
                t0 = time.perf_counter()
                solve(tol)
                times.append(time.perf_counter() - t0)
            return float(np.median(times)), tol
    return math.inf, None


def main(argv=None):
    args = C.parse_args(argv, __doc__.splitlines()[0])
    try:
        import scnn.optimize  # noqa: F401
    except Exception as exc:  # not installable / not importable here
        msg = f"pyscnn unavailable: {type(exc).__name__}: {exc}"
        print(msg + " -- skipped")
        return C.write_json(args, NAME, {"skipped": msg})
    repeat = args.repeat or (1 if args.size == "tiny" else 3)
    rows = []
    for n, d, P in SIZES[args.size]:
        X, y, G = problem(n, d, P)
        ours = Ours(X, y, G)
        lam = LAMBDA_FRACTION * ours.alpha_max()
        f = lambda U: objective(X, y, G, U, lam)  # noqa: E731
        f_scnn = lambda UG: objective(X, y, UG[1], UG[0], lam)  # noqa: E731
        t0 = time.perf_counter()
        f_ours_best = f(ours.solve(lam, 1e-10))
        t_ours_best = time.perf_counter() - t0
        t0 = time.perf_counter()
        f_scnn_best = f_scnn(pyscnn_solve(X, y, G, lam, 1e-12))
        t_scnn_best = time.perf_counter() - t0
        f_best = min(f_ours_best, f_scnn_best)
        target = f_best + 1e-6 * abs(f_best)
        t_ours, tol_ours = time_to(lambda t: ours.solve(lam, t), target,
                                   [10.0**-k for k in range(2, 11)], f, repeat)
        mf = Ours(X, y, G, matrix_free=True)
        t_mf, tol_mf = time_to(lambda t: mf.solve(lam, t), target,
                               [10.0**-k for k in range(2, 11)], f, repeat)
        t_scnn, tol_scnn = time_to(lambda t: pyscnn_solve(X, y, G, lam, t), target,
                                   [10.0**-k for k in range(2, 13)], f_scnn, repeat)
        rows.append({
            "n": n, "d": d, "P": P, "lambda": lam, "f_best": f_best,
            "ours_best_rel": (f_ours_best - f_best) / abs(f_best), "ours_best_s": t_ours_best,
            "pyscnn_best_s": t_scnn_best,
            "pyscnn_best_rel": (f_scnn_best - f_best) / abs(f_best),
            "ours_s": t_ours, "ours_tol": tol_ours, "pyscnn_s": t_scnn, "pyscnn_tol": tol_scnn,
            "ours_matrix_free_s": t_mf, "ours_matrix_free_tol": tol_mf,
            "speedup": C.ratio(t_scnn, t_ours),
            "speedup_matrix_free": C.ratio(t_scnn, t_mf),
            "met_2x": C.ratio(t_scnn, t_ours) >= 2.0,
            "met_2x_matrix_free": C.ratio(t_scnn, t_mf) >= 2.0,
        })
    C.table(rows, ["n", "d", "P", "f_best", "ours_best_rel", "pyscnn_best_rel", "ours_s", "ours_matrix_free_s", "pyscnn_s", "speedup", "speedup_matrix_free", "met_2x_matrix_free"],
            title="vs pyscnn R-FISTA (time to within 1e-6 of the best objective; speed-up = pyscnn / ours)")
    return C.write_json(args, NAME, {"lambda_fraction": LAMBDA_FRACTION, "rows": rows})


if __name__ == "__main__":
    main()
