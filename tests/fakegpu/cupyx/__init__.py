"""The ``cupyx`` functions spa uses, for the CuPy emulator in ``tests/fakegpu/cupy``."""

import numpy as _np

from cupy import _unwrap


def scatter_add(a, slices, value):
    """``a[slices] += value`` with repeated indices accumulated (device arrays in, in place)."""
    _np.add.at(_unwrap(a), _unwrap(slices, strict=False), _unwrap(value))
