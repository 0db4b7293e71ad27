"""What an extraction will do, before any pixel is read: one job per micrograph with its kept particles.

The plan reads the micrographs STAR, the coordinates (RELION's ``autopick.star``
index of per-micrograph coordinate STARs, or — for re-extraction — a particles
STAR) and each micrograph's MRC *header* (its size: which boxes cross an edge;
a missing, truncated or non-MRC micrograph fails here, before anything is
written).  Each :class:`MicrographJob` carries the output rows of its kept
particles (everything but rlnImageName), so the number of particles of every
micrograph, and so each particle's place in the output stack, is known
up front.

Re-extraction with recentring (as RELION's re-extract with "recenter"): a
particle whose refined offset is rlnOriginXAngst/YAngst has its centre at
box centre − origin (CONVENTIONS.md), i.e. at

    x_new = rlnCoordinateX − rlnOriginXAngst / micrograph pixel size   (likewise y)

on the micrograph.  The box is cut around the nearest pixel, rint(x_new); the
new rlnCoordinateX/Y are x_new, y_new and the new origins hold only what
rounding left, (rint(x_new) − x_new) × micrograph pixel size (Å, at most half a
micrograph pixel; 0 for whole-pixel shifts), so no refined sub-pixel offset
is lost.  The particle keeps its other columns (angles, class, half set) and
its own CTF columns when it has them (per-particle defocus), else gets its
micrograph's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from spa.errors import SpaInputError
from spa.extraction.extract import ExtractOptions, inside

#: CTF columns copied from a micrograph to its particles (Å, Å, °, °, Å², Å, score)
CTF_FROM_MICROGRAPH = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor",
                       "rlnCtfMaxResolution", "rlnCtfFigureOfMerit")
DEFOCUS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")


@dataclass
class MicrographJob:
    """One micrograph's share of an extraction (picklable: a Dask task carries it)."""

    index: int  # row in the micrographs STAR (with the seed: this micrograph's random numbers)
    name: str  # rlnMicrographName
    path: str  # the micrograph file, absolute
    pixel_size: float  # Å, the micrograph's
    group: int  # rlnOpticsGroup
    table: pd.DataFrame  # output rows of the kept particles (no rlnImageName)
    dropped: int  # coordinates whose box crosses the micrograph's edge
    key: str = ""  # digest of everything that decides this micrograph's images
    ctf: dict | None = field(default=None, repr=False)  # per kept particle, for phase flipping

    @property
    def n(self) -> int:
        return len(self.table)

    @property
    def x(self) -> np.ndarray:
        return self.table["rlnCoordinateX"].to_numpy(np.float64)

    @property
    def y(self) -> np.ndarray:
        return self.table["rlnCoordinateY"].to_numpy(np.float64)


def coordinate_files(index_path) -> dict[str, Path]:
    """rlnMicrographName → coordinate STAR (absolute) from RELION's ``autopick.star``."""
    from spa.io.images import resolve_image_path
    from spa.io.star import read_star

    blocks = read_star(index_path)
    table = next((t for t in blocks.values() if isinstance(t, pd.DataFrame) and
                  {"rlnMicrographName", "rlnMicrographCoordinates"} <= set(t.columns)), None)
    if table is None:
        raise SpaInputError(index_path, "no rlnMicrographName/rlnMicrographCoordinates table (RELION autopick.star)")
    out = {}
    for name, coords in zip(table.rlnMicrographName.astype(str), table.rlnMicrographCoordinates.astype(str)):
        path = resolve_image_path(coords, index_path)
        if path is None:
            raise SpaInputError(index_path, f"coordinate file {coords} not found")
        out[name] = path
    return out


