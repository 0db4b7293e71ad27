"""Validate a refinement: the angular distribution and how well it samples Fourier space.

  spa validate --particles run_data.star [--sym C2] --output-dir D

From the refined poses (rlnAngleRot, rlnAngleTilt): the distribution of
projection directions (Mollweide plot) and the sampling of Fourier space by
their central planes, symmetry-expanded: the sampling compensation factor
(SCF, 1 for a uniform set; Baldwin & Lyumkis 2020) and the fraction of Fourier
space no particle samples (a missing cone). Writes D/validation.json,
D/angular_distribution.png and figures.json.

With --reslog (Stagg et al. 2014): random subsets of N particles (N halving
--reslog-steps times from the whole set) reconstructed in two halves from the
refined poses; resolution at FSC 0.143 against ln N, whose slope gives the
B-factor of the data (B = 2/slope); D/reslog.png. (Reprojections against class
averages, noise substitution and alignability are not built yet.)
"""

from __future__ import annotations

import json
import sys


def add_args(p):
    p.add_argument("--particles", required=True, help="refined particles STAR (refine3d's run_data.star)")
    p.add_argument("--sym", default="C1", help="point group of the refinement (RELION names; default C1)")
    p.add_argument("--width", type=float, default=3.0, help="angular width of a central plane, degrees (default 3)")
    p.add_argument("--reslog", action="store_true", help="also ResLog (needs the particle images and CTF)")
    p.add_argument("--reslog-steps", type=int, default=4, help="ResLog subset sizes: the set halved this often")
    p.add_argument("--output-dir", required=True, help="folder for validation.json and the plots")


def main(args) -> int:
    from pathlib import Path

    from spa.io.atomic import atomic_path
    from spa.io.star import read_particles
    from spa.plots import write_figures_index
    from spa.validation.angular import fourier_sampling, plot_distribution

    table, _ = read_particles(args.particles, require=("rlnAngleRot", "rlnAngleTilt"))
    sampling = fourier_sampling(table.rlnAngleRot.to_numpy(float), table.rlnAngleTilt.to_numpy(float), args.sym,
                                width=args.width)
    out = Path(args.output_dir)
    summary = {"particles": len(table), "symmetry": args.sym,
               "sampling_compensation_factor": round(sampling.scf, 4),
               "fourier_space_unsampled_fraction": round(sampling.empty_fraction, 4)}
    plot_distribution(out / "angular_distribution.png", table.rlnAngleRot, table.rlnAngleTilt, sampling)
    verdict = ("uniform enough" if sampling.scf > 0.8 and sampling.empty_fraction == 0 else
               "preferred orientation: expect anisotropic resolution" if sampling.empty_fraction == 0 else
               "a region of Fourier space is not sampled (missing cone): the map is anisotropic there")
    figures = []
    if args.reslog:
        from spa.commands._common import progress_printer, seed_of
        from spa.validation.reslog import plot_reslog, reslog

        full, _ = read_particles(args.particles, require=("rlnImageName", "rlnAngleRot", "rlnAngleTilt",
                                                           "rlnAnglePsi"))
        result = reslog(full, args.particles, symmetry=args.sym, seed=seed_of(args, {}), steps=args.reslog_steps,
                        progress=progress_printer("validate: ResLog subsets"))
        summary["reslog"] = {"particles": result.sizes.astype(int).tolist(),
                             "resolution_A": [round(float(r), 3) for r in result.resolutions],
                             "at_nyquist": result.at_nyquist.tolist(),
                             "bfactor_A2": None if result.bfactor is None else round(result.bfactor, 1)}
        plot_reslog(out / "reslog.png", result)
        b = "not fitted (fewer than two points below Nyquist)" if result.bfactor is None else f"{result.bfactor:.0f} Å²"
        figures.append({"file": "reslog.png", "title": f"ResLog: B-factor of the data {b}",
                        "caption": "1/resolution² of random subsets (FSC 0.143 of their halves, refined poses) "
                                   "against ln(number of particles); the slope is 2/B (Stagg et al. 2014)."})
    write_figures_index(out, figures + [{
        "file": "angular_distribution.png",
        "title": f"Angular distribution: SCF {sampling.scf:.2f} — {verdict}",
        "caption": "Left: particles per projection direction. Right: how many particles' central planes pass near "
                   "each direction of Fourier space (symmetry-expanded); the sampling compensation factor is 1 for "
                   "a uniform distribution and falls as the sampling becomes uneven."}])
    with atomic_path(out / "validation.json") as tmp:
        Path(tmp).write_text(json.dumps({**summary, "verdict": verdict}, indent=1))
    print(json.dumps(summary))
    print(f"validate: SCF {sampling.scf:.2f}, unsampled {100 * sampling.empty_fraction:.1f} % ({verdict}) -> {out}",
          file=sys.stderr)
    return 0
