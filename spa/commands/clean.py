"""Clean picks: mask carbon film, ice contamination and aggregates on each micrograph and drop the picks
inside the masks.

  spa clean --micrographs micrographs.star --coordinates pick/autopick.star --diameter 120
            [--margin 0] [--kinds carbon,contaminant,aggregate] --output-dir D

What each detector looks at (local statistics of the low-passed micrograph; see
spa.picking.clean): contaminants are very dark blobs (local mean below
--contaminant-threshold robust σ); aggregates are regions of much more fine
texture than the micrograph's median (--aggregate-threshold ×), larger than a
particle; carbon is the far side of a straight or gently curved hole edge with
more texture and a darker mean (--carbon-threshold, in noise SD), located
along the edge's CTF fringe.  Masks grow by the particle radius (carbon and
aggregates: half of it) + --margin Å.

Writes D/coordinates/<micrograph>_autopick.star (the kept picks, as spa pick
writes them) and D/autopick.star (RELION's coordinate index), the dropped picks
with their reason in D/dropped/<micrograph>_dropped.star, the label masks in
D/masks/<micrograph>.mrc (float16: 0 kept, 1 carbon, 2 contaminant,
3 aggregate), D/clean_summary.star (per micrograph: picks in, kept, dropped per
kind, masked area fraction per kind), D/clean.png (masks over the first
micrographs, kept picks green, dropped red) with figures.json.  The fraction of
picks dropped is printed (JSON on stdout) and recorded.  A micrograph already
cleaned with the same options and the same input picks is not cleaned again.
"""

from __future__ import annotations

import json
import sys

from spa.picking.clean import KINDS


def add_args(p):
    p.add_argument("--micrographs", required=True, help="micrographs STAR (rlnMicrographName)")
    p.add_argument("--coordinates", required=True,
                   help="coordinate index (autopick.star: rlnMicrographName → rlnMicrographCoordinates)")
    p.add_argument("--diameter", type=float, required=True, help="particle diameter, Å")
    p.add_argument("--margin", type=float, default=0.0, help="Å added to the mask growth (default 0)")
    p.add_argument("--kinds", default=",".join(KINDS), help="what to mask, comma-separated (default all: "
                                                            "carbon,contaminant,aggregate)")
    p.add_argument("--contaminant-threshold", type=float, default=5.0,
                   help="contaminants: local mean this many robust σ below the median (default 5)")
    p.add_argument("--aggregate-threshold", type=float, default=1.5,
                   help="aggregates: fine texture energy this many times the median (default 1.5)")
    p.add_argument("--carbon-threshold", type=float, default=6.0,
                   help="carbon: texture+darkness difference across the edge, noise SD (default 6)")
    p.add_argument("--output-dir", required=True, help="job folder")


def _figure(out, shown):
    import numpy as np
    from scipy import ndimage

    from spa.plots import _pyplot, save_figure, write_figures_index

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 4.6), dpi=90, squeeze=False)
    colours = {1: (0.2, 0.4, 1.0), 2: (1.0, 0.8, 0.0), 3: (1.0, 0.2, 1.0)}
    for ax, (name, image, labels, kept, dropped, radius_px) in zip(axes[0], shown):
        ax.imshow(ndimage.gaussian_filter(image, max(1.0, radius_px / 15)), cmap="gray")
        overlay = np.zeros((*labels.shape, 4))
        for lab, rgb in colours.items():
            overlay[labels == lab] = (*rgb, 0.35)
        ax.imshow(overlay)
        for table, colour in ((kept, "lime"), (dropped, "red")):
            for x, y in zip(table.rlnCoordinateX, table.rlnCoordinateY):
                ax.add_patch(plt.Circle((x, y), radius_px, fill=False, color=colour, lw=0.8))
        ax.set_title(f"{name}: {len(kept)} kept, {len(dropped)} dropped", fontsize=9)
        ax.axis("off")
    save_figure(fig, out / "clean.png")
    write_figures_index(out, [{"file": "clean.png", "title": "Micrograph cleaning",
                               "caption": "The first micrographs (low-passed) with the masks (blue carbon, yellow "
                                          "contaminant, magenta aggregate, grown by the particle radius); picks "
                                          "kept (green) and dropped (red)."}])


def _index(path):
    """{micrograph name: coordinate file path} of a coordinate index STAR."""
    from spa.errors import SpaInputError
    from spa.io.images import resolve_image_path
    from spa.io.star import read_star

    for table in read_star(path).values():
        if hasattr(table, "columns") and {"rlnMicrographName", "rlnMicrographCoordinates"} <= set(table.columns):
            out = {}
            for name, coord in zip(table.rlnMicrographName, table.rlnMicrographCoordinates):
                found = resolve_image_path(str(coord), path)
                if found is None:
                    raise SpaInputError(path, f"coordinate file {coord} (of {name}) not found")
                out[str(name)] = found
            return out
    raise SpaInputError(path, "no rlnMicrographName/rlnMicrographCoordinates table (a RELION autopick.star)")


