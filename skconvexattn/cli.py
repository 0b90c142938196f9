"""Command-line interface of skconvexattn.

Subcommands:

* ``skconvexattn fit DATA --head HEAD [-o MODEL]``: fit a head (or a pipeline with
  ``--scale``/``--pca``, or its ``*CV`` with ``--alpha auto``) on token features stored in
  NumPy files and save it as a safe ``.skops`` file;
* ``skconvexattn predict MODEL DATA [-o PREDS]``: print or save the predicted labels;
* ``skconvexattn score MODEL DATA``: the accuracy on labelled data;
* ``skconvexattn info MODEL``: describe a saved model (parameters, token shape, classes,
  certificate, number of weights);
* ``skconvexattn demo``: fit every head and a linear baseline on the bundled digit tokens
  and print a table of accuracy, fit time, iterations and duality gap.

Model files are loaded only when they hold this package's, scikit-learn's and NumPy's
types (:func:`trusted_types`); pickles (joblib) and foreign types need ``--trust``.

User errors (a missing file, a missing array, a wrong shape, a bad parameter) are reported
on one line, ``skconvexattn: error: ...``, with exit status 1; usage errors exit with 2.
Set ``SKCONVEXATTN_DEBUG=1`` to get the full traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time
import warnings

import numpy as np

from ._base import DEFAULT_ALPHA_RATIO

__all__ = ["main", "demo"]


def _heads(alpha, n_gates, random_state, max_iter, tol, alpha_ratio=None):
    """(row name, estimator) pairs for the demo table; heads not yet present are skipped."""
    import skconvexattn as ska

    common = dict(random_state=random_state, max_iter=max_iter, tol=tol)
    if alpha_ratio is not None:
        common["alpha_ratio"] = alpha_ratio
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

    from .datasets import load_digits_tokens

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


# ---------------------------------------------------------------------------- fit / predict / info
PROG = "skconvexattn"

#: ``--head`` choice -> (module, class name)
HEADS = {
    "attention": ("skconvexattn.heads.attention", "ConvexSelfAttentionClassifier"),
    "mixer": ("skconvexattn.heads.mixer", "ConvexMixerClassifier"),
    "fno": ("skconvexattn.heads.fno", "ConvexFNOClassifier"),
    "mlp": ("skconvexattn.heads.mlp", "ConvexMLPClassifier"),
}


class CommandError(Exception):
    """A user error, reported on one line without a traceback."""


def _one_line(text):
    return " ".join(str(text).split())


def _head_class(name):
    module, cls = HEADS[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        raise CommandError(f"--head {name}: {cls} is not available in this version ({exc})")


def _check_file(path, what):
    if not os.path.exists(path):
        raise CommandError(f"{what} {path!r}: no such file")
    if os.path.isdir(path):
        raise CommandError(f"{what} {path!r} is a directory, not a file")


def _np_load(path, what):
    """``np.load`` without pickles: an ndarray (.npy) or an NpzFile (.npz)."""
    _check_file(path, what)
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # ValueError, OSError, zipfile.BadZipFile, EOFError, ...
        raise CommandError(
            f"cannot read {what} {path!r} as NumPy data (.npz or .npy): {_one_line(exc)}"
        )


def _npz_array(data, key, path, option):
    if key not in data.files:
        have = ", ".join(repr(k) for k in data.files) or "none"
        raise CommandError(
            f"{path!r} has no array {key!r} (arrays in the file: {have}); name the array "
            f"with {option}"
        )
    try:
        return data[key]
    except Exception as exc:
        raise CommandError(f"cannot read array {key!r} of {path!r}: {_one_line(exc)}")


def load_data(paths, x_key="X", y_key="y", need_y=True):
    """Read token features (and labels) from an .npz file or from two .npy files.

    Parameters
    ----------
    paths : list of str
        One ``.npz`` file holding arrays ``x_key`` and ``y_key``, or (for ``X`` alone)
        one ``.npy`` file, or two ``.npy`` files ``X.npy y.npy``.
    x_key, y_key : str
        Array names inside an ``.npz`` file.
    need_y : bool
        Whether the labels are required.

    Returns
    -------
    X : ndarray of shape (n_samples, n_tokens, n_features) or (n_samples, n_tokens * n_features)
    y : ndarray of shape (n_samples,) or None
    """
    if len(paths) > 2:
        raise CommandError(
            f"expected one .npz file or two .npy files (X.npy y.npy), got {len(paths)} paths"
        )
    if len(paths) == 2:
        arrays = []
        for path, name in zip(paths, ("X", "y")):
            data = _np_load(path, f"{name} file")
            if not isinstance(data, np.ndarray):
                raise CommandError(
                    f"{path!r} is an .npz archive; with two paths give two .npy files "
                    "(X.npy y.npy), or give the .npz file alone"
                )
            arrays.append(data)
        X, y = arrays
        source = f"{paths[0]!r} and {paths[1]!r}"
    else:
        path = paths[0]
        data = _np_load(path, "data file")
        if isinstance(data, np.ndarray):
            if need_y:
                raise CommandError(
                    f"{path!r} holds a single array, but fitting needs labels too: give an "
                    ".npz file with arrays X and y, or two .npy files (X.npy y.npy)"
                )
            X, y = data, None
        else:
            with data:
                X = _npz_array(data, x_key, path, "--x-key")
                if need_y or y_key in data.files:
                    y = _npz_array(data, y_key, path, "--y-key")
                else:
                    y = None
        source = f"{path!r}"
    X = _check_X(X, source)
    if y is not None:
        y = _check_y(y, X, source)
    return X, y


def _check_X(X, source):
    if X.dtype.kind not in "biuf":
        raise CommandError(
            f"X in {source} has dtype {X.dtype}; token features must be real numbers"
        )
    if X.ndim not in (2, 3):
        raise CommandError(
            f"X in {source} has shape {X.shape} ({X.ndim}-D); expected "
            "(n_samples, n_tokens, n_features), or (n_samples, n_tokens * n_features) "
            "with --n-tokens"
        )
    if X.shape[0] == 0:
        raise CommandError(f"X in {source} has no samples (shape {X.shape})")
    return X


def _check_y(y, X, source):
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise CommandError(
            f"y in {source} has shape {y.shape}; expected one label per sample, shape "
            f"({X.shape[0]},)"
        )
    if y.shape[0] != X.shape[0]:
        raise CommandError(
            f"X has {X.shape[0]} samples but y has {y.shape[0]} labels ({source}); they "
            "must have the same length"
        )
    return y


#: file endings saved with joblib (pickle); anything else is saved with skops
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")


def trusted_types():
    """Fully qualified names of the types a model file may hold beyond those that
    :mod:`skops.io` trusts by default: this package's estimators and transformers, and a
    few scikit-learn and NumPy types their fitted attributes use.

    Use it to load a model safely from Python::

        import skops.io
        from skconvexattn.cli import trusted_types

        skops.io.dump(model, "model.skops")
        unknown = set(skops.io.get_untrusted_types(file="model.skops")) - set(trusted_types())
        assert not unknown  # anything else could run code: refuse it
        model = skops.io.load("model.skops", trusted=trusted_types())

    Returns
    -------
    names : list of str
    """
    import inspect

    import skconvexattn  # noqa: F401  (loads the heads)
    from sklearn.base import BaseEstimator

    from . import model_selection, preprocessing  # noqa: F401

    names = {"numpy.dtype", "sklearn.utils._bunch.Bunch"}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "skconvexattn" or name.startswith("skconvexattn.")):
            continue
        for obj in list(vars(module).values()):
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseEstimator)
                and obj.__module__.startswith("skconvexattn")
            ):
                names.add(f"{obj.__module__}.{obj.__qualname__}")
    return sorted(names)


def save_model(model, path):
    """Save ``model`` with skops (``.skops``, the default) or joblib (``.joblib``/``.pkl``)."""
    try:
        if str(path).endswith(PICKLE_SUFFIXES):
            import joblib

            joblib.dump(model, path)
        else:
            import skops.io as sio

            sio.dump(model, path)
    except OSError as exc:
        raise CommandError(f"cannot write model {path!r}: {_one_line(exc)}")


def load_model(path, trust=False):
    """Load a fitted model saved by ``skconvexattn fit``, never running code the user
    did not agree to.

    A ``.skops`` file is loaded when every type it holds is one skops trusts or one of
    :func:`trusted_types`; other types, and pickle-based (joblib) files, which can run
    any code when loaded, are refused unless ``trust=True`` (``--trust``), which loads
    them with a warning on stderr.
    """
    import zipfile

    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    _check_file(path, "model file")
    if zipfile.is_zipfile(path):
        try:
            import skops.io as sio
        except ImportError:  # pragma: no cover - skops is a dependency
            raise CommandError("reading .skops models needs skops: pip install skops")
        try:
            untrusted = sio.get_untrusted_types(file=path)
        except Exception as exc:
            raise CommandError(
                f"cannot load model {path!r}: not a .skops file saved by 'skconvexattn fit' "
                f"({type(exc).__name__}: {_one_line(exc)})"
            )
        unknown = sorted(set(untrusted) - set(trusted_types()))
        if unknown and not trust:
            raise CommandError(
                f"refusing to load {path!r}: it holds types that are not skconvexattn's, "
                f"scikit-learn's or NumPy's ({', '.join(unknown)}), whose code loading would "
                "run; add --trust only if you trust the file's source"
            )
        if unknown:
            print(
                f"{PROG}: warning: --trust: loading types outside skconvexattn's list from "
                f"{path!r}: {', '.join(unknown)}",
                file=sys.stderr,
            )
        try:
            model = sio.load(path, trusted=list(untrusted))
        except Exception as exc:
            raise CommandError(
                f"cannot load model {path!r} ({type(exc).__name__}: {_one_line(exc)})"
            )
    else:
        if not trust:
            raise CommandError(
                f"refusing to load {path!r}: it is not a .skops file, and a joblib or pickle "
                "file can run any code when loaded. Re-save the model as .skops ('skconvexattn "
                "fit ... -o model.skops'), or add --trust only if you trust the file's source"
            )
        import joblib

        print(
            f"{PROG}: warning: --trust: loading {path!r} with joblib (pickle), which runs "
            "whatever code the file holds",
            file=sys.stderr,
        )
        try:
            model = joblib.load(path)
        except Exception as exc:
            raise CommandError(
                f"cannot load model {path!r}: not a joblib file saved by 'skconvexattn fit' "
                f"({type(exc).__name__}: {_one_line(exc)})"
            )
    if not hasattr(model, "predict") or not hasattr(model, "get_params"):
        raise CommandError(
            f"{path!r} holds a {type(model).__name__}, not a scikit-learn estimator saved by "
            "'skconvexattn fit'"
        )
    try:
        check_is_fitted(model)
    except NotFittedError:
        raise CommandError(f"the model in {path!r} is not fitted")
    except TypeError:
        pass
    return model


def _convex_head(model):
    """The convex head of a model: itself, or the last step of a pipeline."""
    from ._base import BaseConvexHead

    steps = getattr(model, "steps", None)
    last = steps[-1][1] if steps else model
    last = getattr(last, "best_estimator_", last)  # a *CV estimator: its refitted head
    return last if isinstance(last, BaseConvexHead) else None


@contextlib.contextmanager
def _reported_warnings():
    """Show warnings as one line each on stderr: ``skconvexattn: warning: ...``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        yield
    seen = set()
    for w in caught:
        line = f"{w.category.__name__}: {_one_line(w.message)}"
        if line not in seen:
            seen.add(line)
            print(f"{PROG}: warning: {line}", file=sys.stderr)


