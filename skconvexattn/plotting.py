"""Pictures of fitted heads: token clusters on image patches or on the words of texts,
and solver convergence.

matplotlib is optional: it is imported inside the functions, and a missing installation
raises an :class:`ImportError` that says how to install it.
"""

from __future__ import annotations

import math

import numpy as np

from ._backend import import_optional
from ._padding import padding_mask

__all__ = ["plot_token_clusters", "plot_convergence", "cluster_colors"]

_OTHER = (0.6, 0.6, 0.6)


def _import_pyplot():
    return import_optional(
        "matplotlib.pyplot", "skconvexattn.plotting", "matplotlib", "pip install matplotlib"
    )


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
    tokens=None,
    grid_shape=None,
    patch_size=None,
    images=None,
    ax=None,
    n_cols=6,
    alpha=0.5,
    titles="predict",
    legend=True,
    fontsize=10,
    width=9.0,
):
    """Tokens coloured by cluster, on image patches or on the words of texts: the same
    colour is the same cluster in every sample.

    The cluster id of every token comes from ``est.transform(X)``; since an id names the
    same latent region in every sample (``docs/clusters.rst``), equal colours across
    samples mean the same cluster. Colours are assigned within the figure, the most
    frequent ids first; the legend gives the id and share of tokens of each colour (ids
    beyond twenty share grey).

    Two kinds of tokens can be drawn:

    * **text** (``tokens`` given): every sample is a line of highlighted words, one box
      per token in the colour of its cluster. Padding rows (all-NaN rows of ``X``, or id
      ``-1``) are skipped, so ``tokens[i]`` lists the strings of the real tokens of sample
      ``i`` in order, e.g. :meth:`HFTokenEncoder.get_tokens
      <skconvexattn.encoders.HFTokenEncoder.get_tokens>`. Word pieces continuing a word
      (``"##ing"``) are drawn against the previous piece, without the marker.
    * **image patches** (``grid_shape`` and ``patch_size``, or ``images``): every token is
      a ``patch_size x patch_size`` patch of a ``grid_shape`` grid (row-major order, as
      :func:`~skconvexattn.datasets.load_digits_tokens` makes them). Each image is drawn in
      grey with a translucent colour over every patch.

    Parameters
    ----------
    est : fitted head or pipeline ending in one
        Anything with ``transform(X)`` returning ``(n_samples, n_tokens)`` cluster ids.
    X : array-like of shape (n_samples, n_tokens, n_features)
        The tokens of the samples to show (what ``est`` takes).
    tokens : list of list of str, default=None
        Text mode: the string of every real token of every sample.
    grid_shape : tuple (n_rows, n_cols), default=None
        Image mode: patches per column and per row of an image. ``None`` with image
        input takes a square grid when ``n_tokens`` is a square.
    patch_size : int, default=None
        Image mode: side of a patch in pixels; ``None`` reads it from ``images``.
    images : array-like of shape (n_samples, height, width), default=None
        Image mode: the images; ``None`` rebuilds them from the first ``patch_size**2``
        features of every token (the patch pixels in row-major order).
    ax : Axes or sequence of Axes, default=None
        Image mode: one Axes per image (a single Axes for one image); text mode: one Axes
        for all the texts. ``None`` makes a figure (``n_cols`` images per row).
    n_cols : int, default=6
        Images per row of a new figure (image mode).
    alpha : float, default=0.5
        Opacity of the cluster colours.
    titles : "predict", sequence of str or None, default="predict"
        A title per sample: the predicted class (``est.predict``), given strings, or none.
    legend : bool, default=True
        Add a legend of the cluster colours.
    fontsize : float, default=10
        Text mode: size of the words, in points.
    width : float, default=9.0
        Text mode: width of a new figure in inches; lines wrap to fit.

    Returns
    -------
    fig : matplotlib Figure
        Image mode: one Axes per image, each holding two images, the picture and the colour
        overlay (an RGBA array, ``fig.axes[i].images[1].get_array()``). Text mode: one
        Axes whose texts with a box (``text.get_bbox_patch()``) are the tokens, in order,
        the box's face colour being the cluster's.

    Raises
    ------
    ValueError
        When the tokens cannot be drawn: neither ``tokens`` nor an image grid that fits
        ``n_tokens``, padding rows in image mode, or ``tokens`` that do not match the real
        tokens of ``X``.
    """
    X = np.asarray(X)
    if X.ndim == 2 and tokens is None and grid_shape is not None:
        X = X.reshape(X.shape[0], grid_shape[0] * grid_shape[1], -1)
    if X.ndim != 3:
        raise ValueError(f"X must be (n_samples, n_tokens, n_features); got shape {X.shape}.")
    if tokens is not None:
        if grid_shape is not None or patch_size is not None or images is not None:
            raise ValueError(
                "pass either tokens (text) or grid_shape/patch_size/images (image patches), "
                "not both."
            )
        return _plot_text_clusters(est, X, tokens, ax=ax, alpha=alpha, titles=titles,
                                   legend=legend, fontsize=fontsize, width=width)
    return _plot_image_clusters(est, X, grid_shape=grid_shape, patch_size=patch_size,
                                images=images, ax=ax, n_cols=n_cols, alpha=alpha,
                                titles=titles, legend=legend)


