"""RELION's auto-refine schedule: when to sample finer, when to stop.

After each iteration: if the resolution did not improve and the poses and
offsets changed little (by less than ~40 % of the current fine step), the
HEALPix order goes up by one and the translations get finer; when the order
cannot go up any more (``max_healpix_order``, or a step already finer than
the angular accuracy the resolution needs), the refinement has converged and
one last iteration joins the halves and uses all data to Nyquist.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Schedule:
    healpix_order: int
    offset_range: float  # px
    offset_step: float  # px
    max_healpix_order: int = 4
    best_shell: int = 0
    iter_without_gain: int = 0
    iter_small_changes: int = 0
    converged: bool = False
    final_done: bool = False

    def needed_order(self, resolution_a: float, diameter_a: float) -> int:
        """Smallest order whose step (deg) is below the angle a resolution needs at the particle edge."""
        needed = math.degrees(math.atan2(resolution_a, max(diameter_a, 1e-3)))
        order = 0
        while 360.0 / (6 * 2**order) / 2 > needed and order < 8:  # fine step = step / 2 (oversampling 1)
            order += 1
        return order

    def update(self, resolution_shell: int, angle_change_deg: float, offset_change_px: float, fine_step_deg: float,
               fine_offset_step: float, resolution_a: float, diameter_a: float) -> str:
        """Advance the schedule after one iteration; returns what it decided (for the log)."""
        if resolution_shell > self.best_shell:
            self.best_shell = resolution_shell
            self.iter_without_gain = 0
        else:
            self.iter_without_gain += 1
        small = angle_change_deg < 0.4 * fine_step_deg * 2 and offset_change_px < 0.4 * fine_offset_step * 2
        self.iter_small_changes = self.iter_small_changes + 1 if small else 0
        if self.iter_without_gain < 1 or (self.iter_small_changes < 1 and self.iter_without_gain < 2):
            return "keep sampling"
        limit = min(self.max_healpix_order, max(self.needed_order(resolution_a, diameter_a), 0))
        if self.healpix_order < limit:
            self.healpix_order += 1
            self.offset_step = max(self.offset_step / 2.0, 0.25)
            self.offset_range = max(2.0 * self.offset_step, min(self.offset_range, 3.0 * self.offset_step))
            self.iter_without_gain = 0
            self.iter_small_changes = 0
            return f"finer sampling: HEALPix order {self.healpix_order}"
        self.converged = True
        return "converged"

    def to_array(self) -> np.ndarray:
        return np.array(repr(asdict(self)))

    @classmethod
    def from_array(cls, a) -> "Schedule":
        import ast

        return cls(**ast.literal_eval(str(a)))


def mean_angle_change(previous, current, symmetry: str = "C1") -> float:
    """Mean rotation angle (degrees) between two (n, 3) Euler-angle arrays of the same particles.

    Modulo ``symmetry``: a particle that moved to a symmetry mate of its pose (the same projections)
    has not changed.
    """
    from spa.geometry.distance import angular_distance_sym
    from spa.geometry.euler import euler_to_matrix

    if previous is None or len(previous) == 0:
        return 180.0
    a = euler_to_matrix(previous[:, 0], previous[:, 1], previous[:, 2])
    b = euler_to_matrix(current[:, 0], current[:, 1], current[:, 2])
    return float(np.mean(angular_distance_sym(a, b, symmetry)))
