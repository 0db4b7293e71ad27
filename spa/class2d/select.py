"""Automatic selection of good 2D classes (the job of RELION's ClassRanker, by explicit rules).

Per class we measure (all from the class2d outputs):

* ``fraction`` — rlnClassDistribution, and ``n_particles`` assigned;
* ``resolution`` — rlnEstimatedResolution (Å);
* ``ssnr`` — mean rlnSsnrMap over shells 1…8 (low-resolution signal);
* ``contrast`` — standard deviation of the class average inside the mask,
  divided by the expected standard deviation of noise averaged over the
  class's particles (σ_noise/√n, from the images' noise level);
  pure-noise classes stay near the "Einstein from noise" level;
* ``concentration`` — fraction of the average's positive mass inside 70 % of
  the mask radius (protein is compact; aligned noise is spread out);
* ``particle_ssnr`` — ``ssnr`` ÷ ``n_particles``: the low-resolution SSNR a
  single image contributes.  A class average's SSNR grows with its number of
  particles, so small good classes look weak and large junk classes strong;
  per particle, every view of the molecule contributes about the same, and
  noise images contribute only what alignment to noise brings (measured on
  3D-projection particles at SNR 0.05: good classes 0.8–0.95, pure-noise
  classes 0.19–0.41, whatever their size).

A class is kept when every rule holds (thresholds in :class:`SelectionRules`,
settable from the config's ``select`` section): fraction ≥ ``min_fraction``;
resolution ≤ ``max_resolution`` Å and ≤ ``max_resolution_ratio`` × the best
class's resolution (each if set; neither is by default: a class's resolution,
like its SSNR, depends on its size — with 3000 images in 50 classes the ratio
rule at 2.0 rejected good classes of 24–51 particles at 25.6 Å and kept 85 % of
the particles, 98 % without it, while the noise classes were rejected by the
per-particle SSNR anyway); contrast ≥ ``min_contrast_ratio`` × the
contrast of the best-resolved, populous classes (the median of the top
quarter); concentration ≥ ``min_concentration``; particle_ssnr ≥
``min_particle_ssnr_ratio`` × the median particle_ssnr of the populous
classes (most classes hold particles: junk is a minority).

Then, per particle: a particle of a kept class whose match to the class
averages is no better than pure noise achieves (rlnSpaNoisePValue, written
by class2d's last iteration: the fraction of noise decoys matching the other
half's averages as well, :mod:`spa.em.decoys`) above ``max_noise_pvalue`` is
removed.  Classification alone cannot do this at low SNR: an image of noise
is assigned to whichever average it happens to resemble, and at SNR 0.05
13–17 % of pure-noise images sat inside good classes (measured on the demo
preset, K = 10).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from spa.fourier import real_radius


@dataclass
class SelectionRules:
    min_fraction: float = 0.005
    max_resolution: float | None = None
    max_resolution_ratio: float | None = None
    min_contrast_ratio: float = 0.3
    min_concentration: float = 0.0
    min_ssnr: float = 0.0
    min_particle_ssnr_ratio: float = 0.5
    max_noise_pvalue: float = 0.05  # per particle; 1 keeps every particle of a kept class

    @classmethod
    def from_config(cls, cfg: dict | None) -> "SelectionRules":
        cfg = cfg or {}
        names = {f.name for f in fields(cls)}
        return cls(**{k: cfg[k] for k in names if k in cfg and cfg[k] is not None})


def class_features(images: np.ndarray, fractions, resolutions, ssnr: np.ndarray | None, counts,
                   mask_radius_px: float, noise_std: float | None = None) -> pd.DataFrame:
    """One row per class (1-based rlnClassNumber) with the measures described in the module docstring."""
    images = np.asarray(images, np.float64)
    k, box = images.shape[0], images.shape[-1]
    r = real_radius(box, 2)
    inside = r <= mask_radius_px
    core = r <= 0.7 * mask_radius_px
    std_in = np.array([images[c][inside].std() for c in range(k)])
    pos = np.maximum(images, 0)
    conc = np.array([pos[c][core].sum() / max(pos[c][inside].sum(), 1e-30) for c in range(k)])
    counts = np.asarray(counts, np.float64)
    if noise_std is not None and noise_std > 0:
        contrast = std_in / (noise_std / np.sqrt(np.maximum(counts, 1)))
    else:
        contrast = std_in
    if ssnr is not None:
        ssnr_low = np.asarray(ssnr, np.float64)[:, 1:9].mean(axis=1)
    else:
        ssnr_low = np.full(k, np.nan)
    return pd.DataFrame({
        "rlnClassNumber": np.arange(1, k + 1), "fraction": np.asarray(fractions, np.float64),
        "n_particles": counts.astype(np.int64), "resolution": np.asarray(resolutions, np.float64),
        "ssnr": ssnr_low, "contrast": contrast, "concentration": conc,
        "particle_ssnr": ssnr_low / np.maximum(counts, 1),
    })


def auto_select(features: pd.DataFrame, rules: SelectionRules) -> np.ndarray:
    """Boolean keep-mask over the rows of ``features`` (see the module docstring)."""
    f = features
    populous = f["fraction"].to_numpy() >= rules.min_fraction
    res = f["resolution"].to_numpy()
    pool = populous if populous.any() else np.ones(len(f), bool)
    best_res = np.min(res[pool])
    keep = populous.copy()
    if rules.max_resolution_ratio is not None:
        keep &= res <= rules.max_resolution_ratio * best_res
    if rules.max_resolution is not None:
        keep &= res <= rules.max_resolution
    # contrast reference: median over the best-resolved quarter of the populous classes
    ranked = np.argsort(res + np.where(pool, 0, 1e9), kind="stable")[: max(1, int(np.ceil(pool.sum() / 4)))]
    ref = float(np.median(f["contrast"].to_numpy()[ranked]))
    keep &= f["contrast"].to_numpy() >= rules.min_contrast_ratio * ref
    keep &= f["concentration"].to_numpy() >= rules.min_concentration
    if rules.min_ssnr > 0 and np.isfinite(f["ssnr"]).all():
        keep &= f["ssnr"].to_numpy() >= rules.min_ssnr
    per_particle = f["particle_ssnr"].to_numpy()
    if rules.min_particle_ssnr_ratio > 0 and np.isfinite(per_particle[populous]).all():
        ref_pp = float(np.median(per_particle[populous]))
        keep &= per_particle >= rules.min_particle_ssnr_ratio * ref_pp
    return keep


def noise_like(table: pd.DataFrame, rules: SelectionRules) -> np.ndarray:
    """Boolean mask of the rows whose rlnSpaNoisePValue exceeds ``max_noise_pvalue`` (none without the column)."""
    if "rlnSpaNoisePValue" not in table or rules.max_noise_pvalue >= 1:
        return np.zeros(len(table), bool)
    return table["rlnSpaNoisePValue"].to_numpy(np.float64) > rules.max_noise_pvalue


def parse_class_list(text: str, n_classes: int) -> list[int]:
    """'1,4,7-9' → [1, 4, 7, 8, 9] (1-based), checked against the number of classes."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    bad = [c for c in out if c < 1 or c > n_classes]
    if bad:
        raise ValueError(f"class number(s) {bad} out of range 1..{n_classes}")
    return sorted(set(out))