def _cluster_ids(est, X):
    clusters = np.asarray(est.transform(X))
    if clusters.shape != X.shape[:2]:
        raise ValueError(
            f"est.transform(X) returned shape {clusters.shape}; token cluster ids of shape "
            f"{X.shape[:2]} are needed."
        )
    return clusters


def _titles(est, X, titles, n):
    if isinstance(titles, str) and titles == "predict":
        try:
            return [f"predicted {v}" for v in est.predict(X)]
        except AttributeError:
            return None
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles has {len(titles)} entries for {n} samples; pass one each.")
    return titles


def _legend_handles(colors, ranked, alpha):
    from matplotlib.patches import Patch

    total = sum(cnt for _, cnt in ranked)
    handles = [
        Patch(color=colors[k], alpha=max(alpha, 0.6), label=f"cluster {k} ({cnt / total:.0%})")
        for k, cnt in ranked[:20]
    ]
    if len(ranked) > 20:
        rest = sum(cnt for _, cnt in ranked[20:])
        handles.append(Patch(color=_OTHER, label=f"{len(ranked) - 20} more ({rest / total:.0%})"))
    return handles


def _plot_image_clusters(est, X, *, grid_shape, patch_size, images, ax, n_cols, alpha,
                         titles, legend):
    plt = _import_pyplot()
    n, s, _ = X.shape
    if padding_mask(X).any():
        raise ValueError(
            "X has padding rows (all-NaN tokens), which image patches cannot have; to draw "
            "text tokens as words pass tokens=[[...], ...] (e.g. encoder.get_tokens(texts))."
        )
    if grid_shape is None:
        r = math.isqrt(s)
        if r * r != s or (patch_size is None and images is None):
            raise ValueError(
                f"cannot draw X's {s} tokens per sample without knowing what they are: pass "
                "tokens=[[...], ...] (the strings of text tokens, e.g. "
                "HFTokenEncoder.get_tokens(texts)) to draw them as words, or grid_shape=(rows, "
                "cols) and patch_size (or images) to draw image patches."
            )
        grid_shape = (r, r)
    gr, gc = grid_shape
    if gr * gc != s:
        raise ValueError(
            f"grid_shape={tuple(grid_shape)} has {gr * gc} patches but X has {s} tokens per "
            "sample; pass the grid of the data (e.g. load_digits_tokens(...).grid_shape), or "
            "tokens=[[...], ...] to draw text tokens as words."
        )
    if patch_size is None:
        if images is None:
            raise ValueError("pass patch_size (pixels per patch side) or the images.")
        patch_size = np.shape(images)[1] // gr
    p = int(patch_size)
    clusters = _cluster_ids(est, X)
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

    titles = _titles(est, X, titles, n)
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
        handles = _legend_handles(colors, ranked, alpha)
        right = 1.0
        if ax is None:  # next to the images (square images leave room inside the figure)
            for a in axes:
                a.apply_aspect()
            right = max(a.get_position().x1 for a in axes) + 0.01
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(right, 0.5), fontsize=8,
                   frameon=False, title="token cluster", title_fontsize=8)
    return fig


