"""Synthetic 2D particle images with known class, in-plane angle, shift and CTF.

For tests and benchmarks of 2D classification when no 3D simulation is
wanted: K distinct, asymmetric 2D "views" made of Gaussian blobs; each image is
one view rotated by ψ and shifted, with a CTF and white noise (and optional
pure-noise junk).  The forward model follows RELION's conventions and is
written independently of the engine (real-space resampling, not the Fourier
interpolation the engine uses):

* image(x) = CTF ⊛ [view(M_ψ·(x + t))] + noise, with M_ψ the 2D part of
  euler_to_matrix(0, 0, ψ)ᵀ, so image frequency k samples the view at Aᵀk
  (as the 3D projector), and t = rlnOrigin/pixel: translating the image by +t
  centres the particle.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from spa.ctf import ctf_2d
from spa.fourier import irfft_centered, rfft_centered


def make_views(n_views: int, box: int, pixel_size: float, diameter: float, rng) -> np.ndarray:
    """K asymmetric blob images (K, B, B) float32 inside ``diameter`` Å, max ≈ 1."""
    rng = np.random.default_rng(rng)
    c = np.arange(box) - box // 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    rad = 0.5 * diameter / pixel_size
    out = np.zeros((n_views, box, box), np.float32)
    for k in range(n_views):
        img = np.zeros((box, box))
        n_blobs = 3 + k % 3
        for _ in range(n_blobs):
            r = rad * 0.65 * np.sqrt(rng.uniform(0.05, 1.0))
            a = rng.uniform(0, 2 * np.pi)
            cx, cy = r * np.cos(a), r * np.sin(a)
            sx, sy = rng.uniform(0.12, 0.3, size=2) * rad
            th = rng.uniform(0, np.pi)
            u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
            v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
            img += rng.uniform(0.5, 1.0) * np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
        out[k] = img / img.max()
    return out


def rotate_shift(view: np.ndarray, psi_deg: float, shift_xy) -> np.ndarray:
    """view(M_ψ·(x + t)) by cubic resampling (x = column − B//2, y = row − B//2)."""
    box = view.shape[-1]
    c = np.arange(box) - box // 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    x = xx + shift_xy[0]
    y = yy + shift_xy[1]
    p = np.deg2rad(psi_deg)
    # Aᵀ = [[c, −s], [s, c]]: image point x samples the view at Aᵀx
    sx = np.cos(p) * x - np.sin(p) * y
    sy = np.sin(p) * x + np.cos(p) * y
    return ndimage.map_coordinates(view, [sy + box // 2, sx + box // 2], order=3, mode="constant").astype(np.float32)


def make_particles(views: np.ndarray, n: int, pixel_size: float, *, snr: float = 0.1, max_shift_px: float = 2.0,
                   defocus=(8000.0, 25000.0), junk_fraction: float = 0.0, rng=0, voltage=300.0, cs=2.7, q=0.1):
    """Particle images (n, B, B) float32 and a RELION-style table with the truth.

    Columns: rlnDefocusU/V/Angle, rlnVoltage, rlnSphericalAberration,
    rlnAmplitudeContrast, rlnImagePixelSize, rlnImageSize, rlnOpticsGroup,
    and truth columns ``trueClass`` (−1 for junk), ``truePsi``, ``trueOriginX/Y``
    (pixels, RELION sign).  SNR is the variance of the CTF-modulated signal
    over the noise variance, inside the box.
    """
    rng = np.random.default_rng(rng)
    k, box = views.shape[0], views.shape[-1]
    cls = rng.integers(0, k, n)
    junk = rng.random(n) < junk_fraction
    cls[junk] = -1
    psi = rng.uniform(0, 360, n)
    shifts = rng.uniform(-max_shift_px, max_shift_px, (n, 2))
    du = rng.uniform(*defocus, n)
    dv = du - rng.uniform(0, 500, n)
    ang = rng.uniform(0, 180, n)
    clean = np.zeros((n, box, box), np.float32)
    for i in range(n):
        if cls[i] >= 0:
            clean[i] = rotate_shift(views[cls[i]], psi[i], shifts[i])
    ctf = ctf_2d(box, pixel_size, du, dv, ang, voltage, cs, q)
    signal = irfft_centered(rfft_centered(clean) * ctf, box).astype(np.float32)
    good = ~junk
    var = float(signal[good].var()) if good.any() else 1.0
    noise = rng.standard_normal((n, box, box)).astype(np.float32) * np.float32(np.sqrt(var / snr))
    images = (signal + noise).astype(np.float32)
    table = pd.DataFrame({
        "rlnDefocusU": du, "rlnDefocusV": dv, "rlnDefocusAngle": ang,
        "rlnVoltage": voltage, "rlnSphericalAberration": cs, "rlnAmplitudeContrast": q,
        "rlnImagePixelSize": pixel_size, "rlnImageSize": box, "rlnOpticsGroup": 1,
        "trueClass": cls, "truePsi": psi, "trueOriginX": shifts[:, 0], "trueOriginY": shifts[:, 1],
    })
    return images, table
