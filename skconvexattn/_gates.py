"""Random gates of the gated-ReLU heads, drawn once per fit on the host.

All gates act on *standardised* tokens ``(x - mu) / sigma``, where ``mu`` and ``sigma``
are the (sample-weighted) mean and standard deviation of every training token's features.
This makes the gates invariant to feature scaling, to permuting or duplicating samples,
and equivalent under integer sample weights; randomness comes from ``random_state``
alone, never from which samples were drawn.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils import Bunch

from ._backend import get_namespace
from ._padding import split_padding
from ._penalty import active_order

__all__ = [
    "token_moments",
    "hyperplane_gates",
    "prototype_gates",
    "standardised_tokens",
    "token_sides",
    "sign_pattern_clusters",
    "gate_side_clusters",
    "gate_side_info",
    "padding_ids",
    "HyperplaneGatesMixin",
]


class HyperplaneGatesMixin:
    """The gate hooks of the heads gated by token-space hyperplanes (self-attention,
    token MLP): ``n_gates`` hyperplanes drawn by :func:`hyperplane_gates`, or by
    :func:`prototype_gates` with ``gate_init="prototypes"``; none for the linear
    activation. ``gates_`` holds ``"H"`` ``(n_gates, d)`` and ``"c"`` ``(n_gates,)``. With
    gates, ``transform`` gives the gate sides of the tokens (``_gate_side_definition``
    says what they mean to the head); linear heads supply ``_linear_token_clusters`` and
    ``_linear_token_cluster_info``."""

    def _draw_gates(self, rng, mu, sigma, s, d):
        if self.activation == "linear":
            return {}
        H, c = hyperplane_gates(rng, self.n_gates, mu, sigma)
        return {"H": H, "c": c}

    def _init_gates(self, rng, X, w, mu, sigma):
        if self.activation == "gated_relu" and self.gate_init == "prototypes":
            H, c = prototype_gates(rng, self.n_gates, X, w, mu, sigma)
            return {"H": H, "c": c}
        return super()._init_gates(rng, X, w, mu, sigma)

    def _token_clusters(self, X):
        """Gated: the gate sides (:func:`gate_side_clusters`); linear: the head's
        ``_linear_token_clusters``."""
        if self.activation == "gated_relu":
            return gate_side_clusters(self, X)
        return self._linear_token_clusters(X)

    def _token_cluster_info(self):
        if self.activation == "gated_relu":
            return gate_side_info(self, self._gate_side_definition)
        return self._linear_token_cluster_info()


def token_sides(X, H, c):
    """0/1 side of every token for every gate hyperplane: ``(m, s, P)``, dtype of ``X``.

    Token ``x`` is on side 1 of gate ``p`` when ``H[p] . x + c[p] >= 0``.
    """
    xp = get_namespace(X)
    return xp.astype((X @ xp.matrix_transpose(H) + c) >= 0, X.dtype)


def padding_ids(ids, real):
    """Token ids with padding tokens (``real == 0``) set to -1."""
    ids = np.array(ids, dtype=np.int64)
    ids[np.asarray(real) == 0] = -1
    return ids


def sign_pattern_clusters(sides, norms, max_bits=None):
    """Cluster ids from the gates' sides: bit ``j`` is the side of the ``j``-th most
    important active gate (gates whose block is zero are ignored, see
    :func:`~skconvexattn._penalty.active_order`).

    ``sides`` has shape ``(n, s, P)`` (0/1); returns ``(n, s)`` integers.
    """
    order = active_order(norms)
    if max_bits is not None:
        order = order[:max_bits]
    if order.size == 0:
        return np.zeros(sides.shape[:2], dtype=np.int64)
    bits = sides[:, :, order].astype(np.int64)
    return bits @ (1 << np.arange(order.size, dtype=np.int64))


def gate_side_clusters(est, X):
    """Token ids of a fitted head with hyperplane gates ``gates_["H"], gates_["c"]``: the
    sides of a token over the active gates, most important first; padding gets -1."""
    g = est.gates_
    X0, real, _ = split_padding(X)
    sides = token_sides(X0, g["H"].astype(X.dtype), g["c"].astype(X.dtype))
    return padding_ids(sign_pattern_clusters(np.asarray(sides), est.block_norms()), real)


def gate_side_info(est, definition):
    """What the ids of :func:`gate_side_clusters` mean, for ``token_cluster_info``."""
    norms = est.block_norms()
    order = active_order(norms)
    return Bunch(
        kind="gate_sides",
        definition=definition,
        gates=order,
        hyperplanes=est.gates_["H"][order],
        offsets=est.gates_["c"][order],
        importance=norms[order],
        block_norms=norms,
    )


def standardised_tokens(X0, real, mu=None, sigma=None):
    """``(X0 - mu) / sigma`` with padding kept a zero token (the gates' input).

    ``X0`` is ``(m, s, d)`` with padding rows zero, ``real`` the ``(m, s)`` real-token
    mask; ``mu``/``sigma`` (``(d,)`` or None) are the token moments.
    """
    Xt = X0
    if mu is not None:
        Xt = Xt - mu
    if sigma is not None:
        Xt = Xt / sigma
    return Xt * real[:, :, None]


def token_moments(X, w):
    """Weighted mean and scale of token features over all real tokens.

    ``X`` is ``(n, s, d)``; padding tokens (rows entirely NaN) are left out: every real
    token of sample ``i`` has weight ``w[i]``.
    """
    d = X.shape[2]
    T = X.reshape(-1, d)
    tw = np.broadcast_to(np.asarray(w, dtype=np.float64)[:, None], X.shape[:2]).reshape(-1)
    real = ~np.isnan(T[:, 0])
    if not real.all():
        T, tw = T[real], tw[real]
    T = T.astype(np.float64)
    tw = tw / tw.sum()
    mu = tw @ T
    var = tw @ (T - mu) ** 2
    return _finish_moments(mu, var)


def _finish_moments(mu, var):
    """``mu`` and the scale ``sqrt(var)``, with 1 for (numerically) constant features
    (shared with the Dask path, which reduces ``mu`` and ``var`` over chunks)."""
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


def prototype_gates(rng, n_gates, X, w, mu, sigma, n_refine=5, chunk_tokens=65536):
    """Token-space hyperplanes that each separate a *prototype region* from the mean token.

    In standardised coordinates ``u = (x - mu) / sigma`` (the origin is the mean token),
    gate by gate:

    1. the seed prototype ``a_p`` is a training token drawn with probability proportional
       to its sample weight among the tokens not yet *covered* (on side 1 of an earlier
       gate; once every token is covered, coverage starts afresh), so that successive gates
       spread over the regions of the data. The draw is made without depending on the
       order of the samples: the tokens are sorted along a random direction ``z_p`` and the
       seed is the one at a uniform random quantile ``q_p`` of their weight;
    2. ``n_refine`` times, replace ``a_p`` by the weighted mean of the training tokens that
       are closer to ``a_p`` than to the origin (a two-centre Lloyd step, one centre pinned
       at the mean token), which moves ``a_p`` to the centre of its region of tokens;
    3. the gate is the perpendicular bisector of the origin and ``a_p``: side 1 is
       ``||u - a_p|| <= ||u||``, i.e. the tokens nearer the prototype than the mean token.

    When the tokens form well-separated latent clusters, each gate is then (nearly) the
    indicator of one cluster, so the sides of a few gates name the clusters and attention
    through a gate stays inside a cluster. Randomness comes from ``random_state`` alone;
    samples of zero weight are ignored, and the construction is invariant to permuting or
    duplicating samples (up to exact distance ties), equivalent under integer sample
    weights, and, like :func:`hyperplane_gates`, invariant to feature units.

    Parameters
    ----------
    rng : numpy.random.RandomState
    n_gates : int
    X : ndarray of shape (n, s, d)
        Training tokens; padding tokens (rows entirely NaN) are ignored.
    w : ndarray of shape (n,)
        Sample weights (non-negative).
    mu, sigma : ndarray of shape (d,)
        Token moments (:func:`token_moments`).
    n_refine : int, default=5
        Lloyd steps moving each prototype to the centre of its region.
    chunk_tokens : int
        Tokens processed at a time (bounds the scratch memory).

    Returns
    -------
    H : ndarray of shape (n_gates, d)
    c : ndarray of shape (n_gates,)
        Side 1 of gate ``p`` is ``H[p] . x + c[p] >= 0``; the normal has unit norm in
        standardised coordinates, as for :func:`hyperplane_gates`.
    """
    n, s, d = X.shape
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    keep = np.asarray(w) > 0
    Xk = X[keep].reshape(-1, d)
    tw = np.repeat(np.asarray(w, dtype=np.float64)[keep], s)
    real = ~np.isnan(Xk[:, 0])  # padding tokens are never prototypes nor counted
    if not real.all():
        Xk, tw = Xk[real], tw[real]
    N = Xk.shape[0]
    Zs = rng.standard_normal((n_gates, d))
    qs = rng.uniform(size=n_gates)

    def chunks():
        for start in range(0, N, chunk_tokens):
            yield start, (Xk[start : start + chunk_tokens].astype(np.float64) - mu) / sigma

    covered = np.zeros(N, dtype=bool)
    A = np.zeros((n_gates, d))
    for p in range(n_gates):
        if covered.all():
            covered[:] = False
        # 1. an uncovered training token, drawn with probability proportional to its weight:
        #    the one at the random quantile q_p of the weight along the direction z_p
        proj = np.concatenate([U @ Zs[p] for _, U in chunks()])
        cand = np.flatnonzero(~covered)
        order = cand[np.argsort(proj[cand], kind="stable")]
        cum = np.cumsum(tw[order])
        j = order[min(int(np.searchsorted(cum, qs[p] * cum[-1])), order.size - 1)]
        a = (Xk[j].astype(np.float64) - mu) / sigma
        # 2. move it to the mean of the tokens nearer to it than to the mean token
        for _ in range(n_refine):
            total, acc = 0.0, np.zeros(d)
            for start, U in chunks():
                near = U @ a - 0.5 * (a @ a) > 0
                ww = tw[start : start + U.shape[0]] * near
                total += ww.sum()
                acc += ww @ U
            if total <= 0:
                break
            a = acc / total
        A[p] = a
        covered[j] = True
        for start, U in chunks():
            covered[start : start + U.shape[0]] |= U @ a - 0.5 * (a @ a) >= 0
    # 3. bisector of the origin and a_p, written in raw token coordinates
    norm = np.linalg.norm(A, axis=1)
    norm[norm == 0] = 1.0  # degenerate (all tokens equal): a hyperplane through mu
    H = A / norm[:, None] / sigma
    c = -H @ mu - 0.5 * np.linalg.norm(A, axis=1)
    return H, c
