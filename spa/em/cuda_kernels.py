"""CUDA kernels (CuPy ``RawModule``) for the slice interpolation of every E-step — the loops of
:mod:`spa.em.fused` on the GPU — and for the E-step's bookkeeping between its GEMMs.  The C source is
:data:`spa.em.cuda_source.SOURCE`; this module compiles it once per process and launches it.

The interpolation, one thread per (row, pixel) point, in grid-stride loops:

* ``project3d`` / ``insert3d``: the central slice pad·Aᵀ(jx, jy, 0) of a padded 3D half grid and its
  transpose (trilinear, the rule of :func:`spa.em.projector.trilinear_corners`);
* ``project2d`` / ``insert2d``: a class image rotated in-plane by ψ, pad·Aᵀ(jx, jy) with
  A = [[c, s], [−s, c]], and its transpose (bilinear, the rule of :func:`spa.em.inplane.bilinear_setup`).

Both rules: Friedel reflection for x < 0 (the value is conjugated), FFT-order wrap in y (and z), x
clamped to the last stored column, corners and their weights formed in the same order and in float32
as the NumPy path forms them.  The source is compiled with ``--fmad=false``, so no product is fused
into an add and a projection is the NumPy path's to float32 rounding (bit-identical where the inputs
are: the rotations and the cos/sin of ψ are computed on the host by NumPy for that reason).  Every row
carries its class, so all classes of a batch are one launch (2D classification inserts K = 50 classes
per chunk: one launch instead of 50 sorts).

**Deterministic insertion.**  Float atomic adds land in a different order on every run, so the
rounding, and with it the map, would change from run to run (the same-seed tests failed with them).
Each addend is instead rounded to a 64-bit integer in fixed point and added with integer atomics
(exact and associative, so any order gives the same bits), into a scratch accumulator; one finishing
pass converts the sums and adds them to the caller's grids.  The scale is a power of two chosen on the
device from the largest |value| (and |weight|) of the call and a bound on the addends one voxel can
receive (:func:`fixed_point_bits`), so no sum can overflow; an addend is resolved to 2⁻ᵇ of the
largest (b ≥ 30 for any realistic call, finer than the float32 values themselves).

The E-step's other kernels: :func:`add_priors` (pass 1's priors and column maxima in one pass over the
GEMM's output), :func:`topk_rows` (an exact top-k per row, for the significance selection),
:func:`row_exp_sums`, and :func:`sum_rows_by_index` / :func:`scatter_add` (sums over sorted segments in
a fixed order: deterministic as well).

Imported only when the arrays are CuPy arrays; CuPy comes through :mod:`spa.backend`.  ``SPA_CUDA_KERNELS=0``
turns the kernels off (the CuPy array path of the projector is then used, as under the CuPy emulator
``tests/fakegpu``, which has no ``RawModule``).
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from spa.backend import array_module, backend_of, cupy_available, get_backend
from spa.em.cuda_source import SOURCE

#: no fused multiply-adds: the NumPy path rounds every product before adding it
OPTIONS = ("--fmad=false",)
THREADS = 256
MAX_BLOCKS = 1 << 16  # grid-stride loops beyond this (the H200 holds ~2 000 blocks of 256 at once)
#: contributions one row (one slice, one rotated image) can make to one voxel, an upper bound: the
#: row's points lie on a lattice of spacing pad ≥ 1, so at most 13 of them fall in the 2×2(×2) cell
#: around a voxel; ×2 for Friedel mates, ×4 for wraps in y and z, ×2 for the clamp of x (checked by
#: a test against the NumPy corners)
ROW_HITS_BOUND = 256


def available() -> bool:
    """Whether the kernels run: CuPy with a usable CUDA device and run-time compilation (not the CuPy
    emulator), and not turned off by ``SPA_CUDA_KERNELS=0``."""
    return os.environ.get("SPA_CUDA_KERNELS", "1") != "0" and _runtime_ok()


@lru_cache(maxsize=None)
def _runtime_ok() -> bool:
    if not cupy_available():
        return False
    return hasattr(get_backend("cupy").xp, "RawModule")


def active(*arrays) -> bool:
    """True when every array is a CuPy array and the kernels are :func:`available`."""
    return all(array_module(a) is not np for a in arrays) and available()


@lru_cache(maxsize=None)
def _compiled(xp):
    return xp.RawModule(code=SOURCE, options=OPTIONS)


def _module(xp):
    """The compiled module (once per process; a test can put a CPU build of ``SOURCE`` here)."""
    return _compiled(xp)


def _launch(xp, name: str, total: int, args, blocks: int | None = None) -> None:
    """Launch ``name`` over ``total`` points (THREADS per block, grid-stride), or on ``blocks`` blocks."""
    if total <= 0:
        return
    if blocks is None:
        blocks = (total + THREADS - 1) // THREADS
    _module(xp).get_function(name)((int(min(blocks, MAX_BLOCKS)),), (THREADS,), tuple(args))


def fixed_point_bits(n_addends: int, n_rows: int) -> int:
    """Bits b of the fixed-point scale: each addend becomes an integer < 2^b, and no voxel receives more
    than min(n_addends, ROW_HITS_BOUND·n_rows) ≤ 2^(62−b) of them, so no sum leaves int64."""
    bound = max(1, min(int(n_addends), ROW_HITS_BOUND * max(int(n_rows), 1)))
    return max(1, 62 - (bound - 1).bit_length())


def grids_supported(data, weight) -> bool:
    """Whether :func:`insert3d` / :func:`insert2d` can add into these grids (in place)."""
    pairs = ((np.complex128, np.float64), (np.complex64, np.float32))
    return ((np.dtype(data.dtype), np.dtype(weight.dtype)) in pairs and data.size == weight.size
            and bool(data.flags.c_contiguous) and bool(weight.flags.c_contiguous))


def _largest(xp, values, weights):
    """(2,) float32 on the device: max |re, im| of ``values`` and max |weights| (no host sync)."""
    v = values.view(xp.float32)
    return xp.stack([xp.maximum(v.max(), -v.min()), xp.maximum(weights.max(), -weights.min())]).astype(xp.float32)


def _c64(xp, a):
    return xp.ascontiguousarray(xp.asarray(a), dtype=xp.complex64)


def _f32(xp, a):
    return xp.ascontiguousarray(xp.asarray(a), dtype=xp.float32)


def _classes(xp, classes, n_rows: int):
    """Per-row class indices (int32 on the device); an int: every row that class."""
    if np.isscalar(classes) or getattr(classes, "ndim", 1) == 0:
        return xp.full(n_rows, int(classes), xp.int32)
    return xp.ascontiguousarray(xp.asarray(classes), dtype=xp.int32)


def _grid_size(padded: int, ndim: int) -> int:
    return padded ** (ndim - 1) * (padded // 2 + 1)


def project3d(grids, classes, rotations, jx, jy, pad: float, padded: int):
    """Central slices (R, F) complex64: row r of class ``classes[r]`` (an int: all rows) of ``grids``
    (K flat padded half grids, complex64) at pad·Aᵀ(jx, jy, 0), A = ``rotations[r]`` (R, 3, 3)."""
    xp = array_module(grids)
    rot = _f32(xp, xp.asarray(rotations, dtype=xp.float32) * np.float32(pad))
    n_rows, n_pix = int(rot.shape[0]), int(jx.shape[0])
    out = xp.empty((n_rows, n_pix), xp.complex64)
    _launch(xp, "project3d", n_rows * n_pix,
            (_c64(xp, grids), np.int64(_grid_size(padded, 3)), _classes(xp, classes, n_rows), rot,
             _f32(xp, jx), _f32(xp, jy), np.int32(n_rows), np.int32(n_pix), np.int32(padded), out))
    return out


def _insert(xp, data, weight, launches, values, weights, corners: int, n_rows: int, n_pix: int):
    """Fixed-point accumulation of ``launches`` [(kernel name, argument tuple before ``largest``)] and
    the finishing pass into ``data`` (complex) and ``weight`` (real), flat grids of equal size."""
    n = int(weight.size)
    if n_rows * n_pix == 0 or not launches:
        return
    if not grids_supported(data, weight):
        raise TypeError(f"insertion grids must be contiguous, of one size, complex128 + float64 or complex64 + "
                        f"float32; got {data.dtype} {data.shape} + {weight.dtype} {weight.shape}")
    finish = "finish_f64" if data.dtype == np.complex128 else "finish_f32"
    largest = _largest(xp, values, weights)
    bits = fixed_point_bits(len(launches) * n_rows * n_pix * corners, len(launches) * n_rows)
    acc = xp.zeros(3 * n, xp.int64)
    for name, args in launches:
        _launch(xp, name, n_rows * n_pix, args + (np.int64(n), largest, np.int32(bits), acc))
    _launch(xp, finish, n, (acc, np.int64(n), largest, np.int32(bits), data.reshape(-1), weight.reshape(-1)))


def insert3d(data, weight, classes, rotation_sets, jx, jy, values, weights, pad: float, padded: int) -> None:
    """Add ``values`` (R, F) complex and ``weights`` (R, F) into ``data`` / ``weight`` (K padded half
    grids, flat or not; complex128 + float64 or complex64 + float32), row r into class ``classes[r]``
    at pad·Aᵀ(jx, jy, 0) for A = each ``rotation_sets[i][r]`` (one set per symmetry copy, or one
    (R, 3, 3) array): the transpose of :func:`project3d`, deterministic (see the module docstring)."""
    xp = array_module(data)
    if getattr(rotation_sets, "ndim", 0) == 3:
        rotation_sets = [rotation_sets]
    vals, wts = _c64(xp, values), _f32(xp, weights)
    n_rows, n_pix = int(vals.shape[0]), int(jx.shape[0])
    common = (_classes(xp, classes, n_rows),)
    pix = (_f32(xp, jx), _f32(xp, jy), np.int32(n_rows), np.int32(n_pix), np.int32(padded),
           np.int64(_grid_size(padded, 3)))
    launches = [("insert3d", (vals, wts) + common + (_f32(xp, xp.asarray(r, dtype=xp.float32) * np.float32(pad)),)
                 + pix) for r in rotation_sets]
    _insert(xp, data, weight, launches, vals, wts, 8, n_rows, n_pix)


def _cos_sin(xp, angles_deg):
    """cos ψ, sin ψ (float32, on the device) computed on the host by NumPy exactly as
    :class:`spa.em.inplane.AngleTable` does (angles keyed to 10⁻⁶ degree), so the NumPy and CUDA paths
    interpolate at the same coordinates."""
    a = np.asarray(backend_of(angles_deg).to_numpy(angles_deg), np.float64).reshape(-1)
    psi = np.deg2rad(np.rint(a * 1e6) / 1e6).astype(np.float32)
    return xp.asarray(np.cos(psi)), xp.asarray(np.sin(psi))


def project2d(grids, classes, angles_deg, jx, jy, pad: float, padded: int):
    """In-plane rotated classes (R, F) complex64: row r is class ``classes[r]`` (an int: all rows) of
    ``grids`` (K padded half grids (P, P//2+1), complex64) at pad·Aᵀ(jx, jy), A = A(ψ = angles_deg[r])."""
    xp = array_module(grids)
    cs, sn = _cos_sin(xp, angles_deg)
    n_rows, n_pix = int(cs.shape[0]), int(jx.shape[0])
    out = xp.empty((n_rows, n_pix), xp.complex64)
    _launch(xp, "project2d", n_rows * n_pix,
            (_c64(xp, grids), np.int64(_grid_size(padded, 2)), _classes(xp, classes, n_rows), cs, sn,
             _f32(xp, jx), _f32(xp, jy), np.int32(n_rows), np.int32(n_pix), np.float32(pad), np.int32(padded), out))
    return out


def insert2d(data, weight, classes, angles_deg, jx, jy, values, weights, pad: float, padded: int) -> None:
    """Transpose of :func:`project2d`: add ``values`` (R, F) and ``weights`` (R, F) into class
    ``classes[r]`` of ``data`` / ``weight`` (K padded half grids), deterministically."""
    xp = array_module(data)
    cs, sn = _cos_sin(xp, angles_deg)
    vals, wts = _c64(xp, values), _f32(xp, weights)
    n_rows, n_pix = int(vals.shape[0]), int(jx.shape[0])
    args = (vals, wts, _classes(xp, classes, n_rows), cs, sn, _f32(xp, jx), _f32(xp, jy), np.int32(n_rows),
            np.int32(n_pix), np.float32(pad), np.int32(padded), np.int64(_grid_size(padded, 2)))
    _insert(xp, data, weight, [("insert2d", args)], vals, wts, 4, n_rows, n_pix)


# -- the E-step's pass 1 -----------------------------------------------------------------------------
def add_priors(logp, row_term, lp_trans):
    """``logp`` (n, S, W) float32 += ``row_term`` (n, W)[:, None, :] + ``lp_trans`` (n, S)[:, :, None], in
    place, in one pass that also returns the maxima over S, (n, W) float32 (what
    :func:`spa.em.significance.significant` starts from)."""
    xp = array_module(logp)
    if not logp.flags.c_contiguous:
        raise ValueError("add_priors: logp must be contiguous (it is written in place)")
    n, n_shifts, width = (int(d) for d in logp.shape)
    col_max = xp.empty((n, width), xp.float32)
    _launch(xp, "add_priors", n * width, (logp, _f32(xp, row_term), _f32(xp, lp_trans), np.int32(n),
                                          np.int32(n_shifts), np.int32(width), col_max))
    return col_max


def row_exp_sums(x, rows, shift):
    """Σ_c exp(x[rows[j], c] − shift[j]) (float64, (J,)) for rows of ``x`` (n, W) float32, read in place
    (no copy of the rows, no exp pass written back)."""
    xp = array_module(x)
    n_rows = int(rows.shape[0])
    out = xp.empty(n_rows, xp.float64)
    _launch(xp, "row_exp_sums", n_rows * int(x.shape[1]),
            (x, np.int64(x.shape[1]), xp.ascontiguousarray(rows, dtype=xp.int64), _f32(xp, shift),
             np.int32(n_rows), out), blocks=n_rows)
    return out


TOPK_MAX = 256  # as in SOURCE


def topk_rows(x, k: int):
    """(index (n, k) int64, value (n, k) float32): the k largest entries of each row of ``x`` (n, W) float32,
    exactly, best first, equal values by column (CuPy's partition sorts whole rows instead)."""
    xp = array_module(x)
    n, width = (int(d) for d in x.shape)
    if not 0 < k <= min(TOPK_MAX, width) or width >= 2**32:
        raise ValueError(f"topk_rows: k = {k} must be in 1 … min({TOPK_MAX}, {width})")
    idx, val = xp.empty((n, k), xp.int64), xp.empty((n, k), xp.float32)
    _launch(xp, "topk_rows", n * THREADS, (_f32(xp, x), np.int32(n), np.int32(width), np.int32(k), idx, val),
            blocks=n)
    return idx, val


# -- sums by index (the E-step's M-step sums) -----------------------------------------------------------
def _segments(xp, index):
    """(order, starts (T+1,), targets (T,)) of a stable sort of ``index``: the entries of each distinct
    index in their original order (one host synchronisation, for T)."""
    order = xp.argsort(index, kind="stable")
    idx = index[order]
    cut = xp.nonzero(idx[1:] != idx[:-1])[0].astype(xp.int64) + 1
    starts = xp.concatenate([xp.zeros(1, xp.int64), cut, xp.full(1, idx.shape[0], xp.int64)])
    return order, starts, xp.ascontiguousarray(idx[starts[:-1]], dtype=xp.int64)


def sum_rows_by_index(values, index, n_rows: int, rows=None, weights=None):
    """:meth:`spa.backend.Backend.sum_rows_by_index` for float32 ``values`` (Q, W): row j of the (n_rows, W)
    result is Σ over entries e with ``index[e]`` = j of ``weights[e]·values[rows[e]]``, in one launch
    (instead of a gather, a float64 copy and a running-sum ``reduceat`` of all entries' rows)."""
    xp = array_module(values)
    vals = xp.ascontiguousarray(values, dtype=xp.float32).reshape(values.shape[0], -1)
    out = xp.zeros((int(n_rows), vals.shape[1]), xp.float32)
    if int(index.shape[0]) == 0:
        return out.reshape((int(n_rows),) + values.shape[1:])
    order, starts, targets = _segments(xp, index)
    src = order if rows is None else xp.asarray(rows)[order]
    w = xp.zeros(1, xp.float32) if weights is None else _f32(xp, xp.asarray(weights)[order])
    n_seg = int(targets.shape[0])
    _launch(xp, "segment_rows", n_seg * int(vals.shape[1]),
            (vals, np.int64(vals.shape[1]), xp.ascontiguousarray(src, dtype=xp.int64), w,
             np.int32(weights is not None), starts, targets, np.int32(n_seg), out))
    return out.reshape((int(n_rows),) + values.shape[1:])


def scatter_add(target, index, values) -> None:
    """``target[index] += values`` for float64 1D arrays, repeated indices summed in a fixed order."""
    xp = array_module(target)
    if int(index.shape[0]) == 0:
        return
    order, starts, targets = _segments(xp, index)
    n_seg = int(targets.shape[0])
    _launch(xp, "segment_add", n_seg, (xp.ascontiguousarray(values, dtype=xp.float64),
                                       xp.ascontiguousarray(order, dtype=xp.int64), starts, targets,
                                       np.int32(n_seg), target))
