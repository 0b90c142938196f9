"""One fit across Dask (issue 16): a Dask ``X`` gives the in-memory fit, on Dask's
threaded scheduler and on a real two-process ``distributed.LocalCluster`` whose worker
memory limit is below the data set's size.

The threaded-scheduler tests cover every head and both solvers, the errors and the
preprocessing; the cluster tests (one cluster for the module) cover the distributed
path: chunks that stay on the workers, a client that holds no more than a few chunks, a
``*CV`` estimator and a Pipeline.
"""

import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

from sklearn.base import clone  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

from skconvexattn import (  # noqa: E402
    ConvexFNOClassifier,
    ConvexMixerClassifier,
    ConvexMLPClassifier,
    ConvexSelfAttentionClassifier,
    ConvexMLPClassifierCV,
    TokenPCA,
    TokenStandardScaler,
)
from skconvexattn.datasets import make_token_clusters  # noqa: E402

TOL = 1e-9  # certificate of both fits: their objectives then agree to ~1e-9 relative


def _data(n=160, s=8, d=6, seed=0):
    return make_token_clusters(
        n_samples=n, n_tokens=s, n_features=d, random_state=seed, return_X_y=True
    )


def _assert_same_fit(a, b, Xa, Xb, rtol=1e-8):
    """``b`` (Dask fit) equals ``a`` (in-memory fit): objective, certificate, predictions."""
    assert a.dual_gap_ <= a.tol * a.null_objective_ and b.dual_gap_ <= b.tol * b.null_objective_
    assert abs(a.objective_ - b.objective_) <= rtol * abs(a.objective_)
    assert b.alpha_max_ == pytest.approx(a.alpha_max_, rel=1e-10)
    for k in a.gates_:
        np.testing.assert_allclose(b.gates_[k], a.gates_[k], rtol=1e-10, atol=1e-12)
    pred = b.predict(Xb)
    assert isinstance(pred, da.Array)  # lazy
    np.testing.assert_array_equal(pred.compute(), a.predict(Xa))


HEADS = [
    (ConvexSelfAttentionClassifier, dict(n_gates=2, solver="fista")),
    (ConvexSelfAttentionClassifier, dict(n_gates=2, solver="factored")),
    (ConvexMixerClassifier, dict(n_gates=2, solver="fista")),
    (ConvexMixerClassifier, dict(n_gates=2, solver="factored")),
    (ConvexFNOClassifier, dict(n_gates=2)),
    (ConvexMLPClassifier, dict(n_gates=4)),
]


