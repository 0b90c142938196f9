"""Safe persistence (issue #15 item 1): every estimator of the package round-trips through
``skops.io`` with no type outside the package's allowlist, and predicts identically."""

import warnings

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline

import skconvexattn
from _estimators import HEAD_CLASSES, TRANSFORMER_CLASSES
from skconvexattn.cli import load_model, trusted_types
from skconvexattn.datasets import make_token_clusters

sio = pytest.importorskip("skops.io")

CV_CLASSES = [getattr(skconvexattn, cls.__name__ + "CV") for cls in HEAD_CLASSES]


@pytest.fixture(scope="module")
def data():
    return make_token_clusters(n_samples=40, n_tokens=4, n_features=3, random_state=0,
                               return_X_y=True)


def _fitted(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X, y)


@pytest.mark.parametrize(
    "make",
    [pytest.param(lambda c=c: c(n_gates=2, max_iter=30, random_state=0), id=c.__name__)
     for c in HEAD_CLASSES]
    + [pytest.param(lambda c=c: c(alphas=2, cv=2, n_gates=2, max_iter=30, random_state=0),
                    id=c.__name__) for c in CV_CLASSES]
    + [pytest.param(lambda c=c: c(), id=c.__name__) for c in TRANSFORMER_CLASSES]
    + [pytest.param(lambda: make_pipeline(
        skconvexattn.TokenStandardScaler(), skconvexattn.TokenPCA(2),
        skconvexattn.ConvexSelfAttentionClassifier(n_gates=2, max_iter=30)), id="Pipeline")],
)
def test_skops_round_trip_with_only_allowed_types(make, data, tmp_path):
    X, y = data
    est = _fitted(make(), X, y)
    path = tmp_path / "model.skops"
    sio.dump(est, path)
    left = set(sio.get_untrusted_types(file=path)) - set(trusted_types())
    assert not left, left
    back = sio.load(path, trusted=trusted_types())
    assert type(back) is type(est)
    if hasattr(est, "predict"):
        np.testing.assert_array_equal(back.predict(X), est.predict(X))
        np.testing.assert_array_equal(back.predict_proba(X), est.predict_proba(X))
    else:
        np.testing.assert_array_equal(back.transform(X), est.transform(X))
    if hasattr(est, "predict"):  # what the command line loads without --trust
        assert type(load_model(str(path))) is type(est)


def test_allowlist_is_the_packages_own_estimators():
    names = set(trusted_types())
    for name in skconvexattn.__all__:
        obj = getattr(skconvexattn, name)
        if isinstance(obj, type):
            assert f"{obj.__module__}.{obj.__qualname__}" in names
    # nothing from outside the package, scikit-learn's Bunch and NumPy's dtype aside
    assert {n for n in names if not n.startswith("skconvexattn.")} == {
        "numpy.dtype", "sklearn.utils._bunch.Bunch"}
