"""Non-convex networks recovered from fitted convex heads (``docs/convexity.rst``).

``est.to_nonconvex()`` turns a fitted head back into the architecture it stands for: the
compact SVD of each block, ``Z_p = sum_j sigma_j u_j v_j^T``, gives one head (or neuron)
per active singular value, ``W_1j = sqrt(sigma_j) reshape(u_j)``,
``W_2j = sqrt(sigma_j) reshape(v_j)``, gated by gate ``p``:

* self-attention: ``o = sum_j (1/s) 1^T (M_p o (X W_1j X^T)) X W_2j + b``;
* MLP-Mixer: ``o = sum_j (1/s) 1^T (M_p o (W_1j X)) W_2j + b``;
* FNO: ``o = sum_j (1/s) sum_t D_p[t] (C(X) K_j)[t] w_2j + b``;
* token MLP: ``o = sum_j (1/s) sum_t D_p(x_t) (x_t^T w_1j) w_2j + b``.

The network reproduces the head's logits and its weight-decay objective equals the
certified convex optimum ``objective_``. ``to_torch()`` gives the same network as a
:class:`torch.nn.Module`.

Each network class lives beside its head, in :mod:`skconvexattn.heads` (one module per
architecture), with its forward pass written once against the array API; the shared base
is :mod:`skconvexattn._network`. This module gathers them under their public names.
"""

from ._network import RecoveredNetwork, heads_from_factors, recover_heads
from ._network import _torch_class
from .heads.attention import SelfAttentionNetwork
from .heads.fno import FNONetwork
from .heads.mixer import MixerNetwork
from .heads.mlp import TokenMLPNetwork

__all__ = [
    "RecoveredNetwork",
    "SelfAttentionNetwork",
    "MixerNetwork",
    "FNONetwork",
    "TokenMLPNetwork",
    "recover_heads",
    "heads_from_factors",
]


def __getattr__(name):
    # the torch module class exists once torch is imported; this lets pickle find it
    if name == "TorchRecoveredNetwork":
        return _torch_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
