"""Pictures: token clusters on digit patches, and convergence (matplotlib, Agg)."""

import sys
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from skconvexattn import ConvexMLPClassifier  # noqa: E402
from skconvexattn.datasets import load_digits_tokens  # noqa: E402
from skconvexattn.plotting import plot_convergence, plot_token_clusters  # noqa: E402


@pytest.fixture(scope="module")
def digits_fit():
    """A gated head on digit patches (2x2 pixels, 16 tokens of 4 pixel features)."""
    data = load_digits_tokens(n_class=4, patch_size=2, positional=False)
    X, y = data.data[:200], data.target[:200]
    est = ConvexMLPClassifier(alpha=1e-2, n_gates=4, gate_init="prototypes", tol=1e-3,
                              random_state=0, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    return data, X, est


def _patch_colors(ax, grid, p):
    overlay = np.asarray(ax.images[1].get_array())
    return overlay[::p, ::p].reshape(grid[0] * grid[1], -1)  # one RGBA per patch


def test_token_cluster_figure(digits_fit):
    data, X, est = digits_fit
    n = 7
    fig = plot_token_clusters(est, X[:n], grid_shape=data.grid_shape,
                              patch_size=data.patch_size, n_cols=4)
    try:
        assert len(fig.axes) == n  # one Axes per image, the unused grid cells removed
        ids = est.transform(X[:n])
        colour_of = {}
        for i, ax in enumerate(fig.axes):
            assert len(ax.images) == 2  # the picture and the cluster-colour overlay
            # the picture is the digit rebuilt from the tokens' pixels
            np.testing.assert_allclose(ax.images[0].get_array(), data.images[i] / 16.0)
            colours = _patch_colors(ax, data.grid_shape, data.patch_size)
            assert colours.shape == (16, 4)
            for k, col in zip(ids[i], colours):
                colour_of.setdefault(int(k), set()).add(tuple(np.round(col, 6)))
        # the same cluster id has the same colour in every image, distinct ids differ
        assert all(len(v) == 1 for v in colour_of.values())
        distinct = {next(iter(v)) for v in colour_of.values()}
        assert len(distinct) == len(colour_of)
        # a translucent overlay, and one legend entry per cluster
        assert all(next(iter(v))[3] == 0.5 for v in colour_of.values())
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert len(labels) == len(colour_of)
        assert all(lbl.startswith("cluster ") for lbl in labels)
    finally:
        plt.close(fig)


def test_token_cluster_figure_given_images_and_axes(digits_fit, tmp_path):
    data, X, est = digits_fit
    fig, axes = plt.subplots(1, 3)
    try:
        out = plot_token_clusters(est, X[:3], grid_shape=data.grid_shape, patch_size=2,
                                  images=data.images[:3], ax=axes, titles=None, legend=False)
        assert out is fig and len(fig.axes) == 3 and not fig.legends
        np.testing.assert_array_equal(axes[2].images[0].get_array(), data.images[2])
        assert axes[0].get_title() == ""
    finally:
        plt.close(fig)
    # the call the CLI makes (skconvexattn demo), saved to a file
    fig = plot_token_clusters(est, X[:12], grid_shape=data.grid_shape, patch_size=2)
    try:
        assert len(fig.axes) == 12
        assert fig.axes[0].get_title().startswith("predicted ")
        fig.savefig(tmp_path / "clusters.png")
        assert (tmp_path / "clusters.png").stat().st_size > 0
    finally:
        plt.close(fig)


def test_token_cluster_figure_bad_grid(digits_fit):
    data, X, est = digits_fit
    with pytest.raises(ValueError, match="grid_shape"):
        plot_token_clusters(est, X[:2], grid_shape=(3, 3), patch_size=2)


def test_convergence_figure(digits_fit):
    _, _, est = digits_fit
    fig = plot_convergence(est)
    try:
        ax, gax = fig.axes
        hist = est.convergence_
        (obj_line,) = ax.get_lines()
        np.testing.assert_allclose(obj_line.get_ydata(), hist["objective"])
        assert gax.get_yscale() == "log"
        gap_line = gax.get_lines()[0]
        np.testing.assert_allclose(gap_line.get_xdata(), np.asarray(hist["iteration"])[
            np.asarray(hist["dual_gap"]) > 0])
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="convergence_"):
        plot_convergence(object())


def test_missing_matplotlib_says_how_to_install(digits_fit, monkeypatch):
    data, X, est = digits_fit
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_token_clusters(est, X[:2], grid_shape=data.grid_shape, patch_size=2)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_convergence(est)
