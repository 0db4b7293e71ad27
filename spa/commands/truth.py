"""Ground truth for particles picked from simulated micrographs or movies.

  spa truth --particles Extract/particles.star --truth-dir Simulate/truth --output-dir Truth [--max-distance 20]

Matches each extracted particle to the true particle it was picked from (one to
one, within --max-distance Å of the true centre; default 0.2 × the particle
diameter given by --diameter, else 20 Å) in the simulation's truth
(truth/coordinates.star: per micrograph the true centres, poses and classes;
micrographs matched by file stem).  Writes

* Truth/particles.star — the matched particles with their true poses and the
  origin of the picking offset (spa.simulate.picked_truth), image names as
  extracted: what `spa reconstruct` / the workflow's true_poses job read;
* Truth/class001.mrc … — the true map(s) resampled to the particles' pixel
  size and box, to compare the maps made from the picked particles with;
* Truth/picking_truth.json — picked, true, matched, precision and recall, per
  micrograph and in total.
"""

from __future__ import annotations

import json
import sys

COMMON_ARGS = True


def add_args(p):
    p.add_argument("--particles", required=True, help="extracted particles (spa extract's particles.star)")
    p.add_argument("--truth-dir", required=True,
                   help="the simulation's truth folder (coordinates.star, coordinates/, class00k.mrc)")
    p.add_argument("--output-dir", required=True, help="folder for particles.star, class00k.mrc, picking_truth.json")
    p.add_argument("--diameter", type=float, default=None, help="particle diameter, Å (sets the match distance)")
    p.add_argument("--max-distance", type=float, default=None,
                   help="largest distance between a pick and its true centre, Å (default 0.2 × diameter, else 20)")


def main(args) -> int:
    from pathlib import Path

    import numpy as np

    from spa.errors import SpaInputError
    from spa.io.images import resolve_image_path
    from spa.io.mrc import read_mrc, write_mrc
    from spa.io.star import read_particles, read_star, write_particles
    from spa.picking.coordinates import read_coordinates
    from spa.provenance import make_record
    from spa.simulate.picked_truth import resample_map, true_poses_of_picks

    truth_dir = Path(args.truth_dir)
    index_path = truth_dir / "coordinates.star"
    if not index_path.exists():
        raise SpaInputError(index_path, "missing: not a truth folder of spa simulate --kind micrographs|movies")
    particles, optics = read_particles(args.particles, require=("rlnImageName", "rlnMicrographName",
                                                                "rlnCoordinateX", "rlnCoordinateY"))
    index = next((t for t in read_star(index_path).values()
                  if hasattr(t, "columns") and "rlnMicrographCoordinates" in t.columns), None)
    if index is None:
        raise SpaInputError(index_path, "no rlnMicrographName/rlnMicrographCoordinates table")
    truth = {}
    for name, coords in zip(index.rlnMicrographName.astype(str), index.rlnMicrographCoordinates.astype(str)):
        # the simulator writes these paths from its output folder, the truth folder's parent
        path = resolve_image_path(coords, index_path) or resolve_image_path(coords, truth_dir)
        if path is None:
            raise SpaInputError(index_path, f"true coordinates {coords} not found")
        truth[Path(name).stem] = read_coordinates(path)

    maps = sorted(truth_dir.glob("class0*.mrc"))
    if not maps:
        raise SpaInputError(truth_dir, "no true map (class001.mrc)")
    _, micrograph_pixel = read_mrc(maps[0])  # the simulation writes its maps at the micrograph pixel size
    if args.max_distance is not None:
        max_distance = args.max_distance
    else:
        max_distance = 0.2 * args.diameter if args.diameter else 20.0
    try:
        matched, summary = true_poses_of_picks(particles, truth, micrograph_pixel, max_distance / micrograph_pixel)
    except KeyError as exc:
        raise SpaInputError(args.particles, f"micrograph {exc.args[0]} has no true coordinates in {index_path}") \
            from None
    if not len(matched):
        raise SpaInputError(args.particles, f"no picked particle lies within {max_distance:g} Å of a true centre")

    out = Path(args.output_dir)
    record = make_record(args.argv, None, None, **{k: v for k, v in summary.items() if k != "micrographs"})
    pixel = float(optics.rlnImagePixelSize.iloc[0])
    box = int(optics.rlnImageSize.iloc[0])
    for path in maps:
        volume, _ = read_mrc(path)
        write_mrc(out / path.name, resample_map(volume, micrograph_pixel, pixel, box), pixel, provenance=record)
    write_particles(out / "particles.star", matched, optics, provenance=record)
    tmp = out / "picking_truth.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(out / "picking_truth.json")
    offsets = np.hypot(matched.rlnOriginXAngst, matched.rlnOriginYAngst)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()
                      if k != "micrographs"}))
    print(f"truth: {summary['matched']} of {summary['picked']} picked particles match one of "
          f"{summary['true_on_these_micrographs']} true ones (precision {summary['precision']:.3f}, recall "
          f"{summary['recall']:.3f}; median picking offset {np.median(offsets):.1f} Å) -> {out}", file=sys.stderr)
    return 0
