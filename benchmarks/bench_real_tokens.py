"""Real token data: time to a certified optimum per head and solver, and PyTorch Adam on
the same non-convex network (issue 13, item 5).

Data (``_real_data``): SST-2 MiniLM tokens (16 PCA features), the same sentences
re-embedded at the encoder's full width (384 features), Fashion-MNIST patches, digits.

For every data set x head (self-attention and Mixer with 8 gates; FNO and the token MLP
as baselines) x solver (``fista``; ``factored`` and ``auto`` where the installed heads
offer a ``solver`` parameter):

* alpha: the value a validation split prefers on a grid of ratios of ``alpha_max_``
  (a warm-started path, :func:`skconvexattn.model_selection.regularization_path`, on 75%
  of the training rows, accuracy on the other 25%; ties go to the larger alpha);
* one cold fit at that alpha on the whole training set, run until the duality gap is at
  most both ``1e-3 * objective`` ("relative") and ``1e-4 * null`` ("certified"; ``null``
  is the loss of the intercept-only model, like scikit-learn's Lasso), or ``max_iter``.
  The time and iterations to each criterion are read off ``convergence_`` (every gap
  evaluation, plus the fit's set-up: validation, gates, features, ``alpha_max_``), so one
  fit gives both; test accuracy and the final objective and gap;
* speed as ratios in the same process: ``fista`` time / solver time.

Adam (self-attention and Mixer): the network ``est.to_nonconvex()`` recovers (same gates,
same number of heads, each head on the same gate), re-initialised at random and trained
with PyTorch Adam on the same objective (mean log-loss + ``alpha`` x weight decay, float64)
over a learning-rate grid, full batch and mini-batch. Reported: the time the best run
needs to come within ``1e-3`` (relative) of the certified objective ``f*`` over our time
to certify it, and whether any run goes below ``f* - dual_gap`` (it must not: the gap
bounds the suboptimality of the convex fit, and no network of that shape beats the convex
optimum).

Quick size subsamples the training sets and caps ``max_iter`` (a few minutes on 2 cores,
plus the one-off re-embedding, cached in ``benchmarks/.cache``); full size uses every row.
"""

from __future__ import annotations

import math
import os
import time
import warnings

import numpy as np

try:
    from . import _common as C
    from . import _real_data as D
    from .bench_nonconvex import adam_loop
except ImportError:  # run as a script
    import _common as C
    import _real_data as D
    from bench_nonconvex import adam_loop

NAME = "real_tokens"
SOLVERS = ("fista", "factored", "auto")
ADAM_HEADS = ("attention", "mixer")
REL_TOL = 1e-3  # gap <= REL_TOL * objective
NULL_TOL = 1e-4  # gap <= NULL_TOL * null loss: certified
ADAM_REL = 1e-3  # Adam within this of f*
INIT_SPREAD = 0.1  # standard deviation of Adam's initial logits
ADAM_CHUNK = 256  # samples per forward pass of the torch network (bounds its memory)
SIZES = {
    # n_train / n_test: rows kept (None: all); n_alphas ratios of alpha_max_ from 1 down to
    # eps, each path fit capped at select_iter; max_iter: cap of the timed fit; Adam: the
    # grid, and the per-run time budget: budget_factor x our certified time, at least 2 s
    # and at most budget; per_dataset: overrides for one data set
    "tiny": dict(n_train=60, n_test=100, n_gates=2, n_alphas=3, eps=0.1, select_iter=30,
                 max_iter=60, datasets=("digits", "sst2"), embed=False,
                 adam_datasets=("digits", "sst2"), lrs=(1e-2,), batch_sizes=(None, 32),
                 seeds=(0,), adam_steps=20, budget=1.0, budget_factor=5.0, per_dataset={}),
    "quick": dict(n_train=300, n_test=None, n_gates=8, n_alphas=3, eps=1e-2, select_iter=100,
                  max_iter=400, datasets=("sst2", "sst2_384", "fashion", "digits"), embed=True,
                  adam_datasets=("sst2",), lrs=(1e-3, 1e-2), batch_sizes=(None, 64),
                  seeds=(0,), adam_steps=10**6, budget=10.0, budget_factor=10.0,
                  # 49 tokens (Fashion) and 384 features: today's lifted Mixer features are
                  # 1.8 and 12 MB per sample, recomputed chunk by chunk at 384
                  per_dataset={"fashion": dict(n_train=200, select_iter=50, max_iter=150),
                               "sst2_384": dict(n_train=100, n_alphas=2, select_iter=20,
                                                max_iter=40, heads_left_out={"mixer": (
                                                    "quick size: today's FISTA Mixer recomputes "
                                                    "12 MB of lifted features per sample at 384 "
                                                    "features; at n=100, 8 gates its alpha path "
                                                    "and fit had not ended after 16 min (wall, "
                                                    "2 shared cores)")})}),
    "full": dict(n_train=None, n_test=None, n_gates=8, n_alphas=8, eps=1e-3, select_iter=2000,
                 max_iter=20000, datasets=("sst2", "sst2_384", "fashion", "digits"), embed=True,
                 adam_datasets=("sst2", "sst2_384", "fashion", "digits"),
                 lrs=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2), batch_sizes=(None, 128), seeds=(0, 1),
                 adam_steps=10**7, budget=600.0, budget_factor=10.0, per_dataset={}),
}


