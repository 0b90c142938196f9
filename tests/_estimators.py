"""The package's estimators as pytest parameters, shared by the test modules."""

import pytest

from skconvexattn import (
    ConvexFNOClassifier,
    ConvexMixerClassifier,
    ConvexMLPClassifier,
    ConvexSelfAttentionClassifier,
    TokenPCA,
    TokenStandardScaler,
)

HEAD_CLASSES = [
    ConvexSelfAttentionClassifier,
    ConvexMixerClassifier,
    ConvexFNOClassifier,
    ConvexMLPClassifier,
]
TRANSFORMER_CLASSES = [TokenStandardScaler, TokenPCA]


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
