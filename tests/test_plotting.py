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


class _FixedClusters:
    """Stands for a fitted head: fixed token cluster ids (-1 on padding) and labels."""

    def __init__(self, ids, labels):
        self.ids, self.labels = np.asarray(ids), np.asarray(labels)

    def transform(self, X):
        return self.ids

    def predict(self, X):
        return self.labels


def _word_boxes(fig):
    ax = fig.axes[0]
    return [t for t in ax.texts if t.get_bbox_patch() is not None]


def test_text_tokens_drawn_as_highlighted_words():
    # three texts of 6, 4 and 3 real tokens, padded with NaN rows to 6
    X = np.zeros((3, 6, 2))
    X[1, 4:] = np.nan
    X[2, 3:] = np.nan
    ids = np.array([[0, 1, 2, 1, 0, 3], [2, 2, 1, 0, -1, -1], [3, 3, 0, -1, -1, -1]])
    tokens = [["the", "act", "##ing", "was", "un", "##believable"], ["a", "great", "film", "!"],
              ["so", "dull", "."]]
    est = _FixedClusters(ids, ["pos", "neg", "pos"])
    fig = plot_token_clusters(est, X, tokens=tokens, alpha=0.4)
    try:
        boxes = _word_boxes(fig)
        # one box per real token, padding skipped, word-piece markers removed
        assert [b.get_text() for b in boxes] == [
            "the", "act", "ing", "was", "un", "believable", "a", "great", "film", "!", "so",
            "dull", "."]
        real_ids = ids[ids >= 0]
        colour_of = {}
        for b, k in zip(boxes, real_ids):
            fc = tuple(np.round(b.get_bbox_patch().get_facecolor(), 6))
            assert fc[3] == pytest.approx(0.4)
            colour_of.setdefault(int(k), set()).add(fc)
        assert all(len(v) == 1 for v in colour_of.values())  # one colour per id
        assert len({next(iter(v)) for v in colour_of.values()}) == len(colour_of)
        # a word piece continues its word (no space); a new word starts after a space
        x = [b.get_position()[0] for b in boxes]
        char = 0.6 * 10
        assert x[2] == pytest.approx(x[1] + 3 * char)  # "act" + "ing"
        assert x[3] == pytest.approx(x[2] + 3 * char + char)  # "ing", space, "was"
        # the predicted labels as titles; a legend entry per real cluster, none for -1
        others = [t.get_text() for t in fig.axes[0].texts if t.get_bbox_patch() is None]
        assert others == ["predicted pos", "predicted neg", "predicted pos"]
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert sorted(labels) == sorted(
            f"cluster {k} ({c / real_ids.size:.0%})"
            for k, c in zip(*np.unique(real_ids, return_counts=True)))
    finally:
        plt.close(fig)


def test_text_lines_wrap_and_given_axes(digits_fit, tmp_path):
    data, X, est = digits_fit
    words = [[f"w{i}_{j}" for j in range(16)] for i in range(2)]  # 16 tokens, no padding
    fig = plot_token_clusters(est, X[:2], tokens=words, width=3.0, titles=None, legend=False)
    try:
        boxes = _word_boxes(fig)
        assert len(boxes) == 32
        ys = sorted({b.get_position()[1] for b in boxes[:16]})
        assert len(ys) > 1  # a 3-inch figure wraps 16 words onto several lines
        right = max(b.get_position()[0] + 0.6 * 10 * len(b.get_text()) for b in boxes)
        assert right <= 3.0 * 72
        ids = est.transform(X[:2]).ravel()
        colours = [tuple(b.get_bbox_patch().get_facecolor()) for b in boxes]
        assert len(set(colours)) == len(set(ids.tolist()))
        fig.savefig(tmp_path / "words.png")
    finally:
        plt.close(fig)
    fig, ax = plt.subplots()
    try:
        out = plot_token_clusters(est, X[:2], tokens=words, ax=ax)
        assert out is fig and len(_word_boxes(fig)) == 32
    finally:
        plt.close(fig)


def test_refuses_tokens_it_cannot_draw(digits_fit):
    data, X, est = digits_fit
    # text-like input with no strings: 7 tokens are no grid
    stub = _FixedClusters(np.zeros((2, 7), dtype=int), [0, 1])
    X7 = np.zeros((2, 7, 3))
    with pytest.raises(ValueError, match=r"7 tokens.*tokens=\[\[\.\.\.\], \.\.\.\].*grid_shape"):
        plot_token_clusters(stub, X7)
    # padding rows are not image patches
    X16 = X[:2].copy()
    X16[0, 12:] = np.nan
    with pytest.raises(ValueError, match="padding rows.*tokens="):
        plot_token_clusters(est, X16, grid_shape=data.grid_shape, patch_size=2)
    # a square token count without a patch size is still ambiguous
    with pytest.raises(ValueError, match="tokens=.*patch_size"):
        plot_token_clusters(est, X[:2])
    words = [["a"] * 16, ["b"] * 16]
    with pytest.raises(ValueError, match="tokens has 1 entries for 2 samples"):
        plot_token_clusters(est, X[:2], tokens=words[:1])
    with pytest.raises(ValueError, match=r"tokens\[1\] has 15 strings but sample 1 of X has 16"):
        plot_token_clusters(est, X[:2], tokens=[words[0], words[1][:15]])
    with pytest.raises(ValueError, match="not both"):
        plot_token_clusters(est, X[:2], tokens=words, grid_shape=data.grid_shape)


def test_square_grid_inferred_from_images(digits_fit):
    data, X, est = digits_fit
    fig = plot_token_clusters(est, X[:2], images=data.images[:2], titles=None, legend=False)
    try:
        assert len(fig.axes) == 2
        np.testing.assert_array_equal(fig.axes[1].images[0].get_array(), data.images[1])
        assert fig.axes[0].images[1].get_array().shape == (8, 8, 4)  # 4x4 patches of 2x2
    finally:
        plt.close(fig)
