"""Pick particles on micrographs (like RELION's AutoPick): writes RELION's coordinate files.

  spa pick --micrographs micrographs.star --method log --diameter 120 --output-dir D
  spa pick --micrographs micrographs_ctf.star --method template --diameter 120 \
           --templates selected_classes.mrcs [--template-classes 1,3] --output-dir D
  spa pick --micrographs micrographs_ctf.star --method template --diameter 120 \
           --reference map.mrc [--projections 100] --output-dir D

Options every method shares: --diameter D (particle diameter, Å), --threshold
(figure of merit, robust σ; default per method), --min-distance (Å, default
0.8 × the (smallest) diameter).

--method log (Laplacian of Gaussian, needs only the particle size; see
spa.picking.log): blobs of local band-limited power between --diameter-min
and --diameter-max (default 0.75 × and 1.1 × --diameter), a figure of merit in
robust standard deviations of the response (--threshold, default 2), none
closer than half the largest diameter to an edge; each pick moved to the
centroid of the band power around it; picks whose power lies along a line
(carbon edges, contaminant rims: --min-roundness, default 0.35) or is far
stronger than the micrograph's other picks (ice contaminants:
--max-energy-ratio, default 4, like RELION's LoG upper threshold) dropped.

--method template (see spa.picking.template): normalised cross-correlation of
the inverted, whitened, low-passed micrograph (see --lowpass) with
templates multiplied by each micrograph's CTF (the micrographs STAR's
rlnDefocusU/V/Angle and optics; --no-ctf to ignore it), over in-plane
rotations (--angular-step °), low-passed to --lowpass Å (default diameter /
4.5, at most 20: a small particle's templates need finer detail).
Templates: --templates, an MRC stack of 2D class averages (white on black;
--template-classes picks 1-based images; --template-pixel-size overrides the
header) or a class-averages STAR such as spa select's or RELION's Select
class_averages.star (the rows with rlnSelected = 1), or --reference, a 3D map
projected along --projections even directions.  Figure of merit: the best NCC
in robust σ of the score map (--threshold, default 4); the raw NCC is
written as rlnSpaTemplateNCC.

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


METHODS = ("log", "template", "learned")


def add_args(p):
    p.add_argument("--micrographs", required=True, help="micrographs STAR (RELION 3.0/3.1; rlnMicrographName)")
    p.add_argument("--method", choices=METHODS, default="log", help="picker (default log)")
    p.add_argument("--output-dir", required=True, help="job folder for the coordinate files")
    g = p.add_argument_group("every method")
    g.add_argument("--diameter", type=float, default=None, help="particle diameter, Å")
    g.add_argument("--threshold", type=float, default=None,
                   help="figure-of-merit threshold, robust σ (default: log 2, template 4)")
    g.add_argument("--min-distance", type=float, default=None, help="closest two picks, Å (default 0.8 × diameter)")
    g = p.add_argument_group("--method log")
    g.add_argument("--diameter-min", type=float, default=None, help="smallest particle diameter, Å (default 0.75 × --diameter)")
    g.add_argument("--diameter-max", type=float, default=None, help="largest particle diameter, Å (default 1.1 × --diameter)")
    g.add_argument("--min-roundness", type=float, default=0.35,
                   help="smallest ratio of the band power's second moments at a pick (edges → 0; default 0.35, 0: off)")
    g.add_argument("--max-energy-ratio", type=float, default=4.0,
                   help="largest band power at a pick / the micrograph's median pick (default 4, 0: off)")
    g = p.add_argument_group("--method template")
    g.add_argument("--templates", default=None,
                   help="2D class averages (white on black): an MRC stack, or a class-averages STAR "
                        "(rlnReferenceImage; only rows with rlnSelected = 1 where the column is there)")
    g.add_argument("--template-classes", default=None, help="1-based images of --templates to use, e.g. 1,3 (default all)")
    g.add_argument("--template-pixel-size", type=float, default=None, help="templates' pixel size, Å (default: header)")
    g.add_argument("--reference", default=None, help="3D map (MRC) whose projections are the templates")
    g.add_argument("--projections", type=int, default=100, help="projection directions of --reference (default 100)")
    g.add_argument("--lowpass", type=float, default=None,
                   help="finest detail compared, Å (default: diameter / 4.5, at most 20)")
    g.add_argument("--angular-step", type=float, default=None,
                   help="in-plane rotation step, ° (default: lowpass/2 of arc at the particle's radius)")
    g.add_argument("--no-ctf", action="store_true", help="do not multiply the templates by the micrograph's CTF")
    g.add_argument("--no-invert", action="store_true",
                   help="micrographs are white on black already (default: protein dark, as recorded)")
    from spa.commands._pick_learned import add_learned_args

    add_learned_args(p)  # --method learned: --positives, --negatives, --min-score, --rounds


def _figure(out, shown, title: str = "LoG"):
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
    write_figures_index(out, [{"file": "picks.png", "title": f"Picks ({title})",
                               "caption": "The first micrographs (low-passed) with a circle of the particle "
                                          "diameter at every pick."}])


class Picker:
    """One method's picking of one micrograph: ``pick(image, pixel Å, micrograph row) → picks``, the options
    recorded for resumability, the diameter (Å) drawn in the figure and the method's title."""

    def __init__(self, pick, options: dict, diameter: float, title: str):
        self.pick, self.options, self.diameter, self.title = pick, options, diameter, title


