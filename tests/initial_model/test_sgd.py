"""SGD ab initio from a random start recovers a map it has never seen (Punjani et al. 2017)."""

import numpy as np
import pytest

from spa.backend import backend_of

from spa.em.fsc import fsc, resolution_at
from spa.initial_model.align import align_to_reference
from spa.initial_model.sgd import (SGDOptions, SGDRun, constrain_map, healpix_order_for, learning_rate_schedule,
                                   resolution_schedule, run_sgd)
from spa.fourier import shells_to
from spa.initial_model.working import choose_working_box
from tests.initial_model.conftest import molecule, simulate, working_set

BOX, PIXEL = 24, 5.0


@pytest.fixture(scope="module")
def data():
    vol = molecule(BOX, PIXEL)
    images, table, euler, origins = simulate(vol, PIXEL, 1200, snr=1.0, seed=1)
    return vol, working_set(images, table, PIXEL)


@pytest.mark.parametrize("seed", [0, 1])
def test_sgd_from_random_blobs_recovers_the_molecule(data, seed):
    vol, ws = data
    opts = SGDOptions(seed=seed, n_iter=30, final_resolution=12.0, batch_start=90, batch_end=150)
    res = run_sgd(ws, opts)
    assert res.maps.shape == (1, BOX, BOX, BOX) and res.rotations.shape == (len(ws), 3)
    # the map is known up to a rotation, a shift and the hand: align, then compare
    aligned, info = align_to_reference(res.maps[0], vol, pixel_size=PIXEL)
    assert resolution_at(fsc(aligned, vol), 0.5, BOX, PIXEL) < 15.0
    assert res.class_fractions.sum() == pytest.approx(1.0)
    assert np.abs(res.offsets_px).max() <= 0.08 * BOX + 1  # within the searched range


def test_same_seed_same_map_and_different_seed_different_map(data):
    _, ws = data
    small = ws.subset(np.arange(300))
    opts = SGDOptions(seed=3, n_iter=3, batch_start=40, batch_end=60, init_particles=50)

    def three_steps(seed):
        run = SGDRun(small, SGDOptions(**{**vars(opts), "seed": seed}))
        run.initialise()
        for t in range(3):
            run.step(t)
        return backend_of(run.refs.images).to_numpy(run.refs.images)

    a, b, c = three_steps(3), three_steps(3), three_steps(4)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_schedules_run_from_start_to_end():
    assert resolution_schedule(0, 100, 35.0, 12.0) == pytest.approx(35.0)
    assert resolution_schedule(99, 100, 35.0, 12.0) == pytest.approx(12.0)
    r = [resolution_schedule(t, 100, 35.0, 12.0) for t in range(100)]
    assert all(x >= y for x, y in zip(r, r[1:]))
    assert learning_rate_schedule(0, 50, 0.4, 0.05) == pytest.approx(0.4)
    assert learning_rate_schedule(49, 50, 0.4, 0.05) == pytest.approx(0.05)
    # finer orientations as the resolution rises; never beyond the cap
    assert healpix_order_for(35.0, 100.0) == 1 and healpix_order_for(12.0, 100.0) == 2
    assert healpix_order_for(5.0, 100.0, max_order=2) == 2
    assert shells_to(12.0, 32, 4.0) == 11 and shells_to(2.0, 32, 4.0) == 17


def test_working_box_sampling_and_limits():
    assert choose_working_box(64, 2.0, 12.0) == 32  # 4 Å pixels for 12 Å
    assert choose_working_box(256, 1.0, 12.0) == 64
    assert choose_working_box(24, 5.0, 12.0) == 24  # never larger than the particles
    assert choose_working_box(200, 0.5, 40.0) == 24  # at least 24 px
    assert choose_working_box(64, 2.0, 12.0) % 2 == 0


