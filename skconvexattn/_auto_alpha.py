"""``alpha_ratio="auto"``: the regularisation chosen on a held-out part of the training data.

No single ratio ``alpha / alpha_max`` suits every data set: on sentence tokens (SST-2,
2 classes) the best ratio is about 0.1, on image patches (Fashion-MNIST, 10 classes) about
0.001 to 0.01, and 0.1 loses 0.15 to 0.2 of test accuracy there
(``benchmarks/tune_alpha_ratio.py``). ``alpha_max`` is set by the strongest direction of
the gradient at zero, the useful ``alpha`` by how many weaker directions carry signal,
and that differs between data sets. So ``"auto"`` measures it: a warm-started path of
ratios ``0.3, 0.1, 0.03, ...`` is fitted (to a gap of ``1e-3`` of the intercept-only
loss) on a stratified 80 % of the training samples and scored on the other 20 % by the
mean held-out *loss* of the head (its own datafit: the log-loss, or the squared error;
weighted by ``sample_weight``), the deviance that ``cv.glmnet`` ranks its path by. The
path stops once two ratios in a row score worse than the best, or one scores worse by more than :data:`STOP_SE` standard
errors of the mean per-sample difference (the held-out loss has one minimum along the
path, and the smaller ratios past it are the slowest to fit). The head is then fitted on
all the samples at the largest ratio whose held-out loss exceeds the smallest by at most
half a standard error of the mean per-sample difference between the two
(:data:`SE_FRACTION`). Ratios that close are
indistinguishable on the held-out part, and the larger one is the simpler model and the
faster to certify. The path's fits use the final fit's gates (drawn from all the
samples), so each solves the final fit's program on the 80 %, and the final fit starts
from the path's solution at the chosen ratio rather than from zero (:data:`PATH_START`).

The loss, not the accuracy: on a few hundred held-out samples the accuracy moves in steps
of ``1/n`` and ties (the Mixer on Fashion-MNIST patches scored 0.800 at both 0.03 and
0.01, whose test accuracies were 0.796 and 0.828), and tiny changes of the path's fits
flip its choice (the FNO on the patches went from 0.003 to 0.001, test 0.760 to 0.734,
when the path's tolerance was loosened); the loss is continuous and has one clear minimum
along the path (``docs/alpha.rst``).

Small data sets (fewer than :data:`AUTO_MIN_SAMPLES` samples, or a class with fewer than
:data:`AUTO_MIN_CLASS` samples) have too few held-out samples to rank ratios (the
standard error of an accuracy on 100 samples is about 0.05): they use
:data:`FALLBACK_RATIO`, the ratio that was best on the sentence tokens. This is the rule
of :class:`~sklearn.ensemble.HistGradientBoostingClassifier`'s ``early_stopping="auto"``
(a validation split only when the data are large enough), and it keeps a fit on repeated
samples equal to the fit with integer ``sample_weight`` on small data.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import _safe_indexing, check_random_state
from sklearn.utils.validation import _num_samples

__all__ = [
    "AUTO_MIN_CLASS",
    "AUTO_MIN_SAMPLES",
    "AUTO_RATIOS",
    "FALLBACK_RATIO",
    "PATH_MAX_ITER",
    "SE_FRACTION",
    "STOP_SE",
    "VALIDATION_FRACTION",
    "select_alpha_ratio",
]

#: the path of ratios ``alpha / alpha_max`` tried, from the most regularised (half decades)
AUTO_RATIOS = (0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
#: the ratio used when the data are too small for a held-out choice
FALLBACK_RATIO = 0.1
#: fewest samples for a held-out choice (its 20 % is then at least 100 samples)
AUTO_MIN_SAMPLES = 500
#: fewest samples of each class for a held-out choice
AUTO_MIN_CLASS = 10
#: the held-out fraction of the training samples
VALIDATION_FRACTION = 0.2
#: ratios in a row scoring below the best after which the path stops
PATIENCE = 2
#: the path also stops at the first ratio whose mean held-out loss exceeds the best by
#: more than this many standard errors of the mean per-sample difference: it is past the
#: minimum, and the next, smaller ratios are the slowest to fit
STOP_SE = 2.0
#: the (looser) ``tol`` of the path's fits: they only rank the ratios
PATH_TOL = 1e-3
#: the scale of the path fits' ``tol``, whatever the final fit's ``tol_scale``
PATH_TOL_SCALE = "null"
#: the most iterations of a path fit (whatever ``max_iter``): they only rank the ratios
PATH_MAX_ITER = 1000
#: whether the path solves the final fit's program (its gates) so that the final fit
#: starts from the path's solution at the chosen ratio; False: the path draws gates from
#: its 80 % and the final fit starts from zero (the rule before; ``bench_defaults.py
#: --compare path_start`` measures both)
PATH_START = True
#: a larger ratio is chosen when its mean held-out loss exceeds the smallest by at most
#: this many standard errors of the mean per-sample difference between the two
SE_FRACTION = 0.5


def _held_out(probe, X, y):
    """The fitted ``probe``'s loss (its own datafit: log-loss or squared error) and whether
    it predicts right, on every held-out sample: float64 ``(m,)`` each, from one forward
    pass. A label the probe never saw gets the largest loss of the others."""
    from ._dask import is_dask_array
    from ._datafits import get_datafit
    from ._validation import check_tokens

    if is_dask_array(X):
        X = X.compute()  # the held-out part: a fifth of the samples
    O = np.asarray(probe._logits(check_tokens(probe, X, reset=False)), dtype=np.float64)
    classes = probe.classes_
    correct = (classes[np.argmax(O, axis=1)] == y).astype(np.float64)  # as predict does
    pos = np.clip(np.searchsorted(classes, y), 0, len(classes) - 1)
    seen = classes[pos] == y
    Y = np.zeros_like(O)
    Y[np.arange(len(y)), pos] = 1.0
    with np.errstate(over="ignore"):
        lv = np.asarray(get_datafit(probe.loss).per_sample(O, Y), dtype=np.float64)
    lv = np.where(np.isfinite(lv), lv, np.finfo(np.float64).max / 1e6)
    if not np.all(seen):
        lv[~seen] = lv[seen].max() if np.any(seen) else 0.0
    return lv, correct


def _fixed(reason):
    return FALLBACK_RATIO, {"method": "fixed", "ratio": FALLBACK_RATIO, "reason": reason}, None


def _converged(probe):
    """Whether the fitted ``probe`` reached its ``tol``."""
    scale = probe._gap_scale(probe.objective_, probe.null_objective_)
    return bool(probe.dual_gap_ <= probe.tol * scale)


def select_alpha_ratio(est, X, y, sample_weight=None, gates=None):
    """The ``alpha_ratio`` of a fit of ``est`` with ``alpha_ratio="auto"``, and the path's
    solution at that ratio, where the fit on all the samples may start.

    Parameters
    ----------
    est : BaseConvexHead
        The head being fitted (not modified; its clones are fitted).
    X : array-like of shape (n_samples, n_tokens, n_features) or \
            (n_samples, n_tokens * n_features)
        Training tokens, as given to ``fit``.
    y : array-like of shape (n_samples,)
        Class labels.
    sample_weight : array-like of shape (n_samples,), default=None
        Weights of the samples; the held-out loss and accuracy are weighted by them.
    gates : tuple, default=None
        ``(gates, scale_exp)``: the gates of the fit on all the samples (drawn from all
        of them) and its input scale exponent. The path's fits use them (instead of
        gates drawn from their 80 %), so that they solve the final fit's program on a
        part of its data.

    Returns
    -------
    ratio : float
        The ratio to fit with.
    info : dict
        ``method`` (``"holdout"`` or ``"fixed"``), ``ratio``, and for ``"holdout"`` the
        ``ratios`` tried, their mean held-out ``losses`` (which choose), the
        ``standard_errors`` of each one's difference to the smallest, their held-out
        accuracies (``scores``), ``n_train``, ``n_validation`` and ``seconds``; for
        ``"fixed"`` the ``reason``.
    start : dict or None
        The path's solution at ``ratio`` (``factors``, ``coef``, ``intercept``,
        ``classes``, ``scale_exp``), found with ``gates``; ``None``
        without ``gates``, for ``"fixed"``, or when that path fit stopped before its
        ``tol`` (``info["path_converged"]`` is then False).
    """
    try:
        n = int(_num_samples(X))
    except (TypeError, ValueError):  # e.g. a Dask array of unknown length: fit says so
        return _fixed("n_samples unknown")
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        return _fixed("y is not a vector of n_samples labels")  # fit raises the error
    if n < AUTO_MIN_SAMPLES:
        return _fixed(f"n_samples={n} < {AUTO_MIN_SAMPLES}")
    sw = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    keep = np.ones(n, dtype=bool) if sw is None or sw.ndim != 1 else sw > 0
    _, counts = np.unique(y[keep], return_counts=True)
    if counts.shape[0] < 2 or counts.min() < AUTO_MIN_CLASS:
        return _fixed(f"a class has fewer than {AUTO_MIN_CLASS} samples")
    # the split's seed is one draw from random_state: an int gives the same split every fit
    seed = check_random_state(est.random_state).randint(np.iinfo(np.int32).max)
    idx = np.flatnonzero(keep)
    train, val = train_test_split(
        idx, test_size=VALIDATION_FRACTION, stratify=y[idx], random_state=seed
    )
    train.sort()
    val.sort()
    X_tr, X_va = _safe_indexing(X, train), _safe_indexing(X, val)
    sw_tr = None if sw is None else sw[train]
    sw_va = None if sw is None else sw[val]
    # the path ranks ratios by their held-out loss, which settles long before a 1e-4
    # certificate
    probe = clone(est).set_params(
        alpha=None, warm_start=True, verbose=0, tol=max(est.tol, PATH_TOL),
        max_iter=min(est.max_iter, PATH_MAX_ITER),
    )
    if "tol_scale" in probe.get_params():
        # the intercept-only loss whatever the final fit's scale: relative to the
        # objective, small ratios cost several times the iterations for held-out losses
        # equal to 3 digits (docs/alpha.rst)
        probe.set_params(tol_scale=PATH_TOL_SCALE)
    if not PATH_START:
        gates = None
    if gates is not None:
        probe._path_gates = gates  # consumed by _prepare when the scale matches
    deadline = None if est.max_time is None else time.monotonic() + 0.5 * est.max_time
    t0 = time.monotonic()
    w_va = np.ones(len(val)) if sw_va is None else sw_va
    w_va = w_va / max(float(np.sum(w_va)), 1e-300)
    # effective number of held-out samples (Kish) for weighted means
    n_eff = len(val) if sw_va is None else float(np.sum(sw_va)) ** 2 / max(
        float(np.sum(np.square(sw_va))), 1e-300)

    def se(k, top):  # standard error of the mean paired loss difference of k and top
        diff = per_sample[k] - per_sample[top]
        var = float(w_va @ np.square(diff - w_va @ diff))
        return math.sqrt(max(var, 0.0) / max(n_eff, 1.0))

    ratios, scores, losses, per_sample, solutions, converged = [], [], [], [], [], []
    best, since_best = math.inf, 0
    for ratio in AUTO_RATIOS:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 and ratios:
                break
            probe.set_params(max_time=max(left, 1e-3))
        probe.set_params(alpha_ratio=ratio)
        t_fit = time.monotonic()
        with warnings.catch_warnings():
            # a path point that stops at max_iter still ranks its ratio
            warnings.simplefilter("ignore", ConvergenceWarning)
            probe.fit(X_tr, y[train], sample_weight=sw_tr)
        t_fit = time.monotonic() - t_fit
        lv, correct = _held_out(probe, X_va, y[val])
        score = float(w_va @ correct)  # the weighted accuracy, as probe.score gives it
        ratios.append(ratio)
        scores.append(score)
        per_sample.append(lv)
        losses.append(float(w_va @ lv))
        # the solutions are kept only when they solve the final fit's program (its gates)
        solutions.append(probe._solution() if gates is not None else None)
        converged.append(_converged(probe))
        if est.verbose:
            print(f"[alpha_ratio=auto] ratio {ratio:g}: held-out loss {losses[-1]:.4f}, "
                  f"accuracy {score:.4f} ({probe.n_iter_} iterations, {t_fit:.1f} s)")
        if probe.alpha_max_ == 0:
            break  # the all-zero model for every alpha: nothing to rank
        if losses[-1] < best:
            best, since_best = losses[-1], 0
        else:
            since_best += 1
            last = len(losses) - 1
            rise = losses[-1] - best
            if since_best >= PATIENCE or rise > STOP_SE * se(last, int(np.argmin(losses))):
                break
    top = int(np.argmin(losses))
    ses = [se(k, top) for k in range(len(ratios))]
    # the ratios decrease along the path: the first one within reach is the largest
    k_chosen = next(k for k in range(len(ratios))
                    if losses[k] <= losses[top] + SE_FRACTION * ses[k])
    chosen = ratios[k_chosen]
    start = solutions[k_chosen]
    if not converged[k_chosen]:
        # a path fit stopped at PATH_MAX_ITER is a poor start for the factored solver:
        # on the Fashion-MNIST patches (self-attention, 0.003) the final fit from it ran
        # into max_iter=3000 uncertified, from zero it certified in 1,716 iterations
        start = None
    return chosen, {
        "method": "holdout",
        "ratio": chosen,
        "ratios": ratios,
        "scores": scores,
        "losses": losses,
        "standard_errors": ses,
        "n_train": int(train.shape[0]),
        "n_validation": int(val.shape[0]),
        "seconds": time.monotonic() - t0,
        "path_converged": converged[k_chosen],
    }, start