def _check_output_path(path, what):
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CommandError(f"cannot write {what} {path!r}: directory {parent!r} does not exist")
    if os.path.isdir(path):
        raise CommandError(f"cannot write {what} {path!r}: it is a directory")


def _build_model(args):
    """The estimator ``fit`` trains: the head (or its ``*CV`` for ``--alpha auto``), after
    ``TokenStandardScaler`` (``--scale``) and ``TokenPCA`` (``--pca K``) when asked."""
    cls = _head_class(args.head)
    params = {}
    for name in ("activation", "n_gates", "n_tokens", "tol", "max_iter", "max_time", "loss",
                 "device", "memory_budget", "random_state"):
        value = getattr(args, name)
        if value is not None:
            params[name] = value
    for name in ("n_modes", "n_blocks"):
        value = getattr(args, name)
        if value is not None:
            if args.head != "fno":
                raise CommandError(
                    f"--{name.replace('_', '-')} applies to --head fno only, not --head "
                    f"{args.head}"
                )
            params[name] = value
    if args.verbose:
        params["verbose"] = args.verbose
    if args.alpha == "auto":
        from . import model_selection

        cls = getattr(model_selection, cls.__name__ + "CV")
    elif args.alpha is not None:
        params["alpha"] = args.alpha
    elif args.alpha_ratio is not None:
        params["alpha_ratio"] = args.alpha_ratio
    steps = []
    if args.scale or args.pca:
        from .preprocessing import TokenPCA, TokenStandardScaler

        if args.n_tokens is not None:
            # the transformers cut a flattened X first; the head then gets 3-D tokens
            n_tokens = params.pop("n_tokens")
            if args.scale:
                steps.append(TokenStandardScaler(n_tokens=n_tokens))
            if args.pca:
                steps.append(TokenPCA(args.pca, n_tokens=None if args.scale else n_tokens,
                                      random_state=args.random_state))
        else:
            if args.scale:
                steps.append(TokenStandardScaler())
            if args.pca:
                steps.append(TokenPCA(args.pca, random_state=args.random_state))
    head = cls(**params)
    if not steps:
        return head
    from sklearn.pipeline import make_pipeline

    return make_pipeline(*steps, head)


