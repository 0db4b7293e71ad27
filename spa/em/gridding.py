"""Padding and gridding correction for Fourier-space interpolation.

Trilinear interpolation on a grid padded ``pad`` times in real space is a
convolution in Fourier space with a triangle kernel one (padded) voxel wide;
its real-space effect is a multiplication of the object by
Π_axis sinc²(π·x_axis / P), P = pad·B, x in voxels from the box centre.  The
projector divides the volume by that factor before transforming (so slices
come out right); the backprojector divides the reconstruction by it after the
inverse transform.
"""

from __future__ import annotations

import numpy as np

from spa.backend import array_module


def padded_size(box: int, pad: float) -> int:
    """Padded box size P = round(pad·B), made even so the rfft grid is symmetric."""
    p = int(round(pad * box))
    return p + (p % 2)


def sinc2_profile(box: int, padded: int, xp=np):
    """1D factor sinc²(π·x/P) for x = index − B//2 (x in voxels)."""
    x = (xp.arange(box, dtype=xp.float64) - box // 2) / padded
    s = xp.sinc(x)  # numpy's sinc is sin(πx)/(πx)
    return (s * s).astype(xp.float32)


def gridding_factor(box: int, padded: int, ndim: int = 3, xp=np):
    """Separable Π sinc²(π·x_a/P) on a centred box (ndim = 2 or 3)."""
    p = sinc2_profile(box, padded, xp)
    if ndim == 2:
        return p[:, None] * p[None, :]
    return p[:, None, None] * p[None, :, None] * p[None, None, :]


def pad_centered(a, padded: int):
    """Zero-pad the last ``a.ndim`` axes of a centred box so that centre B//2 lands on P//2."""
    xp = array_module(a)
    box = a.shape[-1]
    lo = padded // 2 - box // 2
    out = xp.zeros((padded,) * a.ndim, dtype=a.dtype)
    sl = tuple(slice(lo, lo + box) for _ in range(a.ndim))
    out[sl] = a
    return out


def crop_centered(a, box: int):
    """Inverse of :func:`pad_centered`."""
    padded = a.shape[-1]
    lo = padded // 2 - box // 2
    sl = tuple(slice(lo, lo + box) for _ in range(a.ndim))
    return a[sl]
