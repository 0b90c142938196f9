"""Token datasets: digit patches reassemble into the real images; planted clusters carry a
label that the mean token cannot see but second-order token statistics can."""

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import Bunch
from threadpoolctl import threadpool_limits

from skconvexattn.datasets import load_digits_tokens, make_token_clusters


@pytest.fixture(autouse=True)
def _single_thread():
    """One BLAS/OpenMP thread: these small fits are 10x slower when threads oversubscribe
    a busy machine."""
    with threadpool_limits(1):
        yield


# ----------------------------------------------------------------------------- digits
def _reassemble(patches, grid, p):
    """Tokens (n, g*g, p*p) in row-major patch order -> images (n, g*p, g*p)."""
    n = patches.shape[0]
    return patches.reshape(n, grid, grid, p, p).transpose(0, 1, 3, 2, 4).reshape(
        n, grid * p, grid * p
    )


@pytest.mark.parametrize("patch_size", [1, 2, 4, 8])
def test_digits_patches_reassemble_exactly(patch_size):
    ds = load_digits_tokens(patch_size=patch_size)
    g = 8 // patch_size
    s, npix = g * g, patch_size**2
    assert isinstance(ds, Bunch)
    assert ds.data.shape == (1797, s, npix + s)
    assert ds.data.dtype == np.float64
    assert ds.grid_shape == (g, g)
    assert ds.patch_size == patch_size
    assert len(ds.feature_names) == npix + s
    # pixel features are the image / 16, and put back together they are the image
    pixels = ds.data[:, :, :npix]
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    np.testing.assert_array_equal(_reassemble(pixels, g, patch_size) * 16.0, ds.images)
    np.testing.assert_array_equal(ds.images, load_digits().images)
    np.testing.assert_array_equal(ds.target, load_digits().target)
    assert not np.shares_memory(ds.data, ds.images)


def test_digits_token_order_is_row_major_patches():
    ds = load_digits_tokens(patch_size=2, scale=False, positional=False)
    img = ds.images[5]
    # token t = patch (t // 4, t % 4); its pixels row-major inside the patch
    for t in (0, 3, 4, 9, 15):
        i, j = divmod(t, 4)
        np.testing.assert_array_equal(ds.data[5, t], img[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].ravel())
    assert ds.feature_names == ["pixel_0_0", "pixel_0_1", "pixel_1_0", "pixel_1_1"]


def test_digits_one_hot_positions():
    ds = load_digits_tokens(patch_size=4)
    pos = ds.data[:, :, 16:]
    # every token carries the one-hot of its own position, identical in every sample
    np.testing.assert_array_equal(pos, np.broadcast_to(np.eye(4), pos.shape))
    assert ds.feature_names[16:] == ["position_0_0", "position_0_1", "position_1_0", "position_1_1"]


def test_digits_options():
    X, y = load_digits_tokens(patch_size=2, positional=False, scale=False, return_X_y=True)
    assert X.shape == (1797, 16, 4) and y.shape == (1797,)
    assert X.max() == 16.0 and set(np.unique(X)) <= set(range(17))
    ds = load_digits_tokens(n_class=3)
    assert set(np.unique(ds.target)) == {0, 1, 2}
    np.testing.assert_array_equal(ds.target_names, [0, 1, 2])
    assert "patch" in ds.DESCR and "Optical recognition" in ds.DESCR


@pytest.mark.parametrize("bad", [3, 5, 16])
def test_digits_bad_patch_size(bad):
    with pytest.raises(ValueError, match="patch_size.*divisor of 8"):
        load_digits_tokens(patch_size=bad)


def test_digits_positions_make_patches_learnable():
    """Sanity of the tokenisation: a linear model on the flattened tokens learns digits."""
    X, y = load_digits_tokens(n_class=4, patch_size=4, positional=False, return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X.reshape(len(X), -1), y, random_state=0)
    acc = LogisticRegression(solver="newton-cholesky").fit(Xtr, ytr).score(Xte, yte)
    assert acc > 0.9


# ----------------------------------------------------------------------------- clusters
def _gram(X):
    return np.einsum("nsa,nsb->nab", X, X).reshape(len(X), -1)


def _cluster_means(X, C, k):
    """Mean token of every planted cluster (zeros where absent): (n, k * d)."""
    M = np.stack([(C == j)[:, :, None] for j in range(k)], axis=1)  # (n, k, s, 1)
    counts = np.maximum(M.sum(axis=2), 1)
    return ((M * X[:, None]).sum(axis=2) / counts).reshape(len(X), -1)


def _holdout_accuracy(F, y, seed=0):
    Ftr, Fte, ytr, yte = train_test_split(F, y, test_size=0.5, random_state=seed, stratify=y)
    clf = make_pipeline(StandardScaler(), LogisticRegression(solver="newton-cholesky", max_iter=200))
    return clf.fit(Ftr, ytr).score(Fte, yte)


