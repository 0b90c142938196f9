"""skconvexattn: attention heads trained to global optimality by convex optimisation.

The heads are scikit-learn classifiers on token features of shape
``(n_samples, n_tokens, n_features)``; each solves the convex equivalent of its block
(Sahiner et al., ICML 2022) with an accelerated proximal method and certifies the
solution with a duality gap.
"""

from . import model_selection as _model_selection
from .heads import registered_heads as _registered_heads
from .preprocessing import TokenPCA, TokenStandardScaler

__version__ = "0.1.0.dev0"

__all__ = []
# every head of the registry (skconvexattn.heads) and its cross-validated twin
for _spec in _registered_heads():
    for _cls in (_spec.estimator, _model_selection.cv_estimator(_spec.estimator)):
        globals()[_cls.__name__] = _cls
        __all__.append(_cls.__name__)
del _spec, _cls
__all__ += ["TokenStandardScaler", "TokenPCA", "__version__"]
