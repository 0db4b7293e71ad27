"""Pose sampling for 3D stages: HEALPix orientations × ψ, translations, and their oversampled children.

The E-step (:mod:`spa.em.estep`) scores a coarse grid and rescores the
children of its significant samples.  This object lists both, with the
children of coarse sample ``r`` at fine indices ``r·c … r·c + c − 1``
(c = ``rotation_children``), as RELION's adaptive oversampling arranges them:
4ᵒ HEALPix children at order n + o × 2ᵒ ψ values for each coarse orientation,
and 4ᵒ finer shifts inside each coarse shift cell.

Rotations are (R, 3) RELION Euler angles in degrees; translations (S, 2)
pixels (x, y), applied to the image (moving it by +t; the particle origin
after the E-step is centre + t, as rlnOrigin).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spa.geometry.sampling import (
    angular_step,
    orientation_grid,
    oversampled_neighbours,
    oversampled_translations,
    translation_grid,
)


class _HealpixSteps:
    """Steps and child counts of a HEALPix pose grid with adaptive oversampling (shared by the
    global and the local grid; needs ``healpix_order``, ``oversampling``, ``offset_range_px``,
    ``offset_step_px``)."""

    def _set_translations(self) -> None:
        self.coarse_translations = translation_grid(self.offset_range_px, self.offset_step_px).astype(np.float32)
        self.fine_translations = oversampled_translations(
            self.coarse_translations, self.offset_step_px, self.oversampling
        ).reshape(-1, 2).astype(np.float32)

    @property
    def rotation_children(self) -> int:
        return 8**self.oversampling

    @property
    def translation_children(self) -> int:
        return 4**self.oversampling

    @property
    def angular_step(self) -> float:
        """Coarse angular step in degrees (the fine step is this / 2ᵒ)."""
        return angular_step(self.healpix_order)

    @property
    def fine_angular_step(self) -> float:
        return self.angular_step / 2**self.oversampling

    @property
    def fine_offset_step(self) -> float:
        return self.offset_step_px / 2**self.oversampling


@dataclass
class Sampling3D(_HealpixSteps):
    """Coarse and fine pose grids of one E-step pass (see module docstring)."""

    healpix_order: int
    offset_range_px: float
    offset_step_px: float
    oversampling: int = 1
    symmetry: str = "C1"
    coarse_rotations: np.ndarray = field(init=False, repr=False)
    fine_rotations: np.ndarray = field(init=False, repr=False)
    coarse_translations: np.ndarray = field(init=False, repr=False)
    fine_translations: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        rot, tilt, psi = orientation_grid(self.healpix_order, self.symmetry)
        self.set_rotations(np.column_stack([rot, tilt, psi]))
        self._set_translations()

    def set_rotations(self, coarse: np.ndarray) -> "Sampling3D":
        """Use ``coarse`` (R, 3) orientations (e.g. a local neighbourhood) and recompute their children."""
        self.coarse_rotations = np.asarray(coarse, dtype=np.float64).reshape(-1, 3)
        r, t, p = oversampled_neighbours(
            self.coarse_rotations[:, 0], self.coarse_rotations[:, 1], self.coarse_rotations[:, 2],
            self.healpix_order, self.oversampling,
        )
        self.fine_rotations = np.column_stack([np.ravel(r), np.ravel(t), np.ravel(p)])
        return self


class _GridIndex:
    """Euler angles (n, 3) of grid indices, computed on demand (``grid[idx]``, ``len(grid)``).

    A local search touches a few hundred orientations per particle out of a
    grid too large to list (order 5: 2.4 million coarse orientations).
    """

    def __init__(self, to_euler, size: int):
        self._to_euler = to_euler
        self._size = int(size)

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        return self._to_euler(idx.reshape(-1)).reshape(idx.shape + (3,))


@dataclass
class LocalSampling(_HealpixSteps):
    """Local searches around each particle's prior orientation (RELION from HEALPix order 4).

    The coarse grid is the full-sphere grid at ``healpix_order`` (index =
    NESTED pixel × n_ψ + ψ index); each particle searches only the orientations
    within ``3σ`` of its prior (:func:`spa.geometry.sampling.local_neighbourhood`),
    and a Gaussian prior exp(−(Δdirection² + Δψ²)/2σ²) joins its posterior.
    σ defaults to RELION's choice on entering local searches: twice the fine
    angular step.  Children are numbered as in :class:`Sampling3D` (coarse
    index · c + j), so the fine pass is unchanged.  Degrees and pixels.
    """

    healpix_order: int
    offset_range_px: float
    offset_step_px: float
    oversampling: int = 1
    symmetry: str = "C1"
    sigma_deg: float | None = None
    local = True

    def __post_init__(self):
        n = self.healpix_order
        self.n_psi = 6 * 2**n
        if self.sigma_deg is None:
            self.sigma_deg = 2.0 * self.fine_angular_step
        n_coarse = 12 * 4**n * self.n_psi
        self.coarse_rotations = _GridIndex(self._coarse_euler, n_coarse)
        self.fine_rotations = _GridIndex(self._fine_euler, n_coarse * self.rotation_children)
        self._set_translations()

    # grid indices ↔ Euler angles
    def _coarse_euler(self, idx):
        import healpy  # noqa: PLC0415

        pix, j = np.divmod(idx, self.n_psi)
        theta, phi = healpy.pix2ang(2**self.healpix_order, pix, nest=True)
        return np.column_stack([np.rad2deg(phi), np.rad2deg(theta), j * angular_step(self.healpix_order)])

    def _fine_euler(self, idx):
        import healpy  # noqa: PLC0415

        o = self.oversampling
        coarse, child = np.divmod(idx, self.rotation_children)
        pix, j = np.divmod(coarse, self.n_psi)
        d_child, p_child = np.divmod(child, 2**o)
        theta, phi = healpy.pix2ang(2 ** (self.healpix_order + o), pix * 4**o + d_child, nest=True)
        step = angular_step(self.healpix_order)
        psi = j * step - 0.5 * step + (p_child + 0.5) * step / 2**o
        return np.column_stack([np.rad2deg(phi), np.rad2deg(theta), psi])

    def coarse_index(self, rot, tilt, psi) -> np.ndarray:
        """Coarse grid index of grid orientations (degrees)."""
        from spa.geometry.sampling import direction_pixel

        j = np.rint(np.asarray(psi) / angular_step(self.healpix_order)).astype(np.int64) % self.n_psi
        return direction_pixel(rot, tilt, self.healpix_order).astype(np.int64) * self.n_psi + j

    # the search of each particle
    def candidates(self, priors) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coarse orientations each particle searches → (particle row, coarse index, log prior), row-major.

        ``priors`` (n, 3) Euler angles (degrees) of the particles' current poses.
        """
        from spa.geometry.sampling import local_neighbourhood

        rows, keys = [], []
        for i, (rot, tilt, psi) in enumerate(np.asarray(priors, np.float64).reshape(-1, 3)):
            r, t, p = local_neighbourhood(rot, tilt, psi, self.healpix_order, sigma_deg=self.sigma_deg,
                                          max_deg=3.0 * self.sigma_deg)
            k = np.unique(self.coarse_index(r, t, p))
            keys.append(k)
            rows.append(np.full(k.size, i, np.int64))
        rows, keys = np.concatenate(rows), np.concatenate(keys)
        return rows, keys, self.log_prior(self.coarse_rotations[keys], np.asarray(priors)[rows])

    def log_prior(self, angles, priors) -> np.ndarray:
        """Gaussian log prior (unnormalised, ≤ 0) of orientations (P, 3) around their priors (P, 3)."""
        from spa.geometry.sampling import local_offsets

        a, p = np.asarray(angles, np.float64), np.asarray(priors, np.float64)
        d_dir, d_psi = local_offsets(a[:, 0], a[:, 1], a[:, 2], p[:, 0], p[:, 1], p[:, 2])
        return (-(d_dir**2 + d_psi**2) / (2.0 * self.sigma_deg**2)).astype(np.float32)


