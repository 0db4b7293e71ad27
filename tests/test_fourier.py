"""Fourier helpers: centred transforms, shifts (RELION's sign), resizing, masks, filters."""

import numpy as np
import pytest

from spa import fourier


@pytest.mark.parametrize("box", [32, 33])
def test_centred_transform_of_a_centred_symmetric_object_is_real(box):
    img = np.zeros((box, box), np.float32)
    img[box // 2, box // 2] = 1.0
    f = fourier.rfft_centered(img)
    assert np.allclose(f.imag, 0, atol=1e-6) and np.allclose(f.real, 1.0)
    back = fourier.irfft_centered(f, box)
    assert np.allclose(back, img, atol=1e-6)


@pytest.mark.parametrize("box", [32, 33])
def test_shift_moves_by_plus_shift(box):
    img = np.zeros((box, box), np.float32)
    img[box // 2, box // 2] = 1.0
    moved = fourier.shift_image(img, 3.0, -2.0)
    row, col = np.unravel_index(np.argmax(moved), moved.shape)
    assert (col - box // 2, row - box // 2) == (3, -2)


def test_subpixel_shifts_compose():
    rng = np.random.default_rng(0)
    img = fourier.lowpass(rng.normal(size=(40, 40)).astype(np.float32), 1.0, 6.0)
    once = fourier.shift_image(img, 1.25, -0.5)
    twice = fourier.shift_image(fourier.shift_image(img, 0.75, -0.25), 0.5, -0.25)
    assert np.allclose(once, twice, atol=1e-4)


def test_fourier_crop_keeps_low_frequencies_and_grey_level():
    rng = np.random.default_rng(1)
    img = fourier.lowpass(rng.normal(size=(64, 64)).astype(np.float32) + 3.0, 1.0, 8.0)
    small = fourier.fourier_resize(img, 32)
    assert small.shape == (32, 32)
    assert small.mean() == pytest.approx(img.mean(), rel=1e-4)
    # cropping then padding back is lossless for a band-limited image
    back = fourier.fourier_resize(small, 64)
    assert np.corrcoef(back.ravel(), img.ravel())[0, 1] > 0.999


def test_masks_and_shells():
    m = fourier.soft_circular_mask(64, 20, 4)
    assert m[32, 32] == 1 and m[32, 32 + 25] == 0 and 0 < m[32, 32 + 22] < 1
    s = fourier.soft_spherical_mask(32, 10, 0)
    assert s.sum() == pytest.approx(4 / 3 * np.pi * 10**3, rel=0.05)
    sh = fourier.shells_2d(64)
    assert sh[0, 0] == 0 and sh[0, 32] == 32 and sh[5, 0] == 5


def test_lowpass_removes_high_frequencies():
    rng = np.random.default_rng(2)
    img = rng.normal(size=(64, 64)).astype(np.float32)
    out = fourier.lowpass(img, 2.0, 16.0)  # cut-off at shell 64·2/16 = 8
    f = np.abs(fourier.rfft_centered(out))
    r = fourier.radius_2d(64)
    assert f[r > 11].max() < 1e-4 * np.abs(fourier.rfft_centered(img)).max()
    assert f[r < 6].sum() > 0.9 * np.abs(fourier.rfft_centered(img))[r < 6].sum()


def test_shell_sum_matches_loop():
    rng = np.random.default_rng(3)
    v = rng.normal(size=(2, 16, 9)).astype(np.float32)
    sh = fourier.shells_2d(16)
    got = fourier.shell_sum(v, sh, 9)
    for s in range(9):
        assert np.allclose(got[:, s], v[:, sh == s].sum(axis=1), atol=1e-5)
