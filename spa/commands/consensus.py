"""Keep what repeated runs agree on, and report how much they disagree.

  spa consensus classes --runs R1/run_data.star R2/run_data.star [R3 ...] --output-dir D
      Particles (matched by rlnImageName) whose class is the same in every run
      (or in --min-agreement of them), after matching each run's class numbers
      to run 1's (Hungarian assignment on the shared particle counts); with
      --min-class-posterior P a run counts only where its class posterior
      (rlnSpaClassPosterior, from spa class3d) is at least P.
      Writes D/particles.star (stable set, rlnClassNumber in run 1's numbering),
      D/consensus_classes.star, .json and .png (stability per class against
      chance, adjusted Rand index between runs).

  spa consensus poses --runs A/run_data.star B/run_data.star --output-dir D
      Particles whose poses in two refinements agree within --max-angle
      (degrees, modulo --sym) and --max-shift (px), after aligning the two
      runs' frames by a global rotation.  Writes D/particles.star (kept
      particles with run A's poses), D/consensus_poses.star (per particle),
      .json and .png (histograms of the differences).

  spa consensus ctf --a A/micrographs_ctf.star --b B/micrographs_ctf.star --output-dir D
      Micrographs whose two CTF estimates (e.g. spa ctf --method ctffind and
      --method zeros) agree in phase to at least --max-consensus-resolution Å
      (Marabini et al. 2015) and pass the thresholds (fit resolution,
      astigmatism, defocus range, drift where the STAR has motion columns).
      Writes D/micrographs_selected.star (A's estimates), D/micrographs_rejected.star
      (with rlnSpaRejectReason; also micrographs B could not estimate),
      D/ctf_consensus.json, ctf_consensus.png and ctf_selection_table.png.

  spa consensus pick --micrographs M.star --picks A/autopick.star B/autopick.star [C ...] --diameter Å
                     --mode and|or|at-least [--min-pickers K] [--distance 0.3] [--rescue] --output-dir D
      Picks of several pickers (RELION coordinate files as spa pick writes them) merged within
      --distance × --diameter (default 0.3 ×): the merged coordinate is the mean of the agreeing picks;
      AND keeps what every picker found, OR everything, at-least K what K pickers found.  --rescue also
      keeps positions fewer pickers found where a scorer trained on the kept picks (spa.picking.learned)
      gives at least --rescue-threshold.  Writes D/autopick.star + D/coordinates/*_autopick.star
      (rlnAutopickFigureOfMerit = fraction of pickers, rlnSpaPickerVotes, rlnSpaPickers), D/consensus_pick.star
      and .json (picks per picker, found by exactly / at least k, all, rescued), consensus_table.png,
      consensus_picks.png and figures.json.

Runs are RELION particle STAR files (3.0 or 3.1) of the same particles.
"""

from __future__ import annotations

import json
import math
import sys

from spa.commands._common import load_config, option, seed_of
from spa.errors import SpaInputError

COMMON_ARGS = False  # each sub-command carries the common options itself, after its own


