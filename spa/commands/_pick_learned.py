"""``spa pick --method learned``: train a scorer on agreed picks of these micrographs and pick with it
(spa.picking.learned); kept apart from spa/commands/pick.py so that each picker's block stays small."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_learned_args(p) -> None:
    g = p.add_argument_group("--method learned")
    g.add_argument("--positives", default=None, metavar="STAR",
                   help="autopick.star of picks several pickers agree on (spa consensus pick --mode and): "
                        "the particles to learn from")
    g.add_argument("--negatives", nargs="*", default=None, metavar="STAR",
                   help="autopick.star of single pickers: their picks away from every positive are taught "
                        "as non-particles (optional; random background locations always are)")
    g.add_argument("--min-score", type=float, default=None,
                   help="learned picker: lowest probability picked (default 0.5)")
    g.add_argument("--rounds", type=int, default=None,
                   help="learned picker: self-training rounds on its own picks (default 2)")


def main_learned(args) -> int:
    import numpy as np
    import pandas as pd

    from spa.errors import SpaInputError
    from spa.io.images import resolve_image_path
    from spa.io.mrc import read_mrc
    from spa.io.star import read_micrographs, write_star
    from spa.picking.coordinates import coordinate_file_name, read_pick_sets, write_coordinate_index, write_coordinates
    from spa.picking.learned import LearnedOptions, feature_maps, pick_learned, train_scorer
    from spa.progress import progress_printer
    from spa.provenance import make_record

    if not args.positives:
        raise SpaInputError(args.micrographs, "--method learned needs --positives (autopick.star of agreed picks)")
    diameter = float(args.diameter_max)
    min_score = 0.5 if args.min_score is None else float(args.min_score)
    rounds = 2 if args.rounds is None else int(args.rounds)
    seed = int(getattr(args, "seed", None) or 0)
    try:
        opts = LearnedOptions(diameter, threshold=min_score, min_distance=args.min_distance, seed=seed)
    except ValueError as exc:
        raise SpaInputError(args.micrographs, str(exc)) from None
    if rounds < 0:
        raise SpaInputError(None, f"--rounds must be ≥ 0, got {rounds}")
    mics, _ = read_micrographs(args.micrographs)
    if mics.empty:
        raise SpaInputError(args.micrographs, "no micrographs listed")
    names = mics.rlnMicrographName.astype(str).tolist()
    pixel = dict(zip(names, mics.rlnMicrographPixelSize.astype(float)))
    positives = read_pick_sets(args.positives, names)
    negatives: dict = {}
    for path in args.negatives or []:
        for name, table in read_pick_sets(path, names).items():
            negatives[name] = pd.concat([negatives.get(name), table], ignore_index=True)

    def load(name):
        path = resolve_image_path(name, args.micrographs)
        if path is None:
            raise SpaInputError(args.micrographs, f"micrograph {name} not found")
        image, _ = read_mrc(path)
        image = np.asarray(image, np.float32).squeeze()
        if image.ndim != 2 or not np.isfinite(image).all() or float(image.std()) == 0.0:
            raise SpaInputError(path, "a micrograph must be one finite, non-constant 2D image")
        return image, pixel[name]

    try:
        scorer, info = train_scorer(load, positives, negatives, opts, rounds=rounds,
                                    progress=progress_printer("pick: training"))
    except ValueError as exc:
        raise SpaInputError(args.positives, str(exc)) from None
    out = Path(args.output_dir)
    options = {"method": "learned", "diameter": diameter, "min_score": min_score, "rounds": rounds,
               "positives": str(args.positives), "negatives": list(args.negatives or []), "seed": seed}
    progress = progress_printer("pick: micrographs")
    files, counts, shown = [], [], []
    for i, name in enumerate(names):
        image, px = load(name)
        features, factor = feature_maps(image, px, opts)
        picks = pick_learned(scorer, features, factor, px)
        coord = out / "coordinates" / coordinate_file_name(name)
        write_coordinates(coord, picks, provenance=make_record(args.argv, None, seed, options=options,
                                                               micrograph=name))
        files.append(str(coord))
        counts.append(len(picks))
        if len(shown) < 3:
            shown.append((Path(name).stem, image, picks, diameter / px))
        progress(i + 1, len(names))
    record = make_record(args.argv, None, seed, options=options, training=info, micrographs=len(names),
                         picks=int(sum(counts)))
    write_coordinate_index(out / "autopick.star", names, files, provenance=record)
    write_star(out / "pick_summary.star", {"picks": pd.DataFrame({"rlnMicrographName": names,
                                                                   "spaNumberOfPicks": counts})}, provenance=record)
    from spa.commands.pick import _figure

    _figure(out, shown)
    summary = {"micrographs": len(names), "picks": int(sum(counts)), "training": info}
    print(json.dumps(summary))
    print(f"pick (learned): {summary['picks']} picks on {len(names)} micrographs -> {out / 'autopick.star'}",
          file=sys.stderr)
    return 0
