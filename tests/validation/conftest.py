"""A small simulated refinement with known truth for the validation checks (made here, nothing committed).

Box 32 at 3 Å/px (Nyquist 6 Å), an asymmetric pseudo-atom molecule, 600
particles with CTF and white noise, written as an MRCS stack and a RELION
STAR with the *true* poses as the "refined" ones and rlnRandomSubset; the
half maps and the map reconstructed from them; class averages made from
clean projections of the truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BOX, PIXEL = 32, 3.0


@dataclass
class Refined:
    star: Path
    table: pd.DataFrame
    truth: np.ndarray
    volume: np.ndarray
    half1: Path
    half2: Path
    map: Path
    truth_path: Path
    euler: np.ndarray


def write_particles_set(folder: Path, name: str, images, table, euler, origins_a, *, box: int = BOX,
                        pixel: float = PIXEL) -> Path:
    """An MRCS stack and a STAR (optics block) with the given poses, origins and halves; returns its path."""
    from spa.io.mrc import write_mrcs
    from spa.io.star import write_particles

    stack = folder / f"{name}.mrcs"
    write_mrcs(stack, images, pixel)
    t = table.copy()
    t["rlnImageName"] = [f"{i + 1}@{stack}" for i in range(len(images))]
    t["rlnAngleRot"], t["rlnAngleTilt"], t["rlnAnglePsi"] = np.asarray(euler).T
    t["rlnOriginXAngst"], t["rlnOriginYAngst"] = np.asarray(origins_a).T
    t["rlnRandomSubset"] = np.arange(len(t)) % 2 + 1
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["g1"], "rlnImagePixelSize": [pixel],
                           "rlnImageSize": [box], "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7],
                           "rlnAmplitudeContrast": [0.1]})
    drop = [c for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize",
                        "rlnImageSize") if c in t.columns]
    star = folder / f"{name}.star"
    write_particles(star, t.drop(columns=drop), optics)
    return star


@pytest.fixture(scope="package")
def refined(tmp_path_factory) -> Refined:
    from spa.io.mrc import write_mrc
    from spa.io.star import read_particles
    from spa.validation.halves import reconstruct_halves
    from spa.io.images import ParticleImages
    from tests.initial_model.conftest import molecule, simulate

    folder = tmp_path_factory.mktemp("refined")
    truth = molecule(BOX, PIXEL)
    images, table, euler, origins = simulate(truth, PIXEL, 600, snr=0.5, seed=5)
    star = write_particles_set(folder, "run_data", images, table, euler, origins)
    rows, _ = read_particles(star)
    source = ParticleImages(rows, star)
    h1, h2 = reconstruct_halves(source.read, rows, rows["rlnRandomSubset"].to_numpy(), pixel_size=PIXEL)
    paths = [folder / "half1.mrc", folder / "half2.mrc", folder / "map.mrc", folder / "truth.mrc"]
    volume = 0.5 * (h1 + h2)
    for p, v in zip(paths, (h1, h2, volume, truth)):
        write_mrc(p, v, PIXEL)
    return Refined(star, rows, truth, volume, paths[0], paths[1], paths[2], paths[3], euler)
