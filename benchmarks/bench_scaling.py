"""One EM iteration on 1, 2, 4, … Dask workers: parallel efficiency, and where the time goes.

    python benchmarks/bench_scaling.py [--workers 1 2] [--n 4000] [--box 128] [--repeat 2] [--json out.json]

Two passes, each one E-step iteration over the same simulated particles (``spa simulate``, realistic
preset at ``--box``): 2D classification with K = 50 classes (``--classes``), and a 3D refinement
iteration (global HEALPix order 2 search against the true map low-passed to 40 Å, both halves).
For each worker count the pass runs on a local Dask cluster of that many single-threaded worker
processes (1 = in-process, single-threaded BLAS: the reference), and Dask's task stream splits the
workers' time into

* compute of the E-step tasks (the chunks),
* compute of the reductions (additions of the chunks' sums, on the workers),
* transfers between workers (partial sums moving to the worker that adds them; the broadcast),

with the client's own time (scatter, the M-step) as the rest of the wall time.  Parallel efficiency
= t(1) / (W · t(W)).  The machine's own sgemm rate is measured in the same run, so rates compare
across machines.  docs/scaling.md extrapolates from the split to clusters of many nodes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")  # one BLAS thread everywhere: W workers use W cores

import numpy as np  # noqa: E402
from distributed import get_task_stream  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import sgemm_gflops  # noqa: E402


def simulate(work: Path, n: int, box: int) -> Path:
    from spa.cli import main as spa

    sim = work / "sim"
    if not (sim / "truth" / "particles.star").exists():
        spa(["simulate", "--kind", "particles", "--preset", "realistic", "--box", str(box), "--n-particles", str(n),
             "--junk-fraction", "0", "--seed", "1", "--output-dir", str(sim)])
    return sim


#: set by sizes(): a context in which the iteration's pass stops after measuring its first chunk
PROBE = None


def timed_iteration(runner, client):
    """(wall seconds, Dask task stream or None) of one iteration of ``runner``; the initialisation (its own
    passes over the particles) is outside both."""
    state = runner.initialise()
    if PROBE is not None:  # sizes(): the iteration's first chunk only
        with PROBE():
            runner.iterate(state)
    stream = contextlib.nullcontext() if client is None else get_task_stream(client)
    with stream as ts:
        t = time.perf_counter()
        runner.iterate(state)
        wall = time.perf_counter() - t
    return wall, (None if ts is None else ts.data)


def class2d_pass(sim: Path, classes: int):
    """A callable(client) running one class2d iteration on the particles."""
    from spa.class2d.classify import Class2D, Class2DOptions
    from spa.io.images import ParticleImages
    from spa.io.star import read_particles

    table, optics = read_particles(sim / "particles.star")
    source = ParticleImages(table, sim / "particles.star")

    def run(client, out):
        opts = Class2DOptions(n_classes=classes, n_iter=1, noise_decoys=0, seed=1)
        r = Class2D(table, source, opts, out, optics=optics, client=client, log=None)
        return timed_iteration(r, client)

    return run


def refine3d_pass(sim: Path):
    """A callable(client) running one refine3d iteration (global search, both halves)."""
    from spa.em.driver3d import load_particles, load_reference
    from spa.refine3d.refine import Refine3D, Refine3DOptions

    table, optics, source, px, box = load_particles(sim / "particles.star")
    reference = load_reference(sim / "truth" / "class001.mrc", box, px)

    def run(client, out):
        r = Refine3D(table, source, reference, Refine3DOptions(seed=1), out, optics=optics, client=client, log=None)
        return timed_iteration(r, client)

    return run


def split(stream) -> dict:
    """Worker seconds per kind from Dask's task stream."""
    out = {"estep": 0.0, "reduce": 0.0, "transfer": 0.0, "other": 0.0}
    for task in stream:
        name = str(task.get("key", ""))
        for ss in task.get("startstops", ()):
            dt = ss["stop"] - ss["start"]
            if ss["action"] == "transfer":
                out["transfer"] += dt
            elif ss["action"] == "compute":
                kind = "estep" if "chunk" in name else "reduce" if "_add" in name else "other"
                out[kind] += dt
    return out


class _Probed(Exception):
    pass


