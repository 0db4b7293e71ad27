"""The auto-refine schedule's pose-change measure and its sampling decisions."""

import numpy as np

from spa.geometry.euler import euler_to_matrix, matrix_to_euler
from spa.geometry.sampling import random_rotations
from spa.geometry.symmetry import symmetry_matrices
from spa.refine3d.schedule import Schedule, mean_angle_change


def test_a_jump_to_a_symmetry_mate_is_no_change():
    rots = random_rotations(50, 1)
    mates = symmetry_matrices("D2")
    jumped = np.array([r @ mates[i % len(mates)] for i, r in enumerate(rots)])
    before = np.column_stack(matrix_to_euler(rots))
    after = np.column_stack(matrix_to_euler(jumped))
    assert mean_angle_change(before, after, "D2") < 1e-3
    assert mean_angle_change(before, after, "C1") > 30.0
    # a real 2° change is still seen with symmetry
    tilt = euler_to_matrix(0.0, 2.0, 0.0)
    moved = np.column_stack(matrix_to_euler(np.array([r @ tilt for r in jumped])))
    assert abs(mean_angle_change(before, moved, "D2") - 2.0) < 0.01


def test_schedule_goes_finer_only_when_resolution_stalls_and_poses_settle():
    s = Schedule(healpix_order=2, offset_range=5.0, offset_step=1.0, max_healpix_order=4)
    assert s.update(10, 20.0, 1.0, 7.5, 0.5, 8.0, 100.0) == "keep sampling"  # resolution improved
    assert s.update(10, 20.0, 1.0, 7.5, 0.5, 8.0, 100.0) == "keep sampling"  # stalled, poses still moving
    assert s.update(10, 1.0, 0.1, 7.5, 0.5, 8.0, 100.0).startswith("finer sampling")
    assert s.healpix_order == 3 and s.offset_step == 0.5
