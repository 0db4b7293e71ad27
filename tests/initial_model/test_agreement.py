"""Choosing the initial-model candidate that the other candidates reproduce."""

import numpy as np

from spa.fourier import lowpass
from spa.geometry.euler import euler_to_matrix
from spa.initial_model.agreement import agreement_matrix, agreement_scores, choose_by_agreement
from spa.initial_model.align import mirror_volume
from tests.initial_model.conftest import molecule

BOX, PIXEL = 24, 5.0


def _rotated(vol, angles):
    from scipy import ndimage

    mat = euler_to_matrix(*np.asarray(angles, float))
    c = (np.asarray(vol.shape) - 1) / 2 + 0.5
    return ndimage.affine_transform(vol, mat, offset=c - mat @ c, order=3).astype(np.float32)


def test_the_reproduced_map_wins_over_a_better_scoring_wrong_one():
    rng = np.random.default_rng(0)
    truth = molecule(BOX, PIXEL)
    other = molecule(BOX, PIXEL, seed=11)
    runs = [
        lowpass(truth + rng.normal(0, 0.1 * truth.std(), truth.shape), PIXEL, 12.0, ndim=3),
        # the same map in another frame and hand: the same solution
        lowpass(mirror_volume(_rotated(truth, (40.0, 70.0, 10.0))), PIXEL, 12.0, ndim=3),
        lowpass(other, PIXEL, 12.0, ndim=3),  # a different local minimum
    ]
    m = agreement_matrix(runs, PIXEL, resolution=12.0)
    assert np.allclose(m, m.T) and np.allclose(np.diag(m), 1.0)
    score = agreement_scores(m)
    assert score[2] < min(score[:2]) - 0.05
    assert choose_by_agreement(m) in (0, 1)
