"""Micrograph cleaning: mask carbon film, ice contamination and aggregates from local statistics.

Each detector looks at one property a practitioner looks at on a low-passed
micrograph (lengths in Å; the micrograph is first Fourier-binned so that the
particle radius spans ≥ 8 pixels, as the LoG picker does):

* **contaminant** — ice crystals, ethane and dirt are thick and very dark: the
  local mean (Gaussian of σ = radius/2 over the relative intensity
  I/⟨I⟩ − 1) lower than ``contaminant_threshold`` robust σ (median/MAD over
  the micrograph) below the median — σ widened to the dark tail's spread
  when dense, strong particles make that tail heavy (10th percentile below
  −1.28 σ), so that only what is far darker than a particle counts.  Only the dark side is used: protein at
  particle scale hardly moves the mean (the CTF removes its low frequencies).
* **aggregate** — clumps of overlapping particles carry far more signal than
  one particle: the local energy at 6-12 Å of the relative intensity (the
  texture map below), smoothed over σ = radius, more than
  ``aggregate_threshold`` times its median over the micrograph (outside
  contaminants) and by at least 5 SD of that map's place-to-place
  fluctuation (dense, strong particles raise it on their own), on an area
  larger than half a particle.
* **carbon** — the film beyond a hole's edge has a different noise texture
  (and density): the local energy at 6-12 Å of the relative intensity,
  smoothed over σ = radius, is higher there.  The edge of a hole is a large
  circle, nearly straight across a micrograph: every line and gently curved
  arc (directions every 4°; straight, or the arc of a hole 1.5, 2 or 3 micrograph
  widths in radius, bulging towards the carbon) is
  tried as the edge, and the one that best separates a high-texture side
  (≥ ``carbon_min_fraction`` of the area) from the rest is the carbon edge when
  the difference of log texture energy between the sides exceeds
  ``carbon_threshold`` standard deviations of that map's noise (from
  differences of samples one radius apart).  Contaminant and aggregate pixels
  are left out of that fit.

Contaminant masks grow by the particle radius + ``margin`` (a particle that
would touch the blob is dropped); carbon and aggregate masks by half a radius
+ ``margin`` (the carbon side is a fit and particles sit right up to a hole's
edge; an aggregate core comes from a map smoothed over a radius and already
reaches beyond the clump).  The label map has the kinds of
``spa simulate``'s truth: 0 clean, 1 carbon, 2 contaminant, 3 aggregate
(contaminant wins over aggregate, aggregate over carbon).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from spa.picking.log import fourier_bin

KINDS = ("carbon", "contaminant", "aggregate")
LABELS = {"clean": 0, "carbon": 1, "contaminant": 2, "aggregate": 3}


@dataclass(frozen=True)
class CleanOptions:
    """Lengths in Å; thresholds as documented in the module docstring."""

    diameter: float
    margin: float = 0.0  # Å added to the particle radius when growing the masks
    kinds: tuple[str, ...] = KINDS
    contaminant_threshold: float = 5.0  # robust σ of the local mean, dark side
    aggregate_threshold: float = 1.5  # × the micrograph's median texture energy
    carbon_threshold: float = 6.0  # σ of the log texture-energy map between the two sides of the edge
    carbon_min_fraction: float = 0.05  # smallest share of the micrograph a carbon side may have

    def __post_init__(self):
        if not self.diameter > 0:
            raise ValueError(f"particle diameter must be > 0 Å, got {self.diameter}")
        if self.margin < 0:
            raise ValueError(f"margin must be ≥ 0 Å, got {self.margin}")
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown kinds {sorted(unknown)} (choose from {', '.join(KINDS)})")
        if not 0 < self.carbon_min_fraction < 0.5:
            raise ValueError("carbon_min_fraction must be in (0, 0.5)")


def _robust(values: np.ndarray) -> tuple[float, float]:
    med = float(np.median(values))
    return med, max(1.4826 * float(np.median(np.abs(values - med))), 1e-12)


def _band(x: np.ndarray, fine: float, coarse: float) -> np.ndarray:
    """Difference of Gaussians passing roughly the periods fine…coarse (pixels)."""
    return ndimage.gaussian_filter(x, fine / 2.5) - ndimage.gaussian_filter(x, coarse / 2.5)


def relative_intensity(micrograph: np.ndarray, radius_px: float | None) -> np.ndarray:
    """I / ⟨I⟩ − 1 with ⟨I⟩ a Gaussian mean over σ = 2 radii (flat-fields ice-thickness ramps; the median
    when ``radius_px`` is None); for
    micrographs without a positive mean (already normalised data), (I − median) / robust σ."""
    img = np.asarray(micrograph, np.float64)
    med, sd = _robust(img[:: max(1, img.shape[0] // 256), :: max(1, img.shape[1] // 256)])
    if med <= 5 * sd:  # not a positive intensity (e.g. zero-mean simulated noise): no division by a mean
        return (img - med) / sd
    if radius_px is None:  # relative to the micrograph's median
        return img / med - 1.0
    local = ndimage.gaussian_filter(img, 2 * radius_px)
    return img / np.maximum(local, 1e-6 * med) - 1.0


def contaminant_core(x_binned: np.ndarray, radius_b: float, threshold: float) -> np.ndarray:
    """Dark blobs: local mean below ``threshold`` robust σ; each blob's extent is where it is darker than
    half its deepest value (the smoothing would otherwise widen it by its σ)."""
    mean = ndimage.gaussian_filter(x_binned, radius_b / 2)
    med, sd = _robust(mean)
    z = (mean - med) / sd
    # where particles are dense and strong they fill the dark tail themselves (a normal tail has its 10th
    # percentile at −1.28 σ): the threshold then scales with that tail, so that only what is far darker
    # than a particle counts as contamination
    tail = max(1.0, -float(np.percentile(z, 10)) / 1.2816)
    threshold = threshold * tail
    seeds = z < -threshold
    if not seeds.any():
        return seeds
    depth = ndimage.gaussian_filter(x_binned, 1.0) - med  # lightly smoothed, keeps the blob's edge sharp
    labels, n = ndimage.label(z < -0.5 * threshold)
    deepest = ndimage.minimum(depth, labels, np.arange(1, n + 1))
    seeded = np.unique(labels[seeds])
    core = np.zeros_like(seeds)
    for k in seeded[seeded > 0]:
        core |= (labels == k) & (depth < 0.5 * deepest[k - 1])
    return core


def aggregate_core(texture: np.ndarray, radius_b: float, threshold: float, exclude: np.ndarray) -> np.ndarray:
    """Where the log texture energy exceeds the clean micrograph's median by log(``threshold``), on an area
    larger than half a particle (one particle alone stays below)."""
    ok = ~exclude
    ref = float(np.median(texture[ok])) if ok.any() else float(np.median(texture))
    # and ≥ 5 SD of the map's own fluctuations from place to place: where strong particles are dense, each
    # raises the texture on its own, and a crowd of them is not an aggregate
    floor = 5.0 * _noise_sd(texture, radius_b)
    core = (texture > ref + max(np.log(threshold), floor)) & ok
    labels, n = ndimage.label(core)
    if n:
        sizes = ndimage.sum(core, labels, np.arange(1, n + 1))
        keep = np.flatnonzero(sizes >= 0.5 * np.pi * radius_b**2) + 1
        core = np.isin(labels, keep)
    return core


def _noise_sd(field: np.ndarray, radius_b: float) -> float:
    """SD of a smooth map's fluctuations: from differences of samples one radius apart (robust)."""
    step = max(1, int(round(radius_b)))
    d = np.concatenate([np.diff(field[::step], axis=0).ravel(), np.diff(field[:, ::step], axis=1).ravel()])
    return _robust(d)[1] / np.sqrt(2.0)


