"""spa convert: RELION .mrcs <-> spa .zarr keeps every image bit for bit and every column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spa.cli import main as spa_main
from spa.io.convert import convert_particles
from spa.io.images import ParticleImages
from spa.io.mrc import read_mrc_header, write_mrcs
from spa.io.star import read_particles, read_star
from spa.io.zarrstack import open_stack, stack_info
from spa.provenance import read_record

BOX = 12


@pytest.fixture
def relion_set(tmp_path):
    """A RELION 3.0-style particle STAR (hand-written) with images in two .mrcs files."""
    rng = np.random.default_rng(3)
    m1 = rng.normal(size=(5, BOX, BOX)).astype(np.float32)
    m2 = rng.normal(size=(4, BOX, BOX)).astype(np.float32)
    src = tmp_path / "relion"
    write_mrcs(src / "Particles" / "m1.mrcs", m1, 2.1)
    write_mrcs(src / "Particles" / "m2.mrcs", m2, 2.1)
    refs = [(2, 4), (1, 1), (1, 5), (2, 1), (1, 3), (2, 2), (1, 2)]
    lines = [
        f"{i:06d}@Particles/m{s}.mrcs  Micrographs/m{s}.mrc  {1e4 + 100 * k:.6f}  {9e3 + 50 * k:.6f}  {10.0 * k:.6f}  "
        f"300.0  2.7  0.1  2.1  {k % 3 - 1:.6f}  {0.5 * k:.6f}  {k + 1}"
        for k, (s, i) in enumerate(refs)
    ]
    header = "\n".join(
        f"_{c} #{n}"
        for n, c in enumerate(
            [
                "rlnImageName", "rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
                "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize",
                "rlnOriginX", "rlnOriginY", "rlnClassNumber",
            ],
            1,
        )
    )
    star = src / "particles.star"
    star.write_text(f"\ndata_\n\nloop_\n{header}\n" + "\n".join(lines) + "\n")
    truth = np.stack([(m1, m2)[s - 1][i - 1] for s, i in refs])
    return star, truth


def _same_metadata(a: pd.DataFrame, b: pd.DataFrame):
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a.drop(columns="rlnImageName"), b.drop(columns="rlnImageName"))


def test_mrcs_to_zarr_and_back_is_exact(relion_set, tmp_path, monkeypatch):
    star, truth = relion_set
    zstar = convert_particles(star, tmp_path / "z", "zarr", chunk=3)
    assert sorted(p.name for p in (tmp_path / "z").iterdir()) == ["particles.star", "particles.zarr"]
    info = stack_info(tmp_path / "z" / "particles.zarr")
    assert (info.n, info.box, info.pixel_size, info.chunk) == (7, BOX, 2.1, 3)
    zparts, _ = read_particles(zstar)
    # written relative to the STAR's folder; read back, they resolve from the cwd
    written = read_star(zstar)["particles"]["rlnImageName"].tolist()
    assert written == [f"{i:06d}@particles.zarr" for i in range(1, 8)]
    assert zparts["rlnImageName"].str.endswith("particles.zarr").all()
    monkeypatch.chdir(tmp_path / "relion")  # reading the output works from any directory
    np.testing.assert_array_equal(ParticleImages(zparts, zstar).read_all(), truth)

    mstar = convert_particles(zstar, tmp_path / "m", "mrcs")
    mparts, _ = read_particles(mstar)
    header = read_mrc_header(tmp_path / "m" / "particles.mrcs")
    assert header.is_stack and header.mode == 2 and header.pixel_size == pytest.approx(2.1)
    monkeypatch.chdir(tmp_path)
    np.testing.assert_array_equal(ParticleImages(mparts, mstar).read_all(), truth)
    # every other column survives both conversions unchanged
    orig, _ = read_particles(star)
    _same_metadata(orig, zparts)
    _same_metadata(orig, mparts)
    assert mparts["rlnOriginXAngst"].tolist() == pytest.approx([(k % 3 - 1) * 2.1 for k in range(7)])


def test_float16_option(relion_set, tmp_path):
    star, truth = relion_set
    zstar = convert_particles(star, tmp_path / "z", "zarr", float16=True)
    assert open_stack(tmp_path / "z" / "particles.zarr").dtype == np.float16
    mstar = convert_particles(zstar, tmp_path / "m", "mrcs", float16=True)
    assert read_mrc_header(tmp_path / "m" / "particles.mrcs").mode == 12
    parts, _ = read_particles(mstar)
    expected = truth.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(ParticleImages(parts, mstar).read_all(), expected)


def test_cli_convert_records_provenance(relion_set, tmp_path, capsys):
    star, truth = relion_set
    out = tmp_path / "cli"
    rc = spa_main(["convert", "--particles", str(star), "--to", "zarr", "--output-dir", str(out), "--chunk", "4"])
    assert rc == 0
    rec = read_record(str(out / "particles.star"))
    assert "--to zarr" in rec["command"] and rec["config"]["chunk"] == 4
    assert set(read_star(out / "particles.star")) == {"optics", "particles"}
    parts, _ = read_particles(out / "particles.star")
    np.testing.assert_array_equal(ParticleImages(parts, out / "particles.star").read_all(), truth)


def test_refuses_to_overwrite_its_input(relion_set, tmp_path):
    from spa.errors import SpaInputError

    star, _ = relion_set
    with pytest.raises(SpaInputError, match="particles.star"):
        convert_particles(star, star.parent, "zarr")


def test_real_relion_set_round_trip(hb_c2, tmp_path):
    zstar = convert_particles(hb_c2 / "particles.star", tmp_path / "z", "zarr")
    mstar = convert_particles(zstar, tmp_path / "m", "mrcs")
    orig, _ = read_particles(hb_c2 / "particles.star")
    back, _ = read_particles(mstar)
    _same_metadata(orig, back)
    with open(hb_c2 / "particles.mrcs", "rb") as fa, open(tmp_path / "m" / "particles.mrcs", "rb") as fb:
        # the data blocks (after the 1024-byte headers) are identical bytes
        fa.seek(1024)
        fb.seek(1024)
        assert fa.read() == fb.read()
