"""Simulated particle images with ground truth: what a pipeline gets after extraction.

Image formation (for particle i of class k, pose A_i, origin o_i in Å):

    X_i = CTF_i · P_{A_i}(V_k) moved by −o_i / pixel  +  noise

* P is the analytic projection of the pseudo-atoms (:mod:`spa.simulate.projection`),
  independent of the Fourier projector under test;
* the particle's centre sits at box centre − origin/pixel, as RELION defines
  rlnOriginXAngst/YAngst: translating the image by +origin/pixel centres it;
* CTF_i from :func:`spa.ctf.ctf_2d` with the particle's defocus U/V/angle
  (Å, degrees), 300 kV, Cs 2.7 mm, Q 0.1 by default, and an optional per-particle
  B envelope (Å², truth column rlnCtfBfactor);
* protein is white (positive density), as RELION's extracted particles;
* noise: Gaussian, part white, part coloured (:func:`spa.simulate.noise.noise_filter`).

Junk images (``junk_kinds``, a name or a comma-separated list of names; "both"
is "noise,blob" drawn as before): ``noise`` — noise only; ``blob`` — a few
broad Gaussians of about the particle's mass; ``edge`` — a straight carbon
edge across the box (:func:`edge_signals`: a smoothed step of density at a
random angle and offset, CTF applied on a box twice as large so the step does
not wrap around, the crop's mean removed as extraction's normalisation would),
half of them with a particle too; ``overlap`` — the particle at its pose and
origin plus a second one in another pose whose centre is 0.5–0.8 diameters
away (:func:`overlap_partner`); with ``overlap_offset`` > 0 the first particle
moves away from the second by a fraction of their separation drawn in
[0, overlap_offset] (0.5: the pair centred on the box, both off-centre).  Truth rows of junk have rlnClassNumber 0.

SNR definition: ``snr`` = (mean over particles of the variance, over all B×B
pixels of the box, of the CTF-modulated clean signal) / (noise variance per
pixel).  The noise level is fixed once per data set from a calibration set
of particles drawn like the real ones, so every image has the same noise level.

Files (under the output directory):

* ``particles.zarr`` — the images (Zarr stack, :mod:`spa.io.zarrstack`), float32;
* ``particles.star`` — RELION 3.1 optics + particles: rlnImageName
  (``i@particles.zarr``), rlnMicrographName, rlnDefocusU/V/Angle,
  rlnRandomSubset, rlnOpticsGroup — no poses, origins or classes;
* ``truth/particles.star`` — the same rows (rlnImageName ``i@../particles.zarr``)
  plus rlnAngleRot/Tilt/Psi, rlnOriginXAngst/YAngst, rlnClassNumber (0 for
  junk), rlnSpaIsJunk (1 = junk), rlnSpaJunkKind (0 particle, 1 pure noise,
  2 contaminant blob, 3 carbon edge, 4 overlapping pair; :data:`JUNK_KINDS`), rlnCtfBfactor;
* ``truth/class001.mrc`` … — the true map of each class (box B, same pixel size);
* ``truth/class001.pdb`` … — the pseudo-atoms.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft as sfft

from spa.ctf import ctf_2d
from spa.geometry.euler import euler_to_matrix
from spa.simulate.density import render_map, write_map
from spa.simulate.molecule import Molecule, make_molecule, write_pdb
from spa.simulate.noise import coloured_noise, noise_filter
from spa.simulate.projection import project_atoms, project_molecule

CHUNK = 256  # images rendered (and written) per task; also the Zarr chunk length

# rlnSpaJunkKind codes of the truth table
JUNK_KINDS = {"noise": 1, "blob": 2, "edge": 3, "overlap": 4}


def junk_kind_codes(kinds: str) -> list[int]:
    """'noise,edge' → [1, 3]; 'both' → [1, 2]; 'all' → [1, 2, 3, 4].  Raises ValueError for unknown names."""
    text = str(kinds).strip().lower()
    if text == "both":
        return [1, 2]
    if text == "all":
        return sorted(JUNK_KINDS.values())
    names = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in names if k not in JUNK_KINDS]
    if bad or not names:
        raise ValueError(f"junk kinds must be names among {sorted(JUNK_KINDS)} (or 'both', 'all'), got {kinds!r}")
    return sorted({JUNK_KINDS[k] for k in names})


@dataclass
class ParticleSpec:
    """Options of a simulated particle data set (lengths in Å, angles in degrees)."""

    n: int = 1000
    box: int = 64
    pixel_size: float = 2.0
    snr: float = 0.1
    diameter: float | None = None  # Å; default 0.6 × box × pixel size
    defocus_min: float = 10000.0  # Å
    defocus_max: float = 25000.0  # Å
    astigmatism: float = 300.0  # Å, largest U − V
    voltage: float = 300.0  # kV
    cs: float = 2.7  # mm
    amplitude_contrast: float = 0.1
    bfactor_min: float = 0.0  # Å², per-particle envelope drawn uniformly in [min, max]
    bfactor_max: float = 0.0
    offset_sigma: float = 2.0  # px, SD of rlnOrigin (clipped at 3 SD)
    junk_fraction: float = 0.0
    junk_kinds: str = "both"  # "noise", "blob", "edge", "overlap", a comma list of them, "both" (noise,blob), "all"
    overlap_offset: float = 0.0  # overlap pairs: largest shift of the first particle off-centre, × the separation
    conformations: int = 1
    symmetry: str = "C1"
    n_domains: int = 3
    noise_white_fraction: float = 0.5
    particles_per_micrograph: int = 100
    subsets: str = "alternate"  # rlnRandomSubset: "alternate" (1, 2, 1, ...) or "random"

    def __post_init__(self):
        if self.diameter is None:
            self.diameter = 0.6 * self.box * self.pixel_size
        checks = [
            (self.n >= 1, "n must be ≥ 1"),
            (self.box >= 8, "box must be ≥ 8 px"),
            (self.pixel_size > 0, "pixel size must be > 0 Å"),
            (self.snr > 0, "SNR must be > 0"),
            (0 < self.defocus_min <= self.defocus_max, "need 0 < defocus min ≤ defocus max (Å)"),
            (0 <= self.junk_fraction < 1, "junk fraction must be in [0, 1)"),
            (_known_kinds(self.junk_kinds), f"junk kinds must be among {sorted(JUNK_KINDS)} (comma-separated), "
                                            f"'both' or 'all', got {self.junk_kinds!r}"),
            (self.conformations >= 1, "conformations must be ≥ 1"),
            (0 < self.diameter <= self.box * self.pixel_size, "diameter must fit in the box"),
            (self.subsets in ("alternate", "random"), "subsets must be 'alternate' or 'random'"),
            (0 <= self.bfactor_min <= self.bfactor_max, "need 0 ≤ B min ≤ B max"),
            (0 <= self.overlap_offset <= 1, "overlap offset must be in [0, 1]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


def _known_kinds(kinds) -> bool:
    try:
        junk_kind_codes(kinds)
    except ValueError:
        return False
    return True


def molecules_for(spec: ParticleSpec, seed: int) -> list[Molecule]:
    """One molecule per class (conformations 1 … K of the same fold)."""
    return [
        make_molecule(spec.diameter, seed=seed, n_domains=spec.n_domains, symmetry=spec.symmetry, conformation=k)
        for k in range(1, spec.conformations + 1)
    ]


def uniform_angles(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) RELION (rot, tilt, psi) in degrees, uniform over SO(3)."""
    rot = rng.uniform(-180.0, 180.0, n)
    tilt = np.rad2deg(np.arccos(rng.uniform(-1.0, 1.0, n)))
    psi = rng.uniform(-180.0, 180.0, n)
    return np.stack([rot, tilt, psi], 1)


