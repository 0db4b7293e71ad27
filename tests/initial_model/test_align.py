"""Symmetry-axis alignment, map-to-map alignment and the mirror (the hand)."""

import numpy as np
import pytest

from spa.em.fsc import fsc, resolution_at
from spa.geometry.sampling import random_rotations
from spa.geometry.symmetry import rotate_volume, symmetrise_volume, symmetry_matrices
from spa.initial_model.align import (align_symmetry_axes, align_to_reference, centre_of_mass_shift, mirror_volume,
                                     symmetrise_aligned)
from tests.initial_model.conftest import molecule

BOX, PIXEL = 24, 5.0


def _symmetric_map(group, seed=5):
    base = molecule(BOX, PIXEL, seed=seed)
    # move the asymmetric unit off the axes so the assembly is not a blob on the axis
    base = np.roll(base, 3, axis=2)
    return symmetrise_volume(base, group, order=1)


def _axes_error_deg(rotation):
    """Angle (degrees) by which a rotation misses the nearest signed permutation (a frame swap of D2's axes)."""
    best = np.abs(rotation).max(axis=1)
    return float(np.degrees(np.arccos(np.clip(best.min(), -1, 1))))


@pytest.mark.parametrize("group", ["D2", "C2"])
def test_symmetry_axes_of_a_randomly_rotated_map_are_found(group):
    sym = _symmetric_map(group)
    rot = random_rotations(1, 11)[0]
    moved = rotate_volume(sym, rot, order=3)  # axes now at rot·(standard axes)
    q, score = align_symmetry_axes(moved, group, pixel_size=PIXEL, resolution=15.0)
    assert score > 0.9
    # q·rot maps the standard axes back onto themselves
    m = q @ rot
    if group == "D2":  # any of D2's three 2-folds may land on z: a signed permutation
        assert _axes_error_deg(m) < 4.0
    else:  # the 2-fold must go back onto ±z
        axis = m @ np.array([0.0, 0.0, 1.0])
        assert np.degrees(np.arccos(min(1.0, abs(axis[2])))) < 4.0
    aligned = rotate_volume(moved, q, order=3)
    for s in symmetry_matrices(group)[1:]:
        c = np.corrcoef(aligned.ravel(), rotate_volume(aligned, s, order=3).ravel())[0, 1]
        assert c > 0.95


def test_an_asymmetric_map_scores_low_for_a_symmetry_it_lacks():
    vol = molecule(BOX, PIXEL, seed=5)
    _, score_asym = align_symmetry_axes(vol, "C2", pixel_size=PIXEL, resolution=15.0)
    _, score_sym = align_symmetry_axes(_symmetric_map("C2"), "C2", pixel_size=PIXEL, resolution=15.0)
    assert score_sym > score_asym + 0.2


def test_symmetrise_aligned_c1_is_identity():
    vol = molecule(BOX, PIXEL)
    out, q, score = symmetrise_aligned(vol, "C1", pixel_size=PIXEL)
    assert np.allclose(out, vol) and np.allclose(q, np.eye(3)) and score == 1.0


@pytest.mark.parametrize("box", [24, 25])
def test_mirror_is_an_involution_that_keeps_the_centre(box):
    vol = np.zeros((box,) * 3, np.float32)
    c = box // 2
    vol[c + 3, c, c] = 1.0  # a point 3 voxels above the centre along z
    mir = mirror_volume(vol)
    assert mir[c - 3, c, c] == 1.0 and mir.sum() == 1.0
    assert np.array_equal(mirror_volume(mir), vol)


def test_align_to_reference_undoes_rotation_shift_and_mirror():
    vol = molecule(BOX, PIXEL)
    rot = random_rotations(1, 4)[0]
    moved = mirror_volume(np.roll(rotate_volume(vol, rot, order=3), (1, -2, 1), axis=(0, 1, 2)))
    aligned, info = align_to_reference(moved, vol, pixel_size=PIXEL)
    assert info["mirrored"]
    assert resolution_at(fsc(aligned, vol), 0.5, BOX, PIXEL) < 2.5 * PIXEL
    assert np.abs(centre_of_mass_shift(aligned) - centre_of_mass_shift(vol)).max() < 0.3
