"""STAR files: exact round trips, RELION 3.1 and 3.0 particle tables, optics merging."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spa.io.star import (
    CTF_COLUMNS,
    read_micrographs,
    read_particles,
    read_star,
    write_micrographs,
    write_particles,
    write_star,
)
from spa.provenance import STAR_PREFIX, make_record, read_record

# What RELION 3.1 writes (spacing, column numbering, %12.6f numbers, zero-padded indices)
RELION31 = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMtfFileName #3
_rlnMicrographOriginalPixelSize #4
_rlnVoltage #5
_rlnSphericalAberration #6
_rlnAmplitudeContrast #7
_rlnImagePixelSize #8
_rlnImageSize #9
_rlnImageDimensionality #10
opticsGroup1            1 mtf_k2_200kV.star     0.885000   200.000000     1.400000     0.100000     1.770000           64            2
opticsGroup2            2 mtf_k2_200kV.star     0.885000   300.000000     2.700000     0.070000     1.770000           64            2


# version 30001

data_particles

loop_
_rlnCoordinateX #1
_rlnCoordinateY #2
_rlnImageName #3
_rlnMicrographName #4
_rlnOpticsGroup #5
_rlnDefocusU #6
_rlnDefocusV #7
_rlnDefocusAngle #8
_rlnOriginXAngst #9
_rlnOriginYAngst #10
_rlnClassNumber #11
  1614.217657   972.765862 000001@Extract/job007/Movies/mic_0001.mrcs MotionCorr/job002/Movies/mic_0001.mrc            2 10864.146484 10575.793945    77.995003     1.770000    -3.540000            1
   455.123214  1202.348125 000002@Extract/job007/Movies/mic_0001.mrcs MotionCorr/job002/Movies/mic_0001.mrc            1 10795.714844 10534.430664    77.995003     0.000000     0.885000            3
   910.000000   311.000000 000001@Extract/job007/Movies/mic_0002.mrcs MotionCorr/job002/Movies/mic_0002.mrc            2 21023.000000 20511.400391   -12.500000    -5.310000     2.655000            2
"""

