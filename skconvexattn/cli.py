"""Command-line interface: ``skconvexattn demo`` (and more subcommands over time).

``skconvexattn demo`` fits the convex heads and a linear baseline on the bundled digit
tokens and prints a table of accuracy, fit time, iterations and duality gap.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np

__all__ = ["main", "demo"]


def _heads(alpha, n_gates, random_state, max_iter, tol):
    """(row name, estimator) pairs for the demo table; heads not yet present are skipped."""
    import skconvexattn as ska

    common = dict(random_state=random_state, max_iter=max_iter, tol=tol)
    rows = [
        (
            "self-attention (linear)",
            ska.ConvexSelfAttentionClassifier(alpha=alpha, activation="linear", **common),
        ),
        (
            f"self-attention (gated, {n_gates} gates)",
            ska.ConvexSelfAttentionClassifier(alpha=alpha, n_gates=n_gates, **common),
        ),
    ]
    for name, label in [
        ("ConvexMixerClassifier", "MLP-Mixer"),
        ("ConvexFNOClassifier", "FNO"),
        ("ConvexMLPClassifier", "MLP head"),
    ]:
        cls = getattr(ska, name, None)
        if cls is not None:
            rows.append((f"{label} (gated, {n_gates} gates)", cls(alpha=alpha, n_gates=n_gates, **common)))
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
    alpha=1e-3,
    n_gates=4,
    tol=1e-3,
    max_iter=3000,
    test_size=0.3,
    random_state=0,
    figure=None,
    out=sys.stdout,
):
    """Fit every head on the digit tokens and print (and return) a results table.

    Parameters
    ----------
    alpha : float
        Regularisation strength of the convex heads.
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

    Returns
    -------
    rows : list of dict
    """
    from sklearn.model_selection import train_test_split

    from .datasets import load_digits_tokens

    data = load_digits_tokens()
    X, y = data.data, data.target
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
    entries += _heads(alpha, n_gates, random_state, max_iter, tol)
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
        from .plotting import plot_token_clusters
    except ImportError as exc:  # matplotlib missing, or plotting not available
        print(f"(no figure: {exc})", file=out)
        return
    gated = [e for k, e in fitted.items() if k.startswith("self-attention (gated")]
    if not gated:
        return
    fig = plot_token_clusters(gated[0], Xte[:12], grid_shape=data.grid_shape,
                              patch_size=data.patch_size)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"token-cluster figure of 12 test digits written to {path}", file=out)


def _build_parser():
    parser = argparse.ArgumentParser(
        prog="skconvexattn",
        description=(
            "Attention heads trained to global optimality by convex optimisation. "
            "Run 'skconvexattn demo' to fit every head on the bundled digit tokens."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser(
        "demo",
        help="fit the heads and a linear baseline on the digit tokens; print a table",
        description=(
            "Fit the convex heads (self-attention linear and gated, and the other heads) "
            "and a logistic regression on the mean token on scikit-learn's 8x8 digits cut "
            "into 2x2 patches with one-hot positions; print train/test accuracy, fit "
            "seconds, iterations and the certified relative duality gap."
        ),
    )
    p.add_argument("--alpha", type=float, default=1e-3, help="regularisation (default 1e-3)")
    p.add_argument("--n-gates", type=int, default=4, help="gates of the gated heads (default 4)")
    p.add_argument("--tol", type=float, default=1e-3, help="relative duality gap to stop at")
    p.add_argument("--max-iter", type=int, default=3000, help="solver iteration cap")
    p.add_argument("--random-state", type=int, default=0)
    p.add_argument(
        "--figure",
        default="skconvexattn_demo_clusters.png",
        help="token-cluster figure path ('' for none; needs matplotlib)",
    )
    return parser


def main(argv=None):
    """Entry point of the ``skconvexattn`` command."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(
            alpha=args.alpha,
            n_gates=args.n_gates,
            tol=args.tol,
            max_iter=args.max_iter,
            random_state=args.random_state,
            figure=args.figure or None,
        )
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
