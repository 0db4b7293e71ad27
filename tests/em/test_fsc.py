"""FSC and the resolution read from it."""

import numpy as np
import pytest

from spa.em.fsc import fsc, resolution_at, ssnr_from_fsc
from spa.fourier import lowpass
from tests.conftest import blob_volume


def test_fsc_of_identical_maps_is_one_and_of_independent_noise_near_zero():
    vol = blob_volume(32)
    assert np.allclose(fsc(vol, vol)[:17], 1.0, atol=1e-5)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 32, 32, 32)).astype(np.float32)
    assert np.abs(fsc(a, b)[3:]).max() < 0.15


def test_resolution_of_a_lowpassed_copy():
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(48, 48, 48)).astype(np.float32)
    lp = lowpass(vol, 1.0, 6.0, width_shells=0.5)  # cut at shell 8
    res = resolution_at(fsc(vol, lp), 0.5, 48, 1.0)
    assert 5.3 < res < 6.8


def test_resolution_edge_cases_and_ssnr():
    assert resolution_at(np.ones(17), 0.143, 32, 1.5) == pytest.approx(3.0)
    assert resolution_at(np.array([1, 0.1, 0.0]), 0.5, 4, 1.0) == float("inf")
    s = ssnr_from_fsc([1.0, 0.5, 0.0], tau2_fudge=2)
    assert s[1] == pytest.approx(2.0) and s[0] < 2 * 999.1 and s[2] > 0
