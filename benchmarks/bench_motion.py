"""Motion correction speed (and accuracy) per movie, against the machine's own FFT rate.

    python benchmarks/bench_motion.py [--sizes 1024x20 2048x40 4096x40] [--patches 5] [--json OUT]

Movies are made here (not by ``spa simulate``, whose damage and local-motion
resampling would dominate at 4096²): a pink-noise specimen (1/k amplitude,
relative contrast 5 %) moved along a decaying drift (3 Å first step, 1 Å
pixels), Poisson counts at 1 e⁻/Å² per frame, no gain.  Each movie is
corrected by :func:`spa.motion.correct.correct_movie` (whole-frame alignment,
then ``--patches`` × ``--patches`` local alignment, dose weighting) on the
backend of ``$SPA_BACKEND``.

Reported per size: seconds per movie, movies per hour per core (the run uses
one core: scipy's FFTs single-threaded), the time spent in FFTs (scipy.fft
calls timed) and in the rest, the machine's full-frame 2D real FFT rate
measured in the same run, and the ratio **movie time ÷ one full-frame FFT
time** (how many full-frame FFTs one movie costs; it survives a busy
machine), plus the whole-frame trajectory's RMS error against the drift
made (px).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.fft as sfft

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_time  # noqa: E402

from spa.motion.correct import MotionOptions, correct_movie  # noqa: E402


def make_movie(size: int, frames: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(frames, shifts to apply (F, 2) px) of a drifting pink-noise specimen, Poisson counts."""
    rng = np.random.default_rng(seed)
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.rfftfreq(size)[None, :]
    k = np.sqrt(ky * ky + kx * kx)
    spectrum = (rng.normal(size=k.shape) + 1j * rng.normal(size=k.shape)) / np.maximum(k, 1.0 / size)
    spectrum[size // 2, :] = 0
    spectrum[:, -1] = 0
    specimen = sfft.irfft2(spectrum, s=(size, size))
    specimen *= 0.05 / specimen.std()
    steps = np.array([[3.0 * np.exp(-f / 4) + 0.3, 0.0] for f in range(frames)])
    angle = np.cumsum(rng.normal(0, 0.2, frames))
    steps = np.stack([steps[:, 0] * np.cos(angle), steps[:, 0] * np.sin(angle)], axis=1)
    steps[0] = 0
    drift = np.cumsum(steps, axis=0)
    base = sfft.rfft2(specimen)
    out = np.empty((frames, size, size), np.float32)
    for f in range(frames):
        moved = sfft.irfft2(base * np.exp(-2j * np.pi * (kx * drift[f, 0] + ky * drift[f, 1])), s=(size, size))
        out[f] = rng.poisson(np.clip(1.0 + moved, 0, None))
    return out, -drift


class FFTClock:
    """Times every scipy.fft rfftn/irfftn call while active (the backend's FFTs on CPU)."""

    def __init__(self):
        self.seconds = 0.0
        self.calls = 0
        self._saved = {}

    def __enter__(self):
        for name in ("rfftn", "irfftn"):
            original = getattr(sfft, name)
            self._saved[name] = original

            def timed(*a, _f=original, **kw):
                t = time.perf_counter()
                try:
                    return _f(*a, **kw)
                finally:
                    self.seconds += time.perf_counter() - t
                    self.calls += 1

            setattr(sfft, name, timed)
        return self

    def __exit__(self, *exc):
        for name, f in self._saved.items():
            setattr(sfft, name, f)


def measure(size: int, frames: int, patches: int) -> dict:
    movie, truth = make_movie(size, frames)
    one = np.random.default_rng(1).normal(size=(size, size)).astype(np.float32)
    fft_time = best_time(lambda: sfft.rfftn(one), repeat=3)
    options = MotionOptions(patches_x=patches, patches_y=patches, bfactor=500.0)
    with FFTClock() as clock:
        t = time.perf_counter()
        result = correct_movie(movie, None, 1.0, 1.0, options)
        total = time.perf_counter() - t
    rms = float(np.sqrt(((result.shifts - truth) ** 2).sum(axis=1).mean()))
    return {
        "size": size, "frames": frames, "patches": patches, "seconds_per_movie": round(total, 2),
        "movies_per_hour_per_core": round(3600.0 / total, 1), "fft_seconds": round(clock.seconds, 2),
        "fft_fraction": round(clock.seconds / total, 3), "fft_calls": clock.calls,
        "full_frame_fft_ms": round(1e3 * fft_time, 2), "movie_in_full_frame_ffts": round(total / fft_time, 0),
        "trajectory_rms_px": round(rms, 3),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["1024x20", "2048x40"], help="SIZExFRAMES, e.g. 4096x40")
    p.add_argument("--patches", type=int, default=5, help="patches per side (1: whole-frame alignment only)")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args(argv)
    rows = []
    for spec in args.sizes:
        size, frames = (int(v) for v in spec.split("x"))
        row = measure(size, frames, args.patches)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
