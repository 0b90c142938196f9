"""Every head with its default parameters on real tokens: what a new user gets.

Each head is fitted as ``Head(random_state=0, device=...)`` with nothing else set: the
automatic ``alpha`` (a held-out choice of ``alpha_ratio``), ``solver="auto"``, the default
``tol`` and ``max_iter``. Recorded per data set and head: the ratio chosen and the held-out
scores behind it, the seconds of the choice and of the whole fit, the iterations and the
final gaps (relative to the objective and to the intercept-only loss), whether the fit met
its ``tol``, and test accuracy. Beside them, logistic regression on the mean real token and
on the flattened tokens (standardised, best ``C`` of a small grid by 3-fold CV), the
baselines that issue #14's checks name.

Data (``benchmarks/_real_data.py``): ``sst2`` (MiniLM tokens of the SST-2 sentences, 32
tokens, 16 features, padding as NaN rows), ``sst2_384`` (the same sentences re-embedded at
the encoder's 384 features), ``fashion`` (Fashion-MNIST patches), ``digits``.
``--n-train`` takes a stratified subset of the training rows (all rows by default).

Usage::

    python benchmarks/bench_defaults.py --size quick             # 1,500 rows, every head
    python benchmarks/bench_defaults.py --size full --datasets sst2 --heads attention,mixer
    python benchmarks/bench_defaults.py --size full --device cuda --datasets sst2

Writes ``results/defaults_<device>_<size>.json``. A user-level benchmark: at full size,
minutes per head on 2 CPU cores (seconds on a GPU).
"""

from __future__ import annotations

import json
import time
import warnings

import numpy as np

try:
    from . import _common as C
    from . import _real_data as D
except ImportError:  # run as a script
    import _common as C
    import _real_data as D

def _subset(X, y, n, seed=0):
    if n is None or n >= len(y):
        return X, y
    from sklearn.model_selection import train_test_split

    X, _, y, _ = train_test_split(X, y, train_size=n, stratify=y, random_state=seed)
    return X, y