# What RELION 3.0 writes: one block, optics per row, origins in pixels, magnification
RELION30 = """
data_

loop_
_rlnCoordinateX #1
_rlnCoordinateY #2
_rlnImageName #3
_rlnMicrographName #4
_rlnVoltage #5
_rlnDefocusU #6
_rlnDefocusV #7
_rlnDefocusAngle #8
_rlnSphericalAberration #9
_rlnAmplitudeContrast #10
_rlnMagnification #11
_rlnDetectorPixelSize #12
_rlnOriginX #13
_rlnOriginY #14
_rlnGroupNumber #15
  1614.000000   972.000000 000001@Particles/mic1.mrcs Micrographs/mic1.mrc   300.000000 10864.146484 10575.793945    77.995003     2.700000     0.100000 10000.000000     1.770000     1.000000    -2.000000            1
   455.000000  1202.000000 000002@Particles/mic1.mrcs Micrographs/mic1.mrc   300.000000 10795.714844 10534.430664    77.995003     2.700000     0.100000 10000.000000     1.770000     0.500000     0.000000            1
   910.000000   311.000000 000001@Particles/mic2.mrcs Micrographs/mic2.mrc   200.000000 21023.000000 20511.400391   -12.500000     2.700000     0.100000 10000.000000     1.770000    -3.000000     4.000000            2
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_write_read_identical(tmp_path):
    df = pd.DataFrame(
        {
            "rlnImageName": ["000001@a b.mrcs", "000002@x.mrcs", "000003@x.mrcs"],
            "rlnMicrographName": ["0001", "0002", "mic 3"],  # numeric-looking strings stay strings
            "rlnClassNumber": np.array([1, 2, 3], dtype=np.int64),
            "rlnDefocusU": [12345.678901234, 2.0, -0.1],
            "rlnNormCorrection": [1e-7, 3.3333333333333335, 1e12],
            "rlnRandomSubset": np.array([2, 1, 2], dtype=np.int64),
            "rlnComment": ["plain", "", "x"],
        }
    )
    general = {"rlnReferenceDimensionality": 3, "rlnPixelSize": 1.5, "rlnTau2FudgeFactor": 4.0, "rlnName": "run 1"}
    path = tmp_path / "t.star"
    write_star(path, {"model_general": general, "particles": df})
    back = read_star(path)
    assert list(back) == ["model_general", "particles"]
    assert back["model_general"] == general
    pd.testing.assert_frame_equal(back["particles"], df, check_dtype=False)
    for col in df:
        # int stays int, float stays float, strings stay strings
        assert back["particles"][col].dtype.kind == pd.Series(df[col]).dtype.kind or (
            df[col].dtype == object and back["particles"][col].dtype == "str"
        ), col
    assert back["particles"]["rlnClassNumber"].dtype == np.int64
    # writing what we read gives the same bytes (apart from nothing: no timestamps without provenance)
    write_star(tmp_path / "t2.star", back)
    assert (tmp_path / "t2.star").read_text() == path.read_text()


def test_float32_columns_round_trip_to_their_value(tmp_path):
    vals = np.array([0.1, 1.7, 3.3e-5], dtype=np.float32)
    write_star(tmp_path / "f.star", {"x": pd.DataFrame({"rlnAngleRot": vals})})
    back = read_star(tmp_path / "f.star")["x"]["rlnAngleRot"].to_numpy()
    np.testing.assert_array_equal(back.astype(np.float32), vals)


def test_provenance_is_the_first_line(tmp_path):
    rec = make_record(command="spa convert --to zarr", config={"chunk": 8}, seed=3)
    path = tmp_path / "p.star"
    write_star(path, {"particles": pd.DataFrame({"rlnImageName": ["1@a.mrcs"]})}, rec)
    assert path.read_text().splitlines()[0].startswith(STAR_PREFIX)
    assert read_record(str(path))["seed"] == 3
    assert read_star(path)["particles"]["rlnImageName"].tolist() == ["1@a.mrcs"]


def test_empty_loop_round_trips(tmp_path):
    write_star(tmp_path / "e.star", {"particles": pd.DataFrame({"rlnImageName": [], "rlnDefocusU": []})})
    back = read_star(tmp_path / "e.star")["particles"]
    assert list(back.columns) == ["rlnImageName", "rlnDefocusU"] and len(back) == 0


def test_relion31_particles_merge_optics_by_group(tmp_path):
    parts, optics = read_particles(_write(tmp_path, "p.star", RELION31), require=("rlnImageName", *CTF_COLUMNS))
    assert len(parts) == 3 and len(optics) == 2
    assert parts["rlnImageName"].tolist()[0] == "000001@Extract/job007/Movies/mic_0001.mrcs"
    assert parts["rlnOpticsGroup"].tolist() == [2, 1, 2]
    assert parts["rlnVoltage"].tolist() == [300.0, 200.0, 300.0]
    assert parts["rlnSphericalAberration"].tolist() == [2.7, 1.4, 2.7]
    assert parts["rlnAmplitudeContrast"].tolist() == [0.07, 0.1, 0.07]
    assert parts["rlnImagePixelSize"].tolist() == [1.77] * 3
    assert parts["rlnImageSize"].dtype == np.int64 and parts["rlnImageSize"].tolist() == [64] * 3
    assert parts["rlnClassNumber"].dtype == np.int64
    assert parts["rlnDefocusU"].iloc[2] == pytest.approx(21023.0)


def test_relion31_write_read_identical(tmp_path):
    parts, optics = read_particles(_write(tmp_path, "p.star", RELION31))
    write_particles(tmp_path / "out.star", parts, optics)
    blocks = read_star(tmp_path / "out.star")
    assert list(blocks) == ["optics", "particles"]
    # merged optics columns are not repeated in the particle rows
    assert "rlnVoltage" not in blocks["particles"] and "rlnOpticsGroup" in blocks["particles"]
    parts2, optics2 = read_particles(tmp_path / "out.star")
    pd.testing.assert_frame_equal(parts2, parts)
    pd.testing.assert_frame_equal(optics2, optics)


def test_relion30_is_converted_like_relion31(tmp_path):
    parts, optics = read_particles(_write(tmp_path, "p30.star", RELION30), require=("rlnImageName", *CTF_COLUMNS))
    # pixel size = detector pixel (µm) * 1e4 / magnification
    assert parts["rlnImagePixelSize"].tolist() == pytest.approx([1.77] * 3)
    # two distinct (voltage, Cs, Q, pixel) combinations -> two optics groups, in order of appearance
    assert len(optics) == 2 and parts["rlnOpticsGroup"].tolist() == [1, 1, 2]
    assert parts["rlnVoltage"].tolist() == [300.0, 300.0, 200.0]
    # origins: pixels -> Å
    assert parts["rlnOriginXAngst"].tolist() == pytest.approx([1.77, 0.885, -5.31])
    assert parts["rlnOriginYAngst"].tolist() == pytest.approx([-3.54, 0.0, 7.08])
    for gone in ("rlnOriginX", "rlnOriginY", "rlnMagnification", "rlnDetectorPixelSize"):
        assert gone not in parts
    assert parts["rlnGroupNumber"].tolist() == [1, 1, 2]
    # written out it is a RELION 3.1 file that reads back the same
    write_particles(tmp_path / "p31.star", parts, optics)
    assert set(read_star(tmp_path / "p31.star")) == {"optics", "particles"}
    parts2, optics2 = read_particles(tmp_path / "p31.star")
    pd.testing.assert_frame_equal(parts2, parts)


def test_relion30_with_image_pixel_size_and_box_from_file(tmp_path):
    from spa.io.mrc import write_mrcs

    write_mrcs(tmp_path / "s.mrcs", np.zeros((2, 12, 12), np.float32), 2.0)
    text = """data_images