def test_clusters_shapes_and_bunch():
    ds = make_token_clusters(n_samples=101, random_state=0)
    assert ds.data.shape == (101, 8, 6)
    assert ds.target.shape == (101,)
    assert ds.clusters.shape == (101, 8) and ds.clusters.dtype == np.int64
    assert ds.centers.shape == (3, 6) and ds.directions.shape == (2, 6)
    assert set(np.unique(ds.clusters)) == {0, 1, 2}
    np.testing.assert_array_equal(np.bincount(ds.target), [51, 50])  # balanced
    X, y = make_token_clusters(n_samples=101, random_state=0, return_X_y=True)
    np.testing.assert_array_equal(X, ds.data)
    np.testing.assert_array_equal(y, ds.target)
    # clusters 0 and 1 have equal counts in every sample (their displacements cancel)
    np.testing.assert_array_equal((ds.clusters == 0).sum(1), (ds.clusters == 1).sum(1))
    assert ((ds.clusters == 0).sum(1) >= 1).all()
    # centres well separated, directions unit and (binary) antipodal
    dist = np.linalg.norm(ds.centers[:, None] - ds.centers[None], axis=2)
    assert dist[np.triu_indices(3, 1)].min() == pytest.approx(3.0)
    np.testing.assert_allclose(np.linalg.norm(ds.directions, axis=1), 1.0)
    np.testing.assert_allclose(ds.directions[0], -ds.directions[1])


def test_clusters_deterministic():
    a = make_token_clusters(n_samples=30, random_state=7)
    b = make_token_clusters(n_samples=30, random_state=np.random.RandomState(7))
    c = make_token_clusters(n_samples=30, random_state=8)
    for key in ("data", "target", "clusters", "centers", "directions"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.allclose(a.data, c.data)


def test_clusters_noise_free_tokens_follow_the_generative_model():
    ds = make_token_clusters(n_samples=50, cluster_std=0.0, random_state=3)
    X, C, y = ds.data, ds.clusters, ds.target
    sign = np.select([C == 0, C == 1], [1.0, -1.0], 0.0)
    expected = ds.centers[C] + 0.5 * sign[:, :, None] * ds.directions[y][:, None, :]
    np.testing.assert_allclose(X, expected, atol=1e-12)
    # the mean token is a function of the cluster counts alone: the label cancels exactly
    counts = np.stack([(C == k).sum(1) for k in range(3)], axis=1)
    np.testing.assert_allclose(X.mean(axis=1), counts @ ds.centers / 8, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_clusters_mean_token_at_chance_but_learnable_from_token_interactions(seed):
    ds = make_token_clusters(n_samples=400, random_state=seed)
    X, y = ds.data, ds.target
    acc_mean = _holdout_accuracy(X.mean(axis=1), y)
    acc_gram = _holdout_accuracy(_gram(X), y)
    acc_clusters = _holdout_accuracy(_cluster_means(X, ds.clusters, 3), y)
    assert acc_mean <= 0.65, acc_mean
    assert acc_gram >= 0.85, acc_gram
    assert acc_clusters >= 0.95, acc_clusters


def test_clusters_recovered_by_kmeans():
    ds = make_token_clusters(n_samples=200, random_state=0)
    tokens = ds.data.reshape(-1, ds.data.shape[2])
    labels = KMeans(n_clusters=3, n_init=3, random_state=0).fit_predict(tokens)
    ari = adjusted_rand_score(ds.clusters.ravel(), labels)
    assert ari >= 0.95, ari


def test_clusters_multiclass_and_few_features():
    ds = make_token_clusters(n_samples=300, n_classes=3, n_features=6, random_state=0)
    np.testing.assert_array_equal(np.bincount(ds.target), [100, 100, 100])
    # unit simplex directions centred at zero
    np.testing.assert_allclose(ds.directions.sum(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(ds.directions @ ds.directions.T, np.where(np.eye(3), 1.0, -0.5), atol=1e-12)
    assert _holdout_accuracy(ds.data.mean(axis=1), ds.target) <= 0.5
    assert _holdout_accuracy(_gram(ds.data), ds.target) >= 0.85
    # more clusters than dimensions: random centres, closest pair still `separation` apart
    ds = make_token_clusters(n_samples=20, n_features=2, n_clusters=4, separation=5.0, random_state=0)
    dist = np.linalg.norm(ds.centers[:, None] - ds.centers[None], axis=2)
    assert dist[np.triu_indices(4, 1)].min() == pytest.approx(5.0)


def test_clusters_two_clusters():
    ds = make_token_clusters(n_samples=20, n_tokens=6, n_clusters=2, random_state=0)
    assert ((ds.clusters == 0).sum(1) == 3).all() and ((ds.clusters == 1).sum(1) == 3).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_clusters=2, n_tokens=7), "n_tokens=7 is odd"),
        (dict(n_classes=4, n_features=2), "n_classes=4 needs at least"),
    ],
)
def test_clusters_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_token_clusters(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [dict(n_tokens=1), dict(n_clusters=1), dict(cluster_std=-1.0), dict(n_classes=1)]
)
def test_clusters_parameter_validation(kwargs):
    with pytest.raises(ValueError, match="parameter of make_token_clusters"):
        make_token_clusters(**kwargs)