def _log_picker(args, mics) -> Picker:
    """--method log: --diameter-min/--diameter-max, or 0.75/1.1 × --diameter."""
    from spa.picking.log import LoGOptions, pick_log

    d_min, d_max = args.diameter_min, args.diameter_max
    if args.diameter is not None:
        d_min = d_min if d_min is not None else 0.75 * args.diameter
        d_max = d_max if d_max is not None else 1.1 * args.diameter
    if d_min is None or d_max is None:
        raise ValueError("--method log needs --diameter, or --diameter-min and --diameter-max (Å)")
    opts = LoGOptions(d_min, d_max, threshold=2.0 if args.threshold is None else args.threshold,
                      min_distance=args.min_distance, min_roundness=args.min_roundness,
                      max_energy_ratio=args.max_energy_ratio or None)
    options = {"method": "log", **{k: getattr(opts, k) for k in ("diameter_min", "diameter_max", "threshold",
                                                                 "min_distance", "radii", "high_resolution",
                                                                 "recentre", "min_roundness", "max_energy_ratio")}}
    return Picker(lambda image, pixel, row: pick_log(image, pixel, opts), options, d_max, "LoG")


def _template_set(args):
    """The templates of --templates (with --template-classes) or --reference (with --projections)."""
    import hashlib

    import numpy as np

    from spa.errors import SpaInputError
    from spa.io.mrc import read_mrc
    from spa.picking.template import TemplateSet, project_map

    if (args.templates is None) == (args.reference is None):
        raise ValueError("--method template needs one of --templates (2D class averages) or --reference (3D map)")
    path = args.templates or args.reference
    star_classes = None
    if args.templates is not None and str(path).endswith(".star"):
        path, star_classes = _selected_classes(path)
    data, pixel = read_mrc(path)
    pixel = args.template_pixel_size or pixel
    digest = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()[:16]
    if args.reference is not None:
        if data.ndim != 3 or len(set(data.shape)) != 1:
            raise SpaInputError(path, f"--reference must be a cubic 3D map, not shape {data.shape}")
        if args.projections < 1:
            raise SpaInputError(path, "--projections must be ≥ 1")
        images = project_map(data, args.projections)
        chosen = None
    else:
        images = data[None] if data.ndim == 2 else data
        chosen = None
        if star_classes is not None and not args.template_classes:
            args.template_classes = ",".join(str(c) for c in star_classes)
        if args.template_classes:
            try:
                chosen = sorted({int(c) for c in str(args.template_classes).split(",") if c.strip()})
            except ValueError:
                raise SpaInputError(path, f"--template-classes must be 1-based numbers like 1,3, "
                                          f"not {args.template_classes!r}") from None
            bad = [c for c in chosen if not 1 <= c <= len(images)]
            if bad or not chosen:
                raise SpaInputError(path, f"--template-classes {bad or chosen}: the stack holds {len(images)} images")
            images = images[np.asarray(chosen) - 1]
    try:
        templates = TemplateSet(images, pixel, source=str(path))
    except ValueError as exc:
        raise SpaInputError(path, str(exc)) from None
    return templates, {"templates_file": str(path), "templates_sha256": digest, "template_pixel_size": pixel,
                       "template_classes": chosen,
                       "projections": args.projections if args.reference is not None else None}


def _selected_classes(star_path) -> tuple[str, list[int]]:
    """(the stack a class-averages STAR's rlnReferenceImage entries name, their 1-based images in it): only the
    rows with rlnSelected = 1 where that column is there (spa select's and RELION's Select class_averages.star)."""
    from pathlib import Path

    from spa.errors import SpaInputError
    from spa.io.star import read_star

    blocks = read_star(star_path)
    table = next((t for t in blocks.values() if hasattr(t, "columns") and "rlnReferenceImage" in t.columns), None)
    if table is None:
        raise SpaInputError(star_path, "no table with rlnReferenceImage (a class-averages STAR) in it")
    if "rlnSelected" in table.columns:
        table = table[table["rlnSelected"].astype(int) == 1]
    if table.empty:
        raise SpaInputError(star_path, "no class is selected (rlnSelected = 1): no templates")
    stacks, numbers = set(), []
    for ref in table["rlnReferenceImage"].astype(str):
        number, at, stack = ref.partition("@")
        if not at or not number.strip().isdigit():
            raise SpaInputError(star_path, f"rlnReferenceImage {ref!r} is not NNNNNN@stack.mrcs")
        stacks.add(stack)
        numbers.append(int(number))
    if len(stacks) != 1:
        raise SpaInputError(star_path, f"the selected classes lie in {len(stacks)} stacks; give one")
    stack = Path(stacks.pop())
    if not stack.is_absolute():
        beside = Path(star_path).parent / stack  # RELION: relative to the project; spa select: beside the STAR
        stack = beside if beside.exists() else stack
    return str(stack), sorted(numbers)


