"""Fourier-slice projection of 3D maps (the forward model of every 3D stage).

By the central-slice theorem the 2D transform of the projection of V in
direction A (RELION's Euler matrix, see :mod:`spa.geometry.euler`) is the
central slice of V̂ through Aᵀ·(kx, ky, 0).  The map is zero-padded ``pad``
times (finer Fourier sampling, less interpolation error), pre-divided by the
trilinear gridding factor (see :mod:`spa.em.gridding`) and transformed once;
each slice is then trilinear interpolation in the half (rfft) grid, using
Friedel symmetry V̂(−k) = conj V̂(k) for kx < 0.

Slices are returned in the layout of :func:`spa.fourier.rfft_centered` for
the original box B, so ``irfft_centered(slice, B)`` is the real-space
projection (sum along z, pixel units) and a slice multiplied by a CTF and
phase-shifted is directly comparable to an image's transform.
"""

from __future__ import annotations

import numpy as np

from spa.backend import array_module, backend_of
from spa.em import fused
from spa.em.gridding import gridding_factor, pad_centered, padded_size
from spa.fourier import freq_2d, rfft_centered


def image_frequencies(box: int, max_radius: float | None = None, xp=np):
    """Active Fourier pixels of a B×B image's rfft grid.

    Returns ``(index, jx, jy)``: flat indices into the (B, B//2+1) grid of the
    pixels with |j| ≤ max_radius (Fourier pixels; default B//2, i.e. Nyquist),
    and their frequencies in Fourier pixels (cycles per box).
    """
    ky, kx = freq_2d(box, xp)
    jx = (kx * box).reshape(-1)
    jy = (ky * box).reshape(-1)
    r_max = box // 2 if max_radius is None else max_radius
    index = xp.nonzero(jx * jx + jy * jy <= r_max * r_max + 1e-6)[0]
    return index, jx[index], jy[index]


def trilinear_setup(q, padded: int):
    """Neighbour indices and weights for points ``q`` (…, 3) = (x, y, z) in padded Fourier pixels.

    Point-major view of :func:`trilinear_corners` (one interpolation rule for both).

    Points with qx < 0 are reflected through the origin (Friedel) so they fall
    in the stored half grid; ``conj`` marks them.  Returns (flat_index (…, 8),
    weight (…, 8), conj (…)).  Grid layout: [z, y, x] with z, y in FFT order
    (mod P) and x in 0 … P//2.
    """
    xp = array_module(q)
    q = xp.asarray(q, dtype=xp.float32)
    idx, w, conj = trilinear_corners(q[..., 0], q[..., 1], q[..., 2], padded)
    return xp.moveaxis(idx, 0, -1), xp.moveaxis(w, 0, -1), conj


def slice_components(rotations, jx, jy, pad_factor: float):
    """(qx, qy, qz), each (R, F) float32: pad·Aᵀ(jx, jy, 0) for rotations A (R, 3, 3).

    Written as outer products of the two used rows of A with (jx, jy), the
    cheapest layout for the interpolation that follows.
    """
    xp = array_module(jx)
    a = xp.asarray(rotations, dtype=xp.float32) * np.float32(pad_factor)
    jx = jx.astype(xp.float32)[None, :]
    jy = jy.astype(xp.float32)[None, :]
    return tuple(a[:, 0, c][:, None] * jx + a[:, 1, c][:, None] * jy for c in range(3))


