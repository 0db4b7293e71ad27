"""Extract particles from micrographs at picked coordinates (like RELION's Extract job).

  spa extract --micrographs micrographs_ctf.star --coordinates autopick.star --box 256 [--rescale 128]
              --output-dir D

Each coordinate (rlnCoordinateX = column, rlnCoordinateY = row, 0-based) becomes
the centre pixel B//2 of a --box px image; the contrast is inverted (protein
white; --no-invert keeps it), the image normalised to zero mean and unit σ of
its background outside --bg-radius px (default 75 % of the half box), pixels
beyond ±--dust σ replaced by noise, and, with --rescale, Fourier-binned to
that box. Boxes crossing the micrograph's edge are dropped and counted.

Writes D/particles/<micrograph>.mrcs and .star per micrograph (streamed: one
micrograph in memory at a time; a rerun skips micrographs already extracted
with the same options) and D/particles.star (RELION 3.1: optics group with
rlnImagePixelSize and rlnImageSize; per particle rlnImageName, rlnMicrographName,
rlnCoordinateX/Y and the micrograph's CTF — rlnDefocusU/V/Angle, rlnPhaseShift,
rlnCtfBfactor when its STAR has them). `spa convert` turns the stacks into Zarr.
"""

from __future__ import annotations

import json
import sys

CTF_FROM_MICROGRAPH = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor",
                       "rlnCtfMaxResolution", "rlnCtfFigureOfMerit")


def add_args(p):
    p.add_argument("--micrographs", required=True,
                   help="micrographs STAR, with CTF (micrographs_ctf.star) or without (micrographs.star)")
    p.add_argument("--coordinates", required=True,
                   help="coordinate index (autopick.star: rlnMicrographName → rlnMicrographCoordinates)")
    p.add_argument("--box", type=int, required=True, help="box on the micrograph, px (even)")
    p.add_argument("--rescale", type=int, default=None, help="Fourier-bin each image to this box, px (even)")
    p.add_argument("--no-invert", dest="invert", action="store_false", help="keep the micrograph's contrast")
    p.add_argument("--bg-radius", type=float, default=None, help="background radius, px of the output box")
    p.add_argument("--dust", type=float, default=5.0, help="replace pixels beyond ± this many σ (≤ 0: off)")
    p.add_argument("--output-dir", required=True, help="job folder")


def _coordinate_files(index_path) -> dict:
    from spa.errors import SpaInputError
    from spa.io.images import resolve_image_path
    from spa.io.star import read_star

    blocks = read_star(index_path)
    table = next((t for t in blocks.values() if hasattr(t, "columns") and
                  {"rlnMicrographName", "rlnMicrographCoordinates"} <= set(t.columns)), None)
    if table is None:
        raise SpaInputError(index_path, "no rlnMicrographName/rlnMicrographCoordinates table (RELION autopick.star)")
    out = {}
    for name, coords in zip(table.rlnMicrographName.astype(str), table.rlnMicrographCoordinates.astype(str)):
        path = resolve_image_path(coords, index_path)
        if path is None:
            raise SpaInputError(index_path, f"coordinate file {coords} not found")
        out[name] = path
    return out


