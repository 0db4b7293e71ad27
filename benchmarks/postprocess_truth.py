"""Postprocessing against the truth (the numbers in docs/stages.md, "postprocess").

    python benchmarks/postprocess_truth.py [--data DIR] [--refined NAME=DIR ...] [--figure PNG] [--json OUT]

Two parts:

* ``masks``: the phase-randomisation correction shell by shell against the
  true FSC, as tests/postprocess/test_mask_correction_truth.py but over
  several noise seeds and four masks (soft, tight, binary at 20 % and at
  40 % of the peak).  Half maps = a rendered molecule (box 64, 1.5 Å/px,
  decayed by B = 150 Å²) + white noise (σ = the signal's); the true FSC is
  FSC(s, s + m·n₁)·FSC(s, s + m·n₂): the molecule against the noise inside
  the mask, with no correlation made by the mask.  ``--figure`` draws the
  curves of one seed.
* ``hb_c2``: ``../shared/testdata/hb_c2`` (ASPIRE haemoglobin, C2, box 64,
  1.64 Å/px, 1000 particles) at its SNR 1 and with white noise added to
  SNR 0.1 / 0.03 / 0.01 / 0.003 / 0.001 (as benchmarks/bench_reconstruct.py, seeded);
  half maps reconstructed from the true poses (odd/even particles), and the
  half maps of refinements given by ``--refined NAME=DIR`` (refine3d's
  ``run_half{1,2}_class001_unfil.mrc``; their poses in ``run_data.star``
  against the truth's: median angular error, C2-aware, in one frame).  Each pair is postprocessed with
  the automatic mask (``spa mask``'s defaults on the halves' average) and
  with the truth's mask; beside it the average map against the truth
  (FSC 0.5 — the gold-standard 0.143 estimates that, Rosenthal & Henderson
  2003), unmasked and in the truth's mask.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_reconstruct import HB_C2, noisier_hb_c2  # noqa: E402

from spa.em.fsc import fsc, reaches_threshold_at_nyquist, resolution_at  # noqa: E402
from spa.fourier import radius_3d, shells_3d  # noqa: E402
from spa.io.mrc import read_mrc  # noqa: E402
from spa.postprocess.masks import solvent_mask  # noqa: E402
from spa.postprocess.phase_randomisation import corrected_fsc  # noqa: E402
from spa.postprocess.postprocess import postprocess  # noqa: E402

BOX, PIXEL, BFACTOR = 64, 1.5, 150.0
HB_SNRS = (1.0, 0.1, 0.03, 0.01, 0.003, 0.001)


def _res(curve, threshold, box, pixel) -> str:
    r = resolution_at(curve, threshold, box, pixel)
    return f"≥{r:.2f}" if reaches_threshold_at_nyquist(curve, threshold) else f"{r:.2f}"


# ---------------------------------------------------------------- masks vs the true FSC
def _signal():
    from spa.simulate.density import render_map
    from spa.simulate.molecule import make_molecule

    molecule = render_map(make_molecule(0.55 * BOX * PIXEL, seed=4), BOX, PIXEL)
    f = np.fft.rfftn(molecule) * np.exp(-BFACTOR * (radius_3d(BOX) / (BOX * PIXEL)) ** 2 / 4)
    return np.fft.irfftn(f, s=molecule.shape, axes=(0, 1, 2)).astype(np.float32)


def _masks(signal):
    return {
        "soft (auto, +3 Å, 6 Å edge)": solvent_mask(signal, PIXEL, lowpass_resolution=15.0, extend=3.0, soft_edge=6.0)[0],
        "tight (8 Å low-pass, binary)": solvent_mask(signal, PIXEL, lowpass_resolution=8.0, extend=0.0, soft_edge=0.0)[0],
        "binary at 20 % of the peak": (signal > 0.2 * signal.max()).astype(np.float32),
        "binary at 40 % of the peak": (signal > 0.4 * signal.max()).astype(np.float32),
    }


def masks_part(seeds: int, figure: Path | None) -> list[dict]:
    signal = _signal()
    masks = _masks(signal)
    voxels = np.bincount(shells_3d(BOX).ravel(), minlength=BOX // 2 + 1)[: BOX // 2 + 1]
    rows, drawn = [], {}
    for name, mask in masks.items():
        diff_c, diff_m, res = [], [], []
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            noise = [(signal.std() * rng.standard_normal(signal.shape)).astype(np.float32) for _ in range(2)]
            c = corrected_fsc(signal + noise[0], signal + noise[1], mask, seed=seed)
            true = fsc(signal, signal + mask * noise[0]) * fsc(signal, signal + mask * noise[1])
            beyond = slice(c.randomise_from + 1, BOX // 2 + 1)
            diff_c.append((c.corrected - true)[beyond])
            diff_m.append((c.masked - true)[beyond])
            res.append([resolution_at(x, 0.143, BOX, PIXEL) for x in (true, c.unmasked, c.masked, c.corrected)])
            if seed == 0:
                drawn[name] = (c, true)
                # the FSC's own noise per shell: 1/√(independent coefficients the mask lets through)
                sigma = 1.0 / np.sqrt(np.maximum(mask.mean() * voxels, 1.0))[beyond]
        dc, dm = np.array(diff_c), np.array(diff_m)
        r = np.array(res).mean(0)
        rows.append({
            "mask": name, "mask_fraction": round(float(mask.mean()), 4),
            "resolution_true_A": round(r[0], 2), "resolution_unmasked_A": round(r[1], 2),
            "resolution_masked_A": round(r[2], 2), "resolution_corrected_A": round(r[3], 2),
            "masked_minus_true_max": round(float(dm.mean(0).max()), 3),
            "masked_minus_true_mean": round(float(dm.mean()), 3),
            "corrected_minus_true_max": round(float(dc.mean(0).max()), 3),
            "corrected_minus_true_mean": round(float(dc.mean()), 3),
            "spread_over_seeds": round(float(dc.std(0).max()), 3),
            "masked_excess_sigma_max": round(float((dm.mean(0) / sigma).max()), 1),
            "corrected_excess_sigma_max": round(float((dc.mean(0) / sigma).max()), 1),
        })
        print(json.dumps(rows[-1]), flush=True)
    if figure:
        _draw(drawn, figure)
    return rows


def _draw(drawn: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spa.plots import angstrom_axis, save_figure

    shells = np.arange(BOX // 2 + 1)
    freq = shells / (BOX * PIXEL)
    fig, axes = plt.subplots(1, len(drawn), figsize=(4.0 * len(drawn), 3.6), sharey=True)
    for ax, (name, (c, true)) in zip(axes, drawn.items()):
        ax.plot(freq, true, "k", lw=2.2, label="true (molecule vs noise in mask)")
        ax.plot(freq, c.unmasked, color="0.6", label="unmasked")
        ax.plot(freq, c.masked, "C3", label="masked, uncorrected")
        ax.plot(freq, c.randomised, "C1", ls=":", label="masked, phases randomised")
        ax.plot(freq, c.corrected, "C0", label="corrected")
        ax.axhline(0.143, color="0.7", ls="--", lw=0.8)
        ax.axvline(freq[c.randomise_from], color="0.7", ls=":", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("spatial frequency (1/Å)")
        ax.set_ylim(-0.2, 1.02)
        angstrom_axis(ax, BOX * PIXEL)
    axes[0].set_ylabel("FSC")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------- hb_c2
def _halves_from_true_poses(star: Path, work: Path):
    from spa.io.star import read_particles
    from spa.reconstruct import reconstruct_table

    table, _ = read_particles(star)
    maps = []
    for parity in (0, 1):
        rows = table.iloc[parity::2].reset_index(drop=True)
        volume, pixel, _ = reconstruct_table(rows, star, symmetry="C2")
        maps.append(volume.astype(np.float32))
    return maps[0], maps[1], pixel


def _pose_error(refined_star: Path) -> float:
    """Median angular error (degrees, C2) of a refinement's poses against hb_c2's true poses (same images,
    matched by index; the refinement ran from the truth's map, so one frame)."""
    from spa.consensus.poses import pose_consensus
    from spa.geometry.euler import euler_to_matrix
    from spa.io.star import read_particles

    def rotations(table):
        return np.array([euler_to_matrix(*r) for r in table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()])

    truth, _ = read_particles(HB_C2 / "particles.star")
    refined, _ = read_particles(refined_star)
    index = [int(name.split("@")[0]) - 1 for name in refined["rlnImageName"]]
    truth = truth.iloc[index].reset_index(drop=True)
    zero = np.zeros((len(truth), 2))
    result = pose_consensus(rotations(truth), rotations(refined), zero, zero, group="C2", align=False)
    return float(np.median(result.angular_difference))


def _score(name: str, h1, h2, pixel: float, truth, truth_mask, pose_error: float | None = None) -> list[dict]:
    box = h1.shape[-1]
    average = 0.5 * (h1 + h2)
    auto, _ = solvent_mask(average, pixel)
    vs_truth = fsc(average, truth)
    vs_truth_masked = fsc(average, truth, truth_mask)
    rows = []
    for mask_name, mask in (("automatic", auto), ("truth's", truth_mask)):
        result = postprocess(h1, h2, mask, pixel, seed=0)
        c = result.curves
        rows.append({
            "halves": name, "median_pose_error_deg": None if pose_error is None else round(pose_error, 1),
            "mask": mask_name, "mask_fraction": round(float(mask.mean()), 3),
            "unmasked_0.143_A": _res(c.unmasked, 0.143, box, pixel),
            "masked_0.143_A": _res(c.masked, 0.143, box, pixel),
            "corrected_0.143_A": _res(c.corrected, 0.143, box, pixel),
            "bfactor_used_A2": round(result.bfactor_used, 1),
            "guinier_correlation": round(result.guinier.correlation, 2),
            "map_vs_truth_0.5_A": _res(vs_truth, 0.5, box, pixel),
            "map_vs_truth_in_truth_mask_0.5_A": _res(vs_truth_masked, 0.5, box, pixel),
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def hb_c2_part(data: Path, refined: list[str]) -> list[dict]:
    truth, _ = read_mrc(HB_C2 / "truth_class1.mrc")
    truth_mask, _ = read_mrc(HB_C2 / "truth_mask.mrc")
    rows = []
    for snr in HB_SNRS:
        star = HB_C2 / "particles.star" if snr == 1.0 else noisier_hb_c2(data / f"hb_c2_snr{snr}", snr)
        h1, h2, pixel = _halves_from_true_poses(star, data)
        rows += _score(f"true poses, SNR {snr}", h1, h2, pixel, truth, truth_mask)
    for item in refined:
        name, folder = item.split("=", 1)
        h1, pixel = read_mrc(Path(folder) / "run_half1_class001_unfil.mrc")
        h2, _ = read_mrc(Path(folder) / "run_half2_class001_unfil.mrc")
        rows += _score(name, h1, h2, pixel, truth, truth_mask, _pose_error(Path(folder) / "run_data.star"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "spa_postprocess_truth")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--refined", action="append", default=[], help="NAME=DIR of a refine3d run on hb_c2")
    ap.add_argument("--figure", type=Path, default=None, help="PNG of the mask-correction curves")
    ap.add_argument("--skip-hb-c2", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out = {"masks": masks_part(args.seeds, args.figure)}
    if not args.skip_hb_c2 and HB_C2.exists():
        out["hb_c2"] = hb_c2_part(args.data, args.refined)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
