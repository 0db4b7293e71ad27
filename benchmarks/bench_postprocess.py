"""Cost of the postprocessing stages (mask, postprocess, locres) against the box size.

    python benchmarks/bench_postprocess.py [--boxes 48 64 96 128] [--repeat 3] [--json OUT]

Half maps = a rendered molecule (1.5 Å/px, radius 0.3 × the box) + white
noise.  Per box: the fastest of ``--repeat`` runs of ``solvent_mask`` (the
workflow's defaults), ``postprocess`` (two unmasked FSCs, phase
randomisation, Guinier fit, sharpening) and ``local_resolution`` with the
workflow's default window (16 px, ≥ 20 Å) and step (window/4), and each
time in units of one 3D real FFT of the box measured in the same run (the
ratio survives a loaded machine).  locres's sample points grow as the
mask's volume over step³: its cost is counted per point as well.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_time  # noqa: E402

from spa.postprocess.locres import local_resolution  # noqa: E402
from spa.postprocess.masks import solvent_mask  # noqa: E402
from spa.postprocess.postprocess import postprocess  # noqa: E402
from spa.simulate.density import render_map  # noqa: E402
from spa.simulate.molecule import make_molecule  # noqa: E402

PIXEL = 1.5


def one_box(box: int, repeat: int) -> dict:
    molecule = render_map(make_molecule(0.6 * box * PIXEL, seed=4), box, PIXEL).astype(np.float32)
    rng = np.random.default_rng(0)
    h1, h2 = [(molecule + molecule.std() * rng.standard_normal(molecule.shape)).astype(np.float32) for _ in range(2)]
    mask, _ = solvent_mask(molecule, PIXEL)
    window = max(16 * PIXEL, 20.0)
    points = []

    def locres():
        points.append(len(local_resolution(h1, h2, mask, PIXEL, window=window).points))

    fft = best_time(lambda: np.fft.rfftn(h1), repeat=max(repeat, 5))
    times = {
        "mask_s": best_time(lambda: solvent_mask(h1, PIXEL), repeat=repeat),
        "postprocess_s": best_time(lambda: postprocess(h1, h2, mask, PIXEL, seed=0), repeat=repeat),
        "locres_s": best_time(locres, repeat=repeat),
    }
    row = {"box": box, "fft3d_ms": round(1e3 * fft, 3), "mask_fraction": round(float(mask.mean()), 3),
           "locres_points": points[-1]}
    for name, t in times.items():
        row[name] = round(t, 3)
        row[name.replace("_s", "_in_ffts")] = round(t / fft)
    row["locres_ms_per_point"] = round(1e3 * times["locres_s"] / max(points[-1], 1), 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boxes", type=int, nargs="+", default=[48, 64, 96, 128])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for box in args.boxes:
        rows.append(one_box(box, args.repeat))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
