"""Rotations (RELION's ZYZ Euler convention), symmetry groups and orientation sampling."""

from spa.geometry.distance import align_rotation_sets, angular_distance, angular_distance_sym
from spa.geometry.euler import euler_to_matrix, matrix_to_euler
from spa.geometry.sampling import orientation_grid, random_rotations
from spa.geometry.symmetry import group_order, symmetrise_volume, symmetry_matrices

__all__ = [
    "align_rotation_sets",
    "angular_distance",
    "angular_distance_sym",
    "euler_to_matrix",
    "group_order",
    "matrix_to_euler",
    "orientation_grid",
    "random_rotations",
    "symmetrise_volume",
    "symmetry_matrices",
]
