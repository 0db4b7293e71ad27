"""Peak memory and time per particle-iteration of each stage against the number of particles N.

    python benchmarks/bench_memory.py [--box 128 --base 2000]
        [--runs reconstruct:10000,50000,200000 class2d:10000,50000,200000 refine3d:10000,50000 ...]
        [--json out.json]

A base set of ``--base`` particles (``spa simulate``, realistic preset, TRUE poses kept) is
simulated once; each measurement gets a STAR whose rows repeat the base rows up to N (memory is
what is measured: the images are the same, the work and the bookkeeping are N's).  Every stage runs
as the ``spa`` command in a fresh child process (in-process, ``--workers 1``, unless ``--workers``
says otherwise); its peak resident memory is the child's ``ru_maxrss`` (the largest process of the
run, Dask workers included).  Time per particle-iteration is the wall time over N × iterations,
reported also as a ratio to the same run's smallest N (flat = 1.0).

Stages and what one run does (1–2 iterations each, as the issue asks):

* ``reconstruct``: one back-projection of all N (true poses);
* ``class2d``: ``--classes 10 --iter 1`` (the last iteration also scores the noise decoys);
* ``refine3d``: ``--max-iter 2`` from the true map, local searches around the input (true) poses: one
  iteration of both halves and the final one to Nyquist (the largest sums a refinement holds);
  ``--max-significant 64`` (default 512) keeps the 2-core machine's time reasonable: the fine pass's
  memory is bounded by its batch budget either way;
* ``class3d``: ``--classes 2 --iter 1 --sigma-ang 3`` from the true map: the 3D-variability seeds at
  the input poses and one iteration of local searches;
* ``initial-model``: a short SGD (``--iter 4 --initial-iter 2``) and its final pass over all N.

Peak GPU memory is not measured here (no GPU on the development machine).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGE_ARGS = {
    "reconstruct": lambda star, ref, out: ["reconstruct", "--particles", star, "--output", f"{out}/map.mrc"],
    "class2d": lambda star, ref, out: ["class2d", "--particles", star, "--classes", "10", "--iter", "1",
                                       "--output-dir", out],
    # local searches around the (true) input poses from the first iteration, then the final iteration
    # to Nyquist: the sums of the full window, as a converged refinement ends
    "refine3d": lambda star, ref, out: ["refine3d", "--particles", star, "--reference", ref, "--max-iter", "2",
                                        "--healpix-order", "4", "--auto-local-healpix-order", "4",
                                        "--max-significant", "64", "--output-dir", out],
    "class3d": lambda star, ref, out: ["class3d", "--particles", star, "--reference", ref, "--classes", "2",
                                       "--iter", "1", "--sigma-ang", "3", "--healpix-order", "4",
                                       "--output-dir", out],
    "initial-model": lambda star, ref, out: ["initial-model", "--particles", star, "--iter", "4", "--initial-iter",
                                             "2", "--output-dir", out],
}
ITERATIONS = {"reconstruct": 1, "class2d": 1, "refine3d": 2, "class3d": 1, "initial-model": 1}

# run in a fresh interpreter so ru_maxrss of RUSAGE_CHILDREN covers this one command alone
_MEASURE = """
import resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - t
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, wall, rc.returncode)
if rc.returncode:
    print(rc.stderr[-3000:], file=sys.stderr)