@pytest.mark.parametrize("cls, params", HEADS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_threaded_fit_equals_in_memory(cls, params):
    X, y = _data()
    Xd = da.from_array(X, chunks=(45, -1, -1))
    kw = dict(params, alpha_ratio=0.3, tol=TOL, max_iter=5000, random_state=0)
    with dask.config.set(scheduler="threads"):
        a = cls(**kw).fit(X, y)
        b = cls(**kw).fit(Xd, y)
        _assert_same_fit(a, b, X, Xd)
        solver = params.get("solver", "auto")
        # matrix-free factors, FISTA, or (solver="auto") factors through each chunk's
        # lifted features
        start = {"factored": "factored", "fista": "dask", "auto": "factored, lifted"}[solver]
        assert b.memory_plan_.startswith(start)
        assert b.solver_ == a.solver_
        if solver != "factored":
            assert "4 chunks" in b.memory_plan_ and "dask" in b.memory_plan_
        # every prediction method: lazy, chunked along samples like X, equal to in memory
        for method in ("decision_function", "predict_proba", "transform"):
            out = getattr(b, method)(Xd)
            assert isinstance(out, da.Array) and out.chunks[0] == Xd.chunks[0]
            ref = getattr(a, method)(X)
            np.testing.assert_allclose(out.compute(), ref, rtol=1e-5, atol=1e-6)


def test_threaded_fit_flat_float32_weights_padding():
    """2-D (flattened) float32 X with padding rows, Dask sample_weight and balanced class
    weights: float32 stays float32 and the fit is the in-memory one."""
    X, y = _data(n=150, s=6, d=4, seed=1)
    X = X.astype(np.float32)
    X[::7, -2:] = np.nan  # padding tokens (whole rows NaN)
    sw = np.random.RandomState(0).uniform(0.5, 2.0, size=150)
    flat = X.reshape(150, -1)
    Xd = da.from_array(flat, chunks=(40, -1))
    kw = dict(n_gates=2, alpha_ratio=0.3, tol=1e-6, random_state=0, n_tokens=6,
              class_weight="balanced", solver="fista")
    with dask.config.set(scheduler="threads"):
        a = ConvexSelfAttentionClassifier(**kw).fit(flat, y, sample_weight=sw)
        b = ConvexSelfAttentionClassifier(**kw).fit(
            Xd, da.from_array(y, chunks=50), sample_weight=da.from_array(sw, chunks=60)
        )
        assert b.coef_.dtype == np.float32 and b.token_shape_ == (6, 4)
        assert abs(a.objective_ - b.objective_) <= 1e-4 * a.objective_  # float32 rounding
        proba = b.predict_proba(Xd)
        assert proba.dtype == np.float32
        np.testing.assert_allclose(proba.compute(), a.predict_proba(flat), atol=1e-3)
        ids = b.transform(Xd).compute()
        assert (ids[::7, -2:] == -1).all()


def test_compute_alpha_max_and_path_on_dask():
    from skconvexattn.model_selection import regularization_path

    X, y = _data(n=120, seed=2)
    Xd = da.from_array(X, chunks=(35, -1, -1))
    head = ConvexMLPClassifier(n_gates=3, tol=TOL, random_state=0)
    with dask.config.set(scheduler="threads"):
        amax = head.compute_alpha_max(X, y)
        assert head.compute_alpha_max(Xd, y) == pytest.approx(amax, rel=1e-12)
        pa = regularization_path(head, X, y, alphas=3, eps=0.1)
        pb = regularization_path(head, Xd, y, alphas=3, eps=0.1)
    np.testing.assert_allclose(pb["objective"], pa["objective"], rtol=1e-8)
    from skconvexattn import _dask

    assert pb["estimator"] not in _dask._CACHE  # the path's chunks are released


def _message(fn):
    with pytest.raises(ValueError) as info:
        fn()
    return str(info.value)


def test_bad_input_errors_like_in_memory():
    X, y = _data(n=60, s=5, d=3, seed=3)
    head = ConvexSelfAttentionClassifier(n_gates=2, random_state=0)
    with dask.config.set(scheduler="threads"):
        # NaN inside a token row that is not all-NaN: the in-memory message, found by the
        # validation reduction before any operator is built
        bad = X.copy()
        bad[37, 2, 1] = np.nan
        m_np = _message(lambda: clone(head).fit(bad, y))
        m_da = _message(lambda: clone(head).fit(da.from_array(bad, chunks=(20, -1, -1)), y))
        assert m_da == m_np and "sample 37, token 2" in m_da
        # a sample of padding only
        bad = X.copy()
        bad[41] = np.nan
        assert _message(lambda: clone(head).fit(da.from_array(bad, chunks=(20, -1, -1)), y)) \
            == _message(lambda: clone(head).fit(bad, y))
        # infinity
        bad = X.copy()
        bad[5, 0, 0] = np.inf
        assert _message(lambda: clone(head).fit(da.from_array(bad, chunks=(20, -1, -1)), y)) \
            == _message(lambda: clone(head).fit(bad, y))
        # chunks split along tokens or features: the rechunk hint
        msg = _message(lambda: clone(head).fit(da.from_array(X, chunks=(20, 2, -1)), y))
        assert "n_tokens (3 chunks)" in msg and "X.rechunk(" in msg
        msg = _message(lambda: clone(head).fit(da.from_array(X, chunks=(20, -1, 1)), y))
        assert "n_features (3 chunks)" in msg and "X.rechunk(" in msg
        # unknown n_samples
        Xd = da.from_array(X, chunks=(20, -1, -1))
        keep = da.from_array(np.arange(60) % 2 == 0, chunks=20)
        msg = _message(lambda: clone(head).fit(Xd[keep], y[::2]))
        assert "unknown chunk sizes" in msg and "X.compute_chunk_sizes()" in msg
        # y and sample_weight of the wrong length, NumPy or Dask
        msg = _message(lambda: clone(head).fit(Xd, y[:-1]))
        assert "y has 59 labels but X has 60 samples" in msg
        assert "y has 59 labels" in _message(
            lambda: clone(head).fit(Xd, da.from_array(y[:-1], chunks=30))
        )
        assert "sample_weight has 10 entries but X has 60" in _message(
            lambda: clone(head).fit(Xd, y, sample_weight=np.ones(10))
        )
        # prototype gates need every token on the client: refused with the alternative
        msg = _message(lambda: ConvexSelfAttentionClassifier(gate_init="prototypes").fit(Xd, y))
        assert "gate_init='random'" in msg
        # predicting with the wrong token shape
        fitted = clone(head).set_params(max_iter=3).fit(Xd, y)
        msg = _message(lambda: fitted.predict(da.from_array(X[:, :4], chunks=(20, -1, -1))))
        assert "was fitted on (5, 3)" in msg


def test_threaded_preprocessing_equals_in_memory():
    X, y = _data(n=100, s=6, d=8, seed=4)
    X[3, 4:] = np.nan  # padding rows are no observations
    sw = np.random.RandomState(1).uniform(0.1, 1.0, 100)
    Xd = da.from_array(X, chunks=(30, -1, -1))
    with dask.config.set(scheduler="threads"):
        for kw in ({}, dict(with_mean=False), dict(with_std=False)):
            a = TokenStandardScaler(**kw).fit(X, sample_weight=sw)
            b = TokenStandardScaler(**kw).fit(Xd, sample_weight=sw)
            for name in ("mean_", "var_", "scale_"):
                if getattr(a, name) is not None:
                    np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-12)
            assert b.n_tokens_seen_ == pytest.approx(a.n_tokens_seen_, rel=1e-12)
            Xt = b.transform(Xd)
            assert isinstance(Xt, da.Array)
            np.testing.assert_allclose(Xt.compute(), a.transform(X), rtol=1e-10, equal_nan=True)
        for k in (None, 3, 0.9):
            a, b = TokenPCA(k).fit(X), TokenPCA(k).fit(Xd)
            assert a.n_components_ == b.n_components_
            np.testing.assert_allclose(b.components_, a.components_, atol=1e-10)
            np.testing.assert_allclose(b.explained_variance_, a.explained_variance_, rtol=1e-10)
            assert b.noise_variance_ == pytest.approx(a.noise_variance_, rel=1e-10, abs=1e-14)
            np.testing.assert_allclose(
                b.transform(Xd).compute(), a.transform(X), atol=1e-10, equal_nan=True
            )
            flat = b.transform(Xd.reshape(100, -1))
            assert flat.shape == (100, 6 * a.n_components_)