class FixedPoses:
    """No alignment: each particle keeps its own orientation and origin (RELION's --skip_align).

    Expressed as a local search whose neighbourhood is the particle's own pose,
    so a whole chunk is one batched E-step over classes only.  The "grid" is
    every orientation at 0.001° in (rot, tilt, ψ): a key encodes the particle's
    Euler angles (canonicalised), and decoding it returns them to 0.0005°.
    """

    local = True
    oversampling = 0
    rotation_children = 1
    translation_children = 1
    angular_step = 0.0
    fine_angular_step = 0.0
    fine_offset_step = 0.0
    _STEPS = 1000  # key units per degree
    _N_ROT, _N_TILT, _N_PSI = 360 * 1000 + 1, 180 * 1000 + 1, 360 * 1000 + 1

    def __init__(self):
        size = self._N_ROT * self._N_TILT * self._N_PSI
        self.coarse_rotations = _GridIndex(self._euler, size)
        self.fine_rotations = self.coarse_rotations
        self.coarse_translations = np.zeros((1, 2), np.float32)
        self.fine_translations = self.coarse_translations

    def _euler(self, keys):
        rt, p = np.divmod(keys, self._N_PSI)
        r, t = np.divmod(rt, self._N_TILT)
        return np.column_stack([r, t, p]).astype(np.float64) / self._STEPS

    def keys(self, angles) -> np.ndarray:
        """Keys of Euler angles (n, 3) in degrees (any convention-equivalent form)."""
        from spa.geometry.euler import euler_to_matrix, matrix_to_euler

        a = np.asarray(angles, np.float64).reshape(-1, 3)
        rot, tilt, psi = matrix_to_euler(euler_to_matrix(a[:, 0], a[:, 1], a[:, 2]))
        r = np.rint(np.mod(rot, 360.0) * self._STEPS).astype(np.int64) % (self._N_ROT - 1)
        t = np.clip(np.rint(np.asarray(tilt) * self._STEPS).astype(np.int64), 0, self._N_TILT - 1)
        p = np.rint(np.mod(psi, 360.0) * self._STEPS).astype(np.int64) % (self._N_PSI - 1)
        return (r * self._N_TILT + t) * self._N_PSI + p

    def candidates(self, priors):
        """Each particle's own pose, no prior penalty (see :meth:`LocalSampling.candidates`)."""
        n = np.asarray(priors).reshape(-1, 3).shape[0]
        return np.arange(n), self.keys(priors), np.zeros(n, np.float32)

    def log_prior(self, angles, priors) -> np.ndarray:
        return np.zeros(len(angles), np.float32)
