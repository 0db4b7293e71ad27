"""spa: cryo-EM single-particle analysis.

Snakemake defines the stage graph; each stage is a ``spa`` sub-command that runs
NumPy/CuPy kernels (chosen through :mod:`spa.backend`) over chunked Zarr particle
stacks, with metadata in RELION's STAR conventions (see docs/conventions.md).
"""

__version__ = "0.1.0"