"""


def simulate(work: Path, box: int, base: int) -> tuple[Path, Path]:
    sim = work / "sim"
    if not (sim / "truth" / "particles.star").exists():
        subprocess.run([sys.executable, "-m", "spa.cli", "simulate", "--kind", "particles", "--preset", "realistic",
                        "--box", str(box), "--n-particles", str(base), "--junk-fraction", "0", "--seed", "1",
                        "--output-dir", str(sim)], check=True, stdout=subprocess.DEVNULL)
    return sim / "truth" / "particles.star", sim / "truth" / "class001.mrc"


def repeated_star(truth_star: Path, n: int, path: Path) -> Path:
    """A particles STAR of n rows cycling through the base rows (image names made absolute)."""
    import numpy as np

    from spa.io.images import resolve_image_path
    from spa.io.star import read_particles, write_particles

    if path.exists():
        return path
    table, optics = read_particles(truth_star)
    parts = table["rlnImageName"].astype(str).str.partition("@")
    files = {f: str(resolve_image_path(f, truth_star)) for f in parts[2].unique()}
    table["rlnImageName"] = parts[0] + "@" + parts[2].map(files)
    rows = table.iloc[np.arange(n) % len(table)].reset_index(drop=True)
    # fresh halves: repeated rows must not all share their base row's subset by construction
    rows["rlnRandomSubset"] = 1 + (np.arange(n) % 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_particles(path, rows, optics)
    return path


def measure(stage: str, star: Path, ref: Path, out: Path, workers: int) -> dict:
    args = STAGE_ARGS[stage](str(star), str(ref), str(out)) + ["--seed", "1"]
    if workers > 1:
        args += ["--workers", str(workers)]
    proc = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m", "spa.cli", *args],
                          capture_output=True, text=True)
    fields = proc.stdout.split()
    if proc.returncode or len(fields) < 3 or fields[2] != "0":
        raise RuntimeError(f"{stage} failed:\n{proc.stderr[-3000:]}")
    return {"peak_rss_mb": int(fields[0]) / 1024.0, "wall_s": float(fields[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--base", type=int, default=2000, help="particles simulated (rows are repeated up to N)")
    ap.add_argument("--runs", nargs="+", default=["reconstruct:10000,50000,200000", "class2d:10000,50000,200000",
                                                  "refine3d:10000,50000", "class3d:10000,50000",
                                                  "initial-model:10000,50000"],
                    help="STAGE:N1,N2,... (stages: " + ", ".join(STAGE_ARGS) + ")")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--work", default=None, help="working folder (kept; default a temporary one)")
    ap.add_argument("--json", default=None, help="write the rows here as JSON")
    ap.add_argument("--plot", default=None, help="PNG of peak memory against N (with --before: beside those rows)")
    ap.add_argument("--before", default=None, help="JSON rows of an earlier run (e.g. the code before a change)")
    ap.add_argument("--plot-only", action="store_true", help="only plot --json (and --before); run nothing")
    a = ap.parse_args()
    if a.plot_only:
        plot(json.loads(Path(a.json).read_text()), a.before and json.loads(Path(a.before).read_text()), a.plot)
        return
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="spa_mem_"))
    work.mkdir(parents=True, exist_ok=True)
    truth_star, ref = simulate(work, a.box, a.base)
    rows = []
    print(f"{'stage':>14} {'N':>8} {'peak RSS MB':>12} {'wall s':>8} {'µs/particle-it':>15} {'vs first':>9}")
    for spec in a.runs:
        stage, sizes = spec.split(":")
        first = None
        for n in (int(s) for s in sizes.split(",")):
            star = repeated_star(truth_star, n, work / f"n{n}" / "particles.star")
            out = work / f"n{n}" / stage
            r = measure(stage, star, ref, out, a.workers)
            per = r["wall_s"] / (n * ITERATIONS[stage]) * 1e6
            first = first or per
            row = {"stage": stage, "n": n, "box": a.box, "workers": a.workers, **r, "us_per_particle_iter": per,
                   "time_ratio": per / first}
            rows.append(row)
            print(f"{stage:>14} {n:>8} {r['peak_rss_mb']:>12.0f} {r['wall_s']:>8.1f} {per:>15.1f} "
                  f"{per / first:>9.2f}", flush=True)
            if a.json:
                Path(a.json).write_text(json.dumps(rows, indent=1))
    print(f"work folder: {work}")
    if a.plot:
        plot(rows, a.before and json.loads(Path(a.before).read_text()), a.plot)


def plot(rows, before, path) -> None:
    """Peak resident memory against N per stage: this run solid, ``before`` dashed (if given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    stages = sorted({r["stage"] for r in rows} | {r["stage"] for r in before or []})
    colours = dict(zip(stages, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for label, data, style in (("after", rows, "-o"), ("before", before or [], "--x")):
        for stage in stages:
            pts = sorted((r["n"], r["peak_rss_mb"] / 1024) for r in data if r["stage"] == stage)
            if pts:
                ax.plot(*zip(*pts), style, color=colours[stage], label=f"{stage} ({label})")
    ax.set_xscale("log")
    ax.set_xlabel("particles N (box %d)" % rows[0]["box"])
    ax.set_ylabel("peak resident memory (GB)")
    ax.set_title("spa: peak memory against the number of particles")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")
