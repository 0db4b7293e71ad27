"""True-pose reconstructions against the truth: the shared reconstruction vs the one before it.

    python benchmarks/bench_reconstruct.py [--data DIR] [--quick] [--relion-bin DIR] [--json OUT]

Data (made once under ``--data``, default ``$TMPDIR/spa_bench_reconstruct``):

* ``spa simulate --kind particles --preset realistic --junk-fraction 0`` at several
  boxes, pixel sizes and SNRs (the true poses in ``truth/particles.star``, the map in
  ``truth/class001.mrc``);
* ``../shared/testdata/hb_c2`` (ASPIRE, a real molecule, SNR 1) when present, and the
  same particles with white noise added to SNR 0.1 (its noise variance is in its
  ``dataset.json``).

Per data set the particles are inserted once (:func:`spa.reconstruct.insert_chunk`, CTF
on), then reconstructed by

* ``before``: the reconstruction as it was until the shared
  :mod:`spa.em.reconstruction` (data ÷ (weight + 10⁻³·W̄), window at the rounded shell
  B/2, no treatment of the corners), kept here only to measure against;
* ``after``: :meth:`spa.em.backprojector.BackProjector.reconstruct` (the shared one);

and compared with the truth by FSC without a mask: resolution (Å) at 0.5 and 0.143 and
the mean FSC over the outer quarter of the shells.  Time: the whole reconstruction
(insertion + reconstruct) per particle, as particles/s ÷ the same machine's batched 2D
FFT rate at that box (:func:`common.fft2_rate`), so the ratio survives a busy machine;
the reconstruct step alone too.  With ``--relion-bin`` (a RELION build's ``bin``), also
``relion_reconstruct --ctf`` (defaults otherwise) on the same particles, converted to
``.mrcs`` by ``spa convert``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_time, fft2_rate  # noqa: E402

from spa.em.fsc import fsc, resolution_at  # noqa: E402
from spa.em.gridding import crop_centered, gridding_factor  # noqa: E402
from spa.fourier import irfft_centered, radius_3d  # noqa: E402
from spa.io.mrc import read_mrc  # noqa: E402

HB_C2 = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "hb_c2"
HB_NOISE_VARIANCE = 4.440279371920042e-05  # hb_c2/dataset.json: particles.noise_variance (SNR 1)

#: (name, box, pixel size Å, SNR, particles)
SIMULATED = [
    ("sim b96 1.5Å snr0.05", 96, 1.5, 0.05, 5000),
    ("sim b96 1.5Å snr0.1", 96, 1.5, 0.1, 5000),
    ("sim b96 1.5Å snr0.5", 96, 1.5, 0.5, 5000),
    ("sim b128 1.0Å snr0.1", 128, 1.0, 0.1, 5000),
    ("sim b64 2.0Å snr0.1", 64, 2.0, 0.1, 5000),
]
QUICK = [SIMULATED[1], SIMULATED[4]]


def before_reconstruct(bp, min_weight_fraction: float = 1e-3):
    """The reconstruction before the shared module (commit 47ea757), for comparison only."""
    p = bp.padded
    mirror = (-np.arange(p)) % p
    d, w = bp.data.copy(), bp.weight.copy()
    d0, w0 = bp.data[:, :, 0], bp.weight[:, :, 0]
    d[:, :, 0] = d0 + d0[mirror][:, mirror].conj()
    w[:, :, 0] = w0 + w0[mirror][:, mirror]
    shells = np.rint(radius_3d(p, np) / bp.pad).astype(np.int64)
    n = bp.box // 2 + 1
    keep = shells < n
    mean_w = np.bincount(shells[keep], weights=w[keep], minlength=n) / np.maximum(
        np.bincount(shells[keep], minlength=n), 1)
    reg = min_weight_fraction * mean_w[np.minimum(shells, n - 1)]
    f = np.where(w + reg > 0, d / np.maximum(w + reg, 1e-30), 0)
    f = np.where(shells <= bp.max_radius, f, 0).astype(np.complex64)
    vol = crop_centered(irfft_centered(f, p, ndim=3), bp.box)
    return (vol / gridding_factor(bp.box, p, 3, np)).astype(np.float32)


def simulate(out: Path, box: int, pixel: float, snr: float, n: int) -> Path:
    if not (out / "truth" / "particles.star").exists():
        from spa.cli import main as spa

        spa(["simulate", "--kind", "particles", "--preset", "realistic", "--n-particles", str(n), "--junk-fraction",
             "0", "--box", str(box), "--pixel-size", str(pixel), "--snr", str(snr), "--seed", "3",
             "--output-dir", str(out)])
    return out / "truth" / "particles.star"


def noisier_hb_c2(out: Path, snr: float) -> Path:
    """hb_c2's particles with white noise added so that its SNR 1 becomes ``snr`` (seeded)."""
    import mrcfile

    from spa.io.star import read_particles, write_particles

    star = out / "particles.star"
    if star.exists():
        return star
    out.mkdir(parents=True, exist_ok=True)
    images = mrcfile.read(HB_C2 / "particles.mrcs").astype(np.float32)
    extra = HB_NOISE_VARIANCE * (1.0 / snr - 1.0)
    images += np.random.default_rng(7).normal(scale=np.sqrt(extra), size=images.shape).astype(np.float32)
    with mrcfile.new(out / "particles.mrcs", overwrite=True) as m:
        m.set_data(images)
        m.voxel_size = 1.640625
    table, optics = read_particles(HB_C2 / "particles.star")
    table["rlnImageName"] = [f"{name.split('@')[0]}@{out / 'particles.mrcs'}" for name in table["rlnImageName"]]
    table = table.drop(columns=[c for c in optics.columns if c in table and c != "rlnOpticsGroup"])
    write_particles(star, table, optics)
    return star


