"""3D classification (as RELION's Class3D).

K classes from one reference (low-passed to --ini-high): the first iteration
reconstructs each class from a subset of the particles, found by 3D variability
analysis (k-means on the particles' coordinates along the top K−1 principal
components of the data around their mean map, at --variability-resolution Å,
with the poses in the STAR or, without any, from --consensus-iter iterations of
one-class alignment to the reference) or, with
--init-classes random, random subsets as RELION; or from K
references (one map per class, e.g. a multi-class ab initio's); later
iterations assign particles to classes by regularised likelihood with a
global orientation search (--healpix-order 2 = 15° with finer oversampled
poses around the likely ones, i.e. 7.5°) or with poses kept fixed
(--skip-align), T = --tau2-fudge (default 4), an optional focus mask
(--reference-mask).  Writes run_itNNN_class00K.mrc, run_itNNN_model.star,
run_itNNN_data.star (rlnClassNumber) and the final run_class00K.mrc,
run_model.star, run_data.star.  --continue resumes after the last finished
iteration.  Run it several times with different --seed and keep the stable
particles with `spa consensus classes`.

Example:  spa class3d --particles particles.star --reference refined.mrc --classes 3 --output-dir Class3D
"""

from __future__ import annotations

import sys
from dataclasses import fields

from spa.commands._common import dask_client, load_config, option, progress_printer, seed_of

OPTIONS = {
    "iter": (int, "number of iterations (default 25)"),
    "tau2_fudge": (float, "regularisation parameter T (default 4)"),
    "particle_diameter": (float, "mask diameter in Å (default 90%% of the box)"),
    "ini_high": (float, "low-pass of the initial reference, Å (default 40)"),
    "highres_limit": (float, "highest resolution used, Å (default Nyquist)"),
    "sym": (str, "point-group symmetry (default C1)"),
    "healpix_order": (int, "angular sampling: HEALPix order (2 = 15°, oversampled to 7.5°; default 2)"),
    "sigma_ang": (float, "local searches: σ (degrees) of the Gaussian prior around each particle's pose "
                          "in the STAR (RELION's --sigma_ang; default: global search)"),
    "offset_range": (float, "shift search range, pixels (default 5)"),
    "offset_step": (float, "shift search step, pixels (default 1)"),
    "reference_mask": (str, "mask (.mrc) for focused classification"),
    "balance_iter": (int, "iterations from the start whose class assignment is balanced (equal class sizes "
                           "per chunk; default: half of --iter from one reference, 0 from one reference per class)"),
    "init_classes": (str, "how classes start from one reference: 'variability' (3D variability "
                          "analysis, default) or 'random' (random subsets, as RELION)"),
    "variability_resolution": (float, "resolution (Å) of the 3D variability analysis that seeds the classes "
                                      "(default 8)"),
    "consensus_iter": (int, "without poses in the STAR: iterations of one-class alignment that give the "
                            "poses for the 3D variability analysis (default 8)"),
    "chunk_size": (int, "particles per task (default 256)"),
    "max_significant": (int, "at most this many coarse samples per particle go to the fine pass "
                               "(RELION's --maxsig; default 64)"),
    "reduction_lanes": (int, "independent running sums per pass over the particles (default 1; more for "
                             "clusters of many workers: results depend on it, not on the workers)"),
}


def add_args(p):
    p.add_argument("--particles", required=True, help="particle STAR file (RELION 3.0/3.1) with images and CTF")
    p.add_argument("--reference", required=True, nargs="+",
                   help="reference map (.mrc): one for all classes, or K maps, one per class")
    p.add_argument("--classes", type=int, required=True, help="number of classes K")
    p.add_argument("--output-dir", required=True, help="output folder")
    for name, (typ, help_) in OPTIONS.items():
        p.add_argument("--" + name.replace("_", "-"), type=typ, default=None, help=help_)
    p.add_argument("--skip-align", action="store_true", default=None, help="keep the input poses (no alignment)")
    p.add_argument("--no-ctf", dest="do_ctf", action="store_false", default=None, help="no CTF correction")


def options_from(args, cfg):
    from spa.class3d.classify import Class3DOptions

    names = {f.name for f in fields(Class3DOptions)}
    kw = {}
    for name in list(OPTIONS) + ["skip_align", "do_ctf"]:
        attr = {"sym": "symmetry", "iter": "n_iter"}.get(name, name)
        value = option(args, name, cfg, None)
        if value is not None and attr in names:
            kw[attr] = value
    return Class3DOptions(n_classes=args.classes, seed=seed_of(args, cfg), backend=args.backend, **kw)


def main(args) -> int:
    from pathlib import Path

    import numpy as np

    from spa.class3d.classify import Class3D
    from spa.em.driver3d import load_particles, load_reference
    from spa.errors import SpaInputError
    from spa.provenance import make_record

    cfg = load_config(args, "class3d")
    opts = options_from(args, cfg)
    if opts.n_classes < 1:
        raise SpaInputError(args.particles, f"--classes must be ≥ 1, got {opts.n_classes}")
    table, optics, source, pixel_size, box = load_particles(args.particles, need_ctf=opts.do_ctf)
    if len(args.reference) not in (1, opts.n_classes):
        raise SpaInputError(args.reference[1], f"give one reference or one per class ({opts.n_classes}), "
                            f"not {len(args.reference)}")
    maps = [load_reference(path, box, pixel_size) for path in args.reference]
    reference = maps[0] if len(maps) == 1 else np.stack(maps)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    record = make_record(args.argv, cfg, opts.seed, options=dict(vars(opts)))

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    with dask_client(args, cfg) as client:
        run = Class3D(table, source, reference, opts, args.output_dir, optics=optics, client=client,
                      provenance=record, log=log, progress=progress_printer)
        model, _, table = run.run(continue_=args.continue_, restart=args.restart, resume=args.resume)
    sizes = table["rlnClassNumber"].value_counts().sort_index()
    print("class3d: particles per class " + ", ".join(f"{k}: {v}" for k, v in sizes.items()))
    return 0