_CURVATURES = (0.0, 1 / 3.0, 1 / 2.0, 1 / 1.5)  # micrograph width / radius of the hole


def _profiles(texture, weight, theta_deg, curv):
    """Distance ``t`` (px, ≥ 0) of every pixel across a candidate edge (towards the carbon) and the weighted
    count and sum of ``texture`` per t.  The edge of a hole of radius R bulges towards the carbon:
    u_edge(v) ≈ e − v²/(2R), so t = u + v²/(2R) is constant along it."""
    rows, cols = texture.shape
    yy, xx = np.mgrid[:rows, :cols].astype(np.float64)
    yy -= rows / 2
    xx -= cols / 2
    th = np.deg2rad(theta_deg)
    u = xx * np.cos(th) + yy * np.sin(th)
    v = -xx * np.sin(th) + yy * np.cos(th)
    t = np.rint(u + curv * v**2 / (2 * float(max(rows, cols)))).astype(np.int64)
    t -= t.min()
    return t, np.bincount(t.ravel(), weight.ravel()), np.bincount(t.ravel(), (weight * texture).ravel())


def carbon_side(score: np.ndarray, line: np.ndarray, radius_b: float, exclude: np.ndarray, threshold: float,
                min_fraction: float) -> tuple[np.ndarray, dict]:
    """The carbon side of a micrograph (bool map) from a score map in units of its noise SD.

    Detection: over straight and arc-shaped splits, the one a two-sample test prefers (difference of the
    sides' mean score × √(share above · share below)); carbon when that difference ≥ ``threshold``.
    Location: near that split (±24°, every curvature), the arc along which the fine-scale energy ``line``
    peaks most (in robust σ of its profile): the split test alone drifts into the ice when some texture
    or an ice-thickness ramp lies beside the edge."""
    weight = (~exclude).astype(np.float64)
    n_ok = weight.sum()
    best = {"power": -np.inf}
    for theta in range(0, 360, 4):
        for curv in _CURVATURES:
            t, cnt, tot = _profiles(score, weight, theta, curv)
            below, s_below = np.cumsum(cnt), np.cumsum(tot)
            above, s_above = n_ok - below, tot.sum() - s_below
            valid = (above >= min_fraction * n_ok) & (below >= 0.5 * n_ok)  # carbon: the smaller, far side
            if not valid.any():
                continue
            diff = s_above / np.maximum(above, 1) - s_below / np.maximum(below, 1)
            power = np.where(valid, diff * np.sqrt(np.maximum(above * below, 0.0)) / n_ok, -np.inf)
            k = int(np.argmax(power))
            if power[k] > best["power"]:
                best = {"power": float(power[k]), "z": float(diff[k]), "theta": theta, "curvature": curv, "cut": k}
    if not np.isfinite(best["power"]):
        return np.zeros_like(score, bool), {"carbon_z": 0.0}
    info = {"carbon_z": best["z"]}
    if best["z"] < threshold:
        return np.zeros_like(score, bool), info
    # the edge itself: a hole's edge is a step of the specimen's thickness, which the CTF turns into a thin
    # bright/dark fringe; averaged along the right arc, its energy (``line``) peaks sharply across it
    edge = {"step": -np.inf}
    for theta in range(best["theta"] - 24, best["theta"] + 25, 2):
        for curv in _CURVATURES:
            t, cnt, tot = _profiles(line, weight, theta, curv)
            share_above = (n_ok - np.cumsum(cnt)) / n_ok  # share beyond each t
            ok = (cnt > 0.25 * cnt.max()) & (share_above >= min_fraction) & (share_above <= 0.5)
            if not ok.any():
                continue
            prof = tot / np.maximum(cnt, 1)
            med, sd = _robust(prof[cnt > 0.25 * cnt.max()])
            peak = np.where(ok, (prof - med) / sd, -np.inf)
            k = int(np.argmax(peak))
            if peak[k] > edge["step"]:
                edge = {"step": float(peak[k]), "theta": theta % 360, "curvature": curv, "mask": t >= k}
    if not np.isfinite(edge["step"]):
        return np.zeros_like(score, bool), info
    info.update({"carbon_angle": float(edge["theta"]), "carbon_curvature": edge["curvature"],
                 "carbon_step": edge["step"]})
    return edge["mask"], info


