"""Which coarse samples go on to the fine pass: per image, the best ones holding a fraction of the
posterior mass (RELION's significant samples), over all classes or within each class.

Log posteriors arrive as rows (one per image) of S shift blocks of G samples
each; the selection reads each row as few times as it can, since it runs once
per element of the coarse pass's GEMM output.
"""

from __future__ import annotations

from spa.backend import array_module, backend_of


def _top_m(sub, m: int, groups):
    """Indices and values of the m largest entries of each row, exactly, without sorting whole rows.

    A row is S blocks of G samples (shift-major).  Every one of the m best
    samples belongs to a column whose maximum over the S blocks is among the m
    best column maxima, so the search narrows to those m columns (S·m values,
    gathered in memory order).
    """
    xp = array_module(sub)
    n, width = sub.shape
    s, g = groups
    if s * g != width or g <= m:
        part = xp.argpartition(sub, width - m, axis=1)[:, width - m:]
        return part, xp.take_along_axis(sub, part, axis=1)
    cube = sub.reshape(n, s, g)
    col = xp.sort(xp.argpartition(cube.max(axis=1), g - m, axis=1)[:, g - m:], axis=1)  # (n, m) best columns
    flat_index = (xp.arange(n)[:, None, None] * width + xp.arange(s)[None, :, None] * g) + col[:, None, :]
    vals = xp.take(sub.reshape(-1), flat_index).reshape(n, s * m)
    part = xp.argpartition(vals, s * m - m, axis=1)[:, s * m - m:]
    shift = part // m
    column = xp.take_along_axis(col, part % m, axis=1)
    return shift * g + column, xp.take_along_axis(vals, part, axis=1)


def significant(flat, m: int, fraction: float, delta: float = 25.0, groups=None, overwrite: bool = False):
    """Per row of log posteriors: the best ≤ m samples holding ``fraction`` of the mass.

    One exact top-(m+1) search per row (:func:`_top_m`) gives the best m and
    tells a peaked row (at most m samples within ``delta`` nats of its
    maximum; the rest weigh < e⁻²⁵ each, so its mass is the sum over its best
    m) from a broad one, whose mass needs one exp-and-sum over the whole row.
    This runs once per GEMM output element, so it reads whole rows as few times
    as it can: the top-m search reads them once, the exp-sum of broad rows
    twice more.  ``overwrite``: ``flat`` may be used as scratch (no copy of
    the broad rows).  Returns (index (n, m) best first, valid (n, m), count (n,)).
    """
    xp = array_module(flat)
    n, width = flat.shape
    m = int(min(m, width))
    idx, val = _top_m(flat, min(m + 1, width), groups or (1, width))
    order = xp.argsort(-val, axis=1)
    idx = xp.take_along_axis(idx, order, axis=1)
    val = xp.take_along_axis(val, order, axis=1)
    mx = val[:, 0]
    near = val > (mx - delta)[:, None]
    cnt = xp.count_nonzero(near, axis=1)  # samples within delta of the maximum, up to m + 1
    top_idx, top_val = idx[:, :m], val[:, :m]
    mass = xp.where(near[:, :m], xp.exp(top_val - mx[:, None]), 0).sum(axis=1).astype(xp.float64)
    big = xp.nonzero(cnt > m)[0]
    n_big = int(big.shape[0])
    if n_big:  # broad rows: exp-sum over the whole row (float32 pairwise sums of terms ≤ 1)
        if n_big == n or (overwrite and 4 * n_big > n):
            e = flat if overwrite else xp.empty_like(flat)
            xp.subtract(flat, mx[:, None], out=e)
            xp.exp(e, out=e)
            row_sums = e.sum(axis=1).astype(xp.float64)
            mass[big] = row_sums[big]
        else:
            e = flat[big]
            e -= mx[big][:, None]
            xp.exp(e, out=e)
            mass[big] = e.sum(axis=1).astype(xp.float64)
        del e
    lse = mx + xp.log(mass).astype(xp.float32)
    w = xp.exp(top_val - lse[:, None])
    cum = xp.cumsum(w, axis=1)
    k_sig = xp.minimum(xp.minimum((cum < fraction).sum(axis=1) + 1, m), xp.minimum(cnt, m))
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
        i, v, c = significant(sub, m, fraction, groups=(S, R), overwrite=True)
        idx.append((i // R) * KR + k * R + i % R)
        val.append(v)
        cnt = cnt + c
    return xp.concatenate(idx, axis=1), xp.concatenate(val, axis=1), cnt