loop_
_rlnImageName #1
_rlnImagePixelSize #2
_rlnVoltage #3
_rlnSphericalAberration #4
_rlnAmplitudeContrast #5
1@s.mrcs 2.0 300 2.7 0.1
2@s.mrcs 2.0 300 2.7 0.1
"""
    parts, optics = read_particles(_write(tmp_path, "p.star", text))
    assert parts["rlnImagePixelSize"].tolist() == [2.0, 2.0]
    assert parts["rlnImageSize"].tolist() == [12, 12]
    assert len(optics) == 1


def test_micrographs_pair_round_trips(tmp_path):
    mics = pd.DataFrame({"rlnMicrographName": ["m/1.mrc", "m/2.mrc"], "rlnOpticsGroup": [1, 1], "rlnDefocusU": [1e4, 2e4]})
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnMicrographPixelSize": [0.885],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
        }
    )
    write_micrographs(tmp_path / "m.star", mics, optics)
    got, got_optics = read_micrographs(tmp_path / "m.star")
    assert got["rlnMicrographPixelSize"].tolist() == [0.885, 0.885]
    pd.testing.assert_frame_equal(got[mics.columns], mics, check_dtype=False)
    pd.testing.assert_frame_equal(got_optics, optics, check_dtype=False)
    assert list(read_star(tmp_path / "m.star")) == ["optics", "micrographs"]


def test_real_relion_file(hb_c2):
    parts, optics = read_particles(hb_c2 / "particles.star", require=("rlnImageName", *CTF_COLUMNS))
    assert len(parts) == 1000 and len(optics) == 1
    assert parts["rlnImagePixelSize"].unique().tolist() == [1.640625]
    assert parts["rlnImageSize"].unique().tolist() == [64]