def main(args) -> int:
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from spa.errors import SpaInputError
    from spa.extraction.extract import ExtractOptions, extract
    from spa.io.images import resolve_image_path
    from spa.io.mrc import read_mrc, write_mrcs
    from spa.io.star import read_micrographs, read_particles, write_particles
    from spa.picking.coordinates import read_coordinates
    from spa.provenance import make_record, read_record

    from spa.commands._common import progress_printer, seed_of

    try:
        opts = ExtractOptions(args.box, args.rescale, args.invert, args.bg_radius,
                              args.dust if args.dust and args.dust > 0 else None)
    except ValueError as exc:
        raise SpaInputError(args.micrographs, str(exc)) from None
    mics, mic_optics = read_micrographs(args.micrographs)
    coords = _coordinate_files(args.coordinates)
    out = Path(args.output_dir)
    options = {"box": opts.box, "rescaled_box": opts.rescaled_box, "invert": opts.invert,
               "background_radius": opts.background_radius, "dust_sigma": opts.dust_sigma}
    from spa.em.run import code_digest

    options["code"] = code_digest()  # a micrograph done by other code is done again
    rng_seed = seed_of(args, {})
    progress = progress_printer("extract: micrographs")
    tables, dropped = [], 0
    optics_rows = {}
    for i, row in enumerate(mics.reset_index(drop=True).itertuples(index=False)):
        name = str(row.rlnMicrographName)
        pixel = float(row.rlnMicrographPixelSize)
        group = int(row.rlnOpticsGroup) if hasattr(row, "rlnOpticsGroup") else 1
        optics_rows.setdefault(group, pixel)
        if name not in coords:
            continue  # no picks on this micrograph
        stem = Path(name).stem
        stack, part_star = out / "particles" / f"{stem}.mrcs", out / "particles" / f"{stem}.star"
        previous = read_record(str(part_star)) if part_star.exists() else None
        if isinstance(previous, dict) and previous.get("options") == options and stack.exists() \
                and previous.get("coordinates") == str(coords[name]):
            table, _ = read_particles(part_star)
            dropped += int(previous.get("dropped_at_edges", 0))
        else:
            picks = read_coordinates(coords[name])
            path = resolve_image_path(name, args.micrographs)
            if path is None:
                raise SpaInputError(args.micrographs, f"micrograph {name} not found")
            image, _ = read_mrc(path)
            image = image.squeeze()
            if image.ndim != 2 or not np.isfinite(image).all():
                raise SpaInputError(path, "a micrograph must be one finite 2D image")
            rng = np.random.default_rng([rng_seed, i])
            images, keep = extract(image, picks.rlnCoordinateX, picks.rlnCoordinateY, opts, rng)
            table = picks[keep].reset_index(drop=True)
            table.insert(0, "rlnImageName", [f"{k + 1:06d}@{stack.resolve()}" for k in range(len(table))])
            table["rlnMicrographName"] = name
            table["rlnOpticsGroup"] = group
            for col in CTF_FROM_MICROGRAPH:
                if hasattr(row, col):
                    table[col] = getattr(row, col)
            n_dropped = int((~keep).sum())
            dropped += n_dropped
            record = make_record(args.argv, None, rng_seed, options=options, coordinates=str(coords[name]),
                                 dropped_at_edges=n_dropped)
            if len(table):
                write_mrcs(stack, images, pixel * opts.box / opts.output_box, provenance=record)
            write_particles(part_star, table, _optics(mic_optics, {group: pixel}, opts), provenance=record)
        if len(table):
            tables.append(table)
        progress(i + 1, len(mics))
    if not tables:
        raise SpaInputError(args.coordinates, "no particle could be extracted (no picks, or all at the edges)")
    particles = pd.concat(tables, ignore_index=True)
    optics = _optics(mic_optics, optics_rows, opts)
    summary = {"particles": len(particles), "dropped_at_edges": dropped, "micrographs": len(tables),
               "box": opts.output_box, "pixel_size": round(float(optics.rlnImagePixelSize.iloc[0]), 4)}
    write_particles(out / "particles.star", particles, optics,
                    provenance=make_record(args.argv, None, rng_seed, options=options, **summary))
    print(json.dumps(summary))
    print(f"extract: {len(particles)} particles ({dropped} too close to an edge) -> {out / 'particles.star'}",
          file=sys.stderr)
    return 0


def _optics(mic_optics, pixels: dict, opts):
    """Particle optics groups from the micrographs' (pixel size × box / output box; image size)."""
    rows = []
    for group, pixel in sorted(pixels.items()):
        base = mic_optics[mic_optics.rlnOpticsGroup == group]
        base = base.iloc[0].to_dict() if len(base) else {"rlnOpticsGroup": group}
        base.pop("rlnMicrographPixelSize", None)
        base.setdefault("rlnOpticsGroupName", f"opticsGroup{group}")
        base.setdefault("rlnMicrographOriginalPixelSize", pixel)
        base.update({"rlnOpticsGroup": group, "rlnImagePixelSize": pixel * opts.box / opts.output_box,
                     "rlnImageSize": opts.output_box, "rlnImageDimensionality": 2})
        rows.append(base)
    import pandas as pd

    return pd.DataFrame(rows)
