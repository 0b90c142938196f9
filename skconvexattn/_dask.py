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
from ._validation import (
    _check_3d_shape,
    _empty_message,
    _nonfinite_message,
    _split_columns,
)

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
#: weights larger than this are scattered once to every worker (``broadcast=True``)
#: instead of being embedded in each task (bytes). Measured on a 2-process LocalCluster
#: (one pass, median of 7): embedding 12-14 ms up to 1 MB against 20-21 ms for a scatter
#: (one more round trip); 33 against 27 ms at 4 MB; equal at 16 MB
SCATTER_ABOVE = 2 << 20

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
    from ._validation import _check_not_empty

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
        if dtype.kind in "biuf":  # converted lazily, chunk by chunk, as check_array would
            X = X.astype(np.float64 if dtype.kind != "f" else np.float32)
        elif dtype.kind == "c":
            raise ValueError(
                f"Complex data not supported: X has a complex dtype, and {name} needs real "
                "token features. Pass real features, e.g. the real and imaginary parts as "
                "separate features, or the magnitudes."
            )
        else:
            raise ValueError(
                f"X must hold numbers only (float, int or bool), but the Dask array has dtype "
                f"{dtype}. Encode non-numeric token features as numbers first or pass a "
                "float array."
            )
    if ndim == 3:
        n, s, d = (int(v) for v in X.shape)
        _check_3d_shape(estimator, X.shape, n_tokens, reset)
        X3 = X
    else:
        n, f = (int(v) for v in X.shape)
        if reset:
            s, d = _split_columns(f, n_tokens)
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
    """Sum partial results: tuples are summed elementwise."""
    total = parts[0]
    for p in parts[1:]:
        if isinstance(total, tuple):
            total = tuple(a + b for a, b in zip(total, p))
        else:
            total = total + p
    return total


class _DistributedRunner:
    """Chunks persisted on the workers of a ``distributed.Client``; the chunk states of
    one worker are one object there (one task per worker and product)."""

    name = "distributed"

    def __init__(self, client):
        self.client = client

    def chunks(self, X3):
        """Persist ``X3``: one future per chunk, in order."""
        from distributed import futures_of

        Xp = self.client.persist(X3)
        by_key = {f.key: f for f in futures_of(Xp)}
        return [by_key[k] for k in _block_keys(Xp)]

    def map(self, func, handles, *per_item, shared=()):
        """``func(handle_i, *per_item_i, *shared)`` for every handle: futures."""
        shared = tuple(self._share(a) for a in shared)
        return [
            self.client.submit(func, h, *(p[i] for p in per_item), *shared, pure=False)
            for i, h in enumerate(handles)
        ]

    def _share(self, a):
        if isinstance(a, np.ndarray) and a.nbytes > SCATTER_ABOVE:
            return self.client.scatter(a, broadcast=True, hash=False)
        return a

    def gather(self, futures):
        out = self.client.gather(futures)
        self._trim()
        return out

    def reduce(self, futures):
        """Sum of the results: gathered when few, else by a tree of tasks on the workers."""
        while len(futures) > FAN_IN:
            futures = [
                self.client.submit(_sum_parts, *futures[i : i + FAN_IN], pure=False)
                for i in range(0, len(futures), FAN_IN)
            ]
        return _sum_parts(*self.gather(futures))

    def _trim(self):
        """Empty the client's log of recent messages to the scheduler.

        ``distributed`` keeps the last ``distributed.admin.low-level-log-length`` (1000)
        messages below 1 MB for debugging, and every product sends its weights and rows
        (``n x c``) in such messages: over a fit the log would hold hundreds of passes'
        worth on the client. Clearing it keeps the client at about one pass.
        """
        log = getattr(getattr(self.client, "scheduler_comm", None), "recent_message_log", None)
        if log is not None and hasattr(log, "clear"):
            log.clear()

    def groups(self, handles):
        """The chunks of every worker holding some (chunk indices, in order)."""
        who = self.client.who_has(handles)
        by_worker = {}
        for i, h in enumerate(handles):
            where = sorted(who.get(h.key, ())) or [None]
            by_worker.setdefault(where[0], []).append(i)
        return list(by_worker.items())

    def build(self, builder, handles, groups, per_chunk):
        """One :class:`ChunkGroup` per worker, built where its chunks are."""
        out = []
        for worker, idx in groups:
            args = [[p[i] for i in idx] for p in per_chunk]
            out.append(self.client.submit(
                _build_group, builder, [handles[i] for i in idx], *args, pure=False,
                workers=None if worker is None else [worker], allow_other_workers=True,
            ))
        return out


