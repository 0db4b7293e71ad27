"""Motion correction of movies (like RELION's MotionCorr job, own implementation).

  spa motion --movies Import/movies.star --output-dir MotionCorr [--patches-x 5 --patches-y 5] [--binning 2]

For each movie: gain correction, Fourier binning (--binning, e.g. 2 for
super-resolution movies), whole-frame alignment (iterative frame-to-sum
cross-correlation with a B-factor low-pass, sub-pixel peaks, outlier frames
replaced by the smooth trajectory), optionally patch-based local alignment
fitted with RELION's third-order polynomial model, and the sums: the
dose-weighted micrograph (Grant & Grigorieff 2015) and the unweighted one
(for CTF estimation).  Writes per movie <name>.mrc, <name>_noDW.mrc and
<name>.star (trajectories, RELION's layout), and corrected_micrographs.star,
movies_rejected.star (movies that could not be corrected, with the reason),
drift.png + figures.json.

Resumable: a movie already corrected with the same options is skipped; a
movie added to movies.star since the last run is corrected alone.  --restart
redoes every movie.  Movies go to the Dask workers in batches (--batch-size).
"""

from __future__ import annotations

import sys

from spa.commands._common import dask_client, load_config, option, progress_printer

# option -> (MotionOptions field, type)
FIELDS = {
    "binning": float, "bfactor": float, "patch_bfactor": float, "patches_x": int, "patches_y": int,
    "group_frames": int, "first_frame": int, "last_frame": int, "max_shift": float, "max_iter": int,
    "tolerance": float, "early_dose": float,
}


def add_args(p):
    p.add_argument("--movies", required=True, help="movies STAR (spa import's movies.star, or RELION's)")
    p.add_argument("--output-dir", required=True, help="output folder")
    g = p.add_argument_group("alignment")
    g.add_argument("--binning", type=float, default=None, help="Fourier binning factor (default 1; 2 for super-resolution)")
    g.add_argument("--bfactor", type=float, default=None, help="B-factor of the whole-frame correlations, Å² (default 500)")
    g.add_argument("--patch-bfactor", type=float, default=None, help="B-factor of the patch correlations, Å² (default 500)")
    g.add_argument("--patches-x", type=int, default=None, help="patches along x for local motion (default 5; 1 with --patches-y 1: none)")
    g.add_argument("--patches-y", type=int, default=None, help="patches along y (default 5)")
    g.add_argument("--group-frames", type=int, default=None, help="frames summed for alignment (default 1)")
    g.add_argument("--first-frame", type=int, default=None, help="first frame to sum, 1-based (default 1)")
    g.add_argument("--last-frame", type=int, default=None, help="last frame to sum (default 0: the last)")
    g.add_argument("--max-shift", type=float, default=None, help="largest shift searched, Å (default 80)")
    g.add_argument("--max-iter", type=int, default=None, help="alignment iterations at most (default 10)")
    g.add_argument("--tolerance", type=float, default=None, help="stop when no shift changes more, px (default 0.01)")
    g.add_argument("--no-smooth", dest="smooth", action="store_false", default=None,
                   help="keep the measured whole-frame shifts (default: a robust cubic fit over a sliding 11-frame window)")
    g = p.add_argument_group("dose and output")
    g.add_argument("--dose-per-frame", type=float, default=None,
                   help="e⁻/Å² per frame (default: the movies' rlnMicrographDoseRate)")
    g.add_argument("--no-dose-weighting", dest="dose_weighting", action="store_false", default=None,
                   help="write the unweighted sum as the micrograph too")
    g.add_argument("--early-dose", type=float, default=None, help="end of the 'early' motion, e⁻/Å² (default 4)")
    g.add_argument("--float16", action="store_true", default=None, help="write micrographs as float16")
    g.add_argument("--batch-size", type=int, default=None, help="movies per Dask task (default 4)")


def main(args) -> int:
    from spa.motion.correct import MotionOptions
    from spa.motion.run import run_motion
    from spa.provenance import make_record

    cfg = load_config(args, "motion")
    values = {}
    for name, kind in FIELDS.items():
        value = option(args, name, cfg, None)
        if value is not None:
            values[name] = kind(value)
    for name in ("smooth", "dose_weighting", "float16"):
        value = option(args, name, cfg, None)
        if value is not None:
            values[name] = bool(value)
    options = MotionOptions(**values)
    dose = option(args, "dose_per_frame", cfg, None)
    record = make_record(args.argv, options.as_dict(), None)
    with dask_client(args, cfg) as client:
        summary = run_motion(args.movies, args.output_dir, options, client=client,
                             backend_name=option(args, "backend", cfg, None),
                             batch_size=int(option(args, "batch_size", cfg, 4) or 4),
                             dose_per_frame=None if dose is None else float(dose), provenance=record,
                             progress=progress_printer("motion: movies"), restart=bool(args.restart))
    print(f"motion: {summary['processed']} movies corrected, {summary['done_before']} done before, "
          f"{summary['rejected']} rejected -> {summary['star']} ({summary['micrographs']} micrographs)",
          file=sys.stderr)
    return 0
