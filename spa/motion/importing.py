"""Import: movies (or motion-corrected micrographs) found by globs into RELION STAR files with optics groups.

Each movie glob is one optics group with its acquisition parameters: pixel
size (Å, of the movie as recorded: the super-resolution pixel for
super-resolution movies), voltage (kV), spherical aberration (mm), amplitude
contrast, dose per frame (e⁻/Å²), pre-exposure (e⁻/Å²) and optionally a gain
reference (MRC or TIFF) with RELION's rotation and flip (see
:mod:`spa.io.movies`).  The gain is oriented, checked against the group's
movie shape and written as ``gain/<group>.mrc`` (float32), which the movies
table names.

``movies.star`` (RELION's Import layout): ``data_optics`` (rlnOpticsGroupName,
rlnOpticsGroup, rlnMicrographOriginalPixelSize, rlnVoltage,
rlnSphericalAberration, rlnAmplitudeContrast, and spa's additions
rlnMicrographDoseRate, rlnMicrographPreExposure, rlnMicrographGainName,
rlnImageSizeZ = frames per movie) and ``data_movies`` (rlnMicrographMovieName,
rlnOpticsGroup).  Movie names are written as found by the glob (relative to
the working directory, as RELION writes them).

Each movie's header is read: a movie that cannot be read (truncated, not a
movie, EER) or whose frame count or frame size differs from most of its
group goes to ``movies_rejected.star`` with the reason (rlnSpaRejectReason);
the others are imported.  A group with no readable movie, or a gain that
does not fit, is an error.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from spa.errors import SpaInputError
from spa.io.movies import check_gain_shape, movie_info, orient_gain, read_gain

#: optics defaults (RELION's Import defaults where it has them)
DEFAULTS = {"pixel_size": None, "voltage": 300.0, "cs": 2.7, "amplitude_contrast": 0.1, "dose_per_frame": None,
            "pre_exposure": 0.0, "gain": None, "gain_rotation": 0, "gain_flip": 0}


@dataclass
class Group:
    """One optics group: a glob and its acquisition parameters (lengths Å, voltage kV, Cs mm, dose e⁻/Å²)."""

    glob: str
    name: str
    pixel_size: float
    voltage: float
    cs: float
    amplitude_contrast: float
    dose_per_frame: float | None
    pre_exposure: float = 0.0
    gain: str | None = None
    gain_rotation: int = 0
    gain_flip: int = 0


def make_groups(entries, defaults: dict, where=None) -> list[Group]:
    """Groups from ``entries`` (a glob, or a list of globs and/or mappings ``{glob: ..., pixel_size: ...}``)
    with ``defaults`` (the import section) filling what an entry leaves out."""
    if isinstance(entries, (str, dict)):
        entries = [entries]
    groups = []
    for i, entry in enumerate(entries or [], start=1):
        values = {**DEFAULTS, **{k: v for k, v in (defaults or {}).items() if v is not None}}
        if isinstance(entry, dict):
            values.update({k: v for k, v in entry.items() if v is not None})
            pattern = entry.get("glob")
        else:
            pattern = entry
        if not pattern:
            raise SpaInputError(where, f"movie group {i} has no glob")
        if not values.get("pixel_size") or float(values["pixel_size"]) <= 0:
            raise SpaInputError(where, f"movie group {i} ({pattern}): give the pixel size in Å (import.pixel_size)")
        values["name"] = values.get("name") or f"opticsGroup{i}"
        values["glob"] = pattern
        known = {k: values[k] for k in Group.__dataclass_fields__ if k in values}
        groups.append(Group(**known))
    if not groups:
        raise SpaInputError(where, "no movies given (a glob, e.g. 'Movies/*.tif')")
    return groups


def expand(pattern: str, where=None) -> list[str]:
    """The files a glob matches, sorted (``**`` recurses); none is an error naming the glob."""
    files = sorted(f for f in glob.glob(pattern, recursive=True) if Path(f).is_file())
    if not files:
        raise SpaInputError(where or pattern, f"the glob {pattern!r} matches no file")
    return files


def _majority(values: list) -> object:
    uniq, counts = np.unique(np.array(values, dtype=object).astype(str), return_counts=True)
    return uniq[np.argmax(counts)]


def import_movies(groups: list[Group], output_dir, provenance=None) -> tuple[Path, int, int]:
    """Write ``movies.star`` (+ ``movies_rejected.star``, ``gain/``) in ``output_dir``; returns
    (STAR path, movies imported, movies rejected)."""
    from spa.io.mrc import write_mrc  # noqa: PLC0415
    from spa.io.star import write_optics_table, write_star  # noqa: PLC0415

    out = Path(output_dir)
    rows, rejected, optics = [], [], []
    for number, group in enumerate(groups, start=1):
        found = []
        for name in expand(group.glob):
            try:
                info = movie_info(name)
                found.append((name, info))
            except SpaInputError as exc:
                rejected.append((name, number, exc.problem))
        if not found:
            raise SpaInputError(group.glob, "no readable movie: " + "; ".join(r[2] for r in rejected[-3:]))
        shape = _majority([f"{i.n_frames}x{i.ny}x{i.nx}" for _, i in found])
        n_frames, ny, nx = (int(v) for v in str(shape).split("x"))
        kept = []
        for name, info in found:
            if (info.n_frames, info.ny, info.nx) == (n_frames, ny, nx):
                kept.append(name)
            else:
                rejected.append((name, number, f"{info.n_frames} frames of {info.ny} x {info.nx} px, most movies of "
                                               f"its group have {n_frames} of {ny} x {nx}"))
        gain_name = ""
        if group.gain:
            gain = orient_gain(read_gain(group.gain), group.gain_rotation, group.gain_flip)
            check_gain_shape(group.gain, gain.shape, kept[0], (ny, nx), group.gain_rotation)
            gain_path = out / "gain" / f"{group.name}.mrc"
            write_mrc(gain_path, gain, group.pixel_size, provenance)
            gain_name = str(gain_path)
        optics.append({
            "rlnOpticsGroupName": group.name, "rlnOpticsGroup": number,
            "rlnMicrographOriginalPixelSize": float(group.pixel_size), "rlnVoltage": float(group.voltage),
            "rlnSphericalAberration": float(group.cs), "rlnAmplitudeContrast": float(group.amplitude_contrast),
            "rlnMicrographDoseRate": float(group.dose_per_frame or 0.0),
            "rlnMicrographPreExposure": float(group.pre_exposure or 0.0),
            "rlnMicrographGainName": gain_name or "None", "rlnImageSizeZ": n_frames,
        })
        rows += [(name, number) for name in kept]
    star = out / "movies.star"
    table = pd.DataFrame(rows, columns=["rlnMicrographMovieName", "rlnOpticsGroup"])
    write_optics_table(star, "movies", table, pd.DataFrame(optics), provenance)
    rej_path = out / "movies_rejected.star"
    rej = pd.DataFrame(rejected, columns=["rlnMicrographMovieName", "rlnOpticsGroup", "rlnSpaRejectReason"])
    write_star(rej_path, {"movies": rej}, provenance)
    return star, len(rows), len(rejected)


def import_micrographs(source: str, group: Group | None, output_dir, provenance=None) -> tuple[Path, int]:
    """``micrographs.star`` from a STAR file (checked and copied with its optics) or from a glob of MRC
    micrographs (one optics group from ``group``; pixel size from it, else from the MRC headers)."""
    from spa.io.mrc import read_mrc_header  # noqa: PLC0415
    from spa.io.star import read_micrographs, write_micrographs  # noqa: PLC0415

    out = Path(output_dir) / "micrographs.star"
    if source.endswith(".star"):
        table, optics = read_micrographs(source)
        write_micrographs(out, table, optics, provenance)
        return out, len(table)
    names = expand(source)
    pixel = group.pixel_size if group and group.pixel_size else None
    for name in names:
        header = read_mrc_header(name)
        if len(header.shape) != 2:
            raise SpaInputError(name, f"a micrograph is one image; this file has shape {header.shape}")
        pixel = pixel or header.pixel_size
    g = group or Group(source, "opticsGroup1", pixel, 300.0, 2.7, 0.1, None)
    optics = pd.DataFrame({
        "rlnOpticsGroupName": [g.name], "rlnOpticsGroup": [1], "rlnMicrographOriginalPixelSize": [float(pixel)],
        "rlnVoltage": [float(g.voltage)], "rlnSphericalAberration": [float(g.cs)],
        "rlnAmplitudeContrast": [float(g.amplitude_contrast)], "rlnMicrographPixelSize": [float(pixel)],
    })
    write_micrographs(out, pd.DataFrame({"rlnMicrographName": names, "rlnOpticsGroup": 1}), optics, provenance)
    return out, len(names)
