"""How accurately can the data fix each particle's pose? The ceiling for "within 3°" figures.

    python benchmarks/pose_ceiling.py --sim SIM_DIR [--n 600 --order 5]

``SIM_DIR`` is a ``spa simulate --kind particles`` output (``particles.star``,
``truth/particles.star``, ``truth/class001.mrc``).  One E-step of the refinement
engine runs with every advantage a refinement could at best earn: the TRUE map
as reference (to Nyquist, grey-scaled to the data as refine3d does), the noise
spectrum from the data, and local searches at HEALPix order ``--order`` centred
on the TRUE poses and offsets (RELION's local-search prior, σ = 2 × the fine
step).  The MAP poses' errors then measure what the images themselves allow at
this SNR, B-factor and particle size: no refinement can place a larger fraction
within 3° (the prior centred on the truth even flatters the figure a little).

``--half-maps H1 H2`` aligns each random half against its own map instead (e.g. half maps
reconstructed from the TRUE poses with ``spa reconstruct --subset``): the ceiling with the best
maps these particles can give rather than a noise-free one.  Give each half the OTHER half's map
(a particle's own noise in its reference pulls it to the pose that made the map: 97 % "within 3°"
that way, measured — not a ceiling); each map is filtered by C = √(2·FSC/(1 + FSC)) of the pair (the
weight a map's shell deserves, as a MAP reconstruction would weigh it).

Reported: median pose error, fraction within 3° (and 2°, 5°), and the same for
the translations (px).  Compare with ``bench_refine3d.py`` on the same
simulation settings to tell a refinement that falls short from data that cannot
support the target.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from spa.em.driver3d import load_particles, load_reference
from spa.em.fsc import fsc
from spa.fourier import irfft_centered, radius_3d, rfft_centered, soft_spherical_mask
from spa.geometry.distance import angular_distance
from spa.geometry.euler import euler_to_matrix
from spa.io.star import read_particles, write_particles
from spa.refine3d.refine import Refine3D, Refine3DOptions


def fsc_weighted(maps, box: int):
    """Both maps with each shell scaled by √(2·FSC/(1 + FSC)) of the pair (0 where FSC ≤ 0)."""
    curve = np.clip(fsc(maps[0], maps[1], soft_spherical_mask(box, box / 2 - 5, 5.0)), 0, 1)
    weight = np.sqrt(2 * curve / (1 + curve))
    shells = np.minimum(np.rint(radius_3d(box)).astype(int), len(weight) - 1)
    return [irfft_centered(rfft_centered(m, 3) * weight[shells], box, 3).astype(np.float32) for m in maps]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sim", required=True, help="spa simulate output folder")
    ap.add_argument("--n", type=int, default=600, help="particles used (the first N; default 600)")
    ap.add_argument("--order", type=int, default=5, help="HEALPix order of the local search (default 5)")
    ap.add_argument("--offset-step", type=float, default=0.5, help="px (default 0.5)")
    ap.add_argument("--half-maps", nargs=2, default=None, help="a map per random half instead of the truth")
    args = ap.parse_args()
    sim = Path(args.sim)
    table, optics = read_particles(sim / "particles.star")
    true, _ = read_particles(sim / "truth" / "particles.star")
    true = true.set_index("rlnImageName").loc[table["rlnImageName"]]
    if "rlnSpaIsJunk" in true:
        keep = true["rlnSpaIsJunk"].to_numpy() == 0
        table, true = table[keep], true[keep]
    table, true = table.iloc[: args.n].copy(), true.iloc[: args.n]
    for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"):
        table[c] = true[c].to_numpy()
    with tempfile.TemporaryDirectory() as tmp:
        star = sim / f".pose_ceiling_{args.n}.star"  # beside the images, so their relative names resolve
        write_particles(star, table, optics)
        try:
            table, optics, source, pixel, box = load_particles(star)
            reference = load_reference(sim / "truth" / "class001.mrc", box, pixel)
            opts = Refine3DOptions(ini_high=2.0 * pixel, healpix_order=args.order,
                                   auto_local_healpix_order=args.order, offset_range=2 * args.offset_step,
                                   offset_step=args.offset_step)
            run = Refine3D(table, source, reference, opts, tmp, optics=optics, log=lambda *a: None)
            if args.half_maps:  # each half's reference prepared (grey-scaled) as refine3d prepares it
                refs = []
                for h, m in enumerate(fsc_weighted([load_reference(f, box, pixel) for f in args.half_maps], box)):
                    run.reference = m
                    models, refs_h = run.initialise()
                    refs.append(refs_h[h])
            else:
                models, refs = run.initialise()
            for m in models:
                m.current_shells = box // 2 + 1
            run.angles = table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)
            run.have_poses = True
            sampling = run.sampling()
            est = np.zeros((len(table), 3))
            offsets = np.zeros((len(table), 2))
            for h in (0, 1):
                _, res = run.estep_half(h, models[h], refs[h], sampling)
                est[run.halves[h]] = res["angles"]
                offsets[run.halves[h]] = res["offset"]
        finally:
            star.unlink(missing_ok=True)
    err = angular_distance(euler_to_matrix(*est.T), euler_to_matrix(*run.angles.T))
    true_px = true[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(float) / pixel
    shift_err = np.linalg.norm(offsets - true_px, axis=1)
    report = {
        "particles": len(table), "box": box, "pixel_size_A": pixel, "healpix_order": args.order,
        "fine_step_deg": round(float(sampling.fine_angular_step), 3),
        "pose_error_median_deg": round(float(np.median(err)), 2),
        "within_2deg": round(float(np.mean(err < 2)), 3),
        "within_3deg": round(float(np.mean(err < 3)), 3),
        "within_5deg": round(float(np.mean(err < 5)), 3),
        "offset_error_median_px": round(float(np.median(shift_err)), 2),
    }
    print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    sys.exit(main())
