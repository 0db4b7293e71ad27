"""Particle extraction from micrographs (RELION's Extract job): :mod:`spa.extraction.extract`."""
