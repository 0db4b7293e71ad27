"""Particle picking from micrographs (RELION's AutoPick outputs).

* :mod:`spa.picking.log` — Laplacian-of-Gaussian picker: needs only the particle size;
* :mod:`spa.picking.clean` — masks of carbon, contamination and aggregates; drops picks inside them;
* :mod:`spa.picking.coordinates` — RELION coordinate STAR files in and out, matching picks to a truth.
"""
