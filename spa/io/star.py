"""STAR metadata files in RELION's layout: read with ``starfile``, written here.

A STAR file is a dict of blocks, keyed by the block name without ``data_``:
a loop block is a pandas DataFrame whose columns are RELION labels without
the leading underscore (``rlnDefocusU``); a simple (key-value) block, as in
``run_model.star``'s ``data_model_general``, is a plain dict.

Round trip: what :func:`write_star` writes, :func:`read_star` reads back
identically — same blocks, column order, values; integer columns stay int64,
float columns are float64 (floats are written in their shortest exact form,
not RELION's fixed ``%12.6f``, so nothing is lost), strings stay strings.

Particle and micrograph tables (:func:`read_particles`,
:func:`read_micrographs`) follow RELION 3.1: a ``data_optics`` block plus
``data_particles`` / ``data_micrographs``.  RELION 3.0 files (one block, the
optics given per row) are converted on reading, as RELION 3.1 does.  The
returned table has the optics columns merged into every row (looked up by
``rlnOpticsGroup``) so that code reads ``df.rlnImagePixelSize`` directly;
the writers drop those columns again.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from spa.errors import SpaInputError
from spa.io.atomic import atomic_path
from spa.provenance import star_comment

#: CTF columns a stage that models the CTF needs per particle (Å, Å, degrees).
CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
#: Pose columns of a refined particle (degrees, Å).
POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst")
#: Optics columns every optics group must define (RELION 3.1 writes them all).
OPTICS_REQUIRED = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")

# Labels RELION defines as strings: parsed as text even when a value looks
# like a number (a micrograph called "0001" must stay "0001").
STRING_COLUMNS = (
    "rlnImageName",
    "rlnImageOriginalName",
    "rlnReconstructImageName",
    "rlnMicrographName",
    "rlnMicrographNameNoDW",
    "rlnMicrographMovieName",
    "rlnMicrographGainName",
    "rlnMicrographDefectFile",
    "rlnMicrographMetadata",
    "rlnOpticsGroupName",
    "rlnGroupName",
    "rlnCtfImage",
    "rlnCtfPowerSpectrum",
    "rlnReferenceImage",
    "rlnMaskName",
    "rlnMtfFileName",
    "rlnStarFileMovieParticles",
    "rlnCoordinateFile",
    "rlnTomoName",
)

_NEEDS_QUOTES = re.compile(r"\s")


# --------------------------------------------------------------------------- generic STAR


def read_star(path: str | os.PathLike) -> dict[str, pd.DataFrame | dict]:
    """All blocks of a STAR file: ``{name: DataFrame (loop) or dict (simple block)}``.

    Raises :class:`SpaInputError` when the file is missing or cannot be parsed.
    """
    path = Path(path)
    if not path.exists():
        raise SpaInputError(path, "file not found")
    if path.is_dir():
        raise SpaInputError(path, "is a directory, expected a STAR file")
    try:
        blocks = starfile.read(path, always_dict=True, parse_as_string=list(STRING_COLUMNS))
    except Exception as exc:  # starfile/pandas raise many types for malformed text
        raise SpaInputError(path, f"cannot parse STAR file ({type(exc).__name__}: {exc})") from None
    if not blocks:
        raise SpaInputError(path, "not a STAR file (no data_ block)")
    out = {}
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            block = block.reset_index(drop=True)
            if len(block) == 0:
                # starfile gives an empty loop float columns of zeros shape; keep the names only
                block = pd.DataFrame({c: pd.Series(dtype=float) for c in block.columns})
        out[name] = block
    return out


def _format_value(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    s = str(v)
    return f'"{s}"' if (not s or _NEEDS_QUOTES.search(s)) else s


def _loop_text(name: str, df: pd.DataFrame) -> str:
    lines = [f"data_{name}", "", "loop_"]
    lines += [f"_{col} #{i}" for i, col in enumerate(df.columns, 1)]
    head = "\n".join(lines) + "\n"
    if len(df) == 0:
        return head + "\n\n"
    body = df.copy()
    for col in body.columns:
        s = body[col]
        if s.dtype == bool:
            body[col] = s.astype(np.int64)
        elif not pd.api.types.is_numeric_dtype(s):
            text = s.astype(str)
            quote = text.str.contains(_NEEDS_QUOTES) | (text == "")
            if quote.any():
                text = text.where(~quote, '"' + text + '"')
            body[col] = text
    # pandas writes floats in their shortest round-trip form ("2.0", "1e-07")
    text = body.to_csv(sep="\t", header=False, index=False, quoting=csv.QUOTE_NONE, na_rep="nan", lineterminator="\n")
    return head + text + "\n\n"


def _simple_text(name: str, block: dict) -> str:
    lines = [f"data_{name}", ""]
    width = max((len(k) for k in block), default=0) + 2
    lines += [f"_{k:<{width}}{_format_value(v)}" for k, v in block.items()]
    return "\n".join(lines) + "\n\n\n"


def star_text(blocks: dict, provenance: dict | None = None) -> str:
    """The text of a STAR file (RELION 3.1 layout) for ``blocks``; see :func:`write_star`."""
    parts = [star_comment(provenance), "\n"]
    for name, block in blocks.items():
        name = name[5:] if name.startswith("data_") else name
        if isinstance(block, pd.DataFrame):
            parts.append(_loop_text(name, block))
        elif isinstance(block, dict):
            parts.append(_simple_text(name, block))
        else:
            raise TypeError(f"STAR block {name!r} must be a DataFrame or a dict, got {type(block).__name__}")
    return "".join(parts)


def write_star(path: str | os.PathLike, blocks: dict, provenance: dict | None = None) -> None:
    """Write ``blocks`` ({name: DataFrame or dict}) as a STAR file, atomically.

    The provenance record (:func:`spa.provenance.star_comment`) is the first
    line; RELION ignores comments.  Loop blocks are written with RELION's
    ``_rlnLabel #n`` column numbering, tab-separated.
    """
    text = star_text(blocks, provenance)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- optics tables


def _check_numeric(path, df: pd.DataFrame, what: str) -> None:
    for col in df.columns:
        s = df[col]
        if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
            if s.isna().any():
                row = int(np.flatnonzero(s.isna().to_numpy())[0]) + 1
                raise SpaInputError(path, f"{what}: column {col} has missing values (first at row {row})")
            continue
        bad = ~np.isfinite(s.to_numpy(dtype=np.float64))
        if bad.any():
            row = int(np.flatnonzero(bad)[0]) + 1
            raise SpaInputError(path, f"{what}: column {col} has {int(bad.sum())} NaN/Inf values (first at row {row})")


def _as_number(path, df: pd.DataFrame, col: str, what: str) -> pd.Series:
    s = df[col]
    if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        num = pd.to_numeric(s, errors="coerce")
        row = int(np.flatnonzero(num.isna().to_numpy())[0]) + 1 if num.isna().any() else 0
        raise SpaInputError(path, f"{what}: column {col} is not numeric (e.g. {s.iloc[max(row - 1, 0)]!r} at row {row})")
    return s


def _optics_from_rows(path, rows: pd.DataFrame, pixel_col: str, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """RELION 3.0 → 3.1: build optics groups from the per-row optics of a table without ``data_optics``."""
    rows = rows.copy()
    missing = [c for c in OPTICS_REQUIRED if c not in rows.columns]
    if missing:
        raise SpaInputError(
            path, f"{what}: RELION 3.0 table without data_optics lacks optics column(s) {', '.join(missing)}"
        )
    if pixel_col in rows.columns:
        pixel = _as_number(path, rows, pixel_col, what).astype(np.float64)
    elif "rlnDetectorPixelSize" in rows.columns and "rlnMagnification" in rows.columns:
        det = _as_number(path, rows, "rlnDetectorPixelSize", what).astype(np.float64)
        mag = _as_number(path, rows, "rlnMagnification", what).astype(np.float64)
        if (mag <= 0).any():
            raise SpaInputError(path, f"{what}: rlnMagnification must be > 0")
        # RELION 3.0: detector pixel in µm, magnification dimensionless -> Å/px
        pixel = det * 1e4 / mag
    else:
        raise SpaInputError(
            path, f"{what}: no pixel size (needs {pixel_col} or rlnDetectorPixelSize + rlnMagnification)"
        )
    rows[pixel_col] = pixel
    for col in ("rlnOriginX", "rlnOriginY"):
        if col in rows.columns:
            # RELION 3.0 origins are in pixels, 3.1 in Å
            rows[col + "Angst"] = _as_number(path, rows, col, what).astype(np.float64) * pixel
            rows.insert(rows.columns.get_loc(col), col + "Angst", rows.pop(col + "Angst"))
            rows = rows.drop(columns=col)
    keys = [*OPTICS_REQUIRED, pixel_col]
    for k in keys:
        _as_number(path, rows, k, what)
    _check_numeric(path, rows[keys], what)
    groups = rows[keys].drop_duplicates().reset_index(drop=True)
    groups.insert(0, "rlnOpticsGroup", np.arange(1, len(groups) + 1, dtype=np.int64))
    groups.insert(1, "rlnOpticsGroupName", [f"opticsGroup{i}" for i in range(1, len(groups) + 1)])
    number = rows[keys].merge(groups, on=keys, how="left")["rlnOpticsGroup"].to_numpy()
    drop = [c for c in (*keys, "rlnDetectorPixelSize", "rlnMagnification") if c in rows.columns]
    rows = rows.drop(columns=drop)
    if "rlnOpticsGroup" in rows.columns:
        rows = rows.drop(columns="rlnOpticsGroup")
    rows["rlnOpticsGroup"] = number.astype(np.int64)
    return rows, groups


def _merge_optics(path, rows: pd.DataFrame, optics: pd.DataFrame, what: str) -> pd.DataFrame:
    """Add every optics column to each row, looked up by rlnOpticsGroup (row order kept)."""
    if optics["rlnOpticsGroup"].duplicated().any():
        raise SpaInputError(path, "data_optics: rlnOpticsGroup numbers are not unique")
    if "rlnOpticsGroup" not in rows.columns:
        if len(optics) != 1:
            raise SpaInputError(path, f"{what}: no rlnOpticsGroup column but {len(optics)} optics groups")
        rows = rows.copy()
        rows["rlnOpticsGroup"] = np.int64(optics["rlnOpticsGroup"].iloc[0])
    groups = _as_number(path, rows, "rlnOpticsGroup", what)
    known = set(optics["rlnOpticsGroup"].tolist())
    unknown = sorted(set(groups.unique().tolist()) - known)
    if unknown:
        raise SpaInputError(
            path, f"{what}: rlnOpticsGroup {unknown[0]} is not in data_optics (groups there: {sorted(known)})"
        )
    table = optics.set_index("rlnOpticsGroup")
    merged = {c: groups.map(table[c]) for c in table.columns if c not in rows.columns}
    return pd.concat([rows, pd.DataFrame(merged, index=rows.index)], axis=1)


def _image_size_from_file(path: Path, rows: pd.DataFrame) -> int | None:
    """Box size of the first referenced image file (for RELION 3.0 files, which do not store it)."""
    if "rlnImageName" not in rows.columns or len(rows) == 0:
        return None
    from spa.io.images import open_image_file, resolve_image_path  # noqa: PLC0415 - images imports star's users

    file = str(rows["rlnImageName"].iloc[0]).split("@", 1)[-1]
    found = resolve_image_path(file, path)
    if found is None:
        return None  # ParticleImages reports the missing file when images are read
    try:
        return int(open_image_file(found).box)
    except SpaInputError:
        return None


def read_optics_table(
    path: str | os.PathLike,
    block: str,
    pixel_col: str,
    require: tuple[str, ...] | list[str] = (),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a RELION 3.1 (optics + ``block``) or 3.0 (one block) table; see :func:`read_particles`."""
    path = Path(path)
    blocks = read_star(path)
    tables = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    what = f"data_{block}"
    if "optics" in tables:
        if block not in tables:
            raise SpaInputError(path, f"has data_optics but no data_{block} block (blocks: {', '.join(tables)})")
        rows = tables[block].copy()
        optics = tables["optics"].copy()
        missing = [c for c in ("rlnOpticsGroup", pixel_col, *OPTICS_REQUIRED) if c not in optics.columns]
        if missing:
            raise SpaInputError(path, f"data_optics lacks column(s) {', '.join(missing)}")
        if len(optics) == 0:
            raise SpaInputError(path, "data_optics has no optics group")
        for col in ("rlnOpticsGroup", pixel_col, *OPTICS_REQUIRED):
            _as_number(path, optics, col, "data_optics")
        _check_numeric(path, optics, "data_optics")
    else:
        # RELION 3.0: the table is the named block, or the only loop block
        name = block if block in tables else (next(iter(tables)) if len(tables) == 1 else None)
        if name is None:
            raise SpaInputError(path, f"no data_{block} block and no single table (blocks: {', '.join(tables) or 'none'})")
        what = f"data_{name}"
        rows, optics = _optics_from_rows(path, tables[name], pixel_col, what)
    if len(rows) == 0:
        raise SpaInputError(path, f"{what} has no rows")
    missing = [c for c in require if c not in rows.columns and c not in optics.columns]
    if missing:
        raise SpaInputError(path, f"{what} lacks required column(s) {', '.join(missing)}")
    bad = optics[pixel_col] <= 0
    if bad.any():
        raise SpaInputError(
            path, f"{pixel_col} is {optics.loc[bad, pixel_col].iloc[0]:g} Å in optics group "
            f"{optics.loc[bad, 'rlnOpticsGroup'].iloc[0]} (must be > 0)"
        )
    if pixel_col == "rlnImagePixelSize" and "rlnImageSize" not in optics.columns:
        box = _image_size_from_file(path, rows)
        if box is not None:
            optics["rlnImageSize"] = np.int64(box)
    _check_numeric(path, rows, what)
    merged = _merge_optics(path, rows, optics, what)
    return merged.reset_index(drop=True), optics.reset_index(drop=True)


