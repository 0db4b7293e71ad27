"""Fused CPU loops for central-slice projection and insertion (Numba), when Numba is installed.

The NumPy path of :mod:`spa.em.projector` forms each point's eight trilinear
corners as whole arrays (indices, weights), then gathers or scatter-adds through
them: several passes over memory per point, which on the CPU cost more than the
arithmetic (3D refinement spent ~45 % of its time there).  These loops do the
same arithmetic point by point without the intermediate arrays: the same
coordinate rule as :func:`spa.em.projector.trilinear_corners` (Friedel
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
    def _corners(a, jx_f, jy_f, padded, half, plane):
        """The eight (flat index, weight) corners of one point, and its Friedel flag, in the order and
        float32 arithmetic of trilinear_corners (z outer, then y, then x; w = (w_z·w_y)·w_x)."""
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
        r00, r01 = z0 * plane + y0 * half, z0 * plane + y1 * half
        r10, r11 = z1 * plane + y0 * half, z1 * plane + y1 * half
        wx0, wy0, wz0 = one - fx, one - fy, one - fz
        w00, w01, w10, w11 = wz0 * wy0, wz0 * fy, fz * wy0, fz * fy
        index = (r00 + x0, r00 + x1, r01 + x0, r01 + x1, r10 + x0, r10 + x1, r11 + x0, r11 + x1)
        weight = (w00 * wx0, w00 * fx, w01 * wx0, w01 * fx, w10 * wx0, w10 * fx, w11 * wx0, w11 * fx)
        return index, weight, conj

    @_jit
    def _project(flat, rot, jx, jy, padded, out):
        half = padded // 2 + 1
        plane = padded * half
        for r in range(rot.shape[0]):
            for f in range(jx.shape[0]):
                index, weight, conj = _corners(rot[r], jx[f], jy[f], padded, half, plane)
                acc = flat[index[0]] * weight[0]
                for c in range(1, 8):
                    acc += flat[index[c]] * weight[c]
                out[r, f] = np.conj(acc) if conj else acc

    @_jit
    def _insert(data, weight_grid, rot, jx, jy, values, weights, padded):
        half = padded // 2 + 1
        plane = padded * half
        for r in range(rot.shape[0]):
            for f in range(jx.shape[0]):
                index, weight, conj = _corners(rot[r], jx[f], jy[f], padded, half, plane)
                v = np.conj(values[r, f]) if conj else values[r, f]
                t = weights[r, f]
                for c in range(8):
                    data[index[c]] += v * weight[c]
                    weight_grid[index[c]] += t * weight[c]


def _rotations(rotations, pad_factor: float) -> np.ndarray:
    """Rotation matrices (R, 3, 3) times the padding factor, float32 (as slice_components forms them)."""
    return np.ascontiguousarray(np.asarray(rotations, dtype=np.float32) * np.float32(pad_factor))


def project_slices(flat, rotations, jx, jy, pad_factor: float, padded: int) -> np.ndarray:
    """Central slices (R, F) complex64 of a flat half-grid transform at pad·Aᵀ(jx, jy, 0)."""
    rot = _rotations(rotations, pad_factor)
    out = np.empty((rot.shape[0], jx.shape[0]), np.complex64)
    _project(flat, rot, np.ascontiguousarray(jx, np.float32), np.ascontiguousarray(jy, np.float32), int(padded), out)
    return out


def insert_slices(data_flat, weight_flat, rotations, jx, jy, values, weights, pad_factor: float, padded: int) -> None:
    """Add ``values`` (R, F) complex and ``weights`` (R, F) real into the flat grids (transpose of
    :func:`project_slices`), in the grids' own precision."""
    rot = _rotations(rotations, pad_factor)
    _insert(data_flat, weight_flat, rot, np.ascontiguousarray(jx, np.float32), np.ascontiguousarray(jy, np.float32),
            np.ascontiguousarray(values), np.ascontiguousarray(weights), int(padded))
