"""Validation of a refinement: :mod:`spa.validation.angular` (angular distribution and how well it samples
Fourier space)."""