def write_optics_table(
    path: str | os.PathLike,
    block: str,
    rows: pd.DataFrame,
    optics: pd.DataFrame,
    provenance: dict | None = None,
) -> None:
    """Write ``data_optics`` + ``data_<block>``, dropping the optics columns merged into the rows."""
    if "rlnOpticsGroup" not in optics.columns:
        raise ValueError("optics table needs rlnOpticsGroup")
    drop = [c for c in optics.columns if c != "rlnOpticsGroup" and c in rows.columns]
    rows = rows.drop(columns=drop)
    if "rlnOpticsGroup" in rows.columns:
        unknown = set(rows["rlnOpticsGroup"].unique().tolist()) - set(optics["rlnOpticsGroup"].tolist())
        if unknown:
            raise ValueError(f"rows refer to optics group(s) {sorted(unknown)} missing from the optics table")
    write_star(path, {"optics": optics, block: rows}, provenance)


# --------------------------------------------------------------------------- particles, micrographs


def read_particles(
    path: str | os.PathLike, require: tuple[str, ...] | list[str] = ("rlnImageName",)
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a particle STAR file (RELION 3.1 or 3.0) -> ``(particles, optics)``.

    ``particles`` has one row per particle, in file order, with the optics
    columns of its group merged in (rlnImagePixelSize in Å, rlnImageSize in
    px, rlnVoltage in kV, rlnSphericalAberration in mm, rlnAmplitudeContrast).
    RELION 3.0 files are converted: optics groups from the distinct
    (voltage, Cs, Q, pixel size) per row; pixel size from rlnImagePixelSize or
    rlnDetectorPixelSize (µm) × 10⁴ / rlnMagnification; rlnOriginX/Y (px) become
    rlnOriginXAngst/YAngst (Å); rlnImageSize is taken from the first image file.

    ``require`` names particle columns that must be present (e.g.
    ``("rlnImageName", *CTF_COLUMNS)``).  Raises :class:`SpaInputError` for a
    missing column, missing optics columns, a pixel size ≤ 0, NaN/Inf in a
    numeric column, or an rlnOpticsGroup without an optics row.  Image names
    are rewritten to resolve from the current directory
    (:func:`spa.io.images.relocate_image_names`), so tables written elsewhere
    still find their images.
    """
    from spa.io.images import relocate_image_names

    particles, optics = read_optics_table(path, "particles", "rlnImagePixelSize", require)
    return relocate_image_names(particles, path), optics


def has_ctf(particles: pd.DataFrame, path: str | os.PathLike | None = None) -> bool:
    """True when the table has every per-particle CTF column (:data:`CTF_COLUMNS`), False when it has none.

    Some but not all of them is a :class:`SpaInputError` naming ``path`` and
    the missing columns: a stage would otherwise run without CTF correction
    without saying so (the optics columns, rlnVoltage etc., are checked when
    the table is read).
    """
    present = [c for c in CTF_COLUMNS if c in particles.columns]
    if present and len(present) < len(CTF_COLUMNS):
        missing = [c for c in CTF_COLUMNS if c not in present]
        where = "" if path is not None else "the particle table "
        raise SpaInputError(path, f"{where}has {', '.join(present)} but lacks {', '.join(missing)}: the CTF needs "
                                  f"all of {', '.join(CTF_COLUMNS)} (with none of them a stage runs without CTF "
                                  "correction)")
    return bool(present)


def write_particles(
    path: str | os.PathLike, particles: pd.DataFrame, optics: pd.DataFrame, provenance: dict | None = None
) -> None:
    """Write ``data_optics`` + ``data_particles`` (RELION 3.1), atomically, optics columns dropped from rows."""
    write_optics_table(path, "particles", particles, optics, provenance)


def read_micrographs(
    path: str | os.PathLike, require: tuple[str, ...] | list[str] = ("rlnMicrographName",)
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a micrograph STAR file (RELION 3.1 or 3.0) -> ``(micrographs, optics)``; pixel size rlnMicrographPixelSize (Å)."""
    return read_optics_table(path, "micrographs", "rlnMicrographPixelSize", require)


def write_micrographs(
    path: str | os.PathLike, micrographs: pd.DataFrame, optics: pd.DataFrame, provenance: dict | None = None
) -> None:
    """Write ``data_optics`` + ``data_micrographs`` (RELION 3.1), atomically."""
    write_optics_table(path, "micrographs", micrographs, optics, provenance)
