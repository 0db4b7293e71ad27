"""Class consensus on synthetic labellings with known truth."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from spa.consensus.classes import adjusted_rand_index, class_consensus, contingency_table, match_labels


def _noisy_run(truth, k, flip, rng):
    """Truth relabelled by a random permutation (numbers 1..k), with a fraction ``flip`` moved to another class."""
    perm = rng.permutation(k) + 1
    labels = perm[truth].copy()
    flipped = rng.random(truth.size) < flip
    other = (truth[flipped] + rng.integers(1, k, flipped.sum())) % k  # never the true class
    labels[flipped] = perm[other]
    return labels


def _ari_by_pairs(a, b):
    """ARI from the pair-confusion counts (brute force over all pairs): an independent formula."""
    tp = fp = fn = tn = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        same_a, same_b = a[i] == a[j], b[i] == b[j]
        tp += same_a and same_b
        fn += same_a and not same_b
        fp += same_b and not same_a
        tn += not same_a and not same_b
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def test_ari_known_values_and_pair_formula():
    assert adjusted_rand_index([0, 0, 1, 2], [0, 0, 1, 1]) == pytest.approx(4 / 7)
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    rng = np.random.default_rng(3)
    for _ in range(5):
        a = rng.integers(0, 4, 60)
        b = np.where(rng.random(60) < 0.6, a, rng.integers(0, 5, 60))
        assert adjusted_rand_index(a, b) == pytest.approx(_ari_by_pairs(a, b), abs=1e-12)


def test_ari_identical_and_random():
    rng = np.random.default_rng(0)
    a = rng.integers(1, 6, 5000)
    relabelled = np.array([10, 50, 20, 40, 30, 60])[a]  # same partition, other names
    assert adjusted_rand_index(a, a) == 1.0
    assert adjusted_rand_index(a, relabelled) == pytest.approx(1.0)
    assert abs(adjusted_rand_index(a, rng.integers(1, 6, 5000))) < 0.01
    assert adjusted_rand_index(np.ones(10), np.full(10, 3)) == 1.0


def test_contingency_and_matching():
    a = np.array([1, 1, 1, 2, 2, 3])
    b = np.array([7, 7, 5, 5, 5, 9])
    table, la, lb = contingency_table(a, b)
    assert la.tolist() == [1, 2, 3] and lb.tolist() == [5, 7, 9]
    assert table.tolist() == [[1, 2, 0], [2, 0, 0], [0, 0, 1]]
    assert match_labels(a, b) == {7: 1, 5: 2, 9: 3}
    # a run with more classes than the reference: the spare class matches nothing
    mapping = match_labels(np.array([1, 1, 2, 2]), np.array([4, 4, 6, 8]))
    assert mapping[4] == 1
    assert sorted([mapping[6], mapping[8]])[0] == 2 and sorted([mapping[6], mapping[8]])[1] > 2


@pytest.mark.parametrize("k", [2, 4])
def test_stable_set_is_pure(k):
    rng = np.random.default_rng(k)
    n = 4000
    truth = rng.integers(0, k, n)
    runs = [_noisy_run(truth, k, 0.05, rng) for _ in range(2)]
    res = class_consensus(runs)
    stable = res.stable
    assert stable.mean() >= 0.85
    # purity: the stable particles' consensus classes against the truth, under the best class matching
    mapping = match_labels(truth[stable], res.consensus[stable])
    purity = np.mean(np.array([mapping[c] for c in res.consensus[stable]]) == truth[stable])
    assert purity >= 0.98
    # run 2's classes were mapped onto run 1's numbers: the matched runs agree on ≈ 90 %
    assert np.mean(res.matched[0] == res.matched[1]) > 0.88
    assert 0.6 < res.ari[0, 1] < 0.95  # ≈ (1 − 2·0.1)² for two classes, higher for four
    # per-class bookkeeping: intersections sum to the stable set, stability far above chance
    assert res.intersection.sum() == stable.sum()
    assert np.all(res.stability > 0.85)
    assert np.all(res.intersection > 1.5 * res.chance)  # chance: N/4 for two halves, N/16 for four
    assert np.allclose(res.chance, n * np.prod(res.sizes / n, axis=1))


def test_identical_runs_keep_everything():
    rng = np.random.default_rng(1)
    a = rng.integers(1, 4, 500)
    perm = {1: 3, 2: 1, 3: 2}
    b = np.array([perm[x] for x in a])
    res = class_consensus([a, b, a])
    assert res.stable.all()
    np.testing.assert_array_equal(res.consensus, a)
    np.testing.assert_allclose(res.stability, 1.0)
    np.testing.assert_allclose(res.ari, 1.0)
    assert res.mappings[1] == {3: 1, 1: 2, 2: 3}


def test_min_agreement_majority():
    a = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    b = np.array([1, 1, 1, 2, 2, 2, 2, 2])
    c = np.array([1, 1, 2, 2, 2, 2, 2, 1])
    strict = class_consensus([a, b, c])
    assert strict.stable.tolist() == [True, True, False, False, True, True, True, False]
    assert strict.intersection.tolist() == [2, 3]
    loose = class_consensus([a, b, c], min_agreement=2)
    assert loose.stable.all()
    # particle 4: runs 2 and 3 say class 2, run 1 says 1 -> kept in class 2
    assert loose.consensus.tolist() == [1, 1, 1, 2, 2, 2, 2, 2]
    assert loose.agreement.tolist() == [3, 3, 2, 2, 3, 3, 3, 2]
    with pytest.raises(ValueError):
        class_consensus([a])
    with pytest.raises(ValueError):
        class_consensus([a, b], min_agreement=3)


def test_unmatched_classes_of_different_runs_never_agree():
    # run 1 has two classes; runs 2 and 3 split particle 4 off into an extra class of their own
    a = np.array([1, 1, 1, 2, 2, 2])
    b = np.array([1, 1, 1, 2, 3, 3])
    c = np.array([5, 5, 5, 6, 7, 7])
    res = class_consensus([a, b, c], min_agreement=2)
    assert res.mappings[1][3] == 2 and res.mappings[2][7] == 2  # the larger overlaps
    assert res.mappings[1][2] < 0 and res.mappings[2][6] < 0 and res.mappings[1][2] != res.mappings[2][6]
    # particle 4: run 1 says 2, runs 2 and 3 each their own leftover class -> only one vote for any class
    assert res.stable.tolist() == [True, True, True, False, True, True]
    assert set(res.consensus.tolist()) <= {1, 2}


def test_min_posterior_drops_the_unsure_votes():
    """Runs that repeat the same mistakes agree on them; where the mistakes are the runs' unsure
    assignments (low class posterior), a posterior threshold removes them from the stable set."""
    rng = np.random.default_rng(7)
    n = 2000
    truth = rng.integers(0, 2, n)
    wrong = rng.random(n) < 0.06  # every run gets these wrong, the same way
    labels = np.where(wrong, 1 - truth, truth) + 1
    runs = [labels, np.where(labels == 1, 2, 1)]  # run 2: same partition, other numbering
    # the runs' class posteriors: most wrong ones unsure, a few confident (as measured on simulations)
    post = rng.uniform(0.95, 1.0, n)
    unsure = wrong & (rng.random(n) < 0.7)
    post[unsure] = rng.uniform(0.5, 0.85, unsure.sum())
    posts = [post, np.clip(post + rng.normal(0, 0.01, n), 0, 1)]

    def purity(res):
        kept = res.stable
        return np.mean(res.consensus[kept] - 1 == truth[kept]), kept.mean()

    plain = class_consensus(runs)
    p0, k0 = purity(plain)
    assert k0 == 1.0 and p0 < 0.95  # agreement alone keeps the shared mistakes
    filtered = class_consensus(runs, posteriors=posts, min_posterior=0.9)
    p1, k1 = purity(filtered)
    assert p1 > 0.98 and k1 > 0.93
    assert np.array_equal(filtered.stable, (post >= 0.9) & (posts[1] >= 0.9))
    # a majority vote where unsure runs do not count: runs 1 and 3 share their posteriors, so two
    # sure votes exist exactly where those reach the threshold
    three = class_consensus(runs + [labels], min_agreement=2, posteriors=posts + [post], min_posterior=0.9)
    assert np.array_equal(three.stable, post >= 0.9)
    with pytest.raises(ValueError):
        class_consensus(runs, min_posterior=0.9)
