"""Convert particle sets between RELION ``.mrcs`` stacks and one spa ``.zarr`` stack.

Either direction writes, into the output folder, ``particles.star`` (RELION
3.1 layout, every column of the input kept, rows in input order) and one
stack holding all images in row order: ``particles.zarr`` or
``particles.mrcs``.  Row i (0-based) of the output table names image i+1:
``000001@particles.zarr``.

Image paths in the output STAR are **relative to the output STAR's folder**
(just the stack's file name).  spa resolves them from anywhere because image
paths fall back to the STAR file's folder (:mod:`spa.io.images`); RELION,
which resolves paths against its current (project) directory, reads the
exported ``.mrcs`` when run from the output folder — or rewrite the column to
project-relative paths in that case.

Both outputs appear only when complete (temporary names, renamed at the end).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from spa.errors import SpaInputError
from spa.io import zarrstack
from spa.io.atomic import atomic_path
from spa.io.images import ParticleImages
from spa.io.mrc import new_mrcs
from spa.io.star import read_particles, write_particles

FORMATS = ("zarr", "mrcs")
STAR_NAME = "particles.star"


def convert_particles(
    star: str | os.PathLike,
    output_dir: str | os.PathLike,
    to: str,
    *,
    chunk: int = zarrstack.DEFAULT_CHUNK,
    float16: bool = False,
    provenance: dict | None = None,
    progress=None,
) -> Path:
    """Rewrite the particles of ``star`` into one ``.zarr`` or ``.mrcs`` stack in ``output_dir``.

    ``chunk`` is the Zarr chunk length along N (also the batch size of the
    copy); ``float16`` stores the images as float16 (Zarr dtype / MRC mode 12),
    otherwise float32 images are copied bit for bit.  Returns the path of the
    written STAR file.  ``progress(done, total)`` (images) after each batch.
    """
    if to not in FORMATS:
        raise ValueError(f"unknown stack format {to!r}; choose one of {FORMATS}")
    if int(chunk) < 1:
        raise ValueError(f"--chunk must be >= 1, got {chunk}")
    star = Path(star)
    out_dir = Path(output_dir)
    particles, optics = read_particles(star, require=("rlnImageName",))
    images = ParticleImages(particles, star)
    pixel = images.pixel_size
    out_star = out_dir / STAR_NAME
    stack_name = f"particles.{to}"
    out_stack = out_dir / stack_name
    # never overwrite what we read from
    if out_star.absolute() == star.absolute():
        raise SpaInputError(star, f"output {out_star} would replace the input STAR file; choose another --output-dir")
    if any(out_stack.absolute() == f for f in images.files):
        raise SpaInputError(out_stack, "is an input image stack; choose another --output-dir")

    n, box = len(images), images.box
    dtype = np.float16 if float16 else np.float32
    step = int(chunk)
    table = particles.copy()
    table["rlnImageName"] = [f"{i:06d}@{stack_name}" for i in range(1, n + 1)]

    with atomic_path(out_star) as tmp_star:
        with atomic_path(out_stack) as tmp_stack:
            if to == "zarr":
                zarrstack.create_stack(tmp_stack, box, n, chunk=step, pixel_size=pixel, dtype=dtype, provenance=provenance)
                for start in range(0, n, step):
                    stop = min(start + step, n)
                    zarrstack.write_images(tmp_stack, start, images.read(np.arange(start, stop)))
                    if progress:
                        progress(stop, n)
            else:
                with new_mrcs(tmp_stack, n, box, pixel, provenance=provenance, dtype=dtype) as data:
                    for start in range(0, n, step):
                        stop = min(start + step, n)
                        data[start:stop] = images.read(np.arange(start, stop))
                        if progress:
                            progress(stop, n)
            # written before either rename, so a failure here leaves no output at all;
            # the STAR that points at the stack is renamed last
            write_particles(tmp_star, table, optics, provenance)
    images.close()
    return out_star
