"""Learned picker: micrographs per hour, training and scoring (spa.picking.learned), and its quality.

    python benchmarks/bench_learned_picker.py [--micrographs 4 --size 1024 --diameter 120 --rounds 2]
        [--json benchmarks/measured/learned_picker_DATE.json]

Simulates ``--micrographs`` clean micrographs (spa simulate), picks them with
two LoG pickers, trains the learned scorer on the picks both agree on
(``--rounds`` self-training rounds) and picks every micrograph with it.
Reports micrographs per hour for training and for scoring (wall time, one
process), the same divided by the run's single-precision matrix-multiply
rate (GFLOP/s, benchmarks/common.py: so numbers from a busy or another
machine compare), and precision / recall / F1 of LoG and learned picks
against the truth (match radius 0.2 × diameter).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--micrographs", type=int, default=4)
    ap.add_argument("--size", type=int, default=1024, help="micrograph size, px (1 Å/px)")
    ap.add_argument("--diameter", type=float, default=120.0, help="particle diameter, Å")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import numpy as np

    from common import sgemm_gflops
    from spa.io.mrc import read_mrc
    from spa.picking.consensus import merge_picks
    from spa.picking.coordinates import match_to_truth, read_coordinates
    from spa.picking.learned import LearnedOptions, feature_maps, pick_learned, train_scorer
    from spa.picking.log import LoGOptions, pick_log
    from spa.simulate import MicrographSpec, simulate_micrographs

    gflops_before = sgemm_gflops()
    work = Path(tempfile.mkdtemp(prefix="spa_learned_"))
    spec = MicrographSpec(n=a.micrographs, size=a.size, pixel_size=1.0, diameter=a.diameter, carbon_fraction=0.0,
                          contaminants=0.0)
    simulate_micrographs(work, spec, a.seed)
    images, truth = {}, {}
    for path in sorted((work / "micrographs").glob("*.mrc")):
        images[path.stem] = read_mrc(path)[0].squeeze()
        truth[path.stem] = read_coordinates(work / "truth" / "coordinates" / f"{path.stem}.star")
    d = a.diameter
    log_a = {n: pick_log(im, 1.0, LoGOptions(0.75 * d, 1.08 * d, threshold=2.0)) for n, im in images.items()}
    log_b = {n: pick_log(im, 1.0, LoGOptions(0.83 * d, 1.17 * d, threshold=3.0)) for n, im in images.items()}
    agreed = {}
    for n in images:
        m = merge_picks([log_a[n], log_b[n]], 0.3 * d)
        agreed[n] = m[m.rlnSpaPickerVotes == 2]
    opts = LearnedOptions(d, seed=a.seed)
    t = time.perf_counter()
    scorer, info = train_scorer(lambda n: (images[n], 1.0), agreed, {}, opts, rounds=a.rounds)
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    learned = {n: pick_learned(scorer, *feature_maps(im, 1.0, opts), 1.0) for n, im in images.items()}
    score_s = time.perf_counter() - t
    gflops = 0.5 * (gflops_before + sgemm_gflops())

    def quality(picks):
        n = np.zeros(3)
        for name, tr in truth.items():
            m = match_to_truth(picks[name], tr, 0.2 * d)
            n += [m["picks"], m["true"], m["matched"]]
        p, r = n[2] / max(n[0], 1), n[2] / n[1]
        return {"precision": round(p, 3), "recall": round(r, 3), "f1": round(2 * p * r / max(p + r, 1e-12), 3)}

    n = len(images)
    result = {
        "benchmark": "learned_picker", "micrographs": n, "size_px": a.size, "diameter_A": d, "rounds": a.rounds,
        "train_s": round(train_s, 2), "score_s": round(score_s, 2),
        "train_micrographs_per_hour": round(3600 * n / train_s, 1),
        "score_micrographs_per_hour": round(3600 * n / score_s, 1),
        "sgemm_gflops": round(gflops, 1),
        "score_micrographs_per_hour_per_gflops": round(3600 * n / score_s / gflops, 2),
        "train_micrographs_per_hour_per_gflops": round(3600 * n / train_s / gflops, 2),
        "training": info, "log_a": quality(log_a), "log_b": quality(log_b), "learned": quality(learned),
        "machine": platform.platform(), "python": platform.python_version(),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
