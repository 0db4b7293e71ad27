"""A stand-in for CuPy on machines without a GPU: NumPy arithmetic under CuPy's rules on mixing.

Put ``tests/fakegpu`` first on ``PYTHONPATH`` and set ``SPA_BACKEND=cupy``:
every ``import cupy`` (in worker processes too) then gets this module, whose
arrays live "on the device" as CuPy's do.  What it enforces, as CuPy does:

* no implicit conversion to NumPy: ``np.asarray(a)`` raises (``.get()`` /
  ``cupy.asnumpy`` are the ways back);
* no mixing: a ufunc, operator or ``cupy.*`` function given a NumPy array
  (with one or more dimensions) alongside or instead of a device array raises
  ``TypeError``; Python and NumPy scalars are fine, and ``cupy.asarray``,
  indices and assigned values may come from the host;
* reductions and full indexing return 0-d device arrays, not NumPy scalars.

So the test suite run this way finds the places where the CuPy path would
leave the NumPy path's code, without a GPU.  It does not check which NumPy
functions CuPy lacks, nor numerical differences (cuBLAS, cuFFT): the GPU tests
(``-m gpu``) on a real device do that.
"""

from __future__ import annotations

import types

import numpy as _np
from numpy.lib.mixins import NDArrayOperatorsMixin as _Operators

__version__ = "0.0-emulated"


def _reject(obj):
    raise TypeError(f"Unsupported type {type(obj)} (a host NumPy array given to a device operation)")


def _unwrap(obj, strict: bool = True):
    """Device arrays → their NumPy data; host arrays rejected when ``strict``; containers recursively."""
    if isinstance(obj, ndarray):
        return obj._a
    if isinstance(obj, _np.ndarray):
        if strict and obj.ndim > 0:
            _reject(obj)
        return obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(o, strict) for o in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v, strict) for k, v in obj.items()}
    return obj


def _wrap(obj):
    if isinstance(obj, _np.ndarray):
        return ndarray(obj)
    if isinstance(obj, _np.generic):
        return ndarray(_np.asarray(obj))
    if isinstance(obj, tuple):
        return tuple(_wrap(o) for o in obj)
    if isinstance(obj, list):
        return [_wrap(o) for o in obj]
    return obj


class ndarray(_Operators):  # noqa: N801 - CuPy's name
    """A device array: NumPy data that refuses to meet host arrays."""

    __slots__ = ("_a",)
    __array_priority__ = 100

    def __init__(self, data):
        self._a = data if isinstance(data, _np.ndarray) else _np.asarray(data)

    # -- the ways to and from the host ----------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def get(self):
        return self._a.copy()

    # -- NumPy protocols ------------------------------------------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out")
        args = _unwrap(inputs)
        if out is not None:
            kwargs["out"] = _unwrap(out)
        result = getattr(ufunc, method)(*args, **kwargs)
        if out is not None:
            return out[0] if isinstance(out, tuple) and len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    # -- attributes -----------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))

    @property
    def real(self):
        return ndarray(self._a.real)

    @real.setter
    def real(self, value):
        self._a.real = _unwrap(value, strict=False)

    @property
    def imag(self):
        return ndarray(self._a.imag)

    @imag.setter
    def imag(self, value):
        self._a.imag = _unwrap(value, strict=False)

    def __getattr__(self, name):
        if name.startswith("__"):  # never hand NumPy __array_interface__ & co.: no implicit conversion
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if not callable(attr):
            return _wrap(attr)

        def method(*args, **kwargs):
            return _wrap(attr(*_unwrap(args), **_unwrap(kwargs)))

        return method

    # -- indexing (host index arrays and assigned host values are accepted, as CuPy does) --------
    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key, strict=False)])

    def __setitem__(self, key, value):
        self._a[_unwrap(key, strict=False)] = _unwrap(value, strict=False)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(x) for x in self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __complex__(self):
        return complex(self._a)

    def __bool__(self):
        return bool(self._a)

    def __index__(self):
        if self._a.ndim or self._a.dtype.kind not in "iu":
            raise TypeError("only integer scalar arrays can be converted to a scalar index")
        return int(self._a)

    def __repr__(self):
        return "cupy(emulated)." + repr(self._a)

    def __copy__(self):
        return ndarray(self._a.copy())

    def __deepcopy__(self, memo):
        return ndarray(self._a.copy())

    def __reduce__(self):  # pickling (Dask) carries the data, as CuPy does
        return (ndarray, (self._a,))