def _cmd_fit(args):
    model = _build_model(args)
    _check_output_path(args.output, "model")
    X, y = load_data(args.data, args.x_key, args.y_key, need_y=True)
    if args.n_tokens is not None and X.ndim == 3 and X.shape[1] != args.n_tokens:
        raise CommandError(
            f"--n-tokens {args.n_tokens} contradicts X of shape {X.shape}, which already has "
            f"{X.shape[1]} tokens; --n-tokens is for a flattened X (n_samples, "
            "n_tokens * n_features)"
        )
    if args.pca:
        d = X.shape[2] if X.ndim == 3 else X.shape[1] // (args.n_tokens or 1)
        if args.pca > d:
            raise CommandError(
                f"--pca {args.pca} keeps more components than the {d} features per token of X"
            )
    name = type(model).__name__ if not hasattr(model, "steps") else " -> ".join(
        type(step).__name__ for _, step in model.steps
    )
    shape = "x".join(str(v) for v in X.shape)
    if args.verbose:
        print(f"{PROG}: fitting {name} on X of shape {shape}", file=sys.stderr)
    start = time.perf_counter()
    interrupted = False
    # the solver's progress lines go to stderr, so that stdout holds the summary only
    try:
        with _reported_warnings(), contextlib.redirect_stdout(sys.stderr):
            try:
                model.fit(X, y)
            except ValueError as exc:
                raise _with_pca_hint(exc)
            except MemoryError:
                raise CommandError(
                    "out of memory while fitting: reduce the features per token with --pca K "
                    "(e.g. --pca 16), use fewer --n-gates, or lower --memory-budget"
                )
    except KeyboardInterrupt:
        head = _convex_head(model)
        if head is None or not getattr(head, "interrupted_", False):
            raise
        interrupted = True  # the head kept the iterate reached and its certificate
    seconds = time.perf_counter() - start
    last = model.steps[-1][1] if hasattr(model, "steps") else model
    fitted = getattr(last, "best_estimator_", last)  # the head (refitted, for --alpha auto)
    last.set_params(verbose=0)  # progress printing is not part of the saved model
    fitted.set_params(verbose=0)
    save_model(model, args.output)
    s, d = fitted.token_shape_
    rel = fitted.dual_gap_ / max(abs(fitted.objective_), 1e-300)
    print(
        f"{name} fitted on {X.shape[0]} samples ({s} tokens x {d} features, "
        f"{len(fitted.classes_)} classes) in {seconds:.2f} s on {fitted.device_}"
    )
    alpha_line = f"alpha_ {fitted.alpha_:.4g} (alpha_ / alpha_max_ = " + (
        f"{fitted.alpha_ / fitted.alpha_max_:.3g})" if fitted.alpha_max_ > 0 else "-)"
    )
    if fitted is not last:
        alpha_line += " chosen by cross-validation"
    print(
        f"iterations {fitted.n_iter_}, objective {fitted.objective_:.6g}, duality gap "
        f"{fitted.dual_gap_:.3g} (relative {rel:.2g}, tol {fitted.tol:g}), alpha_max_ "
        f"{fitted.alpha_max_:.4g}, {alpha_line}"
    )
    if interrupted:
        print(
            f"interrupted (Ctrl-C) at iteration {fitted.n_iter_}: saved the iterate reached "
            f"with its certificate (relative duality gap {rel:.2g})"
        )
    print(f"training accuracy {model.score(X, y):.4f}")
    print(f"model saved to {args.output}")
    return 130 if interrupted else 0


