"""3D variability of a particle set with known poses, and class seeds from it.

Probabilistic PCA in Fourier space (Tipping & Bishop 1999; as cryoSPARC's 3D
variability analysis, Punjani & Fleet 2021): each image is modelled as

    X_i = C_i·P_i(V + Σ_c z_ic·D_c) + noise,   z_i ~ N(0, I),

with P_i the projection at the particle's pose, C_i its CTF, V the mean map
(reconstructed from the same particles) and noise with the per-shell spectrum
σ² estimated from the residuals.  Components D_c are found one at a time by
EM (each fitted to what the earlier ones leave); the E-step gives every
particle's posterior mean coordinates z_i, the M-step is a reconstruction of
the residuals weighted by z_i.  Everything runs on Fourier-cropped images
(the window of ``resolution`` Å), so a pass over the data is cheap and the
windowed data stay in memory — of at most :data:`MAX_PARTICLES` particles, a
seeded random subset of a larger set (:func:`analysis_rows`): the seeds need
the directions in which the data differ, which tens of thousands of
particles show as well as millions, not every particle.

Used to seed 3D classification: particles are clustered (k-means) on their
coordinates along the top K−1 components, so the K classes start from the
directions in which the data really differ instead of from random subsets
(from random halves the classes differ only by noise; at low SNR the EM
then separates them slowly or not at all).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.em.backprojector import BackProjector
from spa.em.engine import particle_ctfs, take
from spa.em.projector import Projector, image_frequencies
from spa.fourier import fourier_resize, phase_shift_2d, rfft_centered, soft_circular_mask, soft_spherical_mask
from spa.geometry.euler import euler_to_matrix


#: particles whose windowed data the analysis holds (a random subset of larger sets)
MAX_PARTICLES = 50_000


def analysis_rows(n_particles: int, seed: int, max_particles: int = MAX_PARTICLES) -> np.ndarray:
    """Sorted rows the analysis reads: all of them, or a seeded random subset of ``max_particles``."""
    if n_particles <= max_particles:
        return np.arange(n_particles)
    rng = np.random.default_rng([int(seed), 0x3DA])
    return np.sort(rng.choice(n_particles, int(max_particles), replace=False))


@dataclass
class WindowedData:
    """Fourier-cropped, centred images at the active pixels of a small box, with what the model needs."""

    box: int  # the small box (pixels)
    pixel_size: float  # Å per pixel of the small box
    max_radius: float  # window radius (Fourier pixels)
    X: np.ndarray  # (N, F) complex64 image transforms, centred by their origins
    ctf: np.ndarray  # (N, F) float32
    inv_sigma2: np.ndarray  # (N, F) float32, filled by :func:`fit_mean`
    rotations: np.ndarray  # (N, 3, 3)
    group: np.ndarray  # (N,) optics group 0…G−1
    shell: np.ndarray  # (F,) int shell of each active pixel
    mask_radius_px: float  # particle radius in small-box pixels


def small_box(box: int, pixel_size: float, resolution: float) -> int:
    """Even box whose Nyquist is a little beyond ``resolution`` Å (never larger than ``box``)."""
    shells = box * pixel_size / resolution
    return int(min(box, 2 * int(np.ceil(shells)) + 6))


def window_data(source, particles: dict, rows, angles_deg, centres_px, box: int, pixel_size: float,
                resolution: float, mask_radius_px: float, *, do_ctf: bool = True, chunk_size: int = 512,
                progress=None) -> WindowedData:
    """Read the particles ``rows`` once and keep their low-resolution transforms (one pass over the images)."""
    rows = np.asarray(rows)
    b = small_box(box, pixel_size, resolution)
    px = pixel_size * box / b
    r_max = min(b // 2, box * pixel_size / resolution)
    index, _, _ = image_frequencies(b, r_max)
    mask = soft_circular_mask(box, mask_radius_px, 5.0)
    X, ctf = [], []
    for s in range(0, len(rows), chunk_size):
        idx = rows[s:s + chunk_size]
        images = np.asarray(source.read(idx), np.float32) * mask
        small = fourier_resize(images, b, ndim=2)
        f = rfft_centered(small)
        c = np.asarray(centres_px)[s:s + len(idx)] * (b / box)
        f = phase_shift_2d(f, c[:, 0], c[:, 1])
        X.append(f.reshape(len(idx), -1)[:, index].astype(np.complex64))
        p = take(particles, idx)
        ctf.append(particle_ctfs(p, b, px, do_ctf=do_ctf).reshape(len(idx), -1)[:, index])
        if progress:
            progress(min(s + chunk_size, len(rows)), len(rows))
    ky = np.fft.fftfreq(b)[:, None] * b
    kx = np.arange(b // 2 + 1)[None, :]
    shell = np.rint(np.sqrt(ky**2 + kx**2)).astype(np.int64).reshape(-1)[index]
    rots = euler_to_matrix(*np.asarray(angles_deg, np.float64).T)
    X = np.concatenate(X)
    return WindowedData(b, px, r_max, X, np.concatenate(ctf), np.ones(X.shape, np.float32), rots,
                        np.asarray(particles["group"])[rows], shell, mask_radius_px * b / box)


def _reconstruct(data: WindowedData, values, weights, regularisation: float, rows=None):
    bp = BackProjector(data.box, max_radius=data.max_radius, xp=np)
    bp.insert_active(values, weights, data.rotations if rows is None else data.rotations[rows])
    vol = np.asarray(bp.reconstruct(min_weight_fraction=regularisation))
    return vol * soft_spherical_mask(data.box, data.mask_radius_px, 3.0)


def _project(volume, data: WindowedData):
    proj = Projector(volume, max_radius=data.max_radius)
    return np.asarray(proj.project_active(data.rotations))


def fit_mean(data: WindowedData, regularisation: float = 1e-2):
    """The mean map V (small box) and the residuals X − C·P(V); sets ``inv_sigma2`` from them."""
    mean = _reconstruct(data, data.ctf * data.X, data.ctf**2, regularisation)
    resid = data.X - data.ctf * _project(mean, data)
    power = resid.real**2 + resid.imag**2
    n_groups = int(data.group.max()) + 1
    n_shells = int(data.shell.max()) + 1
    key = data.group[:, None] * n_shells + data.shell[None, :]
    tot = np.bincount(key.reshape(-1), weights=power.reshape(-1), minlength=n_groups * n_shells)
    cnt = np.bincount(key.reshape(-1), minlength=n_groups * n_shells)
    sigma2 = 0.5 * tot / np.maximum(cnt, 1)  # per real component, as the E-step's σ²
    sigma2 = np.where(sigma2 > 0, sigma2, sigma2[sigma2 > 0].mean())
    data.inv_sigma2 = (1.0 / sigma2[key]).astype(np.float32)
    return mean, resid.astype(np.complex64)


def principal_component(data: WindowedData, resid, *, n_iter: int = 30, seed: int = 0, tol: float = 1e-4,
                        regularisation: float = 1e-2, mask=None):
    """One PPCA component by EM → (direction map D, posterior mean coordinates z (N,), iterations run).

    E-step per image: precision a_i + 1 with a_i = Σ |C·P_i D|²/σ², mean
    z_i = Re Σ conj(C·P_i D)·R_i/σ² ÷ (a_i + 1); M-step: D minimises
    Σ_i E|R_i − z_i·C·P_i D|²/σ², a reconstruction with data z_i·C·R_i/σ² and
    weights E[z_i²]·C²/σ².  Stops when D changes by less than ``tol`` (1 − correlation).
    ``mask`` (small box, 0…1): D is confined to it (focused classification).
    """
    rng = np.random.default_rng(seed)
    b = data.box
    D = rng.standard_normal((b, b, b)).astype(np.float32) * soft_spherical_mask(b, data.mask_radius_px, 3.0)
    if mask is not None:
        D = D * mask
    w = data.inv_sigma2
    z = np.zeros(len(resid))
    it = 0
    for it in range(1, n_iter + 1):
        P = data.ctf * _project(D, data)
        a = (w * (P.real**2 + P.imag**2)).sum(axis=1)
        bvec = (w * (P.real * resid.real + P.imag * resid.imag)).sum(axis=1)
        prec = a + 1.0
        z = bvec / prec
        ez2 = z * z + 1.0 / prec
        new = _reconstruct(data, (z[:, None] * w) * data.ctf * resid, (ez2[:, None] * w) * data.ctf**2,
                           regularisation)
        change = 1.0 - abs(float(np.vdot(new.ravel(), D.ravel()))) / max(
            float(np.linalg.norm(new) * np.linalg.norm(D)), 1e-30)
        D = (new if mask is None else new * mask).astype(np.float32)
        if change < tol:
            break
    P = data.ctf * _project(D, data)
    a = (w * (P.real**2 + P.imag**2)).sum(axis=1)
    z = (w * (P.real * resid.real + P.imag * resid.imag)).sum(axis=1) / (a + 1.0)
    return D, z, it


def components(data: WindowedData, n_components: int, *, n_iter: int = 30, seed: int = 0, mask=None):
    """Mean map and the top ``n_components`` (maps, coordinates (N, C)), each fitted to what the earlier leave."""
    mean, resid = fit_mean(data)
    maps, coords = [], []
    for c in range(n_components):
        D, z, _ = principal_component(data, resid, n_iter=n_iter, seed=seed + c, mask=mask)
        maps.append(D)
        coords.append(z)
        resid = resid - z[:, None] * (data.ctf * _project(D, data))
    return mean, np.stack(maps), np.stack(coords, axis=1)


def kmeans(points, k: int, *, seed: int = 0, n_iter: int = 100):
    """Labels (N,) of k-means clustering (k-means++ start from ``seed``; Lloyd iterations)."""
    pts = np.asarray(points, np.float64).reshape(len(points), -1)
    rng = np.random.default_rng(seed)
    centres = [pts[rng.integers(len(pts))]]
    for _ in range(1, k):
        d2 = np.min([((pts - c) ** 2).sum(1) for c in centres], axis=0)
        p = d2 / d2.sum() if d2.sum() > 0 else None
        centres.append(pts[rng.choice(len(pts), p=p)])
    centres = np.array(centres)
    labels = np.zeros(len(pts), np.int64)
    for _ in range(n_iter):
        new = np.argmin(((pts[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        if np.array_equal(new, labels) and _ > 0:
            break
        labels = new
        for j in range(k):
            if np.any(labels == j):
                centres[j] = pts[labels == j].mean(0)
    return labels


def bimodality(z) -> float:
    """Fraction of the variance of ``z`` (N,) between the two halves of a 2-means split.

    2/π ≈ 0.64 for a Gaussian, → 1 for two well-separated groups: discrete
    states make their component bimodal, pose errors and noise do not."""
    z = np.asarray(z, np.float64)
    total = float(((z - z.mean()) ** 2).sum())
    if total <= 0:
        return 0.0
    lab = kmeans(z[:, None], 2)
    within = sum(float(((z[lab == j] - z[lab == j].mean()) ** 2).sum()) for j in (0, 1) if np.any(lab == j))
    return 1.0 - within / total


def seed_labels(data: WindowedData, n_classes: int, *, seed: int = 0, n_iter: int = 30, extra: int = 2,
                mask=None):
    """Class labels (N,) 0…K−1: k-means on the coordinates along the K−1 most bimodal of the top
    K−1+``extra`` components (standardised); returns (labels, all coordinates (N, C), chosen component indices).

    The largest variance is not always the conformational change (pose errors spread the data
    too), but a discrete change is the one that splits the particles into groups."""
    n_comp = max(1, n_classes - 1) + extra
    _, _, coords = components(data, n_comp, n_iter=n_iter, seed=seed, mask=mask)
    score = np.array([bimodality(coords[:, c]) for c in range(n_comp)])
    chosen = np.sort(np.argsort(-score, kind="stable")[: max(1, n_classes - 1)])
    use = coords[:, chosen]
    use = use / np.maximum(use.std(axis=0), 1e-12)
    return kmeans(use, n_classes, seed=seed), coords, chosen


def small_mask(mask, data: WindowedData) -> np.ndarray:
    """A full-box mask (0…1) brought to the analysis' small box."""
    return np.clip(fourier_resize(np.asarray(mask, np.float32), data.box, ndim=3), 0.0, 1.0)


def class_maps(data: WindowedData, labels, n_classes: int, box: int, regularisation: float = 1e-2) -> np.ndarray:
    """One map per class (K, box, box, box): each class's particles reconstructed at their poses in the
    small box, then brought to ``box`` by Fourier padding (so limited to the window's resolution)."""
    maps = []
    for k in range(n_classes):
        rows = np.nonzero(np.asarray(labels) == k)[0]
        vol = _reconstruct(data, data.ctf[rows] * data.X[rows], data.ctf[rows] ** 2, regularisation, rows)
        maps.append(fourier_resize(vol.astype(np.float32), box, ndim=3))
    return np.stack(maps).astype(np.float32)


__all__ = ["WindowedData", "small_box", "window_data", "fit_mean", "principal_component", "components", "kmeans",
           "bimodality", "seed_labels", "small_mask", "class_maps"]