def draw_truth(spec: ParticleSpec, seed: int, stack_name: str = "particles.zarr") -> pd.DataFrame:
    """Every per-particle parameter (the truth table), drawn from ``seed``."""
    rng = np.random.default_rng([int(seed), 1])
    n = spec.n
    ang = uniform_angles(rng, n)
    off = np.clip(rng.normal(0.0, spec.offset_sigma, (n, 2)), -3 * spec.offset_sigma, 3 * spec.offset_sigma)
    # per micrograph: a defocus and an astigmatism; per particle: ± ice-height jitter
    n_mics = -(-n // spec.particles_per_micrograph)
    mic = np.arange(n) // spec.particles_per_micrograph
    mic_def = rng.uniform(spec.defocus_min, spec.defocus_max, n_mics)
    mic_ast = rng.uniform(0.0, spec.astigmatism, n_mics)
    mic_ang = rng.uniform(0.0, 180.0, n_mics)
    height = rng.normal(0.0, 50.0, n)
    dfu = mic_def[mic] + 0.5 * mic_ast[mic] + height
    dfv = mic_def[mic] - 0.5 * mic_ast[mic] + height
    cls = rng.integers(1, spec.conformations + 1, n)
    junk_kind = np.zeros(n, dtype=np.int64)
    n_junk = int(round(spec.junk_fraction * n))
    if n_junk:
        idx = rng.choice(n, n_junk, replace=False)
        kinds = rng.integers(1, 3, n_junk)  # 1 = pure noise, 2 = contaminant blob (drawn always: same stream)
        codes = junk_kind_codes(spec.junk_kinds)
        if spec.junk_kinds.strip().lower() == "both":
            junk_kind[idx] = kinds
        elif len(codes) == 1:
            junk_kind[idx] = codes[0]
        else:  # equal shares of each kind, from a stream of their own (the main one stays as it was)
            junk_kind[idx] = np.asarray(codes)[np.random.default_rng([int(seed), 3]).permutation(n_junk) % len(codes)]
        cls[idx] = 0
    bfac = rng.uniform(spec.bfactor_min, spec.bfactor_max, n) if spec.bfactor_max > 0 else np.zeros(n)
    subset = (np.arange(n) % 2) + 1 if spec.subsets == "alternate" else rng.integers(1, 3, n)
    return pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@{stack_name}" for i in range(n)],
            "rlnMicrographName": [f"micrographs/mic{m + 1:05d}.mrc" for m in mic],
            "rlnDefocusU": np.round(dfu, 2),
            "rlnDefocusV": np.round(dfv, 2),
            "rlnDefocusAngle": np.round(mic_ang[mic], 3),
            "rlnOpticsGroup": np.ones(n, dtype=np.int64),
            "rlnRandomSubset": subset.astype(np.int64),
            "rlnAngleRot": ang[:, 0],
            "rlnAngleTilt": ang[:, 1],
            "rlnAnglePsi": ang[:, 2],
            "rlnOriginXAngst": off[:, 0] * spec.pixel_size,
            "rlnOriginYAngst": off[:, 1] * spec.pixel_size,
            "rlnClassNumber": cls.astype(np.int64),
            "rlnSpaIsJunk": (junk_kind > 0).astype(np.int64),
            "rlnSpaJunkKind": junk_kind,
            "rlnCtfBfactor": bfac,
        }
    )


