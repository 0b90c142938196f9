"""The package's estimators as pytest parameters, shared by the test modules.

The heads come from the registry (:mod:`skconvexattn.heads`): a registered head is tested
with no other change.
"""

import pytest

from skconvexattn import TokenPCA, TokenStandardScaler
from skconvexattn.heads import registered_heads

HEAD_CLASSES = [spec.estimator for spec in registered_heads()]
TRANSFORMER_CLASSES = [TokenStandardScaler, TokenPCA]

#: parameters of the common-check instances beyond the defaults, per head name: the
#: self-attention head's d**3 features make its default 8 gates slow on the checks' data
#: (with 2 gates the per-token MLP head, in turn, is too coarse for check_classifiers_train's
#: 0.83 accuracy bar on one-token blobs: it keeps its default)
_CHECK_PARAMS = {"attention": {"n_gates": 2}}


def common_check_estimators(specs=None):
    """The instances the scikit-learn common checks run on: every registered head (or
    those of ``specs``) with its default activation and, when it has one, the linear
    activation, 200 iterations at most."""
    specs = registered_heads() if specs is None else specs
    out = []
    for spec in specs:
        cls = spec.estimator
        base = dict(random_state=0, max_iter=200)
        variants = [{"activation": "linear"}] if "activation" in cls._get_param_names() else []
        for extra in [_CHECK_PARAMS.get(spec.name, {}), *variants]:
            out.append(cls(**base, **extra))
    return out


def estimator_params(classes, activations=None):
    """``pytest.param(cls)`` per class, or ``pytest.param(cls, activation)`` per class and
    activation (ids ``Name`` or ``Name-activation``)."""
    if activations is None:
        return [pytest.param(cls, id=cls.__name__) for cls in classes]
    return [
        pytest.param(cls, act, id=f"{cls.__name__}-{act}")
        for cls in classes
        for act in activations
    ]
