"""Reprojections of the refined map against the 2D class averages (projection matching).

A 2D class average is (close to) a projection of the molecule, CTF-corrected;
if the refined map is right, some projection of it matches every good class.
For each class average the best projection is found by projection matching,
on both Fourier-cropped to :func:`working_box` (Nyquist a third of the
matching resolution):

1. both are band-passed between ``highpass`` and ``resolution`` Å (the
   high-pass removes the particle's overall envelope: at low resolution any
   compact blob of the right size matches some projection of any other) and
   multiplied by a soft circular mask (radius 0.45 of the box, 3 px edge),
   then normalised to zero mean and unit norm inside it;
2. every orientation of a coarse grid (HEALPix order ``order`` directions in
   the asymmetric unit of the point group × all in-plane angles ψ at the same
   step, :func:`spa.geometry.sampling.orientation_grid`) is projected
   (:class:`spa.em.projector.Projector`); the correlation over in-plane shifts
   up to ``max_shift`` px comes from one cross-correlation FFT per pair;
3. the best orientation is polished by a local search of small rotations
   (steps halving from half the grid step, three rounds).

The score is the normalised cross-correlation (Pearson, inside the mask) of
the class average with its best reprojection: about 1 for a class that is a
projection of the map (less as its noise grows), low for a class of
something else.  Projections cannot tell a map from its mirror image (the
projection of V(x, y, −z) along z is that of V), so this says nothing about
the hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.em.projector import Projector
from spa.fourier import highpass_weights, irfft_centered, lowpass_weights, rfft_centered, soft_circular_mask
from spa.geometry.euler import euler_to_matrix, matrix_to_euler
from spa.geometry.sampling import orientation_grid
from spa.geometry.symmetry import axis_rotation


@dataclass
class Reprojections:
    """Per class: ``correlation`` (NaN for an empty class), best ``angles`` (K, 3) RELION Euler degrees,
    ``shifts`` (K, 2) px (of the input box) that move the projection onto the class, and ``classes`` and
    ``projections`` (K, b, b) at the working box (filtered, masked, normalised) for figures."""

    correlation: np.ndarray
    angles: np.ndarray
    shifts: np.ndarray
    classes: np.ndarray
    projections: np.ndarray


def _prepare(images, mask, pixel_size: float, resolution: float, highpass: float | None = None):
    """Band-pass (``highpass`` … ``resolution`` Å), mask, zero mean and unit norm inside the mask (n, B, B)
    float64; empty images stay 0."""
    images = np.asarray(images, np.float32)
    box = images.shape[-1]
    w = lowpass_weights(box, pixel_size, resolution)
    if highpass:
        w = w * highpass_weights(box, pixel_size, highpass)
    out = np.asarray(irfft_centered(rfft_centered(images) * w, box), np.float64) * mask
    w = mask / mask.sum()
    mean = (out * w).sum(axis=(-2, -1), keepdims=True)
    out = (out - mean) * mask
    norm = np.sqrt((out**2).sum(axis=(-2, -1), keepdims=True))
    return np.where(norm > 0, out / np.maximum(norm, 1e-30), 0.0)


def _shift_window(box: int, max_shift: float) -> np.ndarray:
    """Boolean (B, B) over cross-correlation lags in FFT order: |lag| ≤ max_shift px."""
    lag = np.fft.fftfreq(box) * box
    return lag[:, None] ** 2 + lag[None, :] ** 2 <= max_shift**2 + 1e-9


def _best_matches(classes_f, projections, mask, pixel_size, resolution, highpass, window):
    """(best correlation (K,), index into ``projections`` (K,), lag (K, 2) (x, y) px) over projections."""
    p = _prepare(projections, mask, pixel_size, resolution, highpass)
    pf = np.fft.rfft2(p)
    box = p.shape[-1]
    cc = np.fft.irfft2(classes_f[:, None] * pf[None].conj(), s=(box, box))  # (K, R, B, B): class ⋆ projection
    cc = np.where(window, cc, -np.inf).reshape(cc.shape[0], cc.shape[1], -1)
    flat = cc.argmax(axis=-1)
    best = np.take_along_axis(cc, flat[..., None], -1)[..., 0]  # (K, R)
    j = best.argmax(axis=1)
    pos = flat[np.arange(len(j)), j]
    ly, lx = np.unravel_index(pos, (box, box))
    lag = np.stack([np.where(lx > box // 2, lx - box, lx), np.where(ly > box // 2, ly - box, ly)], axis=1)
    return best[np.arange(len(j)), j], j, lag


def _small_rotations(step_deg: float) -> np.ndarray:
    """Identity and rotations by ±step about x, y and z, and about the 8 diagonals (15, 3, 3)."""
    axes = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1), (1, 1, -1), (1, -1, 1), (-1, 1, 1)]
    return np.stack([np.eye(3)] + [axis_rotation(a, s * step_deg) for a in axes for s in (1, -1)])


def working_box(box: int, pixel_size: float, resolution: float, minimum: int = 32) -> int:
    """Even box (≤ ``box``) whose Nyquist is at most a third of ``resolution`` Å: matching at 10 Å needs no
    finer pixels than ~3 Å, and a smaller box makes every projection and FFT cheaper."""
    need = int(np.ceil(box * pixel_size * 3.0 / resolution))
    return int(min(box, max(minimum, need + need % 2)))


#: elements (classes × projections × pixels) of one cross-correlation block (float64: 128 MB)
_BLOCK = 1 << 24


def match_classes(volume, classes, pixel_size: float, *, symmetry: str = "C1", resolution: float = 10.0,
                  highpass: float | None = 30.0, order: int = 2, max_shift: float = 4.0,
                  progress=None) -> Reprojections:
    """Projection matching of each class average (K, B, B) against the map (B, B, B), both at ``pixel_size``
    Å/px (see the module docstring).  Both are first Fourier-cropped to :func:`working_box`; ``max_shift``
    and the shifts returned are in pixels of the original box; the images returned are at the working box.
    ``progress(done, total)`` per batch of the grid."""
    from spa.fourier import fourier_resize

    volume = np.asarray(volume, np.float32)
    classes = np.asarray(classes, np.float32)
    full_box = volume.shape[-1]
    if classes.shape[-2:] != (full_box, full_box):
        raise ValueError(f"class averages of {classes.shape[-1]} px against a map of {full_box} px")
    box = working_box(full_box, pixel_size, resolution)
    scale = full_box / box
    volume, classes = fourier_resize(volume, box, ndim=3), fourier_resize(classes, box, ndim=2)
    pixel_size = pixel_size * scale
    mask = soft_circular_mask(box, 0.45 * box, 3.0).astype(np.float64)
    window = _shift_window(box, max(1.0, max_shift / scale))
    c = _prepare(classes, mask, pixel_size, resolution, highpass)
    empty = ~np.any(c != 0, axis=(-2, -1))
    cf = np.fft.rfft2(c)
    projector = Projector(volume)
    rot, tilt, psi = orientation_grid(order, symmetry)
    grid = euler_to_matrix(rot, tilt, psi)
    k = len(classes)
    per_block = max(1, min(k, _BLOCK // (64 * box * box)))  # classes per block: ≥ 64 projections a batch
    batch = max(1, min(1024, _BLOCK // (per_block * box * box)))
    best = np.full(k, -np.inf)
    best_r = np.zeros((k, 3, 3))
    starts = list(range(0, len(grid), batch))
    for i, s in enumerate(starts):
        r = grid[s:s + batch]
        images = projector.project_images(r.astype(np.float32))
        for c0 in range(0, k, per_block):
            score, j, _ = _best_matches(cf[c0:c0 + per_block], images, mask, pixel_size, resolution, highpass,
                                        window)
            better = score > best[c0:c0 + per_block]
            idx = np.arange(c0, c0 + len(score))[better]
            best[idx], best_r[idx] = score[better], r[j[better]]
        if progress:
            progress(i + 1, len(starts))
    step = 360.0 / (6 * 2**order) / 2
    lag = np.zeros((k, 2))
    for _ in range(3):  # local polish: R·Δ for small rotations Δ, per class
        deltas = _small_rotations(step)
        for ci in range(k):
            cand = best_r[ci] @ deltas
            score, j, lg = _best_matches(cf[ci:ci + 1], projector.project_images(cand.astype(np.float32)), mask,
                                         pixel_size, resolution, highpass, window)
            if score[0] >= best[ci]:
                best[ci], best_r[ci], lag[ci] = score[0], cand[j[0]], lg[0]
        step /= 2
    proj = _prepare(projector.project_images(best_r.astype(np.float32)), mask, pixel_size, resolution)
    # show each projection moved by its lag onto the class (a circular shift by whole pixels)
    proj = np.stack([np.roll(p, (int(ly), int(lx)), axis=(0, 1)) for p, (lx, ly) in zip(proj, lag)])
    angles = np.column_stack(matrix_to_euler(best_r))
    corr = np.where(empty, np.nan, best)
    shown = _prepare(classes, mask, pixel_size, resolution)  # for the figure: low-passed only
    return Reprojections(corr, angles, lag * scale, shown.astype(np.float32), proj.astype(np.float32))


def plot_histogram(path, result: Reprojections, threshold: float | None = None) -> None:
    """Histogram of the classes' best correlations with the map's reprojections."""
    from spa.plots import _pyplot, save_figure

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    c = result.correlation[np.isfinite(result.correlation)]
    ax.hist(c, bins=np.linspace(min(0.0, c.min(initial=0.0)), 1.0, 21), color="tab:blue", edgecolor="white")
    if threshold is not None:
        ax.axvline(threshold, color="tab:red", ls="--", lw=1, label=f"flagged below {threshold:.2f}")
        ax.legend(fontsize=8)
    ax.set_xlabel("correlation of class average with best reprojection")
    ax.set_ylabel("classes")
    save_figure(fig, path)


def plot_worst(path, result: Reprojections, n: int = 6) -> list[int]:
    """The ``n`` classes with the lowest correlation (top row) above their best reprojections (bottom row);
    returns their 0-based class indices."""
    from spa.plots import _pyplot, save_figure

    finite = np.nonzero(np.isfinite(result.correlation))[0]
    worst = [int(i) for i in finite[np.argsort(result.correlation[finite])][:n]]
    plt = _pyplot()
    cols = max(len(worst), 1)
    fig, axes = plt.subplots(2, cols, figsize=(1.6 * cols + 0.4, 3.6), dpi=100, squeeze=False)
    for j, i in enumerate(worst):
        for row, img in enumerate((result.classes[i], result.projections[i])):
            ax = axes[row, j]
            ax.imshow(img, cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, j].set_title(f"class {i + 1}\ncc {result.correlation[i]:.2f}", fontsize=8)
    axes[0, 0].set_ylabel("class average", fontsize=8)
    axes[1, 0].set_ylabel("reprojection", fontsize=8)
    save_figure(fig, path)
    return worst
