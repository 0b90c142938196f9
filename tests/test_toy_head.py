"""A fifth head from outside the package: one class (with its network) and one
registration, and nothing else changes.

The toy head is a linear head on the mean token (one block ``Z`` of shape ``(d, c)``,
penalised by its nuclear norm), with its own recovered network. Registered under the name
``"toy"`` (for each test only, with :func:`~skconvexattn.heads.registered_head`), it gets
its ``*CV`` class, the command line's ``--head toy``, ``to_nonconvex()`` and the
scikit-learn common checks, all generated from the registry.
"""

import warnings

import numpy as np
import pytest
from sklearn.utils import Bunch
from sklearn.utils.estimator_checks import parametrize_with_checks

from _estimators import common_check_estimators
from skconvexattn import model_selection
from skconvexattn._base import BaseConvexHead
from skconvexattn._network import RecoveredNetwork
from skconvexattn._padding import split_padding
from skconvexattn.cli import main
from skconvexattn.datasets import make_token_clusters
from skconvexattn.heads import get_head, registered_head, registered_heads


def mean_token_features(X):
    """``Phi_i = xbar_i`` (the mean of the real tokens): ``(m, 1, d, 1)``."""
    X0, _, counts = split_padding(X)
    m, _, d = X.shape
    return ((X0.sum(axis=1) / counts[:, None]))[:, None, :, None]


class MeanTokenNetwork(RecoveredNetwork):
    """``o = sum_j (xbar^T w_1j) w_2j + b``."""

    architecture = "mean_token"

    @staticmethod
    def _factor_shapes(s, d, c):
        return (d,), (c,)

    @classmethod
    def _head_outputs(cls, xp, X0, real, t):
        # summed over the real tokens; the caller divides by their number
        return xp.sum(X0, axis=1) @ xp.matrix_transpose(t["W1"]) @ t["W2"]


class ToyMeanTokenClassifier(BaseConvexHead):
    """Linear head on the mean token, nuclear-norm penalised (a test head)."""

    # the shared constructor (skconvexattn._params), without gates
    _own_params = {}
    _excluded_params = ("activation", "n_gates")
    _network_class = MeanTokenNetwork

    def _n_convex_blocks(self):
        return 1

    def _block_shape(self, s, d):
        return (1, d, 1)

    def _draw_gates(self, rng, mu, sigma, s, d):
        return {}

    def _feature_map(self, gates):
        return mean_token_features

    def _token_clusters(self, X):
        ids = np.zeros(X.shape[:2], dtype=np.int64)  # one cluster; padding -1
        ids[np.isnan(np.asarray(X)[:, :, 0])] = -1
        return ids

    def _token_cluster_info(self):
        return Bunch(kind="single", definition="every token is in cluster 0",
                     block_norms=self.block_norms())


def toy():
    """The toy head's registration (a context manager)."""
    return registered_head("toy", ToyMeanTokenClassifier, label="toy mean token")


@pytest.fixture(autouse=True)
def toy_registered():
    with toy() as spec:
        yield spec
    assert "toy" not in [h.name for h in registered_heads()]  # nothing leaks


with toy() as _spec:  # the common-check instances, as test_sklearn_contract builds them
    TOY_ESTIMATORS = common_check_estimators([_spec])


@pytest.fixture(scope="module")
def data():
    X, y = make_token_clusters(n_samples=40, n_tokens=4, n_features=3, random_state=0,
                               return_X_y=True)
    return X, y


def test_registered_and_unregistered(toy_registered):
    assert toy_registered in registered_heads()
    assert get_head("toy") is toy_registered is get_head(ToyMeanTokenClassifier)
    with pytest.raises(ValueError, match="already registered"):
        with toy():
            pass


def test_cv_class_from_the_registry(data):
    X, y = data
    cv_cls = model_selection.ToyMeanTokenClassifierCV  # generated on first use
    assert cv_cls is model_selection.cv_estimator("toy")
    assert cv_cls._head_class is ToyMeanTokenClassifier
    est = cv_cls(alphas=3, cv=3, tol=1e-6).fit(X, y)
    assert est.alphas_.shape == (3,) and est.alpha_ in est.alphas_
    assert isinstance(est.best_estimator_, ToyMeanTokenClassifier)
    assert est.score(X, y) > 0.5


def test_to_nonconvex_reproduces_the_fit(data):
    X, y = data
    est = ToyMeanTokenClassifier(alpha=1e-2, tol=1e-8, max_iter=5000).fit(X, y)
    net = est.to_nonconvex()
    assert isinstance(net, MeanTokenNetwork) and net.n_heads > 0
    D = est.decision_function(X)
    np.testing.assert_allclose(net.decision_function(X), D, rtol=0,
                               atol=1e-10 * max(1.0, np.abs(D).max()))
    np.testing.assert_allclose(net.weight_decay, est.block_norms().sum(), rtol=1e-10)
    np.testing.assert_allclose(net.objective(X, y), est.objective_, rtol=1e-10)
    torch = pytest.importorskip("torch")
    for dtype in (torch.float64, torch.float32):
        out = net.to_torch()(torch.as_tensor(X, dtype=dtype)).detach()
        assert out.dtype == dtype
        O = out.numpy().astype(np.float64)
        tol = 1e-10 if dtype == torch.float64 else 1e-5
        np.testing.assert_allclose(O[:, 1] - O[:, 0], D, rtol=0,
                                   atol=tol * max(1.0, np.abs(D).max()))


def test_cli_fits_predicts_and_describes_the_toy_head(data, tmp_path, capsys):
    X, y = data
    np.savez(tmp_path / "train.npz", X=X, y=y)
    model = tmp_path / "toy.skops"
    rc = main(["fit", str(tmp_path / "train.npz"), "--head", "toy", "--alpha", "1e-2",
               "--tol", "1e-6", "-o", str(model)])
    out = capsys.readouterr().out
    assert rc == 0 and "ToyMeanTokenClassifier fitted on 40 samples" in out
    assert main(["predict", str(model), str(tmp_path / "train.npz")]) == 0
    assert len(capsys.readouterr().out.split()) == 40
    assert main(["info", str(model), "--json"]) == 0
    import json

    info = json.loads(capsys.readouterr().out)
    assert info["head"] == "ToyMeanTokenClassifier"
    # an option of another head is refused, naming the head it belongs to
    rc = main(["fit", str(tmp_path / "train.npz"), "--head", "toy", "--n-modes", "2",
               "-o", str(model)])
    err = capsys.readouterr().err
    assert rc == 1 and "--n-modes applies to --head fno only" in err


@parametrize_with_checks(TOY_ESTIMATORS)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)
