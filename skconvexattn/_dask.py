"""One fit across a Dask cluster: chunked operators, validation and statistics by
reductions over chunks, lazy predictions.

A ``dask.array`` ``X`` of shape ``(n_samples, n_tokens, n_features)`` (or its 2-D
flattening) chunked along samples only is persisted once; every chunk then stays where it
is and the work on it runs there:

* each chunk builds its own operator once (the head's lifted operator with the memory
  plan applied to the chunk, or its factor operator), kept next to the chunk on its worker
  with the chunk's one-hot targets and sample weights (:class:`ChunkState`);
* a product of the solver sends the small weights (``Z``, or the factors ``A``, ``B``) to
  every chunk and gets back small arrays only: the chunk's logits ``(m, c)`` (gathered on
  the client, ``n x c`` in all) or its contribution to a gradient (``(P, R, L c)``, or the
  factors' shapes), summed over chunks by a tree reduction on the workers;
* the setup statistics (the validation of NaN / infinity / padding, ``max |X|``, token
  moments) are reductions over chunks too.

The solvers (:func:`~skconvexattn._solver.fista`,
:func:`~skconvexattn._factored.factored_solve`) run unchanged on the client with NumPy
state: :class:`DaskLiftedOperator` and :class:`DaskFactorOperator` have the interface of
the in-memory operators. With a ``distributed.Client`` the chunks live on its workers;
without one (Dask's local schedulers) the chunks are computed once into this process
and the products run on a thread pool, one task per chunk.

``dask`` is imported here lazily: the package imports without it.
"""

from __future__ import annotations

import math
import os
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from sklearn.base import clone
from sklearn.utils import Bunch, check_random_state

from ._backend import Backend, get_namespace, np_compat, resolve_device, to_numpy
from ._validation import _empty_message, _nonfinite_message

__all__ = [
    "is_dask_array",
    "check_dask_tokens",
    "dask_setup",
    "DaskLiftedOperator",
    "DaskFactorOperator",
    "lazy_apply",
    "small_array",
]

#: a chunked product reduces at most this many partial results per reduction task
FAN_IN = 8
#: weights larger than this are scattered once to every worker instead of being embedded
#: in each task (bytes)
SCATTER_ABOVE = 1 << 20

_AXES = ("n_samples", "n_tokens", "n_features")


def is_dask_array(X):
    """Whether ``X`` is a ``dask.array.Array`` (tested without importing dask)."""
    return type(X).__module__.startswith("dask.") and hasattr(X, "chunks") and hasattr(
        X, "dask"
    )


def small_array(a, name, n=None):
    """A small per-sample array (``y``, ``sample_weight``) as NumPy, computed if it is a
    Dask array, with its length checked against ``n`` (the message names ``name``)."""
    if a is None:
        return None
    if is_dask_array(a):
        if any(math.isnan(c) for c in a.chunks[0]):
            a = a.compute_chunk_sizes()
        if n is not None and a.ndim >= 1 and a.shape[0] != n:
            raise _length_error(name, a.shape[0], n)
        a = a.compute()
    a = np.asarray(a)
    if n is not None and a.ndim >= 1 and a.shape[0] != n:
        raise _length_error(name, a.shape[0], n)
    return a


def _length_error(name, got, n):
    if name == "y":
        return ValueError(
            f"y has {got} labels but X has {n} samples: pass one label per sample, "
            "y of shape (n_samples,) matching the first axis of X."
        )
    return ValueError(
        f"{name} has {got} entries but X has {n} samples: pass one value per sample, "
        f"{name} of shape (n_samples,) matching the first axis of X (a NumPy or Dask array)."
    )


