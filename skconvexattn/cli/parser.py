"""The argument parser of the command line: every command's options, validated on
parsing, with the heads' choices and options read from the registry."""

from __future__ import annotations

import argparse
import os
import textwrap

import numpy as np

from .._base import DEFAULT_ALPHA_RATIO
from .commands import cmd_fit, cmd_info, cmd_predict, cmd_score
from .demo import cmd_demo
from .io import PROG

__all__ = ["build_parser"]


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

{heads}
Options left out take the estimator's defaults (activation gated_relu, 8 gates, tol 1e-4,
3000 iterations, alpha = alpha_ratio * alpha_max_), except --random-state (0). The model
(with --scale/--pca, the whole pipeline) is saved with skops (.joblib/.pkl: joblib,
loadable with --trust only); its fitted attributes are NumPy arrays, so a model fitted on
a GPU loads and predicts on a machine without one. Ctrl-C saves the iterate reached, with
its duality gap (exit 130).
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
_ratio_number = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1] or 'auto'")


def _ratio(text):
    """``--alpha-ratio``: a number in (0, 1] or ``auto`` (held-out choice)."""
    return "auto" if text.strip().lower() == "auto" else _ratio_number(text)
_positive_int = _number(int, lambda v: v >= 1, "a positive integer")


def _integer_at_least(minimum):
    """An argparse type for integers ``>= minimum`` (a head's own options)."""
    if minimum == 1:
        return _positive_int
    return _number(int, lambda v: v >= minimum, f"an integer >= {minimum}")


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


_DATA_HELP = "an .npz file with arrays X and y, or two .npy files X.npy y.npy"


#: help, description and epilog of every command
_COMMAND_TEXTS = {
    "fit": dict(
        help="fit a head on token features (.npz or X.npy y.npy) and save it",
        description=(
            "Fit a convex head on token features X and labels y, certify the solution\n"
            "with a duality gap, and save the fitted estimator (.skops)."
        ),
        epilog=_FIT_EPILOG,  # {heads}: filled with the registered heads
    ),
    "predict": dict(
        help="print or save the labels a saved model predicts",
        description="Predict labels (or class probabilities) with a saved model.",
        epilog=_PREDICT_EPILOG,
    ),
    "score": dict(
        help="accuracy of a saved model on labelled data",
        description="Print the accuracy of a saved model on labelled token features.",
        epilog=_SCORE_EPILOG,
    ),
    "info": dict(
        help="describe a saved model: parameters, shapes, classes, certificate",
        description="Describe a model saved by 'skconvexattn fit'.",
        epilog=_INFO_EPILOG,
    ),
    "demo": dict(
        help="fit the heads and a linear baseline on the digit tokens; print a table",
        description=(
            "Fit the convex heads (self-attention linear and gated, and the other heads) "
            "and a logistic regression on the mean token on scikit-learn's 8x8 digits cut "
            "into 2x2 patches with one-hot positions; print train/test accuracy, fit "
            "seconds, iterations and the certified relative duality gap."
        ),
        epilog="example: skconvexattn demo --n-gates 4 --figure clusters.png",
        formatter_class=argparse.HelpFormatter,
    ),
}


def _command(sub, name, func, **texts):
    """The subcommand ``name`` (texts from ``_COMMAND_TEXTS``, updated by ``texts``), run
    by ``func(args)`` (see :func:`skconvexattn.cli.main`)."""
    texts = {"formatter_class": _FORMATTER, **_COMMAND_TEXTS[name], **texts}
    p = sub.add_parser(name, **texts)
    p.set_defaults(func=func)
    return p


def _array_keys(p, y=True):
    """``--x-key`` (and ``--y-key``): the array names inside an .npz file."""
    p.add_argument("--x-key", default="X", metavar="KEY", help="array name of X in an .npz (X)")
    if y:
        p.add_argument("--y-key", default="y", metavar="KEY", help="array name of y in an .npz (y)")


def _saved_model(p):
    """The ``MODEL`` argument and ``--trust`` of the commands that load a model."""
    p.add_argument("model", metavar="MODEL", help="a model saved by 'skconvexattn fit'")
    p.add_argument("--trust", action="store_true", help=_TRUST_HELP)


def _regularisation(p, alpha_type, alpha_help, ratio_help):
    """``--alpha`` or ``--alpha-ratio`` (one of them)."""
    reg = p.add_mutually_exclusive_group()
    reg.add_argument("--alpha", type=alpha_type, metavar="A", help=alpha_help)
    reg.add_argument("--alpha-ratio", type=_ratio, metavar="R", help=ratio_help)


def _fit_parser(sub, heads):
    names = ", ".join(f"{h.name} = {h.estimator.__name__}" for h in heads)
    names = textwrap.fill(f"Heads: {names}.", width=88)
    p = _command(sub, "fit", cmd_fit, epilog=_FIT_EPILOG.format(heads=names))
    p.add_argument("data", nargs="+", metavar="DATA", help=_DATA_HELP)
    p.add_argument("--head", required=True, choices=[h.name for h in heads],
                   help="which head to fit")
    _regularisation(
        p, _alpha,
        "absolute regularisation strength (> 0), or 'auto' to choose it by "
        "cross-validation (the head's *CV estimator); default: --alpha-ratio",
        "regularisation relative to the data's alpha_max_, in (0, 1], or 'auto' to "
        "choose it on a held-out 20%% of the data (default: the heads' alpha_ratio, "
        f"{DEFAULT_ALPHA_RATIO})",
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
                   help="iteration cap of the solver (default 3000)")
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
    seen = set()
    for spec in heads:  # the options a head adds (FNO's --n-modes, ...)
        for opt in spec.options:
            if opt.param in seen:
                continue
            seen.add(opt.param)
            owners = ", ".join(h.name for h in heads if opt in h.options)
            p.add_argument(
                opt.flag, type=_integer_at_least(opt.minimum), metavar=opt.metavar,
                help=f"{owners} only: {opt.help}",
            )
    _array_keys(p)
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="print the objective and duality gap during the fit (on stderr)")


def _predict_parser(sub):
    p = _command(sub, "predict", cmd_predict)
    _saved_model(p)
    p.add_argument("data", metavar="DATA", help="an .npz file with array X, or X.npy")
    p.add_argument("-o", "--output", metavar="PREDS",
                   help="write to this file (.npy, or .csv/.txt as text) instead of printing")
    p.add_argument("--proba", action="store_true",
                   help="class probabilities instead of labels (log_loss models), under a "
                        "header line of class names")
    _array_keys(p, y=False)


def _score_parser(sub):
    p = _command(sub, "score", cmd_score)
    _saved_model(p)
    p.add_argument("data", nargs="+", metavar="DATA", help=_DATA_HELP)
    _array_keys(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _info_parser(sub):
    p = _command(sub, "info", cmd_info)
    _saved_model(p)
    p.add_argument("--json", action="store_true", help="print the description as JSON")


def _demo_parser(sub):
    p = _command(sub, "demo", cmd_demo)
    _regularisation(
        p, _positive_float,
        "absolute regularisation (default: --alpha-ratio)",
        f"regularisation relative to alpha_max_, in (0, 1] or 'auto' (default "
        f"{DEFAULT_ALPHA_RATIO})",
    )
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


def build_parser():
    """The ``skconvexattn`` argument parser: every command, with the registered heads."""
    from .. import __version__
    from ..heads import registered_heads

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
    _fit_parser(sub, registered_heads())
    _predict_parser(sub)
    _score_parser(sub)
    _info_parser(sub)
    _demo_parser(sub)
    return parser
