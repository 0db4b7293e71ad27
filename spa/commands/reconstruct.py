"""Reconstruct a 3D map from particles with known poses (like relion_reconstruct).

Images are centred by their origins (rlnOriginX/YAngst), CTF-weighted (Wiener
on the CTF², unless --no-ctf) and inserted in Fourier space at their Euler
angles; the map is written as MRC with the particles' pixel size.

--poses-from TRUTH.star takes each particle's angles and origins from the
same image's row in another STAR (e.g. a simulation's true poses for a
refinement's run_data.star: the same particles, the true poses).

--like-refine3d makes the maps exactly as refine3d makes its final ones
(:mod:`spa.refine3d.true_poses`): unregularised half maps from the
rlnRandomSubset halves in the particle radius's sphere, their FSC, and the
full map regularised by that FSC's SSNR, written into --output-dir with
refine3d's names (run_class001.mrc, run_half1/2_class001_unfil.mrc) and
true_poses.json.  With --poses-from on a refinement's run_data.star this is
the like-with-like yardstick for "the refined map reaches what the true poses
allow": the two maps differ in the poses only.

Examples:  spa reconstruct --particles run_data.star --output half1.mrc --subset 1
           spa reconstruct --particles refine3d/run_data.star --poses-from truth/particles.star
               --like-refine3d --particle-diameter 80 --output-dir true_poses
"""

from __future__ import annotations

import json
import sys

from spa.commands._common import dask_client, load_config, option, progress_printer, seed_of
from spa.errors import SpaInputError


def add_args(p):
    p.add_argument("--particles", required=True, help="particle STAR file (RELION 3.0/3.1) with poses and CTF")
    p.add_argument("--output", default=None, help="output map (.mrc)")
    p.add_argument("--output-dir", default=None,
                   help="with --like-refine3d: folder for run_class001.mrc, the two *_unfil half maps and "
                        "true_poses.json")
    p.add_argument("--poses-from", default=None,
                   help="STAR whose rows give each particle's angles and origins (matched by image), "
                        "e.g. the true poses")
    p.add_argument("--skip-missing", action="store_true",
                   help="with --poses-from: leave out particles it lacks (e.g. false picks, which have no true "
                        "pose) instead of stopping")
    p.add_argument("--like-refine3d", action="store_true",
                   help="half maps, their FSC and the regularised full map as refine3d makes its final map")
    p.add_argument("--particle-diameter", type=float, default=None,
                   help="with --like-refine3d: refine3d's mask diameter, Å (default 90 %% of the box)")
    p.add_argument("--tau2-fudge", type=float, default=None,
                   help="with --like-refine3d: refine3d's regularisation parameter T (default 1)")
    p.add_argument("--subset", type=int, choices=[1, 2], default=None, help="only rows with this rlnRandomSubset (half maps)")
    p.add_argument("--sym", default=None, help="point-group symmetry (C1, Cn, Dn, T, O, I1-I4); default C1")
    p.add_argument("--no-ctf", dest="ctf", action="store_false", help="ignore the CTF (images are not CTF-corrected)")
    p.add_argument("--maxres", type=float, default=None, help="highest resolution inserted, Å (default: Nyquist)")
    p.add_argument("--chunk-size", type=int, default=None, help="particles per task (default 512)")


