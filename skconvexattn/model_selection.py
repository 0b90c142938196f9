"""Regularisation paths with cross-validation: one ``*CV`` estimator per head.

The ``*CV`` estimator of a head (the head's class name plus ``CV``, one for every head of
the registry :mod:`skconvexattn.heads`) is to its head what
:class:`~sklearn.linear_model.LogisticRegressionCV` is to logistic regression: it fits a
path of ``alphas`` on every cross-validation split, from the largest (the all-zero model)
down to the smallest, each fit warm-started from the previous solution (and keeping the
split's gates), scores every ``(split, alpha)`` pair on the held-out part, picks the alpha
with the best mean score, and refits the head on all the data at that alpha.

All ``*CV`` classes come from one mechanism: :func:`make_cv_estimator` builds the class for
a head class, with the head's own parameters (except ``alpha``, ``alpha_ratio`` and
``warm_start``) next to
the path's and the cross-validation's. :func:`regularization_path` fits one warm-started
path on one data set; the CV estimators call it on every split.

Grid. ``alphas=k`` (an integer) means ``k`` values on a log grid of *ratios of*
``alpha_max_`` from 1 down to ``eps``: ``alphas_ = alpha_max_ * logspace(0, log10(eps), k)``,
the same ``alpha_ratio`` scale the heads' default regularisation is given in
(``alpha_ = alpha_ratio * alpha_max_``, see ``docs/alpha.rst``). ``alpha_max_`` is that of
the whole training set (the smallest alpha giving the all-zero model), computed exactly
from the gradient at zero with the gates of the whole set
(the head's :meth:`~skconvexattn._base.BaseConvexHead.compute_alpha_max`; no fit). When it
is 0 (constant tokens) the all-zero model is optimal at every alpha: no path is fitted,
each split is fitted once (0 iterations) and the refitted head has ``alpha=None``. The grid is shared by all the
splits, so the selection is the one :class:`~sklearn.model_selection.GridSearchCV` over the
same alphas and the same splits would make (ties go to the first, i.e. largest, alpha).

Warm starts. Along a path the gates are drawn once (from ``random_state`` and the split's
token moments, exactly as a cold fit of that split would draw them) and every fit starts
from the previous alpha's weights and intercept. Solutions move little between close
alphas, so a 10-value path typically costs about as much as one cold fit at its smallest
alpha (see ``benchmarks/bench_paths.py``). The final refit on all data starts from the
mean over the splits of their solutions at the selected alpha when the shapes agree (the
splits' gates differ from the full set's only through the token moments, so the mean is
a close, if not exact, starting point), and from zero otherwise.
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from numbers import Integral, Real

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, _fit_context, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import check_scoring
from sklearn.model_selection import check_cv
from sklearn.utils._param_validation import Interval
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import _check_sample_weight, check_is_fitted

from ._dask import check_dask_tokens, is_dask_array, release
from ._params import make_init
from ._validation import check_tokens
from .heads import get_head, registered_heads

__all__ = ["make_cv_estimator", "cv_estimator", "regularization_path", "alpha_grid"]

# the head's fit warns when alpha >= alpha_max_ (all-zero model): expected at the top of a path
_ZERO_MODEL_MSG = r".*alpha_max_.*all-zero"


def alpha_grid(alpha_max, n_alphas=10, eps=1e-3):
    """``n_alphas`` values on a log grid from ``alpha_max`` down to ``eps * alpha_max``.

    Parameters
    ----------
    alpha_max : float
        The largest value (the head's ``alpha_max_``).
    n_alphas : int, default=10
    eps : float, default=1e-3
        Ratio of the smallest to the largest value.

    Returns
    -------
    alphas : ndarray of shape (n_alphas,)
        Decreasing.
    """
    if n_alphas == 1:
        return np.array([float(alpha_max)])
    return float(alpha_max) * np.logspace(0.0, np.log10(eps), int(n_alphas))


def _fit_quietly(est, X, y, sample_weight):
    """Fit, swallowing the all-zero-model warning; return whether it converged."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message=_ZERO_MODEL_MSG, category=UserWarning)
        est.fit(X, y, sample_weight=sample_weight)
    converged = True
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            converged = False
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return converged


def _alpha_max(head, X, y, sample_weight):
    """``alpha_max`` of ``head`` on ``(X, y)`` from the gradient at zero (no fit; see
    :meth:`~skconvexattn._base.BaseConvexHead.compute_alpha_max`)."""
    return float(head.compute_alpha_max(X, y, sample_weight=sample_weight))


def regularization_path(
    estimator, X, y, alphas=10, *, eps=1e-3, sample_weight=None, scorer=None,
    X_test=None, y_test=None, return_coefs=False,
):
    """Fit ``estimator`` along decreasing ``alphas``, each fit warm-started from the last.

    From the third value on, the warm start is the best (by objective) of the previous
    solution and its secant and quadratic extrapolations in ``log(alpha)`` from the last
    two and three solutions (see :func:`_predict_on_path`); the line search starts from
    the previous fit's final step.

    Parameters
    ----------
    estimator : convex head (a :class:`~skconvexattn._base.BaseConvexHead`)
        Template; it is cloned, not modified.
    X : array-like of shape (n_samples, n_tokens, n_features) or flattened
    y : array-like of shape (n_samples,)
    alphas : int or array-like, default=10
        Explicit values (fitted in decreasing order), or the number of values of
        :func:`alpha_grid` from ``alpha_max_`` of ``(X, y)``.
    eps : float, default=1e-3
        Smallest over largest alpha when ``alphas`` is an integer.
    sample_weight : array-like of shape (n_samples,), default=None
    scorer : callable or None
        ``scorer(estimator, X_test, y_test)``, evaluated after every fit.
    X_test, y_test : held-out data for ``scorer``.
    return_coefs : bool, default=False
        Also return every fit's ``coef_`` and ``intercept_``.

    Returns
    -------
    path : dict
        ``alphas`` (decreasing), ``n_iter``, ``fit_time`` (seconds), ``objective``,
        ``dual_gap``, ``converged``, ``scores`` (when ``scorer`` is given), ``coefs`` and
        ``intercepts`` (when ``return_coefs``), and ``estimator``: the head fitted at the
        last (smallest) alpha.
    """
    head = clone(estimator).set_params(warm_start=True)
    if isinstance(alphas, Integral):
        amax = _alpha_max(head, X, y, sample_weight)
        if amax <= 0:
            raise ValueError(
                "alpha_max of this data is 0: the all-zero model is optimal for every "
                "alpha (constant or all-zero tokens?), so there is no path to fit. Fit the "
                "head once, or pass explicit positive alphas."
            )
        alphas = alpha_grid(amax, alphas, eps)
    else:
        alphas = np.sort(np.asarray(alphas, dtype=np.float64))[::-1]
    out = {k: [] for k in ("n_iter", "fit_time", "objective", "dual_gap", "converged")}
    out.update(scores=[], coefs=[], intercepts=[])
    previous = []  # the last three solutions and their log-alphas
    for a in alphas:
        head.set_params(alpha=float(a))
        log_a = math.log(a) if a > 0 else None  # a non-positive alpha fails in fit
        if len(previous) >= 2 and log_a is not None:
            head._warm_candidates = _predict_on_path(previous, log_a)
        t0 = time.perf_counter()
        converged = _fit_quietly(head, X, y, sample_weight)
        out["fit_time"].append(time.perf_counter() - t0)
        out["n_iter"].append(head.n_iter_)
        out["objective"].append(head.objective_)
        out["dual_gap"].append(head.dual_gap_)
        out["converged"].append(converged)
        if log_a is not None:
            previous = [*previous, (log_a, head.coef_.copy(), head.intercept_.copy())][-3:]
        if scorer is not None:
            out["scores"].append(scorer(head, X_test, y_test))
        if return_coefs:
            out["coefs"].append(head.coef_.copy())
            out["intercepts"].append(head.intercept_.copy())
    release(head)  # a Dask fit's chunks were kept on the workers along the path only
    path = {k: np.asarray(v) for k, v in out.items() if len(v) or k in ("n_iter",)}
    path["alphas"] = np.asarray(alphas, dtype=np.float64)
    path["estimator"] = head
    return path


def _predict_on_path(previous, log_alpha):
    """Polynomial predictors of the next solution from the last ones on the path.

    A warm start from the previous solution alone is a zeroth-order guess whose error is
    of the order of the step in ``log(alpha)``; extrapolating the last two (secant) or
    three (quadratic) solutions in ``log(alpha)`` removes the first- or second-order
    terms. The head starts from whichever candidate, the previous solution included, has
    the lowest objective, so a kink in the path (a block changing rank) costs nothing.
    """
    out = []
    for k in (2, 3)[: len(previous) - 1]:
        pts = previous[-k:]
        logs = [p[0] for p in pts]
        # Lagrange weights of the k points at log_alpha
        weights = []
        for i, li in enumerate(logs):
            wi = 1.0
            for j, lj in enumerate(logs):
                if j != i:
                    wi *= (log_alpha - lj) / (li - lj) if li != lj else 0.0
            weights.append(wi)
        out.append((
            sum(wi * p[1] for wi, p in zip(weights, pts)),
            sum(wi * p[2] for wi, p in zip(weights, pts)),
        ))
    return out


def _positive_classes(template, y, sw, train, k):
    """The training indices of split ``k`` whose class has positive total weight there.

    A class whose weight is zero in one split (``sample_weight`` or ``class_weight``
    zeroes its few samples there) is left out of that split's fits, as
    :class:`~sklearn.linear_model.LogisticRegressionCV` fits each split on the classes it
    has; fewer than 2 such classes is an error naming the split.
    """
    sw_train = np.ones(len(train)) if sw is None else sw[train]
    if template.class_weight is not None:
        from sklearn.utils.class_weight import compute_sample_weight

        sw_train = sw_train * compute_sample_weight(template.class_weight, y[train])
    classes, enc = np.unique(y[train], return_inverse=True)
    totals = np.bincount(enc, weights=sw_train, minlength=classes.shape[0])
    keep = totals > 0
    if keep.all():
        return train
    if np.count_nonzero(keep) < 2:
        raise ValueError(
            f"cross-validation split {k}: the training part has positive total weight in "
            f"{np.count_nonzero(keep)} class(es) only ({[c.item() if isinstance(c, np.generic) else c for c in classes[keep]]}); "
            "each split needs 2. Use fewer folds (cv), a stratified splitter, or give "
            "those samples positive sample_weight."
        )
    return train[keep[enc]]


def _path_on_split(template, X, y, sw, train, test, alphas, scorer, keep_coefs, k=0):
    train = _positive_classes(template, y, sw, train, k)
    path = regularization_path(
        template,
        X[train],
        y[train],
        alphas,
        sample_weight=None if sw is None else sw[train],
        scorer=scorer,
        X_test=X[test],
        y_test=y[test],
        return_coefs=keep_coefs,
    )
    path.pop("estimator")
    path["classes"] = np.unique(y[train])
    return path


def _zero_model_on_split(template, X, y, sw, train, test, alphas, scorer, k):
    """A split when ``alpha_max`` is 0: one fit, the same model (and score) at every alpha."""
    train = _positive_classes(template, y, sw, train, k)
    head = clone(template).set_params(alpha=None)
    t0 = time.perf_counter()
    converged = _fit_quietly(head, X[train], y[train], None if sw is None else sw[train])
    seconds = time.perf_counter() - t0
    m = len(alphas)
    return {
        "n_iter": np.full(m, head.n_iter_),
        "fit_time": np.full(m, seconds),
        "objective": np.full(m, head.objective_),
        "dual_gap": np.full(m, head.dual_gap_),
        "converged": np.full(m, converged),
        "scores": np.full(m, scorer(head, X[test], y[test])),
        "classes": np.unique(y[train]),
    }


def _has_log_loss(est):
    if est.loss != "log_loss":
        raise AttributeError("predict_proba is only available with loss='log_loss'.")
    return True


def _refitted(est):
    if not est.refit:
        raise AttributeError(
            "This method needs refit=True: with refit=False no model is fitted on the "
            "whole data (use cv_results_ and alpha_ to fit one)."
        )
    return True


class BaseConvexHeadCV(ClassifierMixin, TransformerMixin, BaseEstimator):
    """Base of the ``*CV`` estimators (not for direct use; see :func:`make_cv_estimator`).

    Subclasses set ``_head_class``; their constructor takes the path and
    cross-validation parameters below plus every parameter of the head except ``alpha``,
    ``alpha_ratio`` and ``warm_start``.
    """

    _head_class = None
    _cv_param_names = ("alphas", "eps", "cv", "scoring", "n_jobs", "refit")
    #: head parameters the CV estimators do not take: the path sets the alpha
    _excluded = ("alpha", "alpha_ratio", "warm_start")
    _cv_parameter_constraints: dict = {
        "alphas": [Interval(Integral, 1, None, closed="left"), "array-like"],
        "eps": [Interval(Real, 0, 1, closed="neither")],
        "cv": ["cv_object"],
        "scoring": [str, callable, None],
        "n_jobs": [Integral, None],
        "refit": ["boolean"],
    }

    # ------------------------------------------------------------------ helpers
    def _head_params(self):
        names = [n for n in self._head_class._get_param_names() if n not in self._excluded]
        return {n: getattr(self, n) for n in names}

    def _make_head(self, **extra):
        return self._head_class(**self._head_params(), **extra)

    # ------------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the path on every split, select ``alpha_``, and refit on all the data.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_tokens, n_features) or \
                (n_samples, n_tokens * n_features)
            Token features.
        y : array-like of shape (n_samples,)
            Class labels.
        sample_weight : array-like of shape (n_samples,), default=None
            Passed to every fit (not to the scorer).

        Returns
        -------
        self : object
            The fitted estimator.
        """
        # validate here so that errors name this estimator and come before any fit
        if is_dask_array(X):  # folds are index selections of the Dask array
            X3, y, sw = _check_dask_cv_input(self, X, y, sample_weight)
        else:
            X3, y = check_tokens(self, X, y, reset=True, n_tokens=self.n_tokens, require_y=True)
            sw = None
            if sample_weight is not None:
                sw = _check_sample_weight(
                    sample_weight, X3.reshape(X3.shape[0], -1), ensure_non_negative=True
                )
        n = X3.shape[0]
        template = self._make_head()
        template.set_params(n_tokens=None)  # X3 is 3-D from here on
        scorer = check_scoring(template, scoring=self.scoring)

        amax = None
        if isinstance(self.alphas, Integral):
            # from the gradient at zero of the whole set's program: no fit, no overflow
            amax = _alpha_max(template, X3, y, sw)
            alphas = alpha_grid(amax, self.alphas, self.eps)
        else:
            alphas = np.asarray(self.alphas, dtype=np.float64).reshape(-1)
            if alphas.size == 0 or not np.all(np.isfinite(alphas)) or np.any(alphas <= 0):
                raise ValueError(
                    "alphas must be a positive integer (grid size) or a non-empty list of "
                    f"positive finite values; got {self.alphas!r}."
                )
            alphas = np.sort(alphas)[::-1]

        cv = check_cv(self.cv, y, classifier=True)
        # the splitters read n_samples (and y, groups) only: a placeholder stands for a Dask X
        splits = list(cv.split(np.zeros((n, 1)) if is_dask_array(X3) else X3.reshape(n, -1), y))
        keep_coefs = bool(self.refit)
        if amax == 0:
            # the all-zero model is optimal at every alpha (constant tokens): no path, one
            # fit per split (0 iterations), as the head itself does with alpha=None
            paths = [
                _zero_model_on_split(template, X3, y, sw, train, test, alphas, scorer, k)
                for k, (train, test) in enumerate(splits)
            ]
        else:
            paths = Parallel(n_jobs=self.n_jobs)(
                delayed(_path_on_split)(
                    template, X3, y, sw, train, test, alphas, scorer, keep_coefs, k
                )
                for k, (train, test) in enumerate(splits)
            )

        self.alphas_ = alphas
        self.scores_ = np.stack([p["scores"] for p in paths]).astype(np.float64)
        self.n_iter_path_ = np.stack([p["n_iter"] for p in paths])
        fit_times = np.stack([p["fit_time"] for p in paths])
        converged = np.stack([p["converged"] for p in paths])
        mean = np.average(self.scores_, axis=0)
        std = np.sqrt(np.average((self.scores_ - mean) ** 2, axis=0))
        rank = _rank_min(-mean)
        self.best_index_ = int(np.argmin(rank))
        self.alpha_ = float(alphas[self.best_index_])
        self.best_score_ = float(mean[self.best_index_])
        results = {
            "param_alpha": alphas.copy(),
            "params": [{"alpha": float(a)} for a in alphas],
        }
        for k in range(len(paths)):
            results[f"split{k}_test_score"] = self.scores_[k]
        results.update(
            mean_test_score=mean,
            std_test_score=std,
            rank_test_score=rank,
            mean_fit_time=fit_times.mean(axis=0),
            std_fit_time=fit_times.std(axis=0),
            mean_n_iter=self.n_iter_path_.mean(axis=0),
        )
        self.cv_results_ = results
        if not converged.all():
            bad = np.flatnonzero(~converged.all(axis=0))
            warnings.warn(
                f"{type(self).__name__}: {int((~converged).sum())} of {converged.size} path "
                f"fits did not reach tol={self.tol:g} in max_iter={self.max_iter} (alphas "
                f"{', '.join(f'{alphas[i]:.3g}' for i in bad)}). Increase max_iter, loosen "
                "tol, or use larger alphas (a larger eps).",
                ConvergenceWarning,
                stacklevel=2,
            )

        if self.refit:
            best = clone(template).set_params(warm_start=True)
            if amax == 0:
                best.set_params(alpha=None)  # alpha_ = alpha_ratio * 0: the zero model
            else:
                best.set_params(alpha=self.alpha_)
            classes = np.unique(y)
            same = [
                p for p in paths
                if "coefs" in p and np.array_equal(p["classes"], classes)
            ]
            if same:
                # start from the splits' mean solution (with the whole set's gates)
                best.classes_ = classes
                best.coef_ = np.mean([p["coefs"][self.best_index_] for p in same], axis=0)
                best.intercept_ = np.mean(
                    [p["intercepts"][self.best_index_] for p in same], axis=0
                )
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_ZERO_MODEL_MSG, category=UserWarning)
                best.fit(X3, y, sample_weight=sw)
            release(best)  # a Dask fit's chunks are not kept on the workers
            self.refit_time_ = time.perf_counter() - t0
            self.refit_n_iter_ = int(best.n_iter_)
            best.set_params(warm_start=False)
            best.n_features_in_ = self.n_features_in_
            best.token_shape_ = self.token_shape_
            self.best_estimator_ = best
            for attr in (
                "classes_", "coef_", "intercept_", "gates_", "objective_",
                "null_objective_", "dual_gap_", "convergence_", "device_",
            ):
                setattr(self, attr, getattr(best, attr))
        else:
            self.classes_ = np.unique(y)
            self.refit_n_iter_ = 0
        self.alpha_max_ = (
            float(amax) if amax is not None else _alpha_max(template, X3, y, sw)
        )
        # all the solver iterations this fit ran: the paths of every split, and the refit
        self.n_iter_ = int(self.n_iter_path_.sum()) + self.refit_n_iter_
        return self

    # ------------------------------------------------------------------ predict
    @available_if(_refitted)
    def decision_function(self, X):
        """Decision function of the refitted head (see the head's method)."""
        check_is_fitted(self)
        return self.best_estimator_.decision_function(self._checked_tokens(X))

    @available_if(_refitted)
    def predict(self, X):
        """Class labels predicted by the refitted head."""
        check_is_fitted(self)
        return self.best_estimator_.predict(self._checked_tokens(X))

    @available_if(lambda est: _refitted(est) and _has_log_loss(est))
    def predict_proba(self, X):
        """Class probabilities of the refitted head (``loss='log_loss'``)."""
        check_is_fitted(self)
        return self.best_estimator_.predict_proba(self._checked_tokens(X))

    @available_if(lambda est: _refitted(est) and _has_log_loss(est))
    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`."""
        check_is_fitted(self)
        return self.best_estimator_.predict_log_proba(self._checked_tokens(X))

    @available_if(_refitted)
    def transform(self, X):
        """Token cluster assignments of the refitted head, shape ``(n_samples, n_tokens)``."""
        check_is_fitted(self)
        return self.best_estimator_.transform(self._checked_tokens(X))

    def _checked_tokens(self, X):
        """``X`` validated against this estimator (its ``n_features_in_`` and token
        shape), as the 3-D tokens the refitted head takes."""
        if is_dask_array(X):
            return check_dask_tokens(self, X, reset=False)
        return check_tokens(self, X, reset=False)

    def get_feature_names_out(self, input_features=None):
        """One output name per token, as the head's."""
        check_is_fitted(self)
        prefix = type(self).__name__.lower()
        return np.asarray([f"{prefix}_token{t}" for t in range(self.token_shape_[0])], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = []
        return tags


def _check_dask_cv_input(est, X, y, sample_weight):
    """The checks of a ``*CV`` fit on a Dask ``X`` (metadata only; the values are checked
    by the first fit's reduction): 3-D ``X``, NumPy ``y`` and ``sample_weight``."""
    from ._dask import small_array

    if y is None:
        raise ValueError(
            f"{type(est).__name__} requires y to be passed, but the target y is None."
        )
    X3 = check_dask_tokens(est, X, reset=True, n_tokens=est.n_tokens)
    n = X3.shape[0]
    y = small_array(y, "y", n)
    sw = small_array(sample_weight, "sample_weight", n)
    if sw is not None:
        sw = _check_sample_weight(sw, np.empty((n, 0)), ensure_non_negative=True)
    return X3, y, sw


def _rank_min(values):
    """``scipy.stats.rankdata(values, method='min')`` (what GridSearchCV ranks with)."""
    from scipy.stats import rankdata

    return rankdata(values, method="min").astype(np.int32)


_CV_DOC = """{head} with the regularisation strength chosen by cross-validation.

    Fits a warm-started path of ``alphas`` on every cross-validation split, picks the
    alpha with the best mean held-out score and refits :class:`{module}.{head}` on all
    the data (see :mod:`skconvexattn.model_selection`).

    Parameters
    ----------
    alphas : int or array-like, default=10
        Number of values on a log grid of ratios of ``alpha_max_`` (of the whole training
        set) from 1 down to ``eps``, i.e. ``alpha_ratio`` values ``logspace(0, log10(eps),
        alphas)`` (the scale of the heads' ``alpha_ratio``), or explicit positive
        absolute values.
    eps : float, default=1e-3
        Smallest ``alpha_ratio`` of the grid (smallest over largest alpha).
    cv : int, cross-validation generator or iterable, default=None
        As in :class:`~sklearn.model_selection.GridSearchCV` (``None``: 5-fold stratified).
    scoring : str, callable or None, default=None
        Scorer of the held-out splits (``None``: the head's ``score``, accuracy).
    n_jobs : int or None, default=None
        Splits fitted in parallel (joblib).
    refit : bool, default=True
        Refit the head on all the data at ``alpha_`` (needed to predict).
    **head_params
        Every other parameter of :class:`{module}.{head}` ({names}).

    Attributes
    ----------
    alphas_ : ndarray of shape (n_alphas,)
        The path, decreasing.
    alpha_ : float
        Selected absolute alpha: the first (largest) with the best mean score
        (``alpha_ / alpha_max_`` is its ``alpha_ratio``).
    alpha_max_ : float
        ``alpha_max`` of the whole training set (from the gradient at zero).
    scores_ : ndarray of shape (n_splits, n_alphas)
        Held-out score of every split and alpha.
    n_iter_path_ : ndarray of shape (n_splits, n_alphas)
        Solver iterations of every path fit (warm-started; 0 where the start point was
        already optimal, e.g. the all-zero model at ``alpha_max_``).
    n_iter_ : int
        All the solver iterations of the fit: the paths of every split and the refit.
    refit_n_iter_ : int
        Iterations of the refit on all the data (0 with ``refit=False``).
    cv_results_ : dict of ndarray
        ``param_alpha``, ``params``, ``split<k>_test_score``, ``mean_test_score``,
        ``std_test_score``, ``rank_test_score`` (as GridSearchCV), ``mean_fit_time``,
        ``std_fit_time``, ``mean_n_iter``.
    best_index_ : int
    best_score_ : float
    best_estimator_ : {head}
        The head refitted on all the data (``refit=True``).
    refit_time_ : float
    classes_, coef_, intercept_, gates_, objective_, null_objective_, dual_gap_, convergence_, device_
        Those of ``best_estimator_`` (``null_objective_``: the loss of the intercept-only
        model, the scale of ``tol`` by default).
    n_features_in_ : int
    token_shape_ : tuple (n_tokens, n_features)
    """


def make_cv_estimator(head_class, name=None):
    """Build the cross-validated ``*CV`` class of a convex head class.

    Parameters
    ----------
    head_class : subclass of :class:`~skconvexattn._base.BaseConvexHead`
    name : str, default=None
        Class name (default: the head's name plus ``"CV"``).

    Returns
    -------
    cls : type
        A subclass of :class:`BaseConvexHeadCV` whose constructor takes ``alphas``,
        ``eps``, ``cv``, ``scoring``, ``n_jobs``, ``refit`` and the head's parameters
        except ``alpha``, ``alpha_ratio`` and ``warm_start`` (all keyword arguments with
        the head's defaults).
    """
    name = name or head_class.__name__ + "CV"
    head_sig = inspect.signature(head_class.__init__)
    head_params = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in head_sig.parameters.values()
        if p.name not in ("self", *BaseConvexHeadCV._excluded)
    ]
    P = inspect.Parameter
    params = [
        P("self", P.POSITIONAL_OR_KEYWORD),
        P("alphas", P.POSITIONAL_OR_KEYWORD, default=10),
        P("eps", P.KEYWORD_ONLY, default=1e-3),
        P("cv", P.KEYWORD_ONLY, default=None),
        P("scoring", P.KEYWORD_ONLY, default=None),
        P("n_jobs", P.KEYWORD_ONLY, default=None),
        P("refit", P.KEYWORD_ONLY, default=True),
        *head_params,
    ]
    __init__ = make_init(inspect.Signature(params), name)
    constraints = {
        **{
            k: v
            for k, v in head_class._parameter_constraints.items()
            if k not in BaseConvexHeadCV._excluded
        },
        **BaseConvexHeadCV._cv_parameter_constraints,
    }
    doc = _CV_DOC.format(
        head=head_class.__name__,
        module="skconvexattn",
        names=", ".join(p.name for p in head_params),
    )
    cls = type(
        name,
        (BaseConvexHeadCV,),
        {
            "__init__": __init__,
            "__doc__": doc,
            "__module__": __name__,
            "__qualname__": name,
            "_head_class": head_class,
            "_parameter_constraints": constraints,
        },
    )
    return cls


_CV_CLASSES = {}


def cv_estimator(head):
    """The ``*CV`` class of a registered head (its name or estimator class), built once
    by :func:`make_cv_estimator`.

    Parameters
    ----------
    head : str or type
        A name of the registry :mod:`skconvexattn.heads` (``"attention"``) or a registered
        estimator class.

    Returns
    -------
    cls : type
        The subclass of :class:`BaseConvexHeadCV` named after the head plus ``CV``,
        importable from this module under that name.
    """
    estimator = get_head(head).estimator
    cls = _CV_CLASSES.get(estimator)
    if cls is None:
        cls = _CV_CLASSES[estimator] = make_cv_estimator(estimator)
    return cls


def __getattr__(name):
    # the *CV class of every registered head, also of one registered after this import
    for spec in registered_heads():
        if spec.estimator.__name__ + "CV" == name:
            return cv_estimator(spec.estimator)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


for _spec in registered_heads():  # the built-in heads: plain module attributes
    globals()[_spec.estimator.__name__ + "CV"] = cv_estimator(_spec.estimator)
    __all__.append(_spec.estimator.__name__ + "CV")
del _spec
