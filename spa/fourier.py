"""Fourier-space helpers shared by every stage.

Layout: real-to-complex transforms of *centred* boxes.  A box of size B has its
real-space origin at pixel B//2 (also for odd B); :func:`rfft_centered` applies
``ifftshift`` first so that origin sits at index 0 and the transform of a
centred, symmetric object is real.  Frequencies are index / (B · pixel size)
in 1/Å; shell s runs from 0 (DC) to B//2 (Nyquist) and stands for resolution
B · pixel / s Å.  Arrays are indexed [..., y, x] ([..., z, y, x] in 3D).

Every function takes its array module from the data (NumPy or CuPy).
"""

from __future__ import annotations

import numpy as np

from spa.backend import array_module, backend_of


# -- frequency grids ------------------------------------------------------------
def freq_2d(box: int, xp=np, rfft: bool = True):
    """(ky, kx) in cycles/pixel for a (B, B//2+1) rfft grid (or (B, B) full grid)."""
    ky = xp.fft.fftfreq(box).astype(xp.float32)
    kx = (xp.fft.rfftfreq(box) if rfft else xp.fft.fftfreq(box)).astype(xp.float32)
    return xp.broadcast_to(ky[:, None], (box, kx.size)), xp.broadcast_to(kx[None, :], (box, kx.size))


def freq_3d(box: int, xp=np, rfft: bool = True):
    """(kz, ky, kx) in cycles/voxel for a (B, B, B//2+1) rfft grid."""
    k = xp.fft.fftfreq(box).astype(xp.float32)
    kx = (xp.fft.rfftfreq(box) if rfft else k).astype(xp.float32)
    shape = (box, box, kx.size)
    return (
        xp.broadcast_to(k[:, None, None], shape),
        xp.broadcast_to(k[None, :, None], shape),
        xp.broadcast_to(kx[None, None, :], shape),
    )


def radius_2d(box: int, xp=np, rfft: bool = True):
    """|k| in Fourier pixels (0 … ~B/√2) on the 2D grid."""
    ky, kx = freq_2d(box, xp, rfft)
    return xp.sqrt(ky * ky + kx * kx) * box


def radius_3d(box: int, xp=np, rfft: bool = True):
    kz, ky, kx = freq_3d(box, xp, rfft)
    return xp.sqrt(kz * kz + ky * ky + kx * kx) * box


def shells_2d(box: int, xp=np, rfft: bool = True):
    """Integer shell index round(|k|·B) on the 2D grid."""
    return xp.rint(radius_2d(box, xp, rfft)).astype(xp.int32)


def shells_3d(box: int, xp=np, rfft: bool = True):
    return xp.rint(radius_3d(box, xp, rfft)).astype(xp.int32)


