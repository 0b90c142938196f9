"""Distributed hyper-parameter search: a GridSearchCV over ``alpha`` and ``n_gates`` of a head
run on a real ``dask.distributed`` cluster through joblib's dask backend gives the same
result as the same search run locally (see ``docs/distributed.rst``)."""

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from skconvexattn import ConvexSelfAttentionClassifier
from skconvexattn.datasets import make_token_clusters

distributed = pytest.importorskip("dask.distributed")
joblib = pytest.importorskip("joblib")


def _search():
    X, y = make_token_clusters(
        n_samples=90, n_tokens=6, n_features=4, signal=0.4, cluster_std=0.4,
        random_state=0, return_X_y=True,
    )
    head = ConvexSelfAttentionClassifier(tol=1e-3, max_iter=500, random_state=0, device="cpu")
    grid = {"alpha": [3e-2, 1e-1, 3e-1], "n_gates": [1, 3]}
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    return GridSearchCV(head, grid, cv=cv, n_jobs=-1), X, y


@pytest.mark.parametrize(
    "processes",
    [
        pytest.param(False, id="threads"),
        # worker processes import the package and receive pickled estimators and data:
        # the real distributed set-up, but ~15 s on two busy cores
        pytest.param(True, id="processes", marks=pytest.mark.slow),
    ],
)
def test_grid_search_on_dask_cluster_matches_local(processes):
    local, X, y = _search()
    local.set_params(n_jobs=1).fit(X, y)

    remote, X, y = _search()
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=processes, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        with distributed.get_task_stream(client) as tasks:
            with joblib.parallel_backend("dask"):
                remote.fit(X, y)
        n_tasks = len(tasks.data)
        workers = {t["worker"] for t in tasks.data}

    # the fits ran as tasks on the cluster's workers (joblib batches them, so there can be
    # fewer tasks than the 6 candidates x 3 splits)
    assert n_tasks > 0 and workers
    assert remote.best_params_ == local.best_params_
    assert remote.best_index_ == local.best_index_
    for key in ["mean_test_score", "std_test_score", "rank_test_score"] + [
        f"split{i}_test_score" for i in range(3)
    ]:
        np.testing.assert_allclose(remote.cv_results_[key], local.cv_results_[key],
                                   rtol=0, atol=1e-12, err_msg=key)
    assert list(remote.cv_results_["params"]) == list(local.cv_results_["params"])
    # the refitted best models agree too
    np.testing.assert_allclose(remote.best_estimator_.coef_, local.best_estimator_.coef_,
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(remote.predict(X), local.predict(X))