def optics_table(spec: ParticleSpec) -> pd.DataFrame:
    """The RELION 3.1 optics block (one group)."""
    return pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnImagePixelSize": [float(spec.pixel_size)],
            "rlnImageSize": [int(spec.box)],
            "rlnImageDimensionality": [2],
            "rlnVoltage": [float(spec.voltage)],
            "rlnSphericalAberration": [float(spec.cs)],
            "rlnAmplitudeContrast": [float(spec.amplitude_contrast)],
        }
    )


def _blob(rng: np.random.Generator, spec: ParticleSpec, mass: float) -> tuple[np.ndarray, ...]:
    """Atoms of a contaminant-like blob: a few broad Gaussians of about the particle's mass."""
    k = int(rng.integers(3, 8))
    r = 0.3 * spec.box * spec.pixel_size
    coords = rng.uniform(-r, r, (k, 3))
    sig = rng.uniform(0.03, 0.09, k) * spec.box * spec.pixel_size
    w = rng.dirichlet(np.ones(k)) * mass * rng.uniform(0.5, 1.5)
    return coords, w, sig


def clean_projections(spec: ParticleSpec, truth: pd.DataFrame, molecules: list[Molecule], rng=None) -> np.ndarray:
    """Noise-free, CTF-free images (n, B, B) of the rows of ``truth`` (shifted by −origin)."""
    n = len(truth)
    A = euler_to_matrix(truth["rlnAngleRot"].to_numpy(), truth["rlnAngleTilt"].to_numpy(), truth["rlnAnglePsi"].to_numpy())
    shifts = -np.stack([truth["rlnOriginXAngst"].to_numpy(), truth["rlnOriginYAngst"].to_numpy()], 1) / spec.pixel_size
    out = np.zeros((n, spec.box, spec.box), dtype=np.float32)
    cls = truth["rlnClassNumber"].to_numpy()
    for k, mol in enumerate(molecules, start=1):
        sel = np.flatnonzero(cls == k)
        if len(sel):
            out[sel] = project_molecule(mol, A[sel], spec.box, spec.pixel_size, shifts[sel])
    kind = truth["rlnSpaJunkKind"].to_numpy()
    blobs = np.flatnonzero(kind == 2)
    if len(blobs):
        rng = rng or np.random.default_rng(0)
        mass = float(molecules[0].weights.sum())
        for i in blobs:
            c, w, s = _blob(rng, spec, mass)
            out[i] = project_atoms(c, w, s, np.eye(3)[None], spec.box, spec.pixel_size)[0]
    offsets = None
    for i in np.flatnonzero((kind == 3) | (kind == 4)):
        rng = rng or np.random.default_rng(0)
        if offsets is None and spec.overlap_offset > 0:
            # a spawned stream leaves ``rng``'s own draws (the noise after this) as they were: an overlap
            # offset changes the overlap images and nothing else
            offsets = rng.spawn(1)[0]
        mol = molecules[int(rng.integers(len(molecules)))]
        if kind[i] == 3 and rng.random() < 0.5:  # an edge without a particle
            continue
        centre = shifts[i : i + 1]
        if kind[i] == 4:
            a2, shift2 = overlap_partner(rng, spec, shifts[i])
            if spec.overlap_offset > 0:
                centre = centre - offsets.uniform(0.0, spec.overlap_offset) * (shift2 - centre)
                shift2 = centre + (shift2 - shifts[i : i + 1])
            out[i] = project_molecule(molecules[int(rng.integers(len(molecules)))], a2, spec.box, spec.pixel_size,
                                      shift2)[0]
        out[i] += project_molecule(mol, A[i : i + 1], spec.box, spec.pixel_size, centre)[0]
    return out


