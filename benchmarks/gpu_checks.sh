#!/usr/bin/env bash
# The device checks in one run, on a machine with an NVIDIA GPU and CuPy:
#   1. the GPU tests (pytest -m gpu): every head and solver on CuPy against the CPU;
#   2. bench_factored on CUDA: full SST-2 self-attention (and Mixer), the Mixer at 196 tokens;
#   3. bench_defaults on CUDA: default-parameter fits on full SST-2.
# Each step has its own time limit and writes its log (and JSON) under $OUT.
#
# Packages the machine lacks can travel as wheels in .whl/ (installed to /tmp/site); the real
# data as a copy of ../shared/data in .gpudata/ (or set SKCONVEXATTN_BENCH_DATA).
#
#   OUT=/tmp/gpu bash benchmarks/gpu_checks.sh [tests_s factored_s defaults_s]
set -u
OUT=${OUT:-/tmp/skconvexattn_gpu}
mkdir -p "$OUT"
T_TESTS=${1:-180}
T_FACTORED=${2:-300}
T_DEFAULTS=${3:-150}
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
DATA=${SKCONVEXATTN_BENCH_DATA:-$PWD/.gpudata}
export SKCONVEXATTN_BENCH_DATA=$DATA SKCONVEXATTN_DATA=$DATA PYTHONUNBUFFERED=1
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
    python3 -c "import cupy, numpy, scipy, sklearn; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'scipy', scipy.__version__, 'sklearn', sklearn.__version__)"
} 2>&1 | tee "$OUT/gpu_info.txt"

echo "== 1. GPU tests (limit ${T_TESTS} s)"
timeout "$T_TESTS" python3 -m pytest -q -m gpu -p no:cacheprovider \
    tests/test_gpu.py tests/test_invariances.py 2>&1 | tee "$OUT/gpu_tests.log"

echo "== 2. bench_factored on CUDA (limit ${T_FACTORED} s)"
timeout "$T_FACTORED" python3 benchmarks/bench_factored.py --device cuda --size full \
    --solvers factored --cases "${CASES:-sst2-attention,mixer196}" --out "$OUT" 2>&1 \
    | tee "$OUT/factored_cuda.log"

echo "== 3. bench_defaults on CUDA (limit ${T_DEFAULTS} s)"
timeout "$T_DEFAULTS" python3 benchmarks/bench_defaults.py --size full --device cuda --datasets sst2 \
    --heads "${HEADS:-attention,mixer}" --no-baselines --out "$OUT" 2>&1 \
    | tee "$OUT/defaults_cuda.log"
date -u
