"""ParticleImages: rlnImageName parsing, RELION path resolution, mixed .mrcs/.zarr reads."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from spa.io.images import ParticleImages, parse_image_names
from spa.io.mrc import read_mrc, write_mrcs
from spa.io.star import read_particles, write_particles
from spa.io.zarrstack import create_stack, write_images

BOX = 10


def _optics(pixel=1.5):
    return pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnAmplitudeContrast": [0.1],
            "rlnSphericalAberration": [2.7],
            "rlnVoltage": [300.0],
            "rlnImagePixelSize": [pixel],
            "rlnImageSize": [BOX],
            "rlnImageDimensionality": [2],
        }
    )


@pytest.fixture
def project(tmp_path):
    """A STAR file in star/ whose rows point into two .mrcs stacks and one .zarr stack in star/stacks/."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, BOX, BOX)).astype(np.float32)
    b = rng.normal(size=(3, BOX, BOX)).astype(np.float32)
    z = rng.normal(size=(5, BOX, BOX)).astype(np.float32)
    stacks = tmp_path / "star" / "stacks"
    write_mrcs(stacks / "a.mrcs", a, 1.5)
    write_mrcs(stacks / "b.mrcs", b, 1.5)
    create_stack(stacks / "z.zarr", BOX, 5, chunk=2, pixel_size=1.5)
    write_images(stacks / "z.zarr", 0, z)
    refs = [("b", 3), ("a", 1), ("z", 5), ("a", 4), ("z", 1), ("b", 1), ("z", 3), ("a", 2)]
    source = {"a": a, "b": b, "z": z}
    ext = {"a": "mrcs", "b": "mrcs", "z": "zarr"}
    names = [f"{i:06d}@stacks/{s}.{ext[s]}" for s, i in refs]
    truth = np.stack([source[s][i - 1] for s, i in refs])
    parts = pd.DataFrame({"rlnImageName": names, "rlnOpticsGroup": 1, "rlnDefocusU": 1e4})
    star = tmp_path / "star" / "particles.star"
    write_particles(star, parts, _optics())
    return star, truth


def test_reads_any_rows_across_files(project, tmp_path, monkeypatch):
    star, truth = project
    monkeypatch.chdir(tmp_path)  # paths are relative to star/, not to the cwd: the fallback finds them
    parts, _ = read_particles(star)
    images = ParticleImages(parts, star)
    assert len(images) == 8 and images.box == BOX and images.pixel_size == 1.5
    for rows in ([0], [7, 2, 2, 4], list(range(8)), []):
        np.testing.assert_array_equal(images.read(rows), truth[rows])
    np.testing.assert_array_equal(images.read_all(), truth)


def test_cwd_wins_over_the_star_folder(project, tmp_path, monkeypatch):
    """As RELION: a relative path is first looked up from the current directory."""
    star, truth = project
    other = tmp_path / "elsewhere"
    decoy = np.full((4, BOX, BOX), 7.0, np.float32)
    write_mrcs(other / "stacks" / "a.mrcs", decoy, 1.5)
    monkeypatch.chdir(other)
    parts, _ = read_particles(star)
    images = ParticleImages(parts, star)
    np.testing.assert_array_equal(images.read([1])[0], decoy[0])  # row 1 is 1@stacks/a.mrcs
    np.testing.assert_array_equal(images.read([0]), truth[[0]])  # b.mrcs only beside the STAR


def test_picklable_and_independent_of_cwd_after_construction(project, tmp_path, monkeypatch):
    star, truth = project
    parts, _ = read_particles(star)
    monkeypatch.chdir(tmp_path)
    images = ParticleImages(parts, star)
    images.read([0, 2])  # open some files first: the handles must not travel
    monkeypatch.chdir("/")
    clone = pickle.loads(pickle.dumps(images))
    np.testing.assert_array_equal(clone.read([6, 3, 0]), truth[[6, 3, 0]])


def test_parse_image_names():
    idx, files = parse_image_names(pd.Series(["000012@a/b.mrcs", "3@/abs/c.zarr", "single.mrc"]))
    assert idx.tolist() == [11, 2, 0]
    assert files.tolist() == ["a/b.mrcs", "/abs/c.zarr", "single.mrc"]


def test_real_relion_stack(hb_c2):
    parts, _ = read_particles(hb_c2 / "particles.star")
    images = ParticleImages(parts, hb_c2 / "particles.star")
    assert len(images) == 1000 and images.box == 64 and images.pixel_size == 1.640625
    all_images, pixel = read_mrc(hb_c2 / "particles.mrcs")
    rows = [999, 0, 500, 0]
    np.testing.assert_array_equal(images.read(rows), all_images[rows])
