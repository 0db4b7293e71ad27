"""Both passes of the E-step for one chunk, the fine pass in image batches of bounded memory.

Pass 2 (:class:`spa.em.finepass.FinePass`) projects every (class, fine
rotation) row its candidates use — U rows × F pixels, complex64 — and sums the
posterior-weighted data per row likewise.  At high resolution with local
searches almost every particle has rows of its own: at box 128 and Nyquist,
256 particles used 110 000 rows of 6 600 pixels, 5.8 GB for the projections
alone, and four times that per row at box 256.  So when a chunk's rows would
need more than :func:`fine_pass_budget` bytes, its images are split into
contiguous batches whose rows fit, and each batch is scored and its sums added
before the next is projected.  An image's candidates stay in one batch, so its
posterior is normalised over all of them as before; rows that two batches share
are projected in both.  A chunk that fits is one batch: the same arithmetic as
without batching.
"""

from __future__ import annotations

import numpy as np

from spa.backend import array_module, backend_of
from spa.em.estep import (ChunkData, Posterior, _children, balance_classes, coarse_pass, fine_candidates,
                          local_coarse_pass, unique_inverse)
from spa.em.finepass import FinePass
from spa.em.model import ReferenceModel, Sampling
from spa.em.rows import block_elements


def fine_pass_budget(xp) -> int:
    """Bytes one fine-pass batch may use for its rows (512 MB on the CPU, 8 GB on a GPU)."""
    return 32 * block_elements(xp)


def row_bytes(data: ChunkData) -> int:
    """Bytes per row of a fine pass: its projection (complex64) and |A|² (float32), and per optics group
    the row's data (complex64) and weight (float32) sums — for every active pixel."""
    n_groups = int(backend_of(data.group).to_numpy(data.group).max()) + 1 if data.group.shape[0] else 1
    return int(data.active.size) * (12 + 12 * n_groups)


def image_batches(img, row_key, n_keys: int, n_images: int, bytes_per_row: int, budget: int) -> list[tuple]:
    """Contiguous image ranges (a, b) whose candidates' distinct rows fit in ``budget`` bytes (a single
    image always forms a batch, whatever its rows need); ``img`` (P,) is sorted (image-major candidates)."""
    xp = array_module(img)
    counts = backend_of(img).to_numpy(xp.bincount(img, minlength=n_images))
    starts = np.concatenate([[0], np.cumsum(counts)])

    def rows_of(a, b):
        return int(unique_inverse(row_key[int(starts[a]):int(starts[b])], n_keys)[0].shape[0])

    def split(a, b):
        if b - a <= 1 or rows_of(a, b) * bytes_per_row <= budget:
            return [(a, b)]
        m = (a + b) // 2
        return split(a, m) + split(m, b)

    return [(a, b, slice(int(starts[a]), int(starts[b]))) for a, b in split(0, n_images)]


class FineScores:
    """The matched-filter terms of every candidate of a chunk scored in several batches (see
    :meth:`spa.em.finepass.FinePass.signal_z`)."""

    def __init__(self, cross, norm):
        self._cross, self._norm = cross, norm

    def signal_z(self, candidates):
        xp = array_module(self._cross)
        return self._cross[candidates] / xp.sqrt(xp.maximum(self._norm[candidates], 1e-30))


def expectation(data: ChunkData, refs: ReferenceModel, sampling: Sampling, log_class_prior, sigma_offset_px,
                coarse_shells: int, significant_fraction: float = 0.999, max_significant: int = 64, priors=None,
                balance: bool = False, per_class: bool = False, sums: dict | None = None, resid=None,
                budget: int | None = None):
    """Both passes for one chunk → (:class:`spa.em.estep.Posterior`, the scores for ``signal_z``).

    A sampling with ``local = True`` searches around ``priors`` (N, 3) Euler
    angles (:func:`spa.em.estep.local_coarse_pass`); any other searches its
    whole grid.  ``balance``: split the chunk's images evenly over the classes
    (:func:`spa.em.estep.balance_classes`, per batch when there are several;
    3D classification's first iterations).  ``per_class``: coarse samples are
    kept per class.  With ``sums`` (``refs.new_sums()``) and ``resid`` ((G, F)
    float64) the weighted sums are added into them, batch by batch; ``budget``:
    bytes per fine-pass batch (default :func:`fine_pass_budget`).  With one
    batch the scores are the :class:`~spa.em.finepass.FinePass` itself.
    """
    xp = array_module(data.X)
    local = getattr(sampling, "local", False)
    if local:
        if priors is None:
            raise ValueError("a local search needs the particles' prior orientations")
        s, k, r, valid, n_sig = local_coarse_pass(data, refs, sampling, log_class_prior, sigma_offset_px,
                                                  coarse_shells, priors, significant_fraction, max_significant,
                                                  per_class)
        img, cls, rot, shift, dense_shape = _children(s, k, r, valid, sampling)
    else:
        sample, valid, n_sig = coarse_pass(data, refs, sampling, log_class_prior, sigma_offset_px, coarse_shells,
                                           significant_fraction, max_significant, per_class)
        img, cls, rot, shift, dense_shape = fine_candidates(sample, valid, refs, sampling)
    n = int(data.X.shape[0])
    n_rot = len(sampling.fine_rotations)
    budget = fine_pass_budget(xp) if budget is None else int(budget)
    batches = image_batches(img, cls * n_rot + rot, refs.n_classes * n_rot, n, row_bytes(data), budget)
    weights, lse, crosses, norms = [], xp.full(n, -np.inf, dtype=xp.float32), [], []
    for a, b, c in batches:
        fine = FinePass(data, refs, sampling, img[c], cls[c], rot[c], shift[c])
        log_prior = None
        if local:  # the orientation prior of each (image, fine rotation) pair
            be = backend_of(data.X)
            q_img = be.to_numpy(fine.q_img)
            q_rot = fine.pair_rot[be.to_numpy(fine.q_row)]
            lp_q = sampling.log_prior(sampling.fine_rotations[q_rot], np.asarray(priors, np.float64)[q_img])
            log_prior = xp.asarray(lp_q)[fine.cand_q]
        weight, lse_b = fine.score(log_class_prior, sigma_offset_px, dense_shape, log_prior)
        if balance:
            weight = balance_classes(weight, img[c] - a, cls[c], b - a, len(log_class_prior))
        if sums is not None:
            fine.accumulate(weight, refs, sums, resid)
        weights.append(weight)
        lse[a:b] = lse_b[a:b]
        if len(batches) > 1:
            crosses.append(fine._cross)
            norms.append(fine._norm)
            del fine
    xnorm = 0.5 * ((data.X.real**2 + data.X.imag**2) * data.inv_sigma2).sum(axis=1)
    weight = weights[0] if len(weights) == 1 else xp.concatenate(weights)
    post = Posterior(img, cls, rot, shift, weight, n_sig, lse.astype(xp.float64) - xnorm.astype(xp.float64))
    scores = fine if len(batches) == 1 else FineScores(xp.concatenate(crosses), xp.concatenate(norms))
    return post, scores
