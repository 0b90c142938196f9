"""Random gates of the gated-ReLU heads, drawn once per fit on the host.

All gates act on *standardised* tokens ``(x - mu) / sigma``, where ``mu`` and ``sigma``
are the (sample-weighted) mean and standard deviation of every training token's features.
This makes the gates invariant to feature scaling, to permuting or duplicating samples,
and equivalent under integer sample weights; randomness comes from ``random_state``
alone, never from which samples were drawn.
"""

from __future__ import annotations

import numpy as np

__all__ = ["token_moments", "hyperplane_gates"]


def token_moments(X, w):
    """Weighted mean and scale of token features over all tokens; ``X`` is ``(n, s, d)``."""
    tw = np.broadcast_to(w[:, None], X.shape[:2]).reshape(-1)
    T = X.reshape(-1, X.shape[2]).astype(np.float64)
    tw = tw / tw.sum()
    mu = tw @ T
    var = tw @ (T - mu) ** 2
    sigma = np.sqrt(var)
    sigma[sigma <= 1e-12 * (np.abs(mu) + 1.0)] = 1.0
    return mu, sigma


def hyperplane_gates(rng, n_gates, mu, sigma, spread=0.5):
    """Token-space hyperplanes ``{x : h_p . x + c_p = 0}`` through the data.

    The normals are Gaussian in standardised coordinates; each hyperplane passes through
    ``mu + spread * sigma * z_p`` with ``z_p`` standard Gaussian, so that both sides hold
    tokens. Returns ``H`` of shape ``(n_gates, d)`` and offsets ``c`` of shape ``(n_gates,)``.
    """
    d = mu.shape[0]
    Hs = rng.standard_normal((n_gates, d))
    Hs /= np.linalg.norm(Hs, axis=1, keepdims=True)
    anchors = mu + spread * sigma * rng.standard_normal((n_gates, d))
    H = Hs / sigma
    c = -np.einsum("pd,pd->p", H, anchors)
    return H, c
