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


@dataclass
class Sampling3D:
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
        self.coarse_translations = translation_grid(self.offset_range_px, self.offset_step_px).astype(np.float32)
        self.fine_translations = oversampled_translations(
            self.coarse_translations, self.offset_step_px, self.oversampling
        ).reshape(-1, 2).astype(np.float32)

    def set_rotations(self, coarse: np.ndarray) -> "Sampling3D":
        """Use ``coarse`` (R, 3) orientations (e.g. a local neighbourhood) and recompute their children."""
        self.coarse_rotations = np.asarray(coarse, dtype=np.float64).reshape(-1, 3)
        r, t, p = oversampled_neighbours(
            self.coarse_rotations[:, 0], self.coarse_rotations[:, 1], self.coarse_rotations[:, 2],
            self.healpix_order, self.oversampling,
        )
        self.fine_rotations = np.column_stack([np.ravel(r), np.ravel(t), np.ravel(p)])
        return self

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
