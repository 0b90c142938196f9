"""The shared base of every convex head: the scikit-learn contract around the solver.

A head subclass supplies only what is specific to its architecture:

* ``_block_shape(s, d)`` -> ``(P, R, L)``: blocks, rows and columns-per-class of ``Z``;
* ``_draw_gates(rng, mu, sigma, s, d)`` -> dict of NumPy arrays (empty for ``linear``);
* ``_feature_map(gates, xp)`` -> callable ``X (m, s, d) -> Phi (m, P, R, L)``;
* ``_work_per_sample(s, d)``: scratch floats the feature map needs per sample;
* ``_token_clusters(X)``: the ``transform`` output, and ``_token_cluster_info()``: what
  it is read from (:meth:`token_cluster_info`);
* ``_to_nonconvex()``: the recovered network (:mod:`skconvexattn.nonconvex`);
* optionally ``_init_gates(rng, X, w, mu, sigma)``: gates that look at the training tokens;
* ``_head_name`` and ``_reduce_hint`` for messages.

Everything else (validation, devices, memory planning, the solver, the fitted
attributes, predictions) lives here once.
"""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted

from ._backend import resolve_device, to_numpy
from ._datafits import get_datafit
from ._gates import token_moments
from ._operator import LiftedOperator, plan_memory
from ._penalty import BlockNuclearNorm
from ._solver import alpha_max, fista, prior_and_start
from ._validation import check_tokens

__all__ = ["BaseConvexHead"]

# the factored path keeps ``coef_`` (the blocks ``U V^T``) only up to this many weights;
# beyond, the fitted heads live in ``factors_`` alone
_MATERIALISE_MAX = 2**24


def _has_log_loss(est):
    if est.loss != "log_loss":
        raise AttributeError(
            "predict_proba is only available with loss='log_loss'; the squared-error head "
            "gives scores, not probabilities (use decision_function)."
        )
    return True


