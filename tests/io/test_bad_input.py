"""Bad input gives one SpaInputError that names the file, and leaves no output behind."""

from __future__ import annotations

import mrcfile
import numpy as np
import pandas as pd
import pytest

from spa.cli import main as spa_main
from spa.errors import SpaInputError
from spa.io.convert import convert_particles
from spa.io.images import ParticleImages
from spa.io.mrc import read_mrc, read_mrc_header, write_mrcs
from spa.io.star import CTF_COLUMNS, read_particles, read_star, write_particles

BOX = 8

OPTICS = """data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnAmplitudeContrast #3
_rlnSphericalAberration #4
_rlnVoltage #5
_rlnImagePixelSize #6
_rlnImageSize #7
_rlnImageDimensionality #8
1 opticsGroup1 0.1 2.7 300.0 {pixel} {box} 2

"""


def _star(folder, rows, pixel=1.0, box=BOX, optics=None, columns=("rlnImageName", "rlnOpticsGroup", "rlnDefocusU")):
    head = "\n".join(f"_{c} #{n}" for n, c in enumerate(columns, 1))
    text = (optics if optics is not None else OPTICS.format(pixel=pixel, box=box))
    text += f"data_particles\n\nloop_\n{head}\n" + "\n".join(rows) + "\n"
    path = folder / "particles.star"
    path.write_text(text)
    return path


@pytest.fixture
def good(tmp_path):
    """A valid set: 3 particles in stack.mrcs beside particles.star."""
    src = tmp_path / "in"
    write_mrcs(src / "stack.mrcs", np.random.default_rng(0).normal(size=(3, BOX, BOX)).astype(np.float32), 1.0)
    star = _star(src, [f"{i}@stack.mrcs 1 10000.0" for i in (1, 2, 3)])
    return star


def _fails(star, tmp_path, match):
    """convert and the CLI both refuse with a message naming ``match``; nothing is written."""
    out = tmp_path / "out"
    with pytest.raises(SpaInputError, match=match):
        convert_particles(star, out, "zarr")
    assert not out.exists() or not any(out.iterdir())
    return out


