"""``skconvexattn demo``: every registered head and a linear baseline on the digit tokens."""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np

from .io import CommandError

__all__ = ["demo", "cmd_demo"]


def _heads(alpha, n_gates, random_state, max_iter, tol, alpha_ratio=None):
    """(row name, estimator) pairs for the demo table: every registered head, with each
    of its demo activations."""
    from ..heads import registered_heads

    # the table reports the gap relative to the objective: the fits stop on that scale
    common = dict(random_state=random_state, max_iter=max_iter, tol=tol,
                  tol_scale="objective")
    if alpha_ratio is not None:
        common["alpha_ratio"] = alpha_ratio
    rows = []
    for spec in registered_heads():
        for activation in spec.demo_activations:
            if activation == "linear":
                name = f"{spec.label} (linear)"
                est = spec.estimator(alpha=alpha, activation="linear", **common)
            else:
                name = f"{spec.label} (gated, {n_gates} gates)"
                est = spec.estimator(alpha=alpha, n_gates=n_gates, **common)
            rows.append((name, est))
    return rows


class _MeanTokenLogistic:
    """Baseline: logistic regression on the mean token (what pooling alone sees)."""

    def __init__(self):
        from sklearn.linear_model import LogisticRegression

        self.clf = LogisticRegression(max_iter=2000)

    def fit(self, X, y):
        self.clf.fit(X.mean(axis=1), y)
        self.n_iter_ = int(np.max(self.clf.n_iter_))
        return self

    def score(self, X, y):
        return self.clf.score(X.mean(axis=1), y)


def demo(
    alpha=None,
    n_gates=4,
    tol=1e-2,
    max_iter=3000,
    test_size=0.3,
    random_state=0,
    figure=None,
    out=sys.stdout,
    alpha_ratio=None,
):
    """Fit every head on the digit tokens and print (and return) a results table.

    Parameters
    ----------
    alpha : float or None
        Absolute regularisation strength of the convex heads (``None``: the heads'
        ``alpha_ratio``).
    n_gates : int
        Gates of the gated heads.
    tol : float
        Relative duality gap at which the solver stops.
    max_iter : int
        Iteration cap of the solver.
    test_size : float
        Fraction held out (stratified split).
    random_state : int
        Seeds the split and the gates.
    figure : str or None
        Path of a token-cluster figure of test digits (needs matplotlib).
    out : file
        Where the table is printed.
    alpha_ratio : float or None
        Regularisation relative to each head's ``alpha_max_`` when ``alpha`` is None
        (``None``: the heads' default).

    Returns
    -------
    rows : list of dict
    """
    from sklearn.model_selection import train_test_split

    from ..datasets import load_digits_tokens

    data = load_digits_tokens()
    # float32 halves the memory traffic of the (memory-bound) forward and adjoint products
    X, y = data.data.astype(np.float32), data.target
    Xtr, Xte, ytr, yte = train_test_split(
        X, y, test_size=test_size, stratify=y, random_state=random_state
    )
    n, s, d = X.shape
    print(
        f"Digits as tokens: {n} images, {s} patches of {data.patch_size}x{data.patch_size} "
        f"pixels + one-hot position = {d} features per token; "
        f"train {len(ytr)}, test {len(yte)}.",
        file=out,
    )
    entries = [("logistic regression on the mean token", _MeanTokenLogistic())]
    entries += _heads(alpha, n_gates, random_state, max_iter, tol, alpha_ratio)
    rows = []
    header = f"{'head':40s} {'train':>6s} {'test':>6s} {'fit s':>7s} {'iter':>6s} {'rel. gap':>9s}"
    print(header, file=out)
    print("-" * len(header), file=out)
    fitted = {}
    for name, est in entries:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(Xtr, ytr)
        seconds = time.perf_counter() - t0
        gap = getattr(est, "dual_gap_", None)
        rel = gap / est.objective_ if gap is not None else None
        row = dict(
            head=name,
            train_accuracy=float(est.score(Xtr, ytr)),
            test_accuracy=float(est.score(Xte, yte)),
            fit_seconds=seconds,
            n_iter=int(est.n_iter_),
            relative_gap=rel,
        )
        rows.append(row)
        fitted[name] = est
        print(
            f"{name:40s} {row['train_accuracy']:6.3f} {row['test_accuracy']:6.3f} "
            f"{seconds:7.1f} {row['n_iter']:6d} "
            + (f"{rel:9.1e}" if rel is not None else f"{'-':>9s}"),
            file=out,
            flush=True,
        )
    print(
        "rel. gap: duality gap / objective, an upper bound on the relative suboptimality "
        f"(the solver stops at tol={tol:g}).",
        file=out,
    )
    if figure:
        _demo_figure(fitted, Xte, data, figure, out)
    return rows


def _demo_figure(fitted, Xte, data, path, out):
    try:
        from ..plotting import plot_token_clusters
    except ImportError as exc:  # matplotlib missing, or plotting not available
        print(f"(no figure: {exc})", file=out)
        return
    gated = [e for k, e in fitted.items() if " (gated" in k]  # the first gated head
    if not gated:
        return
    fig = plot_token_clusters(gated[0], Xte[:12], grid_shape=data.grid_shape,
                              patch_size=data.patch_size)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"token-cluster figure of 12 test digits written to {path}", file=out)


def cmd_demo(args):
    """``skconvexattn demo``: the table (and figure) of :func:`demo`."""
    if args.figure:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CommandError(
                "--figure needs matplotlib (pip install matplotlib), or pass --figure ''"
            )
    demo(
        alpha=args.alpha,
        alpha_ratio=args.alpha_ratio,
        n_gates=args.n_gates,
        tol=args.tol,
        max_iter=args.max_iter,
        random_state=args.random_state,
        figure=args.figure or None,
    )
    return 0
