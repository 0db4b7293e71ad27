"""2D classification by regularised likelihood (as RELION's Class2D).

K classes start as averages of random subsets (random in-plane angles); each
iteration searches in-plane rotation (--psi-step, with finer oversampled
angles around the likely ones) and shifts (--offset-range/--offset-step, in
pixels, around each particle's current origin), then updates the class
averages by a CTF-corrected Wiener/MAP step with regularisation T
(--tau2-fudge).  Writes, in --output-dir, run_itNNN_classes.mrcs,
run_itNNN_model.star, run_itNNN_data.star every iteration, the final
run_classes.mrcs, run_model.star, run_data.star and a class gallery
(run_classes.png, sorted by size, listed in figures.json).  The last iteration also scores every
particle against the other random half's averages and against --noise-decoys
images of pure noise: rlnSpaNoisePValue in run_data.star, which `spa select`
uses to drop particles that match no better than noise.  --continue resumes
after the last finished iteration.

Example:  spa class2d --particles particles.star --classes 50 --particle-diameter 180 --output-dir Class2D
"""

from __future__ import annotations

import sys
from pathlib import Path

from spa.commands._common import dask_client, load_config, option, progress_printer, seed_of


def add_args(p):
    p.add_argument("--particles", required=True, help="particle STAR file (RELION 3.0/3.1) with images and CTF")
    p.add_argument("--classes", type=int, required=True, help="number of classes K")
    p.add_argument("--output-dir", required=True, help="output folder")
    p.add_argument("--iter", type=int, default=None, help="number of iterations (default 25)")
    p.add_argument("--tau2-fudge", type=float, default=None, help="regularisation parameter T (default 2)")
    p.add_argument("--particle-diameter", type=float, default=None,
                   help="circular mask diameter in Å (default 90%% of the box)")
    p.add_argument("--highres-limit", type=float, default=None, help="highest resolution used, Å (default Nyquist)")
    p.add_argument("--ini-high", type=float, default=None,
                   help="resolution of the initial references and first iteration, Å (default 30)")
    p.add_argument("--ignore-ctf-first-peak", action="store_true", default=None,
                   help="treat the CTF as 1 until its first peak (RELION --ctf_intact_first_peak)")
    p.add_argument("--ctf-premultiplied", action="store_true", default=None,
                   help="images were already multiplied by their CTF")
    p.add_argument("--no-ctf", dest="do_ctf", action="store_false", default=None, help="no CTF correction")
    p.add_argument("--psi-step", type=float, default=None, help="in-plane angular step, degrees (default 6)")
    p.add_argument("--offset-range", type=float, default=None, help="shift search range, pixels (default 5)")
    p.add_argument("--offset-step", type=float, default=None, help="shift search step, pixels (default 1)")
    p.add_argument("--max-significant", type=int, default=None,
                   help="at most this many coarse samples per particle go to the fine pass (default 64)")
    p.add_argument("--no-center-classes", dest="center_classes", action="store_false", default=None,
                   help="do not re-centre class averages on their centre of mass")
    p.add_argument("--class-inactivity-threshold", type=float, default=None,
                   help="in the first half of the run, re-seed a class holding fewer than this fraction of an "
                        "average class's particles by splitting the largest class (RELION 4; default 0.1, 0: off)")
    p.add_argument("--noise-decoys", type=int, default=None,
                   help="images of pure noise scored in the last iteration for each particle's noise p-value "
                        "(default 1000, 0: off)")
    p.add_argument("--chunk-size", type=int, default=None, help="particles per task (default 256)")
    p.add_argument("--reduction-lanes", type=int, default=None,
                   help="independent running sums per pass over the particles (default 1; more for clusters of "
                        "many workers: results depend on it, not on the workers)")


def options_from(args, cfg):
    from spa.class2d.classify import Class2DOptions

    defaults = Class2DOptions(n_classes=args.classes)
    kw = {}
    for name, attr in (("iter", "n_iter"), ("tau2_fudge", "tau2_fudge"), ("particle_diameter", "particle_diameter"),
                       ("highres_limit", "highres_limit"), ("ini_high", "ini_high"),
                       ("ignore_ctf_first_peak", "ignore_ctf_first_peak"), ("ctf_premultiplied", "ctf_premultiplied"),
                       ("do_ctf", "do_ctf"), ("psi_step", "psi_step"), ("offset_range", "offset_range"),
                       ("offset_step", "offset_step"), ("max_significant", "max_significant"),
                       ("center_classes", "center_classes"), ("chunk_size", "chunk_size"),
                       ("class_inactivity_threshold", "class_inactivity_threshold"),
                       ("noise_decoys", "noise_decoys"), ("reduction_lanes", "reduction_lanes")):
        kw[attr] = option(args, name, cfg, getattr(defaults, attr))
    kw["seed"] = seed_of(args, cfg)
    kw["backend"] = args.backend
    return Class2DOptions(n_classes=args.classes, **kw)


def main(args) -> int:
    from spa.class2d.classify import Class2D
    from spa.class2d.gallery import write_gallery
    from spa.errors import SpaInputError
    from spa.io.images import ParticleImages
    from spa.io.star import has_ctf, read_particles
    from spa.provenance import make_record

    cfg = load_config(args, "class2d")
    opts = options_from(args, cfg)
    if opts.n_classes < 1:
        raise SpaInputError(args.particles, f"--classes must be ≥ 1, got {opts.n_classes}")
    particles, optics = read_particles(args.particles, require=("rlnImageName",))
    if len(particles) < opts.n_classes:
        raise SpaInputError(args.particles, f"{len(particles)} particles cannot make {opts.n_classes} classes")
    if opts.do_ctf and not has_ctf(particles, args.particles):
        print("class2d: no CTF columns (rlnDefocusU/V/Angle): running without CTF correction", file=sys.stderr)
        opts.do_ctf = False
    source = ParticleImages(particles, args.particles)
    record = make_record(args.argv, {**cfg, **{k: v for k, v in vars(opts).items()}}, opts.seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with dask_client(args, cfg) as client:
        run = Class2D(particles, source, opts, out, optics=optics, client=client, provenance=record,
                      log=lambda m: print(m, file=sys.stderr, flush=True), progress=progress_printer)
        model, refs, table = run.run(continue_=args.continue_, restart=args.restart, resume=args.resume)
    import numpy as np

    from spa.plots import write_figures_index

    write_gallery(out / "run_classes.png", np.asarray(refs.images), model.pdf_class, model.resolution_angstrom(),
                  title=f"class2d: {len(table)} particles, iteration {model.iteration}")
    write_figures_index(out, [{
        "file": "run_classes.png", "title": f"2D class averages ({opts.n_classes} classes, {len(table)} particles)",
        "caption": "The class averages of the last iteration, largest class first; each panel reads class number · "
                   "share of the particles · estimated resolution. Sharp, varied views of the molecule are good "
                   "classes; blurred or empty ones collect noise and junk."}])
    print(f"class2d: {len(table)} particles in {opts.n_classes} classes -> {out}/run_classes.mrcs", file=sys.stderr)
    return 0
