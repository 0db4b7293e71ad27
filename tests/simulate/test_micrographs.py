"""Simulated micrographs: truth coordinates on particle centres, protein dark, CTF truth, files."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft as sfft

from spa.ctf import ctf_2d
from spa.geometry.euler import euler_to_matrix
from spa.io.mrc import read_mrc
from spa.io.star import read_micrographs, read_star
from spa.simulate.micrographs import MicrographSpec, contrast_scale, make_scene, molecules_for, simulate_micrographs
from spa.simulate.projection import project_molecule

# no ice texture or thickness changes: the noise-free contrast is the particles alone
SPEC = MicrographSpec(n=2, size=384, pixel_size=1.5, diameter=80.0, carbon_fraction=0.0, contaminants=0.0,
                      ice_texture=0.0, ice_gradient=0.0)


def _ncc(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.fixture(scope="module")
def scene():
    mols = molecules_for(SPEC, 3)
    kappa, sd = contrast_scale(SPEC, mols, 3)
    return make_scene(SPEC, 0, 3, mols, kappa, sd), mols, kappa


def test_truth_coordinates_hit_particle_centres_and_protein_is_dark(scene):
    sc, mols, kappa = scene
    coords = sc.coordinates
    assert len(coords) >= 5
    box = SPEC.particle_box
    u, v, ang = sc.defocus
    ctf = ctf_2d(box, SPEC.pixel_size, u, v, ang, SPEC.voltage, SPEC.cs, SPEC.amplitude_contrast)
    padded = np.pad(sc.contrast, box)
    for _, row in coords.iterrows():
        x, y = int(row.rlnCoordinateX), int(row.rlnCoordinateY)  # column, row of the centre
        a = euler_to_matrix(row.rlnAngleRot, row.rlnAngleTilt, row.rlnAnglePsi)
        proj = project_molecule(mols[int(row.rlnClassNumber) - 1], a[None], box, SPEC.pixel_size)[0]
        model = sfft.irfft2(sfft.rfft2(proj) * ctf, s=(box, box))  # white particle, CTF-modulated
        patch = sc.contrast[y - box // 2 : y - box // 2 + box, x - box // 2 : x - box // 2 + box]
        # the recorded contrast is the negative: protein dark on the micrograph
        assert _ncc(-patch, model) > 0.85
        y0, x0 = y + box - box // 2, x + box - box // 2  # corner of the box in the padded micrograph
        off = padded[y0 + 5 : y0 + 5 + box, x0 - 4 : x0 - 4 + box]
        assert _ncc(-off, model) < _ncc(-patch, model) - 0.2
    # particles do not overlap
    xy = coords[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)) + np.eye(len(xy)) * 1e9
    assert d.min() >= SPEC.diameter / SPEC.pixel_size


def test_micrograph_files_and_ctf_truth(tmp_path):
    spec = MicrographSpec(n=2, size=512, pixel_size=1.2, diameter=90.0, carbon_fraction=1.0, contaminants=1.0,
                          defocus_min=12000, defocus_max=12000, astigmatism=0.0)
    star = simulate_micrographs(tmp_path, spec, seed=5)
    mics, optics = read_micrographs(star)
    assert len(mics) == 2 and optics["rlnMicrographPixelSize"].iloc[0] == pytest.approx(1.2)
    truth, _ = read_micrographs(tmp_path / "truth" / "micrographs_ctf.star", require=("rlnMicrographName", "rlnDefocusU"))
    assert np.allclose(truth["rlnDefocusU"], 12000) and list(truth["rlnSpaCarbon"]) == [1, 1]
    index = read_star(tmp_path / "truth" / "coordinates.star")["coordinate_files"]
    for name, cfile in zip(index["rlnMicrographName"], index["rlnMicrographCoordinates"]):
        img, px = read_mrc(tmp_path / name)
        assert img.shape == (512, 512) and px == pytest.approx(1.2)
        # counts: mean ≈ dose · pixel² (contaminants and carbon make it a bit darker)
        assert 0.75 * spec.dose * 1.44 < img.mean() < 1.05 * spec.dose * 1.44
        coords = read_star(tmp_path / cfile)[""]
        assert {"rlnCoordinateX", "rlnCoordinateY", "rlnAngleRot", "rlnClassNumber"} <= set(coords.columns)
        # Thon rings: the spectrum correlates with CTF² of the true defocus better than with a wrong one
        ps = np.abs(np.fft.rfft2(img - img.mean())) ** 2
        from spa.fourier import radial_average, shells_2d

        sh = shells_2d(512)
        prof = np.log(radial_average(ps, sh, 257)[20:250])
        prof -= np.convolve(prof, np.ones(9) / 9, mode="same")

        def score(df):
            c2 = radial_average(ctf_2d(512, 1.2, df, df, 0, 300, 2.7, 0.1) ** 2, sh, 257)[20:250]
            return np.corrcoef(prof[5:-5], c2[5:-5])[0, 1]

        assert score(12000) > score(10000) + 0.1 and score(12000) > score(14000) + 0.1
    (m, px) = read_mrc(tmp_path / "truth" / "class001.mrc")
    assert m.shape == (spec.particle_box,) * 3 and px == pytest.approx(1.2)


def test_scene_is_deterministic(scene):
    sc, mols, kappa = scene
    again = make_scene(SPEC, 0, 3, mols, kappa, 1.0)
    assert again.coordinates.equals(sc.coordinates) and again.defocus == sc.defocus
