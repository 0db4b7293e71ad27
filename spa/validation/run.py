"""All validation checks of a refinement, their numbers (validation.json) and figures (figures.json).

:func:`validate` runs the checks asked for, each from its own module, on the
refined particles (refine3d's run_data.star: poses, CTF, rlnRandomSubset),
the refined map and half maps, the 2D class averages and, where there is
one, a map of known hand.  The checks that re-align or re-reconstruct work
on a seeded random subset (``subset`` particles, halves kept); noise
substitution on up to 10 × ``subset``, ResLog on the whole set.  Each check adds a section to the
summary with a one-line ``verdict`` and its figure(s) to the list for
figures.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHECKS = ("angular", "reprojection", "reslog", "noise_substitution", "noise_particles", "alignability", "handedness")
#: the checks that need the refined map
MAP_CHECKS = ("reprojection", "noise_particles", "alignability", "handedness")


@dataclass(kw_only=True)
class ValidationInputs:
    """Paths (None where absent) and settings of a validation run (lengths in Å, angles in degrees)."""

    particles: str
    map: str | None = None
    half1: str | None = None
    half2: str | None = None
    classes: str | None = None
    truth: str | None = None
    symmetry: str = "C1"
    checks: tuple = CHECKS
    subset: int = 300  # particles of the re-aligning checks
    reslog_steps: int = 4
    width: float = 3.0  # angular width of a central plane (angular check)
    search_order: int = 2  # HEALPix order of the global searches
    final_order: int = 4  # HEALPix order of the local searches (the refinement's last)
    search_resolution: float | None = None  # Å; default the half maps' resolution (≥ Nyquist)
    noise_reference_resolution: float | None = None  # Å; default 2.5 × the resolution, ≥ 10 Å
    substitution_mode: str = "given"  # noise substitution: "given" poses, or "refine" (refine3d, a subset)
    substitute_from: float | None = None  # Å; default where the half maps' FSC drops below 0.8, ≤ ¾ Nyquist
    seed: int = 0
    backend: str | None = None


def _r(x, n=3):
    return None if x is None or not np.isfinite(x) else round(float(x), n)


def _subset_rows(table, n: int, seed: int):
    """A seeded random subset of ``n`` rows (all if fewer), with the halves (rlnRandomSubset 1/2)."""
    from spa.em.engine import random_halves

    rng = np.random.default_rng(seed)
    rows = table if len(table) <= n else table.iloc[np.sort(rng.choice(len(table), n, replace=False))]
    rows = rows.reset_index(drop=True)
    return rows, random_halves(rows, seed)


def validate(inp: ValidationInputs, out: Path, *, progress=None, log=print, provenance: dict | None = None):
    """Run the checks; write their plots (and alignability.star, with ``provenance``) into ``out``; return
    (summary dict, figure entries)."""
    from spa.errors import SpaInputError
    from spa.io.star import read_particles

    out = Path(out)
    table, _ = read_particles(inp.particles, require=("rlnAngleRot", "rlnAngleTilt"))
    summary: dict = {"particles": len(table), "symmetry": inp.symmetry, "checks": list(inp.checks)}
    figures: list = []
    need_map = set(MAP_CHECKS) & set(inp.checks)
    if need_map and not inp.map:
        raise SpaInputError(inp.particles, f"the checks {', '.join(sorted(need_map))} need the refined map (--map)")
    volume = pixel = None
    if inp.map:
        from spa.io.mrc import read_mrc

        volume, pixel = read_mrc(inp.map)
    halves = None
    if inp.half1 and inp.half2:
        from spa.io.mrc import read_mrc

        halves = [read_mrc(inp.half1)[0], read_mrc(inp.half2)[0]]
        pixel = pixel or read_mrc(inp.half1)[1]
        if halves[0].shape != halves[1].shape:
            raise SpaInputError(inp.half2, f"shape {halves[1].shape} differs from {inp.half1} {halves[0].shape}")
    pixel = float(table["rlnImagePixelSize"].iloc[0]) if "rlnImagePixelSize" in table else pixel
    box = int(table["rlnImageSize"].iloc[0]) if "rlnImageSize" in table else None
    for path, vol in ((inp.map, volume), (inp.half1, halves[0] if halves else None)):
        if vol is not None and (vol.ndim != 3 or len(set(vol.shape)) != 1 or (box and vol.shape[0] != box)):
            raise SpaInputError(path, f"map of shape {vol.shape}: expected a cubic map of the particles' box "
                                      f"({box} px, from {inp.particles})")
    resolution = None
    if halves is not None:
        from spa.validation.halves import half_fsc

        resolution = half_fsc(*halves, pixel).resolution
        summary["half_map_resolution_A"] = _r(resolution)
    step = progress or (lambda label: None)
    for name in inp.checks:
        log(f"validate: {name}")
        section, figs = _CHECK_FUNCTIONS[name](inp, out, table=table, volume=volume, halves=halves, pixel=pixel,
                                               resolution=resolution, progress=step(f"validate: {name}"),
                                               provenance=provenance, log=log)
        summary[name] = section
        figures += figs
    return summary, figures


# -- the checks --------------------------------------------------------------------------------
def _angular(inp, out, *, table, **_):
    from spa.validation.angular import fourier_sampling, plot_distribution

    s = fourier_sampling(table.rlnAngleRot.to_numpy(float), table.rlnAngleTilt.to_numpy(float), inp.symmetry,
                         width=inp.width)
    verdict = ("uniform enough" if s.efficiency > 0.8 and s.empty_fraction == 0 else
               "preferred orientation: expect anisotropic resolution" if s.empty_fraction == 0 else
               "a region of Fourier space is not sampled (missing cone): the map is anisotropic there")
    plot_distribution(out / "angular_distribution.png", table.rlnAngleRot, table.rlnAngleTilt, s,
                      symmetry=inp.symmetry)
    section = {"efficiency_E_od": _r(s.efficiency, 4), "sampling_compensation_factor": _r(s.scf, 4),
               "fourier_space_unsampled_fraction": _r(s.empty_fraction, 4), "verdict": verdict}
    return section, [{
        "file": "angular_distribution.png", "title": f"Angular distribution: E_od {s.efficiency:.2f} — {verdict}",
        "caption": "Left: particles per projection direction, folded into the asymmetric unit. Right: how many "
                   "particles' central planes pass near each direction of Fourier space (symmetry-expanded). "
                   "E_od (Naydenova & Russo 2017) and the sampling compensation factor are 1 for a uniform "
                   "distribution and fall as the sampling becomes uneven."}]


def _reprojection(inp, out, *, volume, pixel, resolution, progress, **_):
    if not inp.classes:
        return {"verdict": "not run: no class averages given"}, []
    from spa.em.driver3d import load_reference
    from spa.io.mrc import read_mrc
    from spa.validation.reprojection import match_classes, plot_histogram, plot_worst

    classes, class_pixel = read_mrc(inp.classes)
    classes = classes.reshape(-1, *classes.shape[-2:])
    ref = load_reference(inp.map, classes.shape[-1], class_pixel)  # the map at the classes' box and pixel size
    low = max(10.0, 2.0 * (resolution or 0.0), 4.0 * class_pixel)
    high = max(30.0, 3.0 * low)
    r = match_classes(ref, classes, class_pixel, symmetry=inp.symmetry, resolution=low, highpass=high,
                      order=inp.search_order, progress=progress)
    finite = r.correlation[np.isfinite(r.correlation)]
    # flagged: below 0.6, or 0.25 below the median class (a look-alike of another molecule can reach ~0.9
    # band-passed; tests/validation measured ≤ 0.66 for a different molecule, ≥ 0.99 for the right one)
    threshold = max(0.6, float(np.median(finite)) - 0.25) if finite.size else 0.6
    low_classes = [int(i) + 1 for i in np.nonzero(r.correlation < threshold)[0]]
    plot_histogram(out / "reprojection_histogram.png", r, threshold)
    worst = plot_worst(out / "reprojection_worst.png", r)
    verdict = ("every class average matches a reprojection" if not low_classes else
               f"{len(low_classes)} class(es) match no reprojection well (correlation < {threshold:.2f}): "
               "junk classes, another molecule or conformation, or a wrong map")
    section = {"classes": int(len(classes)), "empty_classes": int(np.sum(~np.isfinite(r.correlation))),
               "band_A": [_r(high), _r(low)], "correlation_median": _r(np.median(finite)) if finite.size else None,
               "correlation_min": _r(finite.min()) if finite.size else None,
               "correlation_per_class": [_r(c) for c in r.correlation], "below_threshold": low_classes,
               "threshold": _r(threshold), "verdict": verdict}
    return section, [
        {"file": "reprojection_histogram.png", "title": f"Class averages vs reprojections: {verdict}",
         "caption": f"Correlation (inside a circular mask, both band-passed to {high:.0f}–{low:.0f} Å) of each 2D "
                    "class average with the best-matching projection of the refined map (global search over "
                    "orientations and in-plane shifts). Good classes lie near 1."},
        {"file": "reprojection_worst.png", "title": "The worst-matching class averages and their reprojections",
         "caption": "Top: the class averages with the lowest correlation (class numbers 1-based: "
                    f"{', '.join(str(i + 1) for i in worst)}); bottom: the map's best-matching projection of each."}]


def _reslog(inp, out, *, table, progress, **_):
    if not {"rlnImageName", "rlnAnglePsi"} <= set(table.columns):
        return {"verdict": "not run: the STAR has no images or no psi"}, []
    from spa.validation.reslog import plot_reslog, reslog

    result = reslog(table, inp.particles, symmetry=inp.symmetry, seed=inp.seed, steps=inp.reslog_steps,
                    progress=progress)
    b = "not fitted (fewer than two points below Nyquist)" if result.bfactor is None else f"{result.bfactor:.0f} Å²"
    plot_reslog(out / "reslog.png", result)
    section = {"particles": result.sizes.astype(int).tolist(), "resolution_A": [_r(x) for x in result.resolutions],
               "at_nyquist": result.at_nyquist.tolist(), "bfactor_A2": _r(result.bfactor, 1),
               "verdict": f"B-factor of the data {b}"}
    return section, [{"file": "reslog.png", "title": f"ResLog: B-factor of the data {b}",
                      "caption": "1/resolution² of random subsets (FSC 0.143 of their halves, refined poses) "
                                 "against ln(number of particles); the slope is 2/B (Stagg et al. 2014)."}]


def _noise_substitution(inp, out, *, table, halves, pixel, volume, log=None, **_):
    from spa.io.images import ParticleImages
    from spa.validation.noise_substitution import noise_substitution, plot_noise_substitution

    box = None
    if inp.substitute_from:
        box = int(ParticleImages(table.iloc[:1], inp.particles).box)
        shell = max(1, int(round(box * pixel / inp.substitute_from)))
    elif halves is not None:
        from spa.em.fsc import fsc
        from spa.postprocess.phase_randomisation import randomisation_shell

        # where the halves' FSC drops below 0.8, but at most ¾ of Nyquist: a band must remain to look at
        shell = min(randomisation_shell(fsc(*halves)), (3 * (halves[0].shape[-1] // 2)) // 4)
    else:
        return {"verdict": "not run: give the half maps or a substitution resolution"}, []
    # real and substituted halves come from the same particles: a bounded subset keeps it cheap (10 × subset
    # from given poses; the subset itself when refine3d refines the substituted images again)
    refine = inp.substitution_mode == "refine"
    if refine and volume is None:
        return {"verdict": "not run: the refine mode needs the refined map (--map)"}, []
    rows, subset = _subset_rows(table, inp.subset if refine else 10 * inp.subset, inp.seed)
    source = ParticleImages(rows, inp.particles)
    box = int(source.box)
    r = noise_substitution(source, rows, subset, from_shell=shell, symmetry=inp.symmetry, seed=inp.seed,
                           backend=inp.backend, mode=inp.substitution_mode, volume=volume, order=inp.final_order,
                           log=log)
    ok = bool(r.mean_abs_beyond < 0.05)  # NaN (no shells beyond): not passed
    how = ("refined again (refine3d, gold standard, local searches)" if refine else
           "given poses, not re-refined")
    verdict = (f"FSC of the substituted images ≈ 0 beyond {r.substitution_resolution:.1f} Å (mean |FSC| "
               f"{r.mean_abs_beyond:.3f}); {how}" if ok else
               f"the substituted images still correlate beyond {r.substitution_resolution:.1f} Å (mean |FSC| "
               f"{r.mean_abs_beyond:.3f}): " + ("the refinement fits noise (overfitting)" if refine else
                                                "the reconstruction adds correlation the data do not hold"))
    plot_noise_substitution(out / "noise_substitution.png", r, box, pixel)
    mode = "refined again by refine3d (gold standard)" if refine else "given poses (cheap: no re-refinement)"
    section = {"mode": mode, "substitution_from_A": _r(r.substitution_resolution),
               "mean_abs_fsc_beyond": _r(r.mean_abs_beyond, 4), "resolution_real_A": _r(r.resolution_real),
               "resolution_corrected_A": _r(r.resolution_corrected), "particles": r.particles, "passed": bool(ok),
               "verdict": verdict}
    return section, [{"file": "noise_substitution.png", "title": f"Noise substitution (Chen 2013): {verdict}",
                      "caption": "FSC of half maps from the particle images, from the same images with phases "
                                 f"randomised beyond {r.substitution_resolution:.1f} Å, and the corrected curve. " +
                                 ("The substituted images were refined again (refine3d, gold standard, local "
                                  "searches from the refined poses): FSC ≈ 0 beyond the substitution shows the "
                                  "refinement did not fit noise." if refine else
                                  "Cheap mode: the refined poses are kept, so this shows the reconstruction adds "
                                  "no correlation, not that the pose search did not fit noise.")}]


def _search_resolution(inp, resolution, pixel):
    if inp.search_resolution:
        return float(inp.search_resolution)
    return max(resolution or 4 * pixel, 2.0 * pixel)


def _noise_particles(inp, out, *, table, volume, pixel, resolution, progress, **_):
    from spa.io.images import ParticleImages
    from spa.validation.noise_particles import noise_particle_test, plot_noise_particles

    ref_res = inp.noise_reference_resolution or max(10.0, 2.5 * (resolution or 4 * pixel))
    rows, subset = _subset_rows(table, inp.subset, inp.seed)
    source = ParticleImages(rows, inp.particles)
    r = noise_particle_test(source, rows, subset, volume, resolution=ref_res, symmetry=inp.symmetry,
                            order=inp.search_order, seed=inp.seed, backend=inp.backend, progress=progress)
    ok = r.passed
    verdict = (f"noise particles reach {r.noise.resolution:.1f} Å (the reference was low-passed to {ref_res:.0f} Å, "
               f"edge to {r.reference_limit:.1f} Å), "
               f"real ones {r.real.resolution:.1f} Å through the same search" +
               ("" if ok else ": the noise map is as good as the data's — its resolution comes from the reference"))
    plot_noise_particles(out / "noise_particles.png", r, int(source.box), pixel)
    section = {"particles": r.particles, "reference_lowpass_A": _r(ref_res),
               "reference_limit_A": _r(r.reference_limit), "resolution_real_A": _r(r.real.resolution),
               "resolution_noise_A": _r(r.noise.resolution), "noise_map_vs_reference": _r(r.noise_vs_reference),
               "passed": bool(ok), "verdict": verdict}
    return section, [{"file": "noise_particles.png", "title": f"Noise particles (Heymann 2015): {verdict}",
                      "caption": "FSC between the half maps of a random subset after one global search against the "
                                 f"refined map low-passed to {ref_res:.0f} Å, for the real particles and for noise "
                                 "images of the same power spectrum. Noise aligned to a reference reproduces it up "
                                 "to the reference's resolution, no further."}]


def _alignability(inp, out, *, table, volume, pixel, resolution, progress, provenance=None, **_):
    from spa.io.images import ParticleImages
    from spa.validation.alignability import alignability, plot_alignability

    if "rlnAnglePsi" not in table:
        return {"verdict": "not run: the STAR has no psi"}, []
    res = _search_resolution(inp, resolution, pixel)
    rows, _ = _subset_rows(table, inp.subset, inp.seed + 1)
    a = alignability(ParticleImages(rows, inp.particles), rows, volume, resolution=res, symmetry=inp.symmetry,
                     global_order=inp.search_order, final_order=inp.final_order, backend=inp.backend,
                     progress=progress)
    plot_alignability(out / "alignability.png", a)
    from spa.io.star import write_star

    keep = ("rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnMaxValueProbDistribution",
            "rlnNrOfSignificantSamples")
    per_particle = rows[[c for c in keep if c in rows]].copy()
    per_particle["rlnSpaPosePrecision"] = a.precision  # degrees: posterior spread around the refined pose
    per_particle["rlnSpaPoseAccuracy"] = a.accuracy  # degrees: refined pose vs a fresh global search
    write_star(out / "alignability.star", {"particles": per_particle}, provenance=provenance)
    verdict = (f"{100 * a.agreeing:.0f} % of a fresh global search agrees within {a.agree_within:.1f}° of the refined "
               f"poses; posterior spread median {np.median(a.precision):.1f}°")
    section = {"particles": len(rows), "search_resolution_A": _r(res),
               "precision_median_deg": _r(np.median(a.precision), 2),
               "precision_p90_deg": _r(np.percentile(a.precision, 90), 2),
               "accuracy_median_deg": _r(np.median(a.accuracy), 2), "agree_within_deg": _r(a.agree_within, 2),
               "agreeing_fraction": _r(a.agreeing), "max_value_prob_median": _r(a.max_prob_median, 4),
               "significant_samples_median": _r(a.significant_median, 1), "verdict": verdict}
    return section, [{"file": "alignability.png", "title": f"Alignability: {verdict}",
                      "caption": "Left: precision, the posterior's RMS angular spread around each particle's refined "
                                 "pose (local re-search). Right: accuracy, the angle between the refined pose and "
                                 "that of a fresh global search (random subset); the dashed line is twice the "
                                 "final fine step. Per particle: alignability.star."}]


def _handedness(inp, out, *, volume, pixel, **_):
    from spa.validation.handedness import judge_hand

    reference = None
    if inp.truth:
        from spa.em.driver3d import load_reference

        reference = load_reference(inp.truth, volume.shape[-1], pixel)
    h = judge_hand(volume, reference, pixel_size=pixel)
    if not h.judged:
        return {"judged": False, "verdict": f"cannot be judged: {h.reason}"}, []
    verdict = ("the map has the reference's hand" if h.correct else
               "the map is the mirror image of the reference: flip its hand (z → −z)")
    return {"judged": True, "reference": inp.truth, "fsc_map": _r(h.correlation),
            "fsc_mirror": _r(h.mirror_correlation),
            "resolution_A": _r(h.resolution), "correct_hand": bool(h.correct), "verdict": verdict}, []


_CHECK_FUNCTIONS = {"angular": _angular, "reprojection": _reprojection, "reslog": _reslog,
                    "noise_substitution": _noise_substitution, "noise_particles": _noise_particles,
                    "alignability": _alignability, "handedness": _handedness}
