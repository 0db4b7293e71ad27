"""Array backend: NumPy on CPU, CuPy on a GPU, chosen once per process.

Kernels never import CuPy themselves.  They call :func:`get_backend` (or
:func:`array_module` on an array they were handed) and use ``xp`` with the
subset of the API that NumPy and CuPy share.  The handful of operations that
differ between the two live here, one function each:

* FFTs (``scipy.fft`` with worker threads on CPU, ``cupy.fft`` with its plan
  cache on GPU),
* scatter-add (``bincount`` on CPU, a deterministic sort + segmented sum on GPU)
  and sums of rows by index,
* host/device transfer, synchronisation and the GPU memory pool.

Selection: ``auto`` (CuPy if a CUDA device is usable, else NumPy), ``numpy`` or
``cupy``; from the argument, else the ``SPA_BACKEND`` environment variable,
else ``auto``.  ``auto`` never fails on a machine without a GPU or driver, even
with CuPy installed (``cupy.is_available()`` returns False there).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np

VALID = ("auto", "numpy", "cupy")


def cupy_available() -> bool:
    """True when CuPy imports *and* a CUDA device can be used."""
    try:
        import cupy  # noqa: PLC0415 - optional dependency, imported lazily
    except Exception:
        return False
    try:
        return bool(cupy.is_available())
    except Exception:
        return False


@dataclass(frozen=True)
class Backend:
    """The array module and the few backend-specific operations."""

    name: str
    xp: ModuleType
    fft_workers: int = 1

    # -- FFTs -----------------------------------------------------------------
    def rfftn(self, a, axes=None):
        if self.name == "numpy":
            import scipy.fft as sfft

            return sfft.rfftn(a, axes=axes, workers=self.fft_workers)
        return self.xp.fft.rfftn(a, axes=axes)

    def irfftn(self, a, s=None, axes=None):
        if self.name == "numpy":
            import scipy.fft as sfft

            return sfft.irfftn(a, s=s, axes=axes, workers=self.fft_workers)
        return self.xp.fft.irfftn(a, s=s, axes=axes)

    def fftn(self, a, axes=None):
        if self.name == "numpy":
            import scipy.fft as sfft

            return sfft.fftn(a, axes=axes, workers=self.fft_workers)
        return self.xp.fft.fftn(a, axes=axes)

    def ifftn(self, a, axes=None):
        if self.name == "numpy":
            import scipy.fft as sfft

            return sfft.ifftn(a, axes=axes, workers=self.fft_workers)
        return self.xp.fft.ifftn(a, axes=axes)

    # -- scatter-add ----------------------------------------------------------
    def scatter_add(self, target, indices, values, scale=None) -> None:
        """``target[indices] += values`` (times ``scale``) with repeated indices accumulated.

        ``indices`` is an integer index array into ``target.ravel()`` (``target``
        must be contiguous); ``values`` (and ``scale``, real, broadcast against
        it) give one addend per index, in the same order once flattened.  The
        result does not depend on the order of the additions' scheduling: on GPU
        a sort and a segmented sum, not atomics (whose order, and so the
        rounding, changes from run to run: same seed, same map).
        """
        flat = target.reshape(-1)
        indices = indices.reshape(-1)
        if scale is not None:
            values = values * scale
        values = values.reshape(-1)
        if self.name == "numpy":
            # bincount is much faster than np.add.at for large index sets; it casts indices to intp,
            # so cast once for the real and imaginary parts
            indices = np.asarray(indices).astype(np.intp, copy=False)
            if np.iscomplexobj(flat):
                flat += (
                    np.bincount(indices, weights=values.real, minlength=flat.size)
                    + 1j * np.bincount(indices, weights=values.imag, minlength=flat.size)
                ).astype(flat.dtype)
            else:
                flat += np.bincount(indices, weights=values, minlength=flat.size).astype(flat.dtype)
            return
        rows, sums = self._segment_sums(values.astype(flat.dtype), indices)
        flat[rows] += sums

    def add_interpolated(self, targets, values, indices, weights, corner_axis: int = -1) -> None:
        """The adjoint of an interpolation: ``targets[j].ravel()[indices[c]] += weights[c]·values[j]``
        over every corner c (the axis ``corner_axis`` of ``indices`` and ``weights``).

        ``targets``: grids of equal size (float64 or complex128: the sums are kept
        there); ``values[j]``: one value per point, shaped as ``indices`` without
        the corner axis (complex for a complex target).  On CPU one sparse
        (grid × points) product for all targets at once, each point a column
        with its corners' weights (SciPy's CSC kernel: 2.7× three bincounts,
        measured; each call's sums in float32, added to the float64 targets); on
        GPU a deterministic scatter-add per target.
        """
        xp = self.xp
        if self.name != "numpy":
            for target, v in zip(targets, values):
                self.scatter_add(target, indices, xp.expand_dims(v, corner_axis), scale=weights)
            return
        import scipy.sparse as sparse

        size = targets[0].size
        if any(t.size != size for t in targets):
            raise ValueError("add_interpolated: every target grid must have the same size")
        idx = np.ascontiguousarray(np.moveaxis(indices, corner_axis, -1))
        n_corners = idx.shape[-1]
        idx = idx.reshape(-1)
        w = np.ascontiguousarray(np.moveaxis(weights, corner_axis, -1), dtype=np.float32).reshape(-1)
        n_points = idx.size // n_corners
        interp = sparse.csc_matrix((w, idx, np.arange(0, idx.size + 1, n_corners)), shape=(size, n_points))
        columns = []
        for v in values:
            v = np.asarray(v).reshape(-1)
            columns += [v.real, v.imag] if np.iscomplexobj(v) else [v]
        # float32 product (a call's sums: relative error ~1e-5 of the largest, far below the data's
        # noise), added into the float64 targets; float64 here would double the points' memory
        # traffic, which is what this costs
        sums = interp @ np.stack(columns, axis=1).astype(np.float32, copy=False)
        j = 0
        for target, v in zip(targets, values):
            flat = target.reshape(-1)
            if np.iscomplexobj(v):
                flat += (sums[:, j] + 1j * sums[:, j + 1]).astype(flat.dtype)
                j += 2
            else:
                flat += sums[:, j].astype(flat.dtype)
                j += 1

    def sum_rows_by_index(self, values, index, n_rows: int, rows=None, weights=None):
        """(n_rows, F) with row j = Σ over entries e with ``index[e]`` = j of ``weights[e]·values[rows[e]]``.

        ``values`` (Q, F) real; ``index`` (E,) target rows; ``rows`` (E,) source
        rows (default: entry e reads row e, E = Q); ``weights`` (E,) (default 1).
        On CPU one sparse (n_rows × Q) by dense (Q × F) product (scipy's CSR
        kernel: ~15× NumPy's ``add.reduceat`` over rows, which is slow along axis
        0); on GPU a gather, a stable sort and ``add.reduceat`` (deterministic,
        unlike atomics; summed in float64).  The result has ``values``' dtype.
        """
        xp = self.xp
        n_entries = int(index.shape[0])
        out_shape = (n_rows,) + values.shape[1:]
        if n_entries == 0:
            return xp.zeros(out_shape, values.dtype)
        if self.name == "numpy":
            import scipy.sparse as sparse

            w = np.ones(n_entries, values.dtype) if weights is None else np.asarray(weights, values.dtype)
            src = np.arange(n_entries) if rows is None else rows
            onehot = sparse.csr_matrix((w, (index, src)), shape=(n_rows, values.shape[0]))
            return np.asarray(onehot @ values.reshape(values.shape[0], -1)).reshape(out_shape)
        picked = values if rows is None else values[rows]
        if weights is not None:
            picked = picked * weights.astype(values.dtype).reshape((-1,) + (1,) * (values.ndim - 1))
        out = xp.zeros(out_shape, values.dtype)
        targets, sums = self._segment_sums(picked, index)
        out[targets] = sums
        return out

    def _segment_sums(self, values, index):
        """(distinct indices, Σ values per index) through a stable sort and ``add.reduceat``.

        The sums are formed in float64 (complex128) and returned in ``values``' dtype: CuPy's
        ``add.reduceat`` is a running sum differenced at the segment starts, so each segment
        carries the rounding error of the whole running total; in float32 that swamped the small
        segments (a back-projection's CTF² weights after ~10⁷ positive addends: errors of 0.5 %
        of the largest voxel, maps wrong by 100× where the weights are small).
        """
        xp = self.xp
        order = xp.argsort(index, kind="stable")
        idx = index[order]
        starts = xp.concatenate([xp.zeros(1, xp.int64), xp.nonzero(idx[1:] != idx[:-1])[0].astype(xp.int64) + 1])
        wide = xp.complex128 if xp.iscomplexobj(values) else xp.float64
        sums = xp.add.reduceat(values[order].astype(wide, copy=False), starts, axis=0)
        return idx[starts], sums.astype(values.dtype, copy=False)

    # -- transfers ------------------------------------------------------------
    def asarray(self, a, dtype=None):
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        if self.name == "numpy":
            return np.asarray(a)
        return self.xp.asnumpy(a)

    def synchronize(self) -> None:
        """Wait until queued device work has finished (GPU kernels run asynchronously; for timings)."""
        if self.name == "cupy":
            self.xp.cuda.Device().synchronize()

    def free_memory(self) -> None:
        """Return cached GPU blocks to the driver (no-op on CPU)."""
        if self.name == "cupy":
            self.xp.get_default_memory_pool().free_all_blocks()
            self.xp.get_default_pinned_memory_pool().free_all_blocks()


def resolve_name(name: str | None = None) -> str:
    """Turn ``auto``/``numpy``/``cupy`` (or None → $SPA_BACKEND → auto) into a concrete name."""
    name = (name or os.environ.get("SPA_BACKEND") or "auto").lower()
    if name not in VALID:
        raise ValueError(f"backend must be one of {VALID}, got {name!r}")
    if name == "auto":
        return "cupy" if cupy_available() else "numpy"
    if name == "cupy" and not cupy_available():
        raise RuntimeError("backend 'cupy' requested but no usable CUDA device/CuPy installation was found")
    return name


@lru_cache(maxsize=None)
def _make(name: str, fft_workers: int) -> Backend:
    if name == "cupy":
        import cupy  # noqa: PLC0415

        return Backend("cupy", cupy, fft_workers)
    return Backend("numpy", np, fft_workers)


def keep_heap_top(pad_bytes: int | None = None) -> bool:
    """Ask glibc to keep ``pad_bytes`` (default $SPA_HEAP_PAD_MB, 1024 MiB; 0: leave malloc alone)
    of freed heap mapped instead of returning it to the kernel after every free.

    The E-step makes and frees temporaries of tens of MB per block; with glibc's
    default the heap top is trimmed after each, so every block page-faults its
    memory in again, which on the 2-core test machine cost as much as the
    arithmetic (trilinear interpolation 145 → 72 ms, projection 303 → 214 ms for
    4000 slices, measured).  M_TOP_PAD only changes how much memory the process
    keeps mapped (up to the pad), never the results.  Returns whether it was set.
    Called when a command starts (:func:`spa.cli.main`) and on each Dask worker
    the commands start (:func:`spa.cluster.make_client`), never on import.
    """
    if pad_bytes is None:
        pad_bytes = int(float(os.environ.get("SPA_HEAP_PAD_MB", "1024")) * 2**20)
    if pad_bytes <= 0:
        return False
    try:
        import ctypes

        m_top_pad = -2
        return bool(ctypes.CDLL("libc.so.6").mallopt(m_top_pad, int(pad_bytes)))
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False


def get_backend(name: str | None = None, fft_workers: int | None = None) -> Backend:
    """The backend for ``name`` (``auto``/``numpy``/``cupy``; None: $SPA_BACKEND or auto)."""
    if fft_workers is None:
        fft_workers = int(os.environ.get("SPA_FFT_WORKERS", "1"))
    return _make(resolve_name(name), fft_workers)


def move(a, xp: ModuleType):
    """Array ``a`` on the backend of module ``xp`` (NumPy or CuPy): a host↔device copy, or ``a`` itself."""
    if array_module(a) is xp:
        return a
    if xp is np:
        return backend_of(a).to_numpy(a)
    return xp.asarray(a)


class OnBackend:
    """Mixin for objects that hold arrays (named in ``_array_fields``) and an ``xp`` attribute.

    ``obj.on(xp)`` is the object with those arrays on backend ``xp``: itself when
    they are there already, else a copy made once and kept (a worker that runs
    many chunks against the same broadcast references moves them once).
    """

    _array_fields: tuple = ()
    #: per-process caches: neither pickled (to Dask workers) nor carried to copies on other backends
    _transient_fields: tuple = ("_backend_copies",)

    def on(self, xp: ModuleType):
        if self.xp is xp:
            return self
        cache = self.__dict__.setdefault("_backend_copies", {})
        if xp.__name__ not in cache:
            new = type(self).__new__(type(self))
            new.__dict__.update({k: v for k, v in self.__dict__.items() if k not in self._transient_fields})
            for name in self._array_fields:
                setattr(new, name, move(getattr(self, name), xp))
            new.xp = xp
            cache[xp.__name__] = new
        return cache[xp.__name__]

    def __getstate__(self):  # copies on other backends and caches stay where they were made
        return {k: v for k, v in self.__dict__.items() if k not in self._transient_fields}


def array_module(a: Any) -> ModuleType:
    """NumPy or CuPy, whichever owns array ``a`` (dispatch on the data, not on globals)."""
    mod = type(a).__module__
    if mod.startswith("cupy"):
        import cupy  # noqa: PLC0415

        return cupy
    return np


def backend_of(a: Any) -> Backend:
    """The :class:`Backend` that owns array ``a``."""
    return get_backend("cupy" if array_module(a) is not np else "numpy")