def rfft_weights(box: int, xp=np, ndim: int = 2):
    """Multiplicity of each rfft coefficient in the full transform (1 or 2).

    Sums over an rfft half-grid weighted by this equal sums over the full grid
    (columns 0 and, for even B, B/2 appear once; the others twice).
    """
    w = xp.full(box // 2 + 1, 2.0, dtype=xp.float32)
    w[0] = 1.0
    if box % 2 == 0:
        w[-1] = 1.0
    return w


def shell_resolution(box: int, pixel_size: float) -> np.ndarray:
    """Resolution in Å of shells 0 … B//2 (shell 0 → inf)."""
    s = np.arange(box // 2 + 1, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(s > 0, box * pixel_size / np.maximum(s, 1e-12), np.inf)


def shell_of(resolution: float, box: int, pixel_size: float) -> int:
    """The Fourier shell ⌊B·px/d⌋ of resolution ``d`` Å (Fourier pixels of the B box)."""
    return int(np.floor(box * pixel_size / resolution))


def resolution_of(shell, box: int, pixel_size: float):
    """Resolution in Å of Fourier shell(s) ``shell`` (B·px/s); ``unresolved`` (999 Å, RELION's value) for 0."""
    s = np.asarray(shell, np.float64)
    out = np.where(s > 0, box * pixel_size / np.maximum(s, 1), 999.0)
    return float(out) if out.ndim == 0 else out


def shells_to(resolution: float | None, box: int, pixel_size: float, *, minimum: int = 1) -> int:
    """Number of Fourier shells 0 … s reaching ``resolution`` Å (s = :func:`shell_of`), within
    [``minimum``, Nyquist + 1]; no resolution (None or 0) means every shell to Nyquist."""
    nyquist = box // 2 + 1
    if not resolution:
        return nyquist
    return int(min(nyquist, max(minimum, shell_of(resolution, box, pixel_size) + 1)))


def shell_sum(values, shells, n_shells: int, weights=None):
    """Sum of ``values`` over each shell 0 … n_shells-1 (last axes = the grid).

    Leading axes are kept: values (..., *grid) → (..., n_shells).  Coefficients
    beyond the last shell are ignored.
    """
    xp = array_module(values)
    grid_ndim = shells.ndim
    lead = values.shape[: values.ndim - grid_ndim]
    flat_sh = shells.reshape(-1)
    keep = flat_sh < n_shells
    v = values.reshape(lead + (-1,))[..., keep]
    if weights is not None:
        v = v * weights.reshape(-1)[keep]
    idx = flat_sh[keep]
    onehot = (idx[:, None] == xp.arange(n_shells)[None, :]).astype(v.real.dtype)
    return v @ onehot


def radial_average(values, shells, n_shells: int, weights=None):
    """Mean of ``values`` per shell (leading axes kept)."""
    xp = array_module(values)
    ones = xp.ones(shells.shape, dtype=xp.float32)
    count = shell_sum(ones, shells, n_shells, weights)
    return shell_sum(values, shells, n_shells, weights) / xp.maximum(count, 1)


# -- transforms of centred boxes ---------------------------------------------
def rfft_centered(a, ndim: int = 2):
    """rfft over the last ``ndim`` axes with the box centre (B//2) moved to the origin."""
    be = backend_of(a)
    axes = tuple(range(-ndim, 0))
    return be.rfftn(be.xp.fft.ifftshift(a, axes=axes), axes=axes)


def irfft_centered(f, box: int, ndim: int = 2):
    """Inverse of :func:`rfft_centered` for a box of size ``box``."""
    be = backend_of(f)
    axes = tuple(range(-ndim, 0))
    return be.xp.fft.fftshift(be.irfftn(f, s=(box,) * ndim, axes=axes), axes=axes)


# -- cropping / padding (resampling) -------------------------------------------
def fourier_resize(a, new_box: int, ndim: int = 2):
    """Resample a centred box by cropping (downsampling) or zero-padding its transform.

    Pixel size changes by old_box / new_box exactly.  The mean density (DC) per
    pixel is preserved, so a map keeps its grey values.
    """
    xp = array_module(a)
    old = a.shape[-1]
    if new_box == old:
        return a.copy()
    be = backend_of(a)
    axes = tuple(range(-ndim, 0))
    full = be.fftn(xp.fft.ifftshift(a, axes=axes), axes=axes)
    full = xp.fft.fftshift(full, axes=axes)
    lead = a.shape[:-ndim]
    out = xp.zeros(lead + (new_box,) * ndim, dtype=full.dtype)
    n = min(old, new_box)
    src_lo, dst_lo = old // 2 - n // 2, new_box // 2 - n // 2
    sl_src = (Ellipsis,) + (slice(src_lo, src_lo + n),) * ndim
    sl_dst = (Ellipsis,) + (slice(dst_lo, dst_lo + n),) * ndim
    out[sl_dst] = full[sl_src]
    out = xp.fft.ifftshift(out, axes=axes)
    res = be.ifftn(out, axes=axes).real * (new_box / old) ** ndim
    return xp.fft.fftshift(res, axes=axes).astype(a.dtype if a.dtype.kind == "f" else xp.float32)


# -- shifts ----------------------------------------------------------------------
def phase_shift_2d(f, shift_x, shift_y, box: int | None = None):
    """Translate images given as :func:`rfft_centered` transforms.

    ``shift_x``/``shift_y`` are in pixels (scalars or arrays broadcasting
    against the leading axes).  The returned transform is that of the image
    moved by (+shift_x, +shift_y): g(r) = f(r − t), ĝ = f̂·exp(−2πi k·t).
    """
    xp = array_module(f)
    box = box or f.shape[-2]
    ky, kx = freq_2d(box, xp)
    sx = xp.asarray(shift_x, dtype=xp.float32)[..., None, None]
    sy = xp.asarray(shift_y, dtype=xp.float32)[..., None, None]
    phase = xp.exp((-2j * np.pi) * (kx * sx + ky * sy)).astype(xp.complex64)
    return f * phase


def phase_ramp_3d(box: int, shift_xyz, xp=np):
    """exp(−2πi k·t) on a (B, B, B//2+1) rfft grid (z, y, x): multiplying a map's transform by it moves the
    map by t = (+x, +y, +z) voxels."""
    kz, ky, kx = freq_3d(box, xp)
    sx, sy, sz = (float(a) for a in shift_xyz)
    return xp.exp((-2j * np.pi) * (kx * sx + ky * sy + kz * sz))


def shift_image(img, shift_x, shift_y):
    """Real-space images moved by (+shift_x, +shift_y) pixels (sub-pixel, periodic)."""
    box = img.shape[-1]
    return irfft_centered(phase_shift_2d(rfft_centered(img), shift_x, shift_y, box), box)


# -- masks and filters ---------------------------------------------------------
def _soft_edge(r, radius: float, width: float, xp):
    if width <= 0:
        return (r <= radius).astype(xp.float32)
    inside = (r <= radius).astype(xp.float32)
    edge = (r > radius) & (r < radius + width)
    cos_part = 0.5 * (1 + xp.cos(np.pi * (r - radius) / width))
    return xp.where(edge, cos_part, inside).astype(xp.float32)


def real_radius(box: int, ndim: int = 2, xp=np):
    """Distance (pixels) of each pixel from the box centre B//2."""
    c = xp.arange(box, dtype=xp.float32) - box // 2
    grids = xp.meshgrid(*([c] * ndim), indexing="ij")
    return xp.sqrt(sum(g * g for g in grids))


def soft_circular_mask(box: int, radius: float, width: float = 5.0, xp=np):
    """2D mask: 1 inside ``radius`` px, raised-cosine edge of ``width`` px, 0 outside."""
    return _soft_edge(real_radius(box, 2, xp), radius, width, xp)


def soft_spherical_mask(box: int, radius: float, width: float = 5.0, xp=np):
    """3D mask analogue of :func:`soft_circular_mask`."""
    return _soft_edge(real_radius(box, 3, xp), radius, width, xp)


def lowpass_weights(box: int, pixel_size: float, resolution: float, width_shells: float = 2.0, ndim: int = 2, xp=np):
    """Raised-cosine low-pass on the rfft grid: 1 below ``resolution`` Å, 0 beyond."""
    r = radius_2d(box, xp) if ndim == 2 else radius_3d(box, xp)
    cutoff = box * pixel_size / resolution
    return _soft_edge(r, cutoff, width_shells, xp)


def highpass_weights(box: int, pixel_size: float, resolution: float, width_shells: float = 2.0, ndim: int = 2, xp=np):
    """Complement of :func:`lowpass_weights`: removes detail coarser than ``resolution`` Å."""
    return 1.0 - lowpass_weights(box, pixel_size, resolution, width_shells, ndim, xp)


def lowpass(a, pixel_size: float, resolution: float, width_shells: float = 2.0, ndim: int | None = None):
    """Low-pass filter centred images/volumes (last ``ndim`` axes) at ``resolution`` Å."""
    ndim = ndim or (3 if a.ndim == 3 and a.shape[0] == a.shape[-1] else 2)
    box = a.shape[-1]
    xp = array_module(a)
    w = lowpass_weights(box, pixel_size, resolution, width_shells, ndim, xp)
    return irfft_centered(rfft_centered(a, ndim) * w, box, ndim).astype(a.dtype)
