"""Rotations (RELION's ZYZ Euler convention), symmetry groups and orientation sampling."""

from spa.geometry.euler import euler_to_matrix, matrix_to_euler

__all__ = ["euler_to_matrix", "matrix_to_euler"]