# ----------------------------------------------------------------------------- helpers
def _subsample(X, y, n, seed):
    """A stratified subsample of ``n`` rows (all rows when ``n`` is None or too large)."""
    if n is None or n >= X.shape[0]:
        return X, y
    from sklearn.model_selection import train_test_split

    X, _, y, _ = train_test_split(X, y, train_size=n, stratify=y, random_state=seed)
    return X, y


def null_loss(y):
    """Log-loss of the intercept-only model (uniform sample weights): the entropy of the
    class prior."""
    p = np.unique(y, return_counts=True)[1] / y.shape[0]
    return float(-(p * np.log(p)).sum())


def _make(cls, params):
    """The head with the given parameters, those it does not have dropped (so the
    script runs on heads without ``solver``/``tol_scale``)."""
    est = cls()
    have = est.get_params()
    return est.set_params(**{k: v for k, v in params.items() if k in have})


def head_solvers(name, requested):
    """The requested solvers the installed head offers (``fista`` always)."""
    est = C.head_class(name)()
    if "solver" not in est.get_params():
        return [s for s in requested if s == "fista"]
    return list(requested)


def _first_hit(hist, setup, crit):
    """(seconds, iterations) at the first gap evaluation meeting ``crit(f, gap)``."""
    for it, f, g, t in zip(hist["iteration"], hist["objective"], hist["dual_gap"], hist["time"]):
        if crit(f, g):
            return setup + t, int(it)
    return math.inf, None


def _refusal(exc):
    msg = " ".join(str(exc).split())
    return msg if len(msg) <= 400 else msg[:397] + "..."


