"""Fused CPU loops for central-slice projection and insertion (Numba), when Numba is installed.

The NumPy path of :mod:`spa.em.projector` forms each point's eight trilinear
corners as whole arrays (indices, weights), then gathers or scatter-adds through
them: several passes over memory per point, which on the CPU cost more than the
arithmetic (3D refinement spent ~45 % of its time there).  These loops do the
same arithmetic point by point without the intermediate arrays (the two loops
spell the eight corners out: sharing them through a helper returning tuples
measured 15–60 % slower): the same coordinate rule as :func:`spa.em.projector.trilinear_corners` (Friedel
reflection for x < 0, FFT-order wrap in y and z, float32 throughout, corners
in the same order), so a projection equals the NumPy path's to float32
rounding, and an insertion adds the same terms (summed in the target's
precision).  Loops are serial, so sums do not depend on scheduling.

``SPA_NUMBA=0`` turns them off (the NumPy path is then used everywhere); on a
GPU the CuPy path of :mod:`spa.em.projector` is used regardless.
"""

from __future__ import annotations

import os

import numpy as np

try:  # an accelerator, not a requirement: without it the NumPy path runs
    import numba

    _HAVE_NUMBA = True
except Exception:  # noqa: BLE001 - any import failure (missing, or a NumPy it does not support)
    _HAVE_NUMBA = False


def available() -> bool:
    """Whether the fused loops run (Numba importable and not turned off by ``SPA_NUMBA=0``)."""
    return _HAVE_NUMBA and os.environ.get("SPA_NUMBA", "1") != "0"


if _HAVE_NUMBA:
    _jit = numba.njit(cache=True, nogil=True)

    @_jit
    def _corners(a, jx_f, jy_f, padded, half):
        """(x0, x1, y0, y1, z0, z1, fx, fy, fz, conj) of one point, as trilinear_corners computes them."""
        one = np.float32(1.0)
        qx = a[0, 0] * jx_f + a[1, 0] * jy_f
        qy = a[0, 1] * jx_f + a[1, 1] * jy_f
        qz = a[0, 2] * jx_f + a[1, 2] * jy_f
        conj = qx < 0
        sign = one - np.float32(2.0) * np.float32(conj)
        qx = abs(qx)
        qy = qy * sign
        qz = qz * sign
        bx = np.floor(qx)
        by = np.floor(qy)
        bz = np.floor(qz)
        fx = qx - bx
        fy = qy - by
        fz = qz - bz
        x0 = min(int(bx), half - 1)
        x1 = min(x0 + 1, half - 1)
        y0 = int(by)
        z0 = int(bz)
        if y0 < 0:
            y0 += padded
        if z0 < 0:
            z0 += padded
        y1 = y0 + 1
        if y1 > padded - 1:
            y1 -= padded
        z1 = z0 + 1
        if z1 > padded - 1:
            z1 -= padded
        return x0, x1, y0, y1, z0, z1, fx, fy, fz, conj

    @_jit
    def _project(flat, rot, jx, jy, padded, out):
        # ``flat`` as interleaved float32 (re, im): real multiply-adds, not complex × complex
        half = padded // 2 + 1
        plane = padded * half
        one = np.float32(1.0)
        for r in range(rot.shape[0]):
            a = rot[r]
            for f in range(jx.shape[0]):
                x0, x1, y0, y1, z0, z1, fx, fy, fz, conj = _corners(a, jx[f], jy[f], padded, half)
                wx0, wy0, wz0 = one - fx, one - fy, one - fz
                re = np.float32(0.0)
                im = np.float32(0.0)
                for zi in range(2):
                    row_z = (z0 if zi == 0 else z1) * plane
                    wz = wz0 if zi == 0 else fz
                    for yi in range(2):
                        row = row_z + (y0 if yi == 0 else y1) * half
                        wzy = wz * (wy0 if yi == 0 else fy)
                        w = wzy * wx0
                        re += flat[2 * (row + x0)] * w
                        im += flat[2 * (row + x0) + 1] * w
                        w = wzy * fx
                        re += flat[2 * (row + x1)] * w
                        im += flat[2 * (row + x1) + 1] * w
                out[r, f] = complex(re, -im) if conj else complex(re, im)

    @_jit
    def _insert(data, weight, rot, jx, jy, values, weights, padded):
        half = padded // 2 + 1
        plane = padded * half
        one = np.float32(1.0)
        for r in range(rot.shape[0]):
            a = rot[r]
            for f in range(jx.shape[0]):
                x0, x1, y0, y1, z0, z1, fx, fy, fz, conj = _corners(a, jx[f], jy[f], padded, half)
                v = values[r, f]
                if conj:
                    v = np.conj(v)
                t = weights[r, f]
                wx0, wy0, wz0 = one - fx, one - fy, one - fz
                for zi in range(2):
                    row_z = (z0 if zi == 0 else z1) * plane
                    wz = wz0 if zi == 0 else fz
                    for yi in range(2):
                        row = row_z + (y0 if yi == 0 else y1) * half
                        wzy = wz * (wy0 if yi == 0 else fy)
                        w = wzy * wx0
                        data[row + x0] += v * w
                        weight[row + x0] += t * w
                        w = wzy * fx
                        data[row + x1] += v * w
                        weight[row + x1] += t * w


def _rotations(rotations, pad_factor: float) -> np.ndarray:
    """Rotation matrices (R, 3, 3) times the padding factor, float32 (as slice_components forms them)."""
    return np.ascontiguousarray(np.asarray(rotations, dtype=np.float32) * np.float32(pad_factor))


def project_slices(flat, rotations, jx, jy, pad_factor: float, padded: int) -> np.ndarray:
    """Central slices (R, F) complex64 of a flat half-grid transform at pad·Aᵀ(jx, jy, 0)."""
    rot = _rotations(rotations, pad_factor)
    out = np.empty((rot.shape[0], jx.shape[0]), np.complex64)
    _project(np.ascontiguousarray(flat).view(np.float32), rot, np.ascontiguousarray(jx, np.float32), np.ascontiguousarray(jy, np.float32),
             int(padded), out)
    return out


def insert_slices(data_flat, weight_flat, rotations, jx, jy, values, weights, pad_factor: float, padded: int) -> None:
    """Add ``values`` (R, F) complex and ``weights`` (R, F) real into the flat grids (transpose of
    :func:`project_slices`), in the grids' own precision."""
    rot = _rotations(rotations, pad_factor)
    # values in the grids' precision: mixed-precision adds in the loop were slower than this cast
    _insert(data_flat, weight_flat, rot, np.ascontiguousarray(jx, np.float32), np.ascontiguousarray(jy, np.float32),
            np.ascontiguousarray(values, dtype=data_flat.dtype),
            np.ascontiguousarray(weights, dtype=weight_flat.dtype), int(padded))