def _check_modes(args) -> None:
    if args.like_refine3d:
        if not args.output_dir or args.output:
            raise SpaInputError(None, "--like-refine3d writes several maps: give --output-dir, not --output")
        if args.subset is not None or args.maxres is not None:
            raise SpaInputError(None, "--like-refine3d uses both halves to Nyquist: no --subset or --maxres")
    elif not args.output or args.output_dir:
        raise SpaInputError(None, "give --output (one map); --output-dir goes with --like-refine3d")
    for name in ("particle_diameter", "tau2_fudge"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise SpaInputError(None, f"--{name.replace('_', '-')} must be > 0, got {value}")


def _particles(args, use_ctf: bool):
    """The particle table (poses replaced from --poses-from when given)."""
    from spa.io.star import CTF_COLUMNS, read_particles
    from spa.reconstruct import POSE_COLUMNS

    poses = () if args.poses_from else POSE_COLUMNS
    table, _ = read_particles(args.particles, require=("rlnImageName",) + poses + (CTF_COLUMNS if use_ctf else ()))
    if (args.like_refine3d or args.subset is not None) and "rlnRandomSubset" not in table:
        raise SpaInputError(args.particles, "needs the halves (column rlnRandomSubset)")
    if args.poses_from:
        from spa.refine3d.true_poses import with_true_poses

        truth, _ = read_particles(args.poses_from)
        n_refined = len(table)
        table = with_true_poses(table, args.particles, truth, args.poses_from, skip_missing=args.skip_missing)
        if len(table) < n_refined:
            print(f"reconstruct: {n_refined - len(table)} of {n_refined} particles have no row in "
                  f"{args.poses_from}: left out (--skip-missing)", file=sys.stderr)
    if table["rlnImagePixelSize"].nunique() > 1 or ("rlnImageSize" in table and table["rlnImageSize"].nunique() > 1):
        raise SpaInputError(args.particles, "particles from optics groups with different pixel or box sizes")
    return table


def main(args) -> int:
    from spa.io.mrc import write_mrc
    from spa.provenance import make_record
    from spa.reconstruct import reconstruct_star, reconstruct_table

    _check_modes(args)
    cfg = load_config(args, "reconstruct")
    sym = option(args, "sym", cfg, "C1")
    chunk = int(option(args, "chunk_size", cfg, 512))
    common = dict(symmetry=sym, use_ctf=args.ctf, chunk_size=chunk, backend=args.backend)
    with dask_client(args, cfg) as client:
        if args.like_refine3d:
            return _like_refine3d(args, cfg, client, common)
        if args.poses_from:
            table = _particles(args, args.ctf)
            if args.subset is not None:
                table = table[table["rlnRandomSubset"] == args.subset].reset_index(drop=True)
            if len(table) == 0:
                raise SpaInputError(args.particles, f"no particles in subset {args.subset}")
            volume, pixel_size, n = reconstruct_table(table, args.particles, maxres=args.maxres, client=client,
                                                      progress=progress_printer("reconstruct: chunks"), **common)
        else:
            volume, pixel_size, n = reconstruct_star(args.particles, subset=args.subset, maxres=args.maxres,
                                                     client=client, progress=progress_printer("reconstruct: chunks"),
                                                     **common)
    record = make_record(args.argv, cfg, seed_of(args, cfg), particles=n, symmetry=sym)
    write_mrc(args.output, volume, pixel_size, provenance=record)
    print(f"reconstructed {n} particles (sym {sym}) -> {args.output}", file=sys.stderr)
    return 0


def _like_refine3d(args, cfg, client, common) -> int:
    from pathlib import Path

    from spa.em.fsc import resolution_at, resolution_text
    from spa.io.atomic import atomic_path
    from spa.io.mrc import write_mrc
    from spa.provenance import make_record
    from spa.refine3d.true_poses import reconstruct_like_refine3d

    table = _particles(args, args.ctf)
    maps = reconstruct_like_refine3d(table, args.particles, particle_diameter=args.particle_diameter,
                                     tau2_fudge=args.tau2_fudge or 1.0, client=client,
                                     progress=progress_printer("reconstruct: chunks"), **common)
    box = maps.full.shape[-1]
    summary = {
        "particles": list(maps.n_particles),
        "poses_from": args.poses_from or args.particles,
        "resolution_fsc0143_A": round(float(resolution_at(maps.fsc, 0.143, box, maps.pixel_size)), 3),
        "resolution": resolution_text(maps.fsc, 0.143, box, maps.pixel_size),
        "fsc": [round(float(v), 5) for v in maps.fsc],
    }
    record = make_record(args.argv, cfg, seed_of(args, cfg), particles=sum(maps.n_particles),
                         symmetry=common["symmetry"], poses_from=summary["poses_from"])
    out = Path(args.output_dir)
    write_mrc(out / "run_half1_class001_unfil.mrc", maps.half1, maps.pixel_size, provenance=record)
    write_mrc(out / "run_half2_class001_unfil.mrc", maps.half2, maps.pixel_size, provenance=record)
    write_mrc(out / "run_class001.mrc", maps.full, maps.pixel_size, provenance=record)
    with atomic_path(out / "true_poses.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"reconstructed {sum(maps.n_particles)} particles as refine3d does (halves {maps.n_particles[0]} + "
          f"{maps.n_particles[1]}): half-map FSC 0.143 at {summary['resolution']} -> {out}", file=sys.stderr)
    return 0
