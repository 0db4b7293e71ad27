"""Make a solvent mask from a map (like RELION's MaskCreate).

The map is low-passed (--lowpass Å), thresholded (--threshold in the map's
density units; default automatic: mean + 5 σ of the background outside the
box's inscribed sphere, at least 5 % of the map's 99.9th percentile), the
largest connected region kept, grown by --extend Å and given a raised-cosine
edge of --soft-edge Å.  Writes the mask (.mrc, values 0 … 1) and prints the
threshold used and the mask's volume fraction.

Example:  spa mask --map run_class001.mrc --output mask.mrc --lowpass 15 --extend 3 --soft-edge 6
"""

from __future__ import annotations

import json
import sys


def add_args(p):
    p.add_argument("--map", required=True, help="map to make the mask from (.mrc), e.g. refine3d's run_class001.mrc")
    p.add_argument("--output", required=True, help="mask to write (.mrc)")
    p.add_argument("--lowpass", type=float, default=15.0, help="low-pass before thresholding, Å (default 15)")
    p.add_argument("--threshold", type=float, default=None,
                   help="density threshold in the map's units (default: automatic, see above)")
    p.add_argument("--extend", type=float, default=3.0, help="binary extension of the thresholded region, Å (default 3)")
    p.add_argument("--soft-edge", type=float, default=6.0, help="width of the raised-cosine edge, Å (default 6)")


COMMON_ARGS = True


def main(args) -> int:
    from spa.errors import SpaInputError
    from spa.io.mrc import read_mrc, write_mrc
    from spa.postprocess.masks import solvent_mask
    from spa.provenance import make_record

    volume, pixel_size = read_mrc(args.map)
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise SpaInputError(args.map, f"a mask needs a cubic 3D map, not shape {volume.shape}")
    for name in ("lowpass", "extend", "soft_edge"):
        if getattr(args, name) < 0:
            raise SpaInputError(args.map, f"--{name.replace('_', '-')} must be ≥ 0 Å, not {getattr(args, name)}")
    mask, level = solvent_mask(volume, pixel_size, lowpass_resolution=args.lowpass, threshold=args.threshold,
                               extend=args.extend, soft_edge=args.soft_edge)
    fraction = float(mask.mean())
    if fraction == 0.0:
        raise SpaInputError(args.map, f"no voxel of the {args.lowpass:g} Å low-passed map is above the threshold "
                                      f"{level:.4g}: give a lower --threshold")
    record = make_record(args.argv, None, None, threshold=level, volume_fraction=fraction)
    write_mrc(args.output, mask, pixel_size, provenance=record)
    print(json.dumps({"threshold": round(level, 6), "volume_fraction": round(fraction, 4)}))
    print(f"mask: threshold {level:.4g}, {100 * fraction:.1f} % of the box -> {args.output}", file=sys.stderr)
    return 0