def test_package_imports_without_dask():
    code = (
        "import sys; sys.modules['dask'] = None; sys.modules['distributed'] = None\n"
        "import numpy as np, skconvexattn\n"
        "from skconvexattn.datasets import make_token_clusters\n"
        "X, y = make_token_clusters(n_samples=30, random_state=0, return_X_y=True)\n"
        "skconvexattn.ConvexMLPClassifier(n_gates=2, max_iter=5).fit(X, y)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


# ----------------------------------------------------------------------------- LocalCluster
N_CHUNKS, M, S, D = 8, 2048, 32, 4  # 8 chunks of 2 MiB: 16 MiB of float64 tokens
LIMIT = 14 * 2**20  # each worker's memory limit: below the data set's 16 MiB


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes, one thread each, with a managed-memory limit below the data.

    Dask's pause / terminate thresholds act on a worker's *process* memory, and a worker
    interpreter with NumPy, SciPy and scikit-learn alone is about 190 MB: no limit below a
    few-MB data set would let it start. They are switched off, and the limit acts on the
    memory Dask manages (the chunks and what the chunk states hold, see ``ChunkGroup``):
    beyond ``target`` (95 %) of it a worker spills to disk, which the tests assert never
    happens. The client's debug log of recent messages is off (see docs/distributed.rst).
    """
    cfg = {
        "distributed.admin.low-level-log-length": 0,
        "distributed.worker.memory.target": 0.95,
        "distributed.worker.memory.spill": False,
        "distributed.worker.memory.pause": False,
        "distributed.worker.memory.terminate": False,
    }
    with dask.config.set(cfg):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the dashboard's port
            lc = distributed.LocalCluster(
                n_workers=2, processes=True, threads_per_worker=1, memory_limit=LIMIT,
                dashboard_address=":0",
            )
        client = distributed.Client(lc)
        yield lc, client
        client.close()
        lc.close()


def _chunk(i):
    """Chunk ``i`` of the cluster data set (this module is pickled by value, so the
    workers need not import it)."""
    return make_token_clusters(
        n_samples=M, n_tokens=S, n_features=D, random_state=i, return_X_y=True
    )[0]


def _cluster_data(client):
    """The tokens made on the workers, chunk ``i`` on worker ``i % 2``, persisted (the
    client never holds them), and the same data in memory for the reference fits."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    workers = sorted(client.scheduler_info()["workers"])
    xs = [client.submit(_chunk, i, workers=[workers[i % 2]], pure=False)
          for i in range(N_CHUNKS)]
    Xd = da.concatenate([
        da.from_delayed(dask.delayed(x), shape=(M, S, D), dtype=np.float64) for x in xs
    ])
    Xd = client.persist(Xd)
    distributed.wait(Xd)
    del xs  # only the chunks of Xd hold the data now
    local = [
        make_token_clusters(n_samples=M, n_tokens=S, n_features=D, random_state=i,
                            return_X_y=True)
        for i in range(N_CHUNKS)
    ]
    X = np.concatenate([p[0] for p in local])
    y = np.concatenate([p[1] for p in local])
    return Xd, X, y


class _Watch:
    """Peak managed memory of every worker (from the in-process scheduler) while running."""

    def __init__(self, lc):
        self.lc, self.peak, self.stop = lc, {}, threading.Event()

    def __enter__(self):
        def poll():
            while not self.stop.is_set():
                for ws in list(self.lc.scheduler.workers.values()):
                    self.peak[ws.address] = max(self.peak.get(ws.address, 0), ws.nbytes)
                time.sleep(0.005)

        self.thread = threading.Thread(target=poll, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _disk_writes(client):
    def spilled(dask_worker):
        metrics = getattr(dask_worker.data, "cumulative_metrics", {})
        return sum(v for k, v in metrics.items() if "disk-write" in str(k) and "count" in str(k))

    return sum(client.run(spilled).values())


_CLIENT_SCRIPT = r"""
import json, sys, time, tracemalloc
import dask, dask.array as da, distributed, numpy as np
from skconvexattn import ConvexMLPClassifier
from skconvexattn.datasets import make_token_clusters

M, S, D, K = (int(v) for v in sys.argv[2:6])

def chunk(i):
    return make_token_clusters(n_samples=M, n_tokens=S, n_features=D, random_state=i,
                               return_X_y=True)[0]

dask.config.set({"distributed.admin.low-level-log-length": 0})
client = distributed.Client(sys.argv[1])
workers = sorted(client.scheduler_info()["workers"])
xs = [client.submit(chunk, i, workers=[workers[i % 2]], pure=False) for i in range(K)]
Xd = da.concatenate([da.from_delayed(dask.delayed(x), shape=(M, S, D), dtype=np.float64)
                     for x in xs])
Xd = client.persist(Xd)
distributed.wait(Xd)
del xs
time.sleep(0.3)
y = np.concatenate([make_token_clusters(n_samples=M, n_tokens=S, n_features=D,
                                        random_state=i, return_X_y=True)[1]
                    for i in range(K)])
print("READY", flush=True)
sys.stdin.readline()  # the test starts watching the workers
kw = dict(n_gates=4, alpha_ratio=0.5, tol=1e-9, max_iter=3000, random_state=0)
tracemalloc.start()
b = ConvexMLPClassifier(**kw).fit(Xd, y)
pred_b = b.predict(Xd).compute()
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
X = np.concatenate([chunk(i) for i in range(K)])  # the reference, made here
a = ConvexMLPClassifier(**kw).fit(X, y)
# two fits certified to tol agree in logits to about sqrt(tol): predictions are compared
# where the reference's margin between its top two classes exceeds that
Da = a.decision_function(X)
top2 = np.sort(Da, axis=1)[:, -2:] if Da.ndim == 2 else np.stack([-np.abs(Da), np.abs(Da)], 1)
clear = (top2[:, 1] - top2[:, 0]) > 10 * np.sqrt(kw["tol"]) * np.abs(Da).max()
print(json.dumps(dict(
    peak=peak, data=X.nbytes, objective=[a.objective_, b.objective_],
    certified=[a.dual_gap_ <= a.tol * a.null_objective_, b.dual_gap_ <= b.tol * b.null_objective_],
    same_predictions=bool(np.array_equal(pred_b[clear], a.predict(X)[clear])),
    n_unclear=int(np.sum(~clear)),
    plan=b.memory_plan_, n_iter=[a.n_iter_, b.n_iter_],
)), flush=True)
client.close()
"""


def test_cluster_fit_stays_distributed(cluster, tmp_path):
    """The fit of a separate client process on data that only the two workers hold."""
    import json
    import os

    lc, client = cluster
    chunk = M * S * D * 8
    assert N_CHUNKS * chunk > LIMIT  # no worker could hold the data set
    script = tmp_path / "client.py"
    script.write_text(_CLIENT_SCRIPT)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in sys.path if p] )
    proc = subprocess.Popen(
        [sys.executable, str(script), lc.scheduler_address, str(M), str(S), str(D),
         str(N_CHUNKS)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "READY", proc.stderr.read()
        spilled = _disk_writes(client)  # (making the data may spill: xs and Xd alias)
        with _Watch(lc) as watch:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    print("client peak", res["peak"], "chunk", chunk, "workers", watch.peak, res["n_iter"])
    # the fit is the in-memory fit: objective, certificate, predictions
    a_obj, b_obj = res["objective"]
    assert abs(a_obj - b_obj) <= 1e-8 * a_obj and all(res["certified"])
    assert res["same_predictions"] and res["n_unclear"] <= 0.01 * N_CHUNKS * M
    assert f"8 chunks of <= {M} samples on 2 workers" in res["plan"]
    # the data stayed distributed: both workers held chunks, each below its limit, and
    # nothing was spilled during the fit
    assert len(watch.peak) == 2 and min(watch.peak.values()) > 2 * chunk
    assert max(watch.peak.values()) < 0.95 * LIMIT
    assert _disk_writes(client) == spilled
    # the client process never held more than a few chunks: logits and weights, never
    # the tokens (its peak over the fit and the lazy predictions)
    assert res["peak"] < 3 * chunk, (res["peak"], chunk)


def test_cluster_factored_fit(cluster):
    """The fused value-and-gradient pass of the factored solver, on the cluster."""
    lc, client = cluster
    X, y = _data(n=240, s=6, d=4, seed=5)
    Xd = client.persist(da.from_array(X, chunks=(60, -1, -1)))
    kw = dict(n_gates=2, alpha_ratio=0.3, tol=TOL, max_iter=3000, random_state=0,
              solver="factored")
    a = ConvexSelfAttentionClassifier(**kw).fit(X, y)
    b = ConvexSelfAttentionClassifier(**kw).fit(Xd, y)
    _assert_same_fit(a, b, X, Xd)
    assert b.solver_ == "factored" and "4 Dask chunks" in b.memory_plan_


def test_cluster_cv_equals_in_memory(cluster):
    lc, client = cluster
    X, y = _data(n=120, s=6, d=4, seed=6)
    Xd = da.from_array(X, chunks=(30, -1, -1))
    kw = dict(alphas=2, eps=0.5, cv=2, n_gates=3, tol=TOL, max_iter=3000, random_state=0)
    a = ConvexMLPClassifierCV(**kw).fit(X, y)
    b = ConvexMLPClassifierCV(**kw).fit(Xd, y)
    assert b.n_iter_ > 0
    assert b.alpha_ == pytest.approx(a.alpha_, rel=1e-10)
    np.testing.assert_array_equal(b.scores_, a.scores_)
    _assert_same_fit(a.best_estimator_, b.best_estimator_, X, Xd)
    np.testing.assert_array_equal(b.predict(Xd).compute(), a.predict(X))
    from skconvexattn import _dask

    assert b.best_estimator_ not in _dask._CACHE  # nothing kept on the workers


def test_cluster_pipeline_equals_in_memory(cluster):
    lc, client = cluster
    X, y = _data(n=160, s=6, d=10, seed=7)
    Xd = da.from_array(X, chunks=(40, -1, -1))
    pipe = make_pipeline(
        TokenStandardScaler(), TokenPCA(4),
        ConvexSelfAttentionClassifier(n_gates=2, alpha_ratio=0.3, tol=TOL, max_iter=3000,
                                      random_state=0, solver="fista"),
    )
    a = clone(pipe).fit(X, y)
    b = clone(pipe).fit(Xd, y)
    np.testing.assert_allclose(b[1].components_, a[1].components_, atol=1e-10)
    _assert_same_fit(a[-1], b[-1], a[:-1].transform(X), b[:-1].transform(Xd))
    np.testing.assert_array_equal(b.predict(Xd).compute(), a.predict(X))


@pytest.mark.gpu
def test_cupy_chunks_threaded():
    """CuPy chunks (``X.map_blocks(cupy.asarray)``) run on the GPU where they are."""
    cupy = pytest.importorskip("cupy")
    X, y = _data(n=120, seed=8)
    Xd = da.from_array(X, chunks=(40, -1, -1)).map_blocks(cupy.asarray)
    kw = dict(n_gates=2, alpha_ratio=0.3, tol=TOL, random_state=0, solver="fista")
    with dask.config.set(scheduler="threads"):
        a = ConvexSelfAttentionClassifier(**kw, device="cpu").fit(X, y)
        b = ConvexSelfAttentionClassifier(**kw).fit(Xd, y)
    assert b.device_ == "cuda"
    assert abs(a.objective_ - b.objective_) <= 1e-8 * a.objective_
