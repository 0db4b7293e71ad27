"""Select 2D classes by hand (--classes 1,4,7) or automatically (--auto), recentre, remove duplicates.

Reads run_data.star, run_model.star and run_classes.mrcs of a class2d run
(--class2d-dir) and writes, in --output-dir, particles.star (the particles of
the kept classes; with --recentre their origins moved so their class average's
centre of mass is centred; with --remove-duplicates Å, particles of the same
micrograph closer than that after recentring are reduced to the one with the
highest rlnMaxValueProbDistribution), class_averages.star (all classes with
their measures and rlnSelected), selected_classes.mrcs and a gallery PNG with
the kept classes framed.  With --auto, particles of the kept classes whose
noise p-value (class2d's rlnSpaNoisePValue) exceeds max_noise_pvalue (0.1)
are dropped too: they match the class averages no better than images of pure
noise do, and so are particles whose residual after subtracting their posed,
CTF-modulated class average holds a straight edge or an off-centre second
particle, more than the good particles of its class show (robust z over the
class's members: rlnSpaEdgePValue < max_edge_pvalue, 0.001; rlnSpaBlobPValue <
max_overlap_pvalue, 0.01; the images are
read: --particles names the STAR class2d read when the image paths do not
resolve from here).  Classes are also judged on features of the unmasked
average of their aligned particles (power outside vs inside the particle disc,
a straight-edge score, centre of mass and radius of gyration; columns of
class_averages.star).  Thresholds come from --threshold NAME=VALUE or the config's
``select`` section (see spa.class2d.select.SelectionRules).

Example:  spa select --class2d-dir Class2D --auto --output-dir Select --remove-duplicates 40
"""

from __future__ import annotations

import sys

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
                   "min_particle_ssnr_ratio, max_noise_pvalue, max_outside_ratio, max_edge_score, max_com_radius, "
                   "max_gyration_ratio, max_edge_pvalue, max_overlap_pvalue, rescue_noise_pvalue); repeatable, wins over the config's select section")
    p.add_argument("--mask-diameter", type=float, default=None, help="mask diameter in Å for the measures "
                   "(default: 90%% of the box)")
    p.add_argument("--particle-diameter", type=float, default=None, metavar="Å",
                   help="particle diameter for the class features and the edge / second-particle tests "
                        "(default: the mask diameter)")
    p.add_argument("--particles", default=None, metavar="STAR",
                   help="the STAR file class2d read: its folder resolves image names run_data.star does not "
                        "(default: the current directory, then the class2d folder)")


def main(args) -> int:
    from spa.class2d.select import SelectionRules
    from spa.class2d.selection import select_from_run, summary, write_selection
    from spa.provenance import make_record

    cfg = load_config(args, "select")
    cfg.update(_parse_thresholds(args.threshold))
    rules = SelectionRules.from_config(cfg)
    sel = select_from_run(args.class2d_dir, rules, auto=args.auto, classes=args.classes, iteration=args.iteration,
                          mask_diameter=option(args, "mask_diameter", cfg, None),
                          per_particle=cfg.get("max_noise_pvalue") is not None,
                          recentre_particles=option(args, "recentre", cfg, True),
                          duplicate_distance=option(args, "remove_duplicates", cfg, None),
                          particle_diameter=option(args, "particle_diameter", cfg, None),
                          particles_star=args.particles,
                          residual_test=any(cfg.get(k) is not None for k in ("max_edge_pvalue",
                                                                             "max_overlap_pvalue")))
    for note in sel.notes:
        print(f"select: {note}", file=sys.stderr)
    record = make_record(args.argv, cfg, None, selected_classes=sel.selected)
    write_selection(args.output_dir, sel, rules, provenance=record)
    print(f"select: {summary(sel, rules)} -> {args.output_dir}/particles.star", file=sys.stderr)
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
        if value.strip().lower() in ("true", "false"):  # switches (residual_log_scores)
            out[name] = value.strip().lower() == "true"
            continue
        try:
            out[name] = float(value)
        except ValueError:
            raise SpaInputError(None, f"--threshold {item!r}: {value!r} is not a number") from None
    return out
