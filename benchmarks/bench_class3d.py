"""3D classification of two conformations: from one reference as a user starts it (global search,
classes seeded by 3D variability after a short one-class alignment), from the two true maps, and as
a practitioner runs it after a consensus refinement (local searches around the refined poses,
repeated with other seeds, and the class consensus of the runs).

    python benchmarks/bench_class3d.py [--n 2000 --box 48 --snr 0.5 --runs 2 --iter 8 --sigma-ang 4 --healpix-order 3]

Simulates a 50/50 mix of two conformations (a hinge motion of the demo molecule) with known
classes, refines all particles together against conformation 1 low-passed to 40 Å, runs
``spa class3d --sigma-ang`` from the refined poses (each run a different seed), then ``spa consensus
classes`` (plain, and counting a run only where its class posterior is ≥ 0.9 / 0.99).  Reports the
accuracy of each run (best matching of the two labels), the size and purity of the consensus sets, the same for a run with the poses fixed (``--skip-align``), wall times and the
machine's sgemm rate from the same run; ``start_accuracy`` is that of the classes' starting subsets
(iteration 1).  The issue asks ≥ 95 % per run and ≥ 98 % consensus purity.  Results so far are
printed after each step (one JSON line each; the last is complete).
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
from spa.io.star import read_particles  # noqa: E402


def ceiling(sim: Path, truth_by_name, offset_range: float = 7.0) -> float:
    """Fraction assigned to the right class by one global-search E-step with the two true maps."""
    from spa.class3d.classify import Class3D, Class3DOptions
    from spa.em import driver3d as d3
    from spa.em.model import MlModel
    from spa.em.volume_refs import VolumeReferences

    table, optics, source, px, box = d3.load_particles(sim / "particles.star")
    opts = Class3DOptions(n_classes=2, offset_range=offset_range)
    run = Class3D(table, source, np.zeros((box,) * 3, np.float32), opts, sim / "ceiling", optics=optics, log=None)
    stats = d3.data_statistics(run.source, run.particles, run.chunks, box, px, run.n_groups, run.radius)
    vols = []
    for k in (1, 2):
        v = d3.prepare_reference(d3.load_reference(sim / "truth" / f"class00{k}.mrc", box, px), px, 2 * px,
                                 run.radius)
        vols.append(v * d3.grey_scale(v, stats, px, low_res=80.0, high_res=20.0))
    model = MlModel.initial(box, px, 2, stats.sigma2, offset_range / 2, box // 2 + 1)
    _, results, _ = run._estep(model, VolumeReferences(np.stack(vols)), run.chunks)
    # image names are rewritten to resolve from the working folder: match on "index@stack file name"
    key = [f"{n.split('@')[0]}@{Path(n.split('@')[1]).name}" for n in table["rlnImageName"]]
    by_key = {f"{n.split('@')[0]}@{Path(n.split('@')[1]).name}": c for n, c in truth_by_name.items()}
    true = np.array([by_key[k] for k in key])
    return float(np.mean(results["class"] + 1 == true))


def _report(out: dict) -> None:
    """Print the results so far (a run cut short by a time limit still reports what it measured)."""
    print(json.dumps(out), flush=True)


def _run_result(folder: Path, seconds: float, truth_by_name) -> dict:
    """Accuracy of the final classes and of the first iteration's (the classes' starting subsets)."""
    return {"seconds": round(seconds, 1), "accuracy": round(_accuracy(folder / "run_data.star", truth_by_name), 4),
            "start_accuracy": round(_accuracy(folder / "run_it001_data.star", truth_by_name), 4)}


def _accuracy(star, truth_by_name) -> float:
    est, _ = read_particles(star)
    true = truth_by_name.loc[est["rlnImageName"]].to_numpy()
    same = float(np.mean(est["rlnClassNumber"].to_numpy() == true))
    return max(same, 1.0 - same)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--box", type=int, default=48)
    ap.add_argument("--snr", type=float, default=0.5)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--iter", type=int, default=8)
    ap.add_argument("--sigma-ang", type=float, default=4.0)
    ap.add_argument("--healpix-order", type=int, default=3, help="local-search grid (3 = 7.5°, oversampled 3.75°)")
    ap.add_argument("--refine-iter", type=int, default=12)
    ap.add_argument("--global-iter", type=int, default=15)
    ap.add_argument("--no-global-runs", dest="global_runs", action="store_false")
    args = ap.parse_args()
    peak = sgemm_gflops()
    out = {"particles": args.n, "box": args.box, "snr": args.snr, "sgemm_gflops": round(peak, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        spa(["simulate", "--kind", "particles", "--preset", "demo", "--n-particles", str(args.n), "--box",
             str(args.box), "--snr", str(args.snr), "--conformations", "2", "--output-dir", str(d / "sim"),
             "--seed", "5"])
        truth, _ = read_particles(d / "sim" / "truth" / "particles.star")
        truth_by_name = truth.set_index("rlnImageName")["rlnClassNumber"]
        if args.global_runs:
            t0 = time.perf_counter()
            out["ceiling_true_maps_global_search"] = round(ceiling(d / "sim", truth_by_name), 4)
            out["ceiling_s"] = round(time.perf_counter() - t0, 1)
            _report(out)
            for name, refs, extra in (
                    ("global_one_reference", [d / "sim" / "truth" / "class001.mrc"], []),
                    ("global_two_true_references_20A", [d / "sim" / "truth" / f"class00{k}.mrc" for k in (1, 2)],
                     ["--ini-high", "20"])):
                t0 = time.perf_counter()
                spa(["class3d", "--particles", str(d / "sim" / "particles.star"), "--reference",
                     *[str(r) for r in refs], "--classes", "2", "--iter", str(args.global_iter), *extra,
                     "--output-dir", str(d / name), "--seed", "1"])
                out[name] = _run_result(d / name, time.perf_counter() - t0, truth_by_name)
                _report(out)
        t0 = time.perf_counter()
        spa(["refine3d", "--particles", str(d / "sim" / "particles.star"), "--reference",
             str(d / "sim" / "truth" / "class001.mrc"), "--output-dir", str(d / "refine"), "--max-iter",
             str(args.refine_iter), "--offset-range", "3"])
        out["refine_s"] = round(time.perf_counter() - t0, 1)
        _report(out)
        refined = d / "refine" / "run_data.star"
        runs = []
        for seed in range(1, args.runs + 1):
            t0 = time.perf_counter()
            spa(["class3d", "--particles", str(refined), "--reference", str(d / "refine" / "run_class001.mrc"),
                 "--classes", "2", "--iter", str(args.iter), "--sigma-ang", str(args.sigma_ang), "--healpix-order",
                 str(args.healpix_order), "--offset-range", "2", "--output-dir", str(d / f"local{seed}"), "--seed", str(seed)])
            runs.append({"seed": seed, **_run_result(d / f"local{seed}", time.perf_counter() - t0, truth_by_name)})
            out["local_search_runs"] = runs
            _report(out)
        out["local_search_runs"] = runs
        spa(["consensus", "classes", "--runs", *[str(d / f"local{r['seed']}" / "run_data.star") for r in runs],
             "--output-dir", str(d / "consensus")])
        kept = d / "consensus" / "particles.star"
        if kept.exists():
            est, _ = read_particles(kept)
            out["consensus_kept_fraction"] = round(len(est) / args.n, 4)
            out["consensus_purity"] = round(_accuracy(kept, truth_by_name), 4)
        for threshold in (0.9, 0.99):
            folder = d / f"consensus_p{threshold}"
            spa(["consensus", "classes", "--runs", *[str(d / f"local{r['seed']}" / "run_data.star") for r in runs],
                 "--min-class-posterior", str(threshold), "--output-dir", str(folder)])
            if (folder / "particles.star").exists():
                est, _ = read_particles(folder / "particles.star")
                out[f"consensus_posterior_{threshold}"] = {
                    "kept_fraction": round(len(est) / args.n, 4),
                    "purity": round(_accuracy(folder / "particles.star", truth_by_name), 4)}
        _report(out)
        t0 = time.perf_counter()
        spa(["class3d", "--particles", str(refined), "--reference", str(d / "refine" / "run_class001.mrc"),
             "--classes", "2", "--iter", str(args.iter), "--skip-align", "--output-dir", str(d / "fixed"),
             "--seed", "1"])
        out["skip_align"] = _run_result(d / "fixed", time.perf_counter() - t0, truth_by_name)
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
