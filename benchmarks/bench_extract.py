"""Extraction: particles per second and peak memory at 1× and 10× the particles (spa extract).

    python benchmarks/bench_extract.py [--box 128 --size 2048 --micrographs 4 --per-micrograph 500
        --scale 10 --formats zarr mrcs --workers 1] [--json benchmarks/measured/extract_DATE.json]

``--micrographs`` noise micrographs of ``--size`` px (float32 MRC) get
``--per-micrograph`` random coordinates each (1×).  The 10× set lists ten
times as many micrographs — links to the same files (pixels are what is
extracted; the work and the bookkeeping are N's) — so N grows tenfold.  Each
run is ``spa extract`` in a fresh child process (in-process, or ``--workers``
Dask workers); peak resident memory is the child's ``ru_maxrss`` (the largest
process of the run).  Flat memory means the 10× run peaks no higher than the
1× run plus a few MB per thousand particles of metadata: the images stream
into the stack chunk by chunk.

Rates are particles per second of wall time (Python start and imports
included: the fixed part shows at 1×), the marginal rate (10× − 1× particles
over 10× − 1× seconds: the fixed cost cancels), and, so that numbers from a
busy or another machine compare, those divided by the same run's batched FFT
rate at the box size (scipy.fft, one thread: ``fft2_rate`` of
benchmarks/common.py).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

_MEASURE = """
import resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - t
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, wall, rc.returncode)
if rc.returncode:
    print(rc.stderr[-3000:], file=sys.stderr)