def overlap_partner(rng: np.random.Generator, spec: ParticleSpec, centre_px) -> tuple[np.ndarray, np.ndarray]:
    """(rotation (1, 3, 3), shift (1, 2) px) of a second particle overlapping the one centred at ``centre_px``:
    a uniform random pose, its centre 0.5–0.8 diameters away in a random direction."""
    angles = uniform_angles(rng, 1)
    dist = rng.uniform(0.5, 0.8) * spec.diameter / spec.pixel_size
    phi = rng.uniform(0.0, 2 * np.pi)
    shift = np.asarray(centre_px, np.float64) + dist * np.array([np.cos(phi), np.sin(phi)])
    return euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2]), shift[None]


def edge_signals(spec: ParticleSpec, truth: pd.DataFrame, molecules: list[Molecule], rng) -> np.ndarray:
    """CTF-modulated carbon edges (n, B, B) for the rows of ``truth``: a step of density (width ~1 px) at a
    random angle, its line 0–0.3 box from the centre, carbon on one side, of height 0.5–1.5 × the peak of the
    molecule's projection.  The step is drawn and CTF-modulated on a 2B box and cropped; the crop's mean is
    removed (extraction normalises the background to zero mean)."""
    from scipy.special import erf  # noqa: PLC0415

    n, box, pad = len(truth), spec.box, 2 * spec.box
    peak = float(project_molecule(molecules[0], np.eye(3)[None], box, spec.pixel_size)[0].max())
    c = np.arange(pad) - pad // 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    clean = np.empty((n, pad, pad), np.float32)
    for j in range(n):
        alpha = rng.uniform(0.0, 2 * np.pi)
        t0 = rng.uniform(0.0, 0.3) * box
        height = rng.uniform(0.5, 1.5) * peak
        d = np.cos(alpha) * xx + np.sin(alpha) * yy - t0
        clean[j] = height * 0.5 * (1.0 + erf(d / np.sqrt(2.0)))
    ctf = ctf_2d(pad, spec.pixel_size, truth["rlnDefocusU"].to_numpy(), truth["rlnDefocusV"].to_numpy(),
                 truth["rlnDefocusAngle"].to_numpy(), spec.voltage, spec.cs, spec.amplitude_contrast, 0.0,
                 truth["rlnCtfBfactor"].to_numpy()).reshape(n, pad, pad // 2 + 1)
    lo = (pad - box) // 2
    out = apply_ctf(clean, ctf)[:, lo : lo + box, lo : lo + box]
    return out - out.mean(axis=(1, 2), keepdims=True)


def ctfs_for(spec: ParticleSpec, truth: pd.DataFrame) -> np.ndarray:
    """CTFs (n, B, B//2+1) of the rows (with their per-particle B envelope)."""
    return ctf_2d(
        spec.box, spec.pixel_size,
        truth["rlnDefocusU"].to_numpy(), truth["rlnDefocusV"].to_numpy(), truth["rlnDefocusAngle"].to_numpy(),
        spec.voltage, spec.cs, spec.amplitude_contrast, 0.0, truth["rlnCtfBfactor"].to_numpy(),
    ).reshape(len(truth), spec.box, spec.box // 2 + 1)


def apply_ctf(images: np.ndarray, ctfs: np.ndarray) -> np.ndarray:
    """Images multiplied by their CTFs in Fourier space (the CTF is real and even, so no centring is needed)."""
    box = images.shape[-1]
    return sfft.irfft2(sfft.rfft2(images) * ctfs, s=(box, box)).astype(np.float32)


def noise_sigma(spec: ParticleSpec, molecules: list[Molecule], seed: int, n_cal: int = 128) -> float:
    """Noise SD per pixel giving ``spec.snr`` (see the module docstring), from calibration particles.

    The calibration particles are drawn like the data set's (poses, classes, B
    envelopes) but each with its own defocus, so they sample the defocus range.
    """
    cal = ParticleSpec(**{**asdict(spec), "n": n_cal, "junk_fraction": 0.0, "particles_per_micrograph": 1})
    truth = draw_truth(cal, int(seed) + 7919)
    signal = apply_ctf(clean_projections(cal, truth, molecules), ctfs_for(cal, truth))
    return float(np.sqrt(signal.var(axis=(1, 2)).mean() / spec.snr))


def render_chunk(spec, truth_rows, molecules, sigma, filt, rng, parts: bool = False):
    """Final images of some rows: CTF · projection + noise (float32); ``parts`` also returns (signal, noise)."""
    clean = clean_projections(spec, truth_rows, molecules, rng)
    signal = apply_ctf(clean, ctfs_for(spec, truth_rows))
    edges = np.flatnonzero(truth_rows["rlnSpaJunkKind"].to_numpy() == 3)
    if len(edges):
        signal[edges] += edge_signals(spec, truth_rows.iloc[edges], molecules, rng)
    noise = coloured_noise(rng, len(truth_rows), spec.box, filt) * np.float32(sigma)
    images = signal + noise
    return (images, signal, noise) if parts else images


@dataclass
class SimulatedParticles:
    """Paths written by :func:`simulate_particles`."""

    particles_star: Path
    stack: Path
    truth_star: Path
    maps: list[Path] = field(default_factory=list)
    noise_sigma: float = 0.0


def simulate_particles(
    output_dir, spec: ParticleSpec, seed: int = 0, *, provenance: dict | None = None, workers: int = 1,
    progress=None,
) -> SimulatedParticles:
    """Simulate a particle data set into ``output_dir`` (see the module docstring for the files).

    Images are rendered and written chunk by chunk (``CHUNK`` images each, on
    ``workers`` threads); memory stays at a few chunks.  Every file appears at
    its final path only when complete; the STAR files are written last.
    Same ``seed`` and ``spec`` → identical images, whatever ``workers``.
    ``progress(done, total)`` (images) after each chunk is written.
    """
    from spa.io.atomic import atomic_path  # noqa: PLC0415
    from spa.io.star import write_particles  # noqa: PLC0415
    from spa.io.zarrstack import create_stack, write_images  # noqa: PLC0415

    out = Path(output_dir)
    molecules = molecules_for(spec, seed)  # first: a bad symmetry fails before anything is written
    (out / "truth").mkdir(parents=True, exist_ok=True)
    truth = draw_truth(spec, seed)
    sigma = noise_sigma(spec, molecules, seed)
    filt = noise_filter(spec.box, spec.pixel_size, spec.noise_white_fraction)

    maps = []
    for k, mol in enumerate(molecules, start=1):
        path = out / "truth" / f"class{k:03d}.mrc"
        write_map(path, render_map(mol, spec.box, spec.pixel_size), spec.pixel_size, provenance)
        write_pdb(out / "truth" / f"class{k:03d}.pdb", mol)
        maps.append(path)

    starts = list(range(0, spec.n, CHUNK))

    def task(c: int) -> np.ndarray:
        rows = truth.iloc[starts[c] : starts[c] + CHUNK]
        return render_chunk(spec, rows, molecules, sigma, filt, np.random.default_rng([int(seed), 2, c]))

    stack = out / "particles.zarr"
    with atomic_path(stack) as tmp:
        create_stack(tmp, spec.box, spec.n, chunk=CHUNK, pixel_size=spec.pixel_size, provenance=provenance)
        workers = max(1, int(workers))
        with ThreadPoolExecutor(workers) as pool:
            # keep at most 2 chunks per worker in flight, so memory stays bounded
            window = 2 * workers
            futures = {c: pool.submit(task, c) for c in range(min(window, len(starts)))}
            for c in range(len(starts)):
                images = futures.pop(c).result()
                nxt = c + window
                if nxt < len(starts):
                    futures[nxt] = pool.submit(task, nxt)
                write_images(tmp, starts[c], images)
                if progress:
                    progress(min(starts[c] + CHUNK, spec.n), spec.n)

    optics = optics_table(spec)
    pipeline_cols = ["rlnImageName", "rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
                     "rlnOpticsGroup", "rlnRandomSubset"]
    truth_out = truth.copy()
    truth_out["rlnImageName"] = [name.replace("@", "@../", 1) for name in truth["rlnImageName"]]
    write_particles(out / "truth" / "particles.star", truth_out, optics, provenance)
    write_particles(out / "particles.star", truth[pipeline_cols], optics, provenance)
    return SimulatedParticles(out / "particles.star", stack, out / "truth" / "particles.star", maps, sigma)


def read_stack(path: str | os.PathLike) -> np.ndarray:
    """All images of a simulated stack (for tests and small data)."""
    from spa.io.zarrstack import open_stack  # noqa: PLC0415

    return np.asarray(open_stack(path)[:])
