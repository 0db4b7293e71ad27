"""Select 2D classes by hand (--classes 1,4,7) or automatically (--auto), recentre, remove duplicates.

Reads run_data.star, run_model.star and run_classes.mrcs of a class2d run
(--class2d-dir) and writes, in --output-dir, particles.star (the particles of
the kept classes; with --recentre their origins moved so their class average's
centre of mass is centred; with --remove-duplicates Å, particles of the same
micrograph closer than that after recentring are reduced to the one with the
highest rlnMaxValueProbDistribution), class_averages.star (all classes with
their measures and rlnSelected), selected_classes.mrcs and a gallery PNG with
the kept classes framed.  With --auto, particles of the kept classes whose
noise p-value (class2d's rlnSpaNoisePValue) exceeds max_noise_pvalue (0.05)
are dropped too: they match the class averages no better than images of pure
noise do.  Thresholds come from --threshold NAME=VALUE or the config's
``select`` section (see spa.class2d.select.SelectionRules).

Example:  spa select --class2d-dir Class2D --auto --output-dir Select --remove-duplicates 40
"""

from __future__ import annotations

import sys
from pathlib import Path

from spa.commands._common import load_config, option

COMMON_ARGS = True


def add_args(p):
    p.add_argument("--class2d-dir", required=True, help="folder of a class2d run (run_data.star, run_model.star, ...)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--classes", default=None, help="1-based class numbers to keep, e.g. 1,4,7-9")
    g.add_argument("--auto", action="store_true", help="select classes automatically")
    p.add_argument("--output-dir", required=True, help="output folder")
    p.add_argument("--iteration", type=int, default=None, help="use run_itNNN_* files (default: the final run_*)")
    p.add_argument("--no-recentre", dest="recentre", action="store_false", default=None,
                   help="keep origins as they are")
    p.add_argument("--remove-duplicates", type=float, default=None, metavar="Å",
                   help="remove particles closer than this after recentring (default: off)")
    p.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE",
                   help="a selection threshold (spa.class2d.select.SelectionRules: min_fraction, max_resolution, "
                   "max_resolution_ratio, min_contrast_ratio, min_concentration, min_ssnr, "
                   "min_particle_ssnr_ratio, max_noise_pvalue); repeatable, wins over the config's select section")
    p.add_argument("--mask-diameter", type=float, default=None, help="mask diameter in Å for the measures "
                   "(default: 90%% of the box)")


