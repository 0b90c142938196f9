"""Token clusters (``transform``, docs/clusters.rst): ids are a function of the fitted
solution and the token alone, and with prototype gates they recover planted clusters."""

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score

from skconvexattn import (
    ConvexFNOClassifier,
    ConvexMixerClassifier,
    ConvexMLPClassifier,
    ConvexSelfAttentionClassifier,
)
from skconvexattn._gates import prototype_gates, token_moments
from skconvexattn.datasets import make_token_clusters


def _fit(est, X, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y, **kw)


def _head(Est=ConvexSelfAttentionClassifier, **kw):
    params = dict(alpha=1e-2, n_gates=4, gate_init="prototypes", tol=1e-3, random_state=0,
                  device="cpu")
    params.update(kw)
    return Est(**params)


# ------------------------------------------------------------------ planted clusters
@pytest.mark.parametrize("seed", [0, 1])
def test_attention_clusters_recover_planted_clusters(seed):
    """make_token_clusters with its defaults: the label is invisible in the mean token
    (a linear model on it is at chance) but the gated attention head reads it, and its
    token clusters are the planted ones (on held-out samples)."""
    ds = make_token_clusters(n_samples=300, random_state=seed)
    X, y, C = ds.data, ds.target, ds.clusters
    tr, te = slice(0, 150), slice(150, None)
    est = _fit(_head(), X[tr], y[tr])
    ari = adjusted_rand_score(C[te].ravel(), est.transform(X[te]).ravel())
    assert ari >= 0.9, ari
    assert est.score(X[te], y[te]) >= 0.9
    mean_token = LogisticRegression().fit(X[tr].mean(axis=1), y[tr])
    assert mean_token.score(X[te].mean(axis=1), y[te]) <= 0.65  # chance is 0.5


def test_mlp_clusters_recover_planted_clusters():
    ds = make_token_clusters(n_samples=150, random_state=2)
    est = _fit(_head(ConvexMLPClassifier, n_gates=6), ds.data, ds.target)
    assert adjusted_rand_score(ds.clusters.ravel(), est.transform(ds.data).ravel()) >= 0.9


def test_prototype_gates_follow_the_clusters():
    """Each prototype gate is (nearly) one planted cluster's indicator, and the gates
    spread over the clusters."""
    ds = make_token_clusters(n_samples=100, random_state=3)
    X, C = ds.data, ds.clusters
    w = np.full(len(X), 1 / len(X))
    mu, sigma = token_moments(X, w)
    H, c = prototype_gates(np.random.RandomState(0), 3, X, w, mu, sigma)
    sides = X @ H.T + c >= 0  # (n, s, P)
    hit = [max(range(3), key=lambda k: sides[..., p][C == k].mean()) for p in range(3)]
    assert sorted(hit) == [0, 1, 2]
    for p, k in enumerate(hit):
        assert sides[..., p][C == k].mean() >= 0.95
        assert sides[..., p][C != k].mean() <= 0.05


def test_prototype_gates_invariances():
    """Randomness from random_state alone: the gates do not depend on the order of the
    samples, duplicating samples equals integer weights, zero weights drop samples, and
    feature units do not change which side a token is on."""
    ds = make_token_clusters(n_samples=60, random_state=4)
    X, y = ds.data, ds.target
    base = _fit(_head(max_iter=1), X, y)
    perm = np.random.default_rng(0).permutation(len(X))
    permuted = _fit(_head(max_iter=1), X[perm], y[perm])
    np.testing.assert_allclose(permuted.gates_["H"], base.gates_["H"], rtol=1e-10)
    np.testing.assert_allclose(permuted.gates_["c"], base.gates_["c"], rtol=1e-10, atol=1e-12)
    k = np.arange(len(X)) % 3
    dup = _fit(_head(max_iter=1), np.repeat(X, k, axis=0), np.repeat(y, k))
    weighted = _fit(_head(max_iter=1), X, y, sample_weight=k.astype(float))
    np.testing.assert_allclose(dup.gates_["H"], weighted.gates_["H"], rtol=1e-10)
    np.testing.assert_allclose(dup.gates_["c"], weighted.gates_["c"], rtol=1e-10, atol=1e-12)
    scale, shift = np.array([3.0, 0.1, 1.0, 7.0, 2.0, 0.5]), np.linspace(-1, 1, 6)
    scaled = _fit(_head(max_iter=1), X * scale + shift, y)
    np.testing.assert_array_equal(
        X @ base.gates_["H"].T + base.gates_["c"] >= 0,
        (X * scale + shift) @ scaled.gates_["H"].T + scaled.gates_["c"] >= 0,
    )


# ------------------------------------------------------------------ the definition
def _sign_ids(X, info):
    sides = X @ info.hyperplanes.T + info.offsets >= 0
    return sides.astype(np.int64) @ (1 << np.arange(info.gates.size))