# ----------------------------------------------------------------------------- validation
def check_dask_tokens(estimator, X, *, reset, n_tokens=None):
    """Validate the metadata of a Dask ``X`` (nothing is computed) and return it as a
    3-D float Dask array ``(n, s, d)`` chunked along samples only.

    The checks (and their messages) are those of
    :func:`~skconvexattn._validation.check_tokens` on shapes and dtypes, plus the two
    that only a Dask array can fail: chunks that split tokens or features (a fit needs
    whole samples in every chunk: rechunk) and unknown chunk sizes along samples
    (``X.compute_chunk_sizes()``). The values (NaN, infinity, padding) are checked by
    the reduction of :func:`dask_setup` before any heavy work.
    """
    from ._validation import _check_not_empty, _check_token_shape, _explain_conversion

    name = type(estimator).__name__
    ndim = X.ndim
    if ndim not in (2, 3):
        raise ValueError(
            f"X must be a 3-D array (n_samples, n_tokens, n_features) or its 2-D "
            f"flattening (n_samples, n_tokens * n_features); got a {ndim}-D input of shape "
            f"{tuple(X.shape)}. Reshape your data, e.g. X.reshape(n_samples, n_tokens, "
            "n_features)."
        )
    if any(math.isnan(c) for c in X.chunks[0]):
        raise ValueError(
            f"X is a Dask array with unknown chunk sizes along n_samples (shape "
            f"{X.shape}), e.g. after boolean indexing or from a Dask DataFrame; {name} "
            "needs n_samples before it reads the data. Call X = X.compute_chunk_sizes() "
            "(or X.to_dask_array(lengths=True) for a DataFrame) first."
        )
    split = [
        f"{axis} ({len(c)} chunks)"
        for axis, c in zip(_AXES[1:] if ndim == 3 else ("n_tokens * n_features",), X.chunks[1:])
        if len(c) > 1
    ]
    if split:
        whole = "{0: 'auto', 1: -1, 2: -1}" if ndim == 3 else "{0: 'auto', 1: -1}"
        raise ValueError(
            f"X is a Dask array chunked along {' and '.join(split)}: {name} needs every "
            "chunk to hold whole samples (all their tokens and features), with chunks "
            f"along n_samples only. Rechunk first, e.g. X = X.rechunk({whole})."
        )
    _check_not_empty(X, ndim)
    dtype = np.dtype(X.dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        if dtype.kind in "biu":
            X = X.astype(np.float64)
        else:
            with _explain_conversion(np.empty((1,) * ndim, dtype=dtype), estimator):
                raise ValueError(
                    f"Complex data not supported: X has dtype {dtype}"
                    if dtype.kind == "c"
                    else f"X has dtype {dtype}, which is not numeric"
                )
            raise ValueError(f"X has dtype {dtype}; pass float token features.")
    if ndim == 3:
        n, s, d = (int(v) for v in X.shape)
        if reset and n_tokens is not None and int(n_tokens) != s:
            raise ValueError(
                f"n_tokens={n_tokens} contradicts X of shape {X.shape}, which already has "
                f"{s} tokens: n_tokens is for a flattened 2-D X (n_samples, n_tokens * "
                "n_features). Leave n_tokens=None for 3-D input."
            )
        if not reset:
            _check_token_shape(estimator, (s, d))
        X3 = X
    else:
        n, f = (int(v) for v in X.shape)
        if reset:
            s = 1 if n_tokens is None else int(n_tokens)
            if f % s:
                raise ValueError(
                    f"n_tokens={s} does not divide the {f} columns of the 2-D X: a flattened "
                    "X must have n_tokens * n_features columns. Pass the 3-D array "
                    "(n_samples, n_tokens, n_features), or set n_tokens to a divisor of "
                    f"{f}."
                )
            d = f // s
        else:
            if f != estimator.n_features_in_:
                raise ValueError(
                    f"X has {f} features, but {name} is expecting "
                    f"{estimator.n_features_in_} features as input."
                )
            s, d = estimator.token_shape_
        X3 = X.reshape(n, s, d)
    if reset:
        estimator.n_features_in_ = s * d
        estimator.token_shape_ = (s, d)
        estimator.__dict__.pop("feature_names_in_", None)
    return X3


def _chunk_bounds(X3):
    """``(start, stop)`` of every chunk along samples."""
    stops = np.cumsum(X3.chunks[0])
    return [(int(a), int(b)) for a, b in zip(np.concatenate([[0], stops[:-1]]), stops)]


def _value_report(X, offset):
    """Per chunk: the validation counts of :func:`~skconvexattn._validation._check_finite`
    (NaN outside padding rows, infinities, samples with only padding, the first of each
    in global sample indices) and ``max |X|`` over the finite entries."""
    X = np.asarray(X)
    d = X.shape[2]
    with np.errstate(over="ignore", invalid="ignore"):
        finite_sum = np.isfinite(np.sum(X))
    rep = {"n_nan": 0, "n_inf": 0, "first_nan": None, "n_empty": 0, "first_empty": None}
    if finite_sum:
        top = float(np.max(np.abs(X))) if X.size else 0.0
    else:
        nan = np.isnan(X)
        pad = nan.all(axis=2)
        rep["n_inf"] = int(np.count_nonzero(np.isinf(X)))
        rep["n_nan"] = int(np.count_nonzero(nan)) - int(np.count_nonzero(pad)) * d
        if rep["n_nan"]:
            i, t = np.argwhere(nan.any(axis=2) & ~pad)[0]
            rep["first_nan"] = (int(i) + offset, int(t))
        empty = np.flatnonzero(pad.all(axis=1))
        rep["n_empty"] = int(empty.size)
        if empty.size:
            rep["first_empty"] = int(empty[0]) + offset
        finite = np.abs(np.where(np.isfinite(X), X, 0.0))
        top = float(np.max(finite)) if finite.size else 0.0
    rep["max_abs"] = top
    return rep


def _merge_reports(reports, d):
    """Combine the chunk reports and raise the in-memory errors."""
    n_nan = sum(r["n_nan"] for r in reports)
    n_inf = sum(r["n_inf"] for r in reports)
    if n_nan or n_inf:
        first = next((r["first_nan"] for r in reports if r["first_nan"] is not None), None)
        raise ValueError(_nonfinite_message(n_nan, n_inf, first, d))
    n_empty = sum(r["n_empty"] for r in reports)
    if n_empty:
        first = next(r["first_empty"] for r in reports if r["first_empty"] is not None)
        raise ValueError(_empty_message(n_empty, first))
    return max(r["max_abs"] for r in reports)


def _moment_sums(X, w, mu=None):
    """Token-weighted sums of a chunk over its real tokens (float64): with ``mu=None`` the
    total token weight and the weighted sum of the features, else the weighted sum of
    squared deviations from ``mu`` (the second pass of a two-pass variance)."""
    X = np.asarray(X)
    d = X.shape[2]
    T = X.reshape(-1, d)
    tw = np.repeat(np.asarray(w, dtype=np.float64), X.shape[1])
    real = ~np.isnan(T[:, 0])
    if not real.all():
        T, tw = T[real], tw[real]
    T = T.astype(np.float64)
    if mu is None:
        return np.concatenate([[tw.sum()], tw @ T])
    return tw @ (T - mu) ** 2


# ----------------------------------------------------------------------------- runners
def current_client():
    """The ``distributed.Client`` Dask would use now, or None (no distributed, no
    client, or a local scheduler chosen with ``dask.config.set(scheduler=...)``)."""
    try:
        import dask
        from distributed import default_client
    except ImportError:
        return None
    if dask.config.get("scheduler", None) in ("threads", "threading", "sync",
                                               "synchronous", "single-threaded",
                                               "processes", "multiprocessing"):
        return None
    try:
        return default_client()
    except ValueError:
        return None


def _sum_parts(*parts):
    """Sum partial results chunk by chunk: tuples are summed elementwise."""
    total = parts[0]
    for p in parts[1:]:
        if isinstance(total, tuple):
            total = tuple(a + b for a, b in zip(total, p))
        else:
            total = total + p
    return total


def _call(func, state, *args):
    return func(state, *args)


class _DistributedRunner:
    """Chunk states held on the workers of a ``distributed.Client`` (as futures)."""

    def __init__(self, client):
        self.client = client
        self.name = "distributed"

    def chunks(self, X3):
        """Persist ``X3`` and return one future per chunk (in order)."""
        from distributed import futures_of

        Xp = self.client.persist(X3)
        by_key = {f.key: f for f in futures_of(Xp)}
        return [by_key[k] for k in (key for key in _block_keys(Xp))]

    def map(self, func, handles, *per_chunk, shared=()):
        """``func(handle_i, *per_chunk_i, *shared)`` for every chunk: futures."""
        shared = tuple(self._share(a) for a in shared)
        return [
            self.client.submit(func, h, *(p[i] for p in per_chunk), *shared, pure=False)
            for i, h in enumerate(handles)
        ]

    def _share(self, a):
        if isinstance(a, np.ndarray) and a.nbytes > SCATTER_ABOVE:
            return self.client.scatter(a, broadcast=True, hash=False)
        return a

    def gather(self, futures):
        return self.client.gather(futures)

    def hold(self, futures):
        """Objects that stay where they were computed: the futures themselves."""
        return futures

    def reduce(self, futures):
        """Sum of the results, by a tree of reduction tasks on the workers."""
        while len(futures) > 1:
            futures = [
                self.client.submit(_sum_parts, *futures[i : i + FAN_IN], pure=False)
                for i in range(0, len(futures), FAN_IN)
            ]
        return futures[0].result()


class _LocalRunner:
    """Chunk states in this process (Dask's local schedulers); tasks on a thread pool."""

    name = "local"

    def __init__(self):
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)))

    def chunks(self, X3):
        import dask

        return list(dask.compute(*_block_list(X3)))

    def map(self, func, handles, *per_chunk, shared=()):
        return [
            self.pool.submit(func, h, *(p[i] for p in per_chunk), *shared)
            for i, h in enumerate(handles)
        ]

    def gather(self, futures):
        return [f.result() for f in futures]

    def hold(self, futures):
        """Objects that stay where they were computed: here, in this process."""
        return self.gather(futures)

    def reduce(self, futures):
        return _sum_parts(*self.gather(futures))


