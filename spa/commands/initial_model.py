"""Ab-initio 3D initial model: SGD from a random start, candidates chosen by reprojection (RELION's InitialModel).

Particles are Fourier-cropped to a small working box (pixel ≈ final
resolution / 3).  Each candidate is a stochastic-gradient-descent run from
random blobs (--candidates runs with seeds seed, seed+1000, …): random
mini-batches (90 growing to --batch-size images) are aligned over all
orientations and shifts and the maps take one stochastic step, resolution
rising from --initial-resolution to --final-resolution (Å) over --iter
iterations; --classes K maps are refined at once with soft assignment.
With --class-averages (a 2D class-average stack, e.g. class2d's
run_classes.mrcs), a second candidate comes from common lines between the
averages (voting + synchronisation), and all candidates are matched against
the averages; without it they are matched against random particles.  The
candidate whose reprojections match best (median correlation) is chosen —
from 3 candidates on, the one the other candidates reproduce best instead
(median correlation after aligning the maps, mirror allowed: a wrong map can
match blurred averages better) —
aligned against every particle once more at the final resolution, optionally
symmetrised (--sym: axes found and put in RELION's setting), and written at
the particles' original box and pixel size.

Outputs in --output-dir: initial_model.mrc (the most populated class),
initial_model_mirror.mrc (the other hand: projections cannot tell which is
right), initial_model_class00k.mrc for K > 1, run_data.star (particles with
rlnAngleRot/Tilt/Psi, rlnOriginX/YAngst, rlnClassNumber from the final
pass), candidates/candidate_NN.mrc, candidates.star (scores), the correlation
histogram candidate_scores.png and initial_model.json (scores, notes).
The same --seed gives the same map (--continue simply runs again: a run
takes minutes and is deterministic).  --workers N runs the candidates in
parallel on a local Dask cluster.

Example:  spa initial-model --particles Select/particles.star --class-averages Class2D/run_classes.mrcs --output-dir InitialModel
"""

from __future__ import annotations

import sys
from pathlib import Path

from spa.commands._common import dask_client, load_config, option, progress_printer, seed_of


