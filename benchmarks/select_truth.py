"""2D selection (`spa select --auto`) against a simulation's truth: removed fraction per junk kind.

    python benchmarks/select_truth.py --seeds 1,2,3,4 --snr 0.1 [--n 400 --box 48 --classes 6 --iter 6]
        [--work /tmp/select_truth] [--threshold NAME=VALUE ...]

Per (seed, SNR) it simulates ``spa simulate --kind particles --junk-kinds all`` (40 % junk by default),
runs ``spa class2d`` (cached under ``--work``) and calls :func:`spa.class2d.selection.select_from_run`
with the default rules (or ``--threshold`` overrides).  The truth (``truth/particles.star``,
rlnSpaJunkKind: 0 good, 1 noise, 2 blob, 3 edge, 4 overlap) gives, per kind, the fraction removed, and
for the good particles lost, which rule removed them: their class dropped (and not rescued), the noise
p-value, the residual edge test, the residual second-particle test.
Targets (issue 24 §7): good lost ≤ 0.05, noise ≥ 0.9, edge ≥ 0.9, overlap ≥ 0.5.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from pathlib import Path

import numpy as np

from spa.class2d.select import SelectionRules
from spa.class2d.selection import select_from_run
from spa.cli import main as spa_main
from spa.io.star import read_star

KINDS = ("good", "noise", "blob", "edge", "overlap")


def prepare(work: Path, seed: int, snr: float, n: int, box: int, classes: int, iters: int, junk: float,
            pixel_size: float, decoys: int, overlap_offset: float = 0.0) -> Path:
    d = work / (f"n{n}_b{box}_snr{snr:g}_s{seed}_k{classes}_it{iters}"
                + (f"_off{overlap_offset:g}" if overlap_offset else ""))
    quiet = contextlib.redirect_stdout(io.StringIO())
    if not (d / "sim" / "particles.star").exists():
        with quiet:
            assert spa_main(["simulate", "--n-particles", str(n), "--box", str(box), "--pixel-size", str(pixel_size),
                             "--snr", str(snr), "--junk-fraction", str(junk), "--junk-kinds", "all",
                             "--overlap-offset", str(overlap_offset), "--output-dir", str(d / "sim"),
                             "--seed", str(seed)]) == 0
    if not (d / "c2d" / "run_data.star").exists():
        with contextlib.redirect_stdout(io.StringIO()):
            assert spa_main(["class2d", "--particles", str(d / "sim" / "particles.star"), "--classes", str(classes),
                             "--iter", str(iters), "--noise-decoys", str(decoys), "--output-dir", str(d / "c2d"),
                             "--seed", str(seed)]) == 0
    return d


def evaluate(d: Path, rules: SelectionRules, particle_diameter: float) -> dict:
    start = time.perf_counter()
    sel = select_from_run(d / "c2d", rules, auto=True, particle_diameter=particle_diameter,
                          particles_star=d / "sim" / "particles.star")
    seconds = time.perf_counter() - start
    kind = read_star(d / "sim" / "truth" / "particles.star")["particles"]["rlnSpaJunkKind"].to_numpy()
    a = sel.analysed
    kept = np.isin(a["rlnImageName"].to_numpy(), sel.particles["rlnImageName"].to_numpy())
    out = {name: float((~kept[kind == k]).mean()) if (kind == k).any() else float("nan")
           for k, name in enumerate(KINDS)}
    good = kind == 0
    cls_kept = a["spaClassKept"].to_numpy(bool)
    noisy = a["spaNoiseLike"].to_numpy(bool)
    edge_p = a["rlnSpaEdgePValue"].to_numpy(np.float64) if "rlnSpaEdgePValue" in a else np.ones(len(a))
    blob_p = a["rlnSpaBlobPValue"].to_numpy(np.float64) if "rlnSpaBlobPValue" in a else np.ones(len(a))
    odd = a["spaEdgeOrPair"].to_numpy(bool)
    edge_hit = odd & (edge_p < rules.max_edge_pvalue)
    out["lost_class"] = int((good & ~cls_kept).sum())
    out["lost_noise_p"] = int((good & cls_kept & noisy).sum())
    out["lost_edge_test"] = int((good & cls_kept & ~noisy & edge_hit).sum())
    out["lost_blob_test"] = int((good & cls_kept & ~noisy & odd & ~edge_hit).sum())
    out["n_good"] = int(good.sum())
    out["classes_kept"] = f"{len(sel.selected)}/{len(sel.keep)}"
    out["seconds"] = seconds
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="1,2,3,4")
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--box", type=int, default=48)
    p.add_argument("--pixel-size", type=float, default=3.0)
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--iter", type=int, default=6)
    p.add_argument("--junk-fraction", type=float, default=0.4)
    p.add_argument("--noise-decoys", type=int, default=300)
    p.add_argument("--overlap-offset", type=float, default=0.0,
                   help="overlap pairs moved off-centre by up to this × their separation (spa simulate)")
    p.add_argument("--particle-diameter", type=float, default=None, help="Å (default 0.6 × box × pixel size)")
    p.add_argument("--work", default="/tmp/select_truth")
    p.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE")
    a = p.parse_args(argv)
    over = {k: (v.lower() == "true" if v.lower() in ("true", "false") else float(v))
            for k, v in (t.split("=", 1) for t in a.threshold)}
    rules = SelectionRules.from_config(over)
    diam = a.particle_diameter or 0.6 * a.box * a.pixel_size
    print("| seed | SNR | good lost | noise | blob | edge | overlap | good lost by: class / noise p / edge / pair "
          "| classes kept | selection, s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for seed in [int(s) for s in a.seeds.split(",")]:
        d = prepare(Path(a.work), seed, a.snr, a.n, a.box, a.classes, a.iter, a.junk_fraction, a.pixel_size,
                    a.noise_decoys, a.overlap_offset)
        r = evaluate(d, rules, diam)
        print(f"| {seed} | {a.snr:g} | {r['good']:.3f} | {r['noise']:.2f} | {r['blob']:.2f} | {r['edge']:.2f} | "
              f"{r['overlap']:.2f} | {r['lost_class']} / {r['lost_noise_p']} / {r['lost_edge_test']} / "
              f"{r['lost_blob_test']} (of {r['n_good']}) | {r['classes_kept']} | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