def _block_list(X3):
    nd = X3.ndim
    return [X3.blocks[(i,) + (0,) * (nd - 1)] for i in range(X3.numblocks[0])]


def _block_keys(X3):
    nd = X3.ndim
    return [(X3.name, i) + (0,) * (nd - 1) for i in range(X3.numblocks[0])]


def get_runner():
    """The runner of the current Dask scheduler."""
    client = current_client()
    return _DistributedRunner(client) if client is not None else _LocalRunner()


# ----------------------------------------------------------------------------- chunk states
class ChunkState:
    """What one chunk keeps next to its data: the chunk operator, its one-hot targets
    ``Y`` and weights ``w`` (in the chunk's namespace and dtype), and the device name."""

    def __init__(self, op, Y, w, xp, device, nbytes):
        self.op, self.Y, self.w, self.xp, self.device = op, Y, w, xp, device
        self.nbytes = int(nbytes)

    def put(self, a):
        """A NumPy array from the client in the chunk's namespace and dtype."""
        return self.xp.asarray(np.ascontiguousarray(a), dtype=self.Y.dtype)


def _register_sizeof():
    """Dask's memory manager sees a chunk state's real size (its operator's arrays)."""
    try:
        from dask.sizeof import sizeof
    except ImportError:  # pragma: no cover - dask absent
        return
    sizeof.register(ChunkState)(lambda st: st.nbytes)


