"""Patch-based local motion: per-patch trajectories and a smooth polynomial model in space and time.

After whole-frame alignment the frames still deform locally (beam-induced
motion differs across the ice).  The aligned frames are cut into N×M
overlapping patches; each patch's frames are aligned to the patch's own sum
(:func:`spa.motion.align.align_frames`, with a stronger B-factor: a patch
has little signal).  The measured residual shifts are then fitted with
RELION's third-order polynomial model (``rlnMotionModelVersion 1``; the same
basis MotionCor2 uses), per axis

    s(x, y, z) = Σ_{j,p} c_{j,p} · b_j(x, y) · z^p,   b = (1, x, x², y, y², xy),  p = 1, 2, 3,

with x = X/width − 0.5, y = Y/height − 0.5 (X, Y in pixels from the image
corner), z = frame number − first frame, and s in unbinned pixels: the
shift to APPLY at (X, Y), on top of the frame's global shift (zero at the first
frame by construction).  Coefficient index = 3·j + (p − 1) for x, +18 for y
(RELION's data_local_motion_model order).  Each patch's trajectory has an
unknown offset (its reference is its own sum): the fit carries one offset
per patch as a nuisance parameter, and drops measurements further than
4 robust standard deviations (and ``outlier_px``) from the model.

The model is applied by resampling each globally aligned frame at
r − s(r) with cubic B-splines (small residual shifts only; the global part
is an exact Fourier shift).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.backend import array_module, backend_of
from spa.motion.align import align_frames

N_TERMS = 18  # coefficients per axis


def patch_centres(ny: int, nx: int, patches_x: int, patches_y: int) -> np.ndarray:
    """(P, 2) centres (X, Y) in pixels, x fastest: RELION's bin centres ((i + ½)·width/N)."""
    xs = (np.arange(patches_x) + 0.5) * nx / patches_x
    ys = (np.arange(patches_y) + 0.5) * ny / patches_y
    X, Y = np.meshgrid(xs, ys)
    return np.stack([X.ravel(), Y.ravel()], axis=1)


def design(xn, yn, z) -> np.ndarray:
    """Design matrix rows (…, 18) for normalised positions xn, yn ∈ [−½, ½] and frame offsets z."""
    xn, yn, z = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (xn, yn, z)))
    spatial = [np.ones_like(xn), xn, xn * xn, yn, yn * yn, xn * yn]
    return np.stack([b * z**p for b in spatial for p in (1, 2, 3)], axis=-1)


def evaluate(coeffs: np.ndarray, xn, yn, z, xp=np):
    """(sx, sy) of the model (coeffs (36,)) at normalised positions (arrays of any shape) and frame offset z."""
    xn = xp.asarray(xn, dtype=xp.float32)
    yn = xp.asarray(yn, dtype=xp.float32)
    spatial = [1.0, xn, xn * xn, yn, yn * yn, xn * yn]
    out = []
    for axis in (0, 1):
        c = coeffs[axis * N_TERMS:(axis + 1) * N_TERMS]
        total = 0.0
        for j, b in enumerate(spatial):
            w = float(c[3 * j] * z + c[3 * j + 1] * z**2 + c[3 * j + 2] * z**3)
            total = total + w * b
        out.append(total + xp.zeros_like(xn))
    return out[0], out[1]


@dataclass
class LocalMotion:
    """Patch measurements and the fitted model (coefficients in unbinned pixels)."""

    coeffs: np.ndarray  # (36,)
    centres: np.ndarray  # (P, 2) patch centres X, Y in unbinned pixels
    shifts: np.ndarray  # (P, G, 2) measured residual shifts, unbinned pixels (offset removed)
    frames: np.ndarray  # (G,) frame offsets z of the measurements
    used: np.ndarray  # (P, G) measurement kept by the robust fit


