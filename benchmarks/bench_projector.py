"""Projection and backprojection throughput against the machine's own FFT and GEMM rates.

    python benchmarks/bench_projector.py [--boxes 64 128] [--n 2000]

Reports images/s for Fourier-slice projection and CTF-weighted insertion, and
the ratio to the same machine's batched 2D FFT rate (images/s) measured in the
same run: the ratio is what to compare between machines and commits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_time, fft2_rate, sgemm_gflops  # noqa: E402

from spa.em.backprojector import BackProjector  # noqa: E402
from spa.em.projector import Projector  # noqa: E402
from spa.geometry.euler import euler_to_matrix  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--boxes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--n", type=int, default=1000, help="images per measurement")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    results = {"sgemm_gflops": round(sgemm_gflops(), 1)}
    for box in args.boxes:
        vol = rng.normal(size=(box,) * 3).astype(np.float32)
        ang = np.column_stack([rng.uniform(-180, 180, args.n), rng.uniform(0, 180, args.n), rng.uniform(-180, 180, args.n)])
        rots = euler_to_matrix(*ang.T)
        proj = Projector(vol)
        t_proj = best_time(lambda: proj.project(rots), repeat=3)
        slices = proj.project(rots)
        weights = np.ones(slices.shape, np.float32)

        def insert():
            bp = BackProjector(box)
            bp.insert(slices, weights, rots)

        t_bp = best_time(insert, repeat=3)
        fft_rate = fft2_rate(box)
        results[f"box{box}"] = {
            "project_images_per_s": round(args.n / t_proj, 1),
            "insert_images_per_s": round(args.n / t_bp, 1),
            "fft2_images_per_s": round(fft_rate, 1),
            "project_vs_fft": round(args.n / t_proj / fft_rate, 3),
            "insert_vs_fft": round(args.n / t_bp / fft_rate, 3),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