_register_sizeof()


def _nbytes(*objs):
    """Bytes of the arrays an operator holds (its ``__dict__`` one level deep)."""
    total = 0
    seen = set()
    for o in objs:
        items = vars(o).values() if hasattr(o, "__dict__") else [o]
        for v in items:
            if hasattr(v, "nbytes") and id(v) not in seen:
                seen.add(id(v))
                total += int(v.nbytes)
    return total


class _Builder:
    """Builds the :class:`ChunkState` of a chunk on its worker (picklable: an unfitted
    clone of the estimator, the gates as NumPy arrays and the plan of one chunk)."""

    def __init__(self, est, gates, kind, block_shape, n_outputs, budget_gib, scale_exp):
        self.est, self.gates, self.kind = est, gates, kind
        self.block_shape, self.n_outputs = block_shape, n_outputs
        self.budget_gib, self.scale_exp = budget_gib, scale_exp

    def __call__(self, X, y_enc, w):
        from ._factored_ops import chunk_rows_for
        from ._operator import plan_memory

        est = self.est
        X = _scaled_chunk(X, self.scale_exp)
        backend = _chunk_backend(X, est.device)
        dtype = np.dtype(X.dtype) if isinstance(X, np.ndarray) else np.dtype(str(X.dtype).split(".")[-1])
        Xd = X if not isinstance(X, np.ndarray) or backend.name == "cpu" else backend.asarray(X)
        xp = backend.xp
        m, s, d = (int(v) for v in X.shape)
        c = self.n_outputs
        Y = np.zeros((m, c), dtype=dtype)
        Y[np.arange(m), y_enc] = 1.0
        Yd = backend.asarray(Y)
        wd = backend.asarray(np.asarray(w, dtype=dtype))
        gates = {k: backend.asarray(np.asarray(v).astype(dtype)) for k, v in self.gates.items()}
        if self.kind == "factored":
            budget = self.budget_gib * 1024**3 / 4
            chunk = chunk_rows_for(m, est._factor_scratch(s, d, c, 32), dtype.itemsize, budget)
            op = est._factor_operator(gates, Xd, chunk)
            plan = f"factored, chunks of {op.chunk_rows}"
        else:
            P, R, L = self.block_shape
            plan = plan_memory(
                m, P * R * L, P * R * L * c, dtype.itemsize, est._work_per_sample(s, d),
                self.budget_gib, type(est).__name__, est._reduce_hint,
            )
            op = est._operator(gates, Xd, xp, (P, R, L), c, plan, None)
            plan = getattr(op, "plan_name", None) or (
                "materialised" if plan.materialised else f"chunks of {plan.chunk_rows}"
            )
        st = ChunkState(op, Yd, wd, xp, backend.name, _nbytes(op, Yd, wd))
        st.plan = plan
        return st