def _with_pca_hint(exc):
    """The memory planner's refusal, with the CLI's way to reduce the features."""
    text = str(exc)
    if "memory_budget=" in text:
        return CommandError(
            f"{_one_line(text)} In the CLI: --pca K (e.g. --pca 16) reduces the features per "
            "token, --n-gates the gates."
        )
    return exc


def _cmd_predict(args):
    model = load_model(args.model, trust=args.trust)
    X, _ = load_data([args.data], args.x_key, "y", need_y=False)
    if args.output:
        _check_output_path(args.output, "predictions")
    with _reported_warnings():
        if args.proba:
            if not hasattr(model, "predict_proba"):
                raise CommandError(
                    "--proba needs a model fitted with loss='log_loss' (this one gives "
                    "scores, not probabilities)"
                )
            out = model.predict_proba(X)
        else:
            out = model.predict(X)
    if args.output:
        path = args.output
        try:
            if path.endswith((".txt", ".csv")):
                fmt = "%.8g" if args.proba else "%s"
                header = ",".join(str(_jsonable(c)) for c in model.classes_) if args.proba else ""
                np.savetxt(path, out, fmt=fmt, delimiter=",", header=header, comments="")
            else:
                np.save(path, out)
                path = path if path.endswith(".npy") else path + ".npy"
        except OSError as exc:
            raise CommandError(f"cannot write predictions {path!r}: {_one_line(exc)}")
        what = "probability rows" if args.proba else "predictions"
        print(f"{len(out)} {what} written to {path}")
    else:
        if args.proba:  # a header naming the class of each column
            print(" ".join(str(_jsonable(c)) for c in model.classes_))
        for row in out:
            if args.proba:
                print(" ".join(f"{p:.6f}" for p in row))
            else:
                print(row)
    return 0