def test_constraints_zero_solvent_and_keep_density_positive():
    rng = np.random.default_rng(0)
    vol = molecule(BOX, PIXEL) + 0.3 + 0.05 * rng.standard_normal((BOX,) * 3).astype(np.float32)
    out = constrain_map(vol, 8.0)
    assert out.min() >= 0
    r = np.sqrt(((np.indices((BOX,) * 3) - BOX // 2) ** 2).sum(0))
    assert np.abs(out[r > 12]).max() < 1e-6  # nothing beyond the mask
    assert out[r < 4].mean() > 0.5 * (vol[r < 4] - 0.3).mean()  # the particle stays


def test_two_classes_are_refined_together_with_soft_assignment(data):
    _, ws = data
    small = ws.subset(np.arange(300))
    res = run_sgd(small, SGDOptions(seed=2, n_classes=2, n_iter=4, batch_start=60, batch_end=80, init_particles=60,
                                    final_resolution=20.0))
    assert res.maps.shape == (2, BOX, BOX, BOX)
    assert set(np.unique(res.classes)) <= {0, 1}
    assert res.class_fractions.shape == (2,) and res.class_fractions.sum() == pytest.approx(1.0)
    assert np.all(res.maps >= 0) and np.all(np.isfinite(res.maps))


def test_held_subset_bounds_memory_and_the_final_pass_reads_every_particle(data):
    """With more particles than held, SGD draws from a random subset; the final pass streams every row,
    and aligns it as it aligns the same particles held in memory."""
    from spa.em.engine import ArrayImages
    from spa.initial_model.working import load_working_set

    vol, ws_all = data
    n = 400
    table = ws_all.table.iloc[:n].reset_index(drop=True)
    source = ArrayImages(ws_all.images[:n], PIXEL)
    held = load_working_set(table, source, BOX, max_held=150, seed=5)
    assert len(held) == 150 and held.n_particles == n and not held.all_held
    assert np.array_equal(held.images, ws_all.images[held.held])
    images, ctf, group = held.rows_data(np.arange(10, 20))
    np.testing.assert_array_equal(images, ws_all.images[10:20])
    np.testing.assert_array_equal(ctf, ws_all.ctf(np.arange(10, 20)))
    full = load_working_set(table, source, BOX)
    assert full.all_held and held.n_particles == full.n_particles
    run_held, run_full = SGDRun(held, SGDOptions(seed=2)), SGDRun(full, SGDOptions(seed=2))
    run_full.start_from(vol[None])
    run_held.sigma2 = run_full.sigma2  # the same noise model (the held one estimates it from its subset)
    run_held.start_from(vol[None])
    a, b = run_held.final_pass(chunk=128), run_full.final_pass(chunk=128)
    assert a["rot"].shape == (n, 3)
    np.testing.assert_array_equal(a["rot"], b["rot"])
    np.testing.assert_array_equal(a["offset"], b["offset"])


def test_centring_moves_the_running_sums_with_the_map(data):
    """The phase ramp on the padded sums moves the rebuilt map exactly as the map itself is moved."""
    from spa.initial_model.align import centre_of_mass_shift, shift_volume

    _, ws = data
    small = ws.subset(np.arange(300))
    run = SGDRun(small, SGDOptions(seed=5, n_iter=2, batch_start=60, batch_end=60, init_particles=100,
                                   centre=False))
    run.initialise()
    run.step(0)
    vol = backend_of(run.refs.images).to_numpy(run.refs.images)[0]
    moved = shift_volume(vol, (2.0, -1.0, 1.5))
    assert np.allclose(centre_of_mass_shift(moved) - centre_of_mass_shift(vol), (2.0, -1.0, 1.5), atol=0.3)
    shells = shells_to(run.opts.initial_resolution, ws.box, ws.pixel_size)
    run._rebuild(shells, tau2=None, shifts=[(2.0, -1.0, 1.5)])
    rebuilt = backend_of(run.refs.images).to_numpy(run.refs.images)[0]
    assert np.allclose(centre_of_mass_shift(rebuilt) - centre_of_mass_shift(vol), (2.0, -1.0, 1.5), atol=0.3)
    # and the move stays in the sums: the next rebuild does not move it back
    run._rebuild(shells, tau2=None)
    again = backend_of(run.refs.images).to_numpy(run.refs.images)[0]
    assert np.allclose(centre_of_mass_shift(again), centre_of_mass_shift(rebuilt), atol=0.1)


def test_sgd_map_stays_centred_on_off_centre_particles():
    """Particles picked up to 3 px off their centres: the SGD map's mass stays near the box centre."""
    from spa.initial_model.align import centre_of_mass_shift

    vol = molecule(BOX, PIXEL)
    vol = np.asarray(shift_map_for_test(vol), np.float32)
    images, table, _, _ = simulate(vol, PIXEL, 400, snr=1.0, seed=7, max_origin_px=3.0)
    ws = working_set(images, table, PIXEL)
    opts = SGDOptions(seed=2, n_iter=10, n_initial_iter=5, final_resolution=15.0, batch_start=80, batch_end=100)
    run = SGDRun(ws, opts)
    run.initialise()
    for t in range(opts.total_iterations):
        run.step(t)
    maps = backend_of(run.refs.images).to_numpy(run.refs.images)
    assert np.linalg.norm(centre_of_mass_shift(maps[0])) <= opts.centre_min_px + 0.3


def shift_map_for_test(vol):
    """The test molecule with its mass moved to the box centre (picks centre a particle's mass)."""
    from spa.initial_model.align import centre_of_mass_shift, shift_volume

    return shift_volume(vol, -centre_of_mass_shift(vol))