@pytest.mark.parametrize("Est", [ConvexSelfAttentionClassifier, ConvexMLPClassifier])
@pytest.mark.parametrize("gate_init", ["random", "prototypes"])
def test_gated_ids_are_sides_of_the_important_gates(Est, gate_init):
    ds = make_token_clusters(n_samples=60, random_state=5)
    est = _fit(_head(Est, gate_init=gate_init), ds.data, ds.target)
    info = est.token_cluster_info()
    assert info.kind == "gate_sides"
    norms = est.block_norms()
    np.testing.assert_array_equal(info.block_norms, norms)
    np.testing.assert_array_equal(info.importance, norms[info.gates])
    assert np.all(np.diff(info.importance) <= 0) and np.all(info.importance > 0)
    np.testing.assert_array_equal(est.transform(ds.data), _sign_ids(ds.data, info))


def _token_alone(est, X):
    """A token gets the same id whatever sample (and position) it is put in."""
    ids = est.transform(X)
    X2 = X.copy()
    X2[:, -1] = X[0, 0]  # token (0, 0) copied into the last position of every sample
    X2[:, 0] = X[1, 2]
    ids2 = est.transform(X2)
    assert np.all(ids2[:, -1] == ids[0, 0]) and np.all(ids2[:, 0] == ids[1, 2])
    np.testing.assert_array_equal(est.transform(X[3:5]), ids[3:5])  # batch-independent


@pytest.mark.parametrize(
    "Est, kw",
    [
        (ConvexSelfAttentionClassifier, {"activation": "linear"}),
        (ConvexSelfAttentionClassifier, {}),
        (ConvexMLPClassifier, {"activation": "linear"}),
        (ConvexMLPClassifier, {}),
        (ConvexFNOClassifier, {"activation": "linear"}),
    ],
)
def test_ids_are_a_function_of_the_token_alone(Est, kw):
    ds = make_token_clusters(n_samples=40, n_classes=3, random_state=6)
    params = dict(alpha=1e-2, random_state=0, device="cpu", tol=1e-3, n_gates=3)
    est = _fit(Est(**params, **kw), ds.data, ds.target)
    _token_alone(est, ds.data)
    info = est.token_cluster_info()
    assert isinstance(info.definition, str) and info.definition
    if kw.get("activation") == "linear":
        ids = est.transform(ds.data)
        assert ids.min() >= 0 and ids.max() < len(info.singular_values)


def test_linear_attention_ids_leading_heads():
    """Linear attention: argmax_j sigma_j ||U_j x|| ||V_j^T x|| over the leading heads."""
    ds = make_token_clusters(n_samples=40, n_classes=3, random_state=7)
    est = _fit(ConvexSelfAttentionClassifier(alpha=1e-2, activation="linear", device="cpu"),
               ds.data, ds.target)
    info = est.token_cluster_info()
    X = ds.data
    key = np.linalg.norm(np.einsum("jak,ntk->ntja", info.query_key, X), axis=3)
    val = np.linalg.norm(np.einsum("ntl,jlb->ntjb", X, info.value_output), axis=3)
    np.testing.assert_array_equal(
        est.transform(X), np.argmax(info.singular_values * key * val, axis=2)
    )


def test_mixer_and_fno_info():
    ds = make_token_clusters(n_samples=40, random_state=8)
    X, y = ds.data, ds.target
    mixer = _fit(ConvexMixerClassifier(alpha=1e-2, n_gates=2, random_state=0, device="cpu"), X, y)
    info = mixer.token_cluster_info()
    assert info.kind == "token_positions"
    np.testing.assert_array_equal(mixer.transform(X), np.tile(info.position_clusters, (40, 1)))
    np.testing.assert_array_equal(info.position_clusters, np.argmax(info.position_scores, 0))
    fno = _fit(ConvexFNOClassifier(alpha=1e-2, n_gates=3, n_blocks=2, random_state=0,
                                   device="cpu"), X, y)
    info = fno.token_cluster_info()
    assert info.kind == "gate_patterns"
    np.testing.assert_allclose(info.importance, fno.block_norms().reshape(3, 2).sum(1)[info.gates])
    assert fno.transform(X).max() < 2 ** info.gates.size


def test_gate_init_validation():
    X, y = make_token_clusters(n_samples=20, random_state=0, return_X_y=True)
    with pytest.raises(ValueError, match="gate_init"):
        ConvexSelfAttentionClassifier(gate_init="kmeans").fit(X, y)
    assert clone(_head()).get_params()["gate_init"] == "prototypes"
    # linear heads have no gates, whatever gate_init says
    lin = _fit(_head(activation="linear"), X, y)
    assert lin.gates_ == {}
