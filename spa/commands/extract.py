"""Extract particles from micrographs at picked coordinates (like RELION's Extract job).

  spa extract --micrographs micrographs_ctf.star --coordinates autopick.star --box 256 [--rescale 128]
              [--format zarr|mrcs] [--phase-flip] --output-dir D
  spa extract --micrographs micrographs_ctf.star --reextract refined_particles.star --box 256 --output-dir D

Each coordinate (rlnCoordinateX = column, rlnCoordinateY = row, 0-based) becomes
the centre pixel B//2 of a --box px image; the contrast is inverted (protein
white; --no-invert keeps it), optionally phase-flipped with the micrograph's
CTF (--phase-flip: the optics group then says rlnCtfDataArePhaseFlipped 1 and
later stages model |CTF|), Fourier-binned to --rescale px, normalised to zero
mean and unit σ of its background outside --bg-radius px (default 75 % of the
half box), and pixels beyond ±--dust σ are replaced by noise.  Boxes crossing
the micrograph's edge are dropped and counted.

--reextract P.star re-extracts the particles of a particles STAR, recentred:
each box is centred on rlnCoordinate − rlnOrigin/pixel size (the refined
centre), the origins reset (to the sub-pixel remainder of the rounding); the
particles keep their other columns.

Writes D/particles.star (RELION 3.1: optics group with rlnImagePixelSize,
rlnImageSize, rlnCtfDataArePhaseFlipped; per particle rlnImageName,
rlnMicrographName, rlnCoordinateX/Y and the micrograph's CTF) and the images:
--format zarr (default) one chunked stack D/particles.zarr, filled chunk by
chunk (--chunk images each) without holding the particles in memory; --format
mrcs one D/particles/<micrograph>.mrcs (+ .star) per micrograph.  Resumable: a
rerun skips what was extracted with the same inputs and options (--restart
redoes everything); outputs appear only when complete.  --workers N extracts
on N Dask workers.
"""

from __future__ import annotations

import json
import sys

from spa.commands._common import dask_client, load_config, option, progress_printer, seed_of


def add_args(p):
    p.add_argument("--micrographs", required=True,
                   help="micrographs STAR, with CTF (micrographs_ctf.star) or without (micrographs.star)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--coordinates",
                     help="coordinate index (autopick.star: rlnMicrographName → rlnMicrographCoordinates)")
    src.add_argument("--reextract", metavar="PARTICLES_STAR",
                     help="re-extract these particles, recentred on their origins (rlnOriginX/YAngst)")
    p.add_argument("--box", type=int, required=True, help="box on the micrograph, px (even)")
    p.add_argument("--rescale", type=int, default=None, help="Fourier-bin each image to this box, px (even)")
    p.add_argument("--no-invert", dest="invert", action="store_false", help="keep the micrograph's contrast")
    p.add_argument("--phase-flip", action="store_true", help="multiply by the sign of the micrograph's CTF")
    p.add_argument("--bg-radius", type=float, default=None, help="background radius, px of the output box")
    p.add_argument("--dust", type=float, default=5.0, help="replace pixels beyond ± this many σ (≤ 0: off)")
    p.add_argument("--format", choices=("zarr", "mrcs"), default=None, help="particle stack format (default zarr)")
    p.add_argument("--chunk", type=int, default=None, help="images per Zarr chunk (default 256)")
    p.add_argument("--float16", action="store_true", default=None, help="store images as float16")
    p.add_argument("--output-dir", required=True, help="job folder")


def main(args) -> int:
    from spa.errors import SpaInputError
    from spa.extraction.extract import ExtractOptions
    from spa.extraction.plan import plan_extraction
    from spa.extraction.run import run_extraction
    from spa.provenance import make_record

    cfg = load_config(args, "extract")
    try:
        opts = ExtractOptions(args.box, args.rescale, args.invert, args.bg_radius,
                              args.dust if args.dust and args.dust > 0 else None, bool(args.phase_flip))
    except ValueError as exc:
        raise SpaInputError(args.micrographs, str(exc)) from None
    fmt = option(args, "format", cfg, "zarr")
    chunk = int(option(args, "chunk", cfg, 256) or 256)
    if chunk < 1:
        raise SpaInputError(None, f"--chunk must be ≥ 1, not {chunk}")
    seed = seed_of(args, cfg)
    jobs, mic_optics = plan_extraction(args.micrographs, opts, coordinates=args.coordinates, reextract=args.reextract)
    if not any(j.n for j in jobs):
        raise SpaInputError(args.reextract or args.coordinates,
                            "no particle could be extracted (no picks, or all at the edges)")
    record = make_record(args.argv, {**opts.as_dict(), "format": fmt, "chunk": chunk}, seed)
    with dask_client(args, cfg) as client:
        summary = run_extraction(jobs, mic_optics, args.output_dir, opts, fmt=fmt, seed=seed, chunk=chunk,
                                 float16=bool(option(args, "float16", cfg, False)), client=client,
                                 backend_name=option(args, "backend", cfg, None), provenance=record,
                                 progress=progress_printer("extract: batches"), restart=bool(args.restart))
    print(json.dumps(summary))
    print(f"extract: {summary['particles']} particles from {summary['micrographs']} micrographs "
          f"({summary['dropped_at_edges']} too close to an edge; {summary['written']} extracted now) -> "
          f"{args.output_dir}/particles.star", file=sys.stderr)
    return 0
