"""Expected time of one EM iteration on a cluster, from what bench_scaling.py measured (docs/scaling.md).

    python benchmarks/scaling_model.py [benchmarks/measured/scaling_2026-12-05.json] [--particles 1000000]

The model, per pass (class2d K = 50 or a refine3d global iteration, box 128), with C chunks of 256 particles
on N nodes of ``--cores`` single-threaded workers:

* E-step: ceil(C / workers) rounds of one chunk (a chunk's time from the measured in-process rate);
* images read from the shared file system (``--fs-gbs``, aggregate), overlapping the E-step;
* reduction (spa.parallel): each random half's chunks are added in ``lanes`` chains of consecutive chunks,
  one addition after the other; each step moves one partial sum over the network (``--net-gbs`` per node)
  and adds it.  A chain runs beside the E-step, so the pass takes the longest of the three, plus the
  final addition of the lane sums;
* the Dask scheduler, one process, ~1 ms per task (distributed's own figure, ``--task-ms``): four tasks per
  chunk, beside the rest;
* M-step on the client (serial), as measured.

Every rate is the measured one (a shared 2-core machine: upper bounds, see the doc); the addition of a
partial sum in two versions, as it took in the Dask run and as a bare NumPy addition of the same bytes.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

HERE = Path(__file__).resolve().parent


def model(c_s: float, partial_mb: float, add_s: float, mstep_s: float, *, particles: int, nodes: int, cores: int,
          lanes: int, halves: int, net_gbs: float, fs_gbs: float, box: int, chunk: int = 256,
          task_s: float = 1e-3) -> dict:
    chunks = math.ceil(particles / chunk)
    scheduler = chunks * 4 * task_s  # the chunk's task, two getitems of its result, its addition
    workers = nodes * cores
    estep = math.ceil(chunks / workers) * chunk * c_s
    read = particles * box * box * 4 / (fs_gbs * 1e9)
    step = partial_mb / 1e3 / net_gbs + add_s  # move one partial sum, add it
    chains = halves * lanes
    reduce_chain = math.ceil(chunks / chains) * step
    final = lanes * step  # the lane sums of a half, one after the other
    passed = max(estep, read, reduce_chain, scheduler) + final
    return {"estep": estep, "read": read, "reduce": reduce_chain + final, "scheduler": scheduler, "mstep": mstep_s,
            "total": passed + mstep_s, "limit": max([("E-step", estep), ("file system", read),
                                                     ("reduction", reduce_chain), ("scheduler", scheduler)],
                                                    key=lambda kv: kv[1])[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("measured", nargs="?", default=str(HERE / "measured" / "scaling_2026-12-05.json"))
    ap.add_argument("--particles", type=int, default=1_000_000)
    ap.add_argument("--nodes", type=int, nargs="+", default=[10, 50, 100])
    ap.add_argument("--cores", type=int, default=32, help="worker processes (cores) per node")
    ap.add_argument("--net-gbs", type=float, default=12.5, help="GB/s into one node (100 Gb/s InfiniBand: 12.5)")
    ap.add_argument("--fs-gbs", type=float, default=10.0, help="aggregate GB/s of the shared file system")
    ap.add_argument("--task-ms", type=float, default=1.0, help="scheduler time per task")
    ap.add_argument("--cases", nargs="+", default=["256:1", "256:32", "512:32", "1024:32"],
                    help="CHUNK:LANES (particles per task, running sums per half); spa's defaults are 256:1")
    a = ap.parse_args()
    m = json.loads(Path(a.measured).read_text())
    runs = {(r["pass_"], r["workers"]): r for r in m["runs"]}
    sizes = {s["pass_"]: s for s in m["sizes"]}
    print(f"{a.particles:,} particles, nodes of {a.cores} cores, {a.net_gbs} GB/s per node, file system "
          f"{a.fs_gbs} GB/s; seconds per iteration")
    print(f"{'pass':9} {'chunk':>5} {'lanes':>5} {'add':>6} {'nodes':>5} {'E-step':>7} {'read':>6} {'reduce':>7} "
          f"{'sched':>6} {'M-step':>7} {'total':>7}  limit")
    for name in ("class2d", "refine3d"):
        one, two, size = runs[(name, 1)], runs[(name, 2)], sizes[name]
        mstep = two["client_s"]
        c_s = (one["wall_s"] - (mstep if name == "refine3d" else 0.0)) / one["n"]  # in-process: the M-step included
        n_adds = math.ceil(one["n"] / size["chunk_particles"]) - 2  # one lane in each of the two halves
        adds = {"dask": two["reduce"] / max(1, n_adds),
                "numpy": m["micro_add_ms"][[k for k in m["micro_add_ms"] if k.startswith(name)][0]] / 1e3}
        for case in a.cases:
            chunk, lanes = map(int, case.split(":"))
            for kind, add_s in adds.items():
                for nodes in a.nodes:
                    r = model(c_s, size["partial_bytes"] / 1e6, add_s, mstep, particles=a.particles, nodes=nodes,
                              cores=a.cores, lanes=lanes, halves=2, net_gbs=a.net_gbs, fs_gbs=a.fs_gbs,
                              box=size["box"], chunk=chunk, task_s=a.task_ms / 1e3)
                    print(f"{name:9} {chunk:>5} {lanes:>5} {kind:>6} {nodes:>5} {r['estep']:>7.1f} {r['read']:>6.1f} "
                          f"{r['reduce']:>7.1f} {r['scheduler']:>6.1f} {r['mstep']:>7.1f} {r['total']:>7.1f}  "
                          f"{r['limit']}")


if __name__ == "__main__":
    main()