def _mean_token_reference(Xtr, ytr, Xte, yte):
    """Test accuracy of logistic regression on the mean (non-padding) token."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def mean_tok(X):
        keep = ~np.all(np.isnan(X) | (X == 0), axis=2)  # real tokens
        Xz = np.where(np.isnan(X), 0.0, X).astype(np.float64)
        return (Xz * keep[..., None]).sum(1) / np.maximum(keep.sum(1), 1)[:, None]

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(clf.fit(mean_tok(Xtr), ytr).score(mean_tok(Xte), yte))


# ----------------------------------------------------------------------------- alpha
def select_alpha(name, base, X, y, cfg, seed=0):
    """The alpha a validation split prefers on ``n_alphas`` ratios of ``alpha_max_``."""
    from sklearn.base import clone
    from sklearn.model_selection import train_test_split

    from skconvexattn.model_selection import alpha_grid, regularization_path

    Xa, Xv, ya, yv = train_test_split(X, y, test_size=0.25, stratify=y, random_state=seed)
    est = _make(C.head_class(name), {**base, "tol": 1e-3, "max_iter": cfg["select_iter"]})
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # alpha_max_ is computed before the solver runs: one iteration is enough
        amax = float(clone(est).set_params(alpha=1e300, max_iter=1).fit(Xa, ya).alpha_max_)
        alphas = alpha_grid(amax, cfg["n_alphas"] + 1, cfg["eps"])[1:]  # alpha_max_: zero model
        path = regularization_path(
            est, Xa, ya, alphas=alphas, scorer=lambda e, Xs, ys: e.score(Xs, ys),
            X_test=Xv, y_test=yv,
        )
    seconds = time.perf_counter() - t0
    alphas, scores = path["alphas"], np.asarray(path["scores"])
    k = int(np.argmax(scores))  # first maximum: the largest alpha among ties
    return {
        "alpha": float(alphas[k]), "ratio": float(alphas[k] / amax), "alpha_max": amax,
        "grid_ratios": alphas / amax, "val_accuracy": scores, "objective": path["objective"],
        "n_iter": path["n_iter"], "seconds": seconds, "method": "validation split 75/25",
        "objective_at_alpha": float(path["objective"][k]),
    }


# ----------------------------------------------------------------------------- one fit
def timed_fit(name, base, solver, X, y, Xte, yte, alpha, null, f_est, max_iter):
    """One cold fit at ``alpha`` until both criteria hold; times to each from its history."""
    gap_target = 0.5 * min(REL_TOL * f_est, NULL_TOL * null)  # margin: f_est is an estimate
    est = C.head_class(name)()
    if "tol_scale" in est.get_params():
        scale = {"tol_scale": "null", "tol": gap_target / null}
    else:
        scale = {"tol": gap_target / f_est}
    params = {**base, **scale, "alpha": alpha, "max_iter": max_iter, "solver": solver}
    est = _make(C.head_class(name), params)
    row = {"solver": solver, "tol": params["tol"],
           "tol_scale": params.get("tol_scale", "objective")}
    if solver != "fista" and "solver" not in est.get_params():
        row["skipped"] = "the installed head has no solver parameter"
        return row, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            est.fit(X, y)
            total = time.perf_counter() - t0
    except (ValueError, MemoryError) as exc:
        row["refused"] = _refusal(exc)
        return row, None
    h = est.convergence_
    setup = total - (h["time"][-1] if h["time"] else 0.0)
    null_fit = float(getattr(est, "null_objective_", null))
    t_rel, it_rel = _first_hit(h, setup, lambda f, g: g <= REL_TOL * f)
    t_cert, it_cert = _first_hit(h, setup, lambda f, g: g <= NULL_TOL * null_fit)
    row.update({
        "fit_s": total, "setup_s": setup, "n_iter": int(est.n_iter_),
        "time_rel_1e-3": t_rel, "iter_rel_1e-3": it_rel,
        "time_cert_1e-4null": t_cert, "iter_cert_1e-4null": it_cert,
        "certified": bool(est.dual_gap_ <= NULL_TOL * null_fit),
        "objective": float(est.objective_), "dual_gap": float(est.dual_gap_),
        "rel_gap": float(est.dual_gap_ / abs(est.objective_)),
        "gap_over_null": float(est.dual_gap_ / null_fit), "null_loss": null_fit,
        "null_from": "null_objective_" if hasattr(est, "null_objective_") else "class prior",
        "train_accuracy": float(est.score(X, y)), "test_accuracy": float(est.score(Xte, yte)),
        "solver_used": getattr(est, "solver_", solver),
        "memory_plan": getattr(est, "memory_plan_", None),
        "n_heads": int(est.to_nonconvex().n_heads),
    })
    return row, est


# ----------------------------------------------------------------------------- Adam
def _torch_inputs(torch, est, X, y):
    # NaN padding rows stay NaN: the recovered network handles them as the head does (when
    # it does not, its objective differs from ``objective_`` and Adam is skipped)
    Xt = torch.from_numpy(np.asarray(X, dtype=np.float64))
    yt = torch.from_numpy(np.searchsorted(est.classes_, y))
    return Xt, yt


def adam_compare(torch, est, X, y, cfg, t_ours, seed_base=0):
    """Adam on the recovered network's architecture from random starts (see module doc)."""
    f_star, gap = float(est.objective_), float(est.dual_gap_)
    module = est.to_nonconvex().to_torch()
    Xt, yt = _torch_inputs(torch, est, X, y)
    n = Xt.shape[0]
    alpha = float(est.alpha)
    ce = torch.nn.functional.cross_entropy

    # the network's activations grow like n * heads * s**2 (attention maps): the full-data
    # loss and its gradient are summed over chunks of ADAM_CHUNK samples, which is the same
    # full-batch step with bounded memory (a full-data forward of 256 heads on 6,920
    # sentences of 32 tokens needs tens of GB)
    def data_loss(rows, backward):
        total = 0.0
        for i in range(0, rows.shape[0], ADAM_CHUNK):
            r = rows[i:i + ADAM_CHUNK]
            part = ce(module(Xt[r]), yt[r], reduction="sum") / rows.shape[0]
            if backward:
                part.backward()
            total += float(part.detach())
        return total

    def objective(idx=None, backward=False):
        """The (mini-batch) objective; with ``backward`` its gradient is accumulated into
        the parameters and a float returned."""
        rows = torch.arange(n) if idx is None else idx
        value = data_loss(rows, backward)
        decay = alpha * module.weight_decay()
        if backward:
            decay.backward()
        return value + float(decay.detach())

    with torch.no_grad():
        f_rec = float(objective())
    out = {"f_star": f_star, "dual_gap": gap, "f_recovered_network": f_rec,
           "recovered_matches": abs(f_rec - f_star) <= 1e-6 * max(abs(f_star), 1e-12),
           "n_heads": int(module.W1.shape[0]), "alpha": alpha}
    if not out["recovered_matches"] or out["n_heads"] == 0:
        out["skipped"] = ("the recovered network's objective differs from objective_ (padding "
                          "semantics?)" if out["n_heads"] else "the fit has no heads (zero model)")
        return out
    shapes = (module.W1.shape, module.W2.shape)
    budget = min(max(cfg["budget_factor"] * t_ours, 2.0), cfg["budget"])
    runs = []
    for lr in cfg["lrs"]:
        for batch in cfg["batch_sizes"]:
            for seed in cfg["seeds"]:
                g = torch.Generator().manual_seed(seed_base + seed)
                with torch.no_grad():
                    W1 = torch.randn(shapes[0], generator=g, dtype=torch.float64)
                    W2 = torch.randn(shapes[1], generator=g, dtype=torch.float64)
                    module.W1.copy_(W1)
                    module.W2.copy_(W2)
                    module.intercept.zero_()
                    # balanced heads (||W_1j|| = ||W_2j||, the least weight decay for the
                    # same function), scaled so the initial logits spread by INIT_SPREAD:
                    # Adam starts near the intercept-only model, as the convex solver does
                    r = (W2.flatten(1).norm(dim=1) / W1.flatten(1).norm(dim=1)).sqrt()
                    module.W1.mul_(r.reshape((-1,) + (1,) * (W1.ndim - 1)))
                    module.W2.div_(r.reshape((-1,) + (1,) * (W2.ndim - 1)))
                    spread = float(module(Xt[: min(n, 512)]).std())
                    if spread > 0 and math.isfinite(spread):
                        k = math.sqrt(INIT_SPREAD / spread)  # logits are bilinear in W1, W2
                        module.W1.mul_(k)
                        module.W2.mul_(k)
                params = [module.W1, module.W2, module.intercept]
                if batch is None or batch >= n:
                    loss, obj, every = (lambda k: objective(backward=True)), None, 1
                else:
                    perm = torch.randperm(n, generator=g)
                    per_epoch = math.ceil(n / batch)

                    def loss(k, perm=perm, per_epoch=per_epoch, batch=batch):
                        j = k % per_epoch
                        if j == 0 and k:
                            perm.copy_(torch.randperm(n, generator=g))
                        return objective(perm[j * batch:(j + 1) * batch], backward=True)

                    obj, every = objective, per_epoch
                ht, hf = adam_loop(torch, params, loss, lr, cfg["adam_steps"], budget, obj, every)
                rec = {"lr": lr, "batch": batch or "full", "seed": seed, "records": len(ht),
                       "time": float(ht[-1]) if ht.size else 0.0,
                       "best_objective": float(hf[-1]) if hf.size else math.inf}
                rec["rel_excess"] = (rec["best_objective"] - f_star) / abs(f_star)
                hit = np.flatnonzero(hf <= f_star * (1 + ADAM_REL))
                rec["time_to_rel"] = float(ht[hit[0]]) if hit.size else math.inf
                runs.append(rec)
    t_adam = min(r["time_to_rel"] for r in runs)
    best = min(runs, key=lambda r: r["best_objective"])
    out.update({
        "time_budget_s": budget, "runs": runs, "adam_best_time_to_rel": t_adam,
        "adam_runs_reaching": sum(math.isfinite(r["time_to_rel"]) for r in runs),
        "ours_certified_s": t_ours,
        # Adam's time over ours; when no run got there, its budget over our time is a lower
        # bound (only meaningful when the budget was at least our time)
        "speedup_vs_best_adam": C.ratio(t_adam, t_ours) if math.isfinite(t_adam) else math.nan,
        "speedup_at_least": (budget / t_ours if not math.isfinite(t_adam) and budget >= t_ours
                             else None),
        "adam_best_objective": best["best_objective"], "adam_best_rel_excess": best["rel_excess"],
        "adam_below_certified_bound": any(r["best_objective"] < f_star - gap - 1e-12 * abs(f_star)
                                          for r in runs),
    })
    return out


