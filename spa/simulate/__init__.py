"""Built-in demo data with ground truth (``spa simulate``).

* :mod:`~spa.simulate.molecule` — the pseudo-atomic, asymmetric test molecule
  (assemblies, conformations);
* :mod:`~spa.simulate.density` — its map on a grid (sum of Gaussians);
* :mod:`~spa.simulate.projection` — analytic projections (independent of the
  Fourier projector);
* :mod:`~spa.simulate.particles` — particle stacks with CTF, origins, noise, junk;
* :mod:`~spa.simulate.micrographs` — micrographs with ice, carbon, contaminants;
* :mod:`~spa.simulate.movies` — movies with drift, local motion, damage, gain.
"""

from spa.simulate.density import render_map
from spa.simulate.micrographs import MicrographSpec, simulate_micrographs
from spa.simulate.molecule import Molecule, make_molecule
from spa.simulate.movies import MovieSpec, simulate_movies
from spa.simulate.particles import ParticleSpec, simulate_particles
from spa.simulate.projection import project_atoms, project_molecule

__all__ = [
    "Molecule", "make_molecule", "render_map", "project_atoms", "project_molecule",
    "ParticleSpec", "simulate_particles", "MicrographSpec", "simulate_micrographs",
    "MovieSpec", "simulate_movies",
]
