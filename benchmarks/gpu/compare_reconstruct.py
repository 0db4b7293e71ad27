"""NumPy vs CuPy, stage by stage, on one reconstruction (a check for a lent GPU).

    python benchmarks/gpu/compare_reconstruct.py --star sim/truth/particles.star

Prints the largest relative difference between the backends for each step of
``spa reconstruct`` on the first chunk (centred transforms, CTFs, inserted sums,
reconstructed map), then FSC 0.5 against the true map for whole reconstructions
with each backend and chunk size, so a GPU-only fault shows where it enters.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from spa.backend import get_backend
from spa.ctf import ctf_from_table
from spa.em.fsc import fsc, resolution_at
from spa.io.images import ParticleImages
from spa.io.mrc import read_mrc
from spa.io.star import read_particles
from spa.reconstruct import centred_transforms, insert_chunk, reconstruct_star


def rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--star", required=True)
    ap.add_argument("--truth", default=None, help="true map (default: class001.mrc beside the STAR)")
    ap.add_argument("--chunk", type=int, default=512)
    args = ap.parse_args()
    gpu = get_backend("cupy")
    table, _ = read_particles(args.star)
    rows = table.iloc[:args.chunk].reset_index(drop=True)
    images = ParticleImages(rows, args.star).read(np.arange(len(rows)))
    box, px = images.shape[-1], float(table["rlnImagePixelSize"].iloc[0])
    out = {}
    f_c = centred_transforms(images, rows, px, np)
    f_g = gpu.to_numpy(centred_transforms(images, rows, px, gpu.xp))
    out["centred_transforms"] = rel(f_c, f_g)
    out["ctf"] = rel(ctf_from_table(rows, box, px, xp=np), gpu.to_numpy(ctf_from_table(rows, box, px, xp=gpu.xp)))
    bp_c = insert_chunk(images, rows, box, px, backend="numpy")
    bp_g = insert_chunk(images, rows, box, px, backend="cupy")
    out["inserted_data"] = rel(bp_c.data, gpu.to_numpy(bp_g.data))
    out["inserted_weight"] = rel(bp_c.weight, gpu.to_numpy(bp_g.weight))
    out["chunk_map"] = rel(bp_c.reconstruct(), gpu.to_numpy(bp_g.reconstruct()))
    truth, _ = read_mrc(args.truth or Path(args.star).parent / "class001.mrc")
    for backend, chunk in (("numpy", 512), ("cupy", 512), ("cupy", 128)):
        vol, _, n = reconstruct_star(args.star, chunk_size=chunk, backend=backend)
        out[f"fsc05_vs_truth_{backend}_chunk{chunk}_A"] = round(resolution_at(fsc(vol, truth), 0.5, box, px), 2)
    print(json.dumps(out, indent=2), flush=True)


if __name__ == "__main__":
    main()
