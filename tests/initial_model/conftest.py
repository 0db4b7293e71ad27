"""Synthetic particle sets with known poses for the ab initio tests (made here, nothing committed)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from spa.ctf import ctf_2d
from spa.em.projector import Projector
from spa.fourier import irfft_centered, phase_shift_2d
from spa.geometry.euler import euler_to_matrix
from spa.geometry.sampling import random_euler
from spa.initial_model.working import WorkingSet

VOLTAGE, CS, Q = 300.0, 2.7, 0.1


def simulate(volume, pixel_size: float, n: int, *, snr: float = 0.3, seed: int = 0, max_origin_px: float = 1.5):
    """Particles X = shift(CTF·P(V)) + white noise, RELION conventions.

    Returns (images (n, B, B) float32, table with CTF columns, true poses (n, 3)
    Euler degrees, true origins (n, 2) Å).  The particle's centre sits at box
    centre − origin (rlnOriginX/YAngst).  SNR = variance of the clean
    CTF-modulated signal over the box / noise variance.
    """
    rng = np.random.default_rng(seed)
    box = volume.shape[-1]
    euler = np.column_stack(random_euler(n, rng))
    origin_px = rng.uniform(-max_origin_px, max_origin_px, (n, 2))
    du = rng.uniform(8000, 20000, n)
    dv = du - rng.uniform(0, 300, n)
    ang = rng.uniform(0, 180, n)
    ctf = ctf_2d(box, pixel_size, du, dv, ang, VOLTAGE, CS, Q)
    f = Projector(np.asarray(volume, np.float32)).project(euler_to_matrix(*euler.T).astype(np.float32))
    f = phase_shift_2d(f * ctf, -origin_px[:, 0], -origin_px[:, 1])
    clean = irfft_centered(f, box, 2).astype(np.float32)
    sigma = np.sqrt(clean.var(axis=(1, 2)).mean() / snr)
    images = (clean + rng.normal(0, sigma, clean.shape)).astype(np.float32)
    table = pd.DataFrame({
        "rlnDefocusU": du, "rlnDefocusV": dv, "rlnDefocusAngle": ang, "rlnVoltage": VOLTAGE,
        "rlnSphericalAberration": CS, "rlnAmplitudeContrast": Q, "rlnOpticsGroup": 1,
        "rlnImagePixelSize": pixel_size, "rlnImageSize": box,
    })
    return images, table, euler, origin_px * pixel_size


def working_set(images, table, pixel_size: float) -> WorkingSet:
    """The in-memory working set of already small particles (no cropping)."""
    box = images.shape[-1]
    return WorkingSet(images, table, box, pixel_size, box, pixel_size, np.zeros(len(images), np.int64), True)


def pseudo_atom_molecule(box: int, pixel_size: float, *, n_atoms: int = 500, n_domains: int = 3,
                         radius: float = 40.0, seed: int = 3) -> np.ndarray:
    """An asymmetric protein-like map (B, B, B): chains of pseudo-atoms (3.8 Å steps, σ 2.5 Å) in a few domains.

    ``radius`` (Å) bounds the atoms around the box centre; the map is positive.
    Unlike a few wide blobs it carries signal out to ~10 Å, as a protein does.
    """
    rng = np.random.default_rng(seed)
    atoms = []
    dirs = rng.normal(size=(n_domains, 3))
    centres = 0.55 * radius * dirs / np.linalg.norm(dirs, axis=1, keepdims=True)  # separate lobes: a clear shape
    per = n_atoms // n_domains
    for c in centres:
        p = c.copy()
        d = rng.normal(size=3)
        for _ in range(per):
            d = 0.7 * d / np.linalg.norm(d) + 0.3 * rng.normal(size=3)  # persistent random walk
            step = p + 3.8 * d / np.linalg.norm(d)
            if np.linalg.norm(step - c) > radius * 0.38 or np.linalg.norm(step) > radius:
                d = (c - p) / max(np.linalg.norm(c - p), 1e-6) + 0.3 * rng.normal(size=3)  # turn back inwards
                step = p + 3.8 * d / np.linalg.norm(d)
            p = step
            atoms.append(p.copy())
    atoms = np.array(atoms) / pixel_size  # (x, y, z) in pixels from the centre
    g = np.arange(box) - box // 2
    sigma = max(2.5 / pixel_size, 0.8)  # px; at least 0.8 px so the grid samples it
    ex = np.exp(-((g[None, :] - atoms[:, 0:1]) ** 2) / (2 * sigma**2))  # separable Gaussians
    ey = np.exp(-((g[None, :] - atoms[:, 1:2]) ** 2) / (2 * sigma**2))
    ez = np.exp(-((g[None, :] - atoms[:, 2:3]) ** 2) / (2 * sigma**2))
    vol = np.einsum("az,ay,ax->zyx", ez, ey, ex)
    return (vol / vol.max()).astype(np.float32)


def molecule(box: int, pixel_size: float, seed: int = 3) -> np.ndarray:
    """The asymmetric test molecule of the ab initio tests (diameter ≈ 0.65 of the box)."""
    return pseudo_atom_molecule(box, pixel_size, radius=0.33 * box * pixel_size, seed=seed)