def _scaled_chunk(X, e):
    if not e:
        return X
    xp = get_namespace(X)
    if isinstance(X, np.ndarray):
        return np.ldexp(X, e).astype(X.dtype, copy=False)
    return xp.astype(X * xp.asarray(2.0**e, dtype=X.dtype), X.dtype)


def _chunk_backend(X, device):
    """CuPy chunks run where they are; NumPy chunks go where ``device`` says (on the
    worker: ``"auto"`` uses its GPU when it has one)."""
    if type(X).__module__.startswith("cupy"):
        from array_api_compat import cupy as cp_compat

        return Backend(cp_compat, "cuda")
    return resolve_device(device)


# worker-side products (module level: pickled by reference) -----------------------------
def _st_plan(st):
    return (st.plan, st.device, st.op.n_samples if hasattr(st.op, "n_samples") else None)


def _st_forward(st, Z):
    return to_numpy(st.op.forward(st.put(Z)))


def _st_adjoint(st, U):
    return to_numpy(st.op.adjoint(st.put(U)))


def _st_weighted_mean(st):
    """This chunk's part of the weighted mean of the features, ``sum_i w_i Phi_i``."""
    xp = st.xp
    return to_numpy(xp.reshape(st.op.adjoint(st.w[:, None]), (-1,)))


def _st_factor_forward(st, A, B):
    return to_numpy(st.op.forward(st.put(A), st.put(B)))


def _st_grad_a(st, T, B):
    return to_numpy(st.op.grad_a(st.put(T), st.put(B)))


def _st_grad_b(st, T, A):
    return to_numpy(st.op.grad_b(st.put(T), st.put(A)))


def _st_value_and_grads(st, A, B, intercept, datafit):
    """The fused factored pass of one chunk: ``(f, gA, gB, gb)`` summed over its
    samples (``w`` are the global weights, so the parts add up) and its logits."""
    f, gA, gB, gb, O = st.op.value_and_grads(
        st.put(A), st.put(B), st.put(intercept), datafit, st.Y, st.w
    )
    xp = st.xp
    f = to_numpy(xp.astype(f, xp.float64))
    return (f, to_numpy(gA), to_numpy(gB), to_numpy(gb)), to_numpy(O)


def _first(pair):
    return pair[0]


def _second(pair):
    return pair[1]


# ----------------------------------------------------------------------------- operators
class _DaskOperatorBase:
    """Chunk states on a runner, and the bookkeeping shared by both operators."""

    def __init__(self, runner, states, bounds, dtype):
        self.runner = runner
        self.states = states
        self.bounds = bounds
        self.n_samples = bounds[-1][1]
        self.dtype = np.dtype(dtype)
        self.xp = np_compat
        self.n_passes = 0  # products run (each is one pass over the chunks)

    def _rows(self, U):
        """``U`` cut into the row blocks of the chunks."""
        return [np.ascontiguousarray(U[a:b]) for a, b in self.bounds]

    def _concat(self, parts):
        return np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]

    def describe(self):
        plans = self.runner.gather(self.runner.map(_st_plan, self.states))
        kinds = sorted({p[0] for p in plans})
        sizes = [b - a for a, b in self.bounds]
        return (
            f"dask ({self.runner.name}): {len(sizes)} chunks of <= {max(sizes)} samples, "
            f"per chunk {', '.join(kinds)}"
        ), plans[0][1]