def main(args) -> int:
    import numpy as np
    import pandas as pd

    from spa.class2d.gallery import write_gallery
    from spa.class2d.recentre import recentre, remove_duplicates
    from spa.class2d.select import SelectionRules, auto_select, class_features, noise_like, parse_class_list
    from spa.errors import SpaInputError
    from spa.io.mrc import read_mrc, write_mrcs
    from spa.io.star import read_particles, read_star, write_particles, write_star
    from spa.provenance import make_record

    cfg = load_config(args, "select")
    cfg.update(_parse_thresholds(args.threshold))
    d = Path(args.class2d_dir)
    tag = "" if args.iteration is None else f"_it{args.iteration:03d}"
    data_p, model_p, cls_p = (d / f"run{tag}_data.star", d / f"run{tag}_model.star", d / f"run{tag}_classes.mrcs")
    for p in (data_p, model_p, cls_p):
        if not p.exists():
            raise SpaInputError(p, "not found: is --class2d-dir a finished class2d run?")
    table, optics = read_particles(data_p, require=("rlnClassNumber",))
    model = read_star(model_p)
    if "model_classes" not in model:
        raise SpaInputError(model_p, "no data_model_classes block")
    mc = model["model_classes"]
    images, pixel_size = read_mrc(cls_p)
    images = images.reshape(-1, images.shape[-2], images.shape[-1])
    k = images.shape[0]
    if len(mc) != k:
        raise SpaInputError(model_p, f"{len(mc)} classes in the model but {k} images in {cls_p.name}")
    box = images.shape[-1]
    diam = option(args, "mask_diameter", cfg, None) or 0.9 * box * pixel_size
    ssnr = np.stack([model[f"model_class_{c + 1}"]["rlnSsnrMap"].to_numpy(np.float64) for c in range(k)]) \
        if all(f"model_class_{c + 1}" in model for c in range(k)) else None
    counts = np.bincount(table["rlnClassNumber"].to_numpy(np.int64) - 1, minlength=k)[:k]
    noise = None
    groups = [b for b in model if b.startswith("model_optics_group_") or b.startswith("model_group_")]
    if groups:
        s2 = np.mean([model[g]["rlnSigma2Noise"].to_numpy(np.float64) for g in groups], axis=0)
        # real-space noise std per pixel of the masked images: Parseval on the rfft half grid
        from spa.em.noise import shell_pixel_counts

        noise = float(2.0 * np.sqrt((s2 * shell_pixel_counts(box)).sum()) / box**2)
    feats = class_features(images, mc["rlnClassDistribution"].to_numpy(), mc["rlnEstimatedResolution"].to_numpy(),
                           ssnr, counts, 0.5 * diam / pixel_size, noise)
    rules = SelectionRules.from_config(cfg)
    if args.auto:
        keep = auto_select(feats, rules)
    else:
        try:
            chosen = parse_class_list(args.classes, k)
        except ValueError as exc:
            raise SpaInputError(None, f"--classes: {exc}") from None
        keep = np.isin(feats["rlnClassNumber"].to_numpy(), chosen)
    selected = feats["rlnClassNumber"].to_numpy()[keep].tolist()
    in_kept = np.isin(table["rlnClassNumber"].to_numpy(), selected)
    # per particle (--auto, or a max_noise_pvalue given): drop images that match no better than noise
    noisy = noise_like(table, rules) if (args.auto or cfg.get("max_noise_pvalue") is not None) \
        else np.zeros(len(table), bool)
    noisy_per_class = np.bincount(table["rlnClassNumber"].to_numpy(np.int64)[noisy] - 1, minlength=k)[:k]
    rows = table[in_kept & ~noisy].reset_index(drop=True)
    n_noisy = int((in_kept & noisy).sum())
    if len(rows) == 0:
        raise SpaInputError(data_p, f"no particle kept (classes {selected}, {n_noisy} of their particles "
                                    f"noise-like): nothing written")
    do_recentre = option(args, "recentre", cfg, True)
    if do_recentre:
        rows = recentre(rows, images, pixel_size)
    removed, note = 0, ""
    dist = option(args, "remove_duplicates", cfg, None)
    if dist:
        rows, removed, note = remove_duplicates(rows, float(dist), pixel_size)
        if note:
            print(f"select: {note}", file=sys.stderr)
    out = Path(args.output_dir)
    record = make_record(args.argv, cfg, None, selected_classes=selected)
    write_particles(out / "particles.star", rows, optics, provenance=record)
    cls_table = pd.DataFrame({
        "rlnReferenceImage": [f"{c:06d}@{(out / 'selected_classes.mrcs').name}" for c in range(1, k + 1)],
        "rlnClassNumber": feats["rlnClassNumber"], "rlnClassDistribution": feats["fraction"],
        "rlnEstimatedResolution": feats["resolution"], "rlnClassPriorOffsetX": 0.0, "rlnClassPriorOffsetY": 0.0,
        "rlnSelected": keep.astype(np.int64), "spaParticleCount": feats["n_particles"],
        "spaContrast": feats["contrast"], "spaConcentration": feats["concentration"], "spaLowSsnr": feats["ssnr"],
        "spaParticleSsnr": feats["particle_ssnr"], "spaNoiseLikeCount": noisy_per_class.astype(np.int64),
    })
    write_mrcs(out / "selected_classes.mrcs", images, pixel_size, provenance=record)
    write_star(out / "class_averages.star", {"model_classes": cls_table}, provenance=record)
    write_gallery(out / "selected_classes.png", images, feats["fraction"].to_numpy(), feats["resolution"].to_numpy(),
                  selected=selected, title=f"select: {len(selected)} of {k} classes kept")
    print(f"select: kept classes {selected}: {len(rows)} of {len(table)} particles"
          + (f" ({n_noisy} in them removed as matching no better than noise, p > {rules.max_noise_pvalue:g})"
             if n_noisy else "")
          + (f", {removed} duplicates removed" if removed else "") + f" -> {out}/particles.star", file=sys.stderr)
    return 0


def _parse_thresholds(items) -> dict:
    """['max_noise_pvalue=0.01', ...] → {'max_noise_pvalue': 0.01, ...} ('null' or 'none': unset)."""
    from dataclasses import fields

    from spa.class2d.select import SelectionRules
    from spa.errors import SpaInputError

    names = {f.name for f in fields(SelectionRules)}
    out = {}
    for item in items or []:
        name, sep, value = str(item).partition("=")
        name = name.strip()
        if not sep or name not in names:
            raise SpaInputError(None, f"--threshold {item!r}: expected NAME=VALUE with NAME one of {sorted(names)}")
        if value.strip().lower() in ("null", "none", ""):
            out[name] = None
            continue
        try:
            out[name] = float(value)
        except ValueError:
            raise SpaInputError(None, f"--threshold {item!r}: {value!r} is not a number") from None
    return out
