"""Convert a particle set between RELION .mrcs stacks and one spa .zarr stack.

  spa convert --particles P.star --to zarr --output-dir D [--chunk N] [--float16]
  spa convert --particles P.star --to mrcs --output-dir D

Reads a RELION 3.1 or 3.0 particle STAR file (images in .mrcs or .zarr stacks)
and writes D/particles.star (RELION 3.1 layout, every input column kept, rows in
input order) plus one stack D/particles.zarr or D/particles.mrcs with the images
in row order.  Image paths in the output STAR are relative to D (the STAR's own
folder); spa reads them from any directory, RELION when run from D.
float32 images are copied bit for bit; --float16 halves the size (Zarr float16,
MRC mode 12).
"""

from __future__ import annotations

from spa.commands._common import progress_printer
from spa.errors import SpaInputError
from spa.io.convert import FORMATS, convert_particles
from spa.io.zarrstack import DEFAULT_CHUNK
from spa.provenance import make_record


def add_args(p):
    p.add_argument("--particles", required=True, help="input particle STAR file (RELION 3.1 or 3.0)")
    p.add_argument("--to", required=True, choices=FORMATS, help="output stack format")
    p.add_argument("--output-dir", required=True, help="folder for particles.star and the stack (created if needed)")
    p.add_argument(
        "--chunk",
        type=int,
        default=DEFAULT_CHUNK,
        help=f"images per Zarr chunk along N, also the copy batch (default {DEFAULT_CHUNK})",
    )
    p.add_argument("--float16", action="store_true", help="store images as float16 (default float32)")


def main(args) -> int:
    if args.chunk < 1:
        raise SpaInputError(None, f"--chunk must be >= 1, got {args.chunk}")
    options = {"to": args.to, "chunk": args.chunk, "float16": bool(args.float16)}
    record = make_record(command=args.argv, config=options, seed=args.seed)
    out = convert_particles(
        args.particles, args.output_dir, args.to, chunk=args.chunk, float16=args.float16, provenance=record,
        progress=progress_printer("convert: images"),
    )
    print(f"spa convert: wrote {out}")
    return 0
