"""3D references for ab initio: :class:`spa.em.volume_refs.VolumeReferences` with a reused slice geometry.

Ab initio takes a hundred small E-steps against maps that change every
step while the coarse orientation grid and the Fourier window stay the same
for many steps.  The trilinear neighbours and weights of the coarse grid's
central slices depend only on (rotations, active pixels), so they are
computed once and shared by every step (a cache passed from map to map);
slice coordinates use a batched matrix product instead of ``einsum``.
"""

from __future__ import annotations

from spa.backend import backend_of
from spa.em.projector import trilinear_setup
from spa.em.volume_refs import VolumeReferences, rotation_matrices

PRUNE_FRACTION = 0.005  # posterior mass of the least probable poses left out of an insertion
MAX_CACHED = 4  # (grid, window) geometries kept: a few windows of one or two grids


class SliceGeometryCache:
    """Trilinear set-ups of the coarse grids, keyed by the rotation array's identity and the window size."""

    def __init__(self):
        self.items: dict = {}
        self.grids: list = []  # the rotation arrays worth caching (the coarse grids)

    def register(self, rotations) -> None:
        if not any(rotations is g for g in self.grids):
            self.grids.append(rotations)

    def is_grid(self, rotations) -> bool:
        return any(rotations is g for g in self.grids)

    def get(self, key):
        return self.items.get(key)

    def put(self, key, value):
        if len(self.items) >= MAX_CACHED:
            self.items.pop(next(iter(self.items)))
        self.items[key] = value


class AbInitioReferences(VolumeReferences):
    """VolumeReferences whose coarse-grid slice geometry is cached across maps (see module docstring).

    ``cached_rotations``: the one rotation array (R, 3) whose set-up is cached
    (the sampling's coarse grid); other rotations are computed as usual.
    """

    def __init__(self, volumes, pad: float = 2.0, cache: SliceGeometryCache | None = None,
                 prune_fraction: float = PRUNE_FRACTION):
        super().__init__(volumes, pad=pad)
        self.cache = cache if cache is not None else SliceGeometryCache()
        self.prune_fraction = float(prune_fraction)

    def _setup(self, rotations, active):
        key = (id(rotations), len(rotations), int(active.size), int(active.box))
        hit = self.cache.get(key)
        if hit is not None and hit[0] is rotations:
            return hit[1]
        xp = self.xp
        mats = rotation_matrices(rotations, xp)  # (R, 3, 3)
        j = xp.stack([active.jx, active.jy], axis=-1).astype(xp.float32)  # (F, 2)
        q = (j[None] @ mats[:, :2, :]) * xp.float32(self.pad)  # (R, F, 3) = pad·Aᵀ(jx, jy, 0)
        setup = trilinear_setup(q, self.padded)
        if self.cache.is_grid(rotations):
            self.cache.put(key, (rotations, setup))
        return setup

    def insert(self, sums: dict, class_index: int, rotations, active, data, weight) -> None:
        """Add per-pose sums (R, F) into class ``class_index`` (transpose of :meth:`project`; C1 only).

        Poses are pruned first: the rows of smallest posterior mass (Σ over
        pixels of the weight row) that together hold ≤ ``prune_fraction`` of
        the mass are left out — thousands of barely probable poses per batch
        that would cost most of the insertion time for a negligible change.
        """
        xp = self.xp
        be = backend_of(sums["data"])
        d = xp.asarray(data)
        wt = xp.asarray(weight)
        if self.prune_fraction > 0 and wt.shape[0] > 1:
            mass = wt.sum(axis=1)
            order = xp.argsort(mass)
            cum = xp.cumsum(mass[order])
            keep = xp.sort(order[cum > self.prune_fraction * cum[-1]])
            keep_host = be.to_numpy(keep)
            rotations = rotations[keep_host]
            d, wt = d[keep], wt[keep]
        idx, w, conj = self._setup(rotations, active)
        d = xp.where(conj, d.conj(), d)
        flat = idx.reshape(-1)
        be.scatter_add(sums["data"][class_index], flat, (d[..., None] * w).reshape(-1))
        be.scatter_add(sums["weight"][class_index], flat, (wt[..., None] * w).reshape(-1))

    def with_volumes(self, volumes) -> "AbInitioReferences":
        """New maps, same padding and the same geometry cache."""
        return AbInitioReferences(volumes, self.pad, self.cache, self.prune_fraction)

    def __setstate__(self, state):
        self.__init__(state["images"], state["pad"])
