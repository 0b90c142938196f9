"""One fit across a Dask cluster: time per solver iteration against the in-memory fit.

The same data (self-attention head, FISTA, materialised features per chunk) is fitted

* in memory (NumPy),
* on a ``distributed.LocalCluster`` of 1 worker process and of 2 worker processes (one
  thread each), from a Dask array of ``n_chunks`` chunks persisted on the workers.

Time per iteration is ``(T(k2) - T(k1)) / (k2 - k1)`` for two fits with ``tol=0`` stopped
after ``k1`` and ``k2`` iterations (validation, persisting, features, ``alpha_max`` cancel
out). On each cluster the JSON also records the *per-pass* times: one forward product
(``Phi Z``, logits gathered), one adjoint product (``Phi^T U``, parts summed), and a null
pass (the same tasks doing nothing: the scheduling and round-trip latency ``L(k)`` of
``k`` workers), and the passes per iteration the solver made.

Projection. With ``p`` passes per iteration, the compute of one pass over all the data
``C`` (a 1-worker pass minus its latency) and the latency modelled as ``L(k) = a + b k``
from the 1- and 2-worker null passes, an iteration on ``k`` workers costs about
``p (a + b k + C / k)`` plus the client's ``n x c`` work; the JSON and the table give it
for 10 and 100 workers. It assumes the chunks spread evenly, one thread per worker, and
latency growing linearly with the number of tasks per pass (one per worker), which is
what one scheduler does; it ignores the network (the workers here share one machine).
"""

from __future__ import annotations

import time
import warnings

import numpy as np

try:
    from . import _common as C
except ImportError:  # run as a script
    import _common as C

NAME = "dask"
SIZES = {  # n, s, d, n_gates, n_chunks, (k1, k2)
    "tiny": (400, 6, 3, 2, 4, (3, 20)),
    "quick": (8000, 16, 6, 4, 8, (10, 40)),
    "full": (40000, 16, 8, 4, 16, (10, 60)),
}


def _per_iteration(fit, k1, k2, repeat):
    """Median over repeats of ``(T(k2) - T(k1)) / (k2 - k1)``; and the k2 fit."""
    vals, est = [], None
    fit(k1)  # warm-up (imports, caches, connections)
    for _ in range(max(1, repeat)):
        t1, _ = C.timed(lambda: fit(k1), repeat=1)
        t2, est = C.timed(lambda: fit(k2), repeat=1)
        vals.append(max(t2 - t1, 0.0) / (k2 - k1))
    return float(np.median(vals)), est


def _pass_times(st, repeat=7):
    """Median forward, adjoint and null-pass times of a Dask operator."""
    from skconvexattn import _dask

    op = st.op
    P, R, L = op.block_shape
    c = st.Y.shape[1]
    Z = np.random.default_rng(0).standard_normal((P, R, L * c)).astype(st.dtype)
    U = st.w[:, None] * np.ones_like(st.Y)

    def null():
        op.runner.gather(op._run(_dask._st_plan, "list"))

    out = {}
    for name, fn in (("forward", lambda: op.forward(Z)), ("adjoint", lambda: op.adjoint(U)),
                     ("null", null)):
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name + "_s"] = float(np.median(times))
    return out


