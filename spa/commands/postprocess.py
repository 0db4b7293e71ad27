"""Postprocess two half maps (like RELION's PostProcess): corrected FSC, resolution, B-factor, sharpened map.

The FSC of the half maps is computed unmasked and with the solvent mask, and
the masked curve is corrected for the mask's own correlation by phase
randomisation beyond where the unmasked FSC drops below 0.8 (Chen et al.
2013).  The resolution is where the corrected FSC drops below 0.143 ("≥
Nyquist" when it never does).  The B-factor is fitted on a Guinier plot
between --fit-minres (10 Å) and the resolution (Rosenthal & Henderson 2003),
unless --bfactor gives one (RELION's sign: negative sharpens).  The average of
the halves is divided by the MTF (--mtf, optional), sharpened, weighted per
shell by √(2FSC/(1+FSC)) and low-passed at the resolution.

Writes into --output-dir: postprocess.mrc (sharpened), postprocess_masked.mrc,
postprocess.star (data_general with rlnFinalResolution and
rlnBfactorUsedForSharpening, data_fsc, data_guinier), postprocess_fsc.png,
postprocess_guinier.png, figures.json and postprocess.json.

Example:  spa postprocess --half1 run_half1_class001_unfil.mrc --half2 run_half2_class001_unfil.mrc
          --mask mask.mrc --output-dir postprocess
"""

from __future__ import annotations

import json
import sys


def add_args(p):
    p.add_argument("--half1", required=True, help="first unfiltered half map (.mrc)")
    p.add_argument("--half2", required=True, help="second unfiltered half map (.mrc)")
    p.add_argument("--mask", default=None,
                   help="solvent mask (.mrc, 0 … 1); default: made from the average of the halves as `spa mask` does")
    p.add_argument("--output-dir", required=True, help="folder for postprocess.mrc, .star and the plots")
    p.add_argument("--bfactor", type=float, default=None,
                   help="B-factor to sharpen with, Å² (RELION's sign: negative sharpens); default: fitted")
    p.add_argument("--fit-minres", type=float, default=10.0, help="lowest resolution of the Guinier fit, Å (default 10)")
    p.add_argument("--mtf", default=None, help="detector MTF as a RELION STAR (rlnResolutionInversePixel, rlnMtfValue)")
    p.add_argument("--angpix", type=float, default=None, help="pixel size, Å (default: from the half maps' headers)")


def _read_inputs(args):
    import numpy as np

    from spa.errors import SpaInputError
    from spa.io.mrc import read_mrc

    h1, p1 = read_mrc(args.half1)
    h2, p2 = read_mrc(args.half2)
    if h1.ndim != 3 or len(set(h1.shape)) != 1:
        raise SpaInputError(args.half1, f"a half map must be a cubic 3D map, not shape {h1.shape}")
    if h2.shape != h1.shape:
        raise SpaInputError(args.half2, f"shape {h2.shape} differs from {args.half1} {h1.shape}")
    if not np.isclose(p1, p2, rtol=1e-3):
        raise SpaInputError(args.half2, f"pixel size {p2:.4f} Å differs from {args.half1} ({p1:.4f} Å)")
    pixel = float(args.angpix) if args.angpix else p1
    if pixel <= 0:
        raise SpaInputError(args.half1, f"pixel size must be > 0 Å (header says {p1}); give --angpix")
    mask = None
    if args.mask:
        mask, _ = read_mrc(args.mask)
        if mask.shape != h1.shape:
            raise SpaInputError(args.mask, f"mask shape {mask.shape} does not match the half maps {h1.shape}")
        if mask.min() < -1e-3 or mask.max() > 1 + 1e-3:
            raise SpaInputError(args.mask, f"mask values must lie in [0, 1] (found {mask.min():.3g} … {mask.max():.3g}): "
                                           "is this a density map? make a mask with `spa mask`")
        if mask.max() <= 0:
            raise SpaInputError(args.mask, "mask is empty (all zero)")
    return h1, h2, mask, pixel


