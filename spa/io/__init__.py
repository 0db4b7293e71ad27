"""File formats: MRC (mrcfile), STAR (starfile), Zarr particle stacks, movies.

The only package that touches files on disk.
"""
