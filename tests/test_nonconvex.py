"""Recovered non-convex networks (SPEC 2.4): ``est.to_nonconvex()`` on every head.

The recovered network runs the forward pass of the architecture (attention scores,
token mixing, circular convolution, per-token MLP), never the lifted features; it must
reproduce ``decision_function`` and its weight-decay objective must equal ``objective_``.
"""

import pickle
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

try:  # imported once at collection (slow to import), the tests skip without it
    import torch  # noqa: F401
except ImportError:  # pragma: no cover
    pass

from skconvexattn import (
    ConvexFNOClassifier,
    ConvexMixerClassifier,
    ConvexMLPClassifier,
    ConvexSelfAttentionClassifier,
)
from skconvexattn.heads import registered_heads
from skconvexattn.nonconvex import (
    FNONetwork,
    MixerNetwork,
    RecoveredNetwork,
    SelfAttentionNetwork,
    TokenMLPNetwork,
)

NETWORK_OF = {
    ConvexSelfAttentionClassifier: SelfAttentionNetwork,
    ConvexMixerClassifier: MixerNetwork,
    ConvexFNOClassifier: FNONetwork,
    ConvexMLPClassifier: TokenMLPNetwork,
}

CASES = [
    (Est, {"activation": act})
    for Est in NETWORK_OF
    for act in ("linear", "gated_relu")
] + [
    (ConvexFNOClassifier, {"n_modes": 2}),
    (ConvexFNOClassifier, {"n_blocks": 2}),
    (ConvexFNOClassifier, {"n_modes": 3, "n_blocks": 3}),
    (ConvexFNOClassifier, {"activation": "linear", "n_modes": 2, "n_blocks": 2}),
    (ConvexSelfAttentionClassifier, {"gate_init": "prototypes"}),
    (ConvexMLPClassifier, {"gate_init": "prototypes"}),
    (ConvexSelfAttentionClassifier, {"loss": "squared_error", "class_weight": "balanced"}),
    (ConvexMixerClassifier, {"loss": "squared_error"}),
]


def _id(case):
    Est, kw = case
    return Est.__name__.replace("Convex", "").replace("Classifier", "") + str(kw)


def _data(c, n=24, s=5, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, s, d))
    y = np.arange(n) % c
    X[:, 0, 0] += 0.7 * y  # some signal
    sw = rng.uniform(0.5, 2.0, n)
    return X, y, sw


def _fit(Est, kw, X, y, sw=None):
    # the identities hold at any iterate (the network is the same point as the convex
    # model), so a moderate tolerance keeps the tests fast
    est = Est(alpha=3e-3, n_gates=3, random_state=0, device="cpu", tol=1e-5, max_iter=1000)
    est.set_params(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y, sample_weight=sw)


@pytest.mark.parametrize("case", CASES, ids=_id)
@pytest.mark.parametrize("c", [2, 3])
def test_recovered_network_reproduces_the_fit(case, c):
    Est, kw = case
    X, y, sw = _data(c)
    est = _fit(Est, kw, X, y, sw)
    net = est.to_nonconvex()
    assert isinstance(net, NETWORK_OF[Est]) and isinstance(net, RecoveredNetwork)
    assert net.n_heads > 0
    # forward pass of the architecture == the convex model, on new data too
    Xnew = np.random.default_rng(1).standard_normal((9,) + X.shape[1:])
    for Z in (X, Xnew):
        ref = est.decision_function(Z)
        got = net.decision_function(Z)
        assert got.shape == ref.shape == ((Z.shape[0],) if c == 2 else (Z.shape[0], c))
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-8 * max(1.0, np.abs(ref).max()))
    np.testing.assert_array_equal(net.predict(X), est.predict(X))
    flat = X.reshape(len(X), -1)
    np.testing.assert_allclose(net.decision_function(flat), est.decision_function(X))
    # weight decay == sum of nuclear norms == sum of singular values
    norms = est.block_norms().sum()
    np.testing.assert_allclose(net.weight_decay, norms, rtol=1e-10)
    np.testing.assert_allclose(net.sigma.sum(), norms, rtol=1e-10)
    # the non-convex objective of the recovered weights is the certified convex optimum
    np.testing.assert_allclose(net.objective(X, y, sample_weight=sw), est.objective_, rtol=1e-8)
    assert abs(net.objective(X, y, sample_weight=sw) - est.objective_) <= est.dual_gap_ + 1e-12


