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
Set ``SKCONVEXATTN_DEBUG=1`` to get the full traceback instead. Every command, ``demo``
included, runs behind that one error handling.

The package: :mod:`~skconvexattn.cli.io` (data and model files),
:mod:`~skconvexattn.cli.commands` (fit, predict, score, info), :mod:`~skconvexattn.cli.demo`
and :mod:`~skconvexattn.cli.parser` (the options, with the heads read from the registry
:mod:`skconvexattn.heads`).
"""

from __future__ import annotations

import os
import sys

from .commands import describe
from .demo import demo
from .io import (
    PROG,
    CommandError,
    load_data,
    load_model,
    one_line,
    save_model,
    trusted_types,
)
from .parser import build_parser

__all__ = [
    "main",
    "demo",
    "describe",
    "trusted_types",
    "load_model",
    "save_model",
    "load_data",
    "CommandError",
]


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
    parser = build_parser()
    args = parser.parse_args(argv)
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
            message = one_line(exc)
        else:
            message = f"{type(exc).__name__}: {one_line(exc)}"
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
