"""Local resolution recovers two regions whose half maps were made at two known resolutions."""

import numpy as np
import pytest

from spa.fourier import lowpass, radius_3d
from spa.postprocess.locres import local_filter, local_resolution

BOX, PIXEL = 80, 1.0
FINE, COARSE = 4.0, 8.0  # Å
AMPLITUDE = 3.0  # signal amplitude at low resolution, noise σ = 1


def _decayed(structure, resolution):
    """Signal whose spectral SNR against unit white noise, A²·exp(−B s²/2), is 1/6 at ``resolution`` Å — the
    resolution where the half maps' FSC S/(S+N) is 0.143."""
    b = 2 * np.log(6 * AMPLITUDE**2) * resolution**2
    s = radius_3d(BOX) / (BOX * PIXEL)
    f = np.fft.rfftn(structure) * np.exp(-b * s**2 / 4)
    return AMPLITUDE * np.fft.irfftn(f, s=structure.shape, axes=(0, 1, 2)).astype(np.float32)


def _region(centre_x, radius=20.0, edge=5.0):
    z, y, x = np.meshgrid(*[np.arange(BOX)] * 3, indexing="ij")
    d = np.sqrt((z - BOX // 2) ** 2 + (y - BOX // 2) ** 2 + (x - centre_x) ** 2)
    t = np.clip((d - (radius - edge)) / edge, 0, 1)
    return (0.5 * (1 + np.cos(np.pi * t))).astype(np.float32)


@pytest.fixture(scope="module")
def halves():
    rng = np.random.default_rng(0)
    structure = rng.standard_normal((BOX,) * 3).astype(np.float32)
    fine_region, coarse_region = _region(20), _region(60)
    signal = _decayed(structure, FINE) * fine_region + _decayed(structure, COARSE) * coarse_region
    maps = [signal + rng.standard_normal(signal.shape).astype(np.float32) for _ in range(2)]
    return maps, ((fine_region + coarse_region) > 0.5).astype(np.float32)


def _near(points, x, r=5.0):
    return np.sqrt(((points - [BOX // 2, BOX // 2, x]) ** 2).sum(axis=1)) < r


def test_local_resolution_of_two_regions(halves):
    (h1, h2), mask = halves
    loc = local_resolution(h1, h2, mask, PIXEL, window=32.0, step=4.0)
    fine, coarse = np.median(loc.values[_near(loc.points, 20)]), np.median(loc.values[_near(loc.points, 60)])
    assert abs(fine - FINE) < 0.1 * FINE and abs(coarse - COARSE) < 0.1 * COARSE
    assert loc.resolution.shape == (BOX,) * 3
    assert np.isnan(loc.resolution[0, 0, 0]) and np.isfinite(loc.resolution[BOX // 2, BOX // 2, 20])
    # local filtering keeps the fine region's detail and removes what the coarse region does not hold
    filtered = local_filter(h1, loc.resolution, PIXEL)

    def high(volume, region_x):
        """Variance of the detail between 6 and 4.5 Å in the region's core."""
        detail = lowpass(volume, PIXEL, 4.5, ndim=3) - lowpass(volume, PIXEL, 6.0, ndim=3)
        return float(detail[_region(region_x, radius=12.0) > 0.99].var())

    assert high(filtered, 60) < 0.2 * high(h1, 60)  # beyond 6 Å removed in the 8 Å region
    assert high(filtered, 20) > 0.6 * high(h1, 20)  # and kept in the 4 Å region


def test_command_writes_the_maps_and_figures(tmp_path, halves):
    import json

    from spa.cli import main
    from spa.io.mrc import read_mrc, write_mrc

    (h1, h2), mask = halves
    for name, vol in (("h1", h1), ("h2", h2), ("mask", mask)):
        write_mrc(tmp_path / f"{name}.mrc", vol, PIXEL)
    out = tmp_path / "locres"
    assert main(["locres", "--half1", str(tmp_path / "h1.mrc"), "--half2", str(tmp_path / "h2.mrc"),
                 "--mask", str(tmp_path / "mask.mrc"), "--window", "32", "--step", "8",
                 "--output-dir", str(out)]) == 0
    local, _ = read_mrc(out / "relion_locres.mrc")
    assert local[0, 0, 0] == 0.0 and 3.0 < local[BOX // 2, BOX // 2, 20] < 5.0
    figures = json.loads((out / "figures.json").read_text())
    assert all((out / f["file"]).stat().st_size > 0 for f in figures) and len(figures) == 2
