"""2D classification on synthetic particles: separation, class-average quality, determinism, --continue, workers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spa.class2d.classify import Class2DOptions, run_class2d
from spa.class2d.synthetic import make_particles, make_views, rotate_shift
from spa.em.engine import ArrayImages, last_checkpoint
from spa.io.mrc import read_mrc
from spa.io.star import read_star

BOX, PX, K = 40, 3.0, 3


@pytest.fixture(scope="module")
def particles():
    views = make_views(K, BOX, PX, 95, 1)
    images, table = make_particles(views, 360, PX, snr=0.1, max_shift_px=2.0, rng=2)
    return views, images, table


def _opts(n_iter, **kw):
    return Class2DOptions(n_classes=K, n_iter=n_iter, particle_diameter=105, offset_range=3, seed=7, chunk_size=128,
                          **kw)


def _best_corr(avg, view):
    """Max correlation over in-plane rotations (2°) and ±1 px shifts (class averages may sit rotated)."""
    best = -1.0
    for psi in np.arange(0, 360, 2.0):
        r = rotate_shift(view, psi, (0.0, 0.0))
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                best = max(best, np.corrcoef(np.roll(r, (dy, dx), (0, 1)).ravel(), avg.ravel())[0, 1])
    return best


@pytest.fixture(scope="module")
def run6(particles, tmp_path_factory):
    views, images, table = particles
    out = tmp_path_factory.mktemp("c2d")
    model, refs, result = run_class2d(table, ArrayImages(images, PX), _opts(6), out, log=None)
    return out, model, refs, result


def test_separates_classes_and_averages_match_truth(particles, run6):
    views, _, table = particles
    out, model, refs, result = run6
    tab = pd.crosstab(table["trueClass"], result["rlnClassNumber"])
    purity = tab.max(axis=1) / tab.sum(axis=1)
    assert np.all(purity >= 0.95), tab
    assert len(set(tab.idxmax(axis=1))) == K  # each true view has its own class
    for true_k, cls in tab.idxmax(axis=1).items():
        corr = _best_corr(np.asarray(refs.images[cls - 1]), views[true_k])
        assert corr >= 0.9, (true_k, cls, corr)
    # in-plane angles: consistent per class up to the class's own rotation (circular spread small)
    for true_k, cls in tab.idxmax(axis=1).items():
        sel = (table["trueClass"] == true_k).to_numpy() & (result["rlnClassNumber"] == cls).to_numpy()
        d = np.deg2rad(result["rlnAnglePsi"].to_numpy()[sel] - table["truePsi"].to_numpy()[sel])
        spread = np.rad2deg(np.sqrt(-2 * np.log(np.abs(np.mean(np.exp(1j * d))))))
        assert spread < 10.0, spread


def test_writes_relion_outputs(run6):
    out, model, refs, result = run6
    for it in (1, 6):
        for name in ("classes.mrcs", "model.star", "data.star", "optimiser.npz"):
            assert (out / f"run_it{it:03d}_{name}").exists()
    for name in ("run_classes.mrcs", "run_model.star", "run_data.star"):
        assert (out / name).exists()
    blocks = read_star(out / "run_model.star")
    assert {"model_general", "model_classes", "model_class_1", "model_optics_group_1"} <= set(blocks)
    mc = blocks["model_classes"]
    assert mc["rlnReferenceImage"].iloc[0] == "000001@run_classes.mrcs"
    assert abs(mc["rlnClassDistribution"].sum() - 1) < 1e-6
    data = read_star(out / "run_data.star")["particles"]
    for col in ("rlnClassNumber", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnMaxValueProbDistribution",
                "rlnNrOfSignificantSamples", "rlnLogLikeliContribution"):
        assert col in data
    assert last_checkpoint(out)[0] == 6


def test_same_seed_identical_and_continue_equals_uninterrupted(particles, tmp_path):
    _, images, table = particles
    src = ArrayImages(images, PX)
    _, refs_a, res_a = run_class2d(table, src, _opts(3), tmp_path / "a", log=None)
    _, refs_b, res_b = run_class2d(table, src, _opts(3), tmp_path / "b", log=None)
    assert np.array_equal(np.asarray(refs_a.images), np.asarray(refs_b.images))
    assert res_a["rlnAnglePsi"].equals(res_b["rlnAnglePsi"])
    # stop after 1 iteration, then continue to 3
    run_class2d(table, src, _opts(1), tmp_path / "c", log=None)
    _, refs_c, res_c = run_class2d(table, src, _opts(3), tmp_path / "c", continue_=True, log=None)
    assert np.array_equal(np.asarray(refs_a.images), np.asarray(refs_c.images))
    assert res_a["rlnClassNumber"].equals(res_c["rlnClassNumber"])
    assert np.array_equal(res_a["rlnOriginXAngst"].to_numpy(), res_c["rlnOriginXAngst"].to_numpy())


def test_one_and_two_dask_workers_agree(particles, tmp_path):
    from spa.cluster import close_client, make_client

    _, images, table = particles
    src = ArrayImages(images, PX)
    _, refs_1, res_1 = run_class2d(table, src, _opts(2), tmp_path / "w1", log=None)
    client = make_client(workers=2, processes=False)
    try:
        _, refs_2, res_2 = run_class2d(table, src, _opts(2), tmp_path / "w2", client=client, log=None)
    finally:
        close_client(client)
    assert (res_1["rlnClassNumber"] == res_2["rlnClassNumber"]).mean() > 0.99
    np.testing.assert_allclose(np.asarray(refs_1.images), np.asarray(refs_2.images), atol=1e-4 * np.abs(
        np.asarray(refs_1.images)).max())


def test_inactive_classes_are_reseeded_from_the_largest(particles, tmp_path):
    """More classes than views: classes that empty are re-seeded by splitting the largest (RELION 4's
    class_inactivity_threshold); at the last iteration allowed to re-seed every class holds particles,
    and every populated class is still an average of one true view (splitting invents no structure)."""
    views, images, table = particles
    messages = []
    opts = Class2DOptions(n_classes=2 * K, n_iter=6, particle_diameter=105, offset_range=3, seed=7, chunk_size=128)
    run_class2d(table, ArrayImages(images, PX), opts, tmp_path, log=messages.append)
    assert any("re-seeded by splitting" in m for m in messages), messages
    model = read_star(tmp_path / "run_it003_model.star")["model_classes"]
    assert (model["rlnClassDistribution"] >= opts.class_inactivity_threshold / opts.n_classes).all(), model
    data = read_star(tmp_path / "run_data.star")["particles"]
    refs = read_mrc(tmp_path / "run_classes.mrcs")[0]
    for cls in np.unique(data["rlnClassNumber"]):
        if (data["rlnClassNumber"] == cls).sum() >= 10:
            best = max(_best_corr(refs[cls - 1], v) for v in views)
            assert best >= 0.85, (cls, best)
