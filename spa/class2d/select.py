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

Class features a practitioner looks at (RELION's class ranker computes
similar ones), measured on each class's *unmasked* average of its aligned,
phase-flipped particles (:mod:`spa.class2d.residual`; NaN, and not used, when
the images cannot be read): ``outside_ratio`` (signal power outside the
particle disc over that inside) ≤ ``max_outside_ratio``, ``edge_score`` (the
fraction of the average's variance one straight profile explains) ≤
``max_edge_score``, ``com_radius`` (centre of mass ÷ particle radius) ≤
``max_com_radius`` and ``gyration_ratio`` (radius of gyration ÷ particle
radius) ≤ ``max_gyration_ratio``.  Measured on `spa simulate` particles
(box 48, SNR 0.1): good classes 0.01–0.03, 0.20–0.28, 0.01–0.07, 0.67–0.81;
a class of noise and carbon edges 0.68, 0.43, 0.10, 1.07.

Then, per particle: a particle of a kept class whose match to the class
averages is no better than pure noise achieves (rlnSpaNoisePValue, written
by class2d's last iteration: the fraction of noise decoys matching the other
half's averages as well, :mod:`spa.em.decoys`) above ``max_noise_pvalue`` is
removed.  Classification alone cannot do this at low SNR: an image of noise
is assigned to whichever average it happens to resemble, and at SNR 0.05
13–17 % of pure-noise images sat inside good classes (measured on the demo
preset, K = 10).  And a particle whose residual after subtracting its posed,
CTF-modulated class average holds a straight edge or an off-centre
particle-sized blob, more than its class's members show (robust z in its class;
rlnSpaEdgePValue < ``max_edge_pvalue``, rlnSpaBlobPValue <
``max_overlap_pvalue``, :mod:`spa.class2d.residual`), is removed: carbon edges
and overlapping pairs that classification put among good views.  A class
dropped by a noise-like rule (not a class feature) keeps its particles that
match the averages far better than noise (rlnSpaNoisePValue ≤
``rescue_noise_pvalue``): a practitioner keeps the good particles of a mixed
class.
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
    max_noise_pvalue: float = 0.1  # per particle; 1 keeps every particle of a kept class
    max_outside_ratio: float = 0.25  # class: signal power outside / inside the particle disc
    max_edge_score: float = 0.5  # class: variance fraction explained by one straight profile
    max_com_radius: float = 0.3  # class: centre of mass of the aligned average, ÷ particle radius
    max_gyration_ratio: float = 1.0  # class: radius of gyration of the aligned average, ÷ particle radius
    max_edge_pvalue: float = 0.001  # per particle: straight edge in the residual (robust z in its class); 0 off
    max_overlap_pvalue: float = 0.01  # per particle: off-centre second particle in the residual; 0 off
    residual_log_scores: bool = False  # residual p-values from the log of the scores (calibrated; less power)
    rescue_noise_pvalue: float = 0.01  # particles of a class dropped by a non-feature rule kept when p_noise ≤ this

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
    keep = np.ones(len(features), bool)
    for passed, _ in _checks(features, rules):
        keep &= passed
    return keep


def rejection_reasons(features: pd.DataFrame, rules: SelectionRules) -> list[str]:
    """Per row of ``features``: why :func:`auto_select` drops that class ("" for a kept class), e.g.
    "contrast 2.1 < 0.3 × 12.4"; several failed rules are joined by "; "."""
    reasons: list[list[str]] = [[] for _ in range(len(features))]
    for passed, describe in _checks(features, rules):
        for i in np.flatnonzero(~passed):
            reasons[i].append(describe(i))
    return ["; ".join(r) for r in reasons]


def _checks(f: pd.DataFrame, rules: SelectionRules) -> list:
    """The rules of :func:`auto_select` as (passed mask, row -> reason text) pairs."""
    frac = f["fraction"].to_numpy()
    populous = frac >= rules.min_fraction
    checks = [(populous, lambda i: f"{100 * frac[i]:.2g} % of the particles < {100 * rules.min_fraction:g} %")]
    res = f["resolution"].to_numpy()
    pool = populous if populous.any() else np.ones(len(f), bool)
    best_res = np.min(res[pool])
    if rules.max_resolution_ratio is not None:
        checks.append((res <= rules.max_resolution_ratio * best_res,
                       lambda i: f"resolution {res[i]:.3g} Å > {rules.max_resolution_ratio:g} × best {best_res:.3g} Å"))
    if rules.max_resolution is not None:
        checks.append((res <= rules.max_resolution,
                       lambda i: f"resolution {res[i]:.3g} Å > {rules.max_resolution:g} Å"))
    # contrast reference: median over the best-resolved quarter of the populous classes
    ranked = np.argsort(res + np.where(pool, 0, 1e9), kind="stable")[: max(1, int(np.ceil(pool.sum() / 4)))]
    contrast = f["contrast"].to_numpy()
    ref = float(np.median(contrast[ranked]))
    checks.append((contrast >= rules.min_contrast_ratio * ref,
                   lambda i: f"contrast {contrast[i]:.3g} < {rules.min_contrast_ratio:g} × {ref:.3g} (best classes)"))
    conc = f["concentration"].to_numpy()
    checks.append((conc >= rules.min_concentration,
                   lambda i: f"concentration {conc[i]:.3g} < {rules.min_concentration:g}"))
    ssnr = f["ssnr"].to_numpy()
    if rules.min_ssnr > 0 and np.isfinite(f["ssnr"]).all():
        checks.append((ssnr >= rules.min_ssnr, lambda i: f"low-resolution SSNR {ssnr[i]:.3g} < {rules.min_ssnr:g}"))
    for col, limit, text in (("outside_ratio", rules.max_outside_ratio, "power outside / inside the particle"),
                             ("edge_score", rules.max_edge_score, "straight-edge score"),
                             ("com_radius", rules.max_com_radius, "centre of mass / particle radius"),
                             ("gyration_ratio", rules.max_gyration_ratio, "radius of gyration / particle radius")):
        if col in f and limit is not None and np.isfinite(f[col].to_numpy(np.float64)).all():
            v = f[col].to_numpy(np.float64)
            checks.append((v <= limit, lambda i, v=v, limit=limit, text=text: f"{text} {v[i]:.3g} > {limit:g}"))
    per_particle = f["particle_ssnr"].to_numpy()
    if rules.min_particle_ssnr_ratio > 0 and np.isfinite(per_particle[populous]).all():
        ref_pp = float(np.median(per_particle[populous]))
        checks.append((per_particle >= rules.min_particle_ssnr_ratio * ref_pp,
                       lambda i: f"SSNR per particle {per_particle[i]:.3g} < {rules.min_particle_ssnr_ratio:g} × "
                                 f"median {ref_pp:.3g}"))
    return checks


def noise_like(table: pd.DataFrame, rules: SelectionRules) -> np.ndarray:
    """Boolean mask of the rows whose rlnSpaNoisePValue exceeds ``max_noise_pvalue`` (none without the column)."""
    if "rlnSpaNoisePValue" not in table or rules.max_noise_pvalue >= 1:
        return np.zeros(len(table), bool)
    return table["rlnSpaNoisePValue"].to_numpy(np.float64) > rules.max_noise_pvalue


def residual_outliers(table: pd.DataFrame, rules: SelectionRules) -> np.ndarray:
    """Boolean mask of the rows whose residual holds an edge (rlnSpaEdgePValue < ``max_edge_pvalue``) or a
    second particle (rlnSpaBlobPValue < ``max_overlap_pvalue``); none without the columns."""
    out = np.zeros(len(table), bool)
    for col, limit in (("rlnSpaEdgePValue", rules.max_edge_pvalue), ("rlnSpaBlobPValue", rules.max_overlap_pvalue)):
        if col in table and limit:
            out |= table[col].to_numpy(np.float64) < limit
    return out


FEATURE_RULES = ("max_outside_ratio", "max_edge_score", "max_com_radius", "max_gyration_ratio")


def feature_failures(features: pd.DataFrame, rules: SelectionRules) -> np.ndarray:
    """Per class: True when a class feature of the aligned average (outside ratio, edge score, centre of
    mass, radius of gyration) breaks its rule — something besides one centred particle in the box."""
    bad = np.zeros(len(features), bool)
    for col, name in zip(("outside_ratio", "edge_score", "com_radius", "gyration_ratio"), FEATURE_RULES):
        limit = getattr(rules, name)
        if col in features and limit is not None:
            v = features[col].to_numpy(np.float64)
            bad |= np.isfinite(v) & (v > limit)
    return bad


def rescued(table: pd.DataFrame, keep: np.ndarray, feature_bad: np.ndarray, rules: SelectionRules) -> np.ndarray:
    """Rows of classes dropped only by the noise-like rules (contrast, SSNR, size, resolution; not by a class
    feature) that match the class averages far better than noise (rlnSpaNoisePValue ≤ ``rescue_noise_pvalue``):
    good particles that a short classification left in a mostly-noise class (measured: 10 of 240 in one run)."""
    if "rlnSpaNoisePValue" not in table or not rules.rescue_noise_pvalue:
        return np.zeros(len(table), bool)
    c = table["rlnClassNumber"].to_numpy(np.int64) - 1
    return ~keep[c] & ~feature_bad[c] & (table["rlnSpaNoisePValue"].to_numpy(np.float64) <= rules.rescue_noise_pvalue)


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
