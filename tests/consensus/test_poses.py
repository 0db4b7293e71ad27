"""Pose consensus on synthetic pose sets with known frames, noise, outliers and symmetry."""

from __future__ import annotations

import numpy as np
import pytest

from spa.consensus.poses import estimate_frame, pose_consensus
from spa.geometry import angular_distance, random_rotations, symmetry_matrices
from spa.geometry.symmetry import axis_rotation

F = np.diag([1.0, 1.0, -1.0])


def _small_rotations(n, sigma_deg, rng):
    """Random rotations whose rotation vector has N(0, σ) components (σ = 0.7° → 99 % within ≈ 2.4°)."""
    v = rng.normal(0, np.deg2rad(sigma_deg), (n, 3))
    out = np.empty((n, 3, 3))
    for i, w in enumerate(v):
        t = np.linalg.norm(w)
        out[i] = axis_rotation(w / t, np.rad2deg(t)) if t > 0 else np.eye(3)
    return out


def _pair(n=2000, outliers=0.10, seed=0):
    """Run A poses and run B = A in a frame rotated by G (A_A = A_B·G), ≈ 2° noise, a fraction of random poses."""
    rng = np.random.default_rng(seed)
    Ra = random_rotations(n, rng)
    G = axis_rotation(rng.normal(size=3), 37.0)
    Rb = Ra @ _small_rotations(n, 0.7, rng) @ G.T
    bad = rng.random(n) < outliers
    Rb[bad] = random_rotations(int(bad.sum()), rng)
    sa = rng.normal(0, 3, (n, 2))
    sb = sa + rng.normal(0, 0.5, (n, 2))
    return Ra, Rb, sa, sb, G, bad


def test_global_rotation_recovered_and_outliers_removed():
    Ra, Rb, sa, sb, G, bad = _pair()
    res = pose_consensus(Ra, Rb, sa, sb, max_angle=2.5, max_shift_px=4.0)
    assert angular_distance(res.rotation, G) < 0.3
    assert res.rotation_angle_deg == pytest.approx(37.0, abs=0.3)
    assert not res.mirrored
    assert np.mean(~res.kept[bad]) >= 0.95  # outliers removed
    assert np.mean(res.kept[~bad]) >= 0.95  # inliers kept
    # the inliers' differences are the noise alone (median angle of the 0.7° per-axis noise ≈ 1.1°)
    assert 0.8 < np.median(res.angular_difference[~bad]) < 1.5


def test_without_alignment_everything_disagrees():
    Ra, Rb, sa, sb, _, _ = _pair(n=500)
    res = pose_consensus(Ra, Rb, sa, sb, align=False)
    assert np.allclose(res.rotation, np.eye(3))
    assert res.kept.mean() < 0.05


def test_shift_limit():
    Ra, _, sa, _, _, _ = _pair(n=400, outliers=0)
    sb = sa.copy()
    sb[:100, 0] += 5.0  # 5 px off: beyond 4 px
    sb[100:200, 1] -= 3.0  # 3 px: within
    res = pose_consensus(Ra, Ra.copy(), sa, sb, max_shift_px=4.0)
    assert not res.kept[:100].any() and res.kept[100:].all()
    np.testing.assert_allclose(res.shift_difference[:100], 5.0)
    # a per-particle limit (a limit in Å over different pixel sizes)
    limit = np.where(np.arange(400) < 50, 6.0, 4.0)
    res = pose_consensus(Ra, Ra.copy(), sa, sb, max_shift_px=limit)
    assert res.kept[:50].all() and not res.kept[50:100].any()


@pytest.mark.parametrize("group", ["D2", "C3"])
def test_symmetry_mates_count_as_equal(group):
    rng = np.random.default_rng(5)
    n = 800
    mats = symmetry_matrices(group)
    Ra = random_rotations(n, rng)
    S = mats[rng.integers(0, len(mats), n)]
    G = axis_rotation((1.0, 2.0, 0.5), 20.0)
    # A_A·S = A_B·G  ->  A_B = A_A·S·Gᵀ, each particle with its own symmetry mate
    Rb = Ra @ _small_rotations(n, 0.5, rng) @ S @ G.T
    shifts = np.zeros((n, 2))
    sym = pose_consensus(Ra, Rb, shifts, shifts, group=group)
    assert sym.kept.mean() >= 0.98
    # the frame is found up to the group: G·S' for some S' in the group
    assert np.min(angular_distance(sym.rotation @ mats, G)) < 0.3
    # in C1 the same poses mostly disagree (only those with S = identity agree)
    c1 = pose_consensus(Ra, Rb @ G, shifts, shifts, group="C1", align=False)
    assert c1.kept.mean() == pytest.approx(1 / len(mats), abs=0.08)
    # modulo symmetry the differences are the noise alone (0.5° per axis: median ≈ 0.8°)
    assert np.median(sym.angular_difference) < 1.1


def test_other_hand():
    Ra, Rb, sa, sb, G, bad = _pair(n=600, outliers=0.0, seed=2)
    mirrored = F @ Rb @ F
    res = pose_consensus(Ra, mirrored, sa, sb, allow_mirror=True)
    assert res.mirrored
    assert res.kept.mean() >= 0.95
    plain = pose_consensus(Ra, mirrored, sa, sb)
    assert plain.kept.mean() < 0.2


def test_estimate_frame_inliers():
    Ra, Rb, _, _, G, bad = _pair(n=1000, outliers=0.3, seed=7)
    g, mirrored, inliers = estimate_frame(Ra, Rb, inlier_deg=10.0)
    assert angular_distance(g, G) < 0.3 and not mirrored
    assert np.mean(inliers[~bad]) > 0.99 and np.mean(inliers[bad]) < 0.02