def add_args(p):
    from spa.cli import add_common_args

    sub = p.add_subparsers(dest="consensus_kind", metavar="KIND", required=True)

    c = sub.add_parser(
        "classes",
        help="particles whose class is stable across classification runs",
        description=__doc__,
        formatter_class=p.formatter_class,
    )
    c.add_argument(
        "--runs", nargs="+", required=True, metavar="STAR",
        help="run_data.star of each run (two or more), with rlnClassNumber",
    )
    c.add_argument("--output-dir", required=True, help="folder for particles.star and the consensus_classes.* report")
    agree = c.add_mutually_exclusive_group()
    agree.add_argument(
        "--min-agreement", type=int, default=None, metavar="N",
        help="keep a particle when N runs agree on its class (default: all runs, the intersection)",
    )
    agree.add_argument(
        "--min-fraction", type=float, default=None, metavar="F",
        help="as --min-agreement, given as a fraction of the runs (N = ceil(F · runs))",
    )
    c.add_argument(
        "--min-class-posterior", type=float, default=None, metavar="P",
        help="a run counts towards the agreement only where its class posterior (rlnSpaClassPosterior, "
             "summed over poses, written by spa class3d) is at least P; default: not used",
    )
    add_common_args(c)
    c.set_defaults(_consensus=_classes)

    q = sub.add_parser(
        "poses",
        help="particles whose poses agree between two refinements",
        description=__doc__,
        formatter_class=p.formatter_class,
    )
    q.add_argument(
        "--runs", nargs="+", required=True, metavar="STAR",
        help="run_data.star of refinements A and B, with rlnAngleRot/Tilt/Psi and rlnOriginX/YAngst",
    )
    q.add_argument("--output-dir", required=True, help="folder for particles.star and the consensus_poses.* report")
    q.add_argument(
        "--max-angle", type=float, default=None, help="largest angular difference kept, degrees (default 2.5)"
    )
    shift = q.add_mutually_exclusive_group()
    shift.add_argument("--max-shift", type=float, default=None, help="largest shift difference kept, pixels (default 4)")
    shift.add_argument(
        "--max-shift-angstrom", type=float, default=None, help="largest shift difference kept, Å (instead of --max-shift)"
    )
    q.add_argument(
        "--sym", default=None,
        help="point-group symmetry; poses that differ by a symmetry operation are equal (default C1)",
    )
    q.add_argument(
        "--no-align", dest="align", action="store_false",
        help="assume both runs share one frame (no global rotation fit)",
    )
    q.add_argument(
        "--allow-mirror", action="store_true", default=None,
        help="also fit the other hand for run B's frame (independent ab-initio maps)",
    )
    add_common_args(q)
    q.set_defaults(_consensus=_poses)


    t = sub.add_parser("ctf", help="micrographs whose two CTF estimates agree, and pass the thresholds",
                       description=__doc__, formatter_class=p.formatter_class)
    t.add_argument("--a", required=True, help="micrographs_ctf.star of estimator A (its estimates are kept)")
    t.add_argument("--b", required=True, help="micrographs_ctf.star of estimator B")
    t.add_argument("--output-dir", required=True, help="folder for micrographs_selected/rejected.star")
    for flag, default, what in (("--max-fit-resolution", 8.0, "worst CTF fit resolution kept, Å"),
                                ("--max-astigmatism", 2000.0, "largest astigmatism kept, Å"),
                                ("--defocus-min", 3000.0, "smallest mean defocus kept, Å"),
                                ("--defocus-max", 50000.0, "largest mean defocus kept, Å"),
                                ("--max-consensus-resolution", 6.0, "the estimators must agree to at least this, Å"),
                                ("--max-drift", 50.0, "largest total drift kept (rlnAccumMotionTotal), Å"),
                                ("--max-frame-shift", 0.0, "largest frame-to-frame shift kept (rlnSpaMaxFrameShiftAngst), Å")):
        t.add_argument(flag, type=float, default=default, help=f"{what} (default {default:g}; ≤ 0: off)")
    add_common_args(t)
    t.set_defaults(_consensus=_ctf)


    k = sub.add_parser("pick", help="picks several pickers agree on (AND, OR, at-least-k, learned rescue)",
                       description=__doc__, formatter_class=p.formatter_class)
    k.add_argument("--micrographs", required=True, help="micrographs STAR the picks belong to (rlnMicrographName)")
    k.add_argument("--picks", nargs="+", required=True, metavar="STAR",
                   help="autopick.star of each picker (two or more; rlnMicrographName → coordinate STAR)")
    k.add_argument("--diameter", type=float, required=True, help="particle diameter, Å")
    k.add_argument("--mode", choices=["and", "or", "at-least"], default=None,
                   help="and: found by every picker; or: by any; at-least: by --min-pickers (default at-least "
                        "with --min-pickers, else and)")
    k.add_argument("--min-pickers", type=int, default=None, metavar="K", help="pickers that must agree (--mode at-least)")
    k.add_argument("--distance", type=float, default=None,
                   help="largest distance between agreeing picks, as a fraction of the diameter (default 0.3)")
    k.add_argument("--rescue", action="store_true", default=None,
                   help="also keep positions fewer pickers found where a scorer trained on the kept picks vouches")
    k.add_argument("--rescue-threshold", type=float, default=None,
                   help="probability the learned scorer must give a rescued position (default 0.5)")
    k.add_argument("--output-dir", required=True, help="folder for autopick.star, coordinates/ and the report")
    add_common_args(k)
    k.set_defaults(_consensus=_pick)


def main(args) -> int:
    return int(args._consensus(args) or 0)


