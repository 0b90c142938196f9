"""The convex heads and their registry.

One module per architecture (:mod:`~skconvexattn.heads.attention`,
:mod:`~skconvexattn.heads.mixer`, :mod:`~skconvexattn.heads.fno`,
:mod:`~skconvexattn.heads.mlp`) holds its feature map, its gates, its estimator and its
recovered non-convex network. The registry below lists them once; everything that lists
heads is generated from it: the ``*CV`` classes of :mod:`skconvexattn.model_selection`,
the command line's ``--head`` choices, options and ``demo`` table, the test suite's
parametrisation, the benchmarks' ``--heads`` and the API docs (checked by a test).

Adding a head is writing its module (a subclass of
:class:`~skconvexattn._base.BaseConvexHead` with a
:class:`~skconvexattn._network.RecoveredNetwork`) and one :func:`register_head` line.
:func:`registered_head` registers a head for the duration of a ``with`` block (tests,
experiments).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from .._base import BaseConvexHead
from .attention import ConvexSelfAttentionClassifier
from .fno import ConvexFNOClassifier
from .mixer import ConvexMixerClassifier
from .mlp import ConvexMLPClassifier

__all__ = [
    "HeadOption",
    "HeadSpec",
    "register_head",
    "unregister_head",
    "registered_head",
    "registered_heads",
    "get_head",
]


@dataclass(frozen=True)
class HeadOption:
    """A command-line option a head adds to ``skconvexattn fit``.

    Parameters
    ----------
    param : str
        The estimator parameter it sets; the option is ``--param-with-dashes``.
    help : str
        Help text.
    metavar : str, default="N"
    minimum : int, default=1
        The option takes integers ``>= minimum``.
    """

    param: str
    help: str
    metavar: str = "N"
    minimum: int = 1

    @property
    def flag(self):
        """The option as written on the command line, ``--n-modes``."""
        return "--" + self.param.replace("_", "-")


@dataclass(frozen=True)
class HeadSpec:
    """One registered head.

    Attributes
    ----------
    name : str
        Its name on the command line (``--head NAME``) and in the benchmarks.
    estimator : type
        The estimator class (a :class:`~skconvexattn._base.BaseConvexHead` subclass).
    label : str
        A human name for tables and messages.
    options : tuple of HeadOption
        Command-line options only this head takes.
    demo_activations : tuple of str
        The activations ``skconvexattn demo`` fits it with.
    """

    name: str
    estimator: type
    label: str
    options: tuple = field(default=())
    demo_activations: tuple = field(default=("gated_relu",))


_REGISTRY: dict[str, HeadSpec] = {}


def register_head(name, estimator, *, label=None, options=(), demo_activations=("gated_relu",)):
    """Register a head under ``name`` (see :class:`HeadSpec`).

    Parameters
    ----------
    name : str
        A new name (lower case, no spaces): ``--head NAME`` on the command line.
    estimator : type
        A subclass of :class:`~skconvexattn._base.BaseConvexHead`.
    label : str, default=None
        A human name (default: ``name``).
    options : sequence of HeadOption, default=()
        Command-line options for this head's own parameters.
    demo_activations : sequence of str, default=("gated_relu",)

    Returns
    -------
    spec : HeadSpec
    """
    if not (isinstance(name, str) and name and name == name.strip().lower() and " " not in name):
        raise ValueError(f"name must be a non-empty lower-case word; got {name!r}.")
    if name in _REGISTRY:
        raise ValueError(
            f"a head named {name!r} is already registered ({_REGISTRY[name].estimator.__name__})."
        )
    if not (isinstance(estimator, type) and issubclass(estimator, BaseConvexHead)):
        raise TypeError(f"estimator must be a BaseConvexHead subclass; got {estimator!r}.")
    for opt in options:
        if opt.param not in estimator._get_param_names():
            raise ValueError(
                f"option {opt.flag} sets {opt.param!r}, which is not a parameter of "
                f"{estimator.__name__}."
            )
    spec = HeadSpec(name, estimator, label or name, tuple(options), tuple(demo_activations))
    _REGISTRY[name] = spec
    return spec


def unregister_head(name):
    """Remove the head registered under ``name`` (a ``KeyError`` if there is none)."""
    del _REGISTRY[name]


@contextlib.contextmanager
def registered_head(name, estimator, **kwargs):
    """Register a head for the duration of a ``with`` block; yields its :class:`HeadSpec`.

    Examples
    --------
    >>> from skconvexattn.heads import registered_head, registered_heads
    >>> from skconvexattn.heads.mlp import ConvexMLPClassifier
    >>> with registered_head("another-mlp", ConvexMLPClassifier) as spec:
    ...     spec in registered_heads()
    True
    >>> spec in registered_heads()
    False
    """
    spec = register_head(name, estimator, **kwargs)
    try:
        yield spec
    finally:
        _REGISTRY.pop(name, None)


def registered_heads():
    """The registered heads, in registration order: a tuple of :class:`HeadSpec`."""
    return tuple(_REGISTRY.values())


def get_head(key):
    """The :class:`HeadSpec` of a head name or estimator class (a ``KeyError`` naming the
    registered heads otherwise)."""
    for spec in _REGISTRY.values():
        if key == spec.name or key is spec.estimator:
            return spec
    raise KeyError(
        f"no registered head {key!r}; registered: {', '.join(_REGISTRY) or 'none'}."
    )


# ----------------------------------------------------------------------------- the heads
register_head(
    "attention", ConvexSelfAttentionClassifier, label="self-attention",
    demo_activations=("linear", "gated_relu"),
)
register_head("mixer", ConvexMixerClassifier, label="MLP-Mixer")
register_head(
    "fno", ConvexFNOClassifier, label="FNO",
    options=(
        HeadOption("n_modes", "keep the lowest M Fourier modes of the kernels", "M"),
        HeadOption("n_blocks", "split the channels into B blocks (AFNO)", "B"),
    ),
)
register_head("mlp", ConvexMLPClassifier, label="token MLP")
