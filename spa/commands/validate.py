"""Validate a refinement: the checks of the field, their numbers and figures.

  spa validate --particles run_data.star --map run_class001.mrc --half1 H1 --half2 H2
               --classes run_classes.mrcs [--truth truth.mrc] [--sym C2] --output-dir D

Checks (--checks, default all; each in its own module of spa.validation):

  angular             projection directions (Mollweide, folded into the asymmetric unit) and how they
                      sample Fourier space: E_od (Naydenova & Russo 2017), SCF, unsampled fraction
  reprojection        each 2D class average against the best-matching projection of the map
  reslog              resolution of random subsets against ln N; B-factor of the data (Stagg et al. 2014)
  noise_substitution  phases randomised beyond a frequency in the images, halves re-reconstructed from the
                      given poses (Chen et al. 2013; cheap mode: no re-refinement) or, with
                      --noise-substitution-mode refine, refined again by refine3d on a subset
  noise_particles     noise images of the same spectrum aligned like the particles (Heymann 2015)
  alignability        per particle: posterior spread (precision) and agreement with a fresh global search
                      (accuracy), on a random subset
  handedness          with --truth (a map of known hand): the map against its mirror; otherwise says why the
                      hand cannot be judged

Writes D/validation.json (the numbers and a verdict per check), the plots and D/figures.json.
"""

from __future__ import annotations

import json
import sys


def add_args(p):
    from spa.validation.run import CHECKS

    p.add_argument("--particles", required=True, help="refined particles STAR (refine3d's run_data.star)")
    p.add_argument("--map", default=None, help="refined map (.mrc); needed by reprojection, noise_particles, "
                                               "alignability, handedness")
    p.add_argument("--half1", default=None, help="first unfiltered half map (.mrc)")
    p.add_argument("--half2", default=None, help="second unfiltered half map (.mrc)")
    p.add_argument("--classes", default=None, help="2D class averages (.mrcs), for the reprojection check")
    p.add_argument("--truth", default=None, help="a map of known hand (e.g. a simulation's truth), for handedness")
    p.add_argument("--sym", default="C1", help="point group of the refinement (RELION names; default C1)")
    p.add_argument("--checks", default=None,
                   help=f"comma-separated checks to run (default: all of {','.join(CHECKS)} that the inputs "
                        "allow — without --map only angular, reslog and noise_substitution)")
    p.add_argument("--subset", type=int, default=300,
                   help="particles of the checks that re-align (noise_particles, alignability; default 300)")
    p.add_argument("--width", type=float, default=3.0, help="angular width of a central plane, degrees (default 3)")
    p.add_argument("--reslog-steps", type=int, default=4, help="ResLog subset sizes: the set halved this often")
    p.add_argument("--search-order", type=int, default=2, help="HEALPix order of the global searches (default 2)")
    p.add_argument("--final-order", type=int, default=4,
                   help="HEALPix order of the local searches, the refinement's last (default 4)")
    p.add_argument("--search-resolution", type=float, default=None,
                   help="Å: low-pass of the map in the alignability searches (default the half maps' "
                        "resolution)")
    p.add_argument("--noise-reference-resolution", type=float, default=None,
                   help="Å: low-pass of the reference of the noise-particle test (default 2.5 × the resolution, "
                        "at least 10)")
    p.add_argument("--noise-substitution-mode", choices=["given", "refine"], default="given",
                   help="given: reconstruct the substituted images from the refined poses (cheap, default); "
                        "refine: refine them again with refine3d (gold standard, local searches, --subset "
                        "particles)")
    p.add_argument("--substitute-from", type=float, default=None,
                   help="Å: noise substitution beyond this resolution (default where the half maps' FSC drops "
                        "below 0.8, at most ¾ of Nyquist)")
    p.add_argument("--output-dir", required=True, help="folder for validation.json, the plots and figures.json")


def main(args) -> int:
    from pathlib import Path

    from spa.commands._common import load_config, progress_printer, seed_of
    from spa.errors import SpaInputError
    from spa.io.atomic import atomic_path
    from spa.plots import write_figures_index
    from spa.validation.run import CHECKS, MAP_CHECKS, ValidationInputs, validate

    cfg = load_config(args, "validate")
    if args.checks is None:
        checks = CHECKS if args.map else tuple(c for c in CHECKS if c not in MAP_CHECKS)
    else:
        checks = tuple(c.strip() for c in args.checks.split(",") if c.strip())
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        raise SpaInputError(None, f"unknown check(s) {', '.join(unknown)}: choose from {', '.join(CHECKS)}")
    if args.subset < 10:
        raise SpaInputError(None, f"--subset must be at least 10 particles, got {args.subset}")
    inputs = ValidationInputs(
        particles=args.particles, map=args.map, half1=args.half1, half2=args.half2, classes=args.classes,
        truth=args.truth, symmetry=args.sym, checks=checks, subset=args.subset, reslog_steps=args.reslog_steps,
        width=args.width, search_order=args.search_order, final_order=args.final_order,
        search_resolution=args.search_resolution, noise_reference_resolution=args.noise_reference_resolution,
        substitute_from=args.substitute_from, substitution_mode=args.noise_substitution_mode, seed=seed_of(args, cfg), backend=getattr(args, "backend", None))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    from spa.provenance import make_record

    record = make_record(getattr(args, "argv", None), cfg, inputs.seed)
    summary, figures = validate(inputs, out, progress=progress_printer,
                                log=lambda line: print(line, file=sys.stderr), provenance=record)
    write_figures_index(out, figures)
    with atomic_path(out / "validation.json") as tmp:
        Path(tmp).write_text(json.dumps({**summary, "provenance": record}, indent=1, ensure_ascii=False))
    print(json.dumps(summary, ensure_ascii=False))
    for name in checks:
        print(f"validate: {name}: {summary[name].get('verdict', '')}", file=sys.stderr)
    print(f"validate: -> {out}", file=sys.stderr)
    return 0
