"""Movie and gain readers: TIFF (plain, LZW, deflate) equals MRC after the slow-axis flip; damaged files,
EER and gains of the wrong shape are refused naming the file; RELION's gain rotation and flip."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import tifffile

from spa.errors import SpaInputError
from spa.io.movies import check_gain_shape, movie_info, orient_gain, read_gain, read_movie


@pytest.fixture
def frames():
    rng = np.random.default_rng(0)
    return rng.poisson(3.0, size=(4, 24, 32)).astype(np.uint8)


def _mrc(path, data):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data.astype(np.uint16) if data.dtype == np.uint8 else data)
        m.voxel_size = 1.0
    return path


@pytest.mark.parametrize("compression", [None, "lzw", "zlib"])
def test_tiff_frames_read_as_the_mrc_stack(tmp_path, frames, compression):
    mrc = _mrc(tmp_path / "m.mrc", frames)
    tif = tmp_path / "m.tif"
    # written as detectors write them: the slow axis flipped relative to the MRC array
    tifffile.imwrite(tif, np.ascontiguousarray(frames[:, ::-1, :]), compression=compression, photometric="minisblack")
    assert movie_info(tif)[:3] == (4, 24, 32) and movie_info(mrc)[:3] == (4, 24, 32)
    a, b = read_movie(mrc), read_movie(tif)
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, np.asarray(tifffile.imread(tif), dtype=np.float32))  # the flip is real


def test_damaged_movies_are_refused_naming_the_file(tmp_path, frames):
    mrc = _mrc(tmp_path / "cut.mrc", frames)
    mrc.write_bytes(mrc.read_bytes()[:-200])
    with pytest.raises(SpaInputError, match="cut.mrc.*truncated"):
        movie_info(mrc)
    tif = tmp_path / "cut.tif"
    tifffile.imwrite(tif, frames, photometric="minisblack")
    tif.write_bytes(tif.read_bytes()[:-300])
    with pytest.raises(SpaInputError, match="cut.tif"):
        read_movie(tif)
    bad = frames.astype(np.float32)
    bad[2, 3, 4] = np.nan
    nan = _mrc(tmp_path / "nan.mrc", bad)
    with pytest.raises(SpaInputError, match="nan.mrc.*NaN"):
        read_movie(nan)
    good = _mrc(tmp_path / "ok.mrc", frames)
    with pytest.raises(SpaInputError, match="ok.mrc.*4 frames, expected 5"):
        read_movie(good, expect_frames=5)
    (tmp_path / "x.eer").write_bytes(b"II*\x00")
    with pytest.raises(SpaInputError, match="x.eer.*EER movies are not supported.*TIFF"):
        movie_info(tmp_path / "x.eer")


def test_gain_rotation_and_flip_follow_relion():
    gain = np.zeros((4, 6), np.float32)
    gain[0, 5] = 1.0  # bottom-right corner when displayed with y up (MRC viewers)
    turned = orient_gain(gain, rotation=1)  # 90° counter-clockwise: bottom-right -> top-right
    assert turned.shape == (6, 4) and turned[5, 3] == 1.0
    assert orient_gain(gain, rotation=2)[3, 0] == 1.0  # 180°: top-left
    assert orient_gain(gain, flip=1)[3, 5] == 1.0  # upside down
    assert orient_gain(gain, flip=2)[0, 0] == 1.0  # left-right
    assert orient_gain(gain, rotation=1, flip=2)[5, 0] == 1.0  # rotation first, then the flip
    with pytest.raises(ValueError):
        orient_gain(gain, rotation=4)


def test_gain_of_the_wrong_shape_says_what_would_fit(tmp_path):
    tif = tmp_path / "gain.tif"
    tifffile.imwrite(tif, np.arange(12, dtype=np.float32).reshape(3, 4))
    g = read_gain(tif)
    assert g[0, 0] == 8.0  # TIFF gains are flipped like the frames
    with pytest.raises(SpaInputError, match="gain.tif.*3 x 4.*movie m.tif.*4 x 3.*turned by 90"):
        check_gain_shape(tif, g.shape, "m.tif", (4, 3))
    with pytest.raises(SpaInputError, match="super-resolution gain"):
        check_gain_shape(tif, (6, 8), "m.tif", (3, 4))
    check_gain_shape(tif, g.shape, "m.tif", (3, 4))  # fits: no error