def sizes(run, work: Path) -> dict:
    """Bytes a cluster moves per iteration, from one in-process chunk (the pass is stopped after it): the
    broadcast (particle source and the shared context: references, noise spectra, sampling), one chunk's
    partial sum, one chunk's per-particle results; and the chunk count and size."""
    import cloudpickle

    import spa.em.engine as engine

    seen = {}
    real = engine.map_reduce

    def probe(func, tasks, broadcast=(), **kw):
        partial, result = func(*broadcast, *tasks[0])
        seen.update(broadcast_bytes=len(cloudpickle.dumps(broadcast)), partial_bytes=len(cloudpickle.dumps(partial)),
                    result_bytes=len(cloudpickle.dumps(result)), chunks=len(tasks), chunk_particles=len(tasks[0][0]))
        raise _Probed

    @contextlib.contextmanager
    def patched():
        engine.map_reduce = probe
        try:
            yield
        finally:
            engine.map_reduce = real

    global PROBE
    PROBE = patched
    try:
        run(None, work / "probe")
    except _Probed:
        pass
    finally:
        PROBE = None
    return seen


def measure(run, workers: int, work: Path, repeat: int = 1) -> dict:
    """The fastest of ``repeat`` timed iterations after a warm-up (on a shared machine the fastest is the one
    least slowed by others' work), with its task-stream split; all walls and loads recorded."""
    from spa.cluster import close_client, make_client

    out = work / f"w{workers}"
    client = None if workers == 1 else make_client(workers=workers)  # 1: in-process
    try:
        run(client, out)  # warm-up: workers import, compile, fill caches
        tries = []
        for _ in range(max(1, repeat)):
            wall, stream = run(client, out)
            tries.append((wall, stream, os.getloadavg()[0]))
        wall, stream, _ = min(tries, key=lambda t: t[0])
        row = {"workers": workers, "wall_s": wall, "walls_s": [t[0] for t in tries], "loads_1min": [t[2] for t in tries]}
        return row if stream is None else {**row, **split(stream)}
    finally:
        close_client(client)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--passes", nargs="+", default=["class2d", "refine3d"])
    ap.add_argument("--repeat", type=int, default=1, help="timed iterations per worker count (the fastest is kept)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--sizes", action="store_true", help="only the bytes moved per iteration (one chunk, in-process)")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="spa_scaling_"))
    sim = simulate(work, a.n, a.box)
    gflops = sgemm_gflops()
    print(f"{a.n} particles, box {a.box}; sgemm {gflops:.0f} GFLOP/s (one thread)", flush=True)
    rows = []
    for name in a.passes:
        run = class2d_pass(sim, a.classes) if name == "class2d" else refine3d_pass(sim)
        if a.sizes:
            rows.append({"pass_": name, "n": a.n, "box": a.box, **sizes(run, work / name)})
            print(name, rows[-1], flush=True)
            continue
        base = None
        print(f"{name}: {'W':>3} {'wall s':>8} {'efficiency':>10} {'E-step s':>9} {'reduce s':>9} {'transfer s':>10} "
              f"{'client s':>9}", flush=True)
        for w in a.workers:
            r = measure(run, w, work / name, a.repeat)
            base = base or r["wall_s"] * (1 if w == 1 else w)  # t(1); estimated if 1 is not measured
            r.update(pass_=name, efficiency=base / (w * r["wall_s"]), particles_per_s=a.n / r["wall_s"],
                     particles_per_s_per_gflops=a.n / r["wall_s"] / gflops, n=a.n, box=a.box,
                     load_1min=os.getloadavg()[0], cpus=os.cpu_count())  # a shared machine: others' load
            if w > 1:  # what the workers did not spend on tasks is the client's (scatter, M-step) or idle
                r["client_s"] = max(0.0, r["wall_s"] - (r["estep"] + r["reduce"] + r["transfer"]) / w)
            rows.append(r)
            print(f"{'':>9}{w:>3} {r['wall_s']:>8.1f} {r['efficiency']:>10.2f} {r.get('estep', np.nan):>9.1f} "
                  f"{r.get('reduce', np.nan):>9.2f} {r.get('transfer', np.nan):>10.2f} "
                  f"{r.get('client_s', np.nan):>9.1f}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
