"""File input and output of the command line: NumPy data, model files, messages.

User errors raise :class:`CommandError`, which :func:`skconvexattn.cli.main` reports on
one line.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

import numpy as np

__all__ = [
    "PROG",
    "CommandError",
    "load_data",
    "trusted_types",
    "save_model",
    "load_model",
]

PROG = "skconvexattn"


class CommandError(Exception):
    """A user error, reported on one line without a traceback."""


def one_line(text):
    """``text`` on one line (runs of white space become one space)."""
    return " ".join(str(text).split())


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
            f"cannot read {what} {path!r} as NumPy data (.npz or .npy): {one_line(exc)}"
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
        raise CommandError(f"cannot read array {key!r} of {path!r}: {one_line(exc)}")


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

    from .. import model_selection, preprocessing  # noqa: F401
    from ..heads import registered_heads

    names = {"numpy.dtype", "sklearn.utils._bunch.Bunch"}
    for spec in registered_heads():  # also heads registered from outside the package
        for cls in (spec.estimator, model_selection.cv_estimator(spec.estimator)):
            names.add(f"{cls.__module__}.{cls.__qualname__}")
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
        raise CommandError(f"cannot write model {path!r}: {one_line(exc)}")


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
                f"({type(exc).__name__}: {one_line(exc)})"
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
                f"cannot load model {path!r} ({type(exc).__name__}: {one_line(exc)})"
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
                f"({type(exc).__name__}: {one_line(exc)})"
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


@contextlib.contextmanager
def reported_warnings():
    """Show warnings as one line each on stderr: ``skconvexattn: warning: ...``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        yield
    seen = set()
    for w in caught:
        line = f"{w.category.__name__}: {one_line(w.message)}"
        if line not in seen:
            seen.add(line)
            print(f"{PROG}: warning: {line}", file=sys.stderr)


def check_output_path(path, what):
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CommandError(f"cannot write {what} {path!r}: directory {parent!r} does not exist")
    if os.path.isdir(path):
        raise CommandError(f"cannot write {what} {path!r}: it is a directory")


def jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)