def _checked_coordinates(path) -> pd.DataFrame:
    """A coordinate STAR's table with finite numeric rlnCoordinateX/Y (else an error naming the file)."""
    from spa.picking.coordinates import read_coordinates

    picks = read_coordinates(path)
    for col in ("rlnCoordinateX", "rlnCoordinateY"):
        values = pd.to_numeric(picks[col], errors="coerce").to_numpy(np.float64)
        if not np.isfinite(values).all():
            row = int(np.flatnonzero(~np.isfinite(values))[0]) + 1
            raise SpaInputError(path, f"{col} is not a finite number at row {row} ({picks[col].iloc[row - 1]!r})")
        picks[col] = values
    return picks


def _micrograph_shape(path: Path) -> tuple[int, int]:
    from spa.io.mrc import read_mrc_header

    header = read_mrc_header(path)
    if len(header.shape) != 2:
        raise SpaInputError(path, f"a micrograph must be one 2D image, found shape {header.shape}")
    return header.shape


def _file_identity(path: Path) -> list:
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def _digest(*parts) -> str:
    from spa.em.run import table_digest

    h = hashlib.sha256()
    for p in parts:
        h.update(table_digest(p).encode() if isinstance(p, pd.DataFrame) else
                 json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def _micrograph_ctf(row: pd.Series, table: pd.DataFrame) -> dict | None:
    """Per-particle CTF arrays of ``table`` (its own columns, which came from the micrograph or the particle)."""
    if not all(c in table for c in DEFOCUS):
        return None
    n = len(table)
    return {"defocus_u": table["rlnDefocusU"].to_numpy(np.float64),
            "defocus_v": table["rlnDefocusV"].to_numpy(np.float64),
            "defocus_angle": table["rlnDefocusAngle"].to_numpy(np.float64),
            "phase_shift": table["rlnPhaseShift"].to_numpy(np.float64) if "rlnPhaseShift" in table else np.zeros(n),
            "voltage": float(row["rlnVoltage"]), "cs": float(row["rlnSphericalAberration"]),
            "amplitude_contrast": float(row["rlnAmplitudeContrast"])}


def _reextract_sources(star, mics: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """rlnMicrographName → that micrograph's particles (input order), recentred (module docstring)."""
    from spa.io.star import read_particles

    particles, optics = read_particles(star, require=("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"))
    names = particles["rlnMicrographName"].astype(str)
    known = set(mics["rlnMicrographName"].astype(str))
    unknown = ~names.isin(known)
    if unknown.any():
        raise SpaInputError(star, f"{int(unknown.sum())} particles lie on micrographs absent from the micrographs "
                                  f"STAR (first: {names[unknown].iloc[0]})")
    pixel = names.map(dict(zip(mics["rlnMicrographName"].astype(str),
                                mics["rlnMicrographPixelSize"].astype(float)))).to_numpy(np.float64)
    drop = [c for c in optics.columns if c != "rlnOpticsGroup" and c in particles.columns]
    drop += [c for c in ("rlnImageName", "rlnOpticsGroup") if c in particles.columns]
    table = particles.drop(columns=drop)
    for axis in ("X", "Y"):
        origin = table.pop(f"rlnOrigin{axis}Angst").to_numpy(np.float64) if f"rlnOrigin{axis}Angst" in table \
            else np.zeros(len(table))
        new = table[f"rlnCoordinate{axis}"].to_numpy(np.float64) - origin / pixel
        table[f"rlnCoordinate{axis}"] = new
        table[f"rlnOrigin{axis}Angst"] = (np.rint(new) - new) * pixel
    return {name: rows.reset_index(drop=True) for name, rows in table.groupby(names.to_numpy(), sort=False)}


def plan_extraction(micrographs_star, opts: ExtractOptions, *, coordinates=None, reextract=None):
    """(jobs, micrograph optics) for every micrograph of ``micrographs_star`` with particles, in STAR order.

    Exactly one of ``coordinates`` (an ``autopick.star`` index) and ``reextract`` (a particles STAR with
    rlnMicrographName, rlnCoordinateX/Y and optionally rlnOriginX/YAngst) gives the particles.  Raises
    :class:`SpaInputError` naming the file for a missing or unreadable micrograph, coordinate file or
    column, non-finite coordinates, or ``opts.phase_flip`` without the micrographs' CTF.
    """
    from spa.io.images import resolve_image_path
    from spa.io.star import read_micrographs

    if (coordinates is None) == (reextract is None):
        raise ValueError("give coordinates or a particles STAR to re-extract, not both")
    mics, mic_optics = read_micrographs(micrographs_star)
    if opts.phase_flip and not all(c in mics for c in DEFOCUS):
        raise SpaInputError(micrographs_star, "phase flipping needs each micrograph's CTF (rlnDefocusU/V/Angle): "
                                              "give the CTF stage's micrographs STAR")
    sources = _reextract_sources(reextract, mics) if reextract is not None else coordinate_files(coordinates)
    jobs = []
    for i, row in mics.iterrows():
        name = str(row["rlnMicrographName"])
        if name not in sources:
            continue  # no particles on this micrograph
        if reextract is not None:
            table, origin = sources[name], str(reextract)
        else:
            table, origin = _checked_coordinates(sources[name]), str(sources[name])
        if not len(table):
            continue
        path = resolve_image_path(name, micrographs_star)
        if path is None:
            raise SpaInputError(micrographs_star, f"micrograph {name} not found")
        shape = _micrograph_shape(path)
        keep = inside(shape, table["rlnCoordinateX"], table["rlnCoordinateY"], opts.box)
        kept = table[keep].reset_index(drop=True)
        group = int(row["rlnOpticsGroup"]) if "rlnOpticsGroup" in row else 1
        kept["rlnMicrographName"] = name
        kept["rlnOpticsGroup"] = group
        own_ctf = all(c in kept for c in DEFOCUS)  # a re-extracted particle's own (refined) CTF wins
        for col in CTF_FROM_MICROGRAPH:
            if col in row and not (own_ctf and col in kept):
                kept[col] = row[col]
        if opts.phase_flip and not all(c in kept for c in DEFOCUS):
            raise SpaInputError(origin, f"phase flipping needs the CTF of the particles on {name}")
        job = MicrographJob(int(i), name, str(path), float(row["rlnMicrographPixelSize"]), group, kept,
                            int((~keep).sum()), ctf=_micrograph_ctf(row, kept) if opts.phase_flip else None)
        job.key = _digest(name, int(i), _file_identity(path), kept)
        jobs.append(job)
    return jobs, mic_optics


def output_optics(mic_optics: pd.DataFrame, jobs: list[MicrographJob], opts: ExtractOptions) -> pd.DataFrame:
    """Particle optics groups from the micrographs' (pixel size × box / output box; image size; whether the
    images are phase-flipped)."""
    pixels = {}
    for job in jobs:
        pixels.setdefault(job.group, job.pixel_size)
    rows = []
    for group, pixel in sorted(pixels.items()):
        base = mic_optics[mic_optics.rlnOpticsGroup == group]
        base = base.iloc[0].to_dict() if len(base) else {"rlnOpticsGroup": group}
        base.pop("rlnMicrographPixelSize", None)
        base.setdefault("rlnOpticsGroupName", f"opticsGroup{group}")
        base.setdefault("rlnMicrographOriginalPixelSize", pixel)
        base.update({"rlnOpticsGroup": group, "rlnImagePixelSize": pixel * opts.box / opts.output_box,
                     "rlnImageSize": opts.output_box, "rlnImageDimensionality": 2,
                     "rlnCtfDataArePhaseFlipped": int(opts.phase_flip)})
        rows.append(base)
    return pd.DataFrame(rows)


def total_dropped(jobs) -> int:
    return int(sum(j.dropped for j in jobs))


def common_key(opts: ExtractOptions, seed: int, **extra) -> str:
    """Digest of what every micrograph's images depend on besides the micrograph: options, seed, spa's code."""
    from spa.em.run import code_digest

    return _digest(opts.as_dict(), int(seed), code_digest(), extra)