class DaskLiftedOperator(_DaskOperatorBase):
    """The lifted operator of a Dask ``X``: the interface of
    :class:`~skconvexattn._operator.LiftedOperator` (``forward``, ``adjoint``,
    ``intercept_shift``, ``block_shape``), each product one pass over the chunks.

    ``forward(Z)`` runs one task per chunk and gathers the ``(m, c)`` logits;
    ``adjoint(U)`` sends each chunk its rows of ``U`` and sums the ``(P, R, L c)`` parts
    by a tree reduction. Centring (an intercept, see ``LiftedOperator``) is applied here,
    with the weighted mean of the features from one reduction at setup.
    """

    def __init__(self, runner, states, bounds, dtype, block_shape, center):
        super().__init__(runner, states, bounds, dtype)
        self.block_shape = tuple(int(v) for v in block_shape)
        self.n_lifted = math.prod(self.block_shape)
        self.mean = None
        if center:
            self.mean = runner.reduce(runner.map(_st_weighted_mean, states)).astype(self.dtype)
            self.n_passes += 1

    def forward(self, Z):
        """Logits without intercept, ``(n, c)``."""
        Z = np.asarray(Z)
        self.n_passes += 1
        O = self._concat(self.runner.gather(self.runner.map(_st_forward, self.states, shared=(Z,))))
        if self.mean is not None:
            c = Z.shape[-1] // self.block_shape[2]
            O = O - (self.mean @ Z.reshape(self.n_lifted, c))[None, :]
        return O.astype(self.dtype, copy=False)

    def adjoint(self, U):
        """``sum_i Phi_i (x) U_i`` as blocks ``(P, R, L c)``."""
        U = np.asarray(U)
        self.n_passes += 1
        G = self.runner.reduce(self.runner.map(_st_adjoint, self.states, self._rows(U)))
        if self.mean is not None:
            P, R, L = self.block_shape
            G = G - (self.mean[:, None] * U.sum(axis=0)[None, :]).reshape(P, R, L * U.shape[1])
        return G.astype(self.dtype, copy=False)

    def intercept_shift(self, Z):
        c = Z.shape[-1] // self.block_shape[2]
        if self.mean is None:
            return np.zeros((c,), dtype=Z.dtype)
        return self.mean @ np.reshape(Z, (self.n_lifted, c))


class DaskFactorOperator(_DaskOperatorBase):
    """The factor operator of a Dask ``X``: the interface of the operators of
    :mod:`~skconvexattn._factored_ops` (``forward``, ``grad_a``, ``grad_b``,
    ``value_and_grads``, ``P``, ``a_shape``, ``d``). ``value_and_grads`` is one fused pass:
    each chunk returns its loss sum, its two gradient parts and its logits."""

    def __init__(self, runner, states, bounds, dtype, P, a_shape, s, d):
        super().__init__(runner, states, bounds, dtype)
        self.P, self.a_shape, self.s, self.d = int(P), tuple(a_shape), int(s), int(d)
        self.chunk_rows = None  # set by dask_setup (for memory_plan_)

    def forward(self, A, B):
        self.n_passes += 1
        parts = self.runner.gather(
            self.runner.map(_st_factor_forward, self.states, shared=(np.asarray(A), np.asarray(B)))
        )
        return self._concat(parts)

    def grad_a(self, T, B):
        self.n_passes += 1
        T = np.asarray(T)
        return self.runner.reduce(
            self.runner.map(_st_grad_a, self.states, self._rows(T), shared=(np.asarray(B),))
        )

    def grad_b(self, T, A):
        self.n_passes += 1
        T = np.asarray(T)
        return self.runner.reduce(
            self.runner.map(_st_grad_b, self.states, self._rows(T), shared=(np.asarray(A),))
        )

    def value_and_grads(self, A, B, intercept, datafit, Y, w):
        """Datafit value, gradients in ``A``, ``B``, the intercept, and the logits (``Y``
        and ``w`` are those of the client; the chunks hold their own rows)."""
        self.n_passes += 1
        runner = self.runner
        futures = runner.map(
            _st_value_and_grads, self.states,
            shared=(np.asarray(A), np.asarray(B), np.asarray(intercept), datafit),
        )
        if isinstance(runner, _DistributedRunner):
            client = runner.client
            sums = runner.reduce([client.submit(_first, f, pure=False) for f in futures])
            rows = client.gather([client.submit(_second, f, pure=False) for f in futures])
        else:
            pairs = runner.gather(futures)
            sums = _sum_parts(*[p[0] for p in pairs])
            rows = [p[1] for p in pairs]
        f, gA, gB, gb = sums
        return np.float64(f), gA, gB, gb, self._concat(rows)


