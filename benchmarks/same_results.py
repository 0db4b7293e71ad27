"""Run every iterative stage on a small simulated set and compare the results with another run's.

    python benchmarks/same_results.py --out DIR [--workers 1] [--compare OTHER_DIR]

Stages (tiny preset, fixed seeds): class2d, initial-model, class3d, refine3d and reconstruct.  Each
run's maps and particle tables are kept in DIR; with ``--compare`` every map and every numeric column
of the particle tables is compared with OTHER_DIR's: identical bits, or the largest relative
difference (maps: of the map's range; tables: per column) and how many particles changed class or
moved more than 1° or 0.5 px.  Used to show that a change of code structure changes no result (bit
for bit), and by how much a change of the order of summation moves them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

STAGES = [
    ("class2d", ["class2d", "--particles", "{sim}/particles.star", "--classes", "4", "--iter", "4",
                 "--output-dir", "{out}/class2d"]),
    ("initial-model", ["initial-model", "--particles", "{sim}/particles.star", "--iter", "6", "--initial-iter", "3",
                       "--output-dir", "{out}/initial_model"]),
    ("class3d", ["class3d", "--particles", "{sim}/truth/particles.star", "--reference", "{sim}/truth/class001.mrc",
                 "--classes", "2", "--iter", "3", "--output-dir", "{out}/class3d"]),
    ("refine3d", ["refine3d", "--particles", "{sim}/particles.star", "--reference", "{sim}/truth/class001.mrc",
                  "--max-iter", "4", "--output-dir", "{out}/refine3d"]),
    ("reconstruct", ["reconstruct", "--particles", "{sim}/truth/particles.star", "--output",
                     "{out}/reconstruct/map.mrc"]),
]
MAPS = {"class2d": "class2d/run_classes.mrcs", "initial-model": "initial_model/initial_model.mrc",
        "class3d": "class3d/run_class001.mrc", "refine3d": "refine3d/run_class001.mrc",
        "reconstruct": "reconstruct/map.mrc"}
TABLES = {"class2d": "class2d/run_data.star", "initial-model": "initial_model/run_data.star",
          "class3d": "class3d/run_data.star", "refine3d": "refine3d/run_data.star"}


def run_all(out: Path, workers: int) -> None:
    sim = out / "sim"
    if not (sim / "particles.star").exists():
        subprocess.run([sys.executable, "-m", "spa.cli", "simulate", "--kind", "particles", "--preset", "tiny",
                        "--n-particles", "600", "--seed", "3", "--output-dir", str(sim)], check=True,
                       stdout=subprocess.DEVNULL)
    for name, args in STAGES:
        cmd = [a.format(sim=sim, out=out) for a in args] + ["--seed", "2"]
        if workers > 1:
            cmd += ["--workers", str(workers)]
        (out / MAPS[name]).parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "spa.cli", *cmd], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
        print(f"ran {name}", flush=True)


def compare(a: Path, b: Path) -> bool:
    from spa.io.mrc import read_mrc
    from spa.io.star import read_particles

    same = True
    for name in MAPS:
        ma, _ = read_mrc(a / MAPS[name])
        mb, _ = read_mrc(b / MAPS[name])
        if np.array_equal(ma, mb):
            print(f"{name:>14} map: identical bits")
            continue
        same = False
        rel = float(np.abs(ma - mb).max() / max(np.ptp(ma), 1e-30))
        print(f"{name:>14} map: largest difference {rel:.2e} of its range")
    for name, path in TABLES.items():
        ta, _ = read_particles(a / path)
        tb, _ = read_particles(b / path)
        cols = [c for c in ta.columns if c in tb and ta[c].dtype.kind in "if"]
        diff = [c for c in cols if not np.array_equal(ta[c].to_numpy(), tb[c].to_numpy())]
        if not diff:
            print(f"{name:>14} table: identical ({len(cols)} numeric columns)")
            continue
        same = False
        notes = []
        if "rlnClassNumber" in diff:
            notes.append(f"{int((ta.rlnClassNumber != tb.rlnClassNumber).sum())} changed class")
        for col, tol, unit in (("rlnAnglePsi", 1.0, "°"), ("rlnAngleTilt", 1.0, "°"), ("rlnOriginXAngst", 0.5, " Å")):
            if col in diff:
                moved = np.abs(((ta[col] - tb[col] + 180) % 360) - 180) if "Angle" in col else np.abs(ta[col] - tb[col])
                notes.append(f"{int((moved > tol).sum())} with {col} off by > {tol}{unit}")
        print(f"{name:>14} table: {len(diff)} columns differ ({', '.join(diff[:4])}…); " + "; ".join(notes))
    return same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--compare", default=None)
    ap.add_argument("--no-run", action="store_true", help="only compare existing folders")
    a = ap.parse_args()
    out = Path(a.out)
    if not a.no_run:
        run_all(out, a.workers)
    if a.compare:
        sys.exit(0 if compare(out, Path(a.compare)) else 1)


if __name__ == "__main__":
    main()