def main(argv=None):
    args = C.parse_args(argv, __doc__.splitlines()[0])
    n, s, d, P, n_chunks, (k1, k2) = SIZES[args.size]
    repeat = args.repeat or (1 if args.size == "tiny" else 3)
    import dask
    import dask.array as da
    from distributed import Client, LocalCluster

    from skconvexattn import ConvexSelfAttentionClassifier

    X, y = C.make_data(n, s, d, 2, seed=0)
    X = X.astype(np.float64)
    base = dict(n_gates=P, alpha_ratio=0.1, tol=0.0, random_state=0, solver="fista",
                device="cpu")

    def make_fit(data):
        def fit(k):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return ConvexSelfAttentionClassifier(**base, max_iter=k).fit(data, y)
        return fit

    rows = []
    mem_it, est = _per_iteration(make_fit(X), k1, k2, repeat)
    rows.append({"run": "in memory", "workers": 0, "iteration_s": mem_it, "ratio": 1.0})
    results = {"in_memory": {"iteration_s": mem_it, "plan": est.memory_plan_}}
    clusters = {}
    with dask.config.set({"distributed.admin.low-level-log-length": 0}):
        for k in (1, 2):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cluster = LocalCluster(n_workers=k, processes=True, threads_per_worker=1,
                                       dashboard_address=":0")
            client = Client(cluster)
            try:
                Xd = client.persist(da.from_array(X, chunks=(-(-n // n_chunks), -1, -1)))
                it, est = _per_iteration(make_fit(Xd), k1, k2, repeat)
                st = ConvexSelfAttentionClassifier(**base)._setup(Xd, y, None, reset=True)
                from skconvexattn._solver import fista

                counts = []
                for kk in (k1, k2):  # passes per iteration, set-up excluded
                    n0 = st.op.n_passes
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        fista(st.op, st.datafit, st.Y, st.w, 0.1 * st.alpha_max,
                              max_iter=kk, tol=0.0, grad_at_zero=st.grad_at_zero, warn=False)
                    counts.append(st.op.n_passes - n0)
                passes = (counts[1] - counts[0]) / (k2 - k1)
                times = _pass_times(st, repeat=3 if args.size == "tiny" else 9)
                clusters[k] = dict(iteration_s=it, passes_per_iteration=passes,
                                   plan=est.memory_plan_, **times)
                rows.append({"run": f"LocalCluster {k} worker{'s' * (k > 1)}", "workers": k,
                             "iteration_s": it, "ratio": it / max(mem_it, 1e-12),
                             "forward_s": times["forward_s"], "adjoint_s": times["adjoint_s"],
                             "null_s": times["null_s"], "passes": passes})
                del st, Xd
            finally:
                client.close()
                cluster.close()
    # projection from the measured per-pass costs
    L1, L2 = clusters[1]["null_s"], clusters[2]["null_s"]
    b = max(L2 - L1, 0.0)
    a = max(L1 - b, 0.0)
    pass1 = 0.5 * (clusters[1]["forward_s"] + clusters[1]["adjoint_s"])
    compute = max(pass1 - L1, 0.0)
    p = clusters[2]["passes_per_iteration"]
    projection = {}
    for k in (10, 100):
        latency = a + b * k
        projection[k] = {
            "iteration_s": p * (latency + compute / k),
            "latency_share": latency / (latency + compute / k),
        }
        rows.append({"run": f"projected {k} workers", "workers": k,
                     "iteration_s": projection[k]["iteration_s"],
                     "ratio": projection[k]["iteration_s"] / max(mem_it, 1e-12)})
    C.table(rows, ["run", "workers", "iteration_s", "ratio", "forward_s", "adjoint_s",
                   "null_s", "passes"],
            title=f"self-attention FISTA, n={n} s={s} d={d} gates={P}, {n_chunks} chunks")
    note = (
        f"per pass: latency L(k) = {a * 1e3:.1f} ms + {b * 1e3:.2f} ms x k, compute "
        f"{compute * 1e3:.1f} ms for all the data on one worker, {p:.2f} passes per "
        f"iteration; at 10 workers latency is {100 * projection[10]['latency_share']:.0f}% "
        f"of a pass, at 100 workers {100 * projection[100]['latency_share']:.0f}%"
    )
    print(note)
    return C.write_json(args, NAME, {
        "data": {"n": n, "s": s, "d": d, "n_gates": P, "n_chunks": n_chunks,
                 "bytes": int(X.nbytes), "iterations": [k1, k2]},
        "results": {"in_memory": results["in_memory"], "local_cluster": clusters},
        "model": {"latency_a_s": a, "latency_b_s_per_worker": b, "compute_per_pass_s": compute,
                  "passes_per_iteration": p},
        "projection": projection,
        "note": note,
    })


if __name__ == "__main__":
    main()