# ----------------------------------------------------------------------------- main
def _extra_args(p):
    p.add_argument("--datasets", default=None,
                   help=f"comma-separated, among {','.join(D.DATASETS)}")
    p.add_argument("--solvers", default=None, help="comma-separated, among fista,factored,auto")
    p.add_argument("--data-dir", default=None, help="real data folder (default ../shared/data)")
    p.add_argument("--no-adam", action="store_true", help="skip the Adam comparison")


def _load(name, cfg, args, seed=0):
    if name == "sst2_384" and not cfg["embed"]:
        D._need(D.data_dir(args.data_dir) / D.SST2_FILE)  # absent data: that message first
        cache = D.CACHE / "sst2_minilm_s32_d384.npz"
        if not cache.is_file():
            raise D.DataUnavailable(f"{cache} is not cached yet and --size {args.size} does not "
                                    "embed (run --size quick once)")
    Xtr, ytr, Xte, yte, extra = D.load(name, args.data_dir)
    n_full = (Xtr.shape[0], Xte.shape[0])
    Xtr, ytr = _subsample(Xtr, ytr, cfg["n_train"], seed)
    Xte, yte = _subsample(Xte, yte, cfg["n_test"], seed)
    info = {k: v for k, v in extra.items() if not isinstance(v, np.ndarray)}
    info.update(n_train=Xtr.shape[0], n_test=Xte.shape[0], n_train_full=n_full[0],
                n_test_full=n_full[1], shape=Xtr.shape[1:], n_classes=int(np.unique(ytr).size),
                dtype=str(Xtr.dtype), null_loss=null_loss(ytr))
    return Xtr, ytr, Xte, yte, info


