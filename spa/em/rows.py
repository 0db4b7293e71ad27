"""The E-step's access to the references by rows, and its block sizes per backend.

A *row* is one (class, pose) the chunk uses.  The fine pass projects a few thousand rows of many
classes and inserts its sums back into them; on the CPU that is one ``refs.project`` /
``refs.insert`` per class (each already a fused loop), on a GPU with the CUDA kernels one launch
for all rows of all classes (:mod:`spa.em.cuda_kernels`): a loop over K = 50 classes was 50 rounds
of small launches and host synchronisations per chunk.
"""

from __future__ import annotations

import os

import numpy as np

from spa.backend import array_module
from spa.em.projector import cuda_for

# elements per temporary block (float32): bounds memory at ~64–128 MB per array
BLOCK_ELEMENTS = 1 << 24
#: the same on a GPU (1 GB per float32 array): there a block's cost is mostly the launches and host
#: synchronisations of its few dozen small steps, not memory traffic, so fewer, larger blocks (an H200
#: holds 141 GB; at K = 50, box 128 a chunk of 2048 images is 2 blocks of pass 1 instead of 30)
GPU_BLOCK_ELEMENTS = 1 << 28


def block_elements(xp) -> int:
    """Elements per temporary block for arrays of module ``xp`` (GPU: ``SPA_GPU_BLOCK_ELEMENTS``, if set)."""
    if xp is np:
        return BLOCK_ELEMENTS
    return int(os.environ.get("SPA_GPU_BLOCK_ELEMENTS", GPU_BLOCK_ELEMENTS))


def project_rows(refs, classes, rotations, active, xp):
    """(U, F) complex64: row u is class ``classes[u]`` (host ints) at ``rotations[u]``.

    One launch where the references run CUDA kernels (``refs.project_rows``), else one
    ``refs.project`` per class present."""
    fast = getattr(refs, "project_rows", None)
    rows = None if fast is None else fast(classes, rotations, active)
    if rows is not None:
        return rows
    rows = xp.zeros((len(classes), active.size), xp.complex64)
    for k in np.unique(classes):
        sel = np.nonzero(classes == k)[0]
        rows[xp.asarray(sel)] = refs.project(int(k), rotations[sel], active)
    return rows


def insert_rows(refs, sums, classes, rotations, active, data, weight, live) -> None:
    """Add rows ``data`` / ``weight`` (U, F) into class ``classes[u]`` at ``rotations[u]`` (host arrays),
    the rows where the host mask ``live`` is set: one launch where the references run CUDA kernels
    (``refs.insert_rows``), else one ``refs.insert`` per class present."""
    xp = array_module(data)
    u = len(classes)
    rows = np.nonzero(live)[0]
    if rows.size == 0:
        return
    if cuda_for(data) is not None and hasattr(refs, "insert_rows"):
        sel = slice(None) if rows.size == u else xp.asarray(rows)
        if refs.insert_rows(sums, classes[rows], rotations[rows], active, data[sel], weight[sel]):
            return
    for k in np.unique(classes):
        sel = np.nonzero((classes == k) & live)[0]
        if sel.size == 0:
            continue
        if sel.size == u:  # every row (one class, all live): no copies of the sums
            refs.insert(sums, int(k), rotations, active, data, weight)
            continue
        sel_x = xp.asarray(sel)
        refs.insert(sums, int(k), rotations[sel], active, data[sel_x], weight[sel_x])



def sum_rows_by_index(be, values, index, n_rows: int, rows=None, weights=None):
    """``be.sum_rows_by_index`` (see :class:`spa.backend.Backend`), one CUDA launch for float32 rows on a GPU."""
    ck = cuda_for(values)
    if ck is not None and values.dtype == np.float32 and values.flags.c_contiguous:
        return ck.sum_rows_by_index(values, index, n_rows, rows, weights)
    return be.sum_rows_by_index(values, index, n_rows, rows=rows, weights=weights)


def scatter_add(be, target, index, values) -> None:
    """``be.scatter_add`` for a float64 1D target, one CUDA launch on a GPU (same order, same bits)."""
    ck = cuda_for(target)
    if ck is not None and target.dtype == np.float64 and target.ndim == 1 and target.flags.c_contiguous:
        ck.scatter_add(target, index, values)
        return
    be.scatter_add(target, index, values)
