"""What ``alpha_ratio="auto"`` should rank its path by: held-out accuracy or held-out loss.

For each data set and head, the path of ``alpha_ratio="auto"`` is replayed: the same
stratified 80/20 split of the training rows (drawn from ``random_state=0``), the same
warm-started fits (``tol=1e-3``, at most 1,000 iterations, optionally ``--max-time``
seconds each) at ratios ``0.3 ... 0.001``. Each path fit records its held-out accuracy,
its held-out log-loss and its accuracy on the test set. The table says which ratio each
criterion would pick (accuracy: the largest within half a standard error of the best, the
previous rule; loss: the smallest held-out log-loss) and the test accuracy behind it.

Data: ``sst2`` and ``fashion`` through ``tune_alpha_ratio.load`` (``--n-train`` stratified
training rows, default 1,500). Writes ``results/auto_criterion_<size>.json``.

Usage::

    python benchmarks/bench_auto_criterion.py --datasets fashion --heads mlp,fno
    python benchmarks/bench_auto_criterion.py --datasets fashion --heads mixer --max-time 150
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np

try:
    from . import _common as C
    from .tune_alpha_ratio import DATA, load
except ImportError:  # run as a script
    import _common as C
    from tune_alpha_ratio import DATA, load

RATIOS = (0.3, 0.1, 0.03, 0.01, 0.003, 0.001)


def replay_path(ds, head, n_train, max_time=None):
    """The rows of one replayed path (see the module docstring)."""
    from sklearn.metrics import log_loss
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state

    from skconvexattn.heads import get_head

    Xtr, ytr, Xte, yte = load(ds, n_train)
    seed = check_random_state(0).randint(np.iinfo(np.int32).max)
    tr, va = train_test_split(np.arange(len(ytr)), test_size=0.2, stratify=ytr,
                              random_state=seed)
    tr.sort()
    va.sort()
    probe = get_head(head).estimator(random_state=0, warm_start=True, tol=1e-3,
                                     max_iter=1000, max_time=max_time)
    rows = []
    for r in RATIOS:
        probe.set_params(alpha_ratio=r)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe.fit(Xtr[tr], ytr[tr])
        rows.append({
            "dataset": ds, "head": head, "ratio": r,
            "held_out_accuracy": float(probe.score(Xtr[va], ytr[va])),
            "held_out_log_loss": float(log_loss(ytr[va], probe.predict_proba(Xtr[va]),
                                                labels=probe.classes_)),
            "test_accuracy": float(probe.score(Xte, yte)),
            "seconds": time.perf_counter() - t0,
        })
    return rows, len(va)


def picks(rows, n_val):
    """The ratio each criterion picks, and its test accuracy."""
    acc = np.array([r["held_out_accuracy"] for r in rows])
    top = acc.max()
    thr = top - 0.5 * math.sqrt(top * (1 - top) / n_val)
    by_acc = rows[int(np.argmax(acc >= thr))]
    by_loss = rows[int(np.argmin([r["held_out_log_loss"] for r in rows]))]
    best = max(rows, key=lambda r: r["test_accuracy"])
    return {
        "dataset": rows[0]["dataset"], "head": rows[0]["head"],
        "accuracy_rule": by_acc["ratio"], "accuracy_rule_test": by_acc["test_accuracy"],
        "loss_rule": by_loss["ratio"], "loss_rule_test": by_loss["test_accuracy"],
        "best_ratio": best["ratio"], "best_test": best["test_accuracy"],
    }


def main(argv=None):
    def extra(p):
        p.add_argument("--datasets", default="sst2,fashion")
        p.add_argument("--n-train", type=int, default=1500)
        p.add_argument("--max-time", type=float, default=None,
                       help="seconds per path fit (the slow heads)")

    args = C.parse_args(argv, __doc__.split("\n\n")[0], extra, heads=True)
    if not DATA.exists():
        print(f"no data at {DATA}: nothing to measure")
        return 0
    rows, summary = [], []
    for ds in args.datasets.split(","):
        for head in args.heads:
            path, n_val = replay_path(ds, head, args.n_train, args.max_time)
            rows += path
            summary.append(picks(path, n_val))
            C.table(path, ["ratio", "held_out_accuracy", "held_out_log_loss",
                           "test_accuracy", "seconds"], title=f"{ds} {head}")
    C.table(summary, ["dataset", "head", "accuracy_rule", "accuracy_rule_test", "loss_rule",
                      "loss_rule_test", "best_ratio", "best_test"], title="picks")
    C.write_json(args, "auto_criterion", {"rows": rows, "picks": summary,
                                          "n_train": args.n_train, "max_time": args.max_time})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