# ----------------------------------------------------------------------------- setup
# a warm-started head keeps its chunk states between fits on the same data (the fits of a
# regularisation path): estimator -> (key, setup)
_CACHE = weakref.WeakKeyDictionary()


def release(est):
    """Drop the chunk states a warm-started head keeps on the workers."""
    _CACHE.pop(est, None)


def _cache_key(est, X3, y, sw):
    from ._base import _SOLVER_ONLY_PARAMS

    keep = _SOLVER_ONLY_PARAMS - {"solver", "device", "memory_budget"}
    params = repr(sorted((k, v) for k, v in est.get_params(deep=False).items() if k not in keep))
    return (
        X3.name,
        params,
        _digest(y),
        _digest(sw),
    )


def _digest(a):
    if a is None:
        return None
    import hashlib

    a = np.asarray(a)
    if a.dtype == object:
        return repr(a.tolist())
    return (a.dtype.str, a.shape, hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest())


def dask_setup(est, X, y, sample_weight, *, reset):
    """:meth:`~skconvexattn._base.BaseConvexHead._setup` for a Dask ``X``: the same
    checks and messages, gates drawn on the client from the reduced token moments (so they
    equal those of an in-memory fit), and the chunked operator of the solver."""
    from ._base import _classes_and_weights, _normalised_weights, _same_gate_key
    from ._datafits import get_datafit
    from ._factored import block_spectra
    from ._gates import _finish_moments
    from ._solver import alpha_max, prior_and_start

    if y is None:
        raise ValueError(
            f"{type(est).__name__} requires y to be passed, but the target y is None."
        )
    X3 = check_dask_tokens(est, X, reset=reset, n_tokens=est.n_tokens)
    n, s, d = (int(v) for v in X3.shape)
    y = small_array(y, "y", n)
    sw_in = small_array(sample_weight, "sample_weight", n)
    if getattr(est, "gate_init", "random") == "prototypes" and est.activation == "gated_relu":
        raise ValueError(
            f"{type(est).__name__}(gate_init='prototypes') looks at every training token to "
            "place its gates, which a fit on a Dask array does not do. Use "
            "gate_init='random' for a Dask X, or fit on a NumPy sample of the data."
        )
    if est.warm_start:
        cached = _CACHE.get(est)
        key = _cache_key(est, X3, y, sw_in)
        if cached is not None and cached[0] == key:
            return cached[1]
    classes, y_enc, sw = _classes_and_weights(est, y, sw_in, np.empty((n, 0)))
    est._check_head_params(s, d)
    dtype = np.dtype(X3.dtype)
    P, R, L = est._block_shape(s, d)
    c = classes.shape[0]
    bounds = _chunk_bounds(X3)
    m_max = max(b - a for a, b in bounds)
    factored = est._choose_solver(m_max, s, d, c, dtype) == "factored"
    if not factored:  # refuse a problem too large for one chunk before any work
        from ._operator import plan_memory

        plan_memory(
            m_max, P * R * L, P * R * L * c, dtype.itemsize, est._work_per_sample(s, d),
            est.memory_budget, type(est).__name__, est._reduce_hint,
        )
    w = _normalised_weights(sw)
    runner = get_runner()
    handles = runner.chunks(X3)
    w_rows = [w[a:b] for a, b in bounds]
    # pass 1: validation, max |X| and the weighted sums of the token moments
    offsets = [a for a, _ in bounds]
    reports = runner.gather(runner.map(_value_report, handles, offsets))
    top = _merge_reports(reports, d)
    scale_exp = est._scale_exponent(np.asarray([top], dtype=np.float64))
    sums = runner.reduce(runner.map(_moment_sums, handles, w_rows))
    total, s1 = sums[0], sums[1:]
    mu = s1 / total
    # pass 2: the second moments about the mean (two-pass variance, as in memory)
    m2 = runner.reduce(runner.map(_moment_sums, handles, w_rows, shared=(mu,)))
    mu, sigma = _finish_moments(np.ldexp(mu, scale_exp), np.ldexp(m2 / total, 2 * scale_exp))
    gate_key = (
        repr(sorted((k, v) for k, v in est.get_params(deep=False).items()
                    if k not in _solver_only())) + repr((n, s, d)),
        np.asarray(mu, dtype=np.float64),
        np.asarray(sigma, dtype=np.float64),
    )
    if est.warm_start and hasattr(est, "gates_") and _same_gate_key(
        getattr(est, "_gate_key", None), gate_key
    ):
        gates = est.gates_
    else:
        rng = check_random_state(est.random_state)
        gates = est._draw_gates(rng, mu, sigma, s, d)
    builder = _Builder(
        clone(est).set_params(warm_start=False), gates, "factored" if factored else "fista",
        (P, R, L), c, est.memory_budget, scale_exp,
    )
    states = runner.hold(runner.map(builder, handles, [y_enc[a:b] for a, b in bounds], w_rows))
    del handles  # the chunk states hold the chunks from here on
    Y = np.zeros((n, c), dtype=dtype)
    Y[np.arange(n), y_enc] = 1.0
    wd = w.astype(dtype)
    datafit = get_datafit(est.loss)
    if factored:
        op = DaskFactorOperator(runner, states, bounds, dtype, est._n_blocks(),
                                est._factor_a_shape(s, d), s, d)
        _, device = op.describe()
        op.chunk_rows = f"<= {m_max} samples per product, on each of {len(bounds)} Dask chunks"
        prior, b0 = prior_and_start(datafit, Y, wd, est.fit_intercept)
        T0 = wd[:, None] * datafit.raw_gradient(np.zeros_like(Y) + b0[None, :], Y)
        amax = float(block_spectra(op, T0, n_steps=40, rng=np.random.default_rng(0))[0].max())
        grad_at_zero = None
    else:
        op = DaskLiftedOperator(runner, states, bounds, dtype, (P, R, L), est.fit_intercept)
        op.plan_name, device = op.describe()
        amax, grad_at_zero = alpha_max(op, datafit, Y, wd, est.fit_intercept)
        amax = float(amax)
    st = Bunch(
        factored=factored, X3=X3, classes=classes, dtype=dtype, block_shape=(P, R, L),
        plan=None, backend=Backend(np_compat, device), gates=gates, gate_key=gate_key,
        op=op, datafit=datafit, Y=Y, w=wd, alpha_max=amax, grad_at_zero=grad_at_zero,
        scale_exp=scale_exp,
    )
    if est.warm_start:
        _CACHE[est] = (_cache_key(est, X3, y, sw_in), st)
    return st


