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
    best column maxima, so the search narrows to those m columns (S·m values).
    """
    xp = array_module(sub)
    s, g = groups
    if s * g != sub.shape[1] or g <= m:
        part = xp.argpartition(-sub, m - 1, axis=1)[:, :m]
        return part, xp.take_along_axis(sub, part, axis=1)
    cube = sub.reshape(sub.shape[0], s, g)
    col = xp.argpartition(-cube.max(axis=1), m - 1, axis=1)[:, :m]  # (n, m) best columns
    vals = xp.take_along_axis(cube, xp.broadcast_to(col[:, None, :], (sub.shape[0], s, m)), axis=2)
    vals = vals.reshape(sub.shape[0], s * m)
    part = xp.argpartition(-vals, m - 1, axis=1)[:, :m]
    shift = part // m
    column = xp.take_along_axis(col, part % m, axis=1)
    return shift * g + column, xp.take_along_axis(vals, part, axis=1)


def significant(flat, m: int, fraction: float, delta: float = 25.0, groups=None):
    """Per row of log posteriors: the best ≤ m samples holding ``fraction`` of the mass.

    Rows with at most m samples within ``delta`` nats of their maximum (a
    peaked posterior; the rest weigh < e⁻²⁵ each) list those samples directly;
    rows with more (a broad posterior) get their mass from one exp-and-sum over
    the row and their best m from an exact top-m search.  This runs once per
    GEMM output element, so it reads whole rows as few times as it can (maximum,
    threshold count, and the exp-sum for broad rows).  Returns (index (n, m)
    best first, valid (n, m), count (n,)).
    """
    xp = array_module(flat)
    be = backend_of(flat)
    n = flat.shape[0]
    mx = flat.max(axis=1)
    near = flat > (mx - delta)[:, None]
    cnt = xp.count_nonzero(near, axis=1)
    small = cnt <= m
    top_idx = xp.zeros((n, m), xp.int64)
    top_val = xp.full((n, m), -xp.inf, dtype=xp.float32)
    mass = xp.zeros(n, xp.float64)
    big = xp.nonzero(~small)[0]
    n_big = int(big.shape[0])
    if n_big < n:  # peaked rows: list their few samples
        if n_big:
            small_rows = xp.nonzero(small)[0]
            r_loc, c_s = xp.nonzero(near[small_rows])
            r_s = small_rows[r_loc]
        else:
            r_s, c_s = xp.nonzero(near)
        v_s = flat[r_s, c_s]
        be.scatter_add(mass, r_s, xp.exp(v_s - mx[r_s]).astype(xp.float64))
        cnt_small = xp.where(small, cnt, 0)
        starts = xp.cumsum(cnt_small) - cnt_small  # where each small row begins among the kept elements
        pos = xp.arange(r_s.shape[0]) - starts[r_s]
        top_idx[r_s, pos] = c_s
        top_val[r_s, pos] = v_s
    if n_big:  # broad rows: exp-sum over the whole row (float32 pairwise sums of terms ≤ 1)
        rows = flat if n_big == n else flat[big]
        mx_b = mx if n_big == n else mx[big]
        e = xp.subtract(rows, mx_b[:, None])
        xp.exp(e, out=e)
        mass[big] = e.sum(axis=1).astype(xp.float64)
        del e
        part, vals_big = _top_m(rows, m, groups or (1, flat.shape[1]))
        top_idx[big] = part
        top_val[big] = vals_big
    lse = mx + xp.log(mass).astype(xp.float32)
    order = xp.argsort(-top_val, axis=1)
    top_idx = xp.take_along_axis(top_idx, order, axis=1)
    top_val = xp.take_along_axis(top_val, order, axis=1)
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
        i, v, c = significant(sub, m, fraction, groups=(S, R))
        idx.append((i // R) * KR + k * R + i % R)
        val.append(v)
        cnt = cnt + c
    return xp.concatenate(idx, axis=1), xp.concatenate(val, axis=1), cnt
