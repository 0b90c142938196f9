"""Token datasets: real images cut into patches, and planted latent token clusters.

* :func:`load_digits_tokens` turns scikit-learn's bundled 8x8 handwritten digits (real
  images, no download) into token matrices, one token per image patch, the way a vision
  transformer tokenises an image.
* :func:`make_token_clusters` draws synthetic token matrices whose tokens come from
  planted latent clusters with known assignments, and whose label is invisible in the mean
  token but readable from token-token (second-order) interactions.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.datasets import load_digits
from sklearn.utils import Bunch, check_random_state
from sklearn.utils._param_validation import Interval, validate_params

__all__ = ["load_digits_tokens", "make_token_clusters"]

_DIGITS_SIDE = 8


# --------------------------------------------------------------------------- digits
_DIGITS_TOKENS_DESCR = """\
.. _digits_tokens_dataset:

Handwritten digits as patch tokens
----------------------------------

scikit-learn's bundled optical-recognition digits (1797 real 8x8 images, pixel values
0..16; the original description follows below) cut into non-overlapping
``patch_size x patch_size`` patches, one token per patch, patches in row-major order
(left to right, then top to bottom), exactly as a vision transformer tokenises an image.

**Token features** (``n_features = patch_size**2 [+ n_tokens]``):

* ``pixel_<r>_<c>``: the patch's pixels in row-major order inside the patch, divided by
  16 (range [0, 1]) when ``scale=True``, raw 0..16 otherwise;
* ``position_<i>_<j>`` (when ``positional=True``): a one-hot encoding of the patch's
  position ``(i, j)`` in the ``grid_shape`` grid of patches, the analogue of a ViT
  position embedding. Without it a token-pooled head cannot tell where a patch lies.