def _cmd_score(args):
    model = load_model(args.model, trust=args.trust)
    X, y = load_data(args.data, args.x_key, args.y_key, need_y=True)
    with _reported_warnings():
        accuracy = model.score(X, y)
    if args.json:
        print(json.dumps({"accuracy": float(accuracy), "n_samples": int(X.shape[0])}))
    else:
        print(f"accuracy {accuracy:.4f} on {X.shape[0]} samples")
    return 0


def describe(model):
    """A dict describing a fitted model (what ``skconvexattn info`` prints)."""
    from . import __version__

    info = {"estimator": type(model).__name__, "skconvexattn_version": __version__}
    head = _convex_head(model)
    if hasattr(model, "steps"):
        info["pipeline"] = [type(step).__name__ for _, step in model.steps]
        # each step by the token shape it takes: (n_tokens, n_features) per sample
        info["step_input_shapes"] = [_input_shape(step) for _, step in model.steps]
    info["input_shape"] = _input_shape(model.steps[0][1] if hasattr(model, "steps") else model)
    if head is None:
        info["parameters"] = {k: repr(v) for k, v in model.get_params(deep=False).items()}
        return info
    info["head"] = type(head).__name__
    info["parameters"] = {k: _jsonable(v) for k, v in sorted(head.get_params().items())}
    s, d = head.token_shape_
    info["token_shape"] = [int(s), int(d)]
    info["classes"] = [_jsonable(c) for c in head.classes_]
    info["n_iter_"] = int(head.n_iter_)
    info["objective_"] = float(head.objective_)
    info["dual_gap_"] = float(head.dual_gap_)
    info["relative_gap"] = float(head.dual_gap_ / max(abs(head.objective_), 1e-300))
    info["alpha_max_"] = float(head.alpha_max_)
    # the absolute alpha of the fit (older models without alpha_ had an absolute alpha)
    alpha_ = getattr(head, "alpha_", None)
    info["alpha_"] = float(alpha_ if alpha_ is not None else head.get_params()["alpha"])
    coef = np.asarray(head.coef_, dtype=np.float64)
    info["n_weights"] = int(coef.size)
    info["n_intercepts"] = int(np.size(head.intercept_))
    info["block_shape"] = [int(v) for v in coef.shape]
    sv = np.linalg.svd(coef, compute_uv=False)  # (P, k)
    top = float(sv.max()) if sv.size else 0.0
    live = sv > 1e-8 * top if top > 0 else np.zeros_like(sv, dtype=bool)
    info["active_blocks"] = int(np.count_nonzero(live.any(axis=1)))
    info["recovered_heads"] = int(np.count_nonzero(live))
    info["device_"] = getattr(head, "device_", None)
    info["memory_plan_"] = getattr(head, "memory_plan_", None)
    return info


