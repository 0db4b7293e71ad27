"""Which coarse samples go on to the fine pass: per image, the best ones holding a fraction of the
posterior mass (RELION's significant samples), over all classes or within each class.

Log posteriors arrive as rows (one per image) of S shift blocks of G samples
each; the selection reads each row as few times as it can, since it runs once
per element of the coarse pass's GEMM output.
"""

from __future__ import annotations

from spa.backend import array_module
from spa.em.projector import cuda_for


def _top_m(sub, m: int, groups, col_max=None):
    """Indices and values of the m largest entries of each row, exactly, without sorting whole rows.

    A row is S blocks of G samples (shift-major).  Every one of the m best
    samples belongs to a column whose maximum over the S blocks is among the m
    best column maxima, so the search narrows to those m columns (S·m values,
    gathered in memory order), and within them to the values at least the
    m-th best column maximum (sorted when they are few — peaked posteriors —
    else partitioned).  Returned best first.  ``col_max`` (n, G): the column
    maxima, when the caller has them already.
    """
    xp = array_module(sub)
    n, width = sub.shape
    s, g = groups
    ck = cuda_for(sub)
    if ck is not None and m > ck.TOPK_MAX:
        ck = None
    if s * g != width or g <= m:
        if ck is not None:
            return ck.topk_rows(sub, m)
        part = xp.argpartition(sub, width - m, axis=1)[:, width - m:]
        return part, xp.take_along_axis(sub, part, axis=1)
    if col_max is None:
        col_max = sub.reshape(n, s, g).max(axis=1)
    if ck is not None:  # an exact top-m kernel per row (CuPy's partitions sort whole rows)
        col = xp.sort(ck.topk_rows(col_max, m)[0], axis=1)
        flat_index = (xp.arange(n)[:, None, None] * width + xp.arange(s)[None, :, None] * g) + col[:, None, :]
        pos, v = ck.topk_rows(xp.take(sub.reshape(-1), flat_index).reshape(n, s * m), m)
        return (pos // m) * g + xp.take_along_axis(col, pos % m, axis=1), v
    col = xp.argpartition(col_max, g - m, axis=1)[:, g - m:]  # (n, m) best columns
    # the m best column maxima are m values ≥ their smallest, so every one of the m best samples is too:
    # only the gathered values ≥ that threshold (typically a few m of the S·m) need ordering
    threshold = xp.take_along_axis(col_max, col, axis=1).min(axis=1)
    col = xp.sort(col, axis=1)
    flat_index = (xp.arange(n)[:, None, None] * width + xp.arange(s)[None, :, None] * g) + col[:, None, :]
    vals = xp.take(sub.reshape(-1), flat_index).reshape(n, s * m)
    keep = vals >= threshold[:, None]
    if int(xp.count_nonzero(keep)) > 4 * n * m:  # smooth posteriors: many values pass, partition instead
        part = xp.argpartition(vals, s * m - m, axis=1)[:, s * m - m:]
        top = xp.take_along_axis(vals, part, axis=1)
        order = xp.argsort(-top, axis=1)
        part, top = xp.take_along_axis(part, order, axis=1), xp.take_along_axis(top, order, axis=1)
        return (part // m) * g + xp.take_along_axis(col, part % m, axis=1), top
    row, pos = xp.nonzero(keep)  # row-major: rows ascending
    v = vals[row, pos]
    order = _by_row_then_descending(row, v)
    row, pos, v = row[order], pos[order], v[order]
    counts = xp.bincount(row, minlength=n)
    rank = xp.arange(row.shape[0]) - (xp.cumsum(counts) - counts)[row]
    keep = rank < m
    pos, v = pos[keep].reshape(n, m), v[keep].reshape(n, m)
    return (pos // m) * g + xp.take_along_axis(col, pos % m, axis=1), v


def _by_row_then_descending(row, v):
    """Order of candidates by row, then by value, largest first: one int64 sort of (row, value bits)
    (float32 bits, negatives' magnitude bits flipped, order as the floats) instead of two sorts."""
    xp = array_module(v)
    bits = v.astype(xp.float32, copy=False).view(xp.int32)
    monotone = xp.where(bits < 0, bits ^ 0x7FFFFFFF, bits).astype(xp.int64)
    return xp.argsort(row.astype(xp.int64) * (1 << 32) + ((1 << 31) - 1 - monotone))


def _count_needed(cum_top, cnt, mass, m: int, fraction: float):
    """Samples needed per row: the fewest best ones holding ``fraction`` of ``mass``, at most m and at most
    the row's near samples ``cnt``."""
    xp = array_module(cum_top)
    return xp.minimum(xp.minimum((cum_top < fraction * mass[:, None]).sum(axis=1) + 1, m), xp.minimum(cnt, m))


def significant(flat, m: int, fraction: float, delta: float = 25.0, groups=None, col_max=None):
    """Per row of log posteriors: the best ≤ m samples holding ``fraction`` of the mass.

    One exact top-(m+1) search per row (:func:`_top_m`) gives the best m and
    tells a peaked row (at most m samples within ``delta`` nats of its
    maximum; the rest weigh < e⁻²⁵ each, so its mass is the sum over its best
    m) from a broad one.  A broad row's mass lies between that of its best m+1
    and that plus (width − m − 1) samples at the (m+1)-th value; when both
    bounds give the same count (or the cap m) the count is exact, and only the
    other rows are read again for an exp-and-sum.  This runs once per GEMM
    output element, so whole rows are read as few times as possible.
    ``col_max``: see :func:`_top_m`.  Returns (index (n, m) best first, valid (n, m), count (n,)).
    """
    xp = array_module(flat)
    n, width = flat.shape
    m = int(min(m, width))
    idx, val = _top_m(flat, min(m + 1, width), groups or (1, width), col_max)
    order = xp.argsort(-val, axis=1)
    idx = xp.take_along_axis(idx, order, axis=1)
    val = xp.take_along_axis(val, order, axis=1)
    mx = val[:, 0]
    near = val > (mx - delta)[:, None]
    cnt = xp.count_nonzero(near, axis=1)  # samples within delta of the maximum, up to m + 1
    top_idx, top_val = idx[:, :m], val[:, :m]
    w_top = xp.exp(top_val - mx[:, None]).astype(xp.float64)
    cum_top = xp.cumsum(w_top, axis=1)  # unnormalised mass of the best j samples, j = 1 … m
    # peaked rows: the mass is that of their near samples (the others weigh < e⁻²⁵ each)
    k_sig = _count_needed(cum_top, cnt, xp.where(near[:, :m], w_top, 0).sum(axis=1), m, fraction)
    broad = cnt > m
    if bool(broad.any()):
        # broad rows: the true mass lies between that of the best m+1 samples and that plus every other
        # sample at the (m+1)-th value; where both bounds give the same count (or the cap m) it is the
        # count, and only the rest read their whole row again
        rest = xp.exp(val[:, -1] - mx).astype(xp.float64)
        low = cum_top[:, -1] + rest
        k_low = _count_needed(cum_top, cnt, low, m, fraction)
        k_high = _count_needed(cum_top, cnt, low + (width - m - 1) * rest, m, fraction)
        k_sig = xp.where(broad, k_low, k_sig)
        unsure = xp.nonzero(broad & (k_low < m) & (k_high != k_low))[0]
        if int(unsure.shape[0]):  # exp-and-sum of those rows (float32 pairwise sums of terms ≤ 1)
            ck = cuda_for(flat)
            if ck is not None:  # read in place (on the GPU most rows of a block were copied here)
                mass = ck.row_exp_sums(flat, unsure, mx[unsure])
            else:
                e = flat[unsure]
                e -= mx[unsure][:, None]
                xp.exp(e, out=e)
                mass = e.sum(axis=1).astype(xp.float64)
            k_sig[unsure] = _count_needed(cum_top[unsure], cnt[unsure], mass, m, fraction)
    valid = xp.arange(m)[None, :] < k_sig[:, None]
    return top_idx, valid, k_sig


def per_class_cap(max_significant: int, n_classes: int) -> int:
    """Samples kept per class when the selection runs per class: the overall cap shared among the
    classes, but at least 8 (broad early posteriors would otherwise cost K times the fine pass:
    K = 6 took 1.4–2.6× the time per iteration with the whole cap per class)."""
    return int(max(-(-max_significant // max(n_classes, 1)), 8))


def significant_per_class(logp, n_classes: int, m: int, fraction: float):
    """:func:`significant` within each class of log posteriors (n, S, K·R) → (n, K·m) flat s·K·R + k·R + r.

    With one selection over all classes, the coarse pass (a 15° grid on a
    low-resolution window) keeps one or two samples per image, and where two
    states look alike after a rotation these are often the wrong class's:
    the class is decided before the fine pass could tell the states apart.
    Keeping each class's own significant samples lets the fine pass (finer
    grid, full window) weigh the classes against each other (two
    conformations, SNR 0.5: 84 % → see docs/stages.md).
    """
    xp = array_module(logp)
    n, S, KR = logp.shape
    R = KR // n_classes
    idx, val, cnt = [], [], 0
    for k in range(n_classes):
        sub = xp.ascontiguousarray(logp[:, :, k * R:(k + 1) * R]).reshape(n, S * R)
        i, v, c = significant(sub, m, fraction, groups=(S, R))
        idx.append((i // R) * KR + k * R + i % R)
        val.append(v)
        cnt = cnt + c
    return xp.concatenate(idx, axis=1), xp.concatenate(val, axis=1), cnt
