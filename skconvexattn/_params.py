"""The constructor parameters the heads share, declared once.

Every head takes the same regularisation, solver and run parameters; a head declares only
its own (``_own_params``, e.g. FNO's ``n_modes``) and
:class:`~skconvexattn._base.BaseConvexHead` generates its ``__init__`` from
:func:`head_signature` with :func:`make_init` (the scikit-learn contract: the constructor
stores its arguments unchanged and does nothing else; the ``*CV`` classes of
:mod:`skconvexattn.model_selection` are built the same way). The documentation of the
shared parameters and fitted attributes is here too (:data:`PARAMETER_DOCS`), filled into
the heads' docstrings where they write ``%(name)s``.
"""

from __future__ import annotations

import inspect
import textwrap

__all__ = ["DEFAULT_ALPHA_RATIO", "PARAMETER_DOCS", "head_signature", "make_init"]

#: default ``alpha_ratio`` of every head when ``alpha=None``: chosen on a held-out part of
#: the training data (:mod:`skconvexattn._auto_alpha`; no single ratio suits both real
#: text and image tokens, see docs/alpha.rst and benchmarks/tune_alpha_ratio.py)
DEFAULT_ALPHA_RATIO = "auto"

_GATE_PARAMS = (("alpha_ratio", DEFAULT_ALPHA_RATIO), ("activation", "gated_relu"), ("n_gates", 8))
_RUN_PARAMS = (
    ("loss", "log_loss"),
    ("fit_intercept", True),
    ("max_iter", 3000),
    ("tol", 1e-4),
    ("tol_scale", "null"),
    ("solver", "auto"),
    ("max_time", None),
    ("device", "auto"),
    ("n_tokens", None),
    ("class_weight", None),
    ("memory_budget", 4.0),
    ("random_state", None),
    ("verbose", 0),
    ("warm_start", False),
)


def head_signature(own=None, exclude=()):
    """The constructor signature of a head: ``alpha`` (positional or keyword), then,
    keyword-only, ``alpha_ratio``, ``activation``, ``n_gates``, the head's ``own``
    parameters (name -> default, in order) and the shared run parameters (``loss`` ...
    ``warm_start``), less the names in ``exclude``.

    Returns
    -------
    signature : inspect.Signature
        Including ``self``.
    """
    P = inspect.Parameter
    own = dict(own or {})
    params = [P("self", P.POSITIONAL_OR_KEYWORD), P("alpha", P.POSITIONAL_OR_KEYWORD, default=None)]
    for name, default in (*_GATE_PARAMS, *own.items(), *_RUN_PARAMS):
        if name not in exclude:
            params.append(P(name, P.KEYWORD_ONLY, default=default))
    return inspect.Signature(params)


def make_init(signature, qualname):
    """An ``__init__`` with ``signature`` that stores every argument unchanged as an
    attribute of the same name (what scikit-learn's ``get_params``/``clone`` expect)."""

    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        for key, value in bound.arguments.items():
            if key != "self":
                setattr(self, key, value)

    __init__.__signature__ = signature
    __init__.__qualname__ = f"{qualname}.__init__"
    return __init__


def _doc(text):
    """A docstring fragment, indented for a class docstring (its first line is placed by
    the ``%(name)s`` it replaces)."""
    return textwrap.indent(textwrap.dedent(text).strip("\n"), "    ").lstrip()


