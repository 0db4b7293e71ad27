"""Run independent chunk tasks in-process or on a Dask cluster, and add their results.

Partial sums (backprojectors, weighted-sum models) are merged by a pairwise
tree in chunk order, so the result does not depend on how many workers ran
the tasks or in which order they finished: 1 worker and N workers give the
same floating-point sums.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Iterable, Sequence


def tree_reduce(items: Sequence[Any], combine: Callable[[Any, Any], Any] = operator.add):
    """Pairwise reduction in a fixed order: ((a+b)+(c+d))+…"""
    items = list(items)
    if not items:
        raise ValueError("nothing to reduce")
    while len(items) > 1:
        nxt = [combine(items[i], items[i + 1]) for i in range(0, len(items) - 1, 2)]
        if len(items) % 2:
            nxt.append(items[-1])
        items = nxt
    return items[0]


def map_reduce(
    func: Callable[..., Any],
    args: Iterable[tuple],
    client=None,
    combine: Callable[[Any, Any], Any] = operator.add,
    progress: Callable[[int, int], None] | None = None,
):
    """``tree_reduce(func(*a) for a in args)``, on ``client``'s workers when one is given.

    With a Dask client the partial results are combined on the workers by the
    same pairwise tree (no result travels to the client until the end).
    """
    args = list(args)
    if client is None:
        out = []
        for i, a in enumerate(args):
            out.append(func(*a))
            if progress:
                progress(i + 1, len(args))
        return tree_reduce(out, combine)
    futures = [client.submit(func, *a, pure=False) for a in args]
    while len(futures) > 1:
        nxt = [client.submit(combine, futures[i], futures[i + 1], pure=False) for i in range(0, len(futures) - 1, 2)]
        if len(futures) % 2:
            nxt.append(futures[-1])
        futures = nxt
    return futures[0].result()


def chunk_ranges(n: int, chunk: int) -> list[tuple[int, int]]:
    """[(start, stop), …] covering 0 … n in steps of ``chunk``."""
    chunk = max(1, int(chunk))
    return [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