def _input_shape(est):
    """``[n_tokens, n_features]`` a fitted step takes, or ``[n_features_in_]``."""
    shape = getattr(est, "token_shape_", None)
    if shape is not None:
        return [int(v) for v in shape]
    n = getattr(est, "n_features_in_", None)
    return [int(n)] if n is not None else None


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _cmd_info(args):
    model = load_model(args.model, trust=args.trust)
    info = describe(model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    lines = [("file", args.model)]
    if info.get("input_shape"):
        shape = info["input_shape"]
        lines.append((
            "input",
            f"({shape[0]}, {shape[1]}): {shape[0]} tokens x {shape[1]} features per token"
            if len(shape) == 2 else f"{shape[0]} features",
        ))
    if "pipeline" in info:
        lines.append(("pipeline", " -> ".join(
            f"{name} {tuple(shape) if shape else ''}".rstrip()
            for name, shape in zip(info["pipeline"], info["step_input_shapes"])
        )))
    if "head" not in info:
        lines.append(("estimator", info["estimator"]))
        lines.append(("parameters", ", ".join(f"{k}={v}" for k, v in info["parameters"].items())))
        lines.append(("note", "no convex head found: not a model saved by 'skconvexattn fit'"))
    else:
        P, R, C = info["block_shape"]
        c = len(info["classes"])
        s, d = info["token_shape"]
        params = ", ".join(f"{k}={v!r}" for k, v in info["parameters"].items())
        classes = ", ".join(str(k) for k in info["classes"][:20])
        if c > 20:
            classes += ", ..."
        lines += [
            ("head", f"{info['head']} (skconvexattn {info['skconvexattn_version']})"),
            ("parameters", params),
            ("token shape", f"({s}, {d}): {s} tokens x {d} features per token"),
            ("classes", f"{c}: {classes}"),
            ("n_iter_", str(info["n_iter_"])),
            ("objective_", f"{info['objective_']:.8g}"),
            ("dual_gap_", f"{info['dual_gap_']:.3g} (relative {info['relative_gap']:.2g})"),
            (
                "alpha_",
                f"{info['alpha_']:.6g} (alpha_ / alpha_max_ = "
                f"{info['alpha_'] / info['alpha_max_']:.3g})"
                if info["alpha_max_"] > 0
                else f"{info['alpha_']:.6g}",
            ),
            ("alpha_max_", f"{info['alpha_max_']:.6g}"),
            (
                "weights",
                f"{info['n_weights']:,} convex weights in {P} blocks of {R} x {C} "
                f"(+ {info['n_intercepts']} intercepts)",
            ),
            (
                "solution",
                f"{info['active_blocks']} of {P} blocks non-zero, "
                f"{info['recovered_heads']} recovered heads/neurons (total rank)",
            ),
            ("fitted on", f"{info['device_']}, lifted features {info['memory_plan_']}"),
        ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return 0


# ---------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """Argument parser whose usage errors are one line: ``skconvexattn: error: ...``."""

    def error(self, message):
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


_FORMATTER = argparse.RawDescriptionHelpFormatter

_MAIN_EPILOG = """\
commands, with an example each:
  fit      fit a head on token features saved with NumPy, save it (.skops)
             skconvexattn fit train.npz --head attention -o model.skops
  predict  print (or save) the labels a saved model predicts
             skconvexattn predict model.skops test.npz -o preds.npy
  score    the accuracy of a saved model on labelled data
             skconvexattn score model.skops test.npz
  info     describe a saved model: parameters, token shape, classes, certificate
             skconvexattn info model.skops
  demo     fit every head on the bundled digit tokens and print a table
             skconvexattn demo

Data files: an .npz archive with arrays X (n_samples, n_tokens, n_features) and y
(n_samples,), e.g. np.savez("train.npz", X=X, y=y), or two .npy files X.npy y.npy.
Run 'skconvexattn COMMAND --help' for the options of a command. Errors are one line
on stderr (exit status 1); SKCONVEXATTN_DEBUG=1 shows the full traceback.
"""

_FIT_EPILOG = """\
examples:
  # an .npz archive with arrays X (n, n_tokens, n_features) and y (n,); default alpha
  skconvexattn fit train.npz --head attention --n-gates 8 -o model.skops
  # wide encoder tokens: standardise, 16 principal components, alpha by cross-validation
  skconvexattn fit train.npz --head attention --scale --pca 16 --alpha auto -o model.skops
  # two .npy files, an FNO head keeping 4 Fourier modes, progress on stderr
  skconvexattn fit X.npy y.npy --head fno --alpha-ratio 0.03 --n-modes 4 --verbose -o fno.skops
  # a flattened X of shape (n, 16 * 20) and other array names in the archive
  skconvexattn fit data.npz --x-key tokens --y-key labels --n-tokens 16 \\
      --head mixer --alpha 1e-2 -o mixer.skops

Heads: attention = ConvexSelfAttentionClassifier, mixer = ConvexMixerClassifier,
fno = ConvexFNOClassifier, mlp = ConvexMLPClassifier. Options left out take the
estimator's defaults (activation gated_relu, 8 gates, tol 1e-4, 1000 iterations, alpha
= alpha_ratio * alpha_max_), except --random-state (0). The model (with --scale/--pca, the
whole pipeline) is saved with skops (.joblib/.pkl: joblib, loadable with --trust only);
its fitted attributes are NumPy arrays, so a model fitted on a GPU loads and predicts on a
machine without one. Ctrl-C saves the iterate reached, with its duality gap (exit 130).
Summary on stdout; progress (--verbose) and warnings on stderr.
"""

_PREDICT_EPILOG = """\
examples:
  skconvexattn predict model.skops test.npz                 # one label per line
  skconvexattn predict model.skops X_test.npy -o preds.npy  # saved with np.save
  skconvexattn predict model.skops test.npz --proba -o proba.csv  # header: class names

DATA is an .npz archive (array X, or the one named by --x-key) or an .npy file holding
X alone, with the token shape the model was fitted on. .skops models load after their
types are checked; joblib/pickle files can run code when loaded and need --trust.
"""

_TRUST_HELP = (
    "load a model file that is not a plain .skops model of this package (a joblib/pickle "
    "file, or foreign types), which can run code: only for files you trust"
)

_SCORE_EPILOG = """\
examples:
  skconvexattn score model.skops test.npz
  skconvexattn score model.skops X_test.npy y_test.npy --json

Prints the accuracy (the fraction of correctly predicted labels).
"""

_INFO_EPILOG = """\
examples:
  skconvexattn info model.skops
  skconvexattn info model.skops --json

Prints the head class, its parameters, the token shape, the classes, the number of
iterations, the objective, the duality gap (an upper bound on the distance to the
global optimum), alpha_max_, the number of convex weights, and how many blocks and
recovered heads/neurons the solution uses.
"""


def _number(convert, ok, what):
    """An argparse type: ``convert(text)`` that must satisfy ``ok``, else "expected
    <what>, got <text>"."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_float = _number(float, lambda v: v > 0 and np.isfinite(v), "a positive number")
_non_negative_float = _number(float, lambda v: v >= 0 and np.isfinite(v), "a number >= 0")
_ratio = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
_positive_int = _number(int, lambda v: v >= 1, "a positive integer")


def _alpha(text):
    """``--alpha``: a positive number, or ``auto`` (cross-validation)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return _positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive number or 'auto', got {text!r}"
        )


def _figure_path(text):
    """``demo --figure``: checked before the five-minute demo fits anything."""
    if text:
        parent = os.path.dirname(os.path.abspath(text))
        if not os.path.isdir(parent):
            raise argparse.ArgumentTypeError(
                f"cannot write the figure {text!r}: directory {parent!r} does not exist"
            )
        if os.path.isdir(text):
            raise argparse.ArgumentTypeError(f"cannot write the figure {text!r}: it is a directory")
    return text


def _build_parser():
    from . import __version__

    parser = _Parser(
        prog=PROG,
        description=(
            "Attention heads trained to global optimality by convex optimisation.\n"
            "Fit a head on token features stored in NumPy files, predict with it,\n"
            "inspect it, or run 'skconvexattn demo' to fit every head on the bundled\n"
            "digit tokens."
        ),
        epilog=_MAIN_EPILOG,
        formatter_class=_FORMATTER,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # ---- fit
    p = sub.add_parser(
        "fit",
        help="fit a head on token features (.npz or X.npy y.npy) and save it",
        description=(
            "Fit a convex head on token features X and labels y, certify the solution\n"
            "with a duality gap, and save the fitted estimator (.skops)."
        ),
        epilog=_FIT_EPILOG,
        formatter_class=_FORMATTER,
    )
    p.add_argument(
        "data", nargs="+", metavar="DATA",
        help="an .npz file with arrays X and y, or two .npy files X.npy y.npy",
    )
    p.add_argument("--head", required=True, choices=sorted(HEADS), help="which head to fit")
    reg = p.add_mutually_exclusive_group()
    reg.add_argument(
        "--alpha", type=_alpha, metavar="A",
        help="absolute regularisation strength (> 0), or 'auto' to choose it by "
             "cross-validation (the head's *CV estimator); default: --alpha-ratio",
    )
    reg.add_argument(
        "--alpha-ratio", type=_ratio, metavar="R",
        help="regularisation relative to the data's alpha_max_, in (0, 1] (default: the "
             f"heads' alpha_ratio, {DEFAULT_ALPHA_RATIO:g})",
    )
    p.add_argument("-o", "--output", default="model.skops", metavar="MODEL",
                   help="path of the saved model (default model.skops; .joblib or .pkl "
                        "save with joblib, which only loads with --trust)")
    p.add_argument("--scale", action="store_true",
                   help="standardise every token feature first (TokenStandardScaler)")
    p.add_argument("--pca", type=_positive_int, metavar="K",
                   help="project the tokens on K principal components first (TokenPCA); "
                        "the saved model is the whole pipeline")
    p.add_argument("--activation", choices=["gated_relu", "linear"],
                   help="gated_relu (default) or linear")
    p.add_argument("--n-gates", type=_positive_int, metavar="N",
                   help="gates of the gated heads (default 8)")
    p.add_argument("--n-tokens", type=_positive_int, metavar="S",
                   help="tokens per row when X is flattened as (n, S * n_features)")
    p.add_argument("--tol", type=_non_negative_float,
                   help="relative duality gap to stop at (default 1e-4)")
    p.add_argument("--max-iter", type=_positive_int, metavar="N",
                   help="iteration cap of the solver (default 1000)")
    p.add_argument("--max-time", type=_positive_float, metavar="SECONDS",
                   help="stop the solver after this many seconds, like --max-iter")
    p.add_argument("--loss", choices=["log_loss", "squared_error"],
                   help="log_loss (default) or squared_error")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   help="auto (default: the GPU when CuPy sees one), cpu or cuda")
    p.add_argument("--memory-budget", type=_positive_float, metavar="GIB",
                   help="GiB for lifted features and weights (default 4)")
    p.add_argument("--random-state", type=int, default=0, metavar="SEED",
                   help="seed of the random gates (default 0)")
    p.add_argument("--n-modes", type=_positive_int, metavar="M",
                   help="fno only: keep the lowest M Fourier modes of the kernels")
    p.add_argument("--n-blocks", type=_positive_int, metavar="B",
                   help="fno only: split the channels into B blocks (AFNO)")
    p.add_argument("--x-key", default="X", metavar="KEY", help="array name of X in an .npz (X)")
    p.add_argument("--y-key", default="y", metavar="KEY", help="array name of y in an .npz (y)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="print the objective and duality gap during the fit (on stderr)")
    p.set_defaults(func=_cmd_fit)

    # ---- predict
    p = sub.add_parser(
        "predict",
        help="print or save the labels a saved model predicts",
        description="Predict labels (or class probabilities) with a saved model.",
        epilog=_PREDICT_EPILOG,
        formatter_class=_FORMATTER,
    )
    p.add_argument("model", metavar="MODEL", help="a model saved by 'skconvexattn fit'")
    p.add_argument("data", metavar="DATA", help="an .npz file with array X, or X.npy")
    p.add_argument("-o", "--output", metavar="PREDS",
                   help="write to this file (.npy, or .csv/.txt as text) instead of printing")
    p.add_argument("--proba", action="store_true",
                   help="class probabilities instead of labels (log_loss models), under a "
                        "header line of class names")
    p.add_argument("--x-key", default="X", metavar="KEY", help="array name of X in an .npz (X)")
    p.add_argument("--trust", action="store_true", help=_TRUST_HELP)
    p.set_defaults(func=_cmd_predict)

    # ---- score
    p = sub.add_parser(
        "score",
        help="accuracy of a saved model on labelled data",
        description="Print the accuracy of a saved model on labelled token features.",
        epilog=_SCORE_EPILOG,
        formatter_class=_FORMATTER,
    )
    p.add_argument("model", metavar="MODEL", help="a model saved by 'skconvexattn fit'")
    p.add_argument("data", nargs="+", metavar="DATA",
                   help="an .npz file with arrays X and y, or two .npy files X.npy y.npy")
    p.add_argument("--x-key", default="X", metavar="KEY", help="array name of X in an .npz (X)")
    p.add_argument("--y-key", default="y", metavar="KEY", help="array name of y in an .npz (y)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--trust", action="store_true", help=_TRUST_HELP)
    p.set_defaults(func=_cmd_score)

    # ---- info
    p = sub.add_parser(
        "info",
        help="describe a saved model: parameters, shapes, classes, certificate",
        description="Describe a model saved by 'skconvexattn fit'.",
        epilog=_INFO_EPILOG,
        formatter_class=_FORMATTER,
    )
    p.add_argument("model", metavar="MODEL", help="a model saved by 'skconvexattn fit'")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.add_argument("--trust", action="store_true", help=_TRUST_HELP)
    p.set_defaults(func=_cmd_info)

    # ---- demo (unchanged)
    p = sub.add_parser(
        "demo",
        help="fit the heads and a linear baseline on the digit tokens; print a table",
        description=(
            "Fit the convex heads (self-attention linear and gated, and the other heads) "
            "and a logistic regression on the mean token on scikit-learn's 8x8 digits cut "
            "into 2x2 patches with one-hot positions; print train/test accuracy, fit "
            "seconds, iterations and the certified relative duality gap."
        ),
        epilog="example: skconvexattn demo --n-gates 4 --figure clusters.png",
    )
    reg = p.add_mutually_exclusive_group()
    reg.add_argument("--alpha", type=_positive_float, metavar="A",
                     help="absolute regularisation (default: --alpha-ratio)")
    reg.add_argument("--alpha-ratio", type=_ratio, metavar="R",
                     help="regularisation relative to alpha_max_ "
                          f"(default {DEFAULT_ALPHA_RATIO:g})")
    p.add_argument("--n-gates", type=_positive_int, default=4,
                   help="gates of the gated heads (default 4)")
    p.add_argument(
        "--tol",
        type=_non_negative_float,
        default=1e-2,
        help="relative duality gap to stop at (default 1e-2; 1e-4 certifies tighter, slower)",
    )
    p.add_argument("--max-iter", type=_positive_int, default=3000, help="solver iteration cap")
    p.add_argument("--random-state", type=int, default=0)
    p.add_argument(
        "--figure",
        type=_figure_path,
        default="skconvexattn_demo_clusters.png",
        help="token-cluster figure path ('' for none; needs matplotlib)",
    )
    return parser


def main(argv=None):
    """Entry point of the ``skconvexattn`` command.

    Parameters
    ----------
    argv : list of str or None
        The arguments (without the program name); ``None`` reads ``sys.argv[1:]``.

    Returns
    -------
    status : int
        0 on success, 1 on a user error (reported on one line on stderr), 2 when no
        command is given. Usage errors raise :class:`SystemExit` with status 2.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.figure:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                print(f"{PROG}: error: --figure needs matplotlib (pip install matplotlib), "
                      "or pass --figure ''", file=sys.stderr)
                return 1
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
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of stdout went away (e.g. '| head'): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:
        if os.environ.get("SKCONVEXATTN_DEBUG") == "1":
            raise
        if isinstance(exc, (CommandError, ValueError, TypeError, OSError)):
            message = _one_line(exc)
        else:
            message = f"{type(exc).__name__}: {_one_line(exc)}"
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
