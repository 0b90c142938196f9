"""Array namespaces and devices: one code path for NumPy, CuPy and any array-API library.

The numerical kernels receive arrays and call :func:`get_namespace` on them; they never
test for a particular library. This module is the only place that knows about CuPy, and
only to resolve the user's ``device`` parameter and to move fitted results back to NumPy.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace, is_numpy_namespace, to_device  # noqa: F401
from array_api_compat import numpy as np_compat

__all__ = [
    "get_namespace",
    "resolve_device",
    "to_numpy",
    "scalar",
    "cuda_available",
    "Backend",
    "import_optional",
]


def get_namespace(*arrays):
    """Return the array-API compatible namespace of ``arrays``.

    Plain NumPy arrays take a fast path (the kernels call this once per operation, and
    ``array_namespace``'s inspection costs more than a small array operation).
    """
    for a in arrays:
        if type(a) is not np.ndarray:
            return array_namespace(*arrays)
    return np_compat


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy  # noqa: F401

        return bool(cupy.cuda.is_available())
    except Exception:  # ImportError, CUDA driver errors
        return False


class Backend:
    """Where a fit runs: an array namespace, and how to move host arrays onto it.

    Parameters
    ----------
    xp : namespace
        An array-API compatible namespace (``array_api_compat.numpy``,
        ``array_api_compat.cupy``, ``array_api_strict``, ...).
    name : str
        ``"cpu"`` or ``"cuda"``, for messages and fitted attributes.
    """

    def __init__(self, xp, name):
        self.xp = xp
        self.name = name

    def asarray(self, a, dtype=None):
        """Move a host (NumPy) array onto this backend, optionally casting it."""
        xp = self.xp
        if dtype is None:
            dtype = _map_dtype(xp, np.asarray(a).dtype)
        return xp.asarray(np.ascontiguousarray(a), dtype=dtype)

    def __repr__(self):  # pragma: no cover - debugging aid
        return f"Backend({self.name!r})"


def _map_dtype(xp, np_dtype):
    return {
        np.dtype(np.float32): xp.float32,
        np.dtype(np.float64): xp.float64,
        np.dtype(np.int64): xp.int64,
        np.dtype(np.int32): xp.int32,
        np.dtype(np.bool_): xp.bool,
    }.get(np.dtype(np_dtype), None)


def resolve_device(device: str, *, for_predict: bool = False) -> Backend:
    """Turn the ``device`` parameter into a :class:`Backend`.

    ``"auto"`` uses CuPy when it imports and a GPU is visible, else NumPy;
    ``"cpu"`` forces NumPy; ``"cuda"`` requires a GPU and raises a ``ValueError``
    saying how to fix it when there is none. With ``for_predict=True`` a missing GPU
    falls back to NumPy, so that a model fitted on a GPU predicts on a CPU machine.
    """
    if device == "cpu":
        return Backend(np_compat, "cpu")
    if device in ("auto", "cuda"):
        if cuda_available():
            from array_api_compat import cupy as cp_compat

            return Backend(cp_compat, "cuda")
        if device == "cuda" and not for_predict:
            raise ValueError(
                "device='cuda' was requested but no CUDA GPU is usable: CuPy is not "
                "installed or sees no device. Install the GPU extra "
                "(pip install 'skconvexattn[gpu]') on a machine with an NVIDIA GPU, "
                "or pass device='cpu' (or 'auto')."
            )
        return Backend(np_compat, "cpu")
    raise ValueError(  # guarded by _parameter_constraints; kept for direct calls
        f"device must be 'auto', 'cpu' or 'cuda', got {device!r}."
    )


def to_numpy(a):
    """Copy an array of any supported namespace to a NumPy array on the host."""
    if isinstance(a, np.ndarray):
        return a
    mod = type(a).__module__
    if mod.startswith("cupy"):
        return a.get()
    if mod.startswith("torch"):
        return a.detach().cpu().numpy()
    try:
        return np.asarray(to_device(a, "cpu"))
    except Exception:
        return np.asarray(a)


def scalar(a) -> float:
    """A 0-d array as a Python float (one host transfer)."""
    return float(to_numpy(a))


def scalars(*values):
    """Several 0-d arrays as Python floats, in one host transfer."""
    xp = get_namespace(values[0])
    vals = [xp.astype(v, xp.float64) for v in values]
    return [float(v) for v in to_numpy(xp.stack(vals))]


def import_optional(module, needed_by, name, install, note=""):
    """Import the optional dependency ``module``, or raise an ``ImportError`` saying what
    needs it and how to install it: "<needed_by> needs <name>, which is not installed.
    Install it with `<install>`<note>." """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{needed_by} needs {name}, which is not installed. Install it with "
            f"`{install}`{note}."
        ) from exc
