"""Shared fixtures: small synthetic volumes, the independent RELION-format test data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "hb_c2"


def blob_volume(box: int, n_blobs: int = 30, seed: int = 0) -> np.ndarray:
    """An asymmetric test map: Gaussian blobs of 1.5-3 px around the box centre B//2."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:box, :box, :box] - box // 2
    vol = np.zeros((box,) * 3, np.float32)
    for _ in range(n_blobs):
        c = rng.normal(0, box / 10, 3)
        s = rng.uniform(1.0, 2.5)
        vol += np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s * s)).astype(np.float32)
    # keep it well inside the box, as a particle is: projections then lose nothing at the edges
    r = np.sqrt(x * x + y * y + z * z)
    return vol * np.clip((0.42 * box - r) / 3.0, 0, 1).astype(np.float32)


@pytest.fixture
def blobs():
    return blob_volume


@pytest.fixture
def hb_c2():
    """The independent ASPIRE-made haemoglobin set (skips when ../shared/testdata is absent)."""
    if not (TESTDATA / "particles.star").exists():
        pytest.skip("independent test data ../shared/testdata/hb_c2 not present")
    return TESTDATA


def listed_figures(folder) -> list[str]:
    """The files ``folder/figures.json`` lists (the report's contract), after checking that each exists, is
    non-empty and has a title and caption."""
    from spa.report.collect import load_figures

    figures, problems = load_figures(folder)
    assert not problems, problems
    assert all(f.title and f.caption for f in figures), figures
    return [f.file for f in figures]