def _template_picker(args, mics) -> Picker:
    """--method template: NCC with CTF-modulated templates (spa.picking.template)."""
    from spa.errors import SpaInputError
    from spa.picking.template import CTF_COLUMNS, CTFParams, TemplateOptions, pick_template

    if args.diameter is None:
        raise ValueError("--method template needs --diameter (Å)")
    # the finest detail compared: a fixed 20 Å left the demo's 70 Å particles unpicked (true-map templates
    # F1 0.23, recall 0.13); diameter / 4.5 gives 15.6 Å there (0.894), 14.2 Å for hb_c2's 64 Å, 20 Å from 90 Å on
    lowpass = args.lowpass if args.lowpass else min(20.0, args.diameter / 4.5)
    opts = TemplateOptions(args.diameter, threshold=4.0 if args.threshold is None else args.threshold,
                           min_distance=args.min_distance, lowpass=lowpass, angular_step=args.angular_step,
                           invert=not args.no_invert)
    missing = [c for c in CTF_COLUMNS if c not in mics.columns]
    if missing and not args.no_ctf:
        raise SpaInputError(args.micrographs, f"--method template multiplies the templates by each micrograph's CTF "
                                              f"but the STAR lacks {', '.join(missing)} (give the CTF stage's "
                                              "micrographs STAR, or --no-ctf)")
    templates, source = _template_set(args)
    options = {"method": "template", "diameter": opts.diameter, "threshold": opts.threshold,
               "min_distance": opts.min_distance, "lowpass": opts.lowpass, "highpass": opts.highpass,
               "angular_step": opts.psi_step(), "invert": opts.invert, "ctf": not args.no_ctf, **source}

    def pick(image, pixel, row):
        ctf = None if args.no_ctf else CTFParams.from_row(row)
        return pick_template(image, pixel, templates, opts, ctf)

    return Picker(pick, options, args.diameter, "template")


PICKERS = {"log": _log_picker, "template": _template_picker}


def main(args) -> int:
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from spa.errors import SpaInputError
    from spa.io.images import resolve_image_path
    from spa.io.mrc import read_micrograph
    from spa.io.star import read_micrographs, write_star
    from spa.picking.coordinates import (coordinate_file_name, read_coordinates, write_coordinate_index,
                                         write_coordinates)
    from spa.provenance import make_record, read_record

    from spa.commands._common import progress_printer

    if args.method == "learned":
        from spa.commands._pick_learned import main_learned

        if args.diameter_max is None:
            args.diameter_max = args.diameter
        if args.diameter_max is None:
            raise SpaInputError(args.micrographs, "--method learned needs --diameter (or --diameter-max), Å")
        return main_learned(args)
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
    try:
        picker = PICKERS[args.method](args, mics)
    except ValueError as exc:
        raise SpaInputError(args.micrographs, str(exc)) from None
    out = Path(args.output_dir)
    options = dict(picker.options)
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
            image, pixel = read_micrograph(path)
            pixel = float(row.rlnMicrographPixelSize) if hasattr(row, "rlnMicrographPixelSize") else pixel
            picks = picker.pick(image, pixel, row)
            write_coordinates(coord, picks, provenance=make_record(args.argv, None, None, options=options,
                                                                   micrograph=str(path)))
            if len(shown) < 3:
                shown.append((Path(name).stem, image, picks, picker.diameter / pixel))
        names.append(name)
        files.append(str(coord))
        counts.append(len(picks))
        progress(i + 1, len(mics))
    record = make_record(args.argv, None, None, options=options, micrographs=len(names), picks=int(sum(counts)))
    write_coordinate_index(out / "autopick.star", names, files, provenance=record)
    write_star(out / "pick_summary.star", {"picks": pd.DataFrame({"rlnMicrographName": names,
                                                                   "spaNumberOfPicks": counts})}, provenance=record)
    if shown:
        _figure(out, shown, picker.title)
    summary = {"micrographs": len(names), "picks": int(sum(counts)), "median_per_micrograph": float(np.median(counts))}
    print(json.dumps(summary))
    print(f"pick: {summary['picks']} picks on {len(names)} micrographs -> {out / 'autopick.star'}", file=sys.stderr)
    return 0
