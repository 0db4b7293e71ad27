"""The CUDA kernels of :mod:`spa.em.cuda_kernels` built for the CPU with g++, for tests without a GPU.

A few lines stand in for CUDA (``__global__``, one thread, serial ``atomicAdd``), so each kernel's
grid-stride loop runs every point in order: the index arithmetic, the interpolation rule and the
fixed-point insertion are the very source the GPU compiles.  Launches check their arguments against
the kernel's C signature (CuPy would pass a wrongly typed pointer or scalar silently).

Use as a pytest plugin (``-p tests.cuda_shim``) under the CuPy emulator (``tests/fakegpu``): the
kernels then run on the emulator's arrays, so the GPU tests and the E-step run the kernel path here.
Or call :func:`install` with a ``monkeypatch`` to run the launchers on NumPy arrays in-process.
"""

from __future__ import annotations

import ctypes
import hashlib
import re
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

PRELUDE = r"""
#include <math.h>
#include <string.h>
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
static inline void __syncthreads() {}
struct ShimDim { unsigned int x; };
static ShimDim threadIdx = {0}, blockIdx = {0}, blockDim = {1}, gridDim = {1};
static inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v)
{ unsigned long long old = *a; *a = old + v; return old; }
static inline long long __double2ll_rn(double x) { return llrint(x); }
static inline unsigned int atomicAdd(unsigned int* a, unsigned int v) { unsigned int old = *a; *a = old + v; return old; }
static inline int atomicAdd(int* a, int v) { int old = *a; *a = old + v; return old; }
static inline unsigned int __float_as_uint(float x) { unsigned int u; memcpy(&u, &x, 4); return u; }
"""

_SCALARS = {"int": (ctypes.c_int, np.int32), "long long": (ctypes.c_longlong, np.int64),
            "float": (ctypes.c_float, np.float32), "double": (ctypes.c_double, np.float64)}
_POINTEES = {"float": (np.float32, np.complex64), "double": (np.float64, np.complex128), "int": (np.int32,),
             "long long": (np.int64,), "unsigned long long": (np.int64, np.uint64)}


def compiler() -> str | None:
    return shutil.which("g++")


@lru_cache(maxsize=None)
def _library():
    from spa.em.cuda_kernels import SOURCE

    code = PRELUDE + SOURCE
    key = hashlib.sha1(code.encode()).hexdigest()[:16]
    lib = Path(tempfile.gettempdir()) / f"spa_cuda_shim_{key}.so"
    if not lib.exists():
        tmp = lib.with_suffix(f".{np.random.default_rng().integers(1 << 30)}.tmp")
        # no contraction of a*b+c into an FMA: the GPU build says --fmad=false
        subprocess.run([compiler(), "-O2", "-ffp-contract=off", "-fPIC", "-shared", "-x", "c++", "-", "-o",
                        str(tmp)], input=code.encode(), check=True, capture_output=True)
        tmp.replace(lib)
    return ctypes.CDLL(str(lib)), code


def _signature(code: str, name: str):
    m = re.search(r'extern "C" __global__ void ' + name + r"\((.*?)\)\s*\{", code, re.S)
    params = []
    for p in m.group(1).split(","):
        p = " ".join(p.replace("__restrict__", "").replace("const", "").split())
        pointer = "*" in p
        base = p.split("*")[0].strip() if pointer else p.rsplit(" ", 1)[0]
        params.append((base, pointer))
    return params


class ShimFunction:
    def __init__(self, name: str):
        lib, code = _library()
        self.name, self.fn, self.params = name, getattr(lib, name), _signature(code, name)
        self.fn.argtypes = [ctypes.c_void_p if ptr else _SCALARS[base][0] for base, ptr in self.params]
        self.fn.restype = None

    def __call__(self, grid, block, args, shared_mem=0):
        if len(args) != len(self.params):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.params)} parameters")
        cargs = []
        for i, (a, (base, ptr)) in enumerate(zip(args, self.params)):
            if ptr:
                buf = getattr(a, "_a", a)  # an emulated device array holds its data in ``_a``
                if not isinstance(buf, np.ndarray) or buf.dtype not in [np.dtype(t) for t in _POINTEES[base]]:
                    raise TypeError(f"{self.name} argument {i}: {base}* given {type(a).__name__} "
                                    f"{getattr(a, 'dtype', '')}")
                if not buf.flags.c_contiguous:
                    raise ValueError(f"{self.name} argument {i}: not contiguous")
                cargs.append(buf.ctypes.data)
            else:
                if type(a) is not _SCALARS[base][1]:
                    raise TypeError(f"{self.name} argument {i}: {base} given {type(a).__name__}")
                cargs.append(a.item())
        self.fn(*cargs)


class ShimModule:
    def get_function(self, name: str) -> ShimFunction:
        return ShimFunction(name)


def install(monkeypatch) -> None:
    """Route :mod:`spa.em.cuda_kernels` launches to the CPU build (for this test)."""
    from spa.em import cuda_kernels

    monkeypatch.setattr(cuda_kernels, "_module", lambda xp: ShimModule())
    monkeypatch.setattr(cuda_kernels, "_runtime_ok", lambda: True)


def pytest_configure(config):
    """As a plugin: the CPU build for the whole session (run it under the CuPy emulator)."""
    from spa.em import cuda_kernels

    cuda_kernels._module = lambda xp: ShimModule()
    cuda_kernels._runtime_ok = lambda: True