"""


def make_data(work: Path, size: int, n_mics: int, per_mic: int, box: int, scale: int) -> dict[int, tuple[Path, Path]]:
    """Micrographs, coordinates and (micrographs STAR, autopick index) for 1× and ``scale``×."""
    import numpy as np
    import pandas as pd

    from spa.io.mrc import write_mrc
    from spa.io.star import write_micrographs
    from spa.picking.coordinates import write_coordinate_index, write_coordinates

    rng = np.random.default_rng(0)
    (work / "files").mkdir(parents=True, exist_ok=True)
    for m in range(n_mics):
        path = work / "files" / f"mic{m:03d}.mrc"
        if not path.exists():
            write_mrc(path, rng.normal(100.0, 10.0, (size, size)).astype(np.float32), 1.0)
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnMicrographPixelSize": [1.0], "rlnMicrographOriginalPixelSize": [1.0]})
    out = {}
    for factor in (1, scale):
        folder = work / f"x{factor}"
        (folder / "micrographs").mkdir(parents=True, exist_ok=True)
        (folder / "coordinates").mkdir(parents=True, exist_ok=True)
        names, coords = [], []
        for k in range(n_mics * factor):
            link = folder / "micrographs" / f"mic{k:04d}.mrc"
            if not link.exists():
                os.symlink(work / "files" / f"mic{k % n_mics:03d}.mrc", link)
            xy = rng.uniform(box, size - box, (per_mic, 2))
            cfile = folder / "coordinates" / f"mic{k:04d}_autopick.star"
            write_coordinates(cfile, pd.DataFrame({"rlnCoordinateX": xy[:, 0], "rlnCoordinateY": xy[:, 1]}))
            names.append(f"micrographs/mic{k:04d}.mrc")
            coords.append(str(cfile))
        table = pd.DataFrame({"rlnMicrographName": names, "rlnOpticsGroup": 1, "rlnDefocusU": 15000.0,
                              "rlnDefocusV": 14500.0, "rlnDefocusAngle": 30.0})
        write_micrographs(folder / "micrographs_ctf.star", table, optics)
        write_coordinate_index(folder / "autopick.star", names, coords)
        out[factor] = (folder / "micrographs_ctf.star", folder / "autopick.star")
    return out


def measure(mics: Path, index: Path, out: Path, box: int, fmt: str, workers: int, extra: list[str]) -> dict:
    args = ["extract", "--micrographs", str(mics), "--coordinates", str(index), "--box", str(box), "--format", fmt,
            "--output-dir", str(out), "--seed", "1", *extra]
    if workers > 1:
        args += ["--workers", str(workers)]
    proc = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m", "spa.cli", *args],
                          capture_output=True, text=True)
    fields = proc.stdout.split()
    if proc.returncode or len(fields) < 3 or fields[2] != "0":
        raise RuntimeError(f"extract failed:\n{proc.stderr[-3000:]}")
    return {"peak_rss_mb": int(fields[0]) / 1024.0, "wall_s": float(fields[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--size", type=int, default=2048, help="micrograph size, px")
    ap.add_argument("--micrographs", type=int, default=4, help="micrographs at 1×")
    ap.add_argument("--per-micrograph", type=int, default=500)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--formats", nargs="+", default=["zarr", "mrcs"])
    ap.add_argument("--extra", nargs="*", default=[], help="more spa extract options, e.g. --rescale 64 --phase-flip")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--work", default=None, help="working folder (kept; default a temporary one)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    from common import fft2_rate

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="spa_extract_"))
    data = make_data(work, a.size, a.micrographs, a.per_micrograph, a.box, a.scale)
    fft_before = fft2_rate(a.box)
    rows = []
    print(f"{'format':>6} {'N':>7} {'peak RSS MB':>12} {'wall s':>7} {'particles/s':>12} {'per FFT':>9}")
    for fmt in a.formats:
        for factor in (1, a.scale):
            mics, index = data[factor]
            n = a.micrographs * factor * a.per_micrograph
            r = measure(mics, index, work / f"out_{fmt}_x{factor}", a.box, fmt, a.workers, a.extra)
            rate = n / r["wall_s"]
            rows.append({"format": fmt, "scale": factor, "particles": n, "box": a.box, "workers": a.workers,
                         "extra": a.extra, **r, "particles_per_s": rate})
            print(f"{fmt:>6} {n:>7} {r['peak_rss_mb']:>12.0f} {r['wall_s']:>7.1f} {rate:>12.0f} "
                  f"{rate / fft_before:>9.4f}", flush=True)
    fft_rate = 0.5 * (fft_before + fft2_rate(a.box))
    for r in rows:
        r["particles_per_fft"] = r["particles_per_s"] / fft_rate
    summary = {}
    for fmt in a.formats:
        one, ten = (next(r for r in rows if r["format"] == fmt and r["scale"] == s) for s in (1, a.scale))
        summary[fmt] = {"peak_rss_ratio": ten["peak_rss_mb"] / one["peak_rss_mb"],
                        "peak_rss_growth_mb": ten["peak_rss_mb"] - one["peak_rss_mb"],
                        "rate_ratio": ten["particles_per_s"] / one["particles_per_s"],
                        # the rate without the fixed cost (Python start, imports, planning's first steps)
                        "marginal_particles_per_s": (ten["particles"] - one["particles"]) / (ten["wall_s"] - one["wall_s"])}
        summary[fmt]["marginal_per_fft"] = summary[fmt]["marginal_particles_per_s"] / fft_rate
        print(f"{fmt}: peak RSS ×{summary[fmt]['peak_rss_ratio']:.2f} (+{summary[fmt]['peak_rss_growth_mb']:.0f} MB) "
              f"for ×{a.scale} particles; {summary[fmt]['marginal_particles_per_s']:.0f} particles/s beyond the "
              f"fixed cost ({summary[fmt]['marginal_per_fft']:.4f} per FFT)")
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_average": os.getloadavg()},
              "reference": {"fft2_per_s_box": fft_rate, "box": a.box},
              "setup": {"micrograph_px": a.size, "micrographs_1x": a.micrographs, "per_micrograph": a.per_micrograph,
                        "scale": a.scale, "image_mb_10x": a.micrographs * a.scale * a.per_micrograph * a.box ** 2 * 4 / 2**20},
              "rows": rows, "summary": summary}
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    print(f"work folder: {work}")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")
