"""Contrast transfer function, exactly as RELION and CTFFIND4 define it.

For spatial frequency k (1/Å) at azimuth θ (angle from +x, counter-clockwise;
x = array column, y = array row):

* Δf(θ) = ½(U + V) + ½(U − V)·cos(2(θ − θ_ast)),   U, V in Å (positive = underfocus)
* χ(k, θ) = π·λ·Δf(θ)·k² − (π/2)·Cs·λ³·k⁴ + φ + arctan(Q/√(1 − Q²))
* CTF = sin(χ)·exp(−B·k²/4)

so the CTF equals +Q at k = 0 and its first lobe is positive for underfocus.
Cs is given in mm (as in STAR files) and converted to Å here.
"""

from __future__ import annotations

import numpy as np

from spa.fourier import freq_2d


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    v = float(voltage_kv) * 1e3
    return 12.2643247 / np.sqrt(v * (1.0 + 0.978466e-6 * v))


def ctf_phase(box: int, pixel_size: float, defocus_u, defocus_v, defocus_angle, voltage: float, cs: float,
              amplitude_contrast: float, phase_shift=0.0, *, rfft: bool = True, xp=np):
    """χ (N, B, B//2+1) float64 (radians) on the Fourier grid of a box: the phase of which the CTF is the
    sine (module docstring); arguments as :func:`ctf_2d`.  Also returns k² (1/Å², broadcastable)."""
    lam = electron_wavelength(voltage)
    cs_a = float(cs) * 1e7
    ky, kx = freq_2d(box, xp, rfft)
    kx = kx / pixel_size
    ky = ky / pixel_size
    k2 = kx * kx + ky * ky
    theta = xp.arctan2(ky, kx)

    def col(p):
        return xp.asarray(np.atleast_1d(np.asarray(p, dtype=np.float64)), dtype=xp.float64)[:, None, None]

    u, v, ang = col(defocus_u), col(defocus_v), xp.deg2rad(col(defocus_angle))
    phi = xp.deg2rad(col(phase_shift))
    q = float(amplitude_contrast)
    dfocus = 0.5 * (u + v) + 0.5 * (u - v) * xp.cos(2.0 * (theta - ang))
    chi = np.pi * lam * dfocus * k2 - 0.5 * np.pi * cs_a * lam**3 * k2 * k2 + phi + np.arctan(q / np.sqrt(1 - q * q))
    return chi, k2


class PhaseTerms:
    """χ on chosen Fourier pixels, split into what depends on the defocus and what does not, so that a CTF
    fit can evaluate χ for many (U, V, angle, phase shift) cheaply — the same χ as :func:`ctf_phase`:

        χ = π·λ·k²·[½(U+V) + ½(U−V)·(cos 2θ·cos 2α + sin 2θ·sin 2α)] − (π/2)·Cs·λ³·k⁴ + φ + arctan(Q/√(1−Q²))

    ``k`` is given in 1/Å with its azimuth (``kx``, ``ky`` arrays of any shape); defocus in Å, angles in
    degrees, as :func:`ctf_2d`.
    """

    def __init__(self, kx, ky, voltage: float, cs: float, amplitude_contrast: float):
        kx = np.asarray(kx, dtype=np.float64)
        ky = np.asarray(ky, dtype=np.float64)
        lam = electron_wavelength(voltage)
        self.k2 = kx * kx + ky * ky
        theta = np.arctan2(ky, kx)
        self.cos2, self.sin2 = np.cos(2 * theta), np.sin(2 * theta)
        self.defocus_scale = np.pi * lam * self.k2  # χ per Å of defocus
        q = float(amplitude_contrast)
        self.constant = -0.5 * np.pi * float(cs) * 1e7 * lam**3 * self.k2**2 + np.arctan(q / np.sqrt(1 - q * q))

    def defocus(self, defocus_u, defocus_v, defocus_angle):
        """Δf(θ) (Å) at each pixel."""
        a = np.deg2rad(float(defocus_angle))
        half = 0.5 * (float(defocus_u) - float(defocus_v))
        return 0.5 * (float(defocus_u) + float(defocus_v)) + half * (self.cos2 * np.cos(2 * a) + self.sin2 * np.sin(2 * a))

    def chi(self, defocus_u, defocus_v, defocus_angle, phase_shift=0.0):
        """χ (radians) at each pixel; ``phase_shift`` in degrees."""
        return self.defocus_scale * self.defocus(defocus_u, defocus_v, defocus_angle) + self.constant \
            + np.deg2rad(float(phase_shift))