def main(args) -> int:
    import hashlib
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from spa.commands._common import progress_printer
    from spa.em.run import code_digest
    from spa.errors import SpaInputError
    from spa.io.images import resolve_image_path
    from spa.io.mrc import read_micrograph, write_mrc
    from spa.io.star import read_micrographs, read_star, write_star
    from spa.picking.clean import LABELS, CleanOptions, clean_micrograph, drop_masked
    from spa.picking.coordinates import (coordinate_file_name, read_coordinates, write_coordinate_index,
                                         write_coordinates)
    from spa.provenance import make_record, read_record

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    try:
        opts = CleanOptions(args.diameter, margin=args.margin, kinds=kinds,
                            contaminant_threshold=args.contaminant_threshold,
                            aggregate_threshold=args.aggregate_threshold, carbon_threshold=args.carbon_threshold)
    except ValueError as exc:
        raise SpaInputError(args.coordinates, str(exc)) from None
    mics, _ = read_micrographs(args.micrographs)
    if mics.empty:
        raise SpaInputError(args.micrographs, "no micrographs listed")
    coords = _index(args.coordinates)
    names_listed = [str(n) for n in mics.rlnMicrographName]
    unknown = sorted(set(coords) - set(names_listed))
    if unknown:
        raise SpaInputError(args.coordinates, f"coordinates for micrographs not in {args.micrographs}: "
                                              f"{', '.join(unknown[:5])}" + (" …" if len(unknown) > 5 else ""))
    out = Path(args.output_dir)
    options = {"diameter": opts.diameter, "margin": opts.margin, "kinds": list(opts.kinds),
               "contaminant_threshold": opts.contaminant_threshold, "aggregate_threshold": opts.aggregate_threshold,
               "carbon_threshold": opts.carbon_threshold, "code": code_digest()}
    progress = progress_printer("clean: micrographs")
    names, files, rows, shown = [], [], [], []
    for i, row in enumerate(mics.itertuples(index=False)):
        name = str(row.rlnMicrographName)
        if name not in coords:  # no picks on this micrograph: nothing to clean
            continue
        path = resolve_image_path(name, args.micrographs)
        if path is None:
            raise SpaInputError(args.micrographs, f"micrograph {name} not found")
        source = coords[name]
        picks = read_coordinates(source)
        digest = hashlib.sha1(Path(source).read_bytes()).hexdigest()
        coord = out / "coordinates" / coordinate_file_name(name)
        dropped_file = out / "dropped" / coordinate_file_name(name, "dropped")
        mask_file = out / "masks" / f"{Path(name).stem}.mrc"
        previous = read_record(str(coord)) if coord.exists() and dropped_file.exists() else None
        if (isinstance(previous, dict) and previous.get("options") == options
                and previous.get("micrograph") == str(path) and previous.get("picks_sha1") == digest):
            kept, dropped = read_coordinates(coord), read_star(dropped_file)
            dropped = next(iter(dropped.values())) if dropped else pd.DataFrame()
            info = previous.get("clean", {})
        else:
            image, pixel = read_micrograph(path)
            pixel = float(row.rlnMicrographPixelSize) if hasattr(row, "rlnMicrographPixelSize") else float(pixel)
            if len(picks):
                x, y = picks.rlnCoordinateX.to_numpy(float), picks.rlnCoordinateY.to_numpy(float)
                if x.min() < -0.5 or y.min() < -0.5 or x.max() > image.shape[1] - 0.5 or y.max() > image.shape[0] - 0.5:
                    raise SpaInputError(source, f"picks beyond micrograph {path} of {image.shape[1]} × "
                                                f"{image.shape[0]} px (x up to {x.max():.0f}, y up to {y.max():.0f}): "
                                                "coordinates of another micrograph or binning?")
            labels, info = clean_micrograph(image, pixel, opts)
            kept, dropped = drop_masked(picks, labels)
            record = make_record(args.argv, None, None, options=options, micrograph=str(path), picks_sha1=digest,
                                 clean={k: round(float(v), 4) for k, v in info.items()})
            write_mrc(mask_file, labels.astype(np.float16), pixel, record)
            write_star(dropped_file, {"": dropped}, provenance=record)
            write_coordinates(coord, kept, provenance=record)  # last: its record marks the micrograph done
            if len(shown) < 3:
                shown.append((Path(name).stem, image, labels, kept, dropped, 0.5 * opts.diameter / pixel))
        reasons = dropped.spaCleanReason.tolist() if "spaCleanReason" in getattr(dropped, "columns", []) else []
        rows.append({"rlnMicrographName": name, "spaPicksIn": len(picks), "spaPicksKept": len(kept),
                     **{f"spaDropped_{k}": reasons.count(k) for k in LABELS if k != "clean"},
                     **{f"spaArea_{k}": float(info.get(f"area_{k}", 0.0)) for k in LABELS if k != "clean"},
                     "spaAreaMasked": float(info.get("area_masked", 0.0)),
                     "spaCarbonScore": float(info.get("carbon_z", 0.0))})
        names.append(name)
        files.append(str(coord))
        progress(i + 1, len(mics))
    table = pd.DataFrame(rows)
    n_in = int(table.spaPicksIn.sum()) if len(table) else 0
    n_kept = int(table.spaPicksKept.sum()) if len(table) else 0
    summary = {"micrographs": len(names), "picks_in": n_in, "picks_kept": n_kept,
               "fraction_dropped": round((n_in - n_kept) / n_in, 4) if n_in else 0.0,
               **{f"dropped_{k}": int(table[f"spaDropped_{k}"].sum()) if len(table) else 0
                  for k in LABELS if k != "clean"}}
    record = make_record(args.argv, None, None, options=options, **summary)
    write_coordinate_index(out / "autopick.star", names, files, provenance=record)
    write_star(out / "clean_summary.star", {"micrographs": table}, provenance=record)
    if shown:
        _figure(out, shown)
    print(json.dumps(summary))
    print(f"clean: dropped {n_in - n_kept} of {n_in} picks ({100 * summary['fraction_dropped']:.1f} %) on "
          f"{len(names)} micrographs -> {out / 'autopick.star'}", file=sys.stderr)
    return 0
