"""A 2D classification's selection as one library call: read the run, choose, clean, write (``spa select``).

:func:`select_from_run` reads a class2d run's final (or a given iteration's)
files, measures each class (:mod:`spa.class2d.select`), keeps the chosen
classes (automatically or by number), drops particles that match no better
than noise, re-centres the kept particles on their class average's centre of
mass and removes duplicates (:mod:`spa.class2d.recentre`).
:func:`write_selection` writes ``particles.star``, ``selected_classes.mrcs``,
``class_averages.star`` (the class features, RELION's rlnSelected) and a
gallery, as RELION's Select job does, and ``selection.json`` (each dropped
class with the reason, for the report).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from spa.class2d.recentre import recentre, remove_duplicates
from spa.class2d.select import (SelectionRules, auto_select, class_features, feature_failures, noise_like,
                                parse_class_list, rejection_reasons, rescued, residual_outliers)
from spa.errors import SpaInputError


@dataclass
class Selection:
    """What a selection kept and why (class numbers 1-based)."""

    particles: pd.DataFrame  # the kept rows (re-centred, duplicates removed)
    optics: pd.DataFrame
    n_input: int  # particles in the run
    images: np.ndarray  # (K, B, B) class averages
    pixel_size: float
    features: pd.DataFrame  # per class (class_features)
    keep: np.ndarray  # (K,) bool: class kept
    noise_like_per_class: np.ndarray  # (K,) particles dropped as noise-like per class
    n_noise_like: int  # of the kept classes' particles
    n_duplicates: int
    notes: list
    reasons: list = field(default_factory=list)  # (K,) why each class was dropped ("" for a kept class)
    residual_per_class: np.ndarray | None = None  # (K,) particles dropped for an edge / second particle
    n_residual: int = 0  # of the kept classes' particles (not already noise-like)
    examples: list = field(default_factory=list)  # (title, image, model, residual) for the residual figure
    n_rescued: int = 0  # particles of dropped classes kept (they match far better than noise)
    analysed: pd.DataFrame | None = None  # every particle of the run with its scores and why it went (or "")

    @property
    def selected(self) -> list[int]:
        return self.features["rlnClassNumber"].to_numpy()[self.keep].tolist()


def run_files(class2d_dir, iteration: int | None = None) -> tuple[Path, Path, Path]:
    """(data STAR, model STAR, class averages) of a class2d run; final files unless ``iteration``."""
    d = Path(class2d_dir)
    tag = "" if iteration is None else f"_it{iteration:03d}"
    files = (d / f"run{tag}_data.star", d / f"run{tag}_model.star", d / f"run{tag}_classes.mrcs")
    for p in files:
        if not p.exists():
            raise SpaInputError(p, "not found: is this a finished class2d run?")
    return files


def _noise_std(model: dict, box: int) -> float | None:
    """Real-space noise std per pixel of the masked images from the model's σ² (Parseval on the rfft
    half grid), or None when the model has no noise spectra."""
    from spa.em.noise import shell_pixel_counts

    groups = [b for b in model if b.startswith("model_optics_group_") or b.startswith("model_group_")]
    if not groups:
        return None
    s2 = np.mean([model[g]["rlnSigma2Noise"].to_numpy(np.float64) for g in groups], axis=0)
    return float(2.0 * np.sqrt((s2 * shell_pixel_counts(box)).sum()) / box**2)


def _residual_analysis(table, data_p: Path, model: dict, images, pixel_size: float, radius_px: float,
                       particles_star, notes: list, log_scores: bool = False):
    """(per-particle scores, per-class aligned features, scales, image source) or Nones with a note when the
    particle images cannot be read (:mod:`spa.class2d.residual`)."""
    from spa.class2d.residual import analyse_particles
    from spa.io.images import ParticleImages

    groups = sorted(b for b in model if b.startswith("model_optics_group_"))
    if not groups:
        notes.append("no noise spectra in the model: edge / second-particle tests skipped")
        return None, None, None, None
    sigma2 = np.stack([model[g]["rlnSigma2Noise"].to_numpy(np.float64) for g in groups])
    try:
        source = ParticleImages(table, particles_star or data_p)
    except SpaInputError as exc:
        notes.append(f"particle images not readable ({exc}): class features from aligned particles and the "
                     f"edge / second-particle tests skipped (give --particles)")
        return None, None, None, None
    scores, aligned, scales = analyse_particles(table, source, images, sigma2, pixel_size, radius_px,
                                                log_scores=log_scores)
    return scores, aligned, scales, source


def select_from_run(class2d_dir, rules: SelectionRules, *, auto: bool, classes: str | None = None,
                    iteration: int | None = None, mask_diameter: float | None = None, per_particle: bool = False,
                    recentre_particles: bool = True, duplicate_distance: float | None = None,
                    particle_diameter: float | None = None, particles_star=None,
                    residual_test: bool = False) -> Selection:
    """Choose classes and particles of a class2d run (see the module docstring).

    ``classes``: "1,4,7" (manual choice) unless ``auto``; ``mask_diameter`` Å
    (default 90 % of the box) for the class features; ``per_particle``: drop
    noise-like particles also without ``auto``; ``duplicate_distance`` Å.
    With ``auto`` (or ``per_particle``) the particle images are read (names
    resolved from the cwd, beside run_data.star, or beside ``particles_star``)
    for the aligned class features and the per-particle edge / second-particle
    tests (:mod:`spa.class2d.residual`), with ``particle_diameter`` Å (default
    ``mask_diameter``) as the particle's size; particles failing those tests are dropped with ``auto`` or
    ``residual_test``.  With ``auto``, particles of classes dropped by a noise-like rule that match far
    better than noise are kept (:func:`spa.class2d.select.rescued`).
    """
    from spa.io.mrc import read_mrc
    from spa.io.star import read_particles, read_star

    data_p, model_p, cls_p = run_files(class2d_dir, iteration)
    table, optics = read_particles(data_p, require=("rlnClassNumber",))
    model = read_star(model_p)
    if "model_classes" not in model:
        raise SpaInputError(model_p, "no data_model_classes block")
    mc = model["model_classes"]
    images, pixel_size = read_mrc(cls_p)
    images = images.reshape(-1, images.shape[-2], images.shape[-1])
    k, box = images.shape[0], images.shape[-1]
    if len(mc) != k:
        raise SpaInputError(model_p, f"{len(mc)} classes in the model but {k} images in {cls_p.name}")
    diam = mask_diameter or 0.9 * box * pixel_size
    ssnr = np.stack([model[f"model_class_{c + 1}"]["rlnSsnrMap"].to_numpy(np.float64) for c in range(k)]) \
        if all(f"model_class_{c + 1}" in model for c in range(k)) else None
    counts = np.bincount(table["rlnClassNumber"].to_numpy(np.int64) - 1, minlength=k)[:k]
    feats = class_features(images, mc["rlnClassDistribution"].to_numpy(), mc["rlnEstimatedResolution"].to_numpy(),
                           ssnr, counts, 0.5 * diam / pixel_size, _noise_std(model, box))
    notes: list = []
    scores = source = None
    if auto or per_particle or residual_test:
        radius = 0.5 * (particle_diameter or diam) / pixel_size
        scores, aligned, scales, source = _residual_analysis(
            table, data_p, model, images, float(pixel_size), radius, particles_star, notes,
            bool(rules.residual_log_scores))
        if scores is not None:
            feats = feats.merge(aligned, on="rlnClassNumber", how="left")
            table = pd.concat([table.reset_index(drop=True), scores], axis=1)
    if auto:
        keep = auto_select(feats, rules)
        reasons = rejection_reasons(feats, rules)
    else:
        try:
            chosen = parse_class_list(classes, k)
        except ValueError as exc:
            raise SpaInputError(None, f"classes: {exc}") from None
        keep = np.isin(feats["rlnClassNumber"].to_numpy(), chosen)
        reasons = ["" if kept else f"not among the classes chosen ({classes})" for kept in keep]
    selected = feats["rlnClassNumber"].to_numpy()[keep].tolist()
    in_kept = np.isin(table["rlnClassNumber"].to_numpy(), selected)
    saved = rescued(table, keep, feature_failures(feats, rules), rules) if auto else np.zeros(len(table), bool)
    in_kept = in_kept | saved
    noisy = noise_like(table, rules) if (auto or per_particle) else np.zeros(len(table), bool)
    noisy_per_class = np.bincount(table["rlnClassNumber"].to_numpy(np.int64)[noisy] - 1, minlength=k)[:k]
    odd = residual_outliers(table, rules) & ~noisy if (auto or residual_test) else np.zeros(len(table), bool)
    odd_per_class = np.bincount(table["rlnClassNumber"].to_numpy(np.int64)[odd] - 1, minlength=k)[:k]
    examples = _examples(table, images, scales, source, in_kept, odd, pixel_size) if scores is not None else []
    analysed = table.assign(spaClassKept=in_kept, spaNoiseLike=noisy, spaEdgeOrPair=odd)
    rows = table[in_kept & ~noisy & ~odd].reset_index(drop=True)
    n_noisy = int((in_kept & noisy).sum())
    if len(rows) == 0:
        raise SpaInputError(data_p, f"no particle kept (classes {selected}, {n_noisy} of their particles "
                                    f"noise-like, {int((in_kept & odd).sum())} with an edge or second particle): "
                                    f"nothing written")
    if recentre_particles:
        rows = recentre(rows, images, pixel_size)
    removed = 0
    if duplicate_distance:
        rows, removed, note = remove_duplicates(rows, float(duplicate_distance), pixel_size)
        if note:
            notes.append(note)
    return Selection(rows, optics, len(table), images, float(pixel_size), feats, keep,
                     noisy_per_class.astype(np.int64), n_noisy, int(removed), notes, reasons,
                     odd_per_class.astype(np.int64), int((in_kept & odd).sum()), examples,
                     int((saved & ~noisy & ~odd).sum()), analysed.assign(spaRescued=saved))


def _examples(table, images, scales, source, in_kept, odd, pixel_size, n: int = 4) -> list:
    """(title, image, model, residual) of the ``n`` particles of kept classes with the smallest residual
    p-value that were removed, and of ``n`` kept ones (the figure of the residual test)."""
    from spa.class2d.residual import model_image
    from spa.em.engine import particle_arrays, particle_ctfs, take

    p = np.minimum(table["rlnSpaEdgePValue"].to_numpy(np.float64), table["rlnSpaBlobPValue"].to_numpy(np.float64))
    removed = np.flatnonzero(in_kept & odd)
    removed = removed[np.argsort(p[removed], kind="stable")][:n]
    kept = np.flatnonzero(in_kept & ~odd)[:n]
    out = []
    parts = particle_arrays(table, pixel_size)
    box = images.shape[-1]
    for label, idx in (("removed", removed), ("kept", kept)):
        if not len(idx):
            continue
        x = np.asarray(source.read(idx), np.float64)
        ctfs = np.asarray(particle_ctfs(take(parts, idx), box, pixel_size), np.float64)
        for j, i in enumerate(idx):
            c = int(table["rlnClassNumber"].iloc[i]) - 1
            m = model_image(np.asarray(images[c], np.float64), float(table["rlnAnglePsi"].iloc[i]), parts["centres"][i])
            m = scales[c] * np.fft.irfft2(np.fft.rfft2(m) * ctfs[j], s=(box, box))
            out.append((f"{label}: particle {i + 1}, class {c + 1}, p {p[i]:.2g}", x[j], m, x[j] - m))
    return out


def write_selection(out_dir, sel: Selection, rules: SelectionRules, provenance=None) -> None:
    """particles.star, selected_classes.mrcs, class_averages.star, selected_classes.png (+ figures.json) and
    selection.json (what was dropped and why) in ``out_dir``."""
    from spa.class2d.gallery import write_gallery
    from spa.io.mrc import write_mrcs
    from spa.plots import write_figures_index
    from spa.io.star import write_particles, write_star

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    f = sel.features
    k = len(sel.images)
    write_particles(out / "particles.star", sel.particles, sel.optics, provenance=provenance)
    cls_table = pd.DataFrame({
        "rlnReferenceImage": [f"{c:06d}@selected_classes.mrcs" for c in range(1, k + 1)],
        "rlnClassNumber": f["rlnClassNumber"], "rlnClassDistribution": f["fraction"],
        "rlnEstimatedResolution": f["resolution"], "rlnClassPriorOffsetX": 0.0, "rlnClassPriorOffsetY": 0.0,
        "rlnSelected": sel.keep.astype(np.int64), "spaParticleCount": f["n_particles"],
        "spaContrast": f["contrast"], "spaConcentration": f["concentration"], "spaLowSsnr": f["ssnr"],
        "spaParticleSsnr": f["particle_ssnr"], "spaNoiseLikeCount": sel.noise_like_per_class,
    })
    for col, name in (("outside_ratio", "spaOutsideInsideRatio"), ("edge_score", "spaEdgeScore"),
                      ("com_radius", "spaCentreOfMassRadius"), ("gyration_ratio", "spaGyrationRatio")):
        if col in f:
            cls_table[name] = f[col].to_numpy(np.float64)
    if sel.residual_per_class is not None:
        cls_table["spaEdgeOrPairCount"] = sel.residual_per_class
    write_mrcs(out / "selected_classes.mrcs", sel.images, sel.pixel_size, provenance=provenance)
    write_star(out / "class_averages.star", {"model_classes": cls_table}, provenance=provenance)
    write_gallery(out / "selected_classes.png", sel.images, f["fraction"].to_numpy(), f["resolution"].to_numpy(),
                  selected=sel.selected, title=f"select: {len(sel.selected)} of {k} classes kept",
                  notes=_panel_notes(sel))
    figures = [{
        "file": "selected_classes.png", "title": f"Class selection: {len(sel.selected)} of {k} classes kept",
        "caption": "The 2D class averages, largest first; a green frame marks a kept class. Under each panel: "
                   "out/in = signal power outside / inside the particle disc, edge = straight-edge score, "
                   "com = centre of mass / particle radius (of the unmasked average of its aligned particles), "
                   "and, in red, why a class was dropped (all reasons in selection.json)."}]
    if sel.examples:
        from spa.class2d.gallery import write_residual_examples

        write_residual_examples(out / "residual_examples.png", sel.examples)
        figures.append({
            "file": "residual_examples.png", "title": "Per-particle residuals: edges and second particles",
            "caption": "Rows: a particle of a kept class, its class average at its pose with its CTF, and the "
                       "residual. The particles removed (smallest residual p-value first) hold an edge or a "
                       "second particle the class average does not explain; kept ones leave noise."})
    write_figures_index(out, figures)
    write_selection_summary(out / "selection.json", sel, rules)


def _panel_notes(sel: Selection) -> list[str]:
    """Per class: its features and, for a dropped class, the first reason (short enough for a panel)."""
    f = sel.features
    out = []
    for i in range(len(f)):
        parts = []
        if "outside_ratio" in f and np.isfinite(f["outside_ratio"].iloc[i]):
            parts.append(f"out/in {f['outside_ratio'].iloc[i]:.2f} edge {f['edge_score'].iloc[i]:.2f} "
                         f"com {f['com_radius'].iloc[i]:.2f}")
        reason = sel.reasons[i] if i < len(sel.reasons) else ""
        if reason:
            parts.append("✗ " + reason.split("; ")[0][:38])
        out.append("\n".join(parts))
    return out


def write_selection_summary(path, sel: Selection, rules: SelectionRules) -> None:
    """``selection.json``: particles in and out, and per dropped class its size and why it was dropped."""
    import json

    from spa.io.atomic import atomic_path

    f = sel.features
    dropped = [{"class": int(f["rlnClassNumber"].iloc[i]), "particles": int(f["n_particles"].iloc[i]),
                "reason": sel.reasons[i] if i < len(sel.reasons) else ""}
               for i in np.flatnonzero(~sel.keep)]
    summary = {"particles_in": int(sel.n_input), "particles_kept": int(len(sel.particles)),
               "classes": int(len(f)), "classes_kept": [int(c) for c in sel.selected], "classes_dropped": dropped,
               "particles_in_dropped_classes": int(sum(d["particles"] for d in dropped)),
               "noise_like_removed": int(sel.n_noise_like), "max_noise_pvalue": rules.max_noise_pvalue,
               "edge_or_pair_removed": int(sel.n_residual), "max_edge_pvalue": rules.max_edge_pvalue,
               "max_overlap_pvalue": rules.max_overlap_pvalue, "rescued_from_dropped_classes": int(sel.n_rescued),
               "duplicates_removed": int(sel.n_duplicates)}
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1) + "\n")


def summary(sel: Selection, rules: SelectionRules) -> str:
    """The one-line account of a selection."""
    return (f"kept classes {sel.selected}: {len(sel.particles)} of {sel.n_input} particles"
            + (f" ({sel.n_noise_like} in them removed as matching no better than noise, "
               f"p > {rules.max_noise_pvalue:g})" if sel.n_noise_like else "")
            + (f", {sel.n_residual} removed for an edge or a second particle in the box "
               f"(edge p < {rules.max_edge_pvalue:g}, second particle p < {rules.max_overlap_pvalue:g})"
               if sel.n_residual else "")
            + (f", {sel.n_rescued} kept from dropped noise-like classes" if sel.n_rescued else "")
            + (f", {sel.n_duplicates} duplicates removed" if sel.n_duplicates else ""))
