"""Insertion of image transforms into a 3D Fourier volume, and reconstruction.

The adjoint of :class:`spa.em.projector.Projector`: each image's transform
(usually CTF·X̂ with X centred by its origin) is spread with trilinear weights
onto the padded half grid at pad·Aᵀ(kx, ky, 0); the same weights times CTF²
accumulate in a weight grid.  Reconstruction divides data by weight plus a
regulariser (Wiener / MAP, Scheres 2012), transforms back, crops and divides
by the gridding factor.

A BackProjector is also the partial sum of a distributed reconstruction: two
of them add (``+``) so Dask can tree-reduce per-chunk insertions.
"""

from __future__ import annotations

from spa.backend import backend_of, get_backend
from spa.em.gridding import padded_size
from spa.em.projector import image_frequencies, scatter_slices
from spa.em.reconstruction import DEFAULT_MIN_WEIGHT_FRACTION, reconstruct


class BackProjector:
    """Accumulates Σ CTF·X̂ (``data``) and Σ CTF² (``weight``) on a padded half grid."""

    def __init__(self, box: int, pad: float = 2.0, max_radius: float | None = None, xp=None):
        xp = xp or get_backend().xp
        self.xp = xp
        self.box = int(box)
        self.padded = padded_size(self.box, pad)
        self.pad = self.padded / self.box
        shape = (self.padded, self.padded, self.padded // 2 + 1)
        self.data = xp.zeros(shape, dtype=xp.complex64)
        self.weight = xp.zeros(shape, dtype=xp.float32)
        self.max_radius = self.box // 2 if max_radius is None else max_radius
        self.index, self.jx, self.jy = image_frequencies(self.box, self.max_radius, xp)

    # -- accumulation -------------------------------------------------------------
    def insert_active(self, values, weights, rotations, jx=None, jy=None):
        """Insert per-pixel ``values`` (R, F) complex and ``weights`` (R, F) real at rotations (R,3,3)."""
        xp = self.xp
        values, weights = xp.asarray(values), xp.asarray(weights)
        be = backend_of(self.data)
        if jx is None:
            jx, jy = self.jx, self.jy
        scatter_slices(be, self.data.reshape(-1), self.weight.reshape(-1), xp.asarray(rotations), jx, jy,
                       values, weights, self.pad, self.padded)

    def insert(self, fimages, fweights, rotations):
        """Insert full rfft-layout slices (R, B, B//2+1): values and their weights (e.g. CTF·X̂, CTF²).

        Host arrays are moved to this back-projector's backend."""
        xp = self.xp
        n = fimages.shape[0]
        flat_v = xp.asarray(fimages).reshape(n, -1)[:, self.index]
        flat_w = xp.asarray(fweights).reshape(n, -1)[:, self.index]
        self.insert_active(flat_v, flat_w, rotations)

    def __add__(self, other: "BackProjector") -> "BackProjector":
        out = BackProjector.__new__(BackProjector)
        out.__dict__.update(self.__dict__)
        out.data = self.data + other.data
        out.weight = self.weight + other.weight
        return out

    def __iadd__(self, other: "BackProjector") -> "BackProjector":
        self.data += other.data
        self.weight += other.weight
        return self

    # -- reconstruction -----------------------------------------------------------
    def reconstruct(self, ssnr=None, min_weight_fraction: float = DEFAULT_MIN_WEIGHT_FRACTION,
                    max_radius: float | None = None):
        """The map (B, B, B) float32, by the shared :func:`spa.em.reconstruction.reconstruct`.

        ``ssnr``: per-shell spectral SNR (length ≥ B//2+1, shells of the original
        box) for the MAP/Wiener term W̄_shell/SSNR added to the weight (as
        RELION's 1/τ² with τ² = SSNR·σ²_recon); None: no prior, only a floor of
        ``min_weight_fraction`` × the shell-mean weight keeps empty voxels finite.
        Frequencies beyond ``max_radius`` (Fourier pixels; default: the insertion
        radius) are zeroed; the corners outside the box's inscribed sphere are
        flattened as RELION does.
        """
        limit = self.max_radius if max_radius is None else max_radius
        vol, _ = reconstruct(self.data, self.weight, self.box, 3, ssnr=ssnr, min_weight_fraction=min_weight_fraction,
                             max_radius=limit)
        return vol
