"""Progress of an iterative solver: iteration, objective, relative gap, elapsed time, ETA.

A solver makes one reporter per solve and calls it at every duality-gap evaluation::

    reporter = make_reporter(verbose, tol, max_iter, max_time=None)
    reporter.update(iteration, objective, relative_gap)
    ...
    reporter.close(converged)

``relative_gap`` is the quantity the stopping rule compares with ``tol``,
``(primal - dual) / |primal|``. The ETA is the earlier of two extrapolations: the time at
which the trend of ``log(relative_gap)`` against time (a least-squares line over the
recent evaluations) reaches ``log(tol)``, and the time at which ``max_iter`` iterations
are done at the mean time per iteration so far (and ``max_time``, when given).

``verbose=0`` reports nothing; ``verbose=1`` draws a :mod:`tqdm` progress bar on stderr
when stderr is a terminal, and prints plain lines otherwise (logs, notebooks' captured
output, CI); ``verbose >= 2`` always prints plain lines. Plain lines go to stdout, one
per gap evaluation, starting with ``[skconvexattn] iter``.
"""

from __future__ import annotations

import math
import sys
import time

__all__ = ["make_reporter", "ProgressReporter", "NullReporter", "format_seconds"]

_TREND_POINTS = 5  # gap evaluations the log-gap trend is fitted on


def format_seconds(seconds):
    """``'42.0s'``, ``'3m05s'`` or ``'2h07m'``; ``'?'`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class NullReporter:
    """The reporter of ``verbose=0``: records nothing, prints nothing."""

    def update(self, iteration, objective, relative_gap):
        """Ignore a gap evaluation."""

    def close(self, converged):
        """Nothing to close."""


class ProgressReporter:
    """Report a solver's progress at every gap evaluation.

    Parameters
    ----------
    tol : float
        The relative-gap target of the solver.
    max_iter : int
        The solver's iteration limit.
    max_time : float or None, default=None
        The solver's time limit in seconds, if any.
    bar : bool, default=False
        Draw a :mod:`tqdm` progress bar (on ``file``, stderr by default) instead of plain
        lines on stdout.
    file : file-like or None, default=None
        Where the output goes; ``None``: stderr for the bar, stdout for lines (looked up
        at every write, so redirections apply).
    prefix : str, default="[skconvexattn]"
        Start of every plain line (and the bar's description).

    Attributes
    ----------
    history : list of tuple
        ``(elapsed, iteration, objective, relative_gap)`` of every update.
    """

    def __init__(
        self, tol, max_iter, max_time=None, *, bar=False, file=None, prefix="[skconvexattn]"
    ):
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.max_time = None if max_time is None else float(max_time)
        self.file = file
        self.prefix = prefix
        self.history = []
        self._t0 = time.perf_counter()
        self._bar = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.max_iter,
                desc=prefix,
                unit="it",
                file=file if file is not None else sys.stderr,
                leave=True,
                dynamic_ncols=True,
                bar_format=(
                    "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"
                ),
            )

    # -------------------------------------------------------------- estimates
    def eta(self):
        """Seconds left, extrapolated from the log-gap trend toward ``tol`` and from the
        pace toward ``max_iter`` (and ``max_time``), whichever comes first; ``None``
        before two updates, ``0.0`` once the gap is below ``tol``."""
        if not self.history:
            return None
        elapsed, it, _, gap = self.history[-1]
        if gap <= self.tol:
            return 0.0
        candidates = []
        if it > 0 and elapsed > 0:
            candidates.append((self.max_iter - it) * elapsed / it)
        if self.max_time is not None:
            candidates.append(self.max_time - elapsed)
        pts = [(t, math.log(g)) for t, _, _, g in self.history[-_TREND_POINTS:]
               if g > 0 and math.isfinite(g)]
        if len(pts) >= 2 and self.tol > 0:
            tm = sum(t for t, _ in pts) / len(pts)
            lm = sum(v for _, v in pts) / len(pts)
            var = sum((t - tm) ** 2 for t, _ in pts)
            if var > 0:
                slope = sum((t - tm) * (v - lm) for t, v in pts) / var
                if slope < 0:  # the gap decreases: when does the trend reach tol?
                    candidates.append((math.log(self.tol) - math.log(gap)) / slope)
        if not candidates:
            return None
        return max(min(candidates), 0.0)

    # -------------------------------------------------------------- reporting
    def update(self, iteration, objective, relative_gap):
        """Record and show one gap evaluation.

        Parameters
        ----------
        iteration : int
            Iterations done.
        objective : float
            Primal objective.
        relative_gap : float
            ``(primal - dual) / |primal|``, the quantity compared with ``tol``.
        """
        elapsed = time.perf_counter() - self._t0
        self.history.append((elapsed, int(iteration), float(objective), float(relative_gap)))
        eta = self.eta()
        if self._bar is not None:
            self._bar.n = min(int(iteration), self.max_iter)
            self._bar.set_postfix_str(
                f"obj {objective:.6g}, rel gap {relative_gap:.2e} (tol {self.tol:g}), "
                f"eta {format_seconds(eta)}",
                refresh=False,
            )
            self._bar.refresh()
            return
        self._print(
            f"{self.prefix} iter {int(iteration):5d}  objective {objective:.8e}  "
            f"relative dual gap {relative_gap:.3e} (tol {self.tol:.1e})  "
            f"elapsed {format_seconds(elapsed)}  eta {format_seconds(eta)}"
        )

    def close(self, converged):
        """End the report: say whether ``tol`` was reached, in how long.

        Parameters
        ----------
        converged : bool
            Whether the solver reached ``tol``.
        """
        elapsed = time.perf_counter() - self._t0
        last = self.history[-1] if self.history else (elapsed, 0, math.nan, math.nan)
        what = "converged" if converged else "stopped before tol"
        msg = (
            f"{what}: {last[1]} iterations, relative dual gap {last[3]:.3e} "
            f"(tol {self.tol:.1e}), {format_seconds(elapsed)}"
        )
        if self._bar is not None:
            self._bar.set_postfix_str(msg, refresh=True)
            self._bar.close()
            self._bar = None
            return
        self._print(f"{self.prefix} {msg}")

    def _print(self, line):
        print(line, file=self.file if self.file is not None else sys.stdout, flush=True)


def _is_terminal(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def make_reporter(verbose, tol, max_iter, max_time=None):
    """The progress reporter of a solve.

    Parameters
    ----------
    verbose : int or bool
        0: none; 1: a progress bar when stderr is a terminal, plain lines otherwise;
        2 and more: plain lines.
    tol : float
        The solver's relative-gap target.
    max_iter : int
        The solver's iteration limit.
    max_time : float or None, default=None
        The solver's time limit in seconds, if any.

    Returns
    -------
    reporter : ProgressReporter or NullReporter
        With ``update(iteration, objective, relative_gap)`` and ``close(converged)``.
    """
    if not verbose:
        return NullReporter()
    bar = int(verbose) == 1 and _is_terminal(sys.stderr)
    return ProgressReporter(tol, max_iter, max_time, bar=bar)


class ContinuedReporter:
    """A reporter for a solve that continues another one: iterations are counted on from
    ``offset`` in ``inner``, and closing is left to the owner of ``inner`` (one progress
    bar or log for both stretches, e.g. a float32 fit continued in float64)."""

    def __init__(self, inner, offset):
        self.inner = inner
        self.offset = int(offset)

    def update(self, iteration, objective, relative_gap):
        """Report the gap evaluation at ``offset + iteration``."""
        self.inner.update(self.offset + iteration, objective, relative_gap)

    def close(self, converged):
        """Left to the owner of the inner reporter."""
