"""The refined map against the map its particles' TRUE poses give, made and compared alike (issue 22, point 5).

Refines a data set whose truth is known (``spa refine3d`` from the true map low-passed to --ini-high),
then reconstructs the same particles and halves at their true poses exactly as refine3d makes its final map
(``spa reconstruct --poses-from --like-refine3d``), postprocesses both pairs of half maps with the same mask,
and compares both full maps with the truth after the same alignment.  Prints one Markdown table:
gold-standard (corrected, masked) resolution, B-factor, FSC 0.5 / 0.143 against the truth, and the
per-shell shortfall of the refined map below the true-pose map.

    python benchmarks/like_with_like.py --particles hb_c2/particles_nopose.star \\
        --truth-particles hb_c2/particles.star --truth-map hb_c2/truth_class1.mrc \\
        --mask hb_c2/truth_mask.mrc --sym C2 --workdir /tmp/lwl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np


def spa(*args: str) -> None:
    print("+ spa " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run(["spa", *args], check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--particles", required=True, help="particles to refine (no poses needed)")
    p.add_argument("--truth-particles", required=True, help="the same particles with their true poses")
    p.add_argument("--truth-map", required=True)
    p.add_argument("--mask", default=None, help="mask for postprocess (default: spa mask of each map)")
    p.add_argument("--sym", default="C1")
    p.add_argument("--ini-high", default="30")
    p.add_argument("--max-iter", default="12")
    p.add_argument("--max-healpix-order", default="5")
    p.add_argument("--particle-diameter", default=None)
    p.add_argument("--workdir", required=True)
    p.add_argument("--seed", default="1")
    a = p.parse_args()
    work = Path(a.workdir)
    diameter = ["--particle-diameter", a.particle_diameter] if a.particle_diameter else []
    common = ["--seed", a.seed]
    refined = work / "refine3d"
    if not (refined / "run_class001.mrc").exists():
        spa("refine3d", "--particles", a.particles, "--reference", a.truth_map, "--sym", a.sym, "--ini-high",
            a.ini_high, "--max-iter", a.max_iter, "--max-healpix-order", a.max_healpix_order, *diameter,
            "--output-dir", str(refined), "--resume", *common)
    true_poses = work / "true_poses"
    if not (true_poses / "run_class001.mrc").exists():
        spa("reconstruct", "--particles", str(refined / "run_data.star"), "--poses-from", a.truth_particles,
            "--like-refine3d", "--sym", a.sym, *diameter, "--output-dir", str(true_poses), *common)
    from spa.em.fsc import resolution_text
    from spa.fourier import shell_resolution
    from spa.io.star import read_star

    rows, curves = {}, {}
    for name, d in (("refined poses", refined), ("true poses", true_poses)):
        fsc_dir, post = work / f"fsc_{d.name}", work / f"postprocess_{d.name}"
        spa("fsc", "--map1", str(d / "run_class001.mrc"), "--map2", a.truth_map, "--align", "--output-dir",
            str(fsc_dir))
        spa("postprocess", "--half1", str(d / "run_half1_class001_unfil.mrc"), "--half2",
            str(d / "run_half2_class001_unfil.mrc"), *(["--mask", a.mask] if a.mask else []),
            "--output-dir", str(post), *common)
        table = read_star(fsc_dir / "fsc.star")["fsc"]
        curve = table["rlnFourierShellCorrelation"].to_numpy(float)
        box, pixel = 2 * (len(curve) - 1), float(table["rlnAngstromResolution"].iloc[-1]) / 2
        summary = json.loads((post / "postprocess.json").read_text())
        curves[name] = curve
        rows[name] = (summary["resolution"], summary["bfactor_used_A2"], resolution_text(curve, 0.5, box, pixel),
                      resolution_text(curve, 0.143, box, pixel))
    gap = curves["true poses"][1:] - curves["refined poses"][1:]
    worst = int(np.argmax(gap)) + 1
    print("| poses | gold-standard (postprocess, corrected) | B-factor (Å²) | vs truth FSC 0.5 | vs truth FSC 0.143 |")
    print("| --- | --- | --- | --- | --- |")
    for name, (gold, b, t05, t0143) in rows.items():
        print(f"| {name} | {gold} | {b} | {t05} | {t0143} |")
    print(f"\nlargest shortfall of the refined map's FSC vs truth below the true poses': {gap.max():.3f} at "
          f"{shell_resolution(box, pixel)[worst]:.2f} Å; mean {gap.mean():.3f}")


if __name__ == "__main__":
    main()
