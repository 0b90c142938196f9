"""(f) GPU at paper scale: n=50,000 samples, s=196 tokens, d=32 features, c=100 classes,
8 gates; time to a relative duality gap of 1e-4 with ``device='cuda'``.

Each head is fitted with float32 token features on the GPU (CuPy), the lifted features
materialised or chunked by ``memory_budget`` (default here: 80% of the free GPU memory).
Recorded per head: fit time, iterations, the final relative gap, the memory plan, and the
time per iteration. Heads whose lifted features are out of reach at this scale (the
MLP-Mixer's ``s**2 d`` = 1.2 M features per gate and sample) are run at the largest ``s``
that fits, which is recorded.

Without a GPU the script records ``"no GPU"`` in its JSON and exits: it must not run at
this size on a CPU. ``--size tiny`` (for the smoke test) runs a tiny problem, on the CPU
when no GPU is present.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

try:
    from . import _common as C
except ImportError:  # run as a script
    import _common as C

NAME = "gpu"
PAPER = dict(n=50000, s=196, d=32, c=100, n_gates=8, tol=1e-4)
SIZES = {
    "tiny": dict(n=60, s=4, d=3, c=3, n_gates=2, tol=1e-4),
    "quick": PAPER,
    "full": PAPER,
}
MIXER_MAX_S = 49  # token grid 7x7: 49**2 * 32 = 77k lifted features per gate and sample


def gpu_info():
    try:
        import cupy

        if not cupy.cuda.is_available():
            return None
        dev = cupy.cuda.Device()
        free, total = dev.mem_info
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        return {"name": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
                "free_GiB": free / 2**30, "total_GiB": total / 2**30,
                "cupy": cupy.__version__}
    except Exception:
        return None


def data(n, s, d, c, seed=0):
    """Random class-conditional tokens (float32): a cheap stand-in for ViT patch embeddings
    after a token PCA (the timing depends on the sizes, the labels only on the path)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, size=n)
    centers = rng.standard_normal((c, d)).astype(np.float32)
    X = rng.standard_normal((n, s, d), dtype=np.float32)
    X += 0.5 * centers[y][:, None, :] * (rng.random((n, s, 1)) < 0.3)
    return X, y


def main(argv=None):
    args = C.parse_args(argv, __doc__.splitlines()[0], heads=True)
    cfg = SIZES[args.size]
    info = gpu_info()
    if info is None and args.size != "tiny":
        print("no GPU: CuPy is not installed or sees no CUDA device -- nothing run")
        return C.write_json(args, NAME, {"status": "no GPU", "config": cfg})
    device = "cuda" if info is not None else "cpu"
    heads = args.heads
    budget = 0.8 * info["free_GiB"] if info is not None else 2.0
    rows = []
    for head in heads:
        cls = C.head_class(head)
        s = cfg["s"] if head != "mixer" or args.size == "tiny" else MIXER_MAX_S
        X, y = data(cfg["n"], s, cfg["d"], cfg["c"])
        kw = dict(n_gates=cfg["n_gates"], random_state=0, device=device, memory_budget=budget,
                  tol=cfg["tol"], max_iter=5000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                amax = cls(alpha=1e30, **kw).fit(X, y).alpha_max_
                t0 = time.perf_counter()
                est = cls(alpha=0.05 * amax, **kw).fit(X, y)
                t = time.perf_counter() - t0
            except (ValueError, MemoryError) as exc:  # refused by the memory planner
                rows.append({"head": head, "s": s, "status": f"refused: {exc}"[:300]})
                continue
        rows.append({"head": head, "n": cfg["n"], "s": s, "d": cfg["d"], "c": cfg["c"],
                     "n_gates": cfg["n_gates"], "device": est.device_, "time_s": t,
                     "n_iter": est.n_iter_, "rel_gap": est.dual_gap_ / abs(est.objective_),
                     "time_per_iter_s": t / max(est.n_iter_, 1), "memory_plan": est.memory_plan_,
                     "status": "ok"})
    C.table(rows, ["head", "s", "device", "time_s", "n_iter", "rel_gap", "time_per_iter_s", "memory_plan", "status"],
            title=f"GPU at paper scale ({info['name'] if info else 'no GPU: tiny CPU run'})")
    return C.write_json(args, NAME, {"status": "ok" if info else "no GPU (tiny CPU run)",
                                     "gpu": info, "config": cfg, "rows": rows})


if __name__ == "__main__":
    main()
