"""The one regularised reconstruction: weighted Fourier sums → 2D class averages or 3D maps.

Every reconstruction in ``spa`` — ``spa reconstruct`` (:class:`spa.em.backprojector.BackProjector`),
the 3D references of classification, refinement and ab initio
(:class:`spa.em.volume_refs.VolumeReferences`) and the 2D class averages
(:class:`spa.em.inplane.InplaneReferences`) — turns the same two sums into an image, here:

* ``data`` Σ C·X̂ and ``weight`` Σ C² (each already divided by σ² and weighted by the
  posterior in the EM stages), accumulated with bilinear / trilinear weights on the
  real-to-complex half of a grid padded ``pad`` = P/B times (P even, the layout of
  :func:`spa.fourier.rfft_centered`: [z, y, x] with z, y in FFT order and x = 0 … P/2);

and does, in this order (RELION's ``BackProjector::reconstruct``, Scheres 2012, written
from the mathematics):

1. **Hermitian completion** of the kx = 0 plane (3D) or column (2D): insertion reflects
   points with kx < 0 through the origin, so the two mirrored halves of that plane hold
   different samples of one function; both get their sum (:func:`complete_hermitian`).
2. **The MAP / Wiener ratio per voxel**, V̂ = data ÷ (weight + R), with the regulariser R
   (:func:`regulariser`):
   τ² per shell (classification): R = 1/(T·τ²·padᵈ) — padᵈ because a padded grid spreads
   each sample over padᵈ times more voxels, so its weights are that much thinner;
   SSNR per shell (gold-standard refinement, SSNR = T·FSC/(1 − FSC)): R = W̄/SSNR with W̄
   the shell's mean weight (RELION's 1/τ² with τ² = SSNR·σ²_recon, σ²_recon = 1/W̄);
   neither (``spa reconstruct``, unregularised half maps): R = 10⁻³·W̄, only so that
   voxels without data stay finite (as RELION's floor).
3. **Window**: voxels beyond ``max_radius`` (Fourier pixels of the unpadded box, a
   continuous radius) are set to zero.  Trilinear insertion spreads data up to √3 padded
   voxels beyond the last inserted frequency; those voxels hold extrapolated values, and
   keeping them (the old rounded-shell rule kept ½ px more) lowered the FSC of the
   Nyquist shell by 0.01–0.03.
4. **Inverse FFT** of the padded grid, crop to the centred B box, and the **gridding
   correction**: divide by the transform of the interpolation kernel, Π sinc²(π·x/P)
   (:mod:`spa.em.gridding`).
5. **Outside the box's inscribed sphere** (circle in 2D), as RELION's
   ``softMaskOutsideMap``: a raised-cosine edge from radius B/2 to B/2 + 3 px, beyond it
   the mean of that region.  The corners hold no particle, only noise — noise that the
   gridding correction amplifies most there (÷ 0.53 at a corner of a 2× padded box) —
   and they are ~48 % of a cube's volume: they were the main reason why a true-pose
   reconstruction's FSC against the truth was 4–6 % worse in resolution than RELION's
   (see docs/performance.md, "Reconstruction vs the truth").
6. Optionally a soft **particle mask** (``mask_radius_px``), as the EM stages use.

No iterative density pre-weighting (Pipe & Menon 1999): RELION 5 skips it by default
too (``relion_reconstruct`` and ``relion_refine`` only run it with
``--dont_skip_gridding``, which measured slightly worse), and measured here it changed the
FSC against the truth by < 0.3 % in resolution with noise, and made noise-free
reconstructions from a strongly non-uniform orientation distribution no better, for ten
times the FFTs.  A padding of 3 instead of 2 measured worse (thinner weights per voxel).

All arrays stay on the backend of ``data`` (NumPy or CuPy, same code).
"""

from __future__ import annotations

import numpy as np

from spa.backend import array_module, backend_of
from spa.em.gridding import crop_centered, gridding_factor
from spa.fourier import irfft_centered, soft_circular_mask, soft_spherical_mask

#: RELION's floor for an unregularised reconstruction: weight + 10⁻³ × the shell's mean weight
DEFAULT_MIN_WEIGHT_FRACTION = 1e-3
#: width (px) of the raised-cosine edge outside the box's inscribed sphere (RELION's softMaskOutsideMap)
OUTSIDE_EDGE_PX = 3.0


