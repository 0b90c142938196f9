"""Pictures of fitted heads: token clusters on image patches, and solver convergence.

matplotlib is optional: it is imported inside the functions, and a missing installation
raises an :class:`ImportError` that says how to install it.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["plot_token_clusters", "plot_convergence", "cluster_colors"]

_OTHER = (0.6, 0.6, 0.6)


def _import_pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "skconvexattn.plotting needs matplotlib, which is not installed. Install it "
            "with `pip install matplotlib`."
        ) from exc
    return plt


def cluster_colors(clusters, max_colors=20):
    """One colour per cluster id, the most frequent ids first.

    Parameters
    ----------
    clusters : array-like of int
        Cluster ids (any shape), e.g. the output of ``transform``.
    max_colors : int, default=20
        Distinct colours (``tab10``, or ``tab20`` beyond ten ids); rarer ids share grey.

    Returns
    -------
    colors : dict
        ``{cluster id: RGB tuple}`` for every id present.
    ranked : list of (id, count)
        The ids by decreasing count (ties: smaller id first).
    """
    plt = _import_pyplot()
    ids, counts = np.unique(np.asarray(clusters).ravel(), return_counts=True)
    order = np.lexsort((ids, -counts))
    ranked = [(int(ids[i]), int(counts[i])) for i in order]
    palette = plt.get_cmap("tab10" if len(ranked) <= 10 else "tab20").colors
    palette = palette[:max_colors]
    colors = {}
    for r, (k, _) in enumerate(ranked):
        colors[k] = tuple(palette[r]) if r < len(palette) else _OTHER
    return colors, ranked


def _images_from_tokens(X, grid_shape, patch_size):
    """Rebuild images from tokens whose first ``patch_size**2`` features are the patch's
    pixels (row-major), patches in row-major grid order (``load_digits_tokens``)."""
    n, s, d = X.shape
    gr, gc = grid_shape
    p = patch_size
    if gr * gc != s or d < p * p:
        raise ValueError(
            f"X has {s} tokens of {d} features, which does not match grid_shape={grid_shape} "
            f"(needs {gr * gc} tokens) and patch_size={p} (needs at least {p * p} pixel "
            "features per token). Pass the grid and patch size of the data, or `images`."
        )
    pix = X[:, :, : p * p].reshape(n, gr, gc, p, p)
    return pix.transpose(0, 1, 3, 2, 4).reshape(n, gr * p, gc * p)


def plot_token_clusters(
    est,
    X,
    *,
    grid_shape,
    patch_size,
    images=None,
    ax=None,
    n_cols=6,
    alpha=0.5,
    titles="predict",
    legend=True,
):
    """Image patches coloured by token cluster: the same colour is the same cluster in
    every image.

    Every token of an image is a ``patch_size x patch_size`` patch of a ``grid_shape`` grid
    (row-major order, as :func:`~skconvexattn.datasets.load_digits_tokens` makes them).
    Each image is drawn in grey with a translucent colour over every patch, chosen by the
    patch's cluster id from ``est.transform(X)``; since an id names the same latent region
    in every sample (``docs/clusters.rst``), equal colours across images mean the same
    cluster. Colours are assigned within the figure, the most frequent ids first; the
    legend gives the id and share of tokens of each colour (ids beyond twenty share grey).

    Parameters
    ----------
    est : fitted head or pipeline ending in one
        Anything with ``transform(X)`` returning ``(n_samples, n_tokens)`` cluster ids.
    X : array-like of shape (n_samples, n_tokens, n_features)
        The tokens of the images to show (what ``est`` takes).
    grid_shape : tuple (n_rows, n_cols)
        Patches per column and per row of an image.
    patch_size : int
        Side of a patch in pixels.
    images : array-like of shape (n_samples, height, width), default=None
        The images; ``None`` rebuilds them from the first ``patch_size**2`` features of
        every token (the patch pixels in row-major order).
    ax : Axes or sequence of Axes, default=None
        One Axes per image (a single Axes for one image); ``None`` makes a figure with
        ``n_cols`` images per row.
    n_cols : int, default=6
        Images per row of a new figure.
    alpha : float, default=0.5
        Opacity of the cluster colours over the images.
    titles : "predict", sequence of str or None, default="predict"
        Axes titles: the predicted class (``est.predict``), given strings, or none.
    legend : bool, default=True
        Add a legend of the cluster colours.

    Returns
    -------
    fig : matplotlib Figure
        With one Axes per image, each holding two images: the picture and the colour
        overlay (an RGBA array, ``fig.axes[i].images[1].get_array()``).
    """
    plt = _import_pyplot()
    from matplotlib.patches import Patch

    X = np.asarray(X)
    if X.ndim == 2:
        X = X.reshape(X.shape[0], grid_shape[0] * grid_shape[1], -1)
    if X.ndim != 3:
        raise ValueError(f"X must be (n_samples, n_tokens, n_features); got shape {X.shape}.")
    n, s, _ = X.shape
    gr, gc = grid_shape
    p = int(patch_size)
    if gr * gc != s:
        raise ValueError(
            f"grid_shape={tuple(grid_shape)} has {gr * gc} patches but X has {s} tokens per "
            "sample; pass the grid of the data (e.g. load_digits_tokens(...).grid_shape)."
        )
    clusters = np.asarray(est.transform(X))
    if clusters.shape != (n, s):
        raise ValueError(
            f"est.transform(X) returned shape {clusters.shape}; token cluster ids of shape "
            f"{(n, s)} are needed."
        )
    if images is None:
        images = _images_from_tokens(X, grid_shape, p)
    images = np.asarray(images, dtype=float)
    if images.shape[0] != n or images.shape[1:] != (gr * p, gc * p):
        raise ValueError(
            f"images has shape {images.shape}; expected {(n, gr * p, gc * p)} for {n} "
            f"samples of {grid_shape} patches of {p}x{p} pixels."
        )

    if ax is None:
        cols = max(1, min(int(n_cols), n))
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.8 * rows))
        axes = np.atleast_1d(axes).ravel()
        for extra in axes[n:]:
            fig.delaxes(extra)
        axes = axes[:n]
    else:
        axes = np.atleast_1d(np.asarray(ax, dtype=object)).ravel()
        if axes.size < n:
            raise ValueError(f"ax holds {axes.size} Axes for {n} images; pass one per image.")
        axes = axes[:n]
        fig = axes[0].figure

    if isinstance(titles, str) and titles == "predict":
        try:
            titles = [f"predicted {v}" for v in est.predict(X)]
        except AttributeError:
            titles = None
    colors, ranked = cluster_colors(clusters)

    lo, hi = float(np.min(images)), float(np.max(images))
    for i, a in enumerate(axes):
        rgb = np.array([colors[int(k)] for k in clusters[i]]).reshape(gr, gc, 3)
        overlay = np.concatenate([rgb, np.full((gr, gc, 1), alpha)], axis=2)
        overlay = np.kron(overlay, np.ones((p, p, 1)))  # patch colour on every pixel
        a.imshow(images[i], cmap="gray_r", vmin=lo, vmax=hi, interpolation="nearest")
        a.imshow(overlay, interpolation="nearest")
        for r in range(1, gr):  # patch boundaries
            a.axhline(r * p - 0.5, color="white", lw=0.6)
        for c in range(1, gc):
            a.axvline(c * p - 0.5, color="white", lw=0.6)
        a.set_xticks([])
        a.set_yticks([])
        if titles is not None:
            a.set_title(str(titles[i]), fontsize=8)
    if legend:
        total = clusters.size
        handles = [
            Patch(color=colors[k], alpha=max(alpha, 0.6), label=f"cluster {k} ({cnt / total:.0%})")
            for k, cnt in ranked[:20]
        ]
        if len(ranked) > 20:
            rest = sum(cnt for _, cnt in ranked[20:])
            label = f"{len(ranked) - 20} more ({rest / total:.0%})"
            handles.append(Patch(color=_OTHER, label=label))
        right = 1.0
        if ax is None:  # next to the images (square images leave room inside the figure)
            for a in axes:
                a.apply_aspect()
            right = max(a.get_position().x1 for a in axes) + 0.01
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(right, 0.5), fontsize=8,
                   frameon=False, title="token cluster", title_fontsize=8)
    return fig


def plot_convergence(est, ax=None):
    """Objective and duality gap of a fit, per recorded iteration.

    Reads ``est.convergence_`` (the solver's record at every gap evaluation). The primal
    objective is drawn on the left axis (linear scale) and the duality gap, an upper bound
    on the objective's distance to the global optimum, on a log-scale right axis, with the
    stopping level ``tol * objective`` as a dashed line.

    Parameters
    ----------
    est : fitted head
        Any of the package's heads (with ``convergence_``).
    ax : Axes, default=None
        Where to draw the objective (the gap goes on ``ax.twinx()``); ``None`` makes a new
        figure.

    Returns
    -------
    fig : matplotlib Figure
        Its axes are ``[ax, gap_ax]``.
    """
    plt = _import_pyplot()
    hist = getattr(est, "convergence_", None)
    if hist is None:
        raise ValueError(
            f"{type(est).__name__} has no convergence_: fit the head first (pass the head "
            "itself, e.g. pipeline[-1], not a pipeline)."
        )
    it = np.asarray(hist["iteration"], dtype=float)
    obj = np.asarray(hist["objective"], dtype=float)
    gap = np.asarray(hist["dual_gap"], dtype=float)
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
    else:
        fig = ax.figure
    (l1,) = ax.plot(it, obj, color="C0", marker=".", ms=3, label="objective")
    ax.set_xlabel("iteration")
    ax.set_ylabel("objective (mean loss + alpha * sum ||Z_p||_*)", fontsize=8)
    gax = ax.twinx()
    pos = gap > 0
    (l2,) = gax.plot(it[pos], gap[pos], color="C3", marker=".", ms=3, label="duality gap")
    gax.set_yscale("log")
    gax.set_ylabel("duality gap (log scale)", fontsize=8)
    handles = [l1, l2]
    tol = getattr(est, "tol", None)
    if tol is not None and tol > 0:
        l3 = gax.axhline(tol * float(est.objective_), color="C3", ls="--", lw=0.8,
                         label=f"tol * objective (tol={tol:g})")
        handles.append(l3)
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    ax.set_title(
        f"{type(est).__name__}: {int(est.n_iter_)} iterations, gap {float(est.dual_gap_):.1e}",
        fontsize=9,
    )
    return fig
