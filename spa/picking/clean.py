"""Micrograph cleaning: mask carbon film, ice contamination and aggregates from local statistics.

Each detector looks at one property a practitioner looks at on a low-passed
micrograph (lengths in Å; the micrograph is first Fourier-binned so that the
particle radius spans ≥ 8 pixels, as the LoG picker does):

* **contaminant** — ice crystals, ethane and dirt are thick and very dark: the
  local mean (Gaussian of σ = radius/2 over the relative intensity
  I/⟨I⟩ − 1) lower than ``contaminant_threshold`` robust σ (median/MAD over
  the micrograph) below the median.  Only the dark side is used: protein at
  particle scale hardly moves the mean (the CTF removes its low frequencies).
* **aggregate** — clumps of overlapping particles carry far more signal at
  particle scale than one particle: the band energy between ``high_resolution``
  (15 Å) and the particle diameter, smoothed over σ = radius, more than
  ``aggregate_threshold`` times the micrograph's median of that map, on
  an area larger than one particle.
* **carbon** — the film beyond a hole's edge has a different noise texture
  (and density): the local energy at 6-12 Å of the relative intensity,
  smoothed over σ = radius, is higher there.  The edge of a hole is a large
  circle, nearly straight across a micrograph: every line and gently curved
  arc (directions every 4°, radii of curvature ≥ 1.5 micrograph widths) is
  tried as the edge, and the one that best separates a high-texture side
  (≥ ``carbon_min_fraction`` of the area) from the rest is the carbon edge when
  the difference of log texture energy between the sides exceeds
  ``carbon_threshold`` standard deviations of that map's noise (from
  differences of samples one radius apart).  Contaminant and aggregate pixels
  are left out of that fit.

Every mask is grown by the particle radius + ``margin`` (a pick whose box
would reach into a bad region is dropped).  The label map has the kinds of
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
    aggregate_threshold: float = 10.0  # × median local particle-band energy
    carbon_threshold: float = 6.0  # σ of the log texture-energy map between the two sides of the edge
    carbon_min_fraction: float = 0.05  # smallest share of the micrograph a carbon side may have
    high_resolution: float = 15.0  # Å: fine end of the particle band (aggregates)

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


def relative_intensity(micrograph: np.ndarray, radius_px: float) -> np.ndarray:
    """I / ⟨I⟩ − 1 with ⟨I⟩ a Gaussian mean over σ = 2 radii (flat-fields ice-thickness ramps); for
    micrographs without a positive mean (already normalised data), (I − median) / robust σ."""
    img = np.asarray(micrograph, np.float64)
    med, sd = _robust(img[:: max(1, img.shape[0] // 256), :: max(1, img.shape[1] // 256)])
    if med <= 5 * sd:  # not a positive intensity (e.g. zero-mean simulated noise): no division by a mean
        return (img - med) / sd
    local = ndimage.gaussian_filter(img, 2 * radius_px)
    return img / np.maximum(local, 1e-6 * med) - 1.0


def contaminant_core(x_binned: np.ndarray, radius_b: float, threshold: float) -> np.ndarray:
    mean = ndimage.gaussian_filter(x_binned, radius_b / 2)
    med, sd = _robust(mean)
    return (mean - med) / sd < -threshold


def aggregate_core(band_energy: np.ndarray, radius_b: float, threshold: float, exclude: np.ndarray) -> np.ndarray:
    e = ndimage.gaussian_filter(band_energy, radius_b)
    ok = ~exclude
    ref = float(np.median(e[ok])) if ok.any() else float(np.median(e))
    core = (e > threshold * max(ref, 1e-30)) & ok
    # larger than one particle: an isolated bright particle gives a small core at most
    labels, n = ndimage.label(core)
    if n:
        sizes = ndimage.sum(core, labels, np.arange(1, n + 1))
        keep = np.flatnonzero(sizes >= 0.5 * np.pi * radius_b**2) + 1
        core = np.isin(labels, keep)
    return core


def carbon_side(texture: np.ndarray, radius_b: float, exclude: np.ndarray, threshold: float,
                min_fraction: float) -> tuple[np.ndarray, dict]:
    """Half-plane / gentle-arc split with the largest texture difference (see the module docstring)."""
    rows, cols = texture.shape
    step = max(1, int(round(radius_b)))
    noise = np.concatenate([np.diff(texture[::step], axis=0).ravel(), np.diff(texture[:, ::step], axis=1).ravel()])
    sd = _robust(noise)[1] / np.sqrt(2.0)
    w = (~exclude).astype(np.float64)
    n_ok = w.sum()
    yy, xx = np.mgrid[:rows, :cols].astype(np.float64)
    yy -= rows / 2
    xx -= cols / 2
    width = float(max(rows, cols))
    best = {"score": -np.inf}
    for theta in np.deg2rad(np.arange(0, 360, 4)):
        u = xx * np.cos(theta) + yy * np.sin(theta)  # towards the candidate carbon side
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        for curv in (0.0, 1 / 1.5, 1 / 2.5, -1 / 1.5, -1 / 2.5):  # 1 / (radius in micrograph widths)
            t = np.rint(u + curv * v**2 / (2 * width)).astype(np.int64)
            t -= t.min()
            cnt = np.bincount(t.ravel(), w.ravel())
            tot = np.bincount(t.ravel(), (w * texture).ravel())
            below, s_below = np.cumsum(cnt), np.cumsum(tot)
            above, s_above = n_ok - below, tot.sum() - s_below
            valid = (above >= min_fraction * n_ok) & (below >= 0.5 * n_ok)  # carbon: the smaller, far side
            if not valid.any():
                continue
            diff = np.where(valid, s_above / np.maximum(above, 1) - s_below / np.maximum(below, 1), -np.inf)
            k = int(np.argmax(diff))
            if diff[k] > best["score"]:
                best = {"score": float(diff[k]), "theta": float(np.rad2deg(theta)), "curvature": curv, "cut": k,
                        "t": t}
    if not np.isfinite(best["score"]):
        return np.zeros_like(texture, bool), {"carbon_z": 0.0}
    z = best["score"] / max(sd, 1e-12)
    info = {"carbon_z": float(z), "carbon_angle": best["theta"], "carbon_curvature": best["curvature"]}
    if z < threshold:
        return np.zeros_like(texture, bool), info
    return best["t"] > best["cut"], info


def clean_micrograph(micrograph: np.ndarray, pixel_size: float, opts: CleanOptions) -> tuple[np.ndarray, dict]:
    """(label map at full size, uint8: 0 kept, 1 carbon, 2 contaminant, 3 aggregate — grown by radius + margin;
    a dict of area fractions per kind and the detectors' scores)."""
    radius = 0.5 * opts.diameter / pixel_size
    factor = max(1, int(radius // 8))
    rb = radius / factor
    x = relative_intensity(micrograph, radius)
    xb = fourier_bin(x, factor).astype(np.float64)
    shape_b = xb.shape
    info: dict = {}
    cores = {k: np.zeros(shape_b, bool) for k in KINDS}
    if "contaminant" in opts.kinds:
        cores["contaminant"] = contaminant_core(xb, rb, opts.contaminant_threshold)
    grow = (radius + opts.margin / pixel_size) / factor

    def grown(core):
        if not core.any():
            return core
        return ndimage.distance_transform_edt(~core) <= grow

    bad_cont = grown(cores["contaminant"])
    if "aggregate" in opts.kinds:
        apix = pixel_size * factor
        band = _band(xb, max(opts.high_resolution / apix, 2.0), opts.diameter / apix)
        cores["aggregate"] = aggregate_core(band**2, rb, opts.aggregate_threshold, bad_cont)
    if "carbon" in opts.kinds:
        fine = _band(x, max(6.0 / pixel_size, 2.0), max(12.0 / pixel_size, 4.0))
        texture = np.log(ndimage.gaussian_filter(fourier_bin(fine**2, factor).astype(np.float64), rb).clip(1e-30))
        exclude = bad_cont | grown(cores["aggregate"])
        cores["carbon"], carbon_info = carbon_side(texture, rb, exclude, opts.carbon_threshold,
                                                   opts.carbon_min_fraction)
        info.update(carbon_info)
    labels_b = np.zeros(shape_b, np.uint8)
    for kind in ("carbon", "aggregate", "contaminant"):  # later kinds win
        labels_b[grown(cores[kind])] = LABELS[kind]
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
