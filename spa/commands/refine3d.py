"""Gold-standard 3D auto-refinement (as RELION's Refine3D).

The particles are split into two random halves (rlnRandomSubset is kept if
present), each refined independently against the reference low-passed to
--ini-high; the FSC between the half maps sets the regularisation every
iteration; angular sampling starts at --healpix-order (2 = 15°, with finer
oversampled poses around the likely ones) and gets finer when the resolution
stalls, with local searches from --auto-local-healpix-order on; at convergence a final iteration joins the halves to Nyquist.
Writes RELION's file names in --output-dir: run_itNNN_half{1,2}_class001.mrc,
run_itNNN_data.star, and finally run_class001.mrc,
run_half{1,2}_class001_unfil.mrc, run_model.star (with the FSC),
run_data.star (poses), run_fsc.png.  --continue resumes after the last
finished iteration.

Example:  spa refine3d --particles particles.star --reference initial_model.mrc --sym D2 --output-dir Refine3D
"""

from __future__ import annotations

import sys
from dataclasses import fields

from spa.commands._common import dask_client, load_config, option, progress_printer, seed_of

OPTIONS = {
    # cli name: (type, help)
    "particle_diameter": (float, "mask diameter in Å (default 90%% of the box)"),
    "ini_high": (float, "low-pass of the initial reference, Å (default 40)"),
    "sym": (str, "point-group symmetry C1, Cn, Dn, T, O, I1-I4 (default C1)"),
    "healpix_order": (int, "initial angular sampling: HEALPix order (2 = 15°; default 2)"),
    "max_healpix_order": (int, "finest HEALPix order of the auto-refinement (default 6; the resolution "
                                "decides before that)"),
    "auto_local_healpix_order": (int, "from this HEALPix order on, local searches around each pose "
                                      "(default 4 = 3.75°, as RELION); with --healpix-order at or above "
                                      "it and poses in the input STAR, local searches around those "
                                      "from the first iteration"),
    "offset_range": (float, "initial shift search range, pixels (default 5)"),
    "offset_step": (float, "initial shift search step, pixels (default 1)"),
    "tau2_fudge": (float, "regularisation parameter T (default 1)"),
    "max_iter": (int, "maximum number of iterations (default 25)"),
    "low_resol_join_halves": (float, "halves are averaged below this resolution, Å (default 40)"),
    "chunk_size": (int, "particles per task (default 256)"),
    "max_significant": (int, "at most this many coarse samples per particle go to the fine pass "
                               "(RELION's --maxsig; default 512)"),
    "reduction_lanes": (int, "independent running sums per pass over the particles (default 1; more for "
                             "clusters of many workers: results depend on it, not on the workers)"),
    "solvent_mask": (str, "mask (.mrc) applied to the references each iteration"),
}


def add_args(p):
    p.add_argument("--particles", required=True, help="particle STAR file (RELION 3.0/3.1) with images and CTF")
    p.add_argument("--reference", required=True, help="initial reference map (.mrc)")
    p.add_argument("--output-dir", required=True, help="output folder")
    for name, (typ, help_) in OPTIONS.items():
        p.add_argument("--" + name.replace("_", "-"), type=typ, default=None, help=help_)
    p.add_argument("--no-ctf", dest="do_ctf", action="store_false", default=None, help="no CTF correction")
    p.add_argument("--ignore-ctf-first-peak", action="store_true", default=None,
                   help="treat the CTF as 1 until its first peak")


def options_from(args, cfg):
    from spa.refine3d.refine import Refine3DOptions

    kw = {}
    names = {f.name for f in fields(Refine3DOptions)}
    for name in list(OPTIONS) + ["do_ctf", "ignore_ctf_first_peak"]:
        attr = "symmetry" if name == "sym" else name
        value = option(args, name, cfg, None)
        if value is not None and attr in names:
            kw[attr] = value
    kw["seed"] = seed_of(args, cfg)
    kw["backend"] = args.backend
    return Refine3DOptions(**kw)


def main(args) -> int:
    from pathlib import Path

    from spa.em.driver3d import load_particles, load_reference
    from spa.provenance import make_record
    from spa.refine3d.refine import Refine3D

    cfg = load_config(args, "refine3d")
    opts = options_from(args, cfg)
    table, optics, source, pixel_size, box = load_particles(args.particles, need_ctf=opts.do_ctf)
    reference = load_reference(args.reference, box, pixel_size)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    record = make_record(args.argv, cfg, opts.seed, options={k: v for k, v in vars(opts).items()})

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    with dask_client(args, cfg) as client:
        run = Refine3D(table, source, reference, opts, args.output_dir, optics=optics, client=client,
                       provenance=record, log=log, progress=progress_printer)
        _, _, _, res = run.run(continue_=args.continue_, restart=args.restart, resume=args.resume)
    print(f"refine3d: final resolution {res:.2f} Å -> {Path(args.output_dir) / 'run_class001.mrc'}")
    return 0