# -- grid helpers -----------------------------------------------------------------------------
def padded_radius(padded: int, pad: float, ndim: int, xp):
    """|k| of every voxel of the padded half grid, in Fourier pixels of the *unpadded* box (float32).

    Shape (P, P, P//2+1) in 3D, (P, P//2+1) in 2D.
    """
    # integer frequencies (FFT order), so that radii at exact half-integers round the same everywhere
    k = ((xp.arange(padded) + padded // 2) % padded - padded // 2).astype(xp.float32)
    kx = xp.arange(padded // 2 + 1).astype(xp.float32)
    if ndim == 2:
        r2 = k[:, None] ** 2 + kx[None, :] ** 2
    else:
        r2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2
    return xp.sqrt(r2) / np.float32(pad)


def shell_means(values, shells, n_shells: int):
    """Mean of real ``values`` (grid) over each shell 0 … n_shells−1 (float64, length n_shells).

    Voxels of shells ≥ n_shells (the corners beyond Nyquist) are left out.  On NumPy one
    ``bincount``; on CuPy the backend's sort-based sums (deterministic, unlike atomics).
    """
    xp = array_module(values)
    idx = xp.minimum(shells.reshape(-1), n_shells).astype(xp.int64)  # overflow bin n_shells, dropped
    v = values.reshape(-1).astype(xp.float64)
    if xp is np:
        tot = np.bincount(idx, weights=v, minlength=n_shells + 1)
        cnt = np.bincount(idx, minlength=n_shells + 1)
    else:
        be = backend_of(values)
        tot = be.sum_rows_by_index(v[:, None], idx, n_shells + 1)[:, 0]
        cnt = be.sum_rows_by_index(xp.ones((v.shape[0], 1), xp.float64), idx, n_shells + 1)[:, 0]
    return tot[:n_shells] / xp.maximum(cnt[:n_shells], 1)


def complete_hermitian(data, weight, ndim: int) -> None:
    """Give both mirrored halves of the kx = 0 plane (3D) / column (2D) their sum, in place.

    ``data`` (…, P, P, P//2+1) or (…, P, P//2+1) complex, ``weight`` the same shape, real.
    V̂(0, −y, −z) = conj V̂(0, y, z): a sample that landed on one copy is also a sample of the
    other, so each gets data + conj(mirrored data) and weight + mirrored weight.
    """
    xp = array_module(data)
    p = data.shape[-2]
    mirror = (-xp.arange(p)) % p
    if ndim == 2:
        d0 = data[..., :, 0]
        w0 = weight[..., :, 0]
        data[..., :, 0] = d0 + d0[..., mirror].conj()
        weight[..., :, 0] = w0 + w0[..., mirror]
        return
    d0 = data[..., :, :, 0]
    w0 = weight[..., :, :, 0]
    data[..., :, :, 0] = d0 + d0[..., mirror, :][..., :, mirror].conj()
    weight[..., :, :, 0] = w0 + w0[..., mirror, :][..., :, mirror]


# -- the regulariser ----------------------------------------------------------------------------
def regulariser(weight, shells, n_shells: int, pad: float, ndim: int, *, tau2=None, tau2_fudge: float = 1.0,
                ssnr=None, min_weight_fraction: float = DEFAULT_MIN_WEIGHT_FRACTION):
    """Per-voxel term R added to ``weight`` (already Hermitian-completed) in data ÷ (weight + R).

    ``tau2`` (n_shells,): R = 1/(T·τ²·padᵈ), ∞ (an empty voxel) where τ² = 0.
    ``ssnr`` (n_shells,): R = W̄_shell / SSNR_shell (SSNR floored at 10⁻⁶).
    Neither: R = ``min_weight_fraction`` · W̄_shell.
    Shells beyond the last (corners) use the last shell's value.  Returns float64 (grid).
    """
    xp = array_module(weight)
    shc = xp.minimum(shells, n_shells - 1)
    if tau2 is not None:
        tau = xp.asarray(tau2, dtype=xp.float64)[:n_shells][shc]
        with np.errstate(divide="ignore"):
            return xp.where(tau > 0, 1.0 / (tau2_fudge * tau * pad**ndim), np.inf)
    mean_w = shell_means(weight, shells, n_shells)
    if ssnr is not None:
        s = xp.maximum(xp.asarray(ssnr, dtype=xp.float64)[:n_shells], 1e-6)
        return (mean_w / s)[shc]
    return (min_weight_fraction * mean_w)[shc]


def data_vs_prior(weight, shells, n_shells: int, pad: float, ndim: int, tau2, tau2_fudge: float):
    """RELION's SSNR estimate per shell: mean of weight·padᵈ·T·τ² (float64, length n_shells)."""
    xp = array_module(weight)
    tau = xp.asarray(tau2, dtype=xp.float64)[:n_shells][xp.minimum(shells, n_shells - 1)]
    return shell_means(weight * (pad**ndim * tau2_fudge) * tau, shells, n_shells)


# -- real-space steps ---------------------------------------------------------------------------
def mask_outside_box_sphere(image, ndim: int):
    """RELION's softMaskOutsideMap: beyond radius B/2 a raised cosine over ``OUTSIDE_EDGE_PX`` px to
    the mean of that outer region (the corners hold only noise; the mean avoids a step)."""
    xp = array_module(image)
    box = image.shape[-1]
    make = soft_spherical_mask if ndim == 3 else soft_circular_mask
    keep = make(box, box / 2.0, OUTSIDE_EDGE_PX, xp)
    out = 1.0 - keep
    background = (image * out).sum() / xp.maximum(out.sum(), 1e-12)
    return image * keep + background * out


# -- the reconstruction -------------------------------------------------------------------------
def reconstruct(data, weight, box: int, ndim: int, *, tau2=None, tau2_fudge: float = 1.0, ssnr=None,
                min_weight_fraction: float = DEFAULT_MIN_WEIGHT_FRACTION, max_radius: float | None = None,
                mask_radius_px: float | None = None, mask_edge_px: float = 5.0):
    """Images from padded half-grid sums (see the module docstring for the steps).

    Parameters
    ----------
    data, weight : (K, P, P, P//2+1) (3D) or (K, P, P//2+1) (2D) sums, complex and real, or
        without the leading K axis for one map.  Not modified.
    box : B, the unpadded box (the padding factor is P/B).
    ndim : 2 (class averages) or 3 (maps).
    tau2 : (K, B//2+1) signal power per shell (per real component), or None.
    tau2_fudge : T (RELION's --tau2_fudge): 2 in 2D, 4 in 3D classification, 1 in refinement.
    ssnr : (K, B//2+1) spectral SNR per shell (used when ``tau2`` is None), or None.
    min_weight_fraction : the floor of an unregularised reconstruction (× the shell's mean weight).
    max_radius : last frequency kept, Fourier pixels of the unpadded box (continuous; default
        B/2, Nyquist).  Give the radius the data were inserted to.
    mask_radius_px, mask_edge_px : optional soft particle mask (pixels).

    Returns ``(images (K, B, B[, B]) float32, data_vs_prior (K, B//2+1) float64 or None)``
    (without the K axis when the sums had none); data_vs_prior only with ``tau2``.
    """
    xp = array_module(data)
    single = data.ndim == ndim
    if single:
        data, weight = data[None], weight[None]
        tau2 = None if tau2 is None else xp.asarray(tau2)[None]
        ssnr = None if ssnr is None else xp.asarray(ssnr)[None]
    padded = int(data.shape[-2])
    pad = padded / box
    nsh = box // 2 + 1
    radius = padded_radius(padded, pad, ndim, xp)
    shells = xp.rint(radius).astype(xp.int32)
    limit = box / 2.0 if max_radius is None else float(max_radius)
    inside = radius <= np.float32(limit + 1e-4)
    grid_corr = gridding_factor(box, padded, ndim, xp)
    images, dvp = [], []
    for k in range(data.shape[0]):  # one class at a time: a padded 3D grid is large
        d = data[k].copy()
        w = weight[k].copy()
        complete_hermitian(d, w, ndim)
        reg = regulariser(w, shells, nsh, pad, ndim, tau2=None if tau2 is None else xp.asarray(tau2)[k],
                          tau2_fudge=tau2_fudge, ssnr=None if ssnr is None else xp.asarray(ssnr)[k],
                          min_weight_fraction=min_weight_fraction)
        denom = w + reg
        # 1/denominator, 0 outside the window and where it is 0 (no data, no prior); a zero τ² (an
        # infinite regulariser) gives 1/∞ = 0 too: one real array, then one complex product
        with np.errstate(divide="ignore"):
            inv = xp.where(inside & (denom > 0), 1.0 / denom, 0.0)
        f = (d * inv).astype(xp.complex64)
        image = crop_centered(irfft_centered(f, padded, ndim), box) / grid_corr
        image = mask_outside_box_sphere(image, ndim)
        if mask_radius_px is not None:
            make = soft_spherical_mask if ndim == 3 else soft_circular_mask
            image = image * make(box, mask_radius_px, mask_edge_px, xp)
        images.append(image.astype(xp.float32))
        if tau2 is not None:
            dvp.append(data_vs_prior(w, shells, nsh, pad, ndim, xp.asarray(tau2)[k], tau2_fudge))
    shape = (0,) + (box,) * ndim
    images = xp.stack(images) if images else xp.zeros(shape, xp.float32)
    dvp = (xp.stack(dvp) if dvp else xp.zeros((0, nsh), xp.float64)) if tau2 is not None else None
    if single:
        return images[0], (None if dvp is None else dvp[0])
    return images, dvp
