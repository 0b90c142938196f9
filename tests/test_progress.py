"""Progress reporting of the solver: relative gap, iterations, elapsed time and ETA."""

import io
import re
import warnings

import numpy as np
import pytest

from skconvexattn import ConvexMLPClassifier
from skconvexattn import _progress
from skconvexattn._progress import (
    NullReporter,
    ProgressReporter,
    format_seconds,
    make_reporter,
)

LINE = re.compile(
    r"\[skconvexattn\] iter +(\d+)  objective (\S+)  relative dual gap (\S+) \(tol (\S+)\)"
    r"  elapsed (\S+)  eta (\S+)"
)


class _Clock:
    """A fake ``time.perf_counter`` advanced by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(_progress.time, "perf_counter", c)
    return c


def _data(n=60, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, 4, 3)
    y = (np.abs(X[:, :, 0]).mean(axis=1) > 0.8).astype(int)
    y[:2] = [0, 1]
    return X, y


def test_verbose_zero_reports_nothing(capsys):
    rep = make_reporter(0, 1e-4, 100)
    assert isinstance(rep, NullReporter)
    rep.update(10, 1.0, 0.5)
    rep.close(True)
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("verbose", [1, 2])
def test_plain_lines_without_a_terminal(verbose, capsys, clock):
    rep = make_reporter(verbose, 1e-4, 1000)
    assert isinstance(rep, ProgressReporter)
    for k in range(4):
        clock.now += 1.0
        rep.update(10 * (k + 1), 2.0 - 0.1 * k, 10.0 ** -(k + 1))
    rep.close(False)
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.strip().splitlines()
    assert len(lines) == 5
    fields = [LINE.match(line).groups() for line in lines[:4]]
    assert [int(f[0]) for f in fields] == [10, 20, 30, 40]
    assert [float(f[2]) for f in fields] == [1e-1, 1e-2, 1e-3, 1e-4]
    assert fields[-1][4] == "4.0s"
    assert "stopped before tol: 40 iterations" in lines[-1]


def test_eta_follows_the_log_gap_trend(clock):
    rep = ProgressReporter(tol=1e-6, max_iter=10**6)
    assert rep.eta() is None
    for k in range(3):  # a decade of gap per second, 10 iterations per second
        clock.now += 1.0
        rep.update(10 * (k + 1), 1.0, 10.0 ** -(k + 1))
    # gap 1e-3 at t = 3 s, one decade per second: 3 more seconds to reach 1e-6
    assert rep.eta() == pytest.approx(3.0)
    # the iteration budget caps it: 40 iterations at 10 per second is 1 s left
    capped = ProgressReporter(tol=1e-6, max_iter=40)
    clock.now = 100.0
    capped._t0 = 100.0
    for k in range(3):
        clock.now += 1.0
        capped.update(10 * (k + 1), 1.0, 10.0 ** -(k + 1))
    assert capped.eta() == pytest.approx(1.0)
    # so does max_time
    timed = ProgressReporter(tol=1e-6, max_iter=10**6, max_time=4.5)
    timed._t0 = clock.now - 3.0
    timed.history = [(1.0, 10, 1.0, 1e-1), (2.0, 20, 1.0, 1e-2), (3.0, 30, 1.0, 1e-3)]
    assert timed.eta() == pytest.approx(1.5)
    # a gap that stalls gives the iteration-budget estimate only
    flat = ProgressReporter(tol=1e-6, max_iter=60)
    flat.history = [(1.0, 10, 1.0, 1e-2), (2.0, 20, 1.0, 1e-2)]
    assert flat.eta() == pytest.approx(4.0)
    done = ProgressReporter(tol=1e-2, max_iter=60)
    done.history = [(1.0, 10, 1.0, 1e-3)]
    assert done.eta() == 0.0


def test_progress_bar_on_a_terminal(monkeypatch, clock):
    pytest.importorskip("tqdm")

    class _Tty(io.StringIO):
        def isatty(self):
            return True

    fake = _Tty()
    monkeypatch.setattr(_progress.sys, "stderr", fake)
    rep = make_reporter(1, 1e-4, 200)
    assert rep._bar is not None
    clock.now += 2.0
    rep.update(50, 1.25, 3.5e-3)
    rep.close(True)
    text = fake.getvalue()
    assert "50/200" in text and "rel gap 3.50e-03" in text and "eta" in text
    assert "converged: 50 iterations" in text
    # verbose=2 prints plain lines even on a terminal
    assert make_reporter(2, 1e-4, 200)._bar is None


def test_format_seconds():
    assert format_seconds(None) == "?"
    assert format_seconds(float("inf")) == "?"
    assert format_seconds(4.04) == "4.0s"
    assert format_seconds(185) == "3m05s"
    assert format_seconds(7620) == "2h07m"


def test_fit_reports_the_relative_gap_that_tol_is_compared_with(capsys):
    X, y = _data()
    est = ConvexMLPClassifier(alpha=1e-2, n_gates=3, random_state=0, tol=1e-6, verbose=2)
    est.fit(X, y)
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    fields = [LINE.match(line).groups() for line in lines[:-1]]
    hist = est.convergence_
    assert [int(f[0]) for f in fields] == hist["iteration"]
    rel = np.asarray(hist["dual_gap"]) / np.abs(hist["objective"])
    printed = np.asarray([float(f[2]) for f in fields])
    # the last evaluation is corrected by the exact nuclear norm after the loop
    np.testing.assert_allclose(printed[:-1], rel[:-1], rtol=1e-3)
    assert printed[-1] <= est.tol and printed[0] > est.tol
    assert all(float(f[3]) == est.tol for f in fields)
    assert lines[-1].startswith("[skconvexattn] converged: ")


def test_unconverged_fit_says_so(capsys):
    X, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ConvexMLPClassifier(alpha=1e-4, n_gates=3, random_state=0, tol=1e-12, max_iter=20,
                            verbose=1).fit(X, y)
    lines = capsys.readouterr().out.strip().splitlines()
    assert "stopped before tol: 20 iterations" in lines[-1]
    assert LINE.match(lines[-2]).group(6) == "0.0s"  # max_iter reached: nothing left