def main(argv=None):
    args = C.parse_args(argv, __doc__.splitlines()[0], extra=_extra_args, heads=True)
    cfg = SIZES[args.size]
    datasets = args.datasets.split(",") if args.datasets else list(cfg["datasets"])
    solvers = args.solvers.split(",") if args.solvers else list(SOLVERS)
    for s in solvers:
        if s not in SOLVERS:
            raise SystemExit(f"--solvers: unknown solver {s!r}; choose among {','.join(SOLVERS)}")
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or None
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
    except ImportError:
        torch = None
    nan_ok = D.nan_padding_supported()
    results, rows, adam_rows, skipped = {}, [], [], {}

    def payload(complete):
        return {"complete": complete, "config": cfg, "datasets": datasets, "solvers": solvers,
                "heads": args.heads, "nan_padding_supported": nan_ok, "criteria": {
                    "relative": f"dual_gap <= {REL_TOL:g} * objective",
                    "certified": f"dual_gap <= {NULL_TOL:g} * null loss (intercept-only model)",
                    "adam": f"objective <= f* (1 + {ADAM_REL:g})"},
                "skipped": skipped, "results": results, "table": rows, "adam_table": adam_rows}

    for ds in datasets:
        dcfg = {**cfg, **cfg["per_dataset"].get(ds, {})}
        try:
            t0 = time.perf_counter()
            Xtr, ytr, Xte, yte, info = _load(ds, dcfg, args)
            info["load_s"] = time.perf_counter() - t0
        except D.DataUnavailable as exc:
            print(f"[{ds}] skipped: {exc}")
            skipped[ds] = str(exc)
            continue
        info["reference_logreg_mean_token"] = _mean_token_reference(Xtr, ytr, Xte, yte)
        entry = {"data": info, "heads": {}}
        null = info["null_loss"]
        for head in args.heads:
            if head in dcfg.get("heads_left_out", {}):
                entry["heads"][head] = {"left_out": dcfg["heads_left_out"][head]}
                rows.append({"data": ds, "head": head, "solver": "-", "note": "left out (size)"})
                print(f"[{ds}/{head}] left out: {dcfg['heads_left_out'][head]}", flush=True)
                continue
            base = {"n_gates": dcfg["n_gates"], "random_state": 0, "device": "cpu"}
            hres = {"solvers": {}}
            try:
                sel = select_alpha(head, {**base, "solver": "auto"}, Xtr, ytr, dcfg)
            except (ValueError, MemoryError) as exc:
                hres["refused"] = _refusal(exc)
                entry["heads"][head] = hres
                note = "refused (memory)" if "memory" in hres["refused"] else "refused"
                rows.append({"data": ds, "head": head, "solver": "-", "note": note})
                print(f"[{ds}/{head}] refused: {hres['refused']}", flush=True)
                continue
            hres["alpha_selection"] = sel
            ests = {}
            for solver in head_solvers(head, solvers):
                r, est = timed_fit(head, base, solver, Xtr, ytr, Xte, yte, sel["alpha"], null,
                                   max(sel["objective_at_alpha"], 1e-12), dcfg["max_iter"])
                hres["solvers"][solver] = r
                if est is not None:
                    ests[solver] = est
                print(f"[{ds}/{head}/{solver}] " + ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                    if k in ("fit_s", "time_cert_1e-4null", "iter_cert_1e-4null", "test_accuracy",
                             "refused", "skipped", "rel_gap")), flush=True)
            ref = hres["solvers"].get("fista", {})
            for solver, r in hres["solvers"].items():
                if "fit_s" in r and "fit_s" in ref:
                    r["speedup_vs_fista_cert"] = C.ratio(ref["time_cert_1e-4null"],
                                                         r["time_cert_1e-4null"])
                    r["speedup_vs_fista_rel"] = C.ratio(ref["time_rel_1e-3"], r["time_rel_1e-3"])
                rows.append({"data": ds, "head": head, "solver": solver, "alpha/amax": sel["ratio"],
                             **{k: r.get(k, "") for k in ("time_rel_1e-3", "iter_rel_1e-3",
                                                          "time_cert_1e-4null", "iter_cert_1e-4null",
                                                          "test_accuracy", "objective", "rel_gap",
                                                          "speedup_vs_fista_cert")},
                             "note": ("refused" if "refused" in r else r.get("skipped", ""))[:40]})
            # Adam against the fastest certified fit of this head (else the one with the
            # smallest gap: f - gap is a lower bound on the optimum all the same)
            if head in ADAM_HEADS and ds in dcfg["adam_datasets"] and not args.no_adam:
                if torch is None or not ests:
                    hres["adam"] = {"skipped": "torch not installed" if torch is None else "no fit"}
                else:
                    fits = {s: hres["solvers"][s] for s in ests}
                    s_best = min(fits, key=lambda s: (not fits[s]["certified"],
                                                      fits[s]["time_cert_1e-4null"], fits[s]["dual_gap"]))
                    a = adam_compare(torch, ests[s_best], Xtr, ytr, dcfg,
                                     fits[s_best]["time_cert_1e-4null"])
                    a.update(against_solver=s_best, ours_certified=fits[s_best]["certified"])
                    hres["adam"] = a
                    adam_rows.append({"data": ds, "head": head, "ours": s_best,
                                      "certified": a["ours_certified"],
                                      "ours_cert_s": a.get("ours_certified_s", ""),
                                      "adam_best_s": a.get("adam_best_time_to_rel", ""),
                                      "reaching": a.get("adam_runs_reaching", ""),
                                      "speedup": a.get("speedup_vs_best_adam", ""),
                                      "speedup_at_least": a.get("speedup_at_least", ""),
                                      "budget_s": a.get("time_budget_s", ""),
                                      "adam_excess": a.get("adam_best_rel_excess", ""),
                                      "below_bound": a.get("adam_below_certified_bound", ""),
                                      "heads": a["n_heads"], "note": a.get("skipped", "")[:40]})
            entry["heads"][head] = hres
        results[ds] = entry
        if len(results) < len(datasets):  # long runs: keep what is done so far
            C.write_json(args, NAME, payload(complete=False))
    cols = ["data", "head", "solver", "alpha/amax", "time_rel_1e-3", "iter_rel_1e-3",
            "time_cert_1e-4null", "iter_cert_1e-4null", "test_accuracy", "objective", "rel_gap",
            "speedup_vs_fista_cert", "note"]
    C.table(rows, cols, title=f"real tokens ({args.size}): seconds and iterations to gap <= 1e-3 x "
                              "objective and to gap <= 1e-4 x null loss")
    if adam_rows:
        C.table(adam_rows, ["data", "head", "ours", "certified", "ours_cert_s", "adam_best_s",
                            "reaching", "budget_s", "speedup_at_least",
                            "speedup", "adam_excess", "below_bound", "heads", "note"],
                title=f"vs Adam (time to within {ADAM_REL:g} of the certified objective)")
    for ds, msg in skipped.items():
        print(f"skipped {ds}: {msg}")
    return C.write_json(args, NAME, payload(complete=True))


if __name__ == "__main__":
    main()