def test_heads_shapes_and_order():
    X, y, _ = _data(3, s=4, d=3)
    s, d, c = 4, 3, 3
    shapes = {
        ConvexSelfAttentionClassifier: ((d, d), (d, c)),
        ConvexMixerClassifier: ((s, s), (d, c)),
        ConvexMLPClassifier: ((d,), (c,)),
    }
    for Est, (r, col) in shapes.items():
        net = _fit(Est, {}, X, y).to_nonconvex()
        assert net.W1.shape == (net.n_heads,) + r and net.W2.shape == (net.n_heads,) + col
        assert np.all(np.diff(net.sigma) <= 0)  # most important first
        # every head is balanced: ||W_1j||^2 = ||W_2j||^2 = sigma_j
        np.testing.assert_allclose(np.sum(net.W1.reshape(net.n_heads, -1) ** 2, 1), net.sigma)
        np.testing.assert_allclose(np.sum(net.W2.reshape(net.n_heads, -1) ** 2, 1), net.sigma)
        assert set(net.gate.tolist()) <= set(range(3))
    fno = _fit(ConvexFNOClassifier, {"n_modes": 2, "n_blocks": 2}, X, y).to_nonconvex()
    assert fno.W1.shape == (fno.n_heads, 3, 2) and fno.kernels.shape == (fno.n_heads, s, d)
    # each kernel lives in the kept Fourier modes and reads one channel group
    for K, g in zip(fno.kernels, fno.group):
        a, b = fno.channel_groups[g]
        assert np.all(K[:, :a] == 0) and np.all(K[:, b:] == 0)
        np.testing.assert_allclose(fno.basis @ (fno.basis.T @ K), K, atol=1e-12)
    np.testing.assert_allclose(
        np.sum(fno.kernels**2), np.sum(fno.W1**2), rtol=1e-12
    )  # orthonormal basis: the kernel norm is the weight norm


def test_attention_forward_is_the_architecture():
    """An explicit per-sample, per-head loop of (1/s) 1^T (M_p o (X W1 X^T)) X W2."""
    X, y, _ = _data(3, n=10, s=4, d=3)
    est = _fit(ConvexSelfAttentionClassifier, {}, X, y)
    net = est.to_nonconvex()
    H, c = est.gates_["H"], est.gates_["c"]
    O = np.tile(est.intercept_, (len(X), 1))
    for i, Xi in enumerate(X):
        side = Xi @ H.T + c >= 0  # (s, P)
        for W1, W2, p in zip(net.W1, net.W2, net.gate):
            M = np.array([[float(side[t, p] == side[u, p]) for u in range(4)] for t in range(4)])
            O[i] += np.ones(4) @ (M * (Xi @ W1 @ Xi.T)) @ Xi @ W2 / 4
    np.testing.assert_allclose(net.logits(X), O, atol=1e-12)
    np.testing.assert_allclose(O, est._logits(X), atol=1e-8)


def test_zero_model_has_no_heads():
    X, y, _ = _data(2)
    with pytest.warns(UserWarning, match="alpha_max"):
        est = ConvexMLPClassifier(alpha=1e3, random_state=0, device="cpu").fit(X, y)
    net = est.to_nonconvex()
    assert net.n_heads == 0 and net.weight_decay == 0.0
    np.testing.assert_allclose(net.decision_function(X), est.decision_function(X), atol=1e-12)


def test_bad_input():
    X, y, _ = _data(2)
    net = _fit(ConvexMLPClassifier, {}, X, y).to_nonconvex()
    with pytest.raises(ValueError, match=r"\(n_tokens, n_features\) = \(5, 3\)"):
        net.decision_function(X[:, :4])
    with pytest.raises(ValueError, match="fitted classes_"):
        net.objective(X, y + 5)
    assert "TokenMLPNetwork(n_heads=" in repr(net)


