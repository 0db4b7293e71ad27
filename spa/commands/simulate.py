"""Make the built-in demo data with ground truth: particles, micrographs or movies.

A synthetic, asymmetric protein-like molecule (α-helices and β-sheets in 2-4
domains; optionally a symmetric assembly and/or several conformations) is
imaged as a pipeline would receive it:

  --kind particles    particles.star + particles.zarr (CTF, origins, noise at --snr)
  --kind micrographs  micrographs.star + micrographs/*.mrc (ice, carbon, contaminants,
                      CTF, shot noise; protein dark as recorded)
  --kind movies       movies.star + movies/*.mrc|.tif + gain.mrc (drift, local motion,
                      radiation damage, Poisson counts, detector gain)

The truth goes to DIR/truth: poses, origins, classes, junk flags, defocus,
coordinates, drift, the class maps (class00k.mrc) and pseudo-atoms (.pdb).
--preset tiny|demo|realistic sets every size (tiny: seconds; demo: 5000
particles of box 64; realistic: 20,000 of box 128 with junk and a B envelope);
other options override it.  The same --seed gives the same data.

Example:  spa simulate --kind particles --preset demo --output-dir sim --seed 1
"""

from __future__ import annotations

import sys

from spa.commands._common import load_config, option, progress_printer, seed_of
from spa.errors import SpaInputError

PRESETS = {
    "tiny": {
        "particles": dict(n=400, box=32, pixel_size=4.0, snr=0.2, particles_per_micrograph=50),
        "micrographs": dict(n=2, size=512, pixel_size=1.5, diameter=90.0),
        "movies": dict(n=1, size=256, pixel_size=1.5, diameter=90.0, n_frames=8, dose_per_frame=4.0,
                       particles_per_micrograph=3),
    },
    "demo": {
        "particles": dict(n=5000, box=64, pixel_size=2.0, snr=0.1),
        "micrographs": dict(n=4, size=1024, pixel_size=1.0, diameter=120.0),
        "movies": dict(n=2, size=1024, pixel_size=1.0, diameter=120.0, n_frames=20, dose_per_frame=2.0),
    },
    "realistic": {
        "particles": dict(n=20000, box=128, pixel_size=1.2, snr=0.05, junk_fraction=0.05,
                          bfactor_min=20.0, bfactor_max=80.0, defocus_min=5000.0, defocus_max=25000.0),
        "micrographs": dict(n=20, size=4096, pixel_size=1.0, diameter=150.0),
        "movies": dict(n=2, size=4096, pixel_size=1.0, diameter=150.0, n_frames=40, dose_per_frame=1.0),
    },
}

# command-line option -> (spec field, kinds it applies to)
OPTIONS = {
    "n_particles": ("n", ("particles",)),
    "box": ("box", ("particles",)),
    "pixel_size": ("pixel_size", ("particles", "micrographs", "movies")),
    "snr": ("snr", ("particles", "micrographs", "movies")),
    "diameter": ("diameter", ("particles", "micrographs", "movies")),
    "symmetry": ("symmetry", ("particles", "micrographs", "movies")),
    "conformations": ("conformations", ("particles", "micrographs", "movies")),
    "junk_fraction": ("junk_fraction", ("particles",)),
    "junk_kinds": ("junk_kinds", ("particles",)),
    "overlap_offset": ("overlap_offset", ("particles",)),
    "defocus_min": ("defocus_min", ("particles", "micrographs", "movies")),
    "defocus_max": ("defocus_max", ("particles", "micrographs", "movies")),
    "bfactor_min": ("bfactor_min", ("particles",)),
    "bfactor_max": ("bfactor_max", ("particles",)),
    "n_micrographs": ("n", ("micrographs", "movies")),
    "micrograph_size": ("size", ("micrographs", "movies")),
    "particles_per_micrograph": ("particles_per_micrograph", ("particles", "micrographs", "movies")),
    "dose": ("dose", ("micrographs",)),
    "n_frames": ("n_frames", ("movies",)),
    "dose_per_frame": ("dose_per_frame", ("movies",)),
    "carbon_fraction": ("carbon_fraction", ("micrographs", "movies")),
    "astigmatism": ("astigmatism", ("micrographs", "movies")),
    "envelope_bfactor": ("bfactor", ("micrographs", "movies")),
    "contaminants": ("contaminants", ("micrographs", "movies")),
    "aggregates": ("aggregates", ("micrographs", "movies")),
    "tiff": ("tiff", ("movies",)),
}


