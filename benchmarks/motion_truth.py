"""Motion correction against the truth of ``spa simulate --kind movies`` (the numbers in docs/stages.md).

    python benchmarks/motion_truth.py [--data DIR] [--json OUT]

Two sets (made once under ``--data``, default ``$TMPDIR/spa_motion_truth``):

* ``demo``: the demo preset (1024² px × 20 frames, 1 Å/px, 2 e⁻/Å² per frame,
  3 Å first-frame drift, 1.5 Å local deformation), 4 movies;
* ``test``: what tests/motion uses (256² × 12 frames, 1.5 Å/px, 4 e⁻/Å²),
  4 movies without and 4 with 6 Å local deformation and stronger ice contrast.

Per movie: the whole-frame trajectory's RMS error (px) against the truth
(whole-frame alignment only, then with patches), the RMS error of the full
displacement field (global + local model vs drift + deformation, px, over
all pixels and frames), and the correlation with the true micrograph
(noise-free, undamaged) of the unweighted and dose-weighted sums in three
bands of spatial frequency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import scipy.fft as sfft

from spa.io.movies import read_gain, read_movie
from spa.io.mrc import read_mrc
from spa.io.star import read_star
from spa.motion.correct import MotionOptions, correct_movie
from spa.motion.local import evaluate
from spa.simulate.movies import MovieSpec, local_field, simulate_movies

SETS = {
    "demo": (dict(n=4, size=1024, pixel_size=1.0, diameter=120.0, n_frames=20, dose_per_frame=2.0), 5, 5),
    "test": (dict(n=4, size=256, pixel_size=1.5, diameter=90.0, n_frames=12, dose_per_frame=4.0, local_motion=0.0),
             11, 1),
    "test_local": (dict(n=4, size=256, pixel_size=1.5, diameter=90.0, n_frames=12, dose_per_frame=4.0,
                        local_motion=6.0, ice_texture=4.0), 5, 4),
}
BANDS = ((0.0, 0.05), (0.05, 0.15), (0.15, 0.3))


def band_fsc(a, b, pixel_size, lo, hi):
    fa, fb = sfft.rfft2(a - a.mean()), sfft.rfft2(b - b.mean())
    k = np.sqrt(np.fft.fftfreq(a.shape[0])[:, None] ** 2 + np.fft.rfftfreq(a.shape[1])[None, :] ** 2) / pixel_size
    m = (k >= lo) & (k < hi)
    return float((fa * fb.conj()).real[m].sum() / np.sqrt((abs(fa) ** 2)[m].sum() * (abs(fb) ** 2)[m].sum()))


def field_error(result, truth_shifts, coef, size, frames):
    rows, cols = np.mgrid[:size, :size]
    err = []
    for f in range(frames):
        u = local_field(coef, f / (frames - 1), size)
        tx, ty = truth_shifts[f, 0] - u[0], truth_shifts[f, 1] - u[1]
        lx = ly = 0.0
        if result.local is not None:
            lx, ly = evaluate(result.local.coeffs, cols / size - 0.5, rows / size - 0.5, f)
        err.append(((result.shifts[f, 0] + lx - tx) ** 2 + (result.shifts[f, 1] + ly - ty) ** 2).mean())
    return float(np.sqrt(np.mean(err)))


def run_set(name, folder: Path) -> list[dict]:
    kw, seed, patches = SETS[name]
    spec = MovieSpec(**kw)
    if not (folder / "movies.star").exists():
        simulate_movies(folder, spec, seed=seed)
    gain = read_gain(folder / "gain.mrc")
    p, d = spec.pixel_size, spec.dose_per_frame
    bfactor = 500.0 if spec.size >= 1024 else 1000.0
    rows = []
    for m in range(1, spec.n + 1):
        movie = read_movie(folder / "movies" / f"mov{m:04d}.mrc")
        truth = read_star(folder / "truth" / "motion" / f"mov{m:04d}.star")
        shifts = truth["global_shift"][["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy()
        coef = truth["spa_local_motion"]["rlnSpaCoefficientPx"].to_numpy().reshape(2, 2, 5)
        image, _ = read_mrc(folder / "truth" / "micrographs" / f"mov{m:04d}.mrc")
        row = {"set": name, "movie": m}
        for label, px in (("whole", 1), ("patches", patches)):
            if px == 1 and label == "patches":
                continue
            r = correct_movie(movie, gain, p, d, MotionOptions(patches_x=px, patches_y=px, bfactor=bfactor))
            row[f"{label}_trajectory_rms_px"] = round(float(np.sqrt(((r.shifts - shifts) ** 2).sum(1).mean())), 3)
            row[f"{label}_field_rms_px"] = round(field_error(r, shifts, coef, spec.size, spec.n_frames), 3)
            for which, img in (("noDW", r.unweighted), ("DW", r.dose_weighted)):
                row[f"{label}_{which}_fsc"] = [round(band_fsc(img, image, p, lo, hi), 3) for lo, hi in BANDS]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "spa_motion_truth"))
    p.add_argument("--sets", nargs="+", default=list(SETS))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = []
    for name in args.sets:
        rows += run_set(name, Path(args.data) / name)
    if args.json:
        Path(args.json).write_text(json.dumps({"bands_per_angstrom": BANDS, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
