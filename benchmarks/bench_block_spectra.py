"""The leading singular triples of whole gradient blocks: a compact SVD against the
eigenvectors of the smaller side's Gram matrix (``_spectra._top_triples``).

When a block is formed whole (the lifted features are materialised, or its smaller side
has at most ``EXACT_MAX`` entries), every certificate of the factored solver needs the
top singular value of each block and, for rank growth, a few leading pairs. For each
case this script

* takes the real gradient blocks of the last certificate of the head's fit at its
  ``alpha_ratio`` and times ``numpy.linalg.svd`` (the previous route) and
  ``_top_triples`` on them, and records how far the leading values and ``u^T G v`` of the
  two routes are apart;
* fits the head twice in one process, ``max_iter`` iterations each (``tol`` out of reach),
  with the previous route patched in and with the package's: seconds, iterations, the
  gap at the end and how many whole-block spectra the fit took.

Data: ``sst2`` and ``fashion`` through ``tune_alpha_ratio.load``. Writes
``results/block_spectra_<size>.json``.

Usage::

    python benchmarks/bench_block_spectra.py --cases fashion:mixer:0.01 --max-iter 100
"""

from __future__ import annotations

import time
import warnings

import numpy as np

try:
    from . import _common as C
    from .tune_alpha_ratio import DATA, load
except ImportError:  # run as a script
    import _common as C
    from tune_alpha_ratio import DATA, load

CASES = "fashion:mixer:0.01,fashion:fno:0.003,sst2:mixer:0.1"


def svd_triples(G, m):
    """The previous route: a compact SVD of every block, vectors included."""
    U, S, Vh = np.linalg.svd(G, full_matrices=False)
    return S[:, :m], U[:, :, :m], np.transpose(Vh[:, :m, :], (0, 2, 1))


def _fit(head, Xtr, ytr, ratio, max_iter, route, seen):
    """Fit with the ``route`` ("svd": the previous one); ``seen`` receives every block
    stack that the route was given."""
    from skconvexattn import _spectra
    from skconvexattn.heads import get_head

    saved = _spectra._top_triples
    inner = svd_triples if route == "svd" else saved

    def recording(G, m):
        seen.append(G)
        return inner(G, m)

    _spectra._top_triples = recording
    try:
        est = get_head(head).estimator(random_state=0, alpha_ratio=ratio, tol=1e-12,
                                       max_iter=max_iter)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(Xtr, ytr)
        return est, time.perf_counter() - t0
    finally:
        _spectra._top_triples = saved


def run_case(ds, head, ratio, n_train, max_iter, repeat):
    from skconvexattn._spectra import _top_triples

    Xtr, ytr, _, _ = load(ds, n_train)
    rows, seen = [], []
    for route in ("svd", "gram"):
        seen.clear()
        est, seconds = _fit(head, Xtr, ytr, ratio, max_iter, route, seen)
        h = est.convergence_
        rows.append({"dataset": ds, "head": head, "ratio": ratio, "route": route,
                     "solver": getattr(est, "solver_", None),
                     "memory_plan": getattr(est, "memory_plan_", None),
                     "fit_s": seconds, "n_iter": est.n_iter_,
                     "null_relative_gap": h["null_relative_gap"][-1],
                     "whole_block_spectra": len(seen)})
    if not seen:  # the blocks went through Lanczos: nothing to compare
        return rows
    G = seen[-1]  # the blocks of the last certificate of the package's route
    m = 9
    t_svd = C.min_time(lambda: svd_triples(G, m), repeat)
    t_gram = C.min_time(lambda: _top_triples(G, m), repeat)
    S1, U1, V1 = svd_triples(G, m)
    S2, U2, V2 = _top_triples(G, m)
    top = S1[:, :1]
    rows[-1].update({
        "block_shape": list(G.shape), "svd_s": t_svd, "gram_s": t_gram,
        "speedup": t_svd / t_gram,
        "max_rel_diff_sigma": float(np.max(np.abs(S1 - S2) / top)),
        "max_rel_diff_top_sigma": float(np.max(np.abs(S1[:, 0] - S2[:, 0]) / S1[:, 0])),
        "max_rel_residual_uGv": float(np.max(np.abs(
            np.einsum("prm,prl,plm->pm", U2, G, V2) - S2) / top)),
    })
    rows[-1]["fit_speedup"] = rows[0]["fit_s"] / rows[-1]["fit_s"]
    return rows


def main(argv=None):
    def extra(p):
        p.add_argument("--max-iter", type=int, default=100, help="iterations per fit")

    args, cases = C.parse_case_args(argv, __doc__.split("\n\n")[0], CASES, extra)
    if not DATA.exists():
        print(f"no data at {DATA}: nothing to measure")
        return 0
    rows = []
    for ds, head, ratio in cases:
        rows += run_case(ds, head, ratio, args.n_train, args.max_iter, args.repeat or 3)
    cols = ["dataset", "head", "ratio", "route", "fit_s", "n_iter", "null_relative_gap",
            "whole_block_spectra",
            "fit_speedup", "block_shape", "svd_s", "gram_s", "speedup",
            "max_rel_diff_sigma", "max_rel_residual_uGv"]
    C.table(rows, cols, title="whole-block spectra: compact SVD against Gram eigenvectors")
    C.write_json(args, "block_spectra", {"rows": rows, "n_train": args.n_train,
                                         "max_iter": args.max_iter})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
