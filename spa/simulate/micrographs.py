"""Simulated micrographs: particles at known positions in realistic ice, as on the microscope.

Image formation (weak-phase object, relative intensity, per micrograph):

    I(x) = 1 + c(x),   c = −κ · (CTF ⊛ φ)(x) − a(x)

* φ — projected specimen potential (positive): the particles (analytic
  projections of the pseudo-atoms at random poses, classes and non-overlapping
  integer pixel positions), a 1/f-like amorphous-ice texture, optionally a
  carbon film beyond a sharp, slightly curved hole edge, and contaminants
  (large blobs);
* CTF — :func:`spa.ctf.ctf_2d` with the micrograph's astigmatic defocus
  (and the envelope exp(−B·k²/4) of ``bfactor``, default none),
  applied to the whole micrograph (so Thon rings are visible in its spectrum);
* κ — contrast scale, set so that a particle's SNR (variance of its
  CTF-modulated signal over its extraction box / shot-noise variance) equals
  ``snr``;
* a — amplitude contrast that no CTF modulates: smooth ice-thickness changes,
  the carbon film, and very dark contaminants.

The minus sign makes protein DARK on the raw micrograph, as recorded
(extraction inverts it: particle images are white on black).  The written
micrograph is the dose-fractionated sum a motion correction would give:
Poisson counts with mean ``dose`` · pixel² · I(x), float32.

Files (under the output directory):

* ``micrographs/micNNNN.mrc`` and ``micrographs.star`` (RELION 3.1: optics +
  data_micrographs with rlnMicrographName);
* ``truth/micrographs_ctf.star`` — the same rows + rlnDefocusU/V/Angle (Å, °)
  and rlnSpaCarbon (1 = carbon edge present), rlnSpaNumParticles;
* ``truth/coordinates.star`` (data_coordinate_files: rlnMicrographName →
  rlnMicrographCoordinates) and ``truth/coordinates/micNNNN.star`` with
  rlnCoordinateX = column, rlnCoordinateY = row (pixel of the particle centre,
  0-based like RELION's extraction centre), the true rlnAngleRot/Tilt/Psi
  and rlnClassNumber;
* ``truth/class00k.mrc`` — the true maps at box ``particle_box`` and the
  micrograph pixel size;
* ``truth/regions/micNNNN.mrc`` — label map (float16 MRC) of the regions a cleaning
  step should mask (:data:`REGION_LABELS`: 0 clean ice, 1 carbon film,
  2 contaminant, 3 aggregate), same shape as the micrograph.

Aggregates (``aggregates``: mean number per micrograph, default 0) are compact
clumps of 8-16 overlapping copies of the particle at random poses, spread
0.6 radii (SD) around a centre: dense protein at particle scale that a
picker finds but that no one wants.  They are not in the truth coordinates.
They draw from their own random stream, so with ``aggregates=0`` every other
output is the same, byte for byte, as without the option.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft as sfft

from spa.ctf import ctf_2d
from spa.geometry.euler import euler_to_matrix
from spa.simulate.molecule import Molecule, make_molecule
from spa.simulate.noise import pink_field, smooth_field
from spa.simulate.particles import uniform_angles
from spa.simulate.projection import project_molecule


@dataclass
class MicrographSpec:
    """Options of simulated micrographs (lengths in Å unless noted)."""

    n: int = 4
    size: int = 1024  # px (square micrographs)
    pixel_size: float = 1.0
    diameter: float = 120.0  # particle diameter
    particles_per_micrograph: int | None = None  # None: fill ~ 35 % of the free area
    snr: float = 0.05  # particle SNR against shot noise (see module docstring)
    dose: float = 40.0  # e⁻/Å², total
    defocus_min: float = 8000.0
    defocus_max: float = 25000.0
    astigmatism: float = 500.0  # largest U − V
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1
    bfactor: float = 0.0  # Å²: envelope exp(−B·k²/4) of the CTF (beam coherence, drift, detector), 0 = none
    ice_texture: float = 1.0  # SD of the ice texture relative to a particle's projection SD
    ice_gradient: float = 0.05  # SD of the smooth relative intensity change from ice thickness
    carbon_fraction: float = 0.5  # chance that a micrograph shows a carbon edge
    contaminants: float = 0.7  # mean number of contaminant blobs per micrograph
    aggregates: float = 0.0  # mean number of particle aggregates per micrograph
    conformations: int = 1
    symmetry: str = "C1"
    n_domains: int = 3

    def __post_init__(self):
        checks = [
            (self.n >= 1, "number of micrographs must be ≥ 1"),
            (self.size >= 64, "micrograph size must be ≥ 64 px"),
            (self.pixel_size > 0, "pixel size must be > 0 Å"),
            (self.diameter > 0, "particle diameter must be > 0 Å"),
            (self.particle_box < self.size // 2, "particles too large for the micrograph"),
            (self.snr > 0 and self.dose > 0, "SNR and dose must be > 0"),
            (0 < self.defocus_min <= self.defocus_max, "need 0 < defocus min ≤ defocus max (Å)"),
            (self.conformations >= 1, "conformations must be ≥ 1"),
            (self.aggregates >= 0, "mean number of aggregates must be ≥ 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    @property
    def particle_box(self) -> int:
        """Box (px, even) that holds a particle with margin: the extraction box of the truth maps."""
        b = int(np.ceil(1.4 * self.diameter / self.pixel_size)) + 8
        return b + (b % 2)


@dataclass
class Scene:
    """The noise-free relative contrast of one micrograph and its truth."""

    contrast: np.ndarray  # (size, size) float32: c(x), I = 1 + c
    coordinates: pd.DataFrame  # rlnCoordinateX/Y (px), poses, rlnClassNumber
    defocus: tuple[float, float, float]  # U, V (Å), angle (°)
    carbon: bool
    regions: np.ndarray | None = None  # (size, size) uint8 label map, see REGION_LABELS


# labels of truth/regions/<micrograph>.mrc
REGION_LABELS = {0: "clean", 1: "carbon", 2: "contaminant", 3: "aggregate"}


def molecules_for(spec: MicrographSpec, seed: int) -> list[Molecule]:
    return [
        make_molecule(spec.diameter, seed=seed, n_domains=spec.n_domains, symmetry=spec.symmetry, conformation=k)
        for k in range(1, spec.conformations + 1)
    ]


def _soft_disk(shape, centre, radius: float, edge: float) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    d = np.sqrt((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) - radius
    return np.clip(0.5 - d / edge, 0.0, 1.0)


def _carbon_mask(rng, size: int) -> np.ndarray:
    """1 on carbon, 0 in the hole: beyond a large circle's edge that crosses the micrograph."""
    theta = rng.uniform(0, 2 * np.pi)
    n = np.array([np.sin(theta), np.cos(theta)])  # (row, col) direction towards the carbon
    r_hole = rng.uniform(1.5, 3.0) * size
    e = rng.uniform(0.05, 0.3) * size  # distance from the micrograph centre to the edge
    centre = np.array([size / 2, size / 2]) - n * (r_hole - e)
    return 1.0 - _soft_disk((size, size), centre, r_hole, 2.0)