def fit_model(centres_norm: np.ndarray, z: np.ndarray, shifts: np.ndarray, outlier_px: float = 1.0,
              rounds: int = 3, degree: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares fit of the 36 coefficients plus one offset per patch and axis.

    ``centres_norm`` (P, 2) normalised (xn, yn); ``z`` (G,); ``shifts`` (P, G, 2).
    ``degree`` (1–3): the highest power of time fitted (the others' coefficients are 0).
    Returns (coeffs (36,), offsets (P, 2), kept (P, G)).
    """
    P, G, _ = shifts.shape
    active = np.array([p <= degree for _ in range(6) for p in (1, 2, 3)])
    rows = design(centres_norm[:, None, 0], centres_norm[:, None, 1], z[None, :]).reshape(P * G, N_TERMS)[:, active]
    offsets_design = np.repeat(np.eye(P), G, axis=0)
    A = np.concatenate([rows, offsets_design], axis=1)
    b = shifts.reshape(P * G, 2)
    keep = np.ones(P * G, dtype=bool)
    sol = np.zeros((A.shape[1], 2))
    for _ in range(rounds):
        sol, *_ = np.linalg.lstsq(A[keep], b[keep], rcond=None)
        resid = np.linalg.norm(A @ sol - b, axis=1)
        sigma = 1.4826 * np.median(resid[keep])
        new = resid <= max(outlier_px, 4.0 * sigma)
        if np.array_equal(new, keep):
            break
        keep = new
    n_active = int(active.sum())
    coeffs = np.zeros(2 * N_TERMS)
    coeffs[:N_TERMS][active] = sol[:n_active, 0]
    coeffs[N_TERMS:][active] = sol[:n_active, 1]
    return coeffs, sol[n_active:], keep.reshape(P, G)


def _window(ny: int, nx: int, xp, edge: float = 0.15):
    """A separable raised-cosine (Tukey) taper, flat in the middle, 0 at the patch border."""
    def one(n):
        t = (np.arange(n) + 0.5) / n
        w = np.ones(n)
        e = max(edge, 1e-6)
        lo, hi = t < e, t > 1 - e
        w[lo] = 0.5 * (1 - np.cos(np.pi * t[lo] / e))
        w[hi] = 0.5 * (1 - np.cos(np.pi * (1 - t[hi]) / e))
        return w
    return xp.asarray(np.outer(one(ny), one(nx)), dtype=xp.float32)


def measure_patches(frames, pixel_size: float, patches_x: int, patches_y: int, *, bfactor: float = 500.0,
                    max_shift: float = 10.0, times: np.ndarray | None = None, overlap: float = 1.5):
    """Residual trajectories of N×M patches of globally aligned real frames (G, ny, nx).

    Returns (centres (P, 2) X, Y of the patch windows in pixels, shifts (P, G, 2) px, peaks (P, G)).
    """
    xp = array_module(frames)
    be = backend_of(frames)
    G, ny, nx = frames.shape
    ph = int(min(ny, 2 * round(overlap * ny / patches_y / 2)))
    pw = int(min(nx, 2 * round(overlap * nx / patches_x / 2)))
    taper = _window(ph, pw, xp)
    centres, shifts, peaks = [], [], []
    for cx, cy in patch_centres(ny, nx, patches_x, patches_y):
        y0 = int(np.clip(round(cy - ph / 2), 0, ny - ph))
        x0 = int(np.clip(round(cx - pw / 2), 0, nx - pw))
        patch = frames[:, y0:y0 + ph, x0:x0 + pw]
        patch = (patch - patch.mean(axis=(1, 2), keepdims=True)) * taper
        spectra = be.rfftn(patch.astype(xp.float32), axes=(-2, -1)).astype(xp.complex64)
        res = align_frames(spectra, pixel_size, bfactor=bfactor, max_shift=max_shift, times=times,
                           outlier_px=max_shift)
        centres.append((x0 + pw / 2, y0 + ph / 2))
        shifts.append(res.shifts)
        peaks.append(res.peaks)
    return np.array(centres), np.array(shifts), np.array(peaks)


def warp_frame(frame, coeffs: np.ndarray, z: float, scale: float):
    """Resample a (globally aligned) frame (ny, nx) at r − s(r): the local model at frame offset ``z``,
    its shifts (unbinned px) divided by ``scale`` (the binning) to the frame's pixels."""
    xp = array_module(frame)
    ndimage = _ndimage(xp)
    ny, nx = frame.shape
    rows = xp.arange(ny, dtype=xp.float32)[:, None]
    cols = xp.arange(nx, dtype=xp.float32)[None, :]
    sx, sy = evaluate(coeffs, cols / nx - 0.5, rows / ny - 0.5, z, xp)
    coords = xp.stack([rows - sy / scale + 0 * cols, cols - sx / scale + 0 * rows])
    coeff = ndimage.spline_filter(frame.astype(xp.float32), order=3, mode="grid-wrap", output=xp.float32)
    return ndimage.map_coordinates(coeff, coords, order=3, mode="grid-wrap", prefilter=False,
                                   output=xp.float32)


def _ndimage(xp):
    if xp is np:
        import scipy.ndimage as nd  # noqa: PLC0415

        return nd
    import cupyx.scipy.ndimage as nd  # noqa: PLC0415

    return nd
