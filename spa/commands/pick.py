"""Pick particles on micrographs (like RELION's AutoPick): writes RELION's coordinate files.

  spa pick --micrographs micrographs.star --method log --diameter-min 90 --diameter-max 130 --output-dir D

--method log (Laplacian of Gaussian, needs only the particle size in Å; see
spa.picking.log): blobs of local band-limited power between the two diameters,
a figure of merit in robust standard deviations of the response
(--threshold, default 2), picks at least --min-distance Å apart (default 0.8 ×
the smallest diameter), none closer than half the largest diameter to an edge.

--method learned --positives agreed/autopick.star [--negatives a/autopick.star ...]
(spa.picking.learned): a scorer trained on these micrographs, positives = picks
several pickers agree on, negatives = random background and single-picker picks;
picks where its probability ≥ --min-score (default 0.5), --diameter-max is the diameter.

Writes D/coordinates/<micrograph>_autopick.star per micrograph
(rlnCoordinateX = column, rlnCoordinateY = row, 0-based pixel of the centre;
rlnAutopickFigureOfMerit), D/autopick.star (data_coordinate_files:
rlnMicrographName → rlnMicrographCoordinates), D/pick_summary.star (picks per
micrograph), D/picks.png (picks over the first micrographs) and figures.json.
A micrograph already picked with the same options is not picked again (a rerun
after new micrographs arrived picks only those).
"""

from __future__ import annotations

import json
import sys


def add_args(p):
    p.add_argument("--micrographs", required=True, help="micrographs STAR (RELION 3.0/3.1; rlnMicrographName)")
    p.add_argument("--method", choices=["log", "learned"], default="log", help="picker (default log)")
    p.add_argument("--diameter-min", type=float, required=True, help="smallest particle diameter, Å")
    p.add_argument("--diameter-max", type=float, required=True, help="largest particle diameter, Å")
    p.add_argument("--threshold", type=float, default=2.0, help="figure-of-merit threshold, robust σ (default 2)")
    p.add_argument("--min-distance", type=float, default=None, help="closest two picks, Å (default 0.8 × diameter-min)")
    p.add_argument("--output-dir", required=True, help="job folder for the coordinate files")
    from spa.commands._pick_learned import add_learned_args

    add_learned_args(p)  # --method learned: --positives, --negatives, --min-score, --rounds


def _figure(out, shown):
    from scipy import ndimage

    from spa.plots import _pyplot, save_figure, write_figures_index

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 4.4), dpi=90, squeeze=False)
    for ax, (name, image, picks, diameter_px) in zip(axes[0], shown):
        ax.imshow(ndimage.gaussian_filter(image, max(1.0, diameter_px / 30)), cmap="gray")
        for x, y in zip(picks.rlnCoordinateX, picks.rlnCoordinateY):
            ax.add_patch(plt.Circle((x, y), diameter_px / 2, fill=False, color="lime", lw=0.8))
        ax.set_title(f"{name}: {len(picks)} picks", fontsize=9)
        ax.axis("off")
    save_figure(fig, out / "picks.png")
    write_figures_index(out, [{"file": "picks.png", "title": "Picks (LoG)",
                               "caption": "The first micrographs (low-passed) with a circle of the particle "
                                          "diameter at every pick."}])


def main(args) -> int:
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from spa.errors import SpaInputError
    from spa.io.images import resolve_image_path
    from spa.io.mrc import read_mrc
    from spa.io.star import read_micrographs, write_star
    from spa.picking.coordinates import (coordinate_file_name, read_coordinates, write_coordinate_index,
                                         write_coordinates)
    from spa.picking.log import LoGOptions, pick_log
    from spa.provenance import make_record, read_record

    from spa.commands._common import progress_printer

    if args.method == "learned":
        from spa.commands._pick_learned import main_learned

        return main_learned(args)

    try:
        opts = LoGOptions(args.diameter_min, args.diameter_max, threshold=args.threshold,
                          min_distance=args.min_distance)
    except ValueError as exc:
        raise SpaInputError(args.micrographs, str(exc)) from None
    from spa.io.star import read_star

    listed = read_star(args.micrographs).get("micrographs")
    if listed is not None and hasattr(listed, "empty") and listed.empty:
        mics = listed
    else:
        mics, optics = read_micrographs(args.micrographs)
    if mics.empty:
        raise SpaInputError(args.micrographs, "no micrographs listed (for a CTF consensus's micrographs_selected.star: "
                                              "every micrograph was rejected, the reasons are in "
                                              "micrographs_rejected.star beside it)")
    out = Path(args.output_dir)
    options = {"method": args.method, **{k: getattr(opts, k) for k in ("diameter_min", "diameter_max", "threshold",
                                                                          "min_distance", "radii", "high_resolution")}}
    from spa.em.run import code_digest

    options["code"] = code_digest()  # a micrograph done by other code is done again
    progress = progress_printer("pick: micrographs")
    names, files, counts, shown = [], [], [], []
    for i, row in enumerate(mics.itertuples(index=False)):
        name = str(row.rlnMicrographName)
        path = resolve_image_path(name, args.micrographs)
        if path is None:
            raise SpaInputError(args.micrographs, f"micrograph {name} not found")
        coord = out / "coordinates" / coordinate_file_name(name)
        previous = read_record(str(coord)) if coord.exists() else None
        if isinstance(previous, dict) and previous.get("options") == options and previous.get("micrograph") == str(path):
            picks = read_coordinates(coord)  # done by an earlier run with the same options
        else:
            image, pixel = read_mrc(path)
            image = image.squeeze()
            if image.ndim != 2:
                raise SpaInputError(path, f"a micrograph must be one 2D image, not shape {image.shape}")
            if not np.isfinite(image).all() or float(image.std()) == 0.0:
                raise SpaInputError(path, "micrograph is empty or holds NaN/inf values")
            pixel = float(row.rlnMicrographPixelSize) if hasattr(row, "rlnMicrographPixelSize") else pixel
            picks = pick_log(image, pixel, opts)
            write_coordinates(coord, picks, provenance=make_record(args.argv, None, None, options=options,
                                                                   micrograph=str(path)))
            if len(shown) < 3:
                shown.append((Path(name).stem, image, picks, args.diameter_max / pixel))
        names.append(name)
        files.append(str(coord))
        counts.append(len(picks))
        progress(i + 1, len(mics))
    record = make_record(args.argv, None, None, options=options, micrographs=len(names), picks=int(sum(counts)))
    write_coordinate_index(out / "autopick.star", names, files, provenance=record)
    write_star(out / "pick_summary.star", {"picks": pd.DataFrame({"rlnMicrographName": names,
                                                                   "spaNumberOfPicks": counts})}, provenance=record)
    if shown:
        _figure(out, shown)
    summary = {"micrographs": len(names), "picks": int(sum(counts)), "median_per_micrograph": float(np.median(counts))}
    print(json.dumps(summary))
    print(f"pick: {summary['picks']} picks on {len(names)} micrographs -> {out / 'autopick.star'}", file=sys.stderr)
    return 0