def _contaminants(rng, size: int, count: int) -> np.ndarray:
    out = np.zeros((size, size))
    for _ in range(count):
        c = rng.uniform(0, size, 2)
        out = np.maximum(out, _soft_disk((size, size), c, rng.uniform(0.03, 0.08) * size, 6.0))
    return out


def _aggregates(rng, size: int, box: int, radius_px: float, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres (n, 2) int (row, col) of the particles of ``count`` aggregates and the aggregates' region (bool):
    the union of the member discs (particle radius)."""
    members = []
    region = np.zeros((size, size), bool)
    lo, hi = box // 2 + 1, size - box // 2 - 1
    for _ in range(count):
        centre = rng.uniform(lo + radius_px, hi - radius_px, 2)
        k = int(rng.integers(8, 17))
        pts = np.clip(np.rint(centre + rng.normal(0.0, 0.6 * radius_px, (k, 2))), lo, hi - 1).astype(np.int64)
        members.append(pts)
        for r, c in pts:
            region |= _soft_disk((size, size), (r, c), radius_px, 1.0) > 0.5
    pts = np.concatenate(members) if members else np.zeros((0, 2), np.int64)
    return pts, region


def place_particles(rng, forbidden: np.ndarray, size: int, box: int, min_dist: float, target: int) -> np.ndarray:
    """Integer (row, col) centres, ≥ ``min_dist`` px apart, a half box from the edges, off ``forbidden``."""
    lo, hi = box // 2 + 1, size - box // 2 - 1
    kept: list[np.ndarray] = []
    for _ in range(50 * max(target, 1)):
        if len(kept) >= target:
            break
        p = rng.integers(lo, hi, 2)
        if forbidden[p[0], p[1]]:
            continue
        if kept and np.min(np.sum((np.array(kept) - p) ** 2, axis=1)) < min_dist**2:
            continue
        kept.append(p)
    return np.array(kept, dtype=np.int64).reshape(-1, 2)


def _ctf(spec, size, defocus) -> np.ndarray:
    return ctf_2d(size, spec.pixel_size, defocus[0], defocus[1], defocus[2], spec.voltage, spec.cs, spec.amplitude_contrast,
                  bfactor=spec.bfactor)


def contrast_scale(spec: MicrographSpec, molecules: list[Molecule], seed: int) -> tuple[float, float]:
    """(κ, projection SD): κ gives particle SNR ``spec.snr`` against the shot noise of ``spec.dose``."""
    rng = np.random.default_rng([int(seed), 5])
    box = spec.particle_box
    ang = uniform_angles(rng, 16)
    proj = project_molecule(molecules[0], euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2]), box, spec.pixel_size)
    mid = 0.5 * (spec.defocus_min + spec.defocus_max)
    sig = sfft.irfft2(sfft.rfft2(proj) * _ctf(spec, box, (mid, mid, 0.0)), s=(box, box))
    var_p = float(sig.var(axis=(1, 2)).mean())
    shot_var = 1.0 / (spec.dose * spec.pixel_size**2)  # relative intensity variance per pixel
    return float(np.sqrt(spec.snr * shot_var / var_p)), float(proj.std(axis=(1, 2)).mean())


def make_scene(spec: MicrographSpec, index: int, seed: int, molecules: list[Molecule], kappa: float, proj_sd: float) -> Scene:
    """Noise-free contrast and truth of micrograph ``index`` (deterministic from seed and index)."""
    rng = np.random.default_rng([int(seed), 3, int(index)])
    size, p = spec.size, spec.pixel_size
    mean_df = rng.uniform(spec.defocus_min, spec.defocus_max)
    ast = rng.uniform(0, spec.astigmatism)
    defocus = (mean_df + ast / 2, mean_df - ast / 2, rng.uniform(0, 180))
    carbon = rng.uniform() < spec.carbon_fraction
    carbon_mask = _carbon_mask(rng, size) if carbon else np.zeros((size, size))
    blobs = _contaminants(rng, size, int(rng.poisson(spec.contaminants)))

    box = spec.particle_box
    radius_px = 0.5 * spec.diameter / p
    clumps = np.zeros((0, 2), np.int64)
    clump_region = np.zeros((size, size), bool)
    if spec.aggregates > 0:  # own stream: with none, the scene is what it was without the option
        arng = np.random.default_rng([int(seed), 9, int(index)])
        clumps, clump_region = _aggregates(arng, size, box, radius_px, int(arng.poisson(spec.aggregates)))
        c_ang = uniform_angles(arng, len(clumps))
    forbidden = (carbon_mask > 0.01) | (blobs > 0.01) | clump_region
    if forbidden.any():
        from scipy.ndimage import binary_dilation  # noqa: PLC0415

        step = max(1, int(radius_px) // 8)
        forbidden = binary_dilation(forbidden, iterations=8 * step)  # keep a particle radius away
    target = spec.particles_per_micrograph
    if target is None:
        free = (1 - forbidden.mean()) * (size - box) ** 2
        target = int(0.35 * free / (np.pi * radius_px**2))
    centres = place_particles(rng, forbidden, size, box, 2.1 * radius_px, target)
    n = len(centres)
    ang = uniform_angles(rng, n)
    cls = rng.integers(1, spec.conformations + 1, n)

    phi = np.zeros((size, size), dtype=np.float32)
    A = euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2])
    for k, mol in enumerate(molecules, start=1):
        sel = np.flatnonzero(cls == k)
        for lo in range(0, len(sel), 64):
            part = sel[lo : lo + 64]
            proj = project_molecule(mol, A[part], box, p)
            for img, (r, c) in zip(proj, centres[part]):
                phi[r - box // 2 : r - box // 2 + box, c - box // 2 : c - box // 2 + box] += img
    if len(clumps):
        proj = project_molecule(molecules[0], euler_to_matrix(c_ang[:, 0], c_ang[:, 1], c_ang[:, 2]), box, p)
        for img, (r, c) in zip(proj, clumps):
            phi[r - box // 2 : r - box // 2 + box, c - box // 2 : c - box // 2 + box] += img
    phi += np.float32(spec.ice_texture * proj_sd) * pink_field(rng, (size, size), p).astype(np.float32)
    if carbon:
        phi += (carbon_mask * proj_sd * (3.0 + pink_field(rng, (size, size), p, 10.0))).astype(np.float32)
    phi += (blobs * 10.0 * proj_sd).astype(np.float32)
    amplitude = spec.ice_gradient * smooth_field(rng, (size, size), p, 0.3 * size * p) + 0.08 * carbon_mask + 0.6 * blobs
    spectrum = -kappa * sfft.rfft2(phi) * _ctf(spec, size, defocus) - sfft.rfft2(amplitude)
    # no energy at Nyquist (a detector's MTF is ~0 there): sub-pixel shifts of the
    # frames are then exactly invertible, so aligned frames sum to this contrast
    if size % 2 == 0:
        spectrum[size // 2, :] = 0.0
        spectrum[:, size // 2] = 0.0
    contrast = sfft.irfft2(spectrum, s=(size, size)).astype(np.float32)
    coords = pd.DataFrame(
        {
            "rlnCoordinateX": centres[:, 1].astype(np.float64),
            "rlnCoordinateY": centres[:, 0].astype(np.float64),
            "rlnAngleRot": ang[:, 0],
            "rlnAngleTilt": ang[:, 1],
            "rlnAnglePsi": ang[:, 2],
            "rlnClassNumber": cls.astype(np.int64),
        }
    )
    regions = np.zeros((size, size), np.uint8)
    regions[carbon_mask > 0.5] = 1
    regions[clump_region] = 3
    regions[blobs > 0.5] = 2
    return Scene(contrast, coords, tuple(float(d) for d in defocus), bool(carbon), regions)


def record_counts(rng, contrast: np.ndarray, dose: float, pixel_size: float) -> np.ndarray:
    """Poisson counts with mean dose · pixel² · (1 + contrast), float32."""
    lam = np.clip(dose * pixel_size**2 * (1.0 + contrast.astype(np.float64)), 0.0, None)
    return rng.poisson(lam).astype(np.float32)


def optics_table(spec, original_pixel_size: float | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnMicrographOriginalPixelSize": [float(original_pixel_size or spec.pixel_size)],
            "rlnVoltage": [float(spec.voltage)],
            "rlnSphericalAberration": [float(spec.cs)],
            "rlnAmplitudeContrast": [float(spec.amplitude_contrast)],
            "rlnMicrographPixelSize": [float(spec.pixel_size)],
        }
    )


def write_truth(out: Path, spec, names: list[str], scenes_info: list[tuple], molecules, provenance,
                extra: dict | None = None, regions: list | None = None) -> None:
    """Coordinates per micrograph, their index, CTF truth and the class maps, under ``out/truth``.

    ``names`` are the rlnMicrographName of each scene; ``extra`` adds columns
    (e.g. rlnMicrographMovieName) to ``truth/micrographs_ctf.star``; ``regions``
    (one uint8 label map per scene) go to ``truth/regions/<stem>.mrc``.
    """
    from spa.io.mrc import write_mrc  # noqa: PLC0415
    from spa.io.star import write_micrographs, write_star  # noqa: PLC0415
    from spa.simulate.density import render_map, write_map  # noqa: PLC0415
    from spa.simulate.molecule import write_pdb  # noqa: PLC0415

    truth = out / "truth"
    rows = []
    coord_files = []
    for name, (coords, defocus, carbon) in zip(names, scenes_info):
        stem = Path(name).stem
        cfile = truth / "coordinates" / f"{stem}.star"
        write_star(cfile, {"": coords}, provenance)
        coord_files.append(f"truth/coordinates/{stem}.star")
        rows.append((name, 1, *defocus, int(carbon), len(coords)))
    table = pd.DataFrame(rows, columns=["rlnMicrographName", "rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
                                        "rlnSpaCarbon", "rlnSpaNumParticles"])
    for col, values in (extra or {}).items():
        table.insert(1, col, values)
    write_micrographs(truth / "micrographs_ctf.star", table, optics_table(spec), provenance)
    write_star(truth / "coordinates.star",
               {"coordinate_files": pd.DataFrame({"rlnMicrographName": names, "rlnMicrographCoordinates": coord_files})},
               provenance)
    for k, mol in enumerate(molecules, start=1):
        write_map(truth / f"class{k:03d}.mrc", render_map(mol, spec.particle_box, spec.pixel_size), spec.pixel_size, provenance)
        write_pdb(truth / f"class{k:03d}.pdb", mol)
    for name, labels in zip(names, regions or []):
        # small integers, exact in float16 (spa writes MRC as float32/float16 only)
        write_mrc(truth / "regions" / f"{Path(name).stem}.mrc", labels.astype(np.float16), spec.pixel_size, provenance)


def simulate_micrographs(output_dir, spec: MicrographSpec, seed: int = 0, *, provenance: dict | None = None,
                         progress=None) -> Path:
    """Write micrographs, ``micrographs.star`` and the truth (see the module docstring); returns the STAR path.
    ``progress(done, total)`` after each micrograph."""
    from spa.io.mrc import write_mrc  # noqa: PLC0415
    from spa.io.star import write_micrographs  # noqa: PLC0415

    out = Path(output_dir)
    molecules = molecules_for(spec, seed)
    kappa, proj_sd = contrast_scale(spec, molecules, seed)
    names, info, regions = [], [], []
    for m in range(spec.n):
        scene = make_scene(spec, m, seed, molecules, kappa, proj_sd)
        counts = record_counts(np.random.default_rng([int(seed), 4, m]), scene.contrast, spec.dose, spec.pixel_size)
        name = f"micrographs/mic{m + 1:04d}.mrc"
        write_mrc(out / name, counts, spec.pixel_size, provenance)
        names.append(name)
        info.append((scene.coordinates, scene.defocus, scene.carbon))
        regions.append(scene.regions)
        if progress:
            progress(m + 1, spec.n)
    write_truth(out, spec, names, info, molecules, provenance, regions=regions)
    star = out / "micrographs.star"
    write_micrographs(star, pd.DataFrame({"rlnMicrographName": names, "rlnOpticsGroup": 1}), optics_table(spec), provenance)
    return star