def main(args) -> int:
    from pathlib import Path

    from spa.em.fsc import resolution_text
    from spa.io.mrc import write_mrc
    from spa.io.star import write_star
    from spa.plots import plot_fsc, plot_guinier, write_figures_index
    from spa.postprocess.masks import mask_from_map, solvent_mask
    from spa.postprocess.postprocess import postprocess, star_blocks
    from spa.postprocess.sharpen import read_mtf
    from spa.provenance import make_record

    from spa.commands._common import load_config, seed_of

    cfg = load_config(args, "postprocess")
    seed = seed_of(args, cfg)
    h1, h2, mask, pixel = _read_inputs(args)
    if mask is None:
        mask, level = solvent_mask(0.5 * (h1 + h2), pixel)
        print(f"postprocess: automatic mask, threshold {level:.4g}, {100 * mask.mean():.1f} % of the box",
              file=sys.stderr)
    else:
        mask = mask_from_map(mask)
    mtf = read_mtf(args.mtf) if args.mtf else None
    result = postprocess(h1, h2, mask, pixel, bfactor=args.bfactor, mtf=mtf, seed=seed, fit_low=args.fit_minres)
    box = h1.shape[-1]
    label = resolution_text(result.curves.corrected, 0.143, box, pixel)
    if result.bfactor_automatic and not result.bfactor_fitted:
        print(f"postprocess: no B-factor fitted — fewer than 3 shells between {args.fit_minres:g} Å and the "
              f"resolution ({label}); the map is not sharpened (give --bfactor, or a coarser --fit-minres)",
              file=sys.stderr)
    out = Path(args.output_dir)
    summary = {"resolution_A": round(result.resolution, 3), "resolution": label,
               "at_nyquist": result.at_nyquist, "bfactor_used_A2": round(result.bfactor_used, 1),
               "bfactor_automatic": result.bfactor_automatic, "bfactor_fitted": result.bfactor_fitted,
               "guinier_fit_correlation": round(result.guinier.correlation, 4),
               "randomise_from_A": round(box * pixel / max(result.curves.randomise_from, 1), 3),
               "mask_volume_fraction": round(float(mask.mean()), 4)}
    record = make_record(args.argv, cfg, seed, **summary)
    write_mrc(out / "postprocess.mrc", result.sharpened, pixel, provenance=record)
    write_mrc(out / "postprocess_masked.mrc", result.sharpened_masked, pixel, provenance=record)
    names = {"rlnUnfilteredMapHalf1": args.half1, "rlnUnfilteredMapHalf2": args.half2,
             "rlnMaskName": args.mask or "(automatic)"}
    write_star(out / "postprocess.star", star_blocks(result, box, pixel, names), provenance=record)
    c = result.curves
    plot_fsc(out / "postprocess_fsc.png", [(c.unmasked, "unmasked"), (c.masked, "masked"),
                                             (c.randomised, "phase-randomised, masked"),
                                             (c.corrected, "corrected")], box, pixel)
    g = result.guinier
    plot_guinier(out / "postprocess_guinier.png", g.s2,
                 [(g.ln_amplitude, "masked average, weighted"), (result.guinier_sharpened, "sharpened")],
                 fit=(g.slope, g.intercept, g.fitted), resolution=result.resolution)
    write_figures_index(out, [
        {"file": "postprocess_fsc.png", "title": f"Gold-standard FSC: {label}",
         "caption": "FSC of the two half maps without a mask, with the solvent mask, of the masked halves with "
                    "phases randomised beyond where the unmasked FSC drops below 0.8, and the masked FSC corrected "
                    "for the mask (Chen et al. 2013). The resolution is where the corrected curve crosses 0.143."},
        {"file": "postprocess_guinier.png",
         "title": (f"Guinier plot: B-factor {result.bfactor_used:.0f} Å² used for sharpening"
                   if result.bfactor_fitted or not result.bfactor_automatic else
                   f"Guinier plot: no B-factor fitted (no shells between {args.fit_minres:g} Å and the resolution)"),
         "caption": "Log of the rotationally averaged amplitude against resolution squared; the dashed line is the "
                    f"fit between {args.fit_minres:g} Å and the resolution whose slope gives the B-factor."},
    ])
    from spa.io.atomic import atomic_path

    with atomic_path(out / "postprocess.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    print(json.dumps(summary, ensure_ascii=False))
    print(f"postprocess: resolution {label}, B-factor {result.bfactor_used:.1f} Å² -> {out}", file=sys.stderr)
    return 0
