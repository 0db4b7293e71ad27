"""Import movies (or motion-corrected micrographs) into RELION STAR files (like RELION's Import job).

  spa import --movies 'Movies/*.tif' --pixel-size 0.83 --dose-per-frame 1.1 --gain gain.mrc --output-dir Import
      -> DIR/movies.star (data_optics + data_movies), DIR/gain/opticsGroup1.mrc, DIR/movies_rejected.star
  spa import --micrographs 'Micrographs/*.mrc' --output-dir Import      (or --micrographs some.star)
      -> DIR/micrographs.star

Each --movies glob is one optics group (repeat --movies for several groups;
with --config, `input.movies` may be a glob, a list of globs, or a list of
mappings {glob: ..., pixel_size: ..., gain: ...} that override the `import`
section per group).  Movies: MRC stacks (.mrc, .mrcs) and TIFF (.tif, .tiff;
LZW / deflate compressed too; frames flipped along y on reading, as RELION
does); EER is refused with a message.  The gain reference (MRC or TIFF) is
turned by --gain-rotation (0-3 × 90° counter-clockwise) then flipped by
--gain-flip (1 upside down, 2 left-right), as RELION's options, and must then
have the movies' frame shape.  A movie that cannot be read, or whose frame
count or size differs from most of its group, is listed with the reason in
movies_rejected.star; the others are imported.
"""

from __future__ import annotations

import sys

from spa.commands._common import load_config


def add_args(p):
    g = p.add_mutually_exclusive_group()
    g.add_argument("--movies", action="append", default=None, metavar="GLOB",
                   help="movie files (a glob, quoted); repeat for several optics groups")
    g.add_argument("--movie-groups", default=None, metavar="JSON",
                   help="optics groups as JSON: a list of globs or of {\"glob\": ..., \"pixel_size\": ..., \"gain\": ...} "
                        "(what the workflow passes; keys override the options below)")
    g.add_argument("--micrographs", default=None, metavar="GLOB|STAR",
                   help="motion-corrected micrographs: a glob of MRC files or a micrographs STAR")
    p.add_argument("--output-dir", required=True, help="output folder")
    g = p.add_argument_group("acquisition (every group; --config import section otherwise)")
    g.add_argument("--pixel-size", type=float, default=None, help="pixel size of the movies as recorded, Å")
    g.add_argument("--voltage", type=float, default=None, help="acceleration voltage, kV (default 300)")
    g.add_argument("--cs", type=float, default=None, help="spherical aberration, mm (default 2.7)")
    g.add_argument("--amplitude-contrast", type=float, default=None, help="amplitude contrast fraction (default 0.1)")
    g.add_argument("--dose-per-frame", type=float, default=None, help="exposure per movie frame, e⁻/Å²")
    g.add_argument("--pre-exposure", type=float, default=None, help="exposure before the first frame, e⁻/Å² (default 0)")
    g.add_argument("--gain", default=None, help="gain reference (MRC or TIFF): multiplies the raw frames")
    g.add_argument("--gain-rotation", type=int, choices=(0, 1, 2, 3), default=None,
                   help="turn the gain by this × 90° counter-clockwise (RELION's gain_rot; default 0)")
    g.add_argument("--gain-flip", type=int, choices=(0, 1, 2), default=None,
                   help="then flip the gain: 1 upside down, 2 left-right (RELION's gain_flip; default 0)")


_OPTIONS = ("pixel_size", "voltage", "cs", "amplitude_contrast", "dose_per_frame", "pre_exposure", "gain",
            "gain_rotation", "gain_flip")


def main(args) -> int:
    from spa.errors import SpaInputError
    from spa.motion.importing import Group, import_micrographs, import_movies, make_groups
    from spa.provenance import make_record

    cfg = load_config(args)
    section = dict(cfg.get("import") or {})
    for name in _OPTIONS:
        if getattr(args, name) is not None:
            section[name] = getattr(args, name)
    inputs = cfg.get("input") or {}
    record = make_record(args.argv, {"import": section, "input": inputs}, None)
    if args.movie_groups:
        import json

        try:
            args.movies = json.loads(args.movie_groups)
        except json.JSONDecodeError as exc:
            raise SpaInputError(None, f"--movie-groups is not valid JSON ({exc})") from None
    micrographs = args.micrographs or (None if args.movies else inputs.get("micrographs"))
    if micrographs:
        group = Group(micrographs, "opticsGroup1", section.get("pixel_size"), float(section.get("voltage") or 300.0),
                      float(section.get("cs") or 2.7), float(section.get("amplitude_contrast") or 0.1), None)
        star, n = import_micrographs(str(micrographs), group, args.output_dir, record)
        print(f"import: {n} micrographs -> {star}", file=sys.stderr)
        return 0
    entries = args.movies or inputs.get("movies")
    if not entries:
        raise SpaInputError(args.config, "nothing to import: give --movies GLOB or --micrographs GLOB|STAR "
                                         "(or input.movies / input.micrographs in the config)")
    groups = make_groups(entries, section, args.config)
    star, n, rejected = import_movies(groups, args.output_dir, record)
    print(f"import: {n} movies in {len(groups)} optics group(s) -> {star}"
          + (f"; {rejected} rejected (see movies_rejected.star)" if rejected else ""), file=sys.stderr)
    return 0