def insert_all(star: Path, chunk: int = 1000):
    from spa.io.images import ParticleImages
    from spa.io.star import read_particles
    from spa.reconstruct import insert_chunk

    table, _ = read_particles(star)
    pixel = float(table["rlnImagePixelSize"].iloc[0])
    box = ParticleImages(table, star).box
    bp = None
    for a in range(0, len(table), chunk):
        rows = table.iloc[a:a + chunk].reset_index(drop=True)
        images = ParticleImages(rows, star).read(np.arange(len(rows)))
        bp = insert_chunk(images, rows, box, pixel, bp=bp, backend="numpy")
    return bp, pixel, len(table)


def scores(vol, truth, pixel: float) -> dict:
    box = vol.shape[-1]
    curve = fsc(vol, truth)
    n = box // 2
    return {"fsc05_A": round(resolution_at(curve, 0.5, box, pixel), 3),
            "fsc0143_A": round(resolution_at(curve, 0.143, box, pixel), 3),
            "mean_fsc_outer_quarter": round(float(curve[int(0.75 * n):n + 1].mean()), 4)}


def relion(star: Path, bin_dir: Path, work: Path) -> np.ndarray:
    """relion_reconstruct --ctf on the particles of ``star`` (converted to .mrcs when they are Zarr)."""
    from spa.cli import main as spa

    work.mkdir(parents=True, exist_ok=True)
    src = star
    if ".zarr" in star.read_text():
        spa(["convert", "--particles", str(star), "--to", "mrcs", "--output-dir", str(work / "mrcs")])
        src = work / "mrcs" / "particles.star"
    out = work / "relion.mrc"
    # RELION reads image names relative to the working directory (its project folder)
    subprocess.run([str(bin_dir / "relion_reconstruct"), "--i", src.name, "--o", str(out), "--ctf"], check=True,
                   capture_output=True, cwd=src.parent)
    return read_mrc(out)[0]


def run_case(name: str, star: Path, truth_path: Path, relion_bin: Path | None, work: Path) -> dict:
    truth, _ = read_mrc(truth_path)
    t0 = time.perf_counter()
    bp, pixel, n = insert_all(star)
    t_insert = time.perf_counter() - t0
    t_before = best_time(lambda: before_reconstruct(bp), repeat=3)
    t_after = best_time(lambda: bp.reconstruct(), repeat=3)
    fft_rate = fft2_rate(bp.box)
    row = {"case": name, "box": bp.box, "pixel_A": pixel, "n": n,
           "before": scores(before_reconstruct(bp), truth, pixel), "after": scores(bp.reconstruct(), truth, pixel),
           "reconstruct_s": {"before": round(t_before, 3), "after": round(t_after, 3)},
           "particles_per_s_vs_fft": {"before": round(n / (t_insert + t_before) / fft_rate, 4),
                                      "after": round(n / (t_insert + t_after) / fft_rate, 4)}}
    if relion_bin is not None:
        row["relion"] = scores(relion(star, relion_bin, work / "relion"), truth, pixel)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "spa_bench_reconstruct")
    ap.add_argument("--quick", action="store_true", help="two simulated sets only, and hb_c2")
    ap.add_argument("--relion-bin", type=Path, default=None, help="a RELION build's bin/ (optional)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    os.environ.setdefault("SPA_BACKEND", "numpy")
    rows = []
    for name, box, pixel, snr, n in (QUICK if args.quick else SIMULATED):
        d = args.data / f"b{box}_p{pixel}_s{snr}_n{n}"
        rows.append(run_case(name, simulate(d, box, pixel, snr, n), d / "truth" / "class001.mrc", args.relion_bin, d))
    if (HB_C2 / "particles.star").exists():
        truth = HB_C2 / "truth_class1.mrc"
        rows.append(run_case("hb_c2 (ASPIRE) snr1", HB_C2 / "particles.star", truth, args.relion_bin,
                             args.data / "hb_c2"))
        star = noisier_hb_c2(args.data / "hb_c2_snr0.1", 0.1)
        rows.append(run_case("hb_c2 (ASPIRE) + noise snr0.1", star, truth, args.relion_bin, star.parent))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
