"""Picking speed: micrographs per hour for LoG and template matching on a realistic micrograph.

    python benchmarks/bench_pick.py [--size 4096 --pixel-size 1.0 --diameter 150 --projections 100
        --lowpass 20 --backend numpy] [--json benchmarks/measured/pick_DATE.json]

One micrograph of ``--size``² px is simulated (``spa simulate --kind
micrographs``: particles with CTF, ice, shot noise) with its truth; each picker
runs on it in this process (``spa.picking.log.pick_log``,
``spa.picking.template.pick_template`` with ``--projections`` projections of
the true map, the in-plane rotations of its default step and the micrograph's
CTF), timed as the best of ``--repeat`` runs after a warm-up; its F1 against
the truth (match radius 0.2 × diameter) is reported beside the time.

So that numbers from a busy or another machine compare, the same run measures
the machine's FFT rate: single 2D real FFTs (forward) per second at the
template picker's working size (the micrograph binned to about lowpass/3 Å
per pixel) and at the full micrograph size, on the same backend (scipy.fft
one thread, or CuPy), and reports each picker's time in those FFTs (the
template picker does about two per template orientation).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def fft_rate(be, shape, repeat: int = 5) -> float:
    """Forward 2D real FFTs per second of one (rows, cols) float32 image on backend ``be``."""
    from common import best_time

    a = be.xp.asarray(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    n = max(1, int(2e7 // (shape[0] * shape[1])))  # enough FFTs per timing for a stable clock

    def run():
        for _ in range(n):
            be.rfftn(a)
        be.synchronize()

    return n / best_time(run, repeat)


def timed(fn, repeat: int):
    fn()  # warm-up: plans, template preparation (cached per working pixel)
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--pixel-size", type=float, default=1.0)
    ap.add_argument("--diameter", type=float, default=150.0)
    ap.add_argument("--projections", type=int, default=100)
    ap.add_argument("--lowpass", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--backend", default=None, help="numpy or cupy (default: $SPA_BACKEND or auto)")
    ap.add_argument("--data", default=None, help="reuse a folder written by an earlier run")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from spa.backend import get_backend
    from spa.io.mrc import read_mrc
    from spa.io.star import read_micrographs
    from spa.picking.coordinates import read_coordinates
    from spa.picking.log import LoGOptions, pick_log
    from spa.picking.scoring import pick_scores
    from spa.picking.template import CTFParams, TemplateOptions, TemplateSet, pick_template, project_map

    be = get_backend(args.backend)
    work = Path(args.data or tempfile.mkdtemp(prefix="bench_pick_"))
    if not (work / "truth" / "micrographs_ctf.star").exists():
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "spa.cli", "simulate", "--kind", "micrographs", "--n-micrographs", "1",
                        "--micrograph-size", str(args.size), "--pixel-size", str(args.pixel_size),
                        "--diameter", str(args.diameter), "--output-dir", str(work)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"simulated {args.size}² in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    mics, _ = read_micrographs(work / "truth" / "micrographs_ctf.star")
    row = next(mics.itertuples())
    image, pixel = read_mrc(work / row.rlnMicrographName)
    truth = read_coordinates(work / "truth" / "coordinates" / f"{Path(row.rlnMicrographName).stem}.star")
    volume, vpix = read_mrc(work / "truth" / "class001.mrc")
    radius = 0.2 * args.diameter / pixel

    topts = TemplateOptions(args.diameter, lowpass=args.lowpass)
    factor = topts.binning(pixel)
    working = (image.shape[0] // factor, image.shape[1] // factor)
    rate_working = fft_rate(be, working)
    rate_full = fft_rate(be, image.shape)

    rows = []
    lopts = LoGOptions(0.75 * args.diameter, 1.1 * args.diameter)
    t_log, picks = timed(lambda: pick_log(image, pixel, lopts), args.repeat)
    rows.append({"picker": "log", "backend": "numpy", "seconds": t_log, **pick_scores([(picks, truth)], radius)})
    templates = TemplateSet(project_map(volume, args.projections), vpix)
    n_orient = len(templates.prepared(round(pixel * factor, 6), args.diameter, topts.psi_step())[0])
    t_tpl, picks = timed(lambda: pick_template(image, pixel, templates, topts, CTFParams.from_row(row), be),
                         args.repeat)
    rows.append({"picker": "template", "backend": be.name, "seconds": t_tpl, "orientations": n_orient,
                 "ffts_per_orientation": t_tpl * rate_working / n_orient, **pick_scores([(picks, truth)], radius)})
    for r in rows:
        r["micrographs_per_hour"] = 3600.0 / r["seconds"]
        r["seconds_in_full_size_ffts"] = r["seconds"] * rate_full
        r["seconds_in_working_size_ffts"] = r["seconds"] * rate_working
        print(f"{r['picker']:>8} ({r['backend']}): {r['seconds']:.2f} s/micrograph = {r['micrographs_per_hour']:.0f}/h,"
              f" {r['seconds_in_full_size_ffts']:.0f} full-size FFTs; F1 {r['f1']:.3f} "
              f"(P {r['precision']:.3f} R {r['recall']:.3f}, {r['true']} true)")
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "backend": be.name, "load_average": os.getloadavg()},
        "reference": {"fft_per_s_full": rate_full, "fft_per_s_working": rate_working, "full_shape": list(image.shape),
                      "working_shape": list(working), "binning": factor},
        "setup": {**vars(args), "pixel": pixel, "true_particles": len(truth)},
        "rows": rows,
    }
    print(json.dumps(report["reference"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
