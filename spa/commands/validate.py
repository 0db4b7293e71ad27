"""Validate a refinement: the angular distribution and how well it samples Fourier space.

  spa validate --particles run_data.star [--sym C2] --output-dir D

From the refined poses (rlnAngleRot, rlnAngleTilt): the distribution of
projection directions (Mollweide plot) and the sampling of Fourier space by
their central planes, symmetry-expanded: the sampling compensation factor
(SCF, 1 for a uniform set; Baldwin & Lyumkis 2020) and the fraction of Fourier
space no particle samples (a missing cone). Writes D/validation.json,
D/angular_distribution.png and figures.json. (Reprojections against class
averages, ResLog, noise substitution and alignability are not built yet.)
"""

from __future__ import annotations

import json
import sys


def add_args(p):
    p.add_argument("--particles", required=True, help="refined particles STAR (refine3d's run_data.star)")
    p.add_argument("--sym", default="C1", help="point group of the refinement (RELION names; default C1)")
    p.add_argument("--width", type=float, default=3.0, help="angular width of a central plane, degrees (default 3)")
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
    write_figures_index(out, [{
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
