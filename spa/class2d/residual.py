"""What a class average does not explain: per-particle edge / second-particle tests and class features.

A practitioner rejects a 2D class, or a particle, when something besides one
centred particle is in the box: a carbon edge (a straight step of density,
with CTF fringes, running across the box) or a second particle overlapping
the first off-centre.  Classification alone keeps them: the masked class
average only looks at the particle disc, and an overlapping pair is assigned
to whichever view its centred member resembles.

Per particle (:func:`residual_scores`): the model of particle i is its class
average A_k (CTF-corrected, from class2d) rotated by ψ_i and moved by its
origin, as the E-step sees it (:func:`spa.class2d.synthetic.rotate_shift`:
image point x samples the average at R_ψᵀ(x + o)), multiplied by the
particle's CTF and by the class's least-squares scale.  The residual
X_i − model_i is whitened with the run's noise spectrum σ² and tested twice:

* ``edge``: a straight edge is a one-dimensional function across the box.
  The whitened residual inside the inscribed circle is projected along lines
  (a Radon transform, 36 angles, 1 px bins); each bin is divided by the
  square root of its pixel count, so for white noise every bin is N(0, 1).
  The energy of the profile at angle θ, E_θ = Σ_t q_θ(t)², is large for an
  edge at θ; residue of the centred particle or a second particle raise E_θ
  at every angle alike, so the score is max_θ E_θ − median_θ E_θ.
* ``blob``: a second particle off-centre.  The whitened residual is
  correlated with matched filters: every class average (its disc of particle
  radius; the 24 most populated classes where there are more) at in-plane
  rotations every ``rotation_step`` degrees, multiplied
  by the particle's CTF, over σ²; the score is the largest normalised
  correlation z over the templates and over positions ≥ ``min_distance`` ×
  particle radius from the centre (a second particle's centre lies at least
  about one radius away when the pair overlaps; inside that radius the
  centred particle's own mismatch would dominate).  The search runs on the
  transforms cropped to ``view_resolution`` (default diameter / 8): a whole
  particle is found at low resolution, and the finer shells only add noise.
  A second particle is another view of the same molecule, so the class
  averages match it far better than one rotationally averaged blob did
  (measured, 5000 images, K = 20: pairs found at the score that 2 % of good
  particles pass, SNR 0.1: 0.79 → 0.97; SNR 0.05: 0.42–0.44 → 0.76–0.86).

Both scores are calibrated against the particle's own class (:func:`robust_z`):
z = (score − median) / (1.4826 · MAD) over the class's members, and the
one-sided normal p of z.  Junk is a minority of a class that is kept, so the
median and MAD describe its good particles, residual mismatch of the average
to their views included (pure-noise decoys lack that mismatch and were far too
conservative: noise images never scored below p 0.2).  A small p: something in
the box the class average does not explain, more than the class's good
particles show.  The scores are right-skewed (maxima over angles and
positions), so the p-values are a scale, not exact error rates.

Per class (:func:`aligned_features`): each particle is phase-flipped
(its CTF's sign), brought into its class's frame (the inverse of the pose)
and averaged *without* the class2d mask, in two halves (odd/even particles)
so the noise power of the average can be subtracted.  Measured inside the
inscribed circle of that average (particle radius r_p = the mask radius):

* ``outside_ratio``: signal power per pixel outside r_p over that inside
  (noise power, from the half-set difference, removed from both);
* ``edge_score``: the fraction of the average's variance that one straight
  profile (the Radon projection at the best angle, the same binning as
  above) explains: ≈ 1 for a stripe or edge, small for a compact particle;
* ``com_radius``: distance of the positive mass's centre from the box
  centre, ÷ r_p (class2d centres its averages, so aligned averages of good
  classes stay near 0);
* ``gyration_ratio``: radius of gyration of the positive mass, ÷ r_p.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

N_ANGLES = 36  # Radon angles over 180°
MAX_TEMPLATE_CLASSES = 24  # class averages searched for a second particle (most populated first)


# -- geometry -------------------------------------------------------------------------------
def _centred_grid(box: int):
    c = np.arange(box) - box // 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    return xx.astype(np.float64), yy.astype(np.float64)


def model_image(average: np.ndarray, psi_deg: float, origin_px) -> np.ndarray:
    """The class average as particle (ψ, origin px, RELION sign) shows it (cubic resampling)."""
    from spa.class2d.synthetic import rotate_shift

    return rotate_shift(average, psi_deg, origin_px)


def to_class_frame(image: np.ndarray, psi_deg: float, origin_px) -> np.ndarray:
    """The inverse of :func:`model_image`: ``image`` resampled into its class average's frame."""
    from scipy import ndimage

    box = image.shape[-1]
    xx, yy = _centred_grid(box)
    p = np.deg2rad(psi_deg)
    # model_image: image x samples the average at y = Aᵀ(x + o), A = [[c, s], [−s, c]]; so x = A·y − o
    sx = np.cos(p) * xx + np.sin(p) * yy - origin_px[0]
    sy = -np.sin(p) * xx + np.cos(p) * yy - origin_px[1]
    return ndimage.map_coordinates(image, [sy + box // 2, sx + box // 2], order=1, mode="constant")


class Radon:
    """Pixel-driven Radon projection over the inscribed circle: (B², n_angles·n_bins) sparse matrix,
    each column (a line at angle θ, offset t) summing the pixels whose centre lies within 1 px of it with
    linear weights; ``norm`` = √(Σ weights²) per line (the SD of the line sum for unit white noise)."""

    def __init__(self, box: int, n_angles: int = N_ANGLES):
        from scipy import sparse

        xx, yy = _centred_grid(box)
        radius = box / 2 - 1
        inside = np.flatnonzero((np.hypot(xx, yy) <= radius).ravel())
        self.inside = inside
        n_bins = int(2 * np.ceil(radius) + 1)
        rows, cols, vals = [], [], []
        for a, theta in enumerate(np.linspace(0, np.pi, n_angles, endpoint=False)):
            t = np.cos(theta) * xx.ravel()[inside] + np.sin(theta) * yy.ravel()[inside] + n_bins // 2
            lo = np.floor(t).astype(np.int64)
            frac = t - lo
            for b, w in ((lo, 1 - frac), (lo + 1, frac)):
                ok = (b >= 0) & (b < n_bins) & (w > 0)
                rows.append(inside[ok])
                cols.append(a * n_bins + b[ok])
                vals.append(w[ok])
        self.n_angles, self.n_bins = n_angles, n_bins
        self.matrix = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                        shape=(box * box, n_angles * n_bins))
        sq = self.matrix.multiply(self.matrix).sum(axis=0).A.ravel()
        count = self.matrix.sum(axis=0).A.ravel()
        self.norm = np.sqrt(np.maximum(sq, 1e-12)).reshape(n_angles, n_bins)
        self.count = count.reshape(n_angles, n_bins)
        self.used = self.count > 0.5  # lines with at least about one pixel

    def project(self, images: np.ndarray) -> np.ndarray:
        """Line sums (n, n_angles, n_bins) of ``images`` (n, B, B)."""
        flat = np.asarray(images, np.float64).reshape(len(images), -1)
        return np.asarray(self.matrix.T @ flat.T).T.reshape(len(images), self.n_angles, self.n_bins)

    def edge_score(self, whitened: np.ndarray) -> np.ndarray:
        """max_θ E_θ − median_θ E_θ per image (see the module docstring)."""
        q = np.where(self.used, self.project(whitened) / self.norm, 0.0)
        energy = (q * q).sum(axis=2)
        return energy.max(axis=1) - np.median(energy, axis=1)

    def explained_fraction(self, images: np.ndarray) -> np.ndarray:
        """Per image: the largest fraction, over angles, of its variance (inside the circle) that a profile
        constant along lines explains (between-line sum of squares ÷ total)."""
        flat = np.asarray(images, np.float64).reshape(len(images), -1)[:, self.inside]
        centred = np.asarray(images, np.float64) - flat.mean(axis=1)[:, None, None]
        total = (centred.reshape(len(images), -1)[:, self.inside] ** 2).sum(axis=1)
        sums = self.project(centred)
        between = np.where(self.used, sums * sums / np.maximum(self.count, 1e-12), 0.0).sum(axis=2)
        return between.max(axis=1) / np.maximum(total, 1e-30)


# -- per-particle residual tests ---------------------------------------------------------
@dataclass
class ResidualContext:
    """What the residual tests share: averages, noise model, the particle's radius and the filters."""

    averages: np.ndarray  # (K, B, B) class averages (CTF-corrected)
    sigma2: np.ndarray  # (G, B//2+1) noise power per shell and optics group (run_model.star)
    pixel_size: float
    radius_px: float  # particle (mask) radius
    min_distance: float = 1.0  # blob search from this many particle radii out
    view_resolution: float | None = None  # Å the blob search is cropped to (None: particle diameter / 8)
    rotation_step: float = 30.0  # degrees between the in-plane rotations of the blob templates
    template_classes: np.ndarray | None = None  # 0-based classes whose averages are blob templates (None: all)

    def __post_init__(self):
        from spa.fourier import shells_2d

        self.box = self.averages.shape[-1]
        self.shells = np.minimum(shells_2d(self.box), self.sigma2.shape[1] - 1)
        self.radon = Radon(self.box)
        resolution = self.view_resolution or 2.0 * self.radius_px * self.pixel_size / 8.0
        self.small = min(self.box, 2 * int(np.ceil(self.box * self.pixel_size / max(resolution, 1e-6))))
        self.small += self.small % 2
        self.view_templates = self._view_templates()
        lags = np.arange(self.small)
        lags = np.minimum(lags, self.small - lags) * (self.box / self.small)  # px of the full box, FFT order
        dist = np.hypot(lags[:, None], lags[None, :])
        self.search = (dist >= self.min_distance * self.radius_px) & (dist <= self.box / 2 - 2)

    def crop(self, f: np.ndarray) -> np.ndarray:
        """rfft arrays (..., B, B//2+1) cropped to the blob search's box (..., b, b//2+1)."""
        if self.small >= self.box:
            return f
        h = self.small // 2
        return np.concatenate([f[..., :h, : h + 1], f[..., self.box - h :, : h + 1]], axis=-2)

    def _view_templates(self) -> np.ndarray:
        """Cropped transforms (T, b, b//2+1) of the class averages' particle discs at every rotation, centred on
        the origin; averages with no signal (empty classes) are left out."""
        xx, yy = _centred_grid(self.box)
        disc = np.hypot(xx, yy) <= self.radius_px + 2
        classes = range(len(self.averages)) if self.template_classes is None else self.template_classes
        templates = []
        for k in classes:
            average = self.averages[int(k)]
            if not np.isfinite(average).all() or float(np.abs(average * disc).max()) <= 0:
                continue
            for psi in np.arange(0.0, 360.0, self.rotation_step):
                t = model_image(average, float(psi), np.zeros(2)) * disc
                templates.append(self.crop(np.fft.rfft2(np.fft.ifftshift(t))))
        if not templates:  # no class with signal: a disc, so the test still runs (and finds nothing special)
            templates.append(self.crop(np.fft.rfft2(np.fft.ifftshift(disc.astype(np.float64)))))
        return np.stack(templates)

    def whiten_ft(self, groups) -> np.ndarray:
        """1/σ per rfft pixel (n, B, B//2+1) for optics groups ``groups`` (0-based)."""
        s2 = np.maximum(self.sigma2[np.asarray(groups, np.int64)][:, self.shells], 1e-30)
        s2[:, 0, 0] = np.inf  # the mean is not tested
        return 1.0 / np.sqrt(s2)

    def scores(self, residuals: np.ndarray, ctfs: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray]:
        """(edge score, blob z) per residual image (n, B, B) with its CTF (n, B, B//2+1)."""
        f = np.fft.rfft2(residuals)
        iw = self.whiten_ft(groups)
        white = np.fft.irfft2(f * iw, s=(self.box, self.box))
        edge = self.radon.edge_score(white)
        f, iw, ctfs = self.crop(f), self.crop(iw), self.crop(ctfs)
        white_ft = f * iw
        blob = np.full(len(residuals), -np.inf)
        for template in self.view_templates:  # a loop: (n, T, b, b) at once would not fit for large T
            filtered = ctfs * template[None] * iw  # the template as the whitened residual sees it
            norm = np.sqrt(2.0 * (np.abs(filtered) ** 2).sum(axis=(1, 2)))  # rfft half plane: ×2
            corr = np.fft.irfft2(white_ft * np.conj(filtered), s=(self.small, self.small)) * self.small**2
            z = corr / np.maximum(norm, 1e-30)[:, None, None]
            blob = np.maximum(blob, np.where(self.search[None], z, -np.inf).max(axis=(1, 2)))
        return edge, blob


def residual_images(images, averages, cls, psi, origins_px, ctfs, scales) -> np.ndarray:
    """X_i − scale_k · CTF_i · (average k at particle i's pose), (n, B, B)."""
    box = images.shape[-1]
    models = np.stack([model_image(averages[k], p, o) for k, p, o in zip(cls, psi, origins_px)])
    models = np.fft.irfft2(np.fft.rfft2(models) * ctfs, s=(box, box))
    return images - scales[cls][:, None, None] * models


def class_scales(images, averages, cls, psi, origins_px, ctfs, n_classes: int) -> np.ndarray:
    """Per class: Σ⟨X, M⟩ / Σ⟨M, M⟩ over its particles (M = CTF · posed average), 1 where undefined."""
    box = images.shape[-1]
    models = np.stack([model_image(averages[k], p, o) for k, p, o in zip(cls, psi, origins_px)])
    models = np.fft.irfft2(np.fft.rfft2(models) * ctfs, s=(box, box))
    xm = np.bincount(cls, (images * models).sum(axis=(1, 2)), minlength=n_classes)
    mm = np.bincount(cls, (models * models).sum(axis=(1, 2)), minlength=n_classes)
    return np.where(mm > 0, xm / np.maximum(mm, 1e-30), 1.0)


def robust_z(scores, cls, min_members: int = 10) -> np.ndarray:
    """(score − median) / (1.4826 · MAD) over the members of each particle's class (0-based ``cls``); classes
    with fewer than ``min_members`` particles use the median and MAD of all of them."""
    scores, cls = np.asarray(scores, np.float64), np.asarray(cls, np.int64)

    def centre_scale(v):
        med = np.median(v)
        return med, max(1.4826 * np.median(np.abs(v - med)), 1e-12)

    z = np.empty_like(scores)
    pooled = centre_scale(scores) if len(scores) else (0.0, 1.0)
    for c in np.unique(cls):
        m = cls == c
        med, mad = centre_scale(scores[m]) if m.sum() >= min_members else pooled
        z[m] = (scores[m] - med) / mad
    return z


def calibration_scores(scores, log_scores: bool) -> np.ndarray:
    """The scores the class null is fitted to: the scores themselves, or with ``log_scores`` their logarithms
    (scores below 1e-3 count as 1e-3).  Both residual scores are maxima (over angles, over positions) and
    right-skewed: a robust z of the raw score puts too many good particles in the upper tail (measured, 1500
    particles, K = 16–20: 2.8–3.9 % of good particles with blob z > 2.05, nominal 2 %; edge z > 3.09 0.5 %,
    nominal 0.1 %).  The logarithm makes the good particles' scores nearly symmetric (skewness 0.4–1.2 →
    −0.3–0.1) and the p-values error rates (blob p < 0.02: 1.0 % of good; edge p < 0.01: 0.5 %)."""
    scores = np.asarray(scores, np.float64)
    return np.log(np.maximum(scores, 1e-3)) if log_scores else scores


def pvalues(scores, decoy_scores) -> np.ndarray:
    """(1 + #decoys ≥ score) / (1 + #decoys) per score."""
    null = np.sort(np.asarray(decoy_scores, np.float64))
    above = len(null) - np.searchsorted(null, np.asarray(scores, np.float64), side="left")
    return (1.0 + above) / (1.0 + len(null))


# -- per-class features from aligned, unmasked averages ----------------------------------
def aligned_averages(images, cls, psi, origins_px, ctfs, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sum of half 1, sum of half 2, counts (K, 2)): phase-flipped particles in their class frame."""
    box = images.shape[-1]
    flipped = np.fft.irfft2(np.fft.rfft2(images) * np.sign(ctfs), s=(box, box))
    sums = np.zeros((2, n_classes, box, box))
    counts = np.zeros((n_classes, 2))
    for j, (k, p, o) in enumerate(zip(cls, psi, origins_px)):
        h = j % 2
        sums[h, k] += to_class_frame(flipped[j], p, o)
        counts[k, h] += 1
    return sums[0], sums[1], counts


def aligned_features(half1, half2, counts, radius_px: float) -> pd.DataFrame:
    """Class features (module docstring) from the half sums of :func:`aligned_averages`; one row per class."""
    from spa.fourier import real_radius

    k, box = half1.shape[0], half1.shape[-1]
    n1 = np.maximum(counts[:, 0], 1)[:, None, None]
    n2 = np.maximum(counts[:, 1], 1)[:, None, None]
    avg = (half1 + half2) / np.maximum(counts.sum(axis=1), 1)[:, None, None]
    diff = half1 / n1 - half2 / n2  # noise only: its power, scaled, is the average's noise power
    wn = (n1 * n2 / (n1 + n2) ** 2)  # var(avg noise) = var(diff) · n1·n2/(n1+n2)²
    r = real_radius(box, 2)
    disc = r <= box / 2 - 1
    inside, outside = r <= radius_px, (r > radius_px) & disc
    avg = avg - np.array([a[outside].mean() if outside.any() else 0.0 for a in avg])[:, None, None]
    noise_pow = diff * diff * wn

    def power(a, region):
        return (a[:, region] ** 2).mean(axis=1)

    p_in = np.maximum(power(avg, inside) - noise_pow[:, inside].mean(axis=1), 1e-30)
    p_out = np.maximum(power(avg, outside) - noise_pow[:, outside].mean(axis=1), 0.0) if outside.any() \
        else np.zeros(k)
    edge = Radon(box).explained_fraction(avg)
    xx, yy = _centred_grid(box)
    w = np.where(disc[None], np.maximum(avg, 0.0), 0.0)
    tot = np.maximum(w.sum(axis=(1, 2)), 1e-30)
    cx = (w * xx).sum(axis=(1, 2)) / tot
    cy = (w * yy).sum(axis=(1, 2)) / tot
    rg = np.sqrt((w * ((xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2)).sum(axis=(1, 2)) / tot)
    return pd.DataFrame({"outside_ratio": p_out / p_in, "edge_score": edge,
                         "com_radius": np.hypot(cx, cy) / radius_px, "gyration_ratio": rg / radius_px})


# -- the whole analysis over a class2d run's particles -------------------------------------
def analyse_particles(table: pd.DataFrame, source, averages: np.ndarray, sigma2: np.ndarray, pixel_size: float,
                      radius_px: float, *, rows=None, chunk: int = 256, min_distance: float = 1.0,
                      min_members: int = 10, log_scores: bool = False
                      ) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Per-particle residual tests and per-class aligned features for ``rows`` of ``table`` (default all).

    ``table``: class2d's run_data.star particles (rlnClassNumber, rlnAnglePsi, rlnOriginX/YAngst, CTF);
    ``source``: their images (``read(positions)``); ``sigma2`` the run's noise spectrum (whitening).
    Each score is calibrated against its class's members (:func:`robust_z`; classes of fewer than
    ``min_members`` analysed particles against all of them); with ``log_scores`` the robust z is taken of
    the scores' logarithms (:func:`calibration_scores`).  Returns (particles: rlnSpaEdgeScore,
    rlnSpaBlobScore, rlnSpaEdgeZ, rlnSpaBlobZ, rlnSpaEdgePValue, rlnSpaBlobPValue (one-sided normal p of the
    z) for every row of ``table``, NaN / 1 for rows not analysed; classes: :func:`aligned_features` per class, 1-based rlnClassNumber; the per-class model scales).
    """
    from scipy.stats import norm

    from spa.em.engine import particle_arrays, particle_ctfs, take

    n, k = len(table), averages.shape[0]
    averages = np.asarray(averages, np.float64)
    rows = np.arange(n) if rows is None else np.asarray(rows, np.int64)
    parts = particle_arrays(table, pixel_size)
    cls = table["rlnClassNumber"].to_numpy(np.int64) - 1
    psi = table["rlnAnglePsi"].to_numpy(np.float64)
    origins = parts["centres"]
    box = averages.shape[-1]

    def ctfs_of(idx):
        return np.asarray(particle_ctfs(take(parts, idx), box, pixel_size), np.float64)

    def read(idx):
        return np.asarray(source.read(idx), np.float64)

    # pass 1: per-class scales of the model and the aligned, unmasked half averages
    xm, mm = np.zeros(k), np.zeros(k)
    h1, h2, counts = np.zeros((k, box, box)), np.zeros((k, box, box)), np.zeros((k, 2))
    for start in range(0, len(rows), chunk):
        idx = rows[start : start + chunk]
        images, ctfs = read(idx), ctfs_of(idx)
        models = np.stack([model_image(averages[c], p, o) for c, p, o in zip(cls[idx], psi[idx], origins[idx])])
        models = np.fft.irfft2(np.fft.rfft2(models) * ctfs, s=(box, box))
        xm += np.bincount(cls[idx], (images * models).sum(axis=(1, 2)), minlength=k)
        mm += np.bincount(cls[idx], (models * models).sum(axis=(1, 2)), minlength=k)
        a, b, c = aligned_averages(images, cls[idx], psi[idx], origins[idx], ctfs, k)
        h1, h2, counts = h1 + a, h2 + b, counts + c
    scales = np.where(mm > 0, xm / np.maximum(mm, 1e-30), 1.0)
    # the blob templates: the most populated classes' averages (at most MAX_TEMPLATE_CLASSES views: the cost
    # grows with their number, and a few dozen views already cover what a second particle can look like)
    members = np.bincount(cls[rows], minlength=k)[:k]
    populated = np.flatnonzero(members > 0)
    templates = populated[np.argsort(-members[populated], kind="stable")][:MAX_TEMPLATE_CLASSES]
    ctx = ResidualContext(averages, np.asarray(sigma2, np.float64), pixel_size, radius_px, min_distance,
                          template_classes=np.sort(templates) if len(templates) else None)

    # pass 2: the residual scores of the particles
    edge, blob = np.full(n, np.nan), np.full(n, np.nan)
    for start in range(0, len(rows), chunk):
        idx = rows[start : start + chunk]
        ctfs = ctfs_of(idx)
        res = residual_images(read(idx), averages, cls[idx], psi[idx], origins[idx], ctfs, scales)
        edge[idx], blob[idx] = ctx.scores(res, ctfs, parts["group"][idx])

    # the null: the same score over the class's own members (robust z, median / MAD, one-sided normal p).
    # Pure-noise decoys proved too conservative (noise images never scored below p 0.2): a good particle's
    # residual also holds the class average's mismatch to its view, which decoys lack; junk is a minority
    # of a class, so the median and MAD of its members describe its good particles.
    p_edge, p_blob = np.ones(n), np.ones(n)
    z_edge, z_blob = np.full(n, np.nan), np.full(n, np.nan)
    z_edge[rows] = robust_z(calibration_scores(edge[rows], log_scores), cls[rows], min_members)
    z_blob[rows] = robust_z(calibration_scores(blob[rows], log_scores), cls[rows], min_members)
    p_edge[rows], p_blob[rows] = norm.sf(z_edge[rows]), norm.sf(z_blob[rows])
    # particles not tested (too few in their class, or not read) carry score 0, z 0 and p 1: a STAR column
    # with NaN is refused downstream, and an untested particle is not evidence of junk
    edge, blob, z_edge, z_blob = (np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0) for v in (edge, blob, z_edge, z_blob))
    p_edge, p_blob = (np.nan_to_num(v, nan=1.0) for v in (p_edge, p_blob))
    particles = pd.DataFrame({"rlnSpaEdgeScore": edge, "rlnSpaBlobScore": blob, "rlnSpaEdgeZ": z_edge,
                              "rlnSpaBlobZ": z_blob, "rlnSpaEdgePValue": p_edge, "rlnSpaBlobPValue": p_blob})
    classes = aligned_features(h1, h2, counts, radius_px)
    classes.insert(0, "rlnClassNumber", np.arange(1, k + 1))
    return particles, classes, scales