def trilinear_corners(qx, qy, qz, padded: int):
    """Trilinear neighbours of points (qx, qy, qz) (…) in padded Fourier pixels, corner-major.

    Same rules as :func:`trilinear_setup` (Friedel reflection for qx < 0,
    FFT-order wrap in y and z), returned as (flat_index (8, …), weight (8, …)
    float32, conj (…)) so that gathers and scatter-adds run over contiguous
    blocks.  Every 3D E-step computes this for each (image, orientation) row
    of its fine pass, twice (projection and insertion), so it is written to
    make few passes over memory: results go straight into their slots, and
    each factor is formed once.
    """
    xp = array_module(qx)
    conj = qx < 0
    sign = 1 - 2 * conj.astype(xp.float32)  # (where() and % on whole arrays are ~20× slower than arithmetic)
    qx = xp.abs(qx).astype(xp.float32, copy=False)
    qy = (qy * sign).astype(xp.float32, copy=False)
    qz = (qz * sign).astype(xp.float32, copy=False)
    half = padded // 2 + 1
    itype = xp.int32 if padded * padded * half < 2**31 else xp.int64

    def split(q):
        base = xp.floor(q)
        return base.astype(itype), q - base  # lower neighbour, fraction (float32)

    x0, fx = split(qx)
    y0, fy = split(qy)
    z0, fz = split(qz)
    xp.minimum(x0, half - 1, out=x0)
    x1 = xp.minimum(x0 + 1, half - 1)
    # FFT-order wrap of y and z (|q| ≤ P/2 + 1, so one period at most) by sign-bit masks
    top_bit = 8 * np.dtype(itype).itemsize - 1
    y0 += (y0 >> top_bit) & padded
    z0 += (z0 >> top_bit) & padded
    y1 = y0 + 1
    y1 -= ((padded - 1 - y1) >> top_bit) & padded
    z1 = z0 + 1
    z1 -= ((padded - 1 - z1) >> top_bit) & padded
    plane = padded * half
    rows_z = (z0 * plane, z1 * plane)
    rows_y = (y0 * half, y1 * half)
    wx = (1 - fx, fx)
    wy = (1 - fy, fy)
    wz = (1 - fz, fz)
    shape = (8,) + qx.shape
    idx = xp.empty(shape, itype)
    w = xp.empty(shape, xp.float32)
    c = 0
    for a in range(2):
        for b in range(2):
            row = rows_z[a] + rows_y[b]
            wzy = wz[a] * wy[b]
            for xi, wxi in ((x0, wx[0]), (x1, wx[1])):
                xp.add(row, xi, out=idx[c])
                xp.multiply(wzy, wxi, out=w[c])
                c += 1
    return idx, w, conj


#: points (rows × pixels) interpolated per block: the corner arrays of a block (8 × points, int32 and
#: float32: 16 MB each) stay under glibc's mmap threshold, so they are reused from the heap instead of
#: being page-faulted in for every call (which cost more than the interpolation on the test machine)
BLOCK_POINTS = 1 << 19