# ------------------------------------------------------------------------------ torch
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_torch_module_matches(case):
    torch = pytest.importorskip("torch")
    Est, kw = case
    X, y, _ = _data(3)
    est = _fit(Est, kw, X, y)
    mod = est.to_nonconvex().to_torch()
    assert isinstance(mod, torch.nn.Module)
    with torch.no_grad():
        out = mod(torch.as_tensor(X, dtype=torch.float64)).numpy()
    ref = est._logits(X)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-8 * max(1.0, np.abs(ref).max()))
    names = {n for n, _ in mod.named_parameters()}
    assert names == {"W1", "W2", "intercept"}
    assert all(not b.requires_grad for b in mod.buffers())
    if est.gates_:
        assert "gate_H" in dict(mod.named_buffers())
    np.testing.assert_allclose(mod.weight_decay().item(), est.block_norms().sum(), rtol=1e-10)


def test_torch_fine_tuning_cannot_beat_the_convex_optimum():
    """Gradient steps on the non-convex objective (same gates, weight decay alpha) start
    at the recovered weights; the certified convex optimum is a lower bound."""
    torch = pytest.importorskip("torch")
    X, y, _ = _data(3, n=30)
    est = _fit(ConvexSelfAttentionClassifier, {"alpha": 1e-2}, X, y)
    mod = est.to_nonconvex().to_torch()
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)

    def objective():
        return torch.nn.functional.cross_entropy(mod(Xt), yt) + est.alpha * mod.weight_decay()

    np.testing.assert_allclose(objective().item(), est.objective_, rtol=1e-8)
    for _ in range(25):  # plain gradient steps (torch.optim is slow to import)
        mod.zero_grad()
        objective().backward()
        with torch.no_grad():
            for param in mod.parameters():
                param -= 0.05 * param.grad
    assert mod.W1.grad is not None and mod.W1.grad.abs().max() > 0
    assert objective().item() >= est.objective_ - est.dual_gap_ - 1e-10


def test_torch_module_pickles():
    torch = pytest.importorskip("torch")
    X, y, _ = _data(2)
    est = _fit(ConvexFNOClassifier, {"n_modes": 2}, X, y)
    mod = est.to_nonconvex().to_torch()
    back = pickle.loads(pickle.dumps(mod))
    with torch.no_grad():
        Xt = torch.as_tensor(X)
        np.testing.assert_array_equal(back(Xt).numpy(), mod(Xt).numpy())


def test_to_torch_without_torch_says_how_to_install(monkeypatch):
    import sys

    X, y, _ = _data(2)
    net = _fit(ConvexMLPClassifier, {}, X, y).to_nonconvex()
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="pip install torch"):
        net.to_torch()


# ------------------------------------------------------------------------------ dtypes
@pytest.mark.parametrize("activation", ["gated_relu", "linear"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("spec", [pytest.param(s, id=s.name) for s in registered_heads()])
def test_numpy_and_torch_forward_follow_the_input_dtype(spec, dtype, activation):
    """One forward pass (array API) for NumPy and torch: on padded data of either dtype
    the logits have that dtype and equal the head's, and the objective is ``objective_``
    (to the dtype's precision)."""
    X, y, sw = _data(3)
    X[2, 4] = np.nan  # a padding token
    X = X.astype(dtype)
    est = _fit(spec.estimator, {"activation": activation}, X, y, sw)
    net = est.to_nonconvex()
    ref = est._logits(X)
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    scale = max(1.0, np.abs(ref).max())
    got = net.logits(X)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, ref, rtol=0, atol=rtol * scale)
    assert net.objective(X, y, sample_weight=sw) == pytest.approx(est.objective_, rel=rtol)
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        out = net.to_torch()(torch.as_tensor(X))
    assert out.dtype == torch.as_tensor(X).dtype
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=rtol * scale)