class _Ufunc:
    """A ufunc whose calls and methods follow the device rules."""

    def __init__(self, uf):
        self._uf = uf

    def __call__(self, *args, **kwargs):
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = _unwrap(out)
        result = self._uf(*_unwrap(args), **kwargs)
        return out if out is not None else _wrap(result)

    def __getattr__(self, name):
        attr = getattr(self._uf, name)
        if name == "at":
            def at(a, indices, b=None):
                args = (_unwrap(a), _unwrap(indices, strict=False)) + (() if b is None else (_unwrap(b),))
                attr(*args)
            return at
        if name == "reduceat" and self._uf is _np.add:
            return _running_sum_reduceat
        if callable(attr):
            return lambda *a, **k: _wrap(attr(*_unwrap(a), **_unwrap(k)))
        return attr


def _running_sum_reduceat(a, indices, axis=0, dtype=None, out=None):
    """``add.reduceat`` as CuPy computes it: a running sum in the array's dtype, differenced at the
    segment starts (so a segment's rounding error is that of the whole running total)."""
    a, indices = _unwrap(a), _unwrap(indices)
    acc = _np.cumsum(a, axis=axis, dtype=dtype)
    acc = _np.concatenate([_np.zeros_like(_np.take(acc, [0], axis=axis)), acc], axis=axis)
    ends = _np.append(indices[1:], a.shape[axis])
    sums = _np.take(acc, ends, axis=axis) - _np.take(acc, indices, axis=axis)
    empty = (indices >= ends).reshape((-1,) + (1,) * (a.ndim - axis - 1))
    result = _np.where(empty, _np.take(a, indices, axis=axis), sums)
    if out is not None:
        _unwrap(out)[...] = result
        return out
    return _wrap(result)


def _strict_function(f):
    def call(*args, **kwargs):
        return _wrap(f(*_unwrap(args), **_unwrap(kwargs)))

    call.__name__ = getattr(f, "__name__", "function")
    call.__doc__ = getattr(f, "__doc__", None)
    return call


def asarray(a, dtype=None, order=None):
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == _np.dtype(dtype) else ndarray(a._a.astype(dtype))
    return ndarray(_np.array(a, dtype=dtype, order=order, copy=True))


def array(a, dtype=None, copy=True, order="K", ndmin=0):
    data = _unwrap(a, strict=False)
    return ndarray(_np.array(data, dtype=dtype, copy=True, order=order, ndmin=ndmin))


asanyarray = asarray


def asnumpy(a, stream=None):
    return a.get() if isinstance(a, ndarray) else _np.asarray(a)


def is_available():
    return True


def get_array_module(*args):
    return types.ModuleType("cupy") if any(isinstance(a, ndarray) for a in args) else _np


class _Pool:
    def free_all_blocks(self):
        pass

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0


_pool, _pinned = _Pool(), _Pool()


def get_default_memory_pool():
    return _pool


def get_default_pinned_memory_pool():
    return _pinned


class _Device:
    def __init__(self, device_id=0):
        self.id = device_id

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


cuda = types.SimpleNamespace(Device=_Device, runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))


class _Namespace(types.ModuleType):
    """``cupy.fft``, ``cupy.linalg``, ``cupy.random``: NumPy's functions under the device rules."""

    def __init__(self, name, source):
        super().__init__(name)
        self._source = source

    def __getattr__(self, name):
        attr = getattr(self._source, name)
        return _strict_function(attr) if callable(attr) and not isinstance(attr, type) else attr


fft = _Namespace("cupy.fft", _np.fft)
linalg = _Namespace("cupy.linalg", _np.linalg)
random = _Namespace("cupy.random", _np.random)

_LOCAL = {"asarray", "array", "asanyarray", "asnumpy", "is_available", "get_array_module", "ndarray", "cuda", "fft",
          "linalg", "random", "get_default_memory_pool", "get_default_pinned_memory_pool"}


def __getattr__(name):
    attr = getattr(_np, name)
    if isinstance(attr, _np.ufunc):
        return _Ufunc(attr)
    if isinstance(attr, type) or not callable(attr):
        return attr  # dtypes (cupy.float32 is numpy.float32), constants
    return _strict_function(attr)
