"""Reconstruct a 3D map from particles with known poses (like relion_reconstruct).

Images are centred by their origins (rlnOriginX/YAngst), CTF-weighted (Wiener
on the CTF², unless --no-ctf) and inserted in Fourier space at their Euler
angles; the map is written as MRC with the particles' pixel size.

Example:  spa reconstruct --particles run_data.star --output half1.mrc --subset 1
"""

from __future__ import annotations

import sys

from spa.commands._common import dask_client, load_config, option, progress_printer, seed_of


def add_args(p):
    p.add_argument("--particles", required=True, help="particle STAR file (RELION 3.0/3.1) with poses and CTF")
    p.add_argument("--output", required=True, help="output map (.mrc)")
    p.add_argument("--subset", type=int, choices=[1, 2], default=None, help="only rows with this rlnRandomSubset (half maps)")
    p.add_argument("--sym", default=None, help="point-group symmetry (C1, Cn, Dn, T, O, I1-I4); default C1")
    p.add_argument("--no-ctf", dest="ctf", action="store_false", help="ignore the CTF (images are not CTF-corrected)")
    p.add_argument("--maxres", type=float, default=None, help="highest resolution inserted, Å (default: Nyquist)")
    p.add_argument("--chunk-size", type=int, default=None, help="particles per task (default 512)")


def main(args) -> int:
    from spa.io.mrc import write_mrc
    from spa.provenance import make_record
    from spa.reconstruct import reconstruct_star

    cfg = load_config(args, "reconstruct")
    sym = option(args, "sym", cfg, "C1")
    chunk = int(option(args, "chunk_size", cfg, 512))
    with dask_client(args, cfg) as client:
        volume, pixel_size, n = reconstruct_star(
            args.particles,
            subset=args.subset,
            symmetry=sym,
            use_ctf=args.ctf,
            maxres=args.maxres,
            chunk_size=chunk,
            client=client,
            backend=args.backend,
            progress=progress_printer("reconstruct: chunks"),
        )
    record = make_record(args.argv, cfg, seed_of(args, cfg), particles=n, symmetry=sym)
    write_mrc(args.output, volume, pixel_size, provenance=record)
    print(f"reconstructed {n} particles (sym {sym}) -> {args.output}", file=sys.stderr)
    return 0