def add_args(p):
    p.add_argument("--particles", required=True, help="particle STAR file (RELION 3.0/3.1) with images and CTF")
    p.add_argument("--output-dir", required=True, help="output folder")
    p.add_argument("--classes", type=int, default=None, help="number of classes K (default 1)")
    p.add_argument("--sym", default=None, help="point group imposed at the end, e.g. C1, C4, D2, O (default C1)")
    p.add_argument("--iter", type=int, default=None, help="SGD iterations per candidate (default 60)")
    p.add_argument("--initial-iter", type=int, default=None,
                   help="extra iterations at the initial resolution before the ramp (default 30)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="final mini-batch size, images (default 300; the first batches hold 90)")
    p.add_argument("--initial-resolution", type=float, default=None,
                   help="resolution of the random start and first iterations, Å (default 35)")
    p.add_argument("--final-resolution", type=float, default=None,
                   help="resolution reached at the end, Å (default 12, or what the working box allows)")
    p.add_argument("--particle-diameter", type=float, default=None,
                   help="spherical mask diameter, Å (default 80%% of the box)")
    p.add_argument("--class-averages", default=None,
                   help="2D class averages (.mrcs stack) for common lines and for choosing the candidate")
    p.add_argument("--candidates", type=int, default=None, help="number of SGD runs (seeds) to choose from (default 1)")
    p.add_argument("--working-box", type=int, default=None,
                   help="working box in pixels (default: pixel ≈ final resolution / 3, at least 24)")
    p.add_argument("--learning-rate", type=float, default=None, help="initial SGD learning rate η (default 0.4)")
    p.add_argument("--tau2-fudge", type=float, default=None, help="regularisation parameter T (default 4)")
    p.add_argument("--offset-range", type=float, default=None, help="shift search range, Å (default 8%% of the box)")
    p.add_argument("--max-sgd-particles", type=int, default=None,
                   help="particles held in memory for the SGD mini-batches: a random subset when there are more "
                        "(default 20000); the final pass aligns every particle, read chunk by chunk")


def main(args) -> int:
    from spa.errors import SpaInputError
    from spa.initial_model.driver import InitialModelOptions, prepare_inputs, run_initial_model, write_outputs
    from spa.initial_model.sgd import SGDOptions
    from spa.initial_model.working import MAX_HELD
    from spa.provenance import make_record

    cfg = load_config(args, "initial_model")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    d = SGDOptions()
    seed = seed_of(args, cfg)
    sgd = SGDOptions(
        n_classes=int(option(args, "classes", cfg, d.n_classes)),
        n_iter=int(option(args, "iter", cfg, 60)),
        n_initial_iter=int(option(args, "initial_iter", cfg, d.n_initial_iter)),
        batch_end=int(option(args, "batch_size", cfg, d.batch_end)),
        initial_resolution=float(option(args, "initial_resolution", cfg, d.initial_resolution)),
        final_resolution=float(option(args, "final_resolution", cfg, d.final_resolution)),
        particle_diameter=option(args, "particle_diameter", cfg, None),
        learning_rate=float(option(args, "learning_rate", cfg, d.learning_rate)),
        tau2_fudge=float(option(args, "tau2_fudge", cfg, d.tau2_fudge)),
        offset_range=option(args, "offset_range", cfg, None),
        seed=seed,
        backend=args.backend,
    )
    n_cand = int(option(args, "candidates", cfg, 1))
    sym = str(option(args, "sym", cfg, "C1"))
    from spa.geometry.symmetry import parse_group

    try:
        sym = parse_group(sym)
    except ValueError as exc:
        raise SpaInputError(None, f"--sym: {exc}") from None
    for name, value, ok in (("--classes", sgd.n_classes, sgd.n_classes >= 1), ("--iter", sgd.n_iter, sgd.n_iter >= 1),
                            ("--initial-iter", sgd.n_initial_iter, sgd.n_initial_iter >= 0),
                            ("--candidates", n_cand, n_cand >= 1), ("--batch-size", sgd.batch_end, sgd.batch_end >= 2),
                            ("--initial-resolution", sgd.initial_resolution, sgd.initial_resolution > 0),
                            ("--final-resolution", sgd.final_resolution, 0 < sgd.final_resolution)):
        if not ok:
            raise SpaInputError(None, f"{name} {value} is out of range")
    if sgd.particle_diameter is not None and float(sgd.particle_diameter) <= 0:
        raise SpaInputError(None, f"--particle-diameter must be > 0 Å, got {sgd.particle_diameter}")
    sgd.batch_start = min(sgd.batch_start, sgd.batch_end)
    if sgd.final_resolution > sgd.initial_resolution:
        sgd.initial_resolution = sgd.final_resolution

    wb = option(args, "working_box", cfg, None)
    max_held = int(option(args, "max_sgd_particles", cfg, MAX_HELD))
    cav = option(args, "class_averages", cfg, None)
    ws, optics, averages = prepare_inputs(args.particles, sgd, working_box=int(wb) if wb else None,
                                          max_held=max_held, class_averages=cav, seed=seed, log=log,
                                          progress=progress_printer("initial-model: reading particles"))
    wb = ws.box

    opts = InitialModelOptions(sgd=sgd, n_candidates=n_cand, symmetry=sym)
    config = {k: v for k, v in vars(sgd).items() if k != "backend"}
    config.update(candidates=n_cand, sym=sym, working_box=wb, class_averages=cav, max_sgd_particles=max_held)
    record = make_record(args.argv, {**cfg, **config}, seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with dask_client(args, cfg) as client:
        result = run_initial_model(ws, opts, class_averages=averages, client=client, log=log,
                                   progress=progress_printer("initial-model: final pass"))
    what = "class average" if averages is not None else "particle"
    write_outputs(out, result, ws, optics, record, what=what)
    for note in result.notes:
        log(f"initial-model: note: {note}")
    log(f"initial-model: chose {result.candidates[result.chosen].name}; map -> {out / 'initial_model.mrc'}")
    return 0