def _row_blocks(n_rows: int, n_pixels: int):
    step = max(1, BLOCK_POINTS // max(n_pixels, 1))
    return [slice(r0, min(n_rows, r0 + step)) for r0 in range(0, n_rows, step)]


def cuda_for(*arrays):
    """:mod:`spa.em.cuda_kernels` when every array is a CuPy array and the kernels run there, else None
    (NumPy arrays, the CuPy emulator, ``SPA_CUDA_KERNELS=0``: the array paths are used)."""
    if any(array_module(a) is np for a in arrays):
        return None
    from spa.em import cuda_kernels  # noqa: PLC0415 - only where the arrays are on a GPU

    return cuda_kernels if cuda_kernels.available() else None


def gather_slices(flat, rotations, jx, jy, pad_factor: float, padded: int):
    """Interpolated values (R, F) complex64 of a half-grid transform ``flat`` at pad·Aᵀ(jx, jy, 0).

    NumPy: the fused loops of :mod:`spa.em.fused` (or whole-array passes without Numba); CuPy with
    CUDA: one kernel launch (:mod:`spa.em.cuda_kernels`); otherwise CuPy's whole-array passes."""
    xp = array_module(flat)
    if xp is np and fused.available():
        return fused.project_slices(flat, rotations, jx, jy, pad_factor, padded)
    ck = cuda_for(flat)
    if ck is not None:
        return ck.project3d(flat, 0, rotations, jx, jy, pad_factor, padded)
    rotations = xp.asarray(rotations)
    out = xp.empty((rotations.shape[0], jx.shape[0]), xp.complex64)
    for rows in _row_blocks(rotations.shape[0], jx.shape[0]):
        idx, w, conj = trilinear_corners(*slice_components(rotations[rows], jx, jy, pad_factor), padded)
        vals = flat[idx[0]] * w[0]
        for c in range(1, 8):
            vals += flat[idx[c]] * w[c]
        out[rows] = xp.where(conj, vals.conj(), vals)
    return out


def scatter_slices(be, data_flat, weight_flat, rotations, jx, jy, values, weights, pad_factor: float, padded: int):
    """Transpose of :func:`gather_slices`: add ``values`` (R, F) and ``weights`` (R, F) into the flat grids.

    The corners are computed block by block straight into point-major arrays,
    the layout :meth:`spa.backend.Backend.add_interpolated` reads.
    """
    xp = be.xp
    if xp is np and fused.available():
        fused.insert_slices(data_flat, weight_flat, rotations, jx, jy, values, weights, pad_factor, padded)
        return
    ck = cuda_for(data_flat, weight_flat)
    if ck is not None and ck.grids_supported(data_flat, weight_flat):  # deterministic fixed-point sums
        ck.insert3d(data_flat, weight_flat, 0, rotations, jx, jy, values, weights, pad_factor, padded)
        return
    rotations = xp.asarray(rotations)
    n_rows, n_pixels = values.shape
    idx = w = None
    values = xp.asarray(values).copy()
    for rows in _row_blocks(n_rows, n_pixels):
        i_b, w_b, conj = trilinear_corners(*slice_components(rotations[rows], jx, jy, pad_factor), padded)
        if idx is None:
            idx = xp.empty((n_rows, n_pixels, 8), i_b.dtype)
            w = xp.empty((n_rows, n_pixels, 8), xp.float32)
        idx[rows] = xp.moveaxis(i_b, 0, -1)
        w[rows] = xp.moveaxis(w_b, 0, -1)
        values[rows] = xp.where(conj, values[rows].conj(), values[rows])
    if idx is None:
        return
    # no dtype conversion here: the sums accumulate in the targets' precision
    be.add_interpolated([data_flat, weight_flat], [values, weights], idx, w, corner_axis=-1)


def slice_coordinates(rotations, jx, jy, pad_factor: float):
    """Padded-grid coordinates (R, F, 3) = pad·Aᵀ(jx, jy, 0) of image pixels for rotations A (R,3,3)."""
    xp = array_module(jx)
    a = xp.asarray(rotations, dtype=xp.float32)
    j = xp.stack([jx, jy], axis=-1).astype(xp.float32)  # (F, 2)
    # row vector form: (Aᵀ j)ᵀ = jᵀ A, only rows 0, 1 of A matter since jz = 0
    return pad_factor * xp.einsum("fi,rij->rfj", j, a[:, :2, :])


class Projector:
    """Padded Fourier transform of a map, ready to cut central slices.

    Parameters
    ----------
    volume : (B, B, B) float array, indexed [z, y, x], centre at B//2.
    pad : padding factor (RELION's default 2).
    max_radius : largest image frequency (Fourier pixels of the B box) that
        slices are computed for; default B//2 (Nyquist).
    """

    def __init__(self, volume, pad: float = 2.0, max_radius: float | None = None):
        xp = array_module(volume)
        self.xp = xp
        self.box = int(volume.shape[-1])
        self.padded = padded_size(self.box, pad)
        self.pad = self.padded / self.box
        vol = xp.asarray(volume, dtype=xp.float32) / gridding_factor(self.box, self.padded, 3, xp)
        self.fourier = rfft_centered(pad_centered(vol, self.padded), ndim=3).astype(xp.complex64)
        self._flat = self.fourier.reshape(-1)
        self.max_radius = self.box // 2 if max_radius is None else max_radius
        self.index, self.jx, self.jy = image_frequencies(self.box, self.max_radius, xp)

    def project_active(self, rotations, index=None, jx=None, jy=None):
        """Slices at the active pixels only: complex64 (R, F).

        ``index, jx, jy`` select another pixel set (e.g. a smaller resolution
        window, see :func:`image_frequencies`); default: all pixels ≤ max_radius.
        """
        if jx is None:
            jx, jy = self.jx, self.jy
        return gather_slices(self._flat, rotations, jx, jy, self.pad, self.padded)

    def project(self, rotations):
        """Central slices complex64 (R, B, B//2+1) in :func:`spa.fourier.rfft_centered` layout."""
        xp = self.xp
        rotations = xp.asarray(rotations)
        n = rotations.shape[0]
        out = xp.zeros((n, self.box * (self.box // 2 + 1)), dtype=xp.complex64)
        out[:, self.index] = self.project_active(rotations)
        return out.reshape(n, self.box, self.box // 2 + 1)

    def project_images(self, rotations, batch: int = 512):
        """Real-space projections float32 (R, B, B) (sum along z, in map units × pixels)."""
        xp = self.xp
        be = backend_of(self.fourier)
        rotations = xp.asarray(rotations)
        out = []
        for s in range(0, rotations.shape[0], batch):
            f = self.project(rotations[s : s + batch])
            img = be.irfftn(f, s=(self.box, self.box), axes=(-2, -1))
            out.append(xp.fft.fftshift(img, axes=(-2, -1)).astype(xp.float32))
        return xp.concatenate(out) if out else xp.zeros((0, self.box, self.box), xp.float32)