class BaseConvexHead(ClassifierMixin, TransformerMixin, BaseEstimator):
    """Base class of the convex attention-head classifiers (not for direct use)."""

    _parameter_constraints: dict = {
        "alpha": [Interval(Real, 0, None, closed="neither")],
        "activation": [StrOptions({"linear", "gated_relu"})],
        "n_gates": [Interval(Integral, 1, None, closed="left")],
        "loss": [StrOptions({"log_loss", "squared_error"})],
        "fit_intercept": ["boolean"],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "tol_scale": [StrOptions({"objective", "null"})],
        "device": [StrOptions({"auto", "cpu", "cuda"})],
        "n_tokens": [Interval(Integral, 1, None, closed="left"), None],
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "memory_budget": [Interval(Real, 0, None, closed="neither")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
    }

    _head_name = "convex head"
    _reduce_hint = "n_features (e.g. with TokenPCA) or n_gates"

    # ------------------------------------------------------------------ hooks
    def _n_blocks(self):
        return 1 if self.activation == "linear" else self.n_gates

    def _block_shape(self, s, d):  # pragma: no cover - abstract
        raise NotImplementedError

    def _draw_gates(self, rng, mu, sigma, s, d):  # pragma: no cover - abstract
        raise NotImplementedError

    def _feature_map(self, gates, xp):  # pragma: no cover - abstract
        raise NotImplementedError

    def _operator(self, gates, X, xp, block_shape, n_outputs, plan, center=None):
        """The lifted operator of ``X``: materialised or chunked features (the default).

        Heads with a cheaper matrix-free form for some shapes override this.
        """
        return LiftedOperator(
            self._feature_map(gates, xp), X, block_shape, plan.chunk_rows, center=center
        )

    def _work_per_sample(self, s, d):
        P, R, L = self._block_shape(s, d)
        return 2 * P * R * L

    def _token_clusters(self, X):  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_head_params(self, s, d):
        """Head-specific checks of parameters against the data shape."""

    def _init_gates(self, rng, X, w, mu, sigma):
        """The gates of a fit; heads whose gates look at the training tokens (``X`` of
        shape ``(n, s, d)``, weights ``w`` summing to one) override this."""
        return self._draw_gates(rng, mu, sigma, X.shape[1], X.shape[2])

    # ------------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the head by solving its convex program to a certified duality gap.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_tokens, n_features) or \
                (n_samples, n_tokens * n_features)
            Token features; a 2-D ``X`` is cut into ``n_tokens`` tokens per row.
        y : array-like of shape (n_samples,)
            Class labels.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights; the loss is their weighted mean.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        X3, y = check_tokens(self, X, y, reset=True, n_tokens=self.n_tokens, require_y=True)
        check_classification_targets(y)
        classes, y_enc = np.unique(y, return_inverse=True)
        if classes.shape[0] < 2:
            raise ValueError(
                f"y has only one class ({classes[0]!r}); a classifier needs samples of at "
                "least 2 classes."
            )
        sw = _check_sample_weight(sample_weight, X3.reshape(X3.shape[0], -1), ensure_non_negative=True)
        if self.class_weight is not None:
            sw = sw * compute_sample_weight(self.class_weight, y)
        class_totals = np.bincount(y_enc, weights=sw, minlength=classes.shape[0])
        if np.count_nonzero(class_totals > 0) < 2:
            raise ValueError(
                "sample_weight leaves only one class with positive total weight; a "
                "classifier needs at least 2 classes with positive weight."
            )
        if np.any(class_totals <= 0):
            empty = classes[class_totals <= 0]
            raise ValueError(
                f"class(es) {list(empty)} have zero total sample_weight; drop those samples "
                "or give them positive weight."
            )
        n, s, d = X3.shape
        self._check_head_params(s, d)
        backend = resolve_device(self.device)
        dtype = X3.dtype
        P, R, L = self._block_shape(s, d)
        c = classes.shape[0]
        if self._choose_solver(n, s, d, c, dtype) == "factored":
            return self._fit_factored(X3, y_enc, classes, sw, backend)
        plan = plan_memory(
            n,
            P * R * L,
            P * R * L * c,
            dtype.itemsize,
            self._work_per_sample(s, d),
            self.memory_budget,
            type(self).__name__,
            self._reduce_hint,
        )

        warm = (
            self.warm_start
            and hasattr(self, "coef_")
            and self.coef_.shape == (P, R, L * c)
            and np.array_equal(getattr(self, "classes_", None), classes)
        )
        w = sw / sw.sum()
        if not warm:
            rng = check_random_state(self.random_state)
            mu, sigma = token_moments(X3, w)
            self.gates_ = self._init_gates(rng, X3, w, mu, sigma)
        self.classes_ = classes

        xp = backend.xp
        Xd = backend.asarray(X3)
        Y = np.zeros((n, c), dtype=dtype)
        Y[np.arange(n), y_enc] = 1.0
        Yd = backend.asarray(Y)
        wd = backend.asarray(w.astype(dtype))
        gates = {k: backend.asarray(v.astype(dtype)) for k, v in self.gates_.items()}
        op = self._operator(gates, Xd, xp, (P, R, L), c, plan, wd if self.fit_intercept else None)
        datafit = get_datafit(self.loss)

        amax, grad_at_zero = alpha_max(op, datafit, Yd, wd, self.fit_intercept)
        amax = float(to_numpy(amax))
        self.alpha_max_ = amax
        if self.alpha >= amax:
            warnings.warn(
                f"alpha={self.alpha:g} >= alpha_max_={amax:.4g}: the solution is the all-zero "
                "model (intercept only). Use a smaller alpha, e.g. a fraction of alpha_max_.",
                UserWarning,
                stacklevel=2,
            )
        coef_init = intercept_init = step_init = None
        # a path predictor (see model_selection.regularization_path): used only when its
        # objective beats the previous solution's
        predicted = self.__dict__.pop("_warm_candidates", ())
        if warm:
            candidates = [(self.coef_, self.intercept_)]
            candidates += [p for p in predicted if p[0].shape == self.coef_.shape]
            best = math.inf
            for coef, intercept in candidates:
                c_init = backend.asarray(coef.astype(dtype))
                b_init = backend.asarray(intercept.astype(dtype)) + op.intercept_shift(c_init)
                if coef_init is None:  # the previous solution, unless beaten below
                    coef_init, intercept_init = c_init, b_init
                if len(candidates) == 1:
                    break
                value = float(to_numpy(
                    datafit.value(op.forward(c_init) + b_init[None, :], Yd, wd)
                    + self.alpha * BlockNuclearNorm().value(c_init)
                ))
                if value < best:  # a NaN value is never chosen
                    best, coef_init, intercept_init = value, c_init, b_init
            step_init = getattr(self, "_solver_step", None)
        res = fista(
            op,
            datafit,
            Yd,
            wd,
            float(self.alpha),
            fit_intercept=self.fit_intercept,
            max_iter=self.max_iter,
            tol=self.tol,
            tol_scale=self._tol_scale(),
            coef_init=coef_init,
            intercept_init=intercept_init,
            step_init=step_init,
            grad_at_zero=grad_at_zero,
            verbose=self.verbose,
            warn=False,
        )
        if not res.converged:
            self._warn_not_converged(res)
        self.__dict__.pop("factors_", None)
        self.__dict__.pop("factor_singular_values_", None)
        self.solver_ = "fista"
        self.null_objective_ = res.null_objective
        self.coef_ = to_numpy(res.coef)
        self.intercept_ = to_numpy(res.intercept - op.intercept_shift(res.coef))
        self.n_iter_ = res.n_iter
        self._solver_step = res.step_size  # where a warm-started fit begins its line search
        self.dual_gap_ = res.dual_gap
        self.objective_ = res.objective
        self.convergence_ = res.history
        self.device_ = backend.name
        self.memory_plan_ = getattr(op, "plan_name", None) or (
            "materialised" if plan.materialised else f"chunks of {plan.chunk_rows}"
        )
        return self

    # ------------------------------------------------------------------ factored path
    def _tol_scale(self):
        return getattr(self, "tol_scale", "objective")

    def _warn_not_converged(self, res):
        scale = res.null_objective if self._tol_scale() == "null" else abs(res.objective)
        warnings.warn(
            f"{type(self).__name__} did not reach tol={self.tol:g} in "
            f"max_iter={self.max_iter} iterations (relative duality gap "
            f"{res.dual_gap / max(scale, 1e-300):.2e}, tol_scale={self._tol_scale()!r}). "
            "Increase max_iter, loosen tol, or increase alpha.",
            ConvergenceWarning,
            stacklevel=3,
        )

    def _factor_operator(self, gates, X, chunk_rows):  # pragma: no cover - hook
        """The matrix-free operator on factors (:mod:`skconvexattn._factored_ops`) for
        heads whose blocks are products of two weight matrices; ``None`` otherwise."""
        return None

    def _factor_a_shape(self, s, d):  # pragma: no cover - hook
        """Shape of one head's first-layer weight on the factored path."""
        return None

    def _factor_scratch(self, s, d, c, r):
        """Floats of scratch memory per sample of one factored product with ``r`` heads."""
        return 0

    def _choose_solver(self, n, s, d, c, dtype):
        """``"fista"`` (lifted features) or ``"factored"``, from the ``solver`` parameter.

        ``"auto"`` (the cost model, see ``docs/factored.rst``) takes the factored path when
        the lifted features would not be kept in memory (FISTA would recompute them at
        every product, or could not run at all); otherwise FISTA, whose iterations are
        cheap once the features are materialised.
        """
        solver = getattr(self, "solver", "fista")
        if solver != "auto":
            return solver
        P, R, L = self._block_shape(s, d)
        try:
            plan = plan_memory(
                n, P * R * L, P * R * L * c, np.dtype(dtype).itemsize,
                self._work_per_sample(s, d), self.memory_budget, type(self).__name__,
                self._reduce_hint,
            )
        except ValueError:
            return "factored"
        return "fista" if plan.materialised else "factored"

    def _fit_factored(self, X3, y_enc, classes, sw, backend):
        """Fit on factors (:func:`~skconvexattn._factored.factored_solve`): L-BFGS on the
        heads with rank growth and the same duality-gap certificate as FISTA."""
        from ._factored import balanced_heads, block_spectra, factored_solve
        from ._factored_ops import chunk_rows_for

        n, s, d = X3.shape
        c = classes.shape[0]
        dtype = X3.dtype
        xp = backend.xp
        w = sw / sw.sum()
        prev = self.__dict__.get("factors_")
        warm = (
            self.warm_start
            and prev is not None
            and prev["A"].shape[2:] == self._factor_a_shape(s, d)
            and prev["B"].shape[2:] == (d, c)
            and np.array_equal(getattr(self, "classes_", None), classes)
        )
        if not warm:
            rng = check_random_state(self.random_state)
            mu, sigma = token_moments(X3, w)
            self.gates_ = self._init_gates(rng, X3, w, mu, sigma)
        self.classes_ = classes
        Xd = backend.asarray(X3)
        Y = np.zeros((n, c), dtype=dtype)
        Y[np.arange(n), y_enc] = 1.0
        Yd = backend.asarray(Y)
        wd = backend.asarray(w.astype(dtype))
        gates = {k: backend.asarray(v.astype(dtype)) for k, v in self.gates_.items()}
        budget = self.memory_budget * 1024**3 / 4
        r_guess = 32
        chunk = chunk_rows_for(n, self._factor_scratch(s, d, c, r_guess), dtype.itemsize, budget)
        op = self._factor_operator(gates, Xd, chunk)
        datafit = get_datafit(self.loss)
        prior, b0 = prior_and_start(datafit, Yd, wd, self.fit_intercept)
        T0 = wd[:, None] * datafit.raw_gradient(xp.zeros_like(Yd) + b0[None, :], Yd)
        sig0 = block_spectra(op, T0, n_steps=40, rng=np.random.default_rng(0))[0]
        self.alpha_max_ = float(sig0.max())
        if self.alpha >= self.alpha_max_:
            warnings.warn(
                f"alpha={self.alpha:g} >= alpha_max_={self.alpha_max_:.4g}: the solution is "
                "the all-zero model (intercept only). Use a smaller alpha, e.g. a fraction of "
                "alpha_max_.",
                UserWarning,
                stacklevel=3,
            )
        A0 = B0 = b_init = None
        if warm:
            A0 = backend.asarray(prev["A"].astype(dtype))
            B0 = backend.asarray(prev["B"].astype(dtype))
            b_init = backend.asarray(self.intercept_.astype(dtype))
        res = factored_solve(
            op, datafit, Yd, wd, float(self.alpha), fit_intercept=self.fit_intercept,
            max_iter=self.max_iter, tol=self.tol, tol_scale=self._tol_scale(),
            A_init=A0, B_init=B0, intercept_init=b_init,
            max_time=getattr(self, "max_time", None), verbose=self.verbose, warn=False,
        )
        if not res.converged:
            self._warn_not_converged(res)
        A2, B2, S = balanced_heads(res.A, res.B)
        self.factors_ = {"A": A2.astype(dtype), "B": B2.astype(dtype)}
        self.factor_singular_values_ = S
        P, R, L = self._block_shape(s, d)
        self.__dict__.pop("coef_", None)
        if P * R * L * c <= _MATERIALISE_MAX:
            U = A2.reshape(P, A2.shape[1], R)
            V = B2.reshape(P, B2.shape[1], L * c)
            self.coef_ = np.matmul(np.transpose(U, (0, 2, 1)), V).astype(dtype)
        self.intercept_ = to_numpy(res.intercept)
        self.n_iter_ = res.n_iter
        self.dual_gap_ = res.dual_gap
        self.objective_ = res.objective
        self.null_objective_ = res.null_objective
        self.convergence_ = res.history
        self.device_ = backend.name
        self.solver_ = "factored"
        self.memory_plan_ = f"factored, chunks of {op.chunk_rows}"
        return self

    def _factor_logits(self, X3):
        backend = resolve_device(self.device, for_predict=True)
        n, s, d = X3.shape
        dtype = X3.dtype
        c = self.classes_.shape[0]
        gates = {k: backend.asarray(v.astype(dtype)) for k, v in self.gates_.items()}
        from ._factored_ops import chunk_rows_for

        r = self.factors_["A"].shape[1]
        chunk = chunk_rows_for(
            n, self._factor_scratch(s, d, c, r), dtype.itemsize, self.memory_budget * 1024**3 / 4
        )
        op = self._factor_operator(gates, backend.asarray(X3), chunk)
        O = op.forward(
            backend.asarray(self.factors_["A"].astype(dtype)),
            backend.asarray(self.factors_["B"].astype(dtype)),
        )
        return to_numpy(O + backend.asarray(self.intercept_.astype(dtype))[None, :])

    # ------------------------------------------------------------------ predict
    def _logits(self, X3):
        if "factors_" in self.__dict__:
            return self._factor_logits(X3)
        backend = resolve_device(self.device, for_predict=True)
        xp = backend.xp
        n, s, d = X3.shape
        P, R, L = self.coef_.shape[0], self.coef_.shape[1], self._block_shape(s, d)[2]
        dtype = X3.dtype
        plan = plan_memory(
            n,
            P * R * L,
            self.coef_.size,
            dtype.itemsize,
            self._work_per_sample(s, d),
            self.memory_budget,
            type(self).__name__,
            self._reduce_hint,
        )
        gates = {k: backend.asarray(v.astype(dtype)) for k, v in self.gates_.items()}
        op = self._operator(gates, backend.asarray(X3), xp, (P, R, L), self.classes_.shape[0], plan)
        O = op.forward(backend.asarray(self.coef_.astype(dtype)))
        O = O + backend.asarray(self.intercept_.astype(dtype))[None, :]
        return to_numpy(O)

    def decision_function(self, X):
        """Logits of the pooled head (``(n,)`` for two classes: ``o[:, 1] - o[:, 0]``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_tokens, n_features) or flattened
            Token features.

        Returns
        -------
        scores : ndarray of shape (n_samples, n_classes) or (n_samples,)
        """
        check_is_fitted(self)
        O = self._logits(check_tokens(self, X, reset=False))
        if O.shape[1] == 2:
            return O[:, 1] - O[:, 0]
        return O

    def predict(self, X):
        """Predicted class labels.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_tokens, n_features) or flattened
            Token features.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        O = self._logits(check_tokens(self, X, reset=False))
        return self.classes_[np.argmax(O, axis=1)]

    @available_if(_has_log_loss)
    def predict_proba(self, X):
        """Class probabilities (softmax of the logits); needs ``loss='log_loss'``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_tokens, n_features) or flattened
            Token features.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        check_is_fitted(self)
        O = self._logits(check_tokens(self, X, reset=False)).astype(np.float64)
        O = O - O.max(axis=1, keepdims=True)
        E = np.exp(O)
        return E / E.sum(axis=1, keepdims=True)

    @available_if(_has_log_loss)
    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def transform(self, X):
        """Token cluster assignments: integer ids with the same meaning in every sample.

        See the class docstring and ``docs/clusters.rst`` for each head's definition.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_tokens, n_features) or flattened
            Token features.

        Returns
        -------
        clusters : ndarray of shape (n_samples, n_tokens), dtype int64
            ``-1`` for padding tokens (token rows entirely NaN, see ``docs/padding.rst``).
        """
        check_is_fitted(self)
        X3 = check_tokens(self, X, reset=False)
        return np.asarray(self._token_clusters(X3), dtype=np.int64)

    def get_feature_names_out(self, input_features=None):
        """One output name per token: ``<head>_token<t>``."""
        check_is_fitted(self)
        prefix = type(self).__name__.lower()
        return np.asarray([f"{prefix}_token{t}" for t in range(self.token_shape_[0])], dtype=object)

    # ------------------------------------------------------------------ inspection
    def block_norms(self):
        """Nuclear norm of each fitted block (gate): its importance, shape ``(P,)``."""
        check_is_fitted(self)
        if "factor_singular_values_" in self.__dict__:
            return np.asarray(self.factor_singular_values_, dtype=np.float64).sum(axis=1)
        return to_numpy(BlockNuclearNorm().block_norms(np.asarray(self.coef_, dtype=np.float64)))

    def token_cluster_info(self):
        """What ``transform`` assigns token clusters from (see ``docs/clusters.rst``).

        Returns
        -------
        info : :class:`~sklearn.utils.Bunch`
            ``definition`` (a sentence), ``kind`` and the fitted quantities the cluster ids
            are read from: for gated hyperplane heads the active gates in bit order with
            their hyperplanes and importance ``||Z_p||_*``; see each head's Notes.
        """
        check_is_fitted(self)
        return self._token_cluster_info()

    def to_nonconvex(self):
        """The non-convex network recovered from the fitted blocks (SPEC 2.4).

        The compact SVD ``Z_p = sum_j sigma_j u_j v_j^T`` of every block gives one head (or
        neuron) per singular value, ``W_1j = sqrt(sigma_j) u_j``, ``W_2j = sqrt(sigma_j) v_j``
        reshaped to the architecture's weights. The network's own forward pass (written as
        the non-convex architecture, not through lifted features) reproduces
        :meth:`decision_function`, and its weight decay equals ``sum_p ||Z_p||_*``, so its
        objective equals ``objective_``: the convex optimum certified by ``dual_gap_``.

        Returns
        -------
        net : :class:`~skconvexattn.nonconvex.RecoveredNetwork`
            With ``decision_function``, ``objective``, ``weight_decay``, ``n_heads`` and
            ``to_torch()``.
        """
        check_is_fitted(self)
        return self._to_nonconvex()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = []
        return tags


def _active_order(norms, rtol=1e-8):
    """Indices of blocks with a non-negligible nuclear norm, most important first."""
    if norms.size == 0 or norms.max() <= 0:
        return np.zeros(0, dtype=int)
    order = np.argsort(-norms, kind="stable")
    return order[norms[order] > rtol * norms.max()]


def sign_pattern_clusters(sides, norms, max_bits=None):
    """Cluster ids from the gates' sides: bit ``j`` is the side of the ``j``-th most
    important active gate (gates whose block is zero are ignored).

    ``sides`` has shape ``(n, s, P)`` (0/1); returns ``(n, s)`` integers.
    """
    order = _active_order(norms)
    if max_bits is not None:
        order = order[:max_bits]
    if order.size == 0:
        return np.zeros(sides.shape[:2], dtype=np.int64)
    bits = sides[:, :, order].astype(np.int64)
    return bits @ (1 << np.arange(order.size, dtype=np.int64))