def clean_micrograph(micrograph: np.ndarray, pixel_size: float, opts: CleanOptions) -> tuple[np.ndarray, dict]:
    """(label map at full size, uint8: 0 kept, 1 carbon, 2 contaminant, 3 aggregate — grown by radius + margin;
    a dict of area fractions per kind and the detectors' scores)."""
    radius = 0.5 * opts.diameter / pixel_size
    factor = max(1, int(radius // 8))
    rb = radius / factor
    x = relative_intensity(micrograph, radius)
    x_flat = relative_intensity(micrograph, None)
    xb = fourier_bin(x, factor).astype(np.float64)
    shape_b = xb.shape
    info: dict = {}
    cores = {k: np.zeros(shape_b, bool) for k in KINDS}
    if "contaminant" in opts.kinds:
        cores["contaminant"] = contaminant_core(xb, rb, opts.contaminant_threshold)
    grow = (radius + opts.margin / pixel_size) / factor

    def grown(core, by=grow):
        if not core.any():
            return core
        return ndimage.distance_transform_edt(~core) <= by

    bad_cont = grown(cores["contaminant"])
    # a contaminant's dark edge rings (CTF fringes) and halo reach a few radii beyond it
    near_cont = grown(cores["contaminant"], 3 * rb)
    # texture: local energy at 6-12 Å of the relative intensity, smoothed over the particle radius
    fine = _band(x, max(6.0 / pixel_size, 2.0), max(12.0 / pixel_size, 4.0))
    texture = np.log(ndimage.gaussian_filter(fourier_bin(fine**2, factor).astype(np.float64), rb).clip(1e-30))
    if "aggregate" in opts.kinds:
        # a contaminant's dark edge rings (CTF fringes) raise the texture for a few radii around it
        cores["aggregate"] = aggregate_core(texture, rb, opts.aggregate_threshold, near_cont)
    if "carbon" in opts.kinds:
        exclude = near_cont | grown(cores["aggregate"])
        # carbon: more texture and (thicker) darker; each map in units of its own noise SD
        dark = -ndimage.gaussian_filter(fourier_bin(x_flat, factor).astype(np.float64), rb)
        score = texture / _noise_sd(texture, rb) + dark / _noise_sd(dark, rb)
        line = ndimage.gaussian_filter(fourier_bin(_band(x, max(6.0 / pixel_size, 2.0), 30.0 / pixel_size)**2,
                                                   factor).astype(np.float64), 1.0)
        cores["carbon"], carbon_info = carbon_side(score, line, rb, exclude, opts.carbon_threshold,
                                                   opts.carbon_min_fraction)
        info.update(carbon_info)
    labels_b = np.zeros(shape_b, np.uint8)
    # grown by half a radius only (+ margin): the carbon side is a fit and particles sit right up to a hole's
    # edge; an aggregate's core comes from a map smoothed over a radius, so it already reaches beyond the clump
    half = (0.5 * radius + opts.margin / pixel_size) / factor
    labels_b[grown(cores["carbon"], half)] = LABELS["carbon"]
    labels_b[grown(cores["aggregate"], half)] = LABELS["aggregate"]
    labels_b[grown(cores["contaminant"])] = LABELS["contaminant"]  # later kinds win
    # back to full size: pixel (i, j) of the binned map covers (i·f … i·f + f − 1, …)
    rows = np.minimum(np.arange(micrograph.shape[0]) // factor, shape_b[0] - 1)
    cols = np.minimum(np.arange(micrograph.shape[1]) // factor, shape_b[1] - 1)
    labels = labels_b[rows[:, None], cols[None, :]]
    for kind in KINDS:
        info[f"area_{kind}"] = float((labels == LABELS[kind]).mean())
    info["area_masked"] = float((labels > 0).mean())
    return labels, info


def drop_masked(picks, labels: np.ndarray):
    """(kept picks, dropped picks with spaCleanReason) of a coordinate table (rlnCoordinateX = column,
    rlnCoordinateY = row, px) against a label map."""
    import pandas as pd  # noqa: PLC0415

    if len(picks) == 0:
        return picks, picks.assign(spaCleanReason=pd.Series([], dtype=str))
    c = np.clip(np.rint(picks.rlnCoordinateX.to_numpy(float)).astype(int), 0, labels.shape[1] - 1)
    r = np.clip(np.rint(picks.rlnCoordinateY.to_numpy(float)).astype(int), 0, labels.shape[0] - 1)
    lab = labels[r, c]
    names = {v: k for k, v in LABELS.items()}
    dropped = picks[lab > 0].assign(spaCleanReason=[names[int(v)] for v in lab[lab > 0]])
    return picks[lab == 0].reset_index(drop=True), dropped.reset_index(drop=True)
