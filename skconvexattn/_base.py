"""The shared base of every convex head: the scikit-learn contract around the solver.

A head subclass supplies only what is specific to its architecture:

* ``_own_params``: its own constructor parameters (name -> default); the ``__init__``, with
  the shared parameters, is generated (:mod:`skconvexattn._params`), and constraints for
  its own parameters go in ``_parameter_constraints``;
* ``_n_convex_blocks()`` when its number of blocks ``P`` is not ``n_gates`` (1 if linear);
* ``_block_shape(s, d)`` -> ``(P, R, L)``: blocks, rows and columns-per-class of ``Z``;
* ``_draw_gates(rng, mu, sigma, s, d)`` -> dict of NumPy arrays (empty for ``linear``);
* ``_feature_map(gates)`` -> callable ``X (m, s, d) -> Phi (m, P, R, L)`` (in the
  namespace of ``X``);
* ``_work_per_sample(s, d)``: scratch floats the feature map needs per sample;
* ``_token_clusters(X)``: the ``transform`` output, and ``_token_cluster_info()``: what
  it is read from (:meth:`token_cluster_info`);
* ``_network_class``: the recovered network's class (a
  :class:`~skconvexattn._network.RecoveredNetwork` in the head's module);
* optionally ``_init_gates(rng, X, w, mu, sigma)``: gates that look at the training tokens;
* ``_reduce_hint`` for messages.

Everything else (validation, devices, memory planning, the solver, the fitted
attributes, predictions) lives here once.
"""

from __future__ import annotations

import math
import time
import warnings
from numbers import Integral, Real

import numpy as np
from array_api_compat import is_cupy_namespace, is_numpy_namespace
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, _fit_context, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import Bunch, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from ._auto_alpha import select_alpha_ratio
from ._backend import get_namespace, resolve_device, scalar, to_numpy
from ._dask import is_dask_array
from ._datafits import get_datafit, softmax
from ._fit_inputs import (
    _SOLVER_ONLY_PARAMS,
    _classes_and_weights,
    _normalised_weights,
    _same_gate_key,
)
from ._factored import balanced_heads, block_spectra, factor_nuclear_norms, factored_solve
from ._factored_ops import LiftedFactorOperator, cast_operator, chunk_rows_for, floating_bytes
from ._gates import token_moments
from ._operator import LiftedOperator, plan_memory
from ._params import DEFAULT_ALPHA_RATIO, PARAMETER_DOCS, head_signature, make_init
from ._penalty import BlockNuclearNorm
from ._progress import ContinuedReporter, make_reporter
from ._solver import alpha_max, fista, prior_and_start
from ._validation import check_tokens

__all__ = ["BaseConvexHead", "DEFAULT_ALPHA_RATIO"]



def _ldexp(x, e):
    """``x * 2**e`` as a float, saturating to 0 or infinity instead of raising."""
    try:
        return math.ldexp(float(x), int(e))
    except OverflowError:
        return math.copysign(math.inf, x)