def add_args(p):
    p.add_argument("--kind", choices=["particles", "micrographs", "movies"], default=None,
                   help="what to simulate (default: particles)")
    p.add_argument("--output-dir", required=True, help="output folder (created; files are replaced)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="data-set size (default: demo)")
    g = p.add_argument_group("particles")
    g.add_argument("--n-particles", type=int, default=None, help="number of particle images")
    g.add_argument("--box", type=int, default=None, help="particle box size, px")
    g.add_argument("--junk-fraction", type=float, default=None, help="fraction of junk images, 0-1")
    g.add_argument("--junk-kinds", default=None, metavar="KINDS",
                   help="junk images: noise (pure noise), blob (contaminant blobs), edge (a carbon edge across the "
                        "box), overlap (two overlapping particles), a comma-separated list of these (equal shares), "
                        "both (noise and blob, half each; the default) or all")
    g.add_argument("--overlap-offset", type=float, default=None, metavar="F",
                   help="overlap junk: the first particle moves off-centre, away from the second, by up to F × "
                        "their separation (0: centred, the default; 0.5: the pair centred on the box)")
    g.add_argument("--bfactor-min", type=float, default=None, help="per-particle B envelope, lower bound, Å² (0: none)")
    g.add_argument("--bfactor-max", type=float, default=None, help="per-particle B envelope, upper bound, Å²")
    g = p.add_argument_group("molecule and imaging")
    g.add_argument("--pixel-size", type=float, default=None, help="pixel size, Å")
    g.add_argument("--snr", type=float, default=None,
                   help="signal-to-noise ratio: variance of the CTF-modulated particle signal over its box / noise variance")
    g.add_argument("--diameter", type=float, default=None,
                   help="molecule diameter, Å (particles: default 0.6 × box × pixel size)")
    g.add_argument("--symmetry", default=None, help="point group of the assembly (C1, D2, O, ...; default C1)")
    g.add_argument("--conformations", type=int, default=None, help="number of conformations = 3D classes (default 1)")
    g.add_argument("--defocus-min", type=float, default=None, help="smallest mean defocus, Å (underfocus positive)")
    g.add_argument("--defocus-max", type=float, default=None, help="largest mean defocus, Å")
    g.add_argument("--particles-per-micrograph", type=int, default=None,
                   help="particles per micrograph (particles: per defocus group; micrographs: default fills 35%% of the ice)")
    g = p.add_argument_group("micrographs and movies")
    g.add_argument("--n-micrographs", type=int, default=None, help="number of micrographs or movies")
    g.add_argument("--micrograph-size", type=int, default=None, help="micrograph width = height, px")
    g.add_argument("--dose", type=float, default=None, help="micrographs: total dose, e⁻/Å² (default 40)")
    g.add_argument("--n-frames", type=int, default=None, help="movies: frames per movie")
    g.add_argument("--dose-per-frame", type=float, default=None, help="movies: dose per frame, e⁻/Å²")
    g.add_argument("--carbon-fraction", type=float, default=None, help="chance of a carbon edge per micrograph, 0-1")
    g.add_argument("--contaminants", type=float, default=None, help="mean number of contaminant blobs per micrograph")
    g.add_argument("--aggregates", type=float, default=None,
                   help="mean number of particle aggregates per micrograph (default 0); truth/regions/*.mrc "
                        "labels carbon 1, contaminant 2, aggregate 3")
    g.add_argument("--astigmatism", type=float, default=None, help="largest astigmatism U − V, Å (default 500)")
    g.add_argument("--envelope-bfactor", type=float, default=None,
                   help="envelope exp(−B·k²/4) of the micrographs' CTF, Å² (default 0: none)")
    g.add_argument("--tiff", action="store_true", default=None, help="movies: write TIFF instead of MRC stacks")


def resolve(args, cfg: dict) -> tuple[str, str, dict]:
    """(kind, preset, spec keyword arguments) from the command line, the config and the preset."""
    kind = option(args, "kind", cfg, "particles")
    preset = option(args, "preset", cfg, "demo")
    if kind not in ("particles", "micrographs", "movies"):
        raise SpaInputError(getattr(args, "config", None), f"unknown kind {kind!r}")
    if preset not in PRESETS:
        raise SpaInputError(getattr(args, "config", None), f"unknown preset {preset!r} (tiny, demo, realistic)")
    spec = dict(PRESETS[preset][kind])
    for name, (fieldname, kinds) in OPTIONS.items():
        value = option(args, name, cfg, None)
        if value is not None and kind in kinds:
            spec[fieldname] = value
    return kind, preset, spec


def main(args) -> int:
    from spa.provenance import make_record
    from spa.simulate import MicrographSpec, MovieSpec, ParticleSpec, simulate_micrographs, simulate_movies, simulate_particles

    cfg = load_config(args, "simulate")
    kind, preset, spec_kw = resolve(args, cfg)
    seed = seed_of(args, cfg)
    workers = int(option(args, "workers", cfg, 1) or 1)
    try:
        spec = {"particles": ParticleSpec, "micrographs": MicrographSpec, "movies": MovieSpec}[kind](**spec_kw)
    except (ValueError, TypeError) as exc:
        raise SpaInputError(getattr(args, "config", None), f"invalid simulation options: {exc}") from None
    record = make_record(args.argv, {"kind": kind, "preset": preset, **spec_kw}, seed)
    out = args.output_dir
    if kind == "particles":
        result = simulate_particles(out, spec, seed, provenance=record, workers=workers,
                                    progress=progress_printer("simulate: particle images"))
        print(f"simulated {spec.n} particles of {spec.box} px at {spec.pixel_size} Å/px -> {result.particles_star}",
              file=sys.stderr)
    elif kind == "micrographs":
        star = simulate_micrographs(out, spec, seed, provenance=record,
                                    progress=progress_printer("simulate: micrographs"))
        print(f"simulated {spec.n} micrographs of {spec.size} px -> {star}", file=sys.stderr)
    else:
        star = simulate_movies(out, spec, seed, provenance=record, progress=progress_printer("simulate: movies"))
        print(f"simulated {spec.n} movies of {spec.n_frames} frames -> {star}", file=sys.stderr)
    return 0