def _cli_fails(star, tmp_path, capsys, match):
    out = tmp_path / "cli_out"
    rc = spa_main(["convert", "--particles", str(star), "--to", "mrcs", "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert rc != 0
    assert len(err.strip().splitlines()) == 1 and match in err
    assert not out.exists() or not any(out.iterdir())


def test_good_set_converts(good, tmp_path):
    assert convert_particles(good, tmp_path / "out", "zarr").exists()


# ---------------------------------------------------------------- MRC files


def test_truncated_mrc(good, tmp_path, capsys):
    stack = good.parent / "stack.mrcs"
    stack.write_bytes(stack.read_bytes()[: 1024 + BOX * BOX * 4 * 2 + 10])
    with pytest.raises(SpaInputError, match="stack.mrcs.*truncated"):
        read_mrc(stack)
    with pytest.raises(SpaInputError, match="stack.mrcs"):
        read_mrc_header(stack)
    _fails(good, tmp_path, "stack.mrcs")
    _cli_fails(good, tmp_path, capsys, "stack.mrcs")


def test_not_an_mrc_file(tmp_path):
    bad = tmp_path / "junk.mrc"
    bad.write_bytes(b"this is not a map" * 10)
    with pytest.raises(SpaInputError, match="junk.mrc"):
        read_mrc(bad)
    with pytest.raises(SpaInputError, match="missing.mrc.*not found"):
        read_mrc(tmp_path / "missing.mrc")


def test_unsupported_mode(tmp_path):
    path = tmp_path / "complex.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.zeros((4, 4), np.complex64))
        m.voxel_size = 1.0
    with pytest.raises(SpaInputError, match="complex.mrc.*mode 4"):
        read_mrc(path)


def test_nan_in_map(tmp_path):
    data = np.ones((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    path = tmp_path / "nan.mrc"
    with mrcfile.new(path) as m:
        m.set_data(data)
        m.voxel_size = 1.0
    with pytest.raises(SpaInputError, match="nan.mrc.*NaN"):
        read_mrc(path)


def test_pixel_size_zero_in_header(tmp_path):
    path = tmp_path / "nopix.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.ones((4, 4), np.float32))  # voxel size never set: 0
    with pytest.raises(SpaInputError, match="nopix.mrc.*pixel size"):
        read_mrc(path)


# ---------------------------------------------------------------- STAR files


def test_missing_star(tmp_path, capsys):
    with pytest.raises(SpaInputError, match="nothere.star.*not found"):
        read_particles(tmp_path / "nothere.star")
    _cli_fails(tmp_path / "nothere.star", tmp_path, capsys, "nothere.star")


def test_unparseable_star(tmp_path):
    path = tmp_path / "broken.star"
    path.write_bytes(b"\x00\xff\xfe garbage\n")
    with pytest.raises(SpaInputError, match="broken.star"):
        read_star(path)


def test_star_without_image_names(tmp_path, capsys):
    star = _star(tmp_path, ["1 10000.0"], columns=("rlnOpticsGroup", "rlnDefocusU"))
    with pytest.raises(SpaInputError, match="particles.star.*rlnImageName"):
        read_particles(star)
    _fails(star, tmp_path, "particles.star")
    _cli_fails(star, tmp_path, capsys, "rlnImageName")


def test_required_ctf_columns(good):
    with pytest.raises(SpaInputError, match="particles.star.*rlnDefocusV"):
        read_particles(good, require=("rlnImageName", *CTF_COLUMNS))


def test_missing_optics_columns(tmp_path, capsys):
    optics = "data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnVoltage #2\n1 300.0\n\n"
    star = _star(tmp_path, ["1@s.mrcs 1 10000.0"], optics=optics)
    with pytest.raises(SpaInputError, match="particles.star.*rlnImagePixelSize"):
        read_particles(star)
    _cli_fails(star, tmp_path, capsys, "rlnImagePixelSize")


def test_relion30_without_optics_values(tmp_path):
    path = tmp_path / "old.star"
    path.write_text("data_\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n1@s.mrcs 10000\n")
    with pytest.raises(SpaInputError, match="old.star.*rlnVoltage"):
        read_particles(path)


def test_pixel_size_zero_in_star(good, tmp_path, capsys):
    star = _star(good.parent, ["1@stack.mrcs 1 10000.0"], pixel=0.0)
    with pytest.raises(SpaInputError, match="particles.star.*rlnImagePixelSize is 0"):
        read_particles(star)
    _fails(star, tmp_path, "particles.star")
    _cli_fails(star, tmp_path, capsys, "particles.star")


def test_nan_in_numeric_column(good):
    star = _star(good.parent, ["1@stack.mrcs 1 10000.0", "2@stack.mrcs 1 nan"])
    with pytest.raises(SpaInputError, match="particles.star.*rlnDefocusU.*NaN"):
        read_particles(star)


def test_optics_group_missing(good):
    star = _star(good.parent, ["1@stack.mrcs 1 10000.0", "2@stack.mrcs 3 10000.0"])
    with pytest.raises(SpaInputError, match="particles.star.*rlnOpticsGroup 3"):
        read_particles(star)


# ---------------------------------------------------------------- images


def test_missing_image_file(good, tmp_path, capsys):
    (good.parent / "stack.mrcs").unlink()
    with pytest.raises(SpaInputError, match="particles.star.*stack.mrcs not found"):
        ParticleImages(read_particles(good)[0], good)
    _fails(good, tmp_path, "stack.mrcs")
    _cli_fails(good, tmp_path, capsys, "stack.mrcs")


def test_index_out_of_range(good, tmp_path):
    star = _star(good.parent, ["4@stack.mrcs 1 10000.0"])
    _fails(star, tmp_path, "particles.star.*4@.*stack.mrcs.*out of range")


def test_nan_pixels(good, tmp_path, capsys):
    imgs = np.ones((3, BOX, BOX), np.float32)
    imgs[2, 1, 1] = np.nan
    write_mrcs(good.parent / "stack.mrcs", imgs, 1.0)
    images = ParticleImages(read_particles(good)[0], good)
    np.testing.assert_array_equal(images.read([0, 1]), imgs[:2])  # the good ones read fine
    with pytest.raises(SpaInputError, match="stack.mrcs.*image 3.*NaN"):
        images.read([0, 2])
    _fails(good, tmp_path, "stack.mrcs")
    _cli_fails(good, tmp_path, capsys, "stack.mrcs")


def test_box_sizes_differ_between_files(good, tmp_path, capsys):
    write_mrcs(good.parent / "big.mrcs", np.zeros((2, BOX + 2, BOX + 2), np.float32), 1.0)
    star = _star(good.parent, ["1@stack.mrcs 1 10000.0", "1@big.mrcs 1 10000.0"])
    _fails(star, tmp_path, "particles.star.*box sizes differ")
    _cli_fails(star, tmp_path, capsys, "big.mrcs")


def test_box_size_differs_from_star(good, tmp_path):
    star = _star(good.parent, ["1@stack.mrcs 1 10000.0"], box=BOX * 2)
    _fails(star, tmp_path, "particles.star.*rlnImageSize is 16")


def test_writers_leave_nothing_on_failure(tmp_path):
    parts = pd.DataFrame({"rlnImageName": ["1@a.mrcs"], "rlnOpticsGroup": [2]})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [1.0]})
    with pytest.raises(ValueError):
        write_particles(tmp_path / "p.star", parts, optics)
    assert not any(tmp_path.iterdir())
