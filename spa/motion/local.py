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
4 robust standard deviations (and ``outlier_px``) from the model.  The fit is
a ridge regression whose strength leave-one-patch-out cross-validation
chooses (:func:`fit_model`): where the patches are too noisy to predict each
other, the local model shrinks to nothing and the sums are those of the
whole-frame alignment.

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
    ridge: float = 0.0  # ridge strength chosen by cross-validation (inf: no local motion found)


#: ridge strengths tried (relative to the mean diagonal of the normal matrix); inf = no local motion
RIDGE_GRID = (0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0, np.inf)


def _centred(X: np.ndarray, y: np.ndarray, w: np.ndarray):
    """Per patch, the design rows (P, G, k) and shifts (P, G, 2) minus their weighted means over time:
    the per-patch offsets drop out of the fit (they are nuisance parameters)."""
    wsum = np.maximum(w.sum(axis=1, keepdims=True), 1e-12)[..., None]
    Xc = X - (w[..., None] * X).sum(axis=1, keepdims=True) / wsum
    yc = y - (w[..., None] * y).sum(axis=1, keepdims=True) / wsum
    return Xc, yc


def _solve(XtX, Xty, lam):
    if np.isinf(lam):
        return np.zeros_like(Xty)
    k = XtX.shape[0]
    return np.linalg.lstsq(XtX + lam * np.eye(k), Xty, rcond=None)[0]


def fit_model(centres_norm: np.ndarray, z: np.ndarray, shifts: np.ndarray, outlier_px: float = 1.0,
              rounds: int = 3, degree: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Fit the 36 coefficients (and one offset per patch and axis) to patch trajectories, shrunk as far as
    the data ask.

    ``centres_norm`` (P, 2) normalised (xn, yn); ``z`` (G,) frame offsets; ``shifts`` (P, G, 2) px.
    The coefficients are a ridge regression (time scaled to [0, 1] inside the
    fit) whose strength is chosen from :data:`RIDGE_GRID` by leave-one-patch-out
    cross-validation (the strongest shrinkage within one standard error of
    the smallest prediction error): the model made without a patch must
    clearly predict that patch's trajectory.  Infinite strength — no
    local motion — wins when the patch measurements are too noisy for the
    model to predict anything (small or smooth deformations at low dose);
    a noisy model would otherwise make the sums worse than whole-frame
    alignment.  Measurements further than ``outlier_px`` and 4 robust SDs from
    the model are dropped.  ``degree`` (1–3) is the highest power of time.

    Returns (coeffs (36,), offsets (P, 2), kept (P, G), ridge strength chosen).
    """
    P, G, _ = shifts.shape
    active = np.array([p <= degree for _ in range(6) for p in (1, 2, 3)])
    zmax = max(float(np.max(np.abs(z))), 1e-9)
    powers = np.array([p for _ in range(6) for p in (1, 2, 3)])[active]
    X = design(centres_norm[:, None, 0], centres_norm[:, None, 1], z[None, :] / zmax)[..., active]  # (P, G, k)
    w = np.ones((P, G))
    lam_best, coef = np.inf, np.zeros((X.shape[-1], 2))
    for _ in range(rounds):
        Xc, yc = _centred(X, shifts, w)
        per_patch = [((w[p][:, None] * Xc[p]).T @ Xc[p], (w[p][:, None] * Xc[p]).T @ yc[p]) for p in range(P)]
        XtX = sum(a for a, _ in per_patch)
        Xty = sum(b for _, b in per_patch)
        scale = float(np.mean(np.diag(XtX))) or 1.0
        errors = np.zeros((len(RIDGE_GRID), P))
        for i, lam in enumerate(RIDGE_GRID):
            for p in range(P):
                c = _solve(XtX - per_patch[p][0], Xty - per_patch[p][1], lam * scale)
                errors[i, p] = float((w[p][:, None] * (yc[p] - Xc[p] @ c) ** 2).sum())
        # the one-standard-error rule: the strongest shrinkage whose error is within one standard error
        # (over patches) of the smallest — a model must clearly predict better to be used
        total = errors.sum(axis=1)
        best = int(np.argmin(total))
        limit = total[best] + np.sqrt(P) * errors[best].std(ddof=1) if P > 1 else total[best]
        lam_best = RIDGE_GRID[max(i for i in range(len(RIDGE_GRID)) if total[i] <= limit)]
        coef = _solve(XtX, Xty, lam_best * scale)
        resid = np.linalg.norm(yc - Xc @ coef, axis=2)
        sigma = 1.4826 * np.median(resid[w > 0])
        new = (resid <= max(outlier_px, 4.0 * sigma)).astype(float)
        if np.array_equal(new, w):
            break
        w = new
    coef = coef / (zmax ** powers)[:, None]  # back to z in frames
    X_frames = design(centres_norm[:, None, 0], centres_norm[:, None, 1], z[None, :])[..., active]
    wsum = np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    offsets = ((w[..., None] * (shifts - X_frames @ coef)).sum(axis=1)) / wsum
    coeffs = np.zeros(2 * N_TERMS)
    coeffs[:N_TERMS][active] = coef[:, 0]
    coeffs[N_TERMS:][active] = coef[:, 1]
    return coeffs, offsets, w > 0, float(lam_best)


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
