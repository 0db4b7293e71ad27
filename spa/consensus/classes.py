"""Class consensus: keep the particles that repeated classifications put in the same class.

Class numbers of independent runs (different seeds, e.g. of ``spa class3d``) are
arbitrary: class 2 of one run may be class 5 of another.  Every run is
therefore first relabelled onto run 1's numbering by a one-to-one matching of
classes that maximises the number of shared particles (Hungarian assignment on
the contingency table, ``scipy.optimize.linear_sum_assignment``).  A particle
is stable when at least ``min_agreement`` of the ``M`` runs give it the same
(matched) class; with the default ``min_agreement = M`` that is the
intersection of the runs (Sorzano et al. 2021, Scipion/Xmipp class consensus).

Per class the report gives its size in each run, the size of the intersection,
stability = intersection / mean size, and the intersection expected by chance
for independent labellings with the same class sizes, ``N · Π_r (n_r / N)``.
Agreement between whole labellings is the adjusted Rand index (Hubert & Arabie
1985, https://doi.org/10.1007/BF01908075): 1 for identical partitions up to
renaming, ≈ 0 for independent ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment


def contingency_table(a, b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts ``table[i, j]`` of particles with label ``labels_a[i]`` in ``a`` and ``labels_b[j]`` in ``b``.

    Returns ``(table (Ka, Kb) int64, labels_a, labels_b)`` with the distinct
    labels sorted.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two label vectors of equal length, got shapes {a.shape} and {b.shape}")
    labels_a, ia = np.unique(a, return_inverse=True)
    labels_b, ib = np.unique(b, return_inverse=True)
    table = np.bincount(ia * labels_b.size + ib, minlength=labels_a.size * labels_b.size)
    return table.reshape(labels_a.size, labels_b.size).astype(np.int64), labels_a, labels_b


def _pairs(x: np.ndarray) -> np.ndarray:
    """Number of unordered pairs, x·(x−1)/2, in float64 (no overflow for millions of particles)."""
    x = np.asarray(x, dtype=np.float64)
    return x * (x - 1.0) / 2.0


def adjusted_rand_index(a, b) -> float:
    """Adjusted Rand index between two labellings of the same particles (label names do not matter).

    ARI = (Σᵢⱼ C(nᵢⱼ,2) − E) / (½(Σᵢ C(aᵢ,2) + Σⱼ C(bⱼ,2)) − E) with
    E = Σᵢ C(aᵢ,2) · Σⱼ C(bⱼ,2) / C(N,2), from the contingency table ``nᵢⱼ``
    with row sums ``aᵢ`` and column sums ``bⱼ``.  1 for identical partitions,
    ≈ 0 (and possibly negative) for independent ones.  When both labellings
    put every particle in one class (or every particle alone) the index is
    undefined (0/0); it is then 1, since the partitions are identical.
    """
    table, _, _ = contingency_table(a, b)
    n = table.sum()
    sum_ij = _pairs(table).sum()
    sum_a = _pairs(table.sum(axis=1)).sum()
    sum_b = _pairs(table.sum(axis=0)).sum()
    total = _pairs(n)
    expected = sum_a * sum_b / total if total > 0 else 0.0
    maximum = 0.5 * (sum_a + sum_b)
    if maximum == expected:
        return 1.0
    return float((sum_ij - expected) / (maximum - expected))


def match_labels(reference, labels) -> dict:
    """Map each label of ``labels`` onto a label of ``reference`` so that shared particles are maximal.

    One-to-one (Hungarian) assignment on the contingency table.  Labels of
    ``labels`` left without a partner (the run has more classes than the
    reference) are mapped to new numbers above every reference label, so they
    never agree with a reference class.  Returns ``{label: reference label}``.
    """
    table, ref_labels, run_labels = contingency_table(reference, labels)
    rows, cols = linear_sum_assignment(table, maximize=True)
    mapping = {run_labels[c].item(): ref_labels[r].item() for r, c in zip(rows, cols)}
    spare = max(int(np.max(ref_labels)), int(np.max(run_labels))) + 1
    for lab in run_labels:
        if lab.item() not in mapping:
            mapping[lab.item()] = spare
            spare += 1
    return mapping


@dataclass
class ClassConsensus:
    """Result of :func:`class_consensus` for ``M`` runs of ``N`` particles.

    ``matched``: (M, N) class numbers in run 1's numbering (row 0 is run 1).
    ``consensus``: (N,) class each particle is kept in (the most frequent
    matched class; run 1's class on a tie).  ``agreement``: (N,) number of runs
    that give ``consensus``.  ``stable``: (N,) bool, ``agreement ≥ min_agreement``.
    ``mappings``: per run ``{own class: run-1 class}`` (identity for run 1; a
    class left without a partner in run 1 maps to a distinct negative number).
    ``classes``: run 1's class numbers.  ``sizes``: (K, M) class sizes per run
    after matching; ``intersection``: (K,) particles in the class in every
    run; ``kept``: (K,) stable particles kept in the class; ``stability``:
    intersection / mean size; ``chance``: expected intersection of
    independent labellings, N · Π_r sizes/N.  ``ari``: (M, M) adjusted Rand
    index between every pair of runs.
    """

    matched: np.ndarray
    consensus: np.ndarray
    agreement: np.ndarray
    stable: np.ndarray
    min_agreement: int
    mappings: list[dict]
    classes: np.ndarray
    sizes: np.ndarray
    intersection: np.ndarray
    kept: np.ndarray
    stability: np.ndarray
    chance: np.ndarray
    ari: np.ndarray = field(repr=False)

    @property
    def n_runs(self) -> int:
        return int(self.matched.shape[0])

    @property
    def n_particles(self) -> int:
        return int(self.matched.shape[1])

    def class_stability_of(self, labels) -> np.ndarray:
        """Per-class stability looked up for each label (run-1 numbering); NaN for unknown labels."""
        lookup = dict(zip(self.classes.tolist(), self.stability.tolist()))
        return np.array([lookup.get(int(k), np.nan) for k in np.asarray(labels).tolist()], dtype=np.float64)


def _most_frequent(matched: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``matched`` (M, N): the most frequent value (row 0's on ties) and its count."""
    # votes for each run's label, one run at a time so memory stays O(M·N)
    counts = np.stack([(matched == row).sum(axis=0) for row in matched])  # (M, N)
    # argmax takes the first maximum, i.e. the earliest run among tied labels: run 1 first
    best = np.argmax(counts, axis=0)
    cols = np.arange(matched.shape[1])
    return matched[best, cols], counts[best, cols]


def class_consensus(runs, *, min_agreement: int | None = None, posteriors=None,
                    min_posterior: float | None = None) -> ClassConsensus:
    """Consensus of ``M ≥ 2`` classifications ``runs`` (sequence of (N,) integer label vectors, same particle order).

    Each run is matched to run 1 (:func:`match_labels`); a particle is stable
    when ``min_agreement`` runs (default: all, the intersection) agree on its
    matched class.  With ``posteriors`` (per run, each particle's posterior
    probability of its class, summed over poses) and ``min_posterior``, a run
    counts towards the agreement only where its posterior reaches that value:
    runs seeded from the same data repeat their confident mistakes, so
    agreement alone cannot remove particles that every run gets wrong, but the
    unsure ones among them can be.  See :class:`ClassConsensus` for what is
    returned.
    """
    runs = [np.asarray(r).astype(np.int64) for r in runs]
    m = len(runs)
    if m < 2:
        raise ValueError(f"class consensus needs at least two runs, got {m}")
    n = runs[0].size
    if any(r.shape != (n,) for r in runs):
        raise ValueError("every run must label the same particles: label vectors of equal length")
    if n == 0:
        raise ValueError("no particles")
    k_min = m if min_agreement is None else int(min_agreement)
    if not 1 <= k_min <= m:
        raise ValueError(f"min_agreement must be between 1 and the number of runs ({m}), got {min_agreement}")

    ref_classes = set(np.unique(runs[0]).tolist())
    mappings = [{k: k for k in sorted(ref_classes)}]
    matched = [runs[0]]
    spare = -1
    for r in runs[1:]:
        mapping = match_labels(runs[0], r)
        # classes without a partner in run 1 get numbers of their own (negative, distinct across
        # runs): two runs' leftover classes must never count as agreeing with each other
        for own, ref in mapping.items():
            if ref not in ref_classes:
                mapping[own] = spare
                spare -= 1
        mappings.append(mapping)
        keys = np.array(list(mapping.keys()), dtype=np.int64)
        vals = np.array(list(mapping.values()), dtype=np.int64)
        order = np.argsort(keys)
        matched.append(vals[order][np.searchsorted(keys[order], r)])
    matched = np.stack(matched)

    votes = matched
    if min_posterior is not None:
        if posteriors is None:
            raise ValueError("min_posterior needs the runs' class posteriors")
        post = np.stack([np.asarray(p, np.float64) for p in posteriors])
        if post.shape != matched.shape:
            raise ValueError("one class posterior per particle and run is needed")
        # an unsure run votes for a class of its own (distinct negative numbers), so it agrees with none
        unsure = np.arange(m)[:, None] + np.iinfo(np.int64).min // 2
        votes = np.where(post >= float(min_posterior), matched, unsure)
    if k_min == m:
        # the intersection: run 1's class where every run agrees with it
        consensus = matched[0].copy()
        agreement = (votes == votes[0]).sum(axis=0)
    else:
        consensus, agreement = _most_frequent(votes)
        unsure_vote = consensus < np.iinfo(np.int64).min // 4
        consensus = np.where(unsure_vote, matched[0], consensus)
        agreement = np.where(unsure_vote, 0, agreement)
    stable = agreement >= k_min

    classes = np.unique(runs[0])
    sizes = np.stack([(matched == k).sum(axis=1) for k in classes]).astype(np.int64)  # (K, M)
    all_agree = np.all(matched == matched[0], axis=0)
    intersection = np.array([np.sum(all_agree & (matched[0] == k)) for k in classes], dtype=np.int64)
    kept = np.array([np.sum(stable & (consensus == k)) for k in classes], dtype=np.int64)
    mean_size = sizes.mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        stability = np.where(mean_size > 0, intersection / mean_size, 0.0)
    chance = n * np.prod(sizes / n, axis=1)

    ari = np.eye(m)
    for i in range(m):
        for j in range(i + 1, m):
            ari[i, j] = ari[j, i] = adjusted_rand_index(runs[i], runs[j])

    return ClassConsensus(
        matched=matched,
        consensus=consensus,
        agreement=agreement.astype(np.int64),
        stable=stable,
        min_agreement=k_min,
        mappings=mappings,
        classes=classes,
        sizes=sizes,
        intersection=intersection,
        kept=kept,
        stability=stability.astype(np.float64),
        chance=chance.astype(np.float64),
        ari=ari,
    )
