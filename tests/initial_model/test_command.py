"""``spa initial-model`` end to end on a small particle STAR file: outputs, provenance, errors."""

import numpy as np
import pandas as pd
import pytest

from spa.cli import main
from spa.em.projector import Projector
from spa.geometry.euler import euler_to_matrix
from spa.geometry.sampling import random_euler
from spa.geometry.symmetry import rotate_volume, symmetry_matrices
from spa.io.mrc import read_mrc, write_mrcs
from spa.io.star import read_particles, read_star, write_particles
from spa.io.zarrstack import create_stack, write_images
from spa.provenance import read_record
from tests.initial_model.conftest import molecule, simulate
from tests.conftest import listed_figures

BOX, PIXEL, N = 32, 5.0, 300


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("im_data")
    vol = molecule(BOX, PIXEL)
    images, table, _, _ = simulate(vol, PIXEL, N, snr=1.0, seed=2)
    create_stack(d / "particles.zarr", BOX, N, pixel_size=PIXEL)
    write_images(d / "particles.zarr", 0, images)
    parts = table[["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]].copy()
    parts.insert(0, "rlnImageName", [f"{i + 1:06d}@particles.zarr" for i in range(N)])
    parts["rlnOpticsGroup"] = 1
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnImagePixelSize": [PIXEL], "rlnImageSize": [BOX], "rlnImageDimensionality": [2],
                           "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    write_particles(d / "particles.star", parts, optics)
    rng = np.random.default_rng(1)
    euler = np.column_stack(random_euler(12, rng))
    averages = Projector(vol).project_images(euler_to_matrix(*euler.T).astype(np.float32))
    write_mrcs(d / "classes.mrcs", averages, PIXEL)
    return d


def test_initial_model_writes_every_output_at_the_original_box(dataset, tmp_path):
    out = tmp_path / "InitialModel"
    argv = ["initial-model", "--particles", str(dataset / "particles.star"), "--output-dir", str(out),
            "--iter", "4", "--batch-size", "120", "--final-resolution", "20", "--candidates", "2",
            "--class-averages", str(dataset / "classes.mrcs"), "--sym", "C2", "--seed", "7"]
    assert main(argv) == 0
    for name in ("initial_model.mrc", "initial_model_mirror.mrc", "run_data.star", "candidates.star",
                 "candidate_scores.png", "initial_model.json", "candidates/candidate_01.mrc",
                 "candidates/candidate_02.mrc"):
        assert (out / name).exists(), name
    assert listed_figures(out) == ["candidate_slices.png", "candidate_scores.png"]
    vol, px = read_mrc(out / "initial_model.mrc")
    assert vol.shape == (BOX,) * 3 and px == pytest.approx(PIXEL)  # back at the particles' box and pixel
    # C2 imposed in RELION's setting: the 2-fold on z
    c2 = symmetry_matrices("C2")[1]
    assert np.corrcoef(vol.ravel(), rotate_volume(vol, c2, order=3).ravel())[0, 1] > 0.95
    mirror, _ = read_mrc(out / "initial_model_mirror.mrc")
    assert np.allclose(np.sort(mirror.ravel()), np.sort(vol.ravel()))
    parts, _ = read_particles(out / "run_data.star")
    assert len(parts) == N
    for col in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
                "rlnClassNumber", "rlnMaxValueProbDistribution"):
        assert col in parts
    assert parts["rlnOriginXAngst"].abs().max() <= 0.08 * BOX * PIXEL + 2 * PIXEL
    cands = read_star(out / "candidates.star")["candidates"]
    assert int(cands["spaChosen"].sum()) == 1
    assert set(cands["spaCandidateMethod"]) <= {"sgd", "commonlines"} and len(cands) >= 2
    rec = read_record(out / "run_data.star")
    assert rec["seed"] == 7 and "initial-model" in rec["command"]
    assert "seed 7" in read_record(out / "initial_model.mrc")


def test_missing_particles_is_a_one_line_error(tmp_path, capsys):
    rc = main(["initial-model", "--particles", str(tmp_path / "nope.star"), "--output-dir", str(tmp_path / "o")])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.star" in err[0]
    assert not (tmp_path / "o" / "initial_model.mrc").exists()


def test_bad_symmetry_is_refused(dataset, tmp_path, capsys):
    rc = main(["initial-model", "--particles", str(dataset / "particles.star"), "--output-dir", str(tmp_path / "o"),
               "--sym", "X7"])
    assert rc == 1 and "X7" in capsys.readouterr().err
