"""skconvexattn: attention heads trained to global optimality by convex optimisation.

The heads are scikit-learn classifiers on token features of shape
``(n_samples, n_tokens, n_features)``; each solves the convex equivalent of its block
(Sahiner et al., ICML 2022) with an accelerated proximal method and certifies the
solution with a duality gap.
"""

from .heads.attention import ConvexSelfAttentionClassifier
from .heads.fno import ConvexFNOClassifier
from .heads.mixer import ConvexMixerClassifier
from .heads.mlp import ConvexMLPClassifier
from .model_selection import (
    ConvexFNOClassifierCV,
    ConvexMixerClassifierCV,
    ConvexMLPClassifierCV,
    ConvexSelfAttentionClassifierCV,
)
from .preprocessing import TokenPCA, TokenStandardScaler

__version__ = "0.1.0.dev0"

__all__ = [
    "ConvexSelfAttentionClassifier",
    "ConvexFNOClassifier",
    "ConvexMixerClassifier",
    "ConvexMLPClassifier",
    "ConvexSelfAttentionClassifierCV",
    "ConvexMixerClassifierCV",
    "ConvexFNOClassifierCV",
    "ConvexMLPClassifierCV",
    "TokenStandardScaler",
    "TokenPCA",
    "__version__",
]
