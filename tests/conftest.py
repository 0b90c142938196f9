"""Markers: ``slow`` tests run with ``--runslow`` (or SKCONVEXATTN_RUN_SLOW=1); ``gpu``
tests run only where CuPy sees a CUDA device. Both are reported as skipped otherwise."""

import os

import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True, scope="session")
def _single_threaded_blas():
    """The tests' problems are tiny, so BLAS threads only cost: under CPU
    oversubscription OpenBLAS's spinning threads stalled a 256 x 200 SVD from 15 ms to
    over 1 s. One thread keeps the suite's time independent of the machine's load."""
    with threadpool_limits(limits=1):
        yield


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--runslow") or os.environ.get("SKCONVEXATTN_RUN_SLOW") == "1"
    from skconvexattn._backend import cuda_available

    has_gpu = cuda_available()
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow or SKCONVEXATTN_RUN_SLOW=1")
    skip_gpu = pytest.mark.skip(reason="gpu: needs CuPy and a CUDA device")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