def _ctf(args) -> int:
    from pathlib import Path

    from spa.consensus.ctf import CtfRules, ctf_consensus, write_selection_figures
    from spa.io.star import read_micrographs, write_micrographs
    from spa.plots import write_figures_index
    from spa.provenance import make_record

    need = ("rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfMaxResolution")
    a, optics = read_micrographs(args.a, require=need)
    b, _ = read_micrographs(args.b, require=need)
    off = lambda v: None if v is None or v <= 0 else v  # noqa: E731
    rules = CtfRules(off(args.max_fit_resolution), off(args.max_astigmatism), off(args.defocus_min),
                     off(args.defocus_max), off(args.max_consensus_resolution), off(args.max_drift),
                     off(args.max_frame_shift))
    table = ctf_consensus(a, b, optics, rules)
    if table.empty or not table.rlnSpaCtfConsensusResolution.notna().any():
        raise SpaInputError(args.b, f"no micrograph in common with {args.a} (matched by rlnMicrographName)")
    kept = table[table.rlnSpaRejectReason == ""].drop(columns=["rlnSpaRejectReason"])
    rejected = table[table.rlnSpaRejectReason != ""]
    out = Path(args.output_dir)
    record = make_record(args.argv, None, None, rules=rules.__dict__, kept=len(kept), rejected=len(rejected))
    write_micrographs(out / "micrographs_selected.star", kept, optics, provenance=record)
    write_micrographs(out / "micrographs_rejected.star", rejected, optics, provenance=record)
    write_figures_index(out, write_selection_figures(out, table, rules))
    from spa.io.atomic import atomic_path

    both = table.rlnSpaDefocusDifference.dropna()
    summary = {"micrographs": len(table), "kept": len(kept), "rejected": len(rejected),
               "median_abs_defocus_difference_A": float(both.abs().median()),
               "median_consensus_resolution_A": float(table.rlnSpaCtfConsensusResolution.dropna().median()),
               "reasons": dict(zip(rejected.rlnMicrographName.astype(str), rejected.rlnSpaRejectReason))}
    with atomic_path(out / "ctf_consensus.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "reasons"}))
    print(f"consensus ctf: kept {len(kept)} of {len(table)} micrographs -> {out}", file=sys.stderr)
    return 0


def _need_runs(paths, n_min: int, n_max: int | None, what: str) -> None:
    if len(paths) < n_min:
        raise SpaInputError(paths[0] if paths else None, f"{what} needs at least {n_min} runs (--runs), got {len(paths)}")
    if n_max is not None and len(paths) > n_max:
        raise SpaInputError(paths[n_max], f"{what} compares exactly {n_max} runs (--runs A B), got {len(paths)}")


def _classes(args) -> int:
    from spa.consensus.classes import class_consensus
    from spa.consensus.report import class_labels, class_posteriors, load_runs, write_class_consensus
    from spa.provenance import make_record

    cfg = load_config(args, "consensus")
    paths = list(args.runs)
    _need_runs(paths, 2, None, "class consensus")
    m = len(paths)
    k = option(args, "min_agreement", cfg, None)
    frac = option(args, "min_fraction", cfg, None)
    if k is None and frac is not None:
        if not 0 < float(frac) <= 1:
            raise SpaInputError(None, f"--min-fraction must be in (0, 1], got {frac}")
        k = max(1, math.ceil(float(frac) * m - 1e-9))
    k = m if k is None else int(k)
    if not 1 <= k <= m:
        raise SpaInputError(None, f"--min-agreement must be between 1 and the number of runs ({m}), got {k}")

    min_post = option(args, "min_class_posterior", cfg, None)
    if min_post is not None and not 0 <= float(min_post) <= 1:
        raise SpaInputError(None, f"--min-class-posterior must be in [0, 1], got {min_post}")
    runs = load_runs(paths, require=("rlnClassNumber",))
    labels = [class_labels(p, parts) for p, (parts, _) in zip(paths, runs)]
    posteriors = None if min_post is None else [class_posteriors(p, parts) for p, (parts, _) in zip(paths, runs)]
    result = class_consensus(labels, min_agreement=k, posteriors=posteriors,
                             min_posterior=None if min_post is None else float(min_post))
    seed = seed_of(args, cfg)
    record = make_record(args.argv, cfg, seed, settings={"runs": paths, "min_agreement": k,
                                                         "min_class_posterior": min_post})
    summary = write_class_consensus(args.output_dir, paths, runs, result, record, min_posterior=min_post)
    if summary["n_kept"] == 0:
        print("consensus classes: warning: no particle is stable across the runs", file=sys.stderr)
    keys = ("n_particles", "n_kept", "fraction_kept", "mean_adjusted_rand_index")
    print(json.dumps({key: summary[key] for key in keys}))
    return 0


def _poses(args) -> int:
    import numpy as np

    from spa.consensus.poses import pose_consensus
    from spa.consensus.report import load_runs, poses_of, write_pose_consensus
    from spa.geometry.symmetry import parse_group
    from spa.io.star import POSE_COLUMNS
    from spa.provenance import make_record

    cfg = load_config(args, "consensus")
    paths = list(args.runs)
    _need_runs(paths, 2, 2, "pose consensus")
    sym = parse_group(str(option(args, "sym", cfg, "C1")))
    max_angle = float(option(args, "max_angle", cfg, 2.5))
    shift_a = option(args, "max_shift_angstrom", cfg, None)
    shift_px = None if shift_a is not None else float(option(args, "max_shift", cfg, 4.0))
    allow_mirror = bool(option(args, "allow_mirror", cfg, False))
    if max_angle <= 0 or (shift_px is not None and shift_px < 0) or (shift_a is not None and float(shift_a) < 0):
        raise SpaInputError(None, "--max-angle must be > 0 and the shift limit ≥ 0")

    runs = load_runs(paths, require=POSE_COLUMNS)
    (pa, _), (pb, _) = runs
    R_a, s_a = poses_of(pa)
    R_b, s_b = poses_of(pb)
    pixel = pa["rlnImagePixelSize"].to_numpy(dtype=np.float64)
    if not np.allclose(pixel, pb["rlnImagePixelSize"].to_numpy(dtype=np.float64), rtol=1e-3):
        raise SpaInputError(paths[1], f"pixel size differs from {paths[0]} for the same particles")
    limit_px = np.full_like(pixel, shift_px) if shift_a is None else float(shift_a) / pixel
    seed = seed_of(args, cfg)
    result = pose_consensus(
        R_a, R_b, s_a, s_b, group=sym, max_angle=max_angle, max_shift_px=limit_px,
        align=args.align, allow_mirror=allow_mirror, rng=seed,
    )
    settings = {
        "runs": paths,
        "sym": sym,
        "max_angle": max_angle,
        "max_shift_px": shift_px,
        "max_shift_angstrom": None if shift_a is None else float(shift_a),
        "max_shift_px_shown": float(np.median(limit_px)),
        "align": bool(args.align),
        "allow_mirror": allow_mirror,
    }
    record = make_record(args.argv, cfg, seed, settings=settings)
    summary = write_pose_consensus(args.output_dir, paths, runs, result, settings, record)
    if summary["n_kept"] == 0:
        print("consensus poses: warning: no particle has agreeing poses", file=sys.stderr)
    keys = (
        "n_particles", "n_kept", "fraction_kept",
        "median_angular_difference_deg", "p90_angular_difference_deg", "global_rotation_angle_deg",
    )
    print(json.dumps({k: summary[k] for k in keys}))
    return 0


def _pick(args) -> int:
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from spa.io.images import resolve_image_path
    from spa.io.mrc import read_mrc
    from spa.io.star import read_micrographs
    from spa.picking.consensus import agreement_counts, merge_picks, required_votes
    from spa.picking.consensus_report import agreement_table, write_figures, write_outputs
    from spa.picking.coordinates import read_pick_sets
    from spa.plots import write_figures_index
    from spa.provenance import make_record

    cfg = load_config(args, "consensus")
    paths = list(args.picks)
    if len(paths) < 2:
        raise SpaInputError(paths[0], f"a pick consensus needs at least 2 pickers (--picks), got {len(paths)}")
    min_pickers = option(args, "min_pickers", cfg, None)
    mode = option(args, "mode", cfg, None) or ("at-least" if min_pickers is not None else "and")
    diameter = float(args.diameter)
    fraction = float(option(args, "distance", cfg, 0.3))
    rescue = bool(option(args, "rescue", cfg, False))
    rescue_threshold = float(option(args, "rescue_threshold", cfg, 0.5))
    try:
        need = required_votes(mode, len(paths), min_pickers)
    except ValueError as exc:
        raise SpaInputError(None, str(exc)) from None
    if diameter <= 0 or not 0 < fraction <= 1 or not 0 <= rescue_threshold <= 1:
        raise SpaInputError(None, "need --diameter > 0 Å, 0 < --distance ≤ 1 and 0 ≤ --rescue-threshold ≤ 1")
    mics, _ = read_micrographs(args.micrographs)
    if mics.empty:
        raise SpaInputError(args.micrographs, "no micrographs listed")
    names = mics.rlnMicrographName.astype(str).tolist()
    pixel = dict(zip(names, mics.rlnMicrographPixelSize.astype(float)))
    sets = [read_pick_sets(p, names) for p in paths]

    def load(name):
        path = resolve_image_path(name, args.micrographs)
        if path is None:
            raise SpaInputError(args.micrographs, f"micrograph {name} not found")
        image, _ = read_mrc(path)
        return np.asarray(image, np.float32).squeeze(), pixel[name]

    merged, kept_mask = {}, {}
    for name in names:
        m = merge_picks([s[name] for s in sets], fraction * diameter / pixel[name])
        m["rlnSpaRescued"] = 0
        merged[name], kept_mask[name] = m, m.rlnSpaPickerVotes.to_numpy() >= need
    rescued_total, scorer_info = 0, None
    if rescue and any(kept_mask[n].sum() for n in names) and any((~kept_mask[n]).sum() for n in names):
        from spa.picking.learned import LearnedOptions, score_coordinates, train_scorer

        opts = LearnedOptions(diameter, threshold=rescue_threshold, seed=seed_of(args, cfg))
        positives = {n: merged[n][kept_mask[n]] for n in names if kept_mask[n].any()}
        try:
            scorer, scorer_info = train_scorer(load, positives, {}, opts, rounds=0)
        except ValueError as exc:
            raise SpaInputError(args.micrographs, f"learned rescue: {exc}") from None
        for name in names:
            candidates = np.flatnonzero(~kept_mask[name])
            if not len(candidates):
                continue
            image, px = load(name)
            m = merged[name]
            score = score_coordinates(scorer, image, px, m.iloc[candidates][["rlnCoordinateX", "rlnCoordinateY"]])
            m["rlnSpaLearnedScore"] = np.nan
            m.loc[m.index[candidates], "rlnSpaLearnedScore"] = score
            ok = candidates[score >= rescue_threshold]
            m.loc[m.index[ok], "rlnSpaRescued"] = 1
            kept_mask[name][ok] = True
            rescued_total += len(ok)
    kept = {n: merged[n][kept_mask[n]].reset_index(drop=True) for n in names}
    everything = pd.concat(list(merged.values()), ignore_index=True)
    counts = agreement_counts(everything, len(paths))
    n_kept = int(sum(len(v) for v in kept.values()))
    table = agreement_table([str(Path(p).parent.name or p) for p in paths], counts, rescued_total, n_kept)
    summary = {"micrographs": len(names), "pickers": paths, "mode": mode, "min_votes": need,
               "distance_fraction": fraction, "distance_angstrom": fraction * diameter,
               "picks_per_picker": counts["per_picker"], "found_by_exactly_k": counts["exactly"],
               "found_by_at_least_k": counts["at_least"], "found_by_all": counts["at_least"][-1],
               "rescued": rescued_total, "kept": n_kept, "rescue_scorer": scorer_info}
    settings = {k: summary[k] for k in ("pickers", "mode", "min_votes", "distance_fraction")}
    record = make_record(args.argv, cfg, seed_of(args, cfg), settings={**settings, "diameter": diameter,
                                                                      "rescue": rescue,
                                                                      "rescue_threshold": rescue_threshold})
    out = Path(args.output_dir)
    write_outputs(out, merged, kept, table, summary, record)
    shown = [(Path(n).stem, *load(n)[:1], merged[n], kept_mask[n], diameter / pixel[n]) for n in names[:3]]
    write_figures_index(out, write_figures(out, table, shown, len(paths), need))
    if n_kept == 0:
        print("consensus pick: warning: no position passes the consensus", file=sys.stderr)
    print(json.dumps({k: summary[k] for k in ("micrographs", "picks_per_picker", "found_by_all", "rescued", "kept")}))
    print(f"consensus pick: kept {n_kept} positions ({mode}, ≥ {need} of {len(paths)} pickers) -> {out}",
          file=sys.stderr)
    return 0
