"""3D auto-refinement: time per iteration, images/s and quality against the truth, with the machine's
own matrix-multiply rate measured in the same run (so ratios compare across machines).

    python benchmarks/bench_refine3d.py [--n 2000 --box 48 --snr 0.5 --max-iter 6 --workers 1]
    python benchmarks/bench_refine3d.py --preset realistic --n 10000 --junk-fraction 0 --time-limit 400

Simulates particles with known poses, refines from the true map low-passed to 40 Å (a start the
refinement cannot copy detail from), and reports: seconds per iteration, particle-iterations per
second, that rate divided by the sgemm GFLOP/s, FSC 0.5 against the truth (refined map and a
reconstruction from the TRUE poses), and the issue's two acceptance figures:

* the gold-standard FSC 0.143 resolution of the refinement against that of half maps reconstructed
  from the TRUE poses of the same two halves (same spherical mask), and their ratio;
* the fraction of particles within 3° of their true pose after one global rotation aligns the frames.

``--time-limit`` (s) stops the refinement and judges its last finished iteration instead, so a run
on a lent machine always reports something.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import starfile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import sgemm_gflops  # noqa: E402

from spa.cli import main as spa  # noqa: E402
from spa.em.driver3d import mask_radius_px  # noqa: E402
from spa.em.fsc import fsc, resolution_at  # noqa: E402
from spa.fourier import soft_spherical_mask  # noqa: E402
from spa.geometry.distance import align_rotation_sets  # noqa: E402
from spa.geometry.euler import euler_to_matrix  # noqa: E402
from spa.io.mrc import read_mrc  # noqa: E402
from spa.io.star import read_particles, write_particles  # noqa: E402


def simulate(d: Path, args) -> None:
    cmd = ["simulate", "--kind", "particles", "--preset", args.preset, "--output-dir", str(d / "sim"),
           "--seed", "1", "--workers", str(args.sim_workers)]
    for opt in ("n", "box", "snr", "junk_fraction", "pixel_size"):
        value = getattr(args, opt)
        if value is not None:
            cmd += ["--n-particles" if opt == "n" else "--" + opt.replace("_", "-"), str(value)]
    spa(cmd)


def refine(d: Path, args) -> tuple[float, bool]:
    """Run refine3d in a child process (so a time limit can stop it); returns wall time, finished."""
    cmd = [sys.executable, "-m", "spa.cli", "refine3d", "--particles", str(d / "sim" / "particles.star"),
           "--reference", str(d / "sim" / "truth" / "class001.mrc"), "--output-dir", str(d / "ref"),
           "--max-iter", str(args.max_iter), "--workers", str(args.workers)]
    t0 = time.perf_counter()
    try:
        subprocess.run(cmd, check=True, timeout=args.time_limit)
        finished = True
    except subprocess.TimeoutExpired:
        finished = False
    return time.perf_counter() - t0, finished


def judged_files(ref: Path, finished: bool):
    """(data STAR, half-1 map, half-2 map, iterations) of the final or the last finished iteration."""
    iters = sorted(ref.glob("run_it*_data.star"))
    if finished:
        return (ref / "run_data.star", ref / "run_half1_class001_unfil.mrc", ref / "run_half2_class001_unfil.mrc",
                len(iters) + 1)
    if not iters:
        raise SystemExit("refinement finished no iteration within the time limit")
    last = iters[-1].name[:len("run_itNNN")]
    return (iters[-1], ref / f"{last}_half1_class001.mrc", ref / f"{last}_half2_class001.mrc", len(iters))


def true_pose_halves(d: Path, est) -> tuple[np.ndarray, np.ndarray]:
    """Half maps from the TRUE poses of the refinement's own two halves."""
    true, optics = read_particles(d / "sim" / "truth" / "particles.star")
    subset = est.set_index("rlnImageName")["rlnRandomSubset"]
    true["rlnRandomSubset"] = subset.loc[true["rlnImageName"]].to_numpy()
    write_particles(d / "truth_halves.star", true, optics)
    maps = []
    for h in (1, 2):
        spa(["reconstruct", "--particles", str(d / "truth_halves.star"), "--subset", str(h),
             "--output", str(d / f"true_half{h}.mrc")])
        maps.append(read_mrc(d / f"true_half{h}.mrc")[0])
    return maps[0], maps[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo", help="spa simulate preset (sizes; the options below override it)")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--box", type=int, default=None, help="default: 48 with the demo preset, else the preset's")
    ap.add_argument("--snr", type=float, default=None, help="default: 0.5 with the demo preset, else the preset's")
    ap.add_argument("--junk-fraction", type=float, default=None)
    ap.add_argument("--pixel-size", type=float, default=None)
    ap.add_argument("--max-iter", type=int, default=6)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--sim-workers", type=int, default=1)
    ap.add_argument("--time-limit", type=float, default=None, help="seconds; judge the last iteration after it")
    ap.add_argument("--keep", type=Path, default=None,
                    help="work in this folder and keep it (simulation, refinement) for pose_ceiling.py")
    args = ap.parse_args()
    if args.preset == "demo":
        args.box = args.box or 48
        args.snr = 0.5 if args.snr is None else args.snr
    peak = sgemm_gflops()
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            d = args.keep
        else:
            d = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        simulate(d, args)
        wall, finished = refine(d, args)
        data, half1, half2, iters = judged_files(d / "ref", finished)
        spa(["reconstruct", "--particles", str(d / "sim" / "truth" / "particles.star"), "--output",
             str(d / "ideal.mrc")])
        truth, px = read_mrc(d / "sim" / "truth" / "class001.mrc")
        box = truth.shape[0]
        ideal, _ = read_mrc(d / "ideal.mrc")
        h1, h2 = read_mrc(half1)[0], read_mrc(half2)[0]
        est, _ = read_particles(data)
        t1, t2 = true_pose_halves(d, est)
        sphere = soft_spherical_mask(box, mask_radius_px(None, box, px), 5.0)
        if finished:
            gold = resolution_at(fsc(h1, h2, sphere), 0.143, box, px)
        else:  # an iteration's half maps hold masking leaks beyond its window: take the run's own figure
            gold = float(starfile.read(str(half1).replace("class001.mrc", "model.star"))["model_general"]
                         ["rlnCurrentResolution"])
        gold_true = resolution_at(fsc(t1, t2, sphere), 0.143, box, px)
        true, _ = read_particles(d / "sim" / "truth" / "particles.star")
        true = true.set_index("rlnImageName").loc[est["rlnImageName"]]
        fit = align_rotation_sets(euler_to_matrix(est.rlnAngleRot, est.rlnAngleTilt, est.rlnAnglePsi),
                                  euler_to_matrix(true.rlnAngleRot, true.rlnAngleTilt, true.rlnAnglePsi))
        judged = (d / "ref" / "run_class001.mrc") if finished else None
        rate = len(est) * iters / wall
        report = {
            "particles": len(est), "box": box, "pixel_size_A": px, "iterations": iters, "finished": finished,
            "workers": args.workers, "wall_s": round(wall, 1),
            "seconds_per_iteration": round(wall / iters, 2), "particle_iterations_per_s": round(rate, 1),
            "sgemm_gflops": round(peak, 1), "particle_iterations_per_s_per_gflops": round(rate / peak, 3),
            "gold_standard_fsc0143_A": round(gold, 2),
            "true_poses_gold_standard_fsc0143_A": round(gold_true, 2),
            "gold_standard_vs_true_poses": round(gold / gold_true, 3),
            "fsc05_vs_truth_true_poses_A": round(resolution_at(fsc(ideal, truth), 0.5, box, px), 2),
            "pose_error_median_deg": round(float(np.median(fit.residuals_deg)), 2),
            "within_3deg": round(float(np.mean(fit.residuals_deg < 3)), 3),
        }
        if judged is not None:
            refined, _ = read_mrc(judged)
            report["fsc05_vs_truth_refined_A"] = round(resolution_at(fsc(refined, truth), 0.5, box, px), 2)
        print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    main()