# the factored path keeps ``coef_`` (the blocks ``U V^T``) only up to this many weights;
# beyond, the fitted heads live in ``factors_`` alone
_MATERIALISE_MAX = 2**24
# heads per block the factored path's memory plan provides for
_PLAN_HEADS = 8


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
        "alpha": [Interval(Real, 0, None, closed="neither"), None],
        "alpha_ratio": [Interval(Real, 0, 1, closed="right"), StrOptions({"auto"})],
        "max_time": [Interval(Real, 0, None, closed="neither"), None],
        "activation": [StrOptions({"linear", "gated_relu"})],
        "n_gates": [Interval(Integral, 1, None, closed="left")],
        "loss": [StrOptions({"log_loss", "squared_error"})],
        "fit_intercept": ["boolean"],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "tol_scale": [StrOptions({"objective", "null"})],
        "solver": [StrOptions({"auto", "fista", "factored"})],
        "device": [StrOptions({"auto", "cpu", "cuda"})],
        "n_tokens": [Interval(Integral, 1, None, closed="left"), None],
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "memory_budget": [Interval(Real, 0, None, closed="neither")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
    }

    #: the lifted features are homogeneous of this degree in ``X`` (self-attention: 3);
    #: the program on ``X * 2**e`` with ``alpha * 2**(e * degree)`` is the same program
    _degree = 1
    _reduce_hint = "n_features (e.g. with TokenPCA) or n_gates"

    def __init_subclass__(cls, **kwargs):
        """A head that declares ``_own_params`` (name -> default) and no ``__init__`` gets
        the constructor of :func:`~skconvexattn._params.head_signature` (the shared
        parameters plus its own, less those in ``_excluded_params``) and parameter
        constraints for exactly those; ``%(name)s`` in its docstring is filled from
        :data:`~skconvexattn._params.PARAMETER_DOCS`."""
        super().__init_subclass__(**kwargs)
        if "_own_params" in cls.__dict__ and "__init__" not in cls.__dict__:
            sig = head_signature(cls._own_params, getattr(cls, "_excluded_params", ()))
            cls.__init__ = make_init(sig, cls.__qualname__)
            cls._parameter_constraints = {
                k: v for k, v in cls._parameter_constraints.items() if k in sig.parameters
            }
        if cls.__doc__ and "%(" in cls.__doc__:
            cls.__doc__ = cls.__doc__ % PARAMETER_DOCS

    # ------------------------------------------------------------------ hooks
    def _n_convex_blocks(self):
        """Number ``P`` of blocks ``Z_p`` of the convex program."""
        return 1 if self.activation == "linear" else self.n_gates

    def _block_shape(self, s, d):  # pragma: no cover - abstract
        raise NotImplementedError

    def _draw_gates(self, rng, mu, sigma, s, d):  # pragma: no cover - abstract
        raise NotImplementedError

    def _feature_map(self, gates):  # pragma: no cover - abstract
        raise NotImplementedError

    def _operator(self, gates, X, block_shape, n_outputs, plan, center=None):
        """The lifted operator of ``X``: materialised or chunked features (the default).

        Heads with a cheaper matrix-free form for some shapes override this.
        """
        return LiftedOperator(
            self._feature_map(gates), X, block_shape, plan.chunk_rows, center=center,
            build_rows=getattr(plan, "build_rows", None),
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
    def _setup(self, X, y, sample_weight, *, reset):
        """Everything a fit needs before the solver: validation, weights, gates, the
        lifted operator and the gradient at zero (hence ``alpha_max``).

        Nothing is stored on ``self`` except what validation sets at ``reset``
        (``n_features_in_``, ``token_shape_``); the gates a cold fit would draw are in
        ``setup.gates``. :meth:`fit` and :meth:`compute_alpha_max` share it.
        A Dask ``X`` takes :func:`~skconvexattn._dask.dask_setup` (chunked operators).
        """
        if is_dask_array(X):
            from ._dask import dask_setup

            return dask_setup(self, X, y, sample_weight, reset=reset)
        return self._build_operator(self._prepare(X, y, sample_weight, reset=reset))

    def _prepare(self, X, y, sample_weight, *, reset):
        """The cheap first half of :meth:`_setup` (in-memory ``X``): validation, the
        solver and memory plan (so that their errors come before any allocation),
        weights, token moments and the gates. A private ``_path_gates`` ``(gates,
        scale_exp)`` (set by ``alpha_ratio="auto"`` on its path's fits) replaces the
        drawn gates when ``X`` has the same scale exponent."""
        X3, y = check_tokens(self, X, y, reset=reset, n_tokens=self.n_tokens, require_y=True)
        # extreme scales (float32 X * 1e13 for self-attention): solve the same program on
        # X * 2**scale_exp, exactly (powers of two), with alpha scaled to match
        scale_exp = self._scale_exponent(X3)
        if scale_exp:
            X3 = np.ldexp(X3, scale_exp).astype(X3.dtype, copy=False)
        classes, y_enc, sw = _classes_and_weights(
            self, y, sample_weight, X3.reshape(X3.shape[0], -1)
        )
        n, s, d = X3.shape
        self._check_head_params(s, d)
        backend = resolve_device(self.device)
        dtype = X3.dtype
        P, R, L = self._block_shape(s, d)
        c = classes.shape[0]
        solver = self._choose_solver(n, s, d, c, dtype)
        factored = solver != "fista"
        plan = None if solver == "factored" else plan_memory(
            n,
            P * R * L,
            P * R * L * c,
            dtype.itemsize,
            self._work_per_sample(s, d),
            self.memory_budget,
            type(self).__name__,
            self._reduce_hint,
        )
        # normalised weights: the sum of large weights may overflow, their ratios do not
        w = _normalised_weights(sw)
        rng = check_random_state(self.random_state)
        mu, sigma = token_moments(X3, w)
        gate_key = (
            repr(sorted((k, v) for k, v in self.get_params(deep=False).items()
                        if k not in _SOLVER_ONLY_PARAMS)) + repr(X3.shape),
            np.asarray(mu, dtype=np.float64),
            np.asarray(sigma, dtype=np.float64),
        )
        if (
            self.warm_start
            and hasattr(self, "gates_")
            and _same_gate_key(getattr(self, "_gate_key", None), gate_key)
        ):
            gates = self.gates_  # same data moments: the gates a cold fit would draw
        elif getattr(self, "_path_gates", (None, None))[1] == scale_exp:
            gates = self._path_gates[0]  # the final fit's gates, on a part of its data
        else:
            gates = self._init_gates(rng, X3, w, mu, sigma)
        return Bunch(
            factored=factored, solver=solver, X3=X3, y_enc=y_enc, classes=classes,
            dtype=dtype, block_shape=(P, R, L), plan=plan, backend=backend, gates=gates,
            gate_key=gate_key, w=w, scale_exp=scale_exp,
        )

    def _build_operator(self, prep):
        """The second half of :meth:`_setup`: the data on the device, the (lifted or
        factor) operator and ``alpha_max`` from the gradient at zero."""
        X3, y_enc, classes, w, gates = prep.X3, prep.y_enc, prep.classes, prep.w, prep.gates
        backend, dtype, solver, factored = prep.backend, prep.dtype, prep.solver, prep.factored
        P, R, L = prep.block_shape
        plan, scale_exp, gate_key = prep.plan, prep.scale_exp, prep.gate_key
        n, s, d = X3.shape
        c = classes.shape[0]
        Xd = backend.asarray(X3)
        Y = np.zeros((n, c), dtype=dtype)
        Y[np.arange(n), y_enc] = 1.0
        Yd = backend.asarray(Y)
        wd = backend.asarray(w.astype(dtype))
        gates_d = {k: backend.asarray(v.astype(dtype)) for k, v in gates.items()}
        datafit = get_datafit(self.loss)
        if solver == "factored":
            op, amax = self._factored_setup(gates_d, Xd, Yd, wd, datafit, c)
            grad_at_zero = None
        else:
            op = self._operator(
                gates_d, Xd, (P, R, L), c, plan, wd if self.fit_intercept else None
            )
            amax, grad_at_zero = alpha_max(op, datafit, Yd, wd, self.fit_intercept)
            if factored:  # factors whose products go through the lifted features
                op = LiftedFactorOperator(
                    op, (P, R, L), self._factor_a_shape(s, d) or (R,)
                )
                grad_at_zero = None
        return Bunch(
            factored=factored, solver=solver,
            X3=X3, classes=classes, dtype=dtype, block_shape=(P, R, L), plan=plan,
            backend=backend, gates=gates, gate_key=gate_key, op=op, datafit=datafit,
            Y=Yd, w=wd, alpha_max=scalar(amax), grad_at_zero=grad_at_zero,
            scale_exp=scale_exp,
        )

    def _scale_exponent(self, X3):
        """``e`` such that ``X3 * 2**e`` has entries of order one when the lifted features
        of ``X3`` (of order ``max|X3| ** degree``) would leave ``2**-30 .. 2**30``, else 0."""
        top = float(np.max(np.abs(X3))) if X3.size else 0.0
        if top == 0.0 or not math.isfinite(top):
            return 0
        e = math.frexp(top)[1]  # top = m * 2**e with 0.5 <= m < 1
        return -e if abs(e) * self._degree > 30 else 0

    def compute_alpha_max(self, X, y, sample_weight=None):
        """``alpha_max`` of ``(X, y)``: the smallest ``alpha`` giving the all-zero model.

        Computed exactly, without solving, from the gradient at zero of the program a
        cold :meth:`fit` on the same data would solve (same gates, weights and
        ``class_weight``); it costs the lifted features and one adjoint product. It is
        the ``alpha_max_`` that fit would set, the scale ``alpha_ratio`` is relative to
        (``alpha_ = alpha_ratio * alpha_max``), and where the ``*CV`` grids start.
        The estimator is not modified.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_tokens, n_features) or \
                (n_samples, n_tokens * n_features)
            Token features.
        y : array-like of shape (n_samples,)
            Class labels.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights.

        Returns
        -------
        alpha_max : float
            Non-negative; 0 when the all-zero model is optimal for every ``alpha``
            (e.g. constant tokens).
        """
        self._validate_params()
        probe = clone(self).set_params(warm_start=False)
        st = probe._setup(X, y, sample_weight, reset=True)
        return _ldexp(st.alpha_max, -st.scale_exp * self._degree)

    def _resolve_alpha(self, amax, ratio):
        """The absolute ``alpha`` of a fit: ``alpha`` when given, else
        ``ratio * alpha_max`` (``ratio``: ``alpha_ratio``, or the one ``"auto"`` chose)."""
        if self.alpha is not None:
            return float(self.alpha)
        return float(ratio) * amax

    def _choose_alpha_ratio(self, X, y, sample_weight, gates=None):
        """The ratio of this fit, how it was chosen (``alpha_selection_``) and where the
        fit may start (``"auto"``: the path's solution at that ratio, found with
        ``gates``, a ``(gates, scale_exp)`` pair, when given; else ``None``)."""
        if self.alpha is not None:
            return None, {"method": "absolute"}, None
        if self.alpha_ratio == "auto":
            return select_alpha_ratio(self, X, y, sample_weight, gates=gates)
        ratio = float(self.alpha_ratio)
        return ratio, {"method": "given", "ratio": ratio}, None

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the head by solving its convex program to a certified duality gap.

        With ``max_time`` the fit stops, like at ``max_iter``, with the iterate reached and
        its certificate (``dual_gap_``) and a :class:`~sklearn.exceptions.ConvergenceWarning`.
        An interrupted fit (Ctrl-C, :class:`KeyboardInterrupt`) also keeps the iterate
        reached and its certificate in the fitted attributes (``interrupted_`` is True),
        then re-raises the interrupt.

        Inputs of extreme scale (whose lifted features would leave ``2**-30 .. 2**30``,
        e.g. float32 tokens of magnitude ``1e13`` for self-attention) are fitted as the
        same program on ``X * 2**input_scale_exp_`` with ``alpha`` scaled to match (the
        programs are homogeneous in ``X``, and powers of two are exact); ``coef_`` and the
        gates are then in those units (``input_scale_exp_`` is 0 otherwise), and
        ``alpha_``, ``alpha_max_`` and ``objective_`` are those of ``X``.

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
        # max_time bounds the whole fit: the final solve gets what the choice of alpha and
        # the set-up (gates, lifted features) left
        self._deadline = None if self.max_time is None else time.monotonic() + self.max_time
        if is_dask_array(X):
            ratio, selection, start = self._choose_alpha_ratio(X, y, sample_weight)
            st = self._setup(X, y, sample_weight, reset=True)
        else:
            # the gates first: "auto" fits its path with them, so that the path's solution
            # at the chosen ratio is a start for this fit (same program, 80 % of the data)
            prep = self._prepare(X, y, sample_weight, reset=True)
            ratio, selection, start = self._choose_alpha_ratio(
                X, y, sample_weight, gates=(prep.gates, prep.scale_exp)
            )
            st = self._build_operator(prep)
            del prep
        P, R, L = st.block_shape
        c = st.classes.shape[0]
        dtype, backend, op, datafit = st.dtype, st.backend, st.op, st.datafit
        Yd, wd = st.Y, st.w
        warm = (
            self.warm_start
            and hasattr(self, "coef_")
            and self.coef_.shape == (P, R, L * c)
            and np.array_equal(getattr(self, "classes_", None), st.classes)
        )
        # warm_start's previous solution, read before this fit's attributes replace it
        previous = self._solution() if self.warm_start else None
        self.gates_ = st.gates
        self._gate_key = st.gate_key
        self.classes_ = st.classes
        # alpha in the units of X (alpha_max_, alpha_) and of the program solved, on
        # X * 2**input_scale_exp_ (the same unless X has an extreme scale)
        k = st.scale_exp * self._degree
        amax = _ldexp(st.alpha_max, -k)
        self.alpha_max_ = amax
        self.alpha_ = self._resolve_alpha(amax, ratio)
        self.alpha_ratio_ = (
            ratio if ratio is not None
            else (self.alpha_ / amax if amax > 0 else math.inf)
        )
        self.alpha_selection_ = selection
        if selection["method"] == "holdout":  # set by the solver when it does
            selection["started_from_path"] = False
        self.input_scale_exp_ = int(st.scale_exp)
        amax_solve = st.alpha_max
        alpha = float(ratio) * amax_solve if self.alpha is None else _ldexp(self.alpha, k)
        if self.alpha is not None and alpha >= amax_solve:
            warnings.warn(
                f"alpha={self.alpha_:g} >= alpha_max_={amax:.4g}: the solution is the all-zero "
                "model (intercept only). Use a smaller alpha, e.g. alpha=None and "
                "alpha_ratio, a fraction of alpha_max_.",
                UserWarning,
                stacklevel=2,
            )
        # alpha_max_ == 0: the all-zero model is optimal for every alpha; any positive
        # value certifies it at iteration 0 (alpha_ stays 0, the value asked for)
        alpha_solve = alpha if alpha > 0 else 1.0
        if st.factored:
            return self._fit_factored(st, alpha_solve, start, previous)
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
                value = scalar(
                    datafit.value(op.forward(c_init) + b_init[None, :], Yd, wd)
                    + alpha_solve * BlockNuclearNorm().value(c_init)
                )
                if value < best:  # a NaN value is never chosen
                    best, coef_init, intercept_init = value, c_init, b_init
            step_init = getattr(self, "_solver_step", None)
        elif (
            start is not None
            and start["coef"] is not None
            and start["coef"].shape == (P, R, L * c)
            and self._same_program(start, st)
        ):  # the alpha path's solution at this ratio
            coef_init = backend.asarray(start["coef"].astype(dtype))
            intercept_init = (
                backend.asarray(start["intercept"].astype(dtype)) + op.intercept_shift(coef_init)
            )
            self.alpha_selection_["started_from_path"] = True
        res = fista(
            op,
            datafit,
            Yd,
            wd,
            float(alpha_solve),
            fit_intercept=self.fit_intercept,
            max_iter=self.max_iter,
            tol=self.tol,
            tol_scale=self._tol_scale(),
            coef_init=coef_init,
            intercept_init=intercept_init,
            step_init=step_init,
            grad_at_zero=st.grad_at_zero,
            verbose=self.verbose,
            warn=False,
            max_time=self._time_left(),
            interruptible=True,
        )
        if not res.converged and not res.interrupted:
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
        self.interrupted_ = bool(res.interrupted)
        self.device_ = backend.name
        self.memory_plan_ = getattr(op, "plan_name", None) or (
            "materialised" if st.plan.materialised else f"chunks of {st.plan.chunk_rows}"
        )
        if res.interrupted:
            # the iterate reached and its certificate are kept; the interrupt goes on
            raise KeyboardInterrupt
        return self

    def _time_left(self, floor=1e-3):
        """Seconds left of ``max_time`` (at least ``floor``), or ``None`` without one."""
        deadline = getattr(self, "_deadline", None)
        return None if deadline is None else max(deadline - time.monotonic(), floor)

    # ------------------------------------------------------------------ factored path
    def _tol_scale(self):
        return getattr(self, "tol_scale", "null")

    def _gap_scale(self, objective, null_objective):
        """What ``tol`` multiplies: the intercept-only loss (``tol_scale="null"``) or
        ``|objective|`` (``"objective"``); ``|objective|`` when ``null_objective`` is
        unknown (``None``)."""
        if self._tol_scale() == "null" and null_objective is not None:
            return float(null_objective)
        return abs(float(objective))

    def _warn_not_converged(self, res):
        scale = self._gap_scale(res.objective, res.null_objective)
        limit = (
            f"max_time={self.max_time:g} s ({res.n_iter} iterations)"
            if res.timed_out
            else f"max_iter={self.max_iter} iterations"
        )
        warnings.warn(
            f"{type(self).__name__} did not reach tol={self.tol:g} in {limit} "
            f"(relative duality gap {res.dual_gap / max(scale, 1e-300):.2e}, "
            f"tol_scale={self._tol_scale()!r}). Increase max_iter"
            f"{' or max_time' if self.max_time is not None else ''}, loosen tol, or "
            "increase alpha.",
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

    def _chunked_factor_operator(self, gates, X, c):
        """The head's factor operator on ``X``, its products in chunks of samples whose
        scratch memory (:meth:`_factor_scratch`, for the heads the factors have at that
        product) takes at most a quarter of ``memory_budget``: one chunk while the model
        has few heads."""
        n, s, d = (int(v) for v in X.shape)
        itemsize = X.dtype.itemsize
        budget = self.memory_budget * 1024**3 / 4
        scratch = self._factor_scratch

        def rows_for(r, c):
            return chunk_rows_for(n, scratch(s, d, c, max(int(r), 1)), itemsize, budget)

        op = self._factor_operator(gates, X, rows_for(32, c))  # reported in memory_plan_
        op.rows_for = rows_for
        return op

    def _factor_kept(self, n, s, d, itemsize):
        """Floats the factor operator keeps besides the tokens: the per-sample gate data
        (token sums and sides of self-attention, by default)."""
        return n * self._n_convex_blocks() * (2 * d + s)

    def _factor_cache_bytes(self):
        """Bytes a factor operator may keep to save recomputing per-sample data at every
        product (the Mixer's gate masks): a quarter of ``memory_budget``."""
        return self.memory_budget * 1024**3 / 4

    def _lbfgs_bytes(self):
        """The L-BFGS pairs' share of ``memory_budget`` (a quarter): large factors keep
        fewer pairs (see :func:`~skconvexattn._factored.factored_solve`)."""
        return self.memory_budget * 1024**3 / 4

    def _factored_bytes(self, n, s, d, c, itemsize, heads=_PLAN_HEADS):
        """Memory of the factored solver with ``heads`` heads per block: the tokens (and
        their zero-padded copy), the per-sample gate data, about 8 copies of the factors,
        and the L-BFGS pairs (float64, 50 of them at most, within :meth:`_lbfgs_bytes`)."""
        a_shape = self._factor_a_shape(s, d)
        if a_shape is None:
            return math.inf
        P = self._n_convex_blocks()
        factors = P * heads * (math.prod(a_shape) + d * c)
        data = n * s * d * 2 + self._factor_kept(n, s, d, itemsize)
        pairs = min(2 * 50 * 8 * factors, max(self._lbfgs_bytes(), 2 * 3 * 8 * factors))
        return itemsize * (8 * factors + data + self._factor_scratch(s, d, c, heads)) + pairs

    def _choose_solver(self, n, s, d, c, dtype):
        """How this fit is solved, from the ``solver`` parameter: ``"fista"`` (proximal
        gradient on the lifted features), ``"factored-lifted"`` (L-BFGS on factors, each
        product through the lifted features) or ``"factored"`` (L-BFGS on factors with the
        head's matrix-free products, self-attention and the Mixer only).

        ``"factored"`` asks for factors: with the head's matrix-free products when it
        has them, through the lifted features otherwise. ``"auto"`` (the cost model, see
        ``docs/factored.rst``) takes factors through the lifted features when these are
        kept in memory (a product then costs what one FISTA product costs, and L-BFGS
        needs several times fewer); when they would be recomputed at every product
        (chunked), the matrix-free products if the head has them and they fit in
        ``memory_budget``, else FISTA (one product pair per iteration, against more for
        a line search).
        """
        solver = self.solver
        if solver == "fista":
            return solver
        itemsize = np.dtype(dtype).itemsize
        budget = self.memory_budget * 1024**3
        free = self._factor_a_shape(s, d) is not None
        need = self._factored_bytes(n, s, d, c, itemsize) if free else math.inf
        P, R, L = self._block_shape(s, d)
        try:
            plan = plan_memory(
                n, P * R * L, P * R * L * c, itemsize, self._work_per_sample(s, d),
                self.memory_budget, type(self).__name__, self._reduce_hint,
            )
        except ValueError:
            if not free or (solver == "auto" and need > budget):
                raise  # the plan states the refusal and what to reduce
            plan = None
        if not free:  # factors through the lifted features, or FISTA on chunks (auto)
            return "factored-lifted" if solver == "factored" or plan.materialised else "fista"
        if solver == "auto" and plan is not None and plan.materialised:
            return "factored-lifted"
        if need > budget:
            if solver == "auto":
                return "fista"
            raise ValueError(
                f"{type(self).__name__}: the factored solver needs about "
                f"{need / 1024**3:.3g} GiB for {_PLAN_HEADS} heads per gate, more than "
                f"memory_budget={self.memory_budget:g} GiB. Reduce {self._reduce_hint}, "
                "or raise memory_budget if the machine has the memory."
            )
        return "factored"

    def _factored_setup(self, gates, X, Y, w, datafit, c):
        """The factor operator of ``X`` and ``alpha_max`` from the spectra of the
        gradient blocks at zero (exact on small blocks, Lanczos otherwise)."""
        xp = get_namespace(X)
        op = self._chunked_factor_operator(gates, X, c)
        prior, b0 = prior_and_start(datafit, Y, w, self.fit_intercept)
        T0 = w[:, None] * datafit.raw_gradient(xp.zeros_like(Y) + b0[None, :], Y)
        sig0 = block_spectra(op, T0, n_steps=40, rng=np.random.default_rng(0))[0]
        return op, float(sig0.max())

    def _solution(self):
        """This head's fitted solution as a start for another fit (``warm_start``, or the
        final fit of ``alpha_ratio="auto"``): ``factors`` (factored solver), ``coef``
        (FISTA's lifted coefficients), ``intercept``, ``classes`` and ``scale_exp``;
        ``None`` where not fitted."""
        return {
            "factors": self.__dict__.get("factors_"),
            "coef": self.__dict__.get("coef_") if getattr(self, "solver_", None) == "fista"
            else None,
            "intercept": getattr(self, "intercept_", None),
            "classes": getattr(self, "classes_", None),
            "scale_exp": getattr(self, "input_scale_exp_", 0),
        }

    @staticmethod
    def _same_program(src, st):
        """Whether the solution ``src`` (see :meth:`_solution`) has the classes and input
        scale of the set-up ``st``."""
        return (np.array_equal(src["classes"], st.classes)
                and src["scale_exp"] == st.scale_exp)

    def _fit_factored(self, st, alpha, start=None, previous=None):
        """Fit on factors (:func:`~skconvexattn._factored.factored_solve`): L-BFGS on the
        heads with rank growth and the same duality-gap certificate as FISTA. It starts
        from ``previous`` (the previous fit's solution, with ``warm_start``), else from
        ``start`` (the alpha path's solution at this ratio, see :meth:`fit`), when either
        has this program's shapes, classes and input scale; else from zero. Both are
        dicts of :meth:`_solution`."""
        backend, dtype = st.backend, st.dtype
        n, s, d = st.X3.shape
        c = st.classes.shape[0]
        def usable(src):  # factors of the same program's shapes, classes and scale
            f = None if src is None else src.get("factors")
            return (
                f is not None
                and f["A"].shape[2:] == tuple(st.op.a_shape)
                and f["B"].shape[2:] == (st.op.d, c)
                and f["A"].shape[0] == st.block_shape[0]
                and self._same_program(src, st)
            )

        # warm_start's previous solution first, else the alpha path's at this ratio
        src = next((p for p in (previous, start) if usable(p)), None)
        if src is not None and src is start:  # recorded with the choice of alpha
            self.alpha_selection_["started_from_path"] = True
        A0 = B0 = b_init = None
        lifted = st.solver == "factored-lifted"
        if src is not None:
            A0 = backend.asarray(src["factors"]["A"].astype(dtype))
            B0 = backend.asarray(src["factors"]["B"].astype(dtype))
            b_init = backend.asarray(src["intercept"].astype(dtype))
            if lifted and A0.shape[1] > 0:  # the solver's intercept: on centred features
                b_init = b_init + st.op.intercept_shift(A0, B0)
        refine = self._float64_refinement(st)
        # one progress report for the fit, its float64 continuation included
        t_left = self._time_left()
        reporter = make_reporter(self.verbose, self.tol, self.max_iter, max_time=t_left)
        res = factored_solve(
            st.op, st.datafit, st.Y, st.w, float(alpha), fit_intercept=self.fit_intercept,
            max_iter=self.max_iter, tol=self.tol, tol_scale=self._tol_scale(),
            A_init=A0, B_init=B0, intercept_init=b_init, max_time=t_left,
            memory_bytes=self._lbfgs_bytes(), reporter=reporter, warn=False,
            interruptible=True, stop_at_precision=refine is not None,
        )
        res.history["dtype"] = [str(np.dtype(dtype))] * len(res.history["iteration"])
        if refine is not None and res.precision_limited and not res.interrupted:
            res = self._refine_in_float64(st, refine, alpha, res, reporter)
        reporter.close(res.converged)
        if not res.converged and not res.interrupted:
            self._warn_not_converged(res)
        A2, B2, S = balanced_heads(res.A, res.B)
        self.factors_ = {"A": A2.astype(dtype), "B": B2.astype(dtype), "matrix_free": not lifted}
        self.factor_singular_values_ = S
        P, R, L = st.block_shape
        self.__dict__.pop("coef_", None)
        if lifted or P * R * L * c <= _MATERIALISE_MAX:
            U = A2.reshape(P, A2.shape[1], R)
            V = B2.reshape(P, B2.shape[1], L * c)
            self.coef_ = np.matmul(np.transpose(U, (0, 2, 1)), V).astype(dtype)
        intercept = res.intercept
        if self.fit_intercept and self.loss == "log_loss":
            # the softmax ignores a constant added to every class's intercept: fix it as
            # FISTA does (the mean of the starting intercept, which its steps keep), so
            # both solvers and every run return the same intercept_
            xp = get_namespace(intercept)
            b0 = prior_and_start(st.datafit, st.Y, st.w, True)[1]
            intercept = intercept - xp.mean(intercept) + xp.mean(b0)
        if lifted and res.A.shape[1] > 0:  # the lifted features may be centred
            intercept = intercept - st.op.intercept_shift(res.A, res.B)
        self.intercept_ = to_numpy(intercept)
        self.n_iter_ = res.n_iter
        self.dual_gap_ = float(res.dual_gap)
        self.objective_ = float(res.objective)
        self.null_objective_ = float(res.null_objective)
        self.convergence_ = res.history
        self.interrupted_ = bool(res.interrupted)
        self.device_ = backend.name
        self.solver_ = "factored"
        plan_name = getattr(st.op, "op", None) is not None and getattr(st.op.op, "plan_name", None)
        if lifted and plan_name:  # the operator names its form (Dask chunks, matrix-free)
            self.memory_plan_ = f"factored, lifted features: {plan_name}"
        elif lifted:
            self.memory_plan_ = "factored, lifted features " + (
                "materialised" if st.plan.materialised else f"in chunks of {st.plan.chunk_rows}"
            )
        else:
            self.memory_plan_ = f"factored, chunks of {st.op.chunk_rows}"
        if res.interrupted:
            # the point reached and its certificate are kept; the interrupt goes on
            raise KeyboardInterrupt
        return self

    def _float64_refinement(self, st):
        """The float64 copy of the factor operator that a float32 factored fit continues
        on when its certificate stalls at float32's precision, or ``None``: float64
        input, a Dask or other operator that cannot be cast, or a copy that would take
        more than half of ``memory_budget``. Built lazily (see :meth:`_refine_in_float64`)."""
        xp = get_namespace(st.Y)
        if st.dtype != np.float32 or not (is_numpy_namespace(xp) or is_cupy_namespace(xp)):
            return None
        if not getattr(st.op, "castable", False):
            return None
        if floating_bytes(st.op) > self.memory_budget * 1024**3 / 2:
            return None
        return lambda: cast_operator(st.op, xp.float64)

    def _refine_in_float64(self, st, refine, alpha, res, reporter):
        """Continue the float32 factored fit ``res`` in float64 products (at most the
        iterations and time left) and return the combined result: float32 products round
        the gradient to about ``eps * sum_i |w_i theta_i Phi_i|``, which near an
        interpolating optimum holds the certificate a few ``1e-4`` above the objective's
        tolerance however long L-BFGS runs (``docs/factored.rst``)."""
        left = self.max_iter - res.n_iter
        spent = res.history["time"][-1] if res.history["time"] else 0.0
        t_left = self._time_left(floor=0.0)
        if left <= 0 or (t_left is not None and t_left <= 0):
            return res
        op64 = refine()
        if op64 is None:
            return res
        t_left = self._time_left()  # the cast counts against max_time
        xp = get_namespace(st.Y)
        f64 = xp.float64
        Y64, w64 = xp.astype(st.Y, f64), xp.astype(st.w, f64)
        res64 = factored_solve(
            op64, st.datafit, Y64, w64, float(alpha),
            fit_intercept=self.fit_intercept, max_iter=left, tol=self.tol,
            tol_scale=self._tol_scale(), A_init=xp.astype(res.A, f64),
            B_init=xp.astype(res.B, f64), intercept_init=xp.astype(res.intercept, f64),
            max_time=t_left, memory_bytes=self._lbfgs_bytes(),
            reporter=ContinuedReporter(reporter, res.n_iter), warn=False, interruptible=True,
        )
        h, h64 = res.history, res64.history
        for key in h:
            if key == "dtype":
                continue
            extra = h64.get(key, [])
            if key == "iteration":
                extra = [res.n_iter + v for v in extra]
            elif key == "time":
                extra = [spent + v for v in extra]
            h[key] = list(h[key]) + list(extra)
        h["dtype"] = list(h["dtype"]) + ["float64"] * len(h64["iteration"])
        # the point is returned in float32, as the input: its certificate is that of the
        # rounded factors, their objective evaluated in float64 against the float64 dual
        A, B, b = (xp.astype(v, st.dtype) for v in (res64.A, res64.B, res64.intercept))
        O = xp.zeros_like(Y64) + xp.astype(b, f64)[None, :]
        if A.shape[1] > 0:
            O = O + op64.forward(xp.astype(A, f64), xp.astype(B, f64))
        nuc = float(factor_nuclear_norms(A, B).sum()) if A.shape[1] > 0 else 0.0
        primal = float(to_numpy(st.datafit.value(O, Y64, w64))) + alpha * nuc
        gap = max(primal - res64.dual_objective, 0.0)
        scale = self._gap_scale(primal, res64.null_objective)
        h["objective"][-1], h["dual_gap"][-1] = primal, gap
        h["relative_gap"][-1] = gap / max(abs(primal), 1e-300)
        h["null_relative_gap"][-1] = gap / max(res64.null_objective, 1e-300)
        res64.A, res64.B, res64.intercept = A, B, b
        res64.objective, res64.dual_gap = primal, gap
        res64.converged = gap <= self.tol * scale
        res64.history = h
        res64.n_iter = res.n_iter + res64.n_iter
        return res64

    def _factor_logits(self, X3):
        backend = resolve_device(self.device, for_predict=True)
        n, s, d = X3.shape
        dtype = X3.dtype
        c = self.classes_.shape[0]
        A, B = self.factors_["A"], self.factors_["B"]
        # the tokens (and their zero-padded copy), the data the operator keeps, the
        # factors and one sample's scratch: below that no chunking helps
        need = dtype.itemsize * (
            2 * n * s * d + self._factor_kept(n, s, d, dtype.itemsize) + A.size + B.size
            + self._factor_scratch(s, d, c, max(A.shape[1], 1))
        )
        if need > self.memory_budget * 1024**3:
            raise ValueError(
                f"{type(self).__name__}: predicting {n} samples on the factors needs about "
                f"{need / 1024**3:.3g} GiB, more than memory_budget={self.memory_budget:g} "
                f"GiB. Reduce the samples per call (predict in batches) or "
                f"{self._reduce_hint}, or raise memory_budget if the machine has the memory."
            )
        gates = {k: backend.asarray(v.astype(dtype)) for k, v in self.gates_.items()}
        op = self._chunked_factor_operator(gates, backend.asarray(X3), c)
        O = op.forward(backend.asarray(A.astype(dtype)), backend.asarray(B.astype(dtype)))
        return to_numpy(O + backend.asarray(self.intercept_.astype(dtype))[None, :])

    # ------------------------------------------------------------------ predict
    def _scaled(self, X3):
        """``X3`` in the units of the program solved (``X * 2**input_scale_exp_``)."""
        e = getattr(self, "input_scale_exp_", 0)
        return np.ldexp(X3, e).astype(X3.dtype, copy=False) if e else X3

    def _logits(self, X3):
        X3 = self._scaled(X3)
        # inputs far larger (or smaller) than the training data's: the features of
        # X3 * 2**extra are finite, and the logits are rescaled in float64
        extra = self._scale_exponent(X3)
        if extra:
            X3 = np.ldexp(X3, extra).astype(X3.dtype, copy=False)
        if "factors_" in self.__dict__ and self.factors_.get("matrix_free", True):
            # a factored fit with matrix-free products: its predictions use them too
            O = self._factor_logits(X3)
            if extra:
                with np.errstate(over="ignore", under="ignore"):
                    O = np.ldexp(
                        O.astype(np.float64) - self.intercept_[None, :], -extra * self._degree
                    )
                    return (O + self.intercept_.astype(np.float64)[None, :]).astype(X3.dtype)
            return O
        backend = resolve_device(self.device, for_predict=True)
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
        op = self._operator(gates, backend.asarray(X3), (P, R, L), self.classes_.shape[0], plan)
        O = op.forward(backend.asarray(self.coef_.astype(dtype)))
        if extra:
            with np.errstate(over="ignore", under="ignore"):  # saturate to +-inf
                O = np.ldexp(to_numpy(O).astype(np.float64), -extra * self._degree)
                return (O + self.intercept_.astype(np.float64)[None, :]).astype(dtype)
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
        if is_dask_array(X):  # lazy, chunk by chunk
            from ._dask import lazy_apply

            return lazy_apply(self, "decision_function", X)
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
        if is_dask_array(X):  # lazy, chunk by chunk
            from ._dask import lazy_apply

            return lazy_apply(self, "predict", X)
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
        if is_dask_array(X):  # lazy, chunk by chunk
            from ._dask import lazy_apply

            return lazy_apply(self, "predict_proba", X)
        O = self._logits(check_tokens(self, X, reset=False))
        dtype = O.dtype  # float32 models give float32 probabilities (as LogisticRegression)
        with np.errstate(over="ignore"):  # a difference beyond -max: probability 0
            return softmax(O.astype(np.float64)).astype(dtype, copy=False)

    @available_if(_has_log_loss)
    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`."""
        if is_dask_array(X):
            check_is_fitted(self)
            from ._dask import lazy_apply

            return lazy_apply(self, "predict_log_proba", X)
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
        if is_dask_array(X):  # lazy, chunk by chunk
            from ._dask import lazy_apply

            return lazy_apply(self, "transform", X)
        X3 = self._scaled(check_tokens(self, X, reset=False))
        return np.asarray(self._token_clusters(X3), dtype=np.int64)

    def get_feature_names_out(self, input_features=None):
        """One output name per token: ``<head>_token<t>``."""
        check_is_fitted(self)
        prefix = type(self).__name__.lower()
        return np.asarray([f"{prefix}_token{t}" for t in range(self.token_shape_[0])], dtype=object)

    # ------------------------------------------------------------------ inspection
    def _singular_values(self):
        """Singular values of every fitted block, shape ``(P, k)`` (float64): those of
        ``coef_``, or of the factored fit's heads (``factor_singular_values_``).

        The recovered network has one head per active value
        (:func:`~skconvexattn._penalty.active_singular_values`).
        """
        check_is_fitted(self)
        if "factor_singular_values_" in self.__dict__:
            return np.asarray(self.factor_singular_values_, dtype=np.float64)
        return np.linalg.svd(np.asarray(self.coef_, dtype=np.float64), compute_uv=False)

    def block_norms(self):
        """Nuclear norm of each fitted block (gate): its importance, shape ``(P,)``."""
        return self._singular_values().sum(axis=1)

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
        """The non-convex network recovered from the fitted blocks (``docs/convexity.rst``).

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
            ``to_torch()``; one head per active singular value
            (:func:`~skconvexattn._penalty.active_singular_values`).
        """
        check_is_fitted(self)
        return self._network_class._from_estimator(self)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = []
        return tags

