"""CTF zeros, signs and astigmatism where the RELION/CTFFIND4 formula puts them."""

import numpy as np
import pytest

from spa.ctf import ctf_2d, electron_wavelength


def test_wavelength_300kv():
    assert electron_wavelength(300) == pytest.approx(0.019687, abs=2e-6)
    assert electron_wavelength(200) == pytest.approx(0.025079, abs=2e-6)


def test_ctf_at_origin_is_amplitude_contrast_and_first_lobe_positive():
    c = ctf_2d(256, 1.0, 15000, 15000, 0, 300, 2.7, 0.1)
    assert c[0, 0] == pytest.approx(0.1, abs=1e-6)
    assert c[0, 3] > 0.1  # rises into the first (positive) lobe for underfocus


@pytest.mark.parametrize("defocus,voltage,cs", [(10000, 300, 2.7), (25000, 300, 2.7), (15000, 200, 0.01)])
def test_zeros_where_the_formula_puts_them(defocus, voltage, cs):
    box, pixel = 1024, 0.8
    lam = electron_wavelength(voltage)
    w = np.arctan(0.1 / np.sqrt(1 - 0.01))
    c = ctf_2d(box, pixel, defocus, defocus, 0, voltage, cs, 0.1)[0]  # along +x (row 0)
    for n in (1, 2, 3):
        # solve π λ Δf k² − π/2 Cs λ³ k⁴ + w = nπ for k² (smaller root)
        a, b, cc = -0.5 * np.pi * cs * 1e7 * lam**3, np.pi * lam * defocus, w - n * np.pi
        k2 = (-b + np.sqrt(b * b - 4 * a * cc)) / (2 * a) if a != 0 else -cc / b
        k_zero = np.sqrt(k2)
        i = int(np.floor(k_zero * box * pixel))
        assert np.sign(c[i]) != np.sign(c[i + 1]), f"no sign change at zero {n} (k={k_zero:.4f}/Å)"


def test_astigmatism_angle_is_counter_clockwise_from_x():
    """Along the azimuth of the angle the defocus is U; perpendicular to it, V."""
    box, pixel, u, v, angle = 512, 1.0, 20000.0, 12000.0, 30.0
    lam = electron_wavelength(300)
    full = np.fft.fftshift(ctf_2d(box, pixel, u, v, angle, 300, 0.0, 0.0, rfft=False), axes=(0, 1))
    w = 0.0

    def zero_radius(theta_deg, defocus):
        return np.sqrt((np.pi - w) / (np.pi * lam * defocus))  # first zero with Cs = 0, Q = 0

    for theta, d in ((angle, u), (angle + 90, v)):
        t = np.deg2rad(theta)
        kz = zero_radius(theta, d)
        for f, expect in ((0.9, 1), (1.1, -1)):
            kk = f * kz * box * pixel
            col = int(round(box // 2 + kk * np.cos(t)))  # x = column
            row = int(round(box // 2 + kk * np.sin(t)))  # y = row
            assert np.sign(full[row, col]) == expect


def test_batched_parameters_and_bfactor_envelope():
    c = ctf_2d(64, 1.5, [10000, 20000], [10000, 19000], [0, 45], 300, 2.7, 0.07, bfactor=[0, 100])
    assert c.shape == (2, 64, 33) and c.dtype == np.float32
    assert np.abs(c[1]).max() <= 1.0
    nyq = c[:, 0, 32]
    c0 = ctf_2d(64, 1.5, 20000, 19000, 45, 300, 2.7, 0.07)
    k2 = (32 / (64 * 1.5)) ** 2
    assert nyq[1] == pytest.approx(c0[0, 32] * np.exp(-100 * k2 / 4), rel=1e-4)


def test_phase_terms_equal_ctf_phase():
    from spa.ctf import PhaseTerms, ctf_phase
    from spa.fourier import freq_2d

    box, pixel = 64, 1.3
    chi, _ = ctf_phase(box, pixel, 14000, 12500, 37.0, 300, 2.7, 0.07, 20.0)
    ky, kx = freq_2d(box)
    terms = PhaseTerms(kx.astype(np.float64) / pixel, ky.astype(np.float64) / pixel, 300, 2.7, 0.07)
    assert np.allclose(terms.chi(14000, 12500, 37.0, 20.0), chi[0], atol=1e-4)
