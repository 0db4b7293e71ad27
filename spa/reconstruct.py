"""Reconstruction of a map from particles with known poses (``relion_reconstruct``).

Each particle image is centred by its origin (translated by +rlnOrigin, in
pixels = Å / pixel size), Fourier transformed, multiplied by its CTF (unless
the CTF is off), and inserted at its pose; the weights accumulate CTF².
Particles are processed in chunks; chunks are independent partial sums
(:class:`~spa.em.backprojector.BackProjector` objects) that Dask workers fill
in parallel and that are added as they arrive, in bounded memory
(:func:`spa.parallel.map_reduce`).
"""

from __future__ import annotations

import numpy as np

from spa.backend import get_backend
from spa.ctf import ctf_from_table
from spa.em.backprojector import BackProjector
from spa.fourier import phase_shift_2d, rfft_centered
from spa.geometry.euler import euler_to_matrix
from spa.parallel import make_chunks, map_reduce

POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


def centred_transforms(images, table, pixel_size: float, xp):
    """rfft of images translated by +origin (RELION: that centres the particle)."""
    f = rfft_centered(xp.asarray(images, dtype=xp.float32))
    if "rlnOriginXAngst" in table:
        sx = xp.asarray(table["rlnOriginXAngst"].to_numpy() / pixel_size)
        sy = xp.asarray(table["rlnOriginYAngst"].to_numpy() / pixel_size)
        f = phase_shift_2d(f, sx, sy)
    return f


def insert_chunk(
    images,
    table,
    box: int,
    pixel_size: float,
    *,
    use_ctf: bool = True,
    symmetry: str = "C1",
    max_radius: float | None = None,
    backend: str | None = None,
    bp: BackProjector | None = None,
) -> BackProjector:
    """Insert one chunk of particles (images (n,B,B) + their table rows) into a BackProjector."""
    be = get_backend(backend)
    xp = be.xp
    bp = bp or BackProjector(box, max_radius=max_radius, xp=xp)
    f = centred_transforms(images, table, pixel_size, xp)
    if use_ctf:
        ctf = ctf_from_table(table, box, pixel_size, xp=xp)
        values, weights = f * ctf, ctf * ctf
    else:
        values, weights = f, xp.ones(f.shape, dtype=xp.float32)
    rots = euler_to_matrix(*(table[c].to_numpy() for c in POSE_COLUMNS))
    for sym in symmetry_operators(symmetry):
        # a projection at A of a map invariant under R is also its projection at A·R
        bp.insert(values, weights, xp.asarray(rots @ sym))
    return bp


def symmetry_operators(symmetry: str) -> np.ndarray:
    """The group's rotation matrices (identity alone for C1)."""
    if symmetry.upper() in ("C1", ""):
        return np.eye(3)[None]
    from spa.geometry.symmetry import symmetry_matrices

    return symmetry_matrices(symmetry)


def _insert_rows(source, settings: dict, idx, rows):
    """Chunk task: read the images of table ``rows`` (positions ``idx``) and insert them into a new
    BackProjector → (that back-projector, None)."""
    images = source.read(idx)
    return insert_chunk(images, rows, **settings), None


def reconstruct_star(
    star_path,
    *,
    subset: int | None = None,
    symmetry: str = "C1",
    use_ctf: bool = True,
    maxres: float | None = None,
    chunk_size: int = 512,
    client=None,
    backend: str | None = None,
    progress=None,
):
    """Reconstruct the map of the particles in a STAR file from their poses.

    Returns ``(volume (B,B,B) float32 NumPy, pixel size Å, number of particles used)``.
    ``subset`` 1 or 2 keeps rows with that rlnRandomSubset; ``maxres`` (Å)
    limits the frequencies inserted; ``symmetry`` is a point group name.
    """
    from spa.errors import SpaInputError
    from spa.io.star import CTF_COLUMNS, read_particles

    require = ("rlnImageName",) + POSE_COLUMNS + (CTF_COLUMNS if use_ctf else ())
    table, _optics = read_particles(star_path, require=require)
    if subset is not None:
        if "rlnRandomSubset" not in table:
            raise SpaInputError(star_path, "--subset needs the column rlnRandomSubset")
        table = table[table["rlnRandomSubset"] == subset].reset_index(drop=True)
    if len(table) == 0:
        raise SpaInputError(star_path, "no particles to reconstruct" + (f" in subset {subset}" if subset else ""))
    pixel_sizes = table["rlnImagePixelSize"].unique()
    boxes = table["rlnImageSize"].unique() if "rlnImageSize" in table else []
    if len(pixel_sizes) > 1 or len(boxes) > 1:
        raise SpaInputError(star_path, "particles from optics groups with different pixel or box sizes")
    return reconstruct_table(table, star_path, symmetry=symmetry, use_ctf=use_ctf, maxres=maxres,
                             chunk_size=chunk_size, client=client, backend=backend, progress=progress)


def reconstruct_table(table, star_path, *, symmetry: str = "C1", use_ctf: bool = True, maxres: float | None = None,
                      chunk_size: int = 512, client=None, backend: str | None = None, progress=None):
    """:func:`reconstruct_star` on rows already read (e.g. a subset): ``table`` from
    :func:`spa.io.star.read_particles` of ``star_path`` (image names resolve from it), one pixel and box size."""
    bp, pixel_size = backproject_table(table, star_path, symmetry=symmetry, use_ctf=use_ctf, maxres=maxres,
                                       chunk_size=chunk_size, client=client, backend=backend, progress=progress)
    volume = get_backend(backend).to_numpy(bp.reconstruct())
    return volume, pixel_size, len(table)


def backproject_table(table, star_path, *, symmetry: str = "C1", use_ctf: bool = True, maxres: float | None = None,
                      chunk_size: int = 512, client=None, backend: str | None = None, progress=None):
    """The sums of a reconstruction (Σ CTF·X̂ and Σ CTF² on the padded grid) of ``table``'s particles at their
    poses, before any division → ``(BackProjector, pixel size Å)``; arguments as :func:`reconstruct_table`."""
    pixel_size = float(table["rlnImagePixelSize"].iloc[0])
    from spa.io.images import ParticleImages

    source = ParticleImages(table, star_path)
    box = source.box
    max_radius = None if maxres is None else min(box // 2, box * pixel_size / maxres)
    settings = dict(box=box, pixel_size=pixel_size, use_ctf=use_ctf, symmetry=symmetry, max_radius=max_radius,
                    backend=backend)
    tasks = [(idx, table.iloc[idx].reset_index(drop=True)) for idx in make_chunks(len(table), chunk_size)]
    bp, _ = map_reduce(_insert_rows, tasks, broadcast=(source, settings), client=client, progress=progress)
    return bp, pixel_size
