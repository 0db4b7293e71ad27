"""Picking against the truth of ``spa simulate --kind micrographs``: F1 against SNR for every picker, the
consensus and the cleaning (the table in docs/picking.md).

    python benchmarks/pick_truth.py [--snr 0.05 0.02 0.01] [--seed 3] [--data DIR] [--json OUT] [--template]

Per SNR: the demo preset's micrographs (6 × 1024² at 1 Å/px, 120 Å particles, defocus 0.8–2.5 µm, ice
texture, carbon edges, contaminants; the same ``--seed`` gives the same particles at every SNR), then the
workflow's chain through the command line exactly as ``workflow/rules/micrographs.smk`` runs it:

  LoG (90–132 Å, threshold 2) → LoG's confident picks (threshold 4, the learned picker's positives)
  → learned picker (negatives: background and the LoG picks) → at least 2 of (LoG, learned)
  → ``spa clean``

and, with ``--template``, template matching with projections of the true map low-passed to 25 Å (not the
truth itself: what an ab-initio map gives).  Each step's picks are matched one-to-one to the true centres
within 0.2 × the diameter (``spa.picking.scoring.pick_scores``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from spa.cli import main as spa
from spa.io.star import read_star
from spa.picking.coordinates import read_coordinates
from spa.picking.scoring import pick_scores

DIAMETER = 120.0  # Å, the demo preset's particle; 1 Å/px


def scores(index: Path, truth: Path) -> dict:
    table = read_star(index)["coordinate_files"]
    pairs = [(read_coordinates(c), read_coordinates(truth / "coordinates" / f"{Path(m).stem}.star"))
             for m, c in zip(table.rlnMicrographName, table.rlnMicrographCoordinates)]
    return pick_scores(pairs, 0.2 * DIAMETER)


def lowpassed_map(truth: Path, out: Path, resolution: float) -> Path:
    from spa.io.mrc import read_mrc, write_mrc
    from spa.fourier import lowpass

    volume, pixel = read_mrc(truth / "class001.mrc")
    write_mrc(out, lowpass(volume, pixel, resolution, ndim=3).astype("float32"), pixel)
    return out


def run(data: Path, snr: float, seed: int, template: bool) -> dict:
    sim = data / f"snr{snr:g}_seed{seed}"
    star = sim / "micrographs.star"
    if not star.exists():
        assert spa(["simulate", "--kind", "micrographs", "--preset", "demo", "--n-micrographs", "6", "--snr",
                    str(snr), "--seed", str(seed), "--output-dir", str(sim)]) == 0
    ctf = sim / "truth" / "micrographs_ctf.star"  # micrograph names relative to the simulation's folder
    os.chdir(sim)
    log = ["--method", "log", "--diameter-min", "90", "--diameter-max", "132"]
    steps = {}
    assert spa(["pick", "--micrographs", str(ctf), *log, "--threshold", "2", "--output-dir", str(sim / "log")]) == 0
    steps["LoG"] = sim / "log"
    assert spa(["pick", "--micrographs", str(ctf), *log, "--threshold", "4",
                "--output-dir", str(sim / "agreed")]) == 0
    steps["LoG, threshold 4 (positives)"] = sim / "agreed"
    pickers = [str(sim / "log" / "autopick.star")]
    if template:
        reference = lowpassed_map(sim / "truth", sim / "map_25A.mrc", 25.0)
        assert spa(["pick", "--micrographs", str(ctf), "--method", "template", "--diameter", str(DIAMETER),
                    "--reference", str(reference), "--output-dir", str(sim / "template")]) == 0
        steps["template (map at 25 Å)"] = sim / "template"
        pickers.append(str(sim / "template" / "autopick.star"))
    assert spa(["pick", "--micrographs", str(ctf), "--method", "learned", "--diameter", str(DIAMETER),
                "--positives", str(sim / "agreed" / "autopick.star"), "--negatives", *pickers,
                "--output-dir", str(sim / "learned")]) == 0
    steps["learned"] = sim / "learned"
    assert spa(["consensus", "pick", "--micrographs", str(ctf), "--picks", *pickers,
                str(sim / "learned" / "autopick.star"), "--mode", "at-least", "--min-pickers", "2",
                "--diameter", str(DIAMETER), "--distance", "0.3", "--output-dir", str(sim / "consensus")]) == 0
    steps["consensus (at least 2)"] = sim / "consensus"
    assert spa(["clean", "--micrographs", str(ctf), "--coordinates", str(sim / "consensus" / "autopick.star"),
                "--diameter", str(DIAMETER), "--output-dir", str(sim / "clean")]) == 0
    steps["consensus, cleaned"] = sim / "clean"
    return {name: scores(folder / "autopick.star", sim / "truth") for name, folder in steps.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--snr", type=float, nargs="+", default=[0.05, 0.02, 0.01])
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--template", action="store_true", help="also template matching (slower)")
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "spa_pick_truth"))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    results = {f"{snr:g}": run(Path(args.data), snr, args.seed, args.template) for snr in args.snr}
    print("| SNR | picks | true | precision | recall | F1 | RMS error (px) |")
    print("|---|---|---|---|---|---|---|")
    for snr, steps in results.items():
        for name, s in steps.items():
            print(f"| {snr} | {name}: {s['picks']} | {s['true']} | {s['precision']:.3f} | {s['recall']:.3f} | "
                  f"{s['f1']:.3f} | {s['rms_px']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"seed": args.seed, "results": results}, indent=1))


if __name__ == "__main__":
    main()
