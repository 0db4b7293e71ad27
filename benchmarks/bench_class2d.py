"""2D classification: time per iteration and strong scaling from 1 to N Dask workers.

Synthetic particles (spa.class2d.synthetic), the same run in-process and on a
LocalCluster of N single-threaded worker processes; prints seconds per
iteration, images/s and the speed-up, and checks that the class assignments
agree.  Run:  python benchmarks/bench_class2d.py [--n 4000] [--box 64] [--classes 10] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from spa.class2d.classify import Class2D, Class2DOptions
from spa.class2d.synthetic import make_particles, make_views
from spa.cluster import close_client, make_client
from spa.em.engine import ArrayImages


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--iter", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()
    px = 2.5
    views = make_views(max(3, a.classes // 2), a.box, px, 0.75 * a.box * px, 1)
    images, table = make_particles(views, a.n, px, snr=0.1, max_shift_px=2.0, rng=2)
    src = ArrayImages(images, px)
    print(f"{a.n} particles, box {a.box}, K={a.classes}, {a.iter} iterations")
    base = None
    classes = {}
    for w in a.workers:
        client = make_client(workers=w) if w > 1 else None
        try:
            with tempfile.TemporaryDirectory() as d:
                opts = Class2DOptions(n_classes=a.classes, n_iter=a.iter, particle_diameter=0.8 * a.box * px,
                                      seed=1, chunk_size=256)
                run = Class2D(table, src, opts, d, client=client, log=None)
                model, refs, _ = run.initialise()
                times = []
                for _ in range(a.iter):
                    t = time.perf_counter()
                    model, refs, res = run.iterate(model, refs)
                    times.append(time.perf_counter() - t)
                classes[w] = res["class"]
        finally:
            close_client(client)
        per = float(np.median(times))
        base = base or per
        agree = (classes[w] == classes[a.workers[0]]).mean()
        print(f"workers {w}: {per:.2f} s/iteration (median of {a.iter}), {a.n / per:.0f} images/s, "
              f"speed-up {base / per:.2f}x, class agreement with {a.workers[0]} worker(s) {100 * agree:.1f}%")


if __name__ == "__main__":
    main()