# word-piece markers: a continuation prefix (WordPiece) and word-start prefixes
# (SentencePiece, byte-level BPE)
_CONTINUATION = "##"
_WORD_START = ("\u2581", "\u0120")


def _layout_words(tokens):
    """(display string, starts a new word) for every token string."""
    out = []
    for j, t in enumerate(tokens):
        t = str(t)
        if t.startswith(_CONTINUATION) and len(t) > len(_CONTINUATION):
            out.append((t[len(_CONTINUATION):], j == 0))
        elif t.startswith(_WORD_START):
            out.append((t[1:] or " ", True))
        else:
            out.append((t, True))
    return out


def _plot_text_clusters(est, X, tokens, *, ax, alpha, titles, legend, fontsize, width):
    plt = _import_pyplot()
    from matplotlib.colors import to_rgba

    n, s, _ = X.shape
    if isinstance(tokens, (str, bytes)) or len(tokens) != n:
        got = "a string" if isinstance(tokens, (str, bytes)) else f"{len(tokens)} entries"
        raise ValueError(
            f"tokens has {got} for {n} samples; pass one list of token strings per sample "
            "(e.g. encoder.get_tokens(texts))."
        )
    tokens = [[tokens[i]] if isinstance(tokens[i], str) else list(tokens[i]) for i in range(n)]
    clusters = _cluster_ids(est, X)
    real = ~(padding_mask(X) | (clusters < 0))
    n_real = real.sum(axis=1)
    for i in range(n):
        if len(tokens[i]) != n_real[i]:
            raise ValueError(
                f"tokens[{i}] has {len(tokens[i])} strings but sample {i} of X has "
                f"{int(n_real[i])} real (non-padding) tokens; pass the strings of the same "
                "texts, truncated alike (e.g. encoder.get_tokens(texts) with the encoder "
                "that made X)."
            )
    titles = _titles(est, X, titles, n)
    colors, ranked = cluster_colors(clusters[real])

    # layout in points, monospace: every character advances 0.6 em
    char = 0.6 * fontsize
    line = 1.9 * fontsize
    legend_w = 130.0 if legend else 0.0
    text_w = max(width * 72.0 - legend_w - 2 * char, 20 * char)
    items = []  # (x, y, string, colour or None, size)
    y = line * 0.8
    for i in range(n):
        if titles is not None:
            items.append((char, y, str(titles[i]), None, 0.8 * fontsize))
            y += 0.85 * line
        x = char
        ids = clusters[i][real[i]]
        for (word, new_word), k in zip(_layout_words(tokens[i]), ids):
            w = len(word) * char
            if new_word and x > char:
                x += char  # a space between words, none inside a word
            if x + w > text_w and x > char:
                x, y = char, y + line
            items.append((x, y, word, colors[int(k)], fontsize))
            x += w
        y += line * 1.35
    height = y

    own = ax is None
    if own:
        fig = plt.figure(figsize=(width, max(height / 72.0, 0.5)))
        ax = fig.add_axes([0.0, 0.0, 1.0, 1.0])
        ax.set_xlim(0.0, width * 72.0)
    else:
        fig = ax.figure
        ax.set_xlim(0.0, text_w + legend_w + 2 * char)
    ax.set_ylim(height, 0.0)
    ax.set_axis_off()
    pad = 0.12 * fontsize
    for x, y, word, colour, size in items:
        if colour is None:
            ax.text(x, y, word, fontsize=size, va="center", ha="left", color="0.35",
                    style="italic")
        else:
            ax.text(x, y, word, fontsize=size, family="monospace", va="center", ha="left",
                    bbox=dict(boxstyle=f"square,pad={pad / size:.3f}", fc=to_rgba(colour, alpha),
                              ec="none"))
    if legend:
        handles = _legend_handles(colors, ranked, alpha)
        # in the right margin kept free by the layout (beside the Axes when it is given)
        left = 1.0 - legend_w / (width * 72.0) if own else 1.0
        (fig if own else ax).legend(handles=handles, loc="upper left", fontsize=8,
                                    frameon=False, bbox_to_anchor=(left, 1.0),
                                    title="token cluster", title_fontsize=8)
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