def ctf_2d(
    box: int,
    pixel_size: float,
    defocus_u,
    defocus_v,
    defocus_angle,
    voltage: float,
    cs: float,
    amplitude_contrast: float,
    phase_shift=0.0,
    bfactor=0.0,
    *,
    rfft: bool = True,
    xp=np,
):
    """CTF on the Fourier grid of a box (rfft layout by default).

    Parameters
    ----------
    box, pixel_size : int, float
        Box size (pixels) and pixel size (Å/px).
    defocus_u, defocus_v : float or array (N,)
        Defocus in Å, positive = underfocus.
    defocus_angle : float or array (N,)
        Astigmatism angle in degrees (U axis from +x, counter-clockwise).
    voltage, cs, amplitude_contrast : float
        kV, mm, fraction.
    phase_shift : float or array
        Additional phase shift in degrees (phase plate).
    bfactor : float or array
        Envelope B-factor in Å² (0 = none).

    Returns
    -------
    float32 array (N, B, B//2+1) — or (B, B//2+1) when all parameters are scalars.
    """
    scalar = all(np.ndim(p) == 0 for p in (defocus_u, defocus_v, defocus_angle, phase_shift, bfactor))
    chi, k2 = ctf_phase(box, pixel_size, defocus_u, defocus_v, defocus_angle, voltage, cs, amplitude_contrast,
                        phase_shift, rfft=rfft, xp=xp)
    out = xp.sin(chi)
    if np.any(np.asarray(bfactor) != 0):
        b = xp.asarray(np.atleast_1d(np.asarray(bfactor, dtype=np.float64)), dtype=xp.float64)[:, None, None]
        out = out * xp.exp(-b * k2 / 4.0)
    out = out.astype(xp.float32)
    return out[0] if scalar else out


def ctf_from_table(table, box: int, pixel_size: float | None = None, *, xp=np, rfft: bool = True):
    """CTFs (N, B, B//2+1) for the rows of a particle table with RELION columns.

    The table must carry rlnDefocusU/V/Angle, rlnVoltage, rlnSphericalAberration,
    rlnAmplitudeContrast (optics merged in, see :func:`spa.io.star.read_particles`)
    and optionally rlnPhaseShift, rlnCtfBfactor.  Rows may come from different
    optics groups (voltage/Cs/Q are taken per group).  Rows whose optics group
    says rlnCtfDataArePhaseFlipped = 1 (images phase-flipped at extraction)
    get |CTF|.
    """
    if pixel_size is None:
        pixel_size = float(table["rlnImagePixelSize"].iloc[0])
    out = xp.empty((len(table), box, box // 2 + 1 if rfft else box), dtype=xp.float32)
    keys = ["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]
    groups = table.groupby(keys, sort=False).indices if len(table) else {}
    for (volt, cs, q), idx in groups.items():
        rows = table.iloc[idx]
        ps = rows["rlnPhaseShift"].to_numpy() if "rlnPhaseShift" in rows else 0.0
        bf = rows["rlnCtfBfactor"].to_numpy() if "rlnCtfBfactor" in rows else 0.0
        c = ctf_2d(
            box, pixel_size,
            rows["rlnDefocusU"].to_numpy(), rows["rlnDefocusV"].to_numpy(), rows["rlnDefocusAngle"].to_numpy(),
            volt, cs, q, ps, bf, rfft=rfft, xp=xp,
        )
        out[xp.asarray(idx)] = c
    if "rlnCtfDataArePhaseFlipped" in table and len(table):
        flipped = np.flatnonzero(table["rlnCtfDataArePhaseFlipped"].to_numpy() != 0)
        if flipped.size:
            out[xp.asarray(flipped)] = xp.abs(out[xp.asarray(flipped)])
    return out
