"""Analytic projections of Gaussian pseudo-atoms (independent of the Fourier projector).

The projection of V(Aᵀ r) along z, for V a sum of Gaussians centred at atom
positions p (Å, (x, y, z)), is a sum of 2D Gaussians centred at (A·p)[:2].  An
image pixel (row = y, col = x) of a box of size B has its origin at (B//2, B//2).

Each projection is computed as one matrix product per image: with the
separable 1D Gaussians G_y[a, y] and G_x[a, x] of every atom a (evaluated only
within ± 4σ of the atom, the rest is zero), image = G_yᵀ · diag(w) · G_x.
Batches of images are one batched GEMM, which keeps this fast on CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
from functools import lru_cache

import numpy as np

from spa.simulate.density import effective_sigma, gaussian_windows, window_half

# dense per-axis Gaussian tables are (n_images, n_atoms, padded_box) float32;
# keep one batch of them below this many elements (~64 MB)
_MAX_TABLE = 16_000_000


@lru_cache(maxsize=1)
def _openblas_local_threads():
    """OpenBLAS's per-thread ``openblas_set_num_threads_local`` from NumPy's bundled library, or None."""
    libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libdir, "*openblas*.so*"))):
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        return fn
    return None


@contextlib.contextmanager
def single_threaded_blas():
    """Run the many small GEMMs of this thread on one BLAS thread.

    Images are rendered in parallel over chunks (one Python thread each);
    letting OpenBLAS also spawn threads for every small product oversubscribes
    the cores, and on a busy machine its spinning threads slow the products
    down by orders of magnitude.  Thread-local and restored on exit; a no-op
    where NumPy does not bundle OpenBLAS.
    """
    fn = _openblas_local_threads()
    previous = fn(1) if fn is not None else None
    try:
        yield
    finally:
        if fn is not None and previous is not None and previous > 0:
            fn(previous)


def _axis_table(centres, sigma_px, box: int, half: int) -> np.ndarray:
    """Dense (n, N, box) table of 1D Gaussians, zero outside each atom's window."""
    n, n_atoms = centres.shape
    w = 2 * half + 1
    start, vals = gaussian_windows(centres, sigma_px, half)
    padded = box + 2 * w
    # windows that fall (partly) outside the box land in the padding and are cut off;
    # windows entirely outside are dropped (their start would leave the padded row)
    far = (start < -w) | (start > box)
    if far.any():
        vals[far] = 0.0
        start = np.clip(start, -w, box)
    table = np.zeros(n * n_atoms * padded, dtype=np.float32)
    base = np.arange(n * n_atoms, dtype=np.int64).reshape(n, n_atoms) * padded + (start + w)
    table[(base[..., None] + np.arange(w)).ravel()] = vals.ravel()
    return table.reshape(n, n_atoms, padded)[:, :, w : w + box]


def project_atoms(
    coords,
    weights,
    sigmas,
    matrices,
    box: int,
    pixel_size: float,
    shifts=None,
) -> np.ndarray:
    """Projections (n, box, box) float32 of Gaussian atoms in the directions ``matrices``.

    Parameters
    ----------
    coords : (N, 3)
        Atom positions in Å, (x, y, z), origin at the box centre.
    weights, sigmas : (N,)
        Masses and intrinsic widths (Å); widths are widened to ≥ 1 pixel
        (:func:`spa.simulate.density.effective_sigma`), exactly as in the maps.
    matrices : (n, 3, 3)
        Rotation matrices A (e.g. :func:`spa.geometry.euler.euler_to_matrix`):
        image n shows V(Aᵀ r) summed along z.
    box, pixel_size : int, float
        Image size (px) and pixel size (Å).
    shifts : (n, 2) or None
        (sx, sy) in pixels: the projection is moved by (+sx, +sy).  RELION's
        particle with origin o (Å) is rendered with shifts = −o / pixel_size.

    Returns
    -------
    float32 (n, box, box) indexed [n, y, x]; pixel values are mass per pixel
    (the 2D Gaussians integrate to the atom weights).
    """
    coords = np.asarray(coords, dtype=np.float64)
    matrices = np.asarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
    n = len(matrices)
    out = np.zeros((n, box, box), dtype=np.float32)
    if n == 0 or len(coords) == 0:
        return out
    sig_px = (effective_sigma(sigmas, pixel_size) / pixel_size).astype(np.float32)
    half = window_half(sig_px)
    w = np.asarray(weights, dtype=np.float32)
    centre = box // 2
    # atom image positions in pixels, (n, 2, N): rows are x then y
    pos = np.einsum("nij,aj->nia", matrices[:, :2, :], coords) / pixel_size + centre
    if shifts is not None:
        pos += np.asarray(shifts, dtype=np.float64).reshape(n, 2)[:, :, None]
    per_batch = max(1, _MAX_TABLE // (len(coords) * (box + 4 * half + 2)))
    with single_threaded_blas():
        for lo in range(0, n, per_batch):
            sl = slice(lo, lo + per_batch)
            gy = _axis_table(pos[sl, 1], sig_px, box, half)
            gx = _axis_table(pos[sl, 0], sig_px, box, half)
            gx *= w[None, :, None]
            np.matmul(gy.transpose(0, 2, 1), gx, out=out[sl])
    return out


def project_molecule(molecule, matrices, box: int, pixel_size: float, shifts=None) -> np.ndarray:
    """:func:`project_atoms` for a :class:`spa.simulate.molecule.Molecule`."""
    return project_atoms(molecule.coords, molecule.weights, molecule.sigmas, matrices, box, pixel_size, shifts)
