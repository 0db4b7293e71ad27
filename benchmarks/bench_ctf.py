"""CTF estimation: accuracy against the simulation's truth, the consensus's decisions, and the time per
micrograph against the machine's own FFT rate.

    python benchmarks/bench_ctf.py [--n 12] [--size 1024] [--tile 512] [--speed-size 4096] [--json OUT]

Accuracy: ``--n`` micrographs by :func:`spa.simulate.micrographs.simulate_micrographs` (``--size`` px at
1 Å/px, mean defocus uniform in 0.5–3 µm, astigmatism up to 1500 Å, carbon edges on 30 %, contaminants,
40 e⁻/Å²), estimated by both estimators (``--tile`` px spectrum tiles); reported: |mean-defocus error|
(Å and % of the defocus: median, 90th percentile, largest), astigmatism-angle error where U − V > 500 Å,
fit resolutions, and the consensus's decisions (default rules) — on these micrographs and on three made
to fail: a blank exposure (no Thon rings), astigmatism far beyond ctffind's search range, and ctffind
given a defocus range that excludes the truth.

Speed: one ``--speed-size``² micrograph made here (pink-noise specimen through an astigmatic CTF,
Poisson counts; no particles, so it is quick to make), estimated by each estimator in one process;
reported: seconds per micrograph, split into the tiled spectrum (the FFTs) and the search, the
machine's full-frame 2D real FFT time measured in the same run, and the ratio micrograph time ÷ one
full-frame FFT (it survives a busy machine), and micrographs per hour per core.

CTFFIND4 is compared when a ``ctffind`` executable is on PATH (it usually is not: the run says so).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.fft as sfft

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_time  # noqa: E402

from spa.consensus.ctf import CtfRules, ctf_consensus  # noqa: E402
from spa.ctf import ctf_2d  # noqa: E402
from spa.ctf_estimation.fit2d import CtfSearch, SpectrumFit  # noqa: E402
from spa.ctf_estimation.zeros import estimate_zeros_fit  # noqa: E402

METHODS = {"ctffind": lambda fit: fit.fit(), "zeros": lambda fit: estimate_zeros_fit(fit)[0]}


def _angle_error(a, b):
    d = abs(a - b) % 180.0
    return min(d, 180.0 - d)


def _stats(values):
    v = np.abs(np.asarray(values, float))
    return {"median": float(np.median(v)), "p90": float(np.percentile(v, 90)), "max": float(v.max())}


def accuracy(n: int, size: int, tile: int, seed: int = 11) -> dict:
    from spa.io.mrc import read_mrc
    from spa.io.star import read_star
    from spa.simulate.micrographs import MicrographSpec, simulate_micrographs

    out = Path(tempfile.mkdtemp(prefix="bench_ctf_"))
    spec = MicrographSpec(n=n, size=size, pixel_size=1.0, diameter=120.0, defocus_min=5000, defocus_max=30000,
                          astigmatism=1500, carbon_fraction=0.3)
    simulate_micrographs(out, spec, seed=seed)
    truth = read_star(out / "truth" / "micrographs_ctf.star")["micrographs"]
    search = CtfSearch(tile=tile)
    rows = {m: [] for m in METHODS}
    images = []
    for t in truth.itertuples():
        image = read_mrc(out / t.rlnMicrographName)[0].squeeze()
        images.append(image)
        fit = SpectrumFit(image, 1.0, 300.0, 2.7, 0.1, search)
        for name, estimate in METHODS.items():
            rows[name].append((t, estimate(fit)))
    result = {"micrographs": n, "size_px": size, "tile_px": tile, "defocus_range_A": [5000, 30000]}
    for name, pairs in rows.items():
        err = [0.5 * (f.defocus_u + f.defocus_v) - 0.5 * (t.rlnDefocusU + t.rlnDefocusV) for t, f in pairs]
        rel = [100 * e / (0.5 * (t.rlnDefocusU + t.rlnDefocusV)) for e, (t, _) in zip(err, pairs)]
        ang = [_angle_error(f.defocus_angle, t.rlnDefocusAngle) for t, f in pairs if t.rlnDefocusU - t.rlnDefocusV > 500]
        result[name] = {"defocus_error_A": _stats(err), "defocus_error_percent": _stats(rel),
                        "angle_error_deg_astig_over_500": _stats(ang) if ang else None,
                        "fit_resolution_A": _stats([f.max_resolution for _, f in pairs]),
                        "carbon_micrographs": int(truth.rlnSpaCarbon.sum())}
    # the consensus on these micrographs and on three made to fail
    rng = np.random.default_rng(0)
    blank = rng.poisson(40.0, (size, size)).astype(np.float32)
    strong = simulate_strong_astigmatism(out / "strong", size)
    extra = {"blank": (blank, search), "astigmatism_beyond_range": (strong, search),
             "wrong_search_range": (images[int(np.argmax(truth.rlnDefocusU))], dataclasses.replace(search, defocus_max=4500))}
    a = [(t.rlnMicrographName, f) for t, f in rows["ctffind"]]
    b = [(t.rlnMicrographName, f) for t, f in rows["zeros"]]
    for name, (image, search_a) in extra.items():
        a.append((name, SpectrumFit(image, 1.0, 300.0, 2.7, 0.1, search_a).fit()))
        b.append((name, estimate_zeros_fit(SpectrumFit(image, 1.0, 300.0, 2.7, 0.1, search))[0]))
    import pandas as pd

    def table(pairs):
        return pd.DataFrame([{"rlnMicrographName": k, "rlnOpticsGroup": 1, "rlnDefocusU": f.defocus_u,
                              "rlnDefocusV": f.defocus_v, "rlnDefocusAngle": f.defocus_angle,
                              "rlnCtfMaxResolution": f.max_resolution} for k, f in pairs])

    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnMicrographPixelSize": [1.0], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    decided = ctf_consensus(table(a), table(b), optics, CtfRules())
    result["consensus"] = {str(r.rlnMicrographName): {"reason": r.rlnSpaRejectReason or "kept",
                                                      "agree_to_A": round(float(r.rlnSpaCtfConsensusResolution), 2),
                                                      "defocus_difference_A": round(float(r.rlnSpaDefocusDifference), 1)}
                           for r in decided.itertuples()}
    shutil.rmtree(out, ignore_errors=True)
    return result


def simulate_strong_astigmatism(out: Path, size: int) -> np.ndarray:
    """One micrograph with ~9000 Å of astigmatism (ctffind searches up to 3000 Å)."""
    from spa.io.mrc import read_mrc
    from spa.io.star import read_star
    from spa.simulate.micrographs import MicrographSpec, simulate_micrographs

    seed = next(s for s in range(100) if _drawn_astigmatism(s) > 7000)  # as make_scene draws it
    spec = MicrographSpec(n=1, size=size, pixel_size=1.0, diameter=120.0, defocus_min=15000, defocus_max=20000,
                          astigmatism=10000, carbon_fraction=0.0)
    simulate_micrographs(out, spec, seed=seed)
    truth = read_star(out / "truth" / "micrographs_ctf.star")["micrographs"].iloc[0]
    assert truth.rlnDefocusU - truth.rlnDefocusV > 7000
    return read_mrc(out / truth.rlnMicrographName)[0].squeeze()


def _drawn_astigmatism(seed: int) -> float:
    """The astigmatism make_scene draws for micrograph 0 of ``seed`` (mean defocus first, then U − V)."""
    rng = np.random.default_rng([seed, 3, 0])
    rng.uniform(15000, 20000)
    return rng.uniform(0, 10000)


def speed_micrograph(size: int, seed: int = 0) -> np.ndarray:
    """A size² micrograph at 1 Å/px: pink-noise specimen through the CTF (1.8/1.7 µm, 30°), Poisson
    counts at 40 e⁻/Å²."""
    rng = np.random.default_rng(seed)
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.rfftfreq(size)[None, :]
    k = np.sqrt(ky * ky + kx * kx)
    spectrum = (rng.normal(size=k.shape) + 1j * rng.normal(size=k.shape)) / np.maximum(k, 1.0 / size)
    spectrum *= ctf_2d(size, 1.0, 18000, 17000, 30.0, 300.0, 2.7, 0.1)
    contrast = sfft.irfft2(spectrum, s=(size, size))
    contrast *= 0.1 / contrast.std()
    return rng.poisson(40.0 * np.clip(1.0 + contrast, 0, None)).astype(np.float32)


def speed(size: int, tile: int) -> dict:
    image = speed_micrograph(size)
    search = CtfSearch(tile=tile)
    full_fft = best_time(lambda: sfft.rfft2(image), repeat=3)
    tile_fft = best_time(lambda: sfft.rfft2(image[:tile, :tile]), repeat=10)
    t = time.perf_counter()
    fit = SpectrumFit(image, 1.0, 300.0, 2.7, 0.1, search)
    spectrum_s = time.perf_counter() - t
    out = {"size_px": size, "tile_px": tile, "full_frame_rfft2_s": full_fft, "tile_rfft2_s": tile_fft,
           "spectrum_s": spectrum_s}
    for name, estimate in METHODS.items():
        t = time.perf_counter()
        found = estimate(fit)
        search_s = time.perf_counter() - t
        total = spectrum_s + search_s
        out[name] = {"search_s": search_s, "total_s": total, "micrograph_per_full_frame_fft": total / full_fft,
                     "micrographs_per_hour_per_core": 3600.0 / total,
                     "found_U_V_angle": [round(found.defocus_u), round(found.defocus_v), round(found.defocus_angle, 1)]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--speed-size", type=int, default=4096)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    report = {"ctffind_executable": shutil.which("ctffind") or shutil.which("ctffind4")}
    if not report["ctffind_executable"]:
        print("CTFFIND4 is not installed on this machine: no comparison with it", file=sys.stderr)
    report["speed"] = speed(args.speed_size, args.tile)
    print(json.dumps(report["speed"], indent=1))
    report["accuracy"] = accuracy(args.n, args.size, args.tile)
    print(json.dumps(report["accuracy"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