#: ``%(name)s`` fragments of the heads' docstrings: parameters and fitted attributes
PARAMETER_DOCS = {
    "alpha": _doc("""
        alpha : float or None, default=None
            Absolute regularisation strength (> 0); ``None`` (default) uses
            ``alpha_ratio * alpha_max_`` of the training data. It weighs
            ``sum_p ||Z_p||_*``, equivalently the weight decay
            ``alpha/2 * sum_j (||W_1j||^2 + ||W_2j||^2)`` of the non-convex network
            (:meth:`to_nonconvex`). The data term is a mean over samples, so ``alpha`` does
            not scale with ``n_samples``. The fitted ``alpha_max_`` is the smallest value
            giving the all-zero model.
        alpha_ratio : float in (0, 1] or "auto", default="auto"
            Used when ``alpha=None``: the regularisation relative to the training data's
            ``alpha_max_`` (``alpha_ = alpha_ratio * alpha_max_``), a value that carries
            over between data sets of any scale (``docs/alpha.rst``). ``"auto"``: with at
            least 500 samples (and 10 per class), a warm-started path of ``0.3, 0.1,
            0.03, ..., 0.001`` is fitted on a stratified 80 % of the training samples
            (``random_state`` draws the split) and scored by its loss on the other 20 %;
            the largest ratio within half a standard error of the smallest held-out loss
            is refitted on all samples, from the path's solution at that ratio when that
            path fit (with the final fit's gates) reached its tolerance. Smaller data
            use 0.1. ``alpha_selection_`` records the choice.
    """),
    "n_gates": _doc("""
        n_gates : int, default=8
            Number of gates (blocks) for ``activation="gated_relu"``.
    """),
    "fit_params": _doc("""
        loss : {"log_loss", "squared_error"}, default="log_loss"
            Multinomial logistic loss on the pooled logits, or squared error against one-hot
            targets.
        fit_intercept : bool, default=True
            Fit an unpenalised intercept.
        max_iter : int, default=3000
            Maximum solver iterations (L-BFGS or FISTA). On real tokens at the ratio
            ``alpha_ratio="auto"`` chooses, sentence tokens certify within a few hundred
            and image patches within 600 to 2,400 (``docs/alpha.rst``).
        tol : float, default=1e-4
            Stop when the duality gap is at most ``tol`` times the loss of the
            intercept-only model (``tol_scale="null"``) or the objective.
        tol_scale : {"null", "objective"}, default="null"
            What ``tol`` is relative to: the loss of the intercept-only model (``"null"``,
            as scikit-learn's Lasso compares its gap with the all-zero model's loss; it
            does not shrink with ``alpha``), or the objective (``"objective"``, stricter
            where the model nearly interpolates: at the small ratios that
            ``alpha_ratio="auto"`` picks on real data the gap, first-order in the distance
            to the optimum, closes far more slowly than the objective; ``docs/factored.rst``).
            ``convergence_`` reports the gap relative to both.
        solver : {"auto", "fista", "factored"}, default="auto"
            ``"fista"``: accelerated proximal gradient on the lifted features.
            ``"factored"``: L-BFGS on the heads of the network (factors
            ``Z_p = U_p V_p^T``) with rank growth and the same certificate; for
            self-attention and the Mixer through matrix-free products that never form a
            lifted feature (memory and time per sample grow like ``heads * (d**2 + d c)``
            instead of ``d**3 c``), for the other heads through the lifted features.
            ``"auto"``: factors through the lifted features when these are kept in memory
            (one product costs what a FISTA product costs, and L-BFGS needs several times
            fewer at small ``alpha``); otherwise the matrix-free products where the head
            has them and they fit in ``memory_budget``, else FISTA
            (``docs/factored.rst``). ``solver_`` says which ran, ``memory_plan_`` how.
        max_time : float or None, default=None
            Seconds after which the solver stops as at ``max_iter``: the iterate reached,
            its certificate ``dual_gap_`` and a ``ConvergenceWarning``.
        device : {"auto", "cpu", "cuda"}, default="auto"
            ``"auto"`` uses CuPy when a GPU is usable, else NumPy.
        n_tokens : int, default=None
            Tokens per row when ``X`` is given flattened as ``(n, n_tokens * n_features)``;
            ``None`` means one token per row.
        class_weight : dict, "balanced" or None, default=None
            Weights of the classes, multiplied into ``sample_weight``.
        memory_budget : float, default=4.0
            GiB the solver may use for lifted features and weights; beyond half of it the
            features are recomputed chunk by chunk, and a problem whose weights alone do not
            fit is refused with a message saying what to reduce.
        random_state : int, RandomState instance or None, default=None
            Seeds the gates (drawn on the host, so CPU and GPU fits agree).
        verbose : int, default=0
            Report progress at every duality-gap evaluation: iteration, objective, the
            relative duality gap (the quantity compared with ``tol``), elapsed time and an
            ETA. 1: a progress bar when stderr is a terminal, plain lines on stdout
            otherwise; 2: always plain lines.
        warm_start : bool, default=False
            Start from the previous solution (and keep its gates) when refitting.
    """),
    "fitted_attributes": _doc("""
        classes_ : ndarray of shape (n_classes,)
        intercept_ : ndarray of shape (n_classes,)
        n_iter_ : int
        dual_gap_ : float
            Duality gap of the returned solution: an upper bound on its suboptimality.
        objective_ : float
            Mean loss plus ``alpha * sum_p ||Z_p||_*`` at the returned solution.
        alpha_ : float
            The absolute ``alpha`` of the fit (``alpha``, or ``alpha_ratio_ * alpha_max_``).
        alpha_ratio_ : float
            ``alpha_ / alpha_max_``: the ratio used (the one chosen with
            ``alpha_ratio="auto"``).
        alpha_selection_ : dict
            How ``alpha_`` was set: ``method`` (``"holdout"``, ``"fixed"``, ``"given"`` or
            ``"absolute"``); for ``"holdout"`` the ``ratios`` tried, their mean
            held-out ``losses`` (which choose), the ``standard_errors`` of each one's
            difference to the smallest, their held-out accuracies ``scores``,
            ``n_train``, ``n_validation``, ``seconds``, ``path_converged`` (whether the
            path fit at the chosen ratio reached its tolerance) and
            ``started_from_path`` (whether the final fit started from that solution).
        alpha_max_ : float
            The smallest ``alpha`` giving the all-zero model, from the gradient at zero
            (:meth:`compute_alpha_max` gives it without a fit).
        convergence_ : dict
            ``iteration``, ``objective``, ``dual_gap``, ``time``, ``relative_gap`` (to
            the objective) and ``null_relative_gap`` (to the intercept-only loss) at
            every gap evaluation; the factored solver adds ``rank`` (heads per block)
            and ``dtype`` (the precision of the products: a float32 fit whose
            certificate stalls at float32's precision continues in float64).
        token_shape_ : tuple (n_tokens, n_features)
        n_features_in_ : int
            ``n_tokens * n_features``.
        device_ : str
            ``"cpu"`` or ``"cuda"``: where the fit ran.
    """),
}