def logistic_baselines(Xtr, ytr, Xte, yte):
    """Test accuracy of logistic regression on the mean real token and on the flattened
    tokens (padding rows as zeros), standardised, ``C`` by 3-fold CV."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def mean_token(X):
        real = ~np.isnan(X[:, :, 0])
        Xz = np.where(np.isnan(X), 0.0, X).astype(np.float64)
        return Xz.sum(1) / np.maximum(real.sum(1), 1)[:, None]

    def flat(X):
        return np.where(np.isnan(X), 0.0, X).reshape(len(X), -1).astype(np.float64)

    out = {}
    for name, f in (("mean_token", mean_token), ("flattened", flat)):
        clf = make_pipeline(StandardScaler(),
                            LogisticRegressionCV(Cs=[0.01, 0.1, 1.0, 10.0], cv=3, max_iter=3000))
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(f(Xtr), ytr)
        out[name] = {"test_accuracy": float(clf.score(f(Xte), yte)),
                     "seconds": time.perf_counter() - t0}
    return out


def default_fit(head, Xtr, ytr, Xte, yte, device, alpha_ratio="auto"):
    from skconvexattn.heads import get_head

    est = get_head(head).estimator(random_state=0, device=device, alpha_ratio=alpha_ratio)
    seconds, caught = C.timed_fit(est, Xtr, ytr)
    h = est.convergence_
    sel = getattr(est, "alpha_selection_", None) or {}
    rel = float(h["relative_gap"][-1])
    scale = est.null_objective_ if est.tol_scale == "null" else abs(est.objective_)
    return {
        "head": head, "device": est.device_, "solver": est.solver_,
        "alpha_ratio": float(est.alpha_ratio_), "alpha": float(est.alpha_),
        "selection_scores": [float(s) for s in sel.get("scores", [])],
        "selection_ratios": [float(r) for r in sel.get("ratios", [])],
        "selection_s": float(sel.get("seconds", 0.0) or 0.0),
        "path_converged": sel.get("path_converged"),
        "started_from_path": sel.get("started_from_path"),
        "fit_s": seconds, "n_iter": int(est.n_iter_),
        "relative_gap": rel, "null_relative_gap": float(h["null_relative_gap"][-1]),
        "met_tol": bool(est.dual_gap_ <= est.tol * scale),
        "precision": sorted(set(h.get("dtype", []))) if "dtype" in h else None,
        "test_accuracy": float(est.score(Xte, yte)),
        "warnings": caught,
    }


SIZES = {
    # tiny: the smoke test (digits, 150 rows, the MLP head); quick: 1,500 training rows
    "tiny": dict(datasets="digits", heads="mlp", n_train=150),
    "quick": dict(datasets="sst2,fashion", heads="attention,mixer,fno,mlp", n_train=1500),
    "full": dict(datasets="sst2,fashion", heads="attention,mixer,fno,mlp", n_train=None),
}


def _extra_args(p):
    p.add_argument("--datasets", default=None,
                   help="comma-separated, among sst2,sst2_384,fashion,digits")
    p.add_argument("--heads", default=None, help="comma-separated heads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-train", type=int, default=None, help="stratified training subset")
    p.add_argument("--no-baselines", action="store_true", help="skip logistic regression")
    p.add_argument("--alpha-ratio", default="auto",
                   help="a fixed alpha_ratio instead of the default held-out choice")
    p.add_argument("--compare", default=None, choices=["path_start"],
                   help="path_start: each head twice in one process, its final fit from zero "
                        "with gates drawn apart from the path's (the rule before) and from "
                        "the path's solution at the chosen ratio (the default)")


def main(argv=None):
    a = C.parse_args(argv, __doc__.splitlines()[0], extra=_extra_args)
    cfg = SIZES[a.size]
    n_train = a.n_train if a.n_train is not None else cfg["n_train"]
    rows = []
    name = f"defaults_{a.device}" + (f"_{a.compare}" if a.compare else "")
    from skconvexattn import _auto_alpha

    modes = {"path_start": ("from zero", "from path")}.get(a.compare, ("",))

    def save():
        return C.write_json(a, name, {"n_train": n_train, "rows": rows})

    for ds in (a.datasets or cfg["datasets"]).split(","):
        try:
            Xtr, ytr, Xte, yte, _ = D.load(ds)
        except D.DataUnavailable as exc:
            print(exc)
            continue
        Xtr, ytr = _subset(Xtr, ytr, n_train)
        base = {"dataset": ds, "n_train": int(len(ytr)), "shape": list(Xtr.shape[1:])}
        if not a.no_baselines:
            for kind, r in logistic_baselines(Xtr, ytr, Xte, yte).items():
                rows.append({**base, "head": f"logistic ({kind})", "fit_s": r["seconds"],
                             "test_accuracy": r["test_accuracy"]})
        for head in (a.heads or cfg["heads"]).split(","):
            ratio = a.alpha_ratio if a.alpha_ratio == "auto" else float(a.alpha_ratio)
            for mode in modes:
                if a.compare == "path_start":
                    _auto_alpha.PATH_START = mode == "from path"
                row = {**base, **default_fit(head, Xtr, ytr, Xte, yte, a.device, ratio)}
                if a.compare:
                    row["mode"] = mode
                    row["final_s"] = row["fit_s"] - row["selection_s"]
                rows.append(row)
                print(json.dumps(rows[-1]), flush=True)
                save()
            _auto_alpha.PATH_START = True
    cols = ["dataset", "n_train", "head", "alpha_ratio", "selection_s", "fit_s", "n_iter",
            "relative_gap", "met_tol", "test_accuracy"]
    if a.compare:
        cols[3:3] = ["mode"]
        cols[6:6] = ["final_s"]
    C.table(rows, cols, title=f"default parameters ({a.device})")
    return save()


if __name__ == "__main__":
    main()