class _LocalRunner:
    """Chunks in this process (Dask's local schedulers); one task per thread group."""

    name = "local"

    def __init__(self):
        self.n_threads = max(1, min(8, os.cpu_count() or 1))
        self.pool = ThreadPoolExecutor(max_workers=self.n_threads)

    def chunks(self, X3):
        import dask

        return list(dask.compute(*_block_list(X3)))

    def map(self, func, handles, *per_item, shared=()):
        return [
            self.pool.submit(func, h, *(p[i] for p in per_item), *shared)
            for i, h in enumerate(handles)
        ]

    def gather(self, futures):
        return [f.result() for f in futures]

    def reduce(self, futures):
        return _sum_parts(*self.gather(futures))

    def groups(self, handles):
        k = min(self.n_threads, len(handles))
        return [(None, list(idx)) for idx in np.array_split(np.arange(len(handles)), k)]

    def build(self, builder, handles, groups, per_chunk):
        futures = [
            self.pool.submit(_build_group, builder, [handles[i] for i in idx],
                             *[[p[i] for i in idx] for p in per_chunk])
            for _, idx in groups
        ]
        return self.gather(futures)


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
    ``Y`` and weights ``w`` (in the chunk's namespace and dtype), and the device name.
    ``nbytes`` counts what it holds beyond the chunk itself (the features, copies)."""

    def __init__(self, op, Y, w, xp, device, nbytes, plan):
        self.op, self.Y, self.w, self.xp, self.device = op, Y, w, xp, device
        self.m = int(Y.shape[0])
        self.nbytes = int(nbytes)
        self.plan = plan

    def put(self, a):
        """A NumPy array from the client in the chunk's namespace and dtype."""
        return self.xp.asarray(np.ascontiguousarray(a), dtype=self.Y.dtype)


class ChunkGroup:
    """The chunk states one worker (or thread) holds: every product is one task per
    group, which runs over its chunks and returns one combined result."""

    def __init__(self, states):
        self.states = list(states)
        self.nbytes = sum(st.nbytes for st in self.states)

    def apply(self, func, rows, shared, combine):
        """``func(state, *rows_of_state, *shared)`` over the chunks, then ``combine``:
        ``"concat"`` (row results), ``"sum"`` or ``"pair"`` (sums, rows)."""
        out, start = [], 0
        for st in self.states:
            out.append(func(st, *(r[start : start + st.m] for r in rows), *shared))
            start += st.m
        if combine == "concat":
            return np.concatenate(out, axis=0) if len(out) > 1 else out[0]
        if combine == "sum":
            return _sum_parts(*out)
        if combine == "list":
            return [x for o in out for x in o]
        sums = _sum_parts(*[o[0] for o in out])
        return sums, np.concatenate([o[1] for o in out], axis=0)


def _build_group(builder, chunks, *per_chunk):
    return ChunkGroup(builder(x, *args) for x, *args in zip(chunks, *per_chunk))


def _group_apply(group, func, rows, shared, combine):
    return group.apply(func, rows, shared, combine)


def _register_sizeof():
    """Dask's memory manager sees what a chunk group holds beyond its chunks."""
    try:
        from dask.sizeof import sizeof
    except ImportError:  # pragma: no cover - dask absent
        return
    sizeof.register(ChunkState)(lambda st: st.nbytes)
    sizeof.register(ChunkGroup)(lambda g: g.nbytes)


_register_sizeof()


def _nbytes(chunk, *objs):
    """Bytes of the arrays the operator and targets hold (their ``__dict__`` one level
    deep) beyond the input ``chunk``, which Dask already counts as the persisted chunk:
    the lifted features, scaled or zero-padded copies, gate data."""
    total = 0
    seen = set()
    for o in objs:
        items = vars(o).values() if hasattr(o, "__dict__") else [o]
        for v in items:
            if not hasattr(v, "nbytes") or id(v) in seen:
                continue
            seen.add(id(v))
            if isinstance(v, np.ndarray) and isinstance(chunk, np.ndarray):
                if np.shares_memory(v, chunk):
                    continue
            elif v is chunk:
                continue
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
        from ._operator import plan_memory

        est = self.est
        X = _scaled_chunk(X, self.scale_exp)
        backend = _chunk_backend(X, est.device)
        dtype = np.dtype(str(X.dtype))
        Xd = backend.asarray(X) if isinstance(X, np.ndarray) and backend.name != "cpu" else X
        xp = backend.xp
        m, s, d = (int(v) for v in X.shape)
        c = self.n_outputs
        Y = np.zeros((m, c), dtype=dtype)
        Y[np.arange(m), y_enc] = 1.0
        Yd = backend.asarray(Y)
        wd = backend.asarray(np.asarray(w, dtype=dtype))
        gates = {k: backend.asarray(np.asarray(v).astype(dtype)) for k, v in self.gates.items()}
        if self.kind == "factored":
            op = est._chunked_factor_operator(gates, Xd, c)  # est: a clone, same budget
            plan = f"factored, chunks of {op.chunk_rows}"
        else:
            P, R, L = self.block_shape
            plan = plan_memory(
                m, P * R * L, P * R * L * c, dtype.itemsize, est._work_per_sample(s, d),
                self.budget_gib, type(est).__name__, est._reduce_hint,
            )
            op = est._operator(gates, Xd, (P, R, L), c, plan, None)
            plan = getattr(op, "plan_name", None) or (
                "materialised" if plan.materialised else f"chunks of {plan.chunk_rows}"
            )
        return ChunkState(op, Yd, wd, xp, backend.name, _nbytes(X, op, Yd, wd), plan)


def _scaled_chunk(X, e):
    if not e:
        return X
    if isinstance(X, np.ndarray):
        return np.ldexp(X, e).astype(X.dtype, copy=False)
    xp = get_namespace(X)
    return xp.astype(X * xp.asarray(2.0**e, dtype=X.dtype), X.dtype)


def _chunk_backend(X, device):
    """CuPy chunks run where they are; NumPy chunks go where ``device`` says (on the
    worker: ``"auto"`` uses its GPU when it has one)."""
    if type(X).__module__.startswith("cupy"):
        from array_api_compat import cupy as cp_compat

        return Backend(cp_compat, "cuda")
    return resolve_device(device)


# chunk-level products (module level: pickled by reference) -----------------------------
def _st_plan(st):
    return [(st.plan, st.device)]


def _st_forward(st, Z):
    return to_numpy(st.op.forward(st.put(Z)))


def _st_adjoint(st, U):
    return to_numpy(st.op.adjoint(st.put(U)))


def _st_weighted_mean(st):
    """This chunk's part of the weighted mean of the features, ``sum_i w_i Phi_i``."""
    return to_numpy(st.xp.reshape(st.op.adjoint(st.w[:, None]), (-1,)))


def _st_factor_forward(st, A, B):
    return to_numpy(st.op.forward(st.put(A), st.put(B)))


def _st_pair_logits(st, A, B):
    return to_numpy(st.op.pair_logits(st.put(A), st.put(B)))


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


# ----------------------------------------------------------------------------- operators
class _DaskOperatorBase:
    """Chunk groups on a runner, and the bookkeeping shared by both operators.

    ``groups`` lists, per group, the indices of its chunks; ``bounds`` the sample range
    of every chunk. Row arguments (``U``, ``T``) are cut into the rows of every group and
    row results (logits) put back in sample order.
    """

    def __init__(self, runner, handles, groups, bounds, dtype):
        self.runner = runner
        self.handles = handles
        self.bounds = bounds
        self.n_samples = bounds[-1][1]
        self.dtype = np.dtype(dtype)
        self.xp = np_compat
        self.n_passes = 0  # products run (each is one pass over the chunks)
        self.n_chunks = len(bounds)
        self.n_groups = len(groups)
        self._rows_of = []
        for idx in groups:
            parts = [np.arange(*bounds[i]) for i in idx]
            self._rows_of.append(np.concatenate(parts))
        self._identity = all(
            np.array_equal(r, np.arange(r[0], r[0] + r.size)) for r in self._rows_of
        ) and [r[0] for r in self._rows_of] == sorted(r[0] for r in self._rows_of)

    def _run(self, func, combine, rows=(), shared=()):
        """One product: ``func`` on every chunk, one task per group (futures)."""
        rows = [[np.ascontiguousarray(np.asarray(r)[idx]) for idx in self._rows_of] for r in rows]
        self.n_passes += 1
        return self._submit(func, combine, rows, shared)

    def _submit(self, func, combine, rows, shared):
        per_group = [tuple(r[g] for r in rows) for g in range(self.n_groups)]
        runner = self.runner
        shared = tuple(runner._share(a) for a in shared) if hasattr(runner, "_share") else shared
        if isinstance(runner, _DistributedRunner):
            return [
                runner.client.submit(_group_apply, h, func, per_group[g], shared, combine,
                                     pure=False)
                for g, h in enumerate(self.handles)
            ]
        return [
            runner.pool.submit(_group_apply, h, func, per_group[g], shared, combine)
            for g, h in enumerate(self.handles)
        ]

    def _place(self, parts):
        """Row results of the groups, in sample order."""
        if self._identity and len(parts) == 1:
            return parts[0]
        out = np.empty((self.n_samples,) + parts[0].shape[1:], dtype=parts[0].dtype)
        for idx, part in zip(self._rows_of, parts):
            out[idx] = part
        return out

    def describe(self):
        plans = [p for g in self.runner.gather(self._run(_st_plan, "list")) for p in g]
        self.n_passes -= 1
        kinds = sorted({p[0] for p in plans})
        sizes = [b - a for a, b in self.bounds]
        return (
            f"dask ({self.runner.name}): {len(sizes)} chunks of <= {max(sizes)} samples on "
            f"{self.n_groups} {'workers' if self.runner.name == 'distributed' else 'threads'}"
            f", per chunk {', '.join(kinds)}"
        ), plans[0][1]


class DaskLiftedOperator(_DaskOperatorBase):
    """The lifted operator of a Dask ``X``: the interface of
    :class:`~skconvexattn._operator.LiftedOperator` (``forward``, ``adjoint``,
    ``intercept_shift``, ``block_shape``), each product one pass over the chunks: one
    task per worker, which loops over its chunks.

    ``forward(Z)`` gathers the ``(m, c)`` logits of every worker; ``adjoint(U)`` sends
    each worker its rows of ``U`` and sums the ``(P, R, L c)`` parts (on the client for a
    few workers, by a tree of tasks for many). Centring (an intercept, see
    ``LiftedOperator``) is applied here, with the weighted mean of the features from one
    reduction at setup.
    """

    def __init__(self, runner, handles, groups, bounds, dtype, block_shape, center):
        super().__init__(runner, handles, groups, bounds, dtype)
        self.block_shape = tuple(int(v) for v in block_shape)
        self.n_lifted = math.prod(self.block_shape)
        self.mean = None
        if center:
            self.mean = runner.reduce(self._run(_st_weighted_mean, "sum")).astype(self.dtype)

    def forward(self, Z):
        """Logits without intercept, ``(n, c)``."""
        Z = np.asarray(Z)
        O = self._place(self.runner.gather(self._run(_st_forward, "concat", shared=(Z,))))
        if self.mean is not None:
            c = Z.shape[-1] // self.block_shape[2]
            O = O - (self.mean @ Z.reshape(self.n_lifted, c))[None, :]
        return O.astype(self.dtype, copy=False)

    def adjoint(self, U):
        """``sum_i Phi_i (x) U_i`` as blocks ``(P, R, L c)``."""
        U = np.asarray(U)
        G = self.runner.reduce(self._run(_st_adjoint, "sum", rows=(U,)))
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
    :mod:`~skconvexattn._factored_ops` (``forward``, ``grad_a``, ``grad_b``, ``pair_logits``,
    ``value_and_grads``, ``P``, ``a_shape``, ``d``). ``value_and_grads`` is one fused pass:
    each worker returns its loss sum, its two gradient parts and its logits."""

    def __init__(self, runner, handles, groups, bounds, dtype, P, a_shape, s, d):
        super().__init__(runner, handles, groups, bounds, dtype)
        self.P, self.a_shape, self.s, self.d = int(P), tuple(a_shape), int(s), int(d)
        self.chunk_rows = None  # set by dask_setup (for memory_plan_)

    def forward(self, A, B):
        parts = self.runner.gather(
            self._run(_st_factor_forward, "concat", shared=(np.asarray(A), np.asarray(B)))
        )
        return self._place(parts)

    def pair_logits(self, A, B):
        """The logits of every pair of a block's heads (the Newton dual point's
        directions), ``(n, P, k, k, c)``: row results of every chunk."""
        parts = self.runner.gather(
            self._run(_st_pair_logits, "concat", shared=(np.asarray(A), np.asarray(B)))
        )
        return self._place(parts)

    def grad_a(self, T, B):
        return self.runner.reduce(self._run(_st_grad_a, "sum", rows=(T,), shared=(np.asarray(B),)))

    def grad_b(self, T, A):
        return self.runner.reduce(self._run(_st_grad_b, "sum", rows=(T,), shared=(np.asarray(A),)))

    def value_and_grads(self, A, B, intercept, datafit, Y, w):
        """Datafit value, gradients in ``A``, ``B``, the intercept, and the logits (``Y``
        and ``w`` are those of the client; the chunks hold their own rows)."""
        pairs = self.runner.gather(self._run(
            _st_value_and_grads, "pair",
            shared=(np.asarray(A), np.asarray(B), np.asarray(intercept), datafit),
        ))
        f, gA, gB, gb = _sum_parts(*[p[0] for p in pairs])
        return np.float64(f), gA, gB, gb, self._place([p[1] for p in pairs])


# ----------------------------------------------------------------------------- setup
# a warm-started head keeps its chunk states between fits on the same data (the fits of a
# regularisation path): estimator -> (key, setup)
_CACHE = weakref.WeakKeyDictionary()


def release(est):
    """Drop the chunk states a warm-started head keeps on the workers."""
    _CACHE.pop(est, None)


def _cache_key(est, X3, y, sw):
    from ._fit_inputs import _SOLVER_ONLY_PARAMS

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
    from ._fit_inputs import _classes_and_weights, _normalised_weights, _same_gate_key
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
    solver = est._choose_solver(m_max, s, d, c, dtype)
    factored = solver == "factored"
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
    groups = runner.groups(handles)
    y_rows = [y_enc[a:b] for a, b in bounds]
    group_handles = runner.build(builder, handles, groups, [y_rows, w_rows])
    groups = [idx for _, idx in groups]
    Y = np.zeros((n, c), dtype=dtype)
    Y[np.arange(n), y_enc] = 1.0
    wd = w.astype(dtype)
    datafit = get_datafit(est.loss)
    if factored:
        op = DaskFactorOperator(runner, group_handles, groups, bounds, dtype, est._n_convex_blocks(),
                                est._factor_a_shape(s, d), s, d)
        op.chunks = handles  # the persisted chunks stay (counted once by Dask)
        _, device = op.describe()
        op.chunk_rows = f"<= {m_max} samples per product, on each of {len(bounds)} Dask chunks"
        prior, b0 = prior_and_start(datafit, Y, wd, est.fit_intercept)
        T0 = wd[:, None] * datafit.raw_gradient(np.zeros_like(Y) + b0[None, :], Y)
        amax = float(block_spectra(op, T0, n_steps=40, rng=np.random.default_rng(0))[0].max())
        grad_at_zero = None
    else:
        op = DaskLiftedOperator(runner, group_handles, groups, bounds, dtype, (P, R, L),
                                est.fit_intercept)
        op.chunks = handles  # the persisted chunks stay (counted once by Dask)
        op.plan_name, device = op.describe()
        amax, grad_at_zero = alpha_max(op, datafit, Y, wd, est.fit_intercept)
        amax = float(amax)
        if solver == "factored-lifted":  # L-BFGS on factors through the chunks' features
            from ._factored_ops import LiftedFactorOperator

            op = LiftedFactorOperator(op, (P, R, L), est._factor_a_shape(s, d) or (R,))
            grad_at_zero = None
    st = Bunch(
        factored=solver != "fista", solver=solver, X3=X3, classes=classes, dtype=dtype, block_shape=(P, R, L),
        plan=None, backend=Backend(np_compat, device), gates=gates, gate_key=gate_key,
        op=op, datafit=datafit, Y=Y, w=wd, alpha_max=amax, grad_at_zero=grad_at_zero,
        scale_exp=scale_exp,
    )
    if est.warm_start:
        _CACHE[est] = (_cache_key(est, X3, y, sw_in), st)
    return st


def _solver_only():
    from ._fit_inputs import _SOLVER_ONLY_PARAMS

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


# ----------------------------------------------------------------------------- preprocessing
def _token_sums(X, w, offset, mu=None):
    """Per chunk, over its real tokens (float64): the validation report, the token
    count (or weight), the weighted feature sums and the Gram matrix ``T^T diag(w) T``;
    with ``mu`` only the weighted squared deviations from it."""
    X = np.asarray(X)
    T = X.reshape(-1, X.shape[2])
    tw = None if w is None else np.repeat(np.asarray(w, dtype=np.float64), X.shape[1])
    real = ~np.isnan(T[:, 0])
    if not real.all():
        T = T[real]
        tw = None if tw is None else tw[real]
    T = T.astype(np.float64)
    if mu is not None:
        D = (T - mu) ** 2
        return D.sum(axis=0) if tw is None else tw @ D
    rep = _value_report(X, offset)
    count = float(T.shape[0]) if tw is None else float(tw.sum())
    s1 = T.sum(axis=0) if tw is None else tw @ T
    gram = T.T @ T
    return rep, int(T.shape[0]), count, s1, gram


def _reduce_tokens(X3, w=None, mu=None):
    """The sums of :func:`_token_sums` over every chunk (one Dask computation, on the
    current scheduler; the chunks are computed where they are)."""
    import dask

    bounds = _chunk_bounds(X3)
    parts = [
        dask.delayed(_token_sums)(b, None if w is None else w[lo:hi], lo, mu)
        for b, (lo, hi) in zip(X3.to_delayed().ravel(), bounds)
    ]
    return dask.compute(*parts)


def fit_token_scaler(est, X, sample_weight):
    """:meth:`~skconvexattn.preprocessing.TokenStandardScaler.fit` on a Dask ``X``:
    the statistics of :class:`~sklearn.preprocessing.StandardScaler` over the real
    tokens by two reductions over chunks (sums, then squared deviations), in float64."""
    from sklearn.preprocessing import StandardScaler
    from sklearn.preprocessing._data import _handle_zeros_in_scale, _is_constant_feature
    from sklearn.utils.validation import _check_sample_weight

    X3 = check_dask_tokens(est, X, reset=True, n_tokens=est.n_tokens)
    n, s, d = (int(v) for v in X3.shape)
    sw = small_array(sample_weight, "sample_weight", n)
    if sw is not None:
        sw = _check_sample_weight(sw, np.empty((n, 0)), dtype=X3.dtype).astype(np.float64)
    parts = _reduce_tokens(X3, sw)
    _merge_reports([p[0] for p in parts], d)
    n_real = sum(p[1] for p in parts)
    total = sum(p[2] for p in parts)
    mean = sum(p[3] for p in parts) / total
    scaler = StandardScaler(copy=True, with_mean=est.with_mean, with_std=est.with_std)
    scaler.set_output(transform="default")
    if not est.with_mean and not est.with_std:
        mean_, var_, scale_ = None, None, None
    else:
        mean_ = mean
        var_ = None
        if est.with_std:
            var_ = sum(_reduce_tokens(X3, sw, mean)) / total
    # as StandardScaler: the weight total, or the count when unweighted or when neither
    # mean nor scale is fitted
    plain = sw is None or (not est.with_mean and not est.with_std)
    seen = np.int64(n_real) if plain else np.float64(total)
    if est.with_std:
        constant = _is_constant_feature(var_, mean_, seen)
        scale_ = _handle_zeros_in_scale(np.sqrt(var_), copy=False, constant_mask=constant)
    else:
        scale_ = None
    scaler.mean_, scaler.var_, scaler.scale_ = mean_, var_, scale_
    scaler.n_samples_seen_ = seen
    scaler.n_features_in_ = d
    est.scaler_ = scaler
    est.mean_, est.var_, est.scale_ = mean_, var_, scale_
    est.n_tokens_seen_ = seen
    return est


def fit_token_pca(est, X):
    """:meth:`~skconvexattn.preprocessing.TokenPCA.fit` on a Dask ``X``: the mean and
    covariance of the real tokens by one reduction over chunks, then the
    ``"covariance_eigh"`` solution of :class:`~sklearn.decomposition.PCA` (exact, with its
    sign convention), whatever ``svd_solver`` says."""
    from sklearn.decomposition import PCA
    from sklearn.utils.extmath import svd_flip

    X3 = check_dask_tokens(est, X, reset=True, n_tokens=est.n_tokens)
    n, s, d = (int(v) for v in X3.shape)
    parts = _reduce_tokens(X3)
    _merge_reports([p[0] for p in parts], d)
    N = sum(p[1] for p in parts)
    est._check_components(n, s, d, N)
    mean = sum(p[3] for p in parts) / N
    C = sum(p[4] for p in parts) - N * np.outer(mean, mean)
    C /= max(N - 1, 1)
    evals, evecs = np.linalg.eigh(C)
    evals, evecs = evals[::-1], evecs[:, ::-1]
    evals[evals < 0.0] = 0.0
    _, Vt = svd_flip(None, np.ascontiguousarray(evecs.T), u_based_decision=False)
    total_var = evals.sum()
    ratio = evals / total_var
    k = est.n_components
    if k is None:
        k = min(N, d)
    elif 0 < k < 1 and not isinstance(k, (int, np.integer)):
        k = int(np.searchsorted(np.cumsum(ratio), k, side="right") + 1)
    k = int(k)
    dtype = X3.dtype
    pca = PCA(n_components=est.n_components, whiten=est.whiten, svd_solver=est.svd_solver,
              random_state=est.random_state).set_output(transform="default")
    pca.mean_ = mean.astype(dtype)
    pca.components_ = np.ascontiguousarray(Vt[:k]).astype(dtype)
    pca.explained_variance_ = evals[:k].astype(dtype)
    pca.explained_variance_ratio_ = ratio[:k].astype(dtype)
    pca.singular_values_ = np.sqrt(evals[:k] * (N - 1)).astype(dtype)
    pca.noise_variance_ = float(evals[k:].mean()) if k < min(d, N) else 0.0
    pca.n_components_ = k
    pca.n_samples_ = N
    pca.n_features_in_ = d
    pca._fit_svd_solver = "covariance_eigh"
    est.pca_ = pca
    for name in ("components_", "explained_variance_", "explained_variance_ratio_",
                 "singular_values_", "mean_", "n_components_", "noise_variance_"):
        setattr(est, name, getattr(pca, name))
    return est


def lazy_transform(est, X, n_out):
    """``est.transform`` of a token transformer on every chunk of the Dask ``X``: lazy,
    with ``n_out`` features per token and the dimensionality of ``X`` (the caller checks
    that its output container can hold it)."""
    X3 = check_dask_tokens(est, X, reset=False)
    s = est.token_shape_[0]
    if X.ndim == 3:
        Xin, chunks = X3, (X3.chunks[0], (s,), (n_out,))
    else:
        Xin, chunks = X3.reshape(X3.shape[0], -1), (X3.chunks[0], (s * n_out,))
    return Xin.map_blocks(
        _apply_block, est, "transform", chunks=chunks, dtype=X3.dtype,
        meta=np.empty((0,) * len(chunks), dtype=X3.dtype),
    )
