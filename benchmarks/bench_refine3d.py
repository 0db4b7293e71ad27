"""3D auto-refinement: time per iteration, images/s and quality against the truth, with the machine's
own matrix-multiply rate measured in the same run (so ratios compare across machines).

    python benchmarks/bench_refine3d.py [--n 2000 --box 48 --snr 0.5 --max-iter 6 --workers 1]

Simulates particles with known poses, refines from the true map low-passed to 40 Å (a start the
refinement cannot copy detail from), and reports: seconds per iteration, particle-iterations per
second, that rate divided by the sgemm GFLOP/s, the gold-standard resolution, FSC 0.5 against the
truth, the same for a reconstruction from the TRUE poses, and the pose errors.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import sgemm_gflops  # noqa: E402

from spa.cli import main as spa  # noqa: E402
from spa.em.fsc import fsc, resolution_at  # noqa: E402
from spa.geometry.distance import align_rotation_sets  # noqa: E402
from spa.geometry.euler import euler_to_matrix  # noqa: E402
from spa.io.mrc import read_mrc  # noqa: E402
from spa.io.star import read_particles  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--box", type=int, default=48)
    ap.add_argument("--snr", type=float, default=0.5)
    ap.add_argument("--max-iter", type=int, default=6)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    peak = sgemm_gflops()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        spa(["simulate", "--kind", "particles", "--preset", "demo", "--n-particles", str(args.n), "--box",
             str(args.box), "--snr", str(args.snr), "--output-dir", str(d / "sim"), "--seed", "1"])
        t0 = time.perf_counter()
        spa(["refine3d", "--particles", str(d / "sim" / "particles.star"), "--reference",
             str(d / "sim" / "truth" / "class001.mrc"), "--output-dir", str(d / "ref"), "--max-iter",
             str(args.max_iter), "--workers", str(args.workers)])
        wall = time.perf_counter() - t0
        iters = len(list((d / "ref").glob("run_it*_data.star"))) + 1
        spa(["reconstruct", "--particles", str(d / "sim" / "truth" / "particles.star"), "--output",
             str(d / "ideal.mrc")])
        truth, px = read_mrc(d / "sim" / "truth" / "class001.mrc")
        refined, _ = read_mrc(d / "ref" / "run_class001.mrc")
        ideal, _ = read_mrc(d / "ideal.mrc")
        est, _ = read_particles(d / "ref" / "run_data.star")
        true, _ = read_particles(d / "sim" / "truth" / "particles.star")
        fit = align_rotation_sets(euler_to_matrix(est.rlnAngleRot, est.rlnAngleTilt, est.rlnAnglePsi),
                                  euler_to_matrix(true.rlnAngleRot, true.rlnAngleTilt, true.rlnAnglePsi))
        rate = args.n * iters / wall
        print(json.dumps({
            "particles": args.n, "box": args.box, "iterations": iters, "workers": args.workers,
            "seconds_per_iteration": round(wall / iters, 2), "particle_iterations_per_s": round(rate, 1),
            "sgemm_gflops": round(peak, 1), "particle_iterations_per_s_per_gflops": round(rate / peak, 3),
            "fsc05_vs_truth_refined_A": round(resolution_at(fsc(refined, truth), 0.5, args.box, px), 2),
            "fsc05_vs_truth_true_poses_A": round(resolution_at(fsc(ideal, truth), 0.5, args.box, px), 2),
            "pose_error_median_deg": round(float(np.median(fit.residuals_deg)), 2),
            "within_3deg": round(float(np.mean(fit.residuals_deg < 3)), 3),
        }, indent=2))


if __name__ == "__main__":
    main()