Token ``t`` is the patch in grid row ``t // grid_shape[1]`` and column
``t % grid_shape[1]``; its pixels are ``images[:, r0:r0+p, c0:c0+p]`` with
``r0 = p * (t // grid_shape[1])`` and ``c0 = p * (t % grid_shape[1])``.

"""


@validate_params(
    {
        "n_class": [Interval(Integral, 1, 10, closed="both")],
        "patch_size": [Interval(Integral, 1, None, closed="left")],
        "positional": ["boolean"],
        "scale": ["boolean"],
        "return_X_y": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def load_digits_tokens(
    *, n_class=10, patch_size=2, positional=True, scale=True, return_X_y=False
):
    """Load scikit-learn's 8x8 digits as patch tokens (classification).

    Each 8x8 image is cut into non-overlapping ``patch_size x patch_size`` patches taken in
    row-major order; each patch becomes one token whose features are its pixels (row-major
    inside the patch) followed, when ``positional=True``, by a one-hot encoding of the
    patch position. The images are the real ones bundled with scikit-learn
    (:func:`sklearn.datasets.load_digits`); nothing is downloaded.

    ==================  ==================================================
    Classes             10
    Samples total       1797
    Tokens per sample   ``(8 // patch_size)**2``
    Features per token  ``patch_size**2`` (+ ``n_tokens`` if positional)
    Pixel features      [0, 1] floats (``scale=True``) or 0..16
    ==================  ==================================================

    Parameters
    ----------
    n_class : int, default=10
        The number of classes to return (digits ``0 .. n_class - 1``), between 1 and 10,
        as in :func:`sklearn.datasets.load_digits`.
    patch_size : int, default=2
        Side of the square patches; must divide 8 (1, 2, 4 or 8). ``2`` gives 16 tokens
        of 4 pixels, ``4`` gives 4 tokens of 16 pixels, ``8`` one token (the whole image).
    positional : bool, default=True
        Append a one-hot encoding of the patch position (``n_tokens`` extra features).
    scale : bool, default=True
        Divide pixel values by 16 so that they lie in [0, 1]. The division is exact: the
        raw integer pixels are recovered by multiplying by 16.
    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the attributes:

        data : ndarray of shape (n_samples, n_tokens, n_features), dtype float64
            The token matrices.
        target : ndarray of shape (n_samples,)
            The digit of each image.
        images : ndarray of shape (n_samples, 8, 8)
            The original images, raw pixel values 0..16 as in ``load_digits``.
        grid_shape : tuple of int
            Patches per column and per row, ``(8 // patch_size, 8 // patch_size)``.
        patch_size : int
            The patch side.
        feature_names : list of str
            Names of the token features: ``pixel_<r>_<c>`` (position inside the patch),
            then ``position_<i>_<j>`` (patch position in the grid) if ``positional``.
        target_names : ndarray of shape (n_class,)
            The digits present, ``0 .. n_class - 1`` (``load_digits`` always lists
            all ten).
        DESCR : str
            The description of the dataset.

    (data, target) : tuple if ``return_X_y`` is True
        ``data`` of shape (n_samples, n_tokens, n_features), ``target`` of shape
        (n_samples,).

    See Also
    --------
    sklearn.datasets.load_digits : The same images as flat 64-pixel vectors.

    Examples
    --------
    >>> from skconvexattn.datasets import load_digits_tokens
    >>> digits = load_digits_tokens(patch_size=4)
    >>> digits.data.shape
    (1797, 4, 20)
    >>> digits.grid_shape
    (2, 2)
    >>> X, y = load_digits_tokens(patch_size=2, positional=False, return_X_y=True)
    >>> X.shape
    (1797, 16, 4)
    """
    if _DIGITS_SIDE % patch_size:
        raise ValueError(
            f"patch_size={patch_size} does not divide the 8x8 digit images into whole "
            "patches. Use patch_size=1, 2, 4 or 8 (a divisor of 8)."
        )
    digits = load_digits(n_class=n_class)
    images = np.asarray(digits.images, dtype=np.float64)
    n = images.shape[0]
    p = int(patch_size)
    g = _DIGITS_SIDE // p
    s = g * g
    # (n, g, p, g, p) -> (n, g_row, g_col, p_row, p_col) -> tokens in row-major patch order
    patches = (
        images.reshape(n, g, p, g, p).transpose(0, 1, 3, 2, 4).reshape(n, s, p * p).copy()
    )
    if scale:
        patches = patches / 16.0
    feature_names = [f"pixel_{r}_{c}" for r in range(p) for c in range(p)]
    if positional:
        onehot = np.broadcast_to(np.eye(s), (n, s, s))
        data = np.concatenate([patches, onehot], axis=2)
        feature_names += [f"position_{i}_{j}" for i in range(g) for j in range(g)]
    else:
        data = patches
    target = np.asarray(digits.target)
    if return_X_y:
        return data, target
    return Bunch(
        data=data,
        target=target,
        images=images,
        grid_shape=(g, g),
        patch_size=p,
        feature_names=feature_names,
        target_names=np.asarray(digits.target_names)[:n_class],
        DESCR=_DIGITS_TOKENS_DESCR + digits.DESCR,
    )


# --------------------------------------------------------------------------- clusters
_CLUSTERS_DESCR = """\
.. _token_clusters_dataset:

Planted token clusters
----------------------

Synthetic token matrices from :func:`skconvexattn.datasets.make_token_clusters`. Every
token belongs to one of ``n_clusters`` planted latent clusters (``clusters``) around
well-separated ``centers``. The label is the direction along which clusters 0 and 1 are
pushed apart (cluster 0 by ``+signal * directions[y]``, cluster 1 by the opposite), so
the displacements cancel in the mean token: the mean token has exactly the same
distribution in every class, and the label is only visible through how tokens of
different clusters relate (second-order token statistics such as ``X^T X``).
"""


def _centers_and_directions(rng, n_clusters, n_features, n_classes, separation):
    """Cluster centres with pairwise distances >= ``separation`` and the class directions."""
    k, d, c = n_clusters, n_features, n_classes
    # Class directions: the vertices of a regular simplex centred at 0 (unit norm), in a
    # (c - 1)-dimensional subspace; for two classes this is +v and -v.
    B = np.linalg.qr(np.eye(c) - 1.0 / c)[0][:, : c - 1]  # orthonormal basis of 1^perp
    coords = (np.eye(c) - 1.0 / c) @ B
    coords /= np.linalg.norm(coords, axis=1, keepdims=True)
    Q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    if k + c - 1 <= d:
        # orthonormal centres (pairwise distance exactly `separation`), directions in the
        # orthogonal complement so the displacement never moves a cluster towards another
        centers = Q[:, :k].T * (separation / np.sqrt(2.0))
        basis = Q[:, k : k + c - 1]
    else:
        # not enough dimensions: the best of a few random draws on the sphere, rescaled
        # so that the closest pair of centres is `separation` apart
        best, best_gap = None, -1.0
        for _ in range(32):
            U = rng.standard_normal((k, d))
            U /= np.linalg.norm(U, axis=1, keepdims=True)
            gaps = np.linalg.norm(U[:, None, :] - U[None, :, :], axis=2)
            gap = gaps[np.triu_indices(k, 1)].min()
            if gap > best_gap:
                best, best_gap = U, gap
        centers = best * (separation / max(best_gap, 1e-12))
        basis = Q[:, : c - 1]
    directions = coords @ basis.T  # (c, d), unit rows
    return centers, directions


@validate_params(
    {
        "n_samples": [Interval(Integral, 1, None, closed="left")],
        "n_tokens": [Interval(Integral, 2, None, closed="left")],
        "n_features": [Interval(Integral, 1, None, closed="left")],
        "n_clusters": [Interval(Integral, 2, None, closed="left")],
        "n_classes": [Interval(Integral, 2, None, closed="left")],
        "cluster_std": [Interval(Real, 0, None, closed="left")],
        "separation": [Interval(Real, 0, None, closed="neither")],
        "signal": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        "return_X_y": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def make_token_clusters(
    n_samples=200,
    *,
    n_tokens=8,
    n_features=6,
    n_clusters=3,
    n_classes=2,
    cluster_std=0.3,
    separation=3.0,
    signal=0.5,
    random_state=None,
    return_X_y=False,
):
    """Generate token matrices with planted latent clusters and a relational label.

    Every token belongs to a latent cluster (known: ``clusters``), and the label is
    determined by how the tokens of clusters 0 and 1 relate to each other, never by the
    mean token, whose distribution is exactly the same in every class.

    Generative model, for each sample ``i`` with label ``y_i``:

    1. Composition: ``m_i`` tokens of cluster 0 and ``m_i`` tokens of cluster 1, with
       ``m_i`` uniform on ``{1, ..., n_tokens // 2}`` (``m_i = n_tokens / 2`` when
       ``n_clusters == 2``); the other ``n_tokens - 2 m_i`` tokens belong to clusters
       ``2 .. n_clusters - 1``, uniformly at random. The tokens are then put in a random
       order, so a token's position carries no information. The composition is drawn
       independently of the label.
    2. Tokens: ``x_it = centers[k_it] + delta_it + cluster_std * eps_it`` with
       ``eps_it ~ N(0, I)``, and the relational signal

       * ``delta_it = +signal * directions[y_i]`` for the tokens of cluster 0,
       * ``delta_it = -signal * directions[y_i]`` for the tokens of cluster 1,
       * ``delta_it = 0`` for the other clusters.

       ``directions`` are the unit vertices of a regular simplex centred at 0 (for two
       classes, ``+v`` and ``-v``): the label says along which direction cluster 0 is
       pushed away from cluster 1 (for two classes: which of the two lies on the
       positive side of ``v``).

    Consequences, which the package's tests verify numerically:

    * The displacements of clusters 0 and 1 cancel exactly in every sample (equal
      counts, opposite signs), so the mean token ``X_i.mean(axis=0)`` is
      ``sum_k n_ik centers[k] / n_tokens`` plus noise, independent of ``y``: no
      classifier of the mean token beats chance.
    * The label is a linear function of second-order token statistics, e.g.
      ``(centers[0] - centers[1]) @ X_i.T @ X_i @ directions[y]`` or the per-cluster
      mean tokens, which attention can form (tokens attending within their cluster).
    * With ``n_clusters + n_classes - 1 <= n_features`` the centres are orthonormal
      directions scaled to pairwise distance ``separation`` and the class directions lie
      in their orthogonal complement; otherwise the centres are random with closest pair
      ``separation`` apart. With the defaults, clustering the tokens (e.g. KMeans)
      recovers ``clusters`` almost perfectly.

    Classes are exactly balanced (``n_samples // n_classes`` each, the remainder to the
    first classes), in random order.

    Parameters
    ----------
    n_samples : int, default=200
        Number of samples (token matrices).
    n_tokens : int, default=8
        Tokens per sample, at least 2 (even when ``n_clusters == 2``).
    n_features : int, default=6
        Features per token, at least ``n_classes - 1``.
    n_clusters : int, default=3
        Number of planted latent clusters (at least 2: clusters 0 and 1 carry the label,
        the others are distractors).
    n_classes : int, default=2
        Number of classes.
    cluster_std : float, default=0.3
        Standard deviation of the isotropic Gaussian noise of every token.
    separation : float, default=3.0
        Distance between the closest pair of cluster centres.
    signal : float, default=0.5
        Length of the displacement of clusters 0 and 1 (``0`` gives labels that are
        pure noise).
    random_state : int, RandomState instance or None, default=None
        Determines the centres, directions, compositions, noise and labels. Pass an int
        for reproducible output across multiple function calls.
    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the attributes:

        data : ndarray of shape (n_samples, n_tokens, n_features)
            The token matrices.
        target : ndarray of shape (n_samples,)
            Integer labels ``0 .. n_classes - 1``.
        clusters : ndarray of shape (n_samples, n_tokens), dtype int64
            The planted cluster of every token.
        centers : ndarray of shape (n_clusters, n_features)
            The cluster centres.
        directions : ndarray of shape (n_classes, n_features)
            The unit displacement direction of each class.
        DESCR : str
            A description of the generative model.

    (data, target) : tuple if ``return_X_y`` is True

    Examples
    --------
    >>> from skconvexattn.datasets import make_token_clusters
    >>> ds = make_token_clusters(n_samples=100, random_state=0)
    >>> ds.data.shape, ds.clusters.shape, ds.centers.shape
    ((100, 8, 6), (100, 8), (3, 6))
    >>> import numpy as np
    >>> np.bincount(ds.target)
    array([50, 50])
    """
    n, s, d, k, c = n_samples, n_tokens, n_features, n_clusters, n_classes
    if c - 1 > d:
        raise ValueError(
            f"n_classes={c} needs at least n_classes - 1 = {c - 1} features per token to "
            f"hold one displacement direction per class, but n_features={d}. Increase "
            "n_features or reduce n_classes."
        )
    if k == 2 and s % 2:
        raise ValueError(
            f"n_tokens={s} is odd, but with n_clusters=2 every token belongs to cluster 0 "
            "or 1, which must hold equal numbers of tokens for the mean token to carry "
            "no label information. Use an even n_tokens, or n_clusters >= 3."
        )
    rng = check_random_state(random_state)
    centers, directions = _centers_and_directions(rng, k, d, c, float(separation))

    y = rng.permutation(np.arange(n) % c)
    if k == 2:
        m = np.full(n, s // 2)
    else:
        m = rng.randint(1, s // 2 + 1, size=n)
    # cluster of each token before shuffling: m zeros, m ones, then distractors
    slot = np.arange(s)[None, :]
    clusters = np.where(slot < m[:, None], 0, 1)
    if k > 2:
        distract = rng.randint(2, k, size=(n, s))
        clusters = np.where(slot >= 2 * m[:, None], distract, clusters)
    order = np.argsort(rng.random_sample((n, s)), axis=1)
    clusters = np.take_along_axis(clusters, order, axis=1).astype(np.int64)

    sign = np.select([clusters == 0, clusters == 1], [1.0, -1.0], default=0.0)
    X = (
        centers[clusters]
        + float(signal) * sign[:, :, None] * directions[y][:, None, :]
        + float(cluster_std) * rng.standard_normal((n, s, d))
    )
    if return_X_y:
        return X, y
    return Bunch(
        data=X,
        target=y,
        clusters=clusters,
        centers=centers,
        directions=directions,
        DESCR=_CLUSTERS_DESCR,
    )