def _solver_only():
    from ._base import _SOLVER_ONLY_PARAMS

    return _SOLVER_ONLY_PARAMS


# ----------------------------------------------------------------------------- predictions
def _apply_block(block, est, method):
    return getattr(est, method)(block)


def lazy_apply(est, method, X):
    """``est.method`` (``decision_function``, ``predict``, ``predict_proba``,
    ``predict_log_proba``, ``transform``) on every chunk of the Dask ``X``, validated like
    the fit's ``X``: a lazy Dask array chunked along samples like ``X``."""
    X3 = check_dask_tokens(est, X, reset=False)
    c = est.classes_.shape[0]
    n_outputs = {
        "decision_function": None if c == 2 else c,
        "predict": None,
        "transform": est.token_shape_[0],
    }.get(method, c)
    if n_outputs is None:
        chunks, drop = (X3.chunks[0],), [1, 2]
    else:
        chunks, drop = (X3.chunks[0], (n_outputs,)), [2]
    dtype = _output_dtype(est, method, X3.dtype)
    return X3.map_blocks(
        _apply_block, est, method, chunks=chunks, drop_axis=drop, dtype=dtype,
        meta=np.empty((0,) * len(chunks), dtype=dtype),
    )


def _output_dtype(est, method, dtype):
    if method == "predict":
        return est.classes_.dtype
    if method == "transform":
        return np.dtype(np.int64)
    return np.dtype(dtype)
