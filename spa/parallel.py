"""Run chunk tasks in-process or on a Dask cluster and add their partial sums in bounded memory.

Every pass over the particles (an E-step, a back-projection, a statistics
pass) is a list of independent tasks, one per chunk of particles, each
returning ``(partial, result)``: a partial sum (weighted sums for the
M-step, a back-projector, ...) and a small per-chunk result (poses,
scores).  :func:`map_reduce` adds the partials as soon as they exist, so
memory does not grow with the number of chunks:

* the tasks of a group (e.g. one random half) are split into ``lanes``
  runs of consecutive tasks; each lane is a left fold in task order,
  ``((p₀ + p₁) + p₂) + …``, and the group's total a left fold over its
  lanes.  The association depends only on the number of tasks and lanes,
  never on the workers, so 1 and N workers give the same bits.
* in-process the lanes run one after another: at any time one running
  total, one lane sum and the partial being made are alive, whatever the
  number of particles (a pairwise tree holds O(log n) partials; at box 400
  and 300 000 particles that is 11 padded volumes of 6 GB each).
* on a Dask cluster at most ``window`` tasks are outstanding (submitted,
  and not yet added into their lane), the additions run on the workers,
  and only each group's total travels to the client.  Lanes are what the
  cluster adds in parallel: more lanes for more workers (the results then
  differ at the level of float rounding, and equal each other for any
  number of workers with the same lanes).

Faults on a cluster: a task that raises is run again, up to ``retries``
times (the chunk tasks and the additions alike), and a task whose worker
dies — running, or holding a finished partial or lane sum — is run again by
Dask from the task graph.  Neither can count a chunk twice: a task's
partial is a new object, every addition ``a + b`` makes a new sum and never
changes its inputs, and the client adds each task's partial once, into the
one addition that follows it in its lane; a task run again gives the same
bits.  (Bad input, e.g. an image with NaN pixels, fails each retry as fast
as the first try: images are checked as they are read.)
"""

from __future__ import annotations

import operator
from collections import deque
from typing import Any, Callable, Sequence

import numpy as np

#: lanes per group (fixed, so results do not depend on the number of workers).  One lane keeps the
#: fewest sums alive in-process (the total and the partial being made); a cluster of more than a
#: few tens of workers wants more (see docs/performance.md)
DEFAULT_LANES = 1

#: times a task that raised is run again on a cluster (a worker that dies is handled by Dask itself)
DEFAULT_RETRIES = 3


def make_chunks(rows, chunk_size: int) -> list[np.ndarray]:
    """Consecutive runs of at most ``chunk_size`` of ``rows`` (an int n, meaning 0 … n−1, or an array of
    row positions), the last one shorter: with rows in stack order, chunks start on multiples of
    ``chunk_size`` and so align with a Zarr stack chunked by the same size."""
    rows = np.arange(int(rows)) if np.ndim(rows) == 0 else np.asarray(rows, dtype=np.int64)
    chunk_size = max(1, int(chunk_size))
    return [rows[s:s + chunk_size] for s in range(0, len(rows), chunk_size)]


def lane_slices(n_tasks: int, lanes: int) -> list[range]:
    """Lane j holds tasks ⌊j·n/L⌋ … ⌊(j+1)·n/L⌋ − 1 (empty lanes dropped)."""
    lanes = max(1, int(lanes))
    bounds = [(j * n_tasks) // lanes for j in range(lanes + 1)]
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def map_reduce(
    func: Callable[..., tuple[Any, Any]],
    tasks: Sequence[tuple],
    *,
    broadcast: tuple = (),
    client=None,
    groups: Sequence[Sequence[int]] | None = None,
    lanes: int = DEFAULT_LANES,
    window: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    retries: int = DEFAULT_RETRIES,
):
    """``func(*broadcast, *task) -> (partial, result)`` for every task; the partials added per group.

    Returns ``(sums, results)``: ``results`` in task order; ``sums`` the total
    of every task's partial, or, with ``groups`` (lists of task positions,
    e.g. the chunks of each random half), a list with one total per group.
    Partials add with ``+`` (and ``+=`` in-process: the same bits); a partial
    of None adds nothing.  ``broadcast`` arguments are sent to each Dask worker
    once.  ``window``: tasks outstanding at a time on a cluster (default
    twice the workers, at least 4).  ``progress(done, total)`` after each task.
    ``retries``: on a cluster, times a task that raised is run again before
    its error is raised here.
    """
    grouped = groups is not None
    groups = [list(g) for g in groups] if grouped else [list(range(len(tasks)))]
    if client is None:
        sums, results = _in_process(func, tasks, broadcast, groups, lanes, progress)
    else:
        sums, results = _on_cluster(func, tasks, broadcast, groups, lanes, window, client, progress, retries)
    return (sums if grouped else sums[0]), results


def _add(total, partial, inplace: bool):
    if total is None:
        return partial
    if partial is None:
        return total
    return operator.iadd(total, partial) if inplace else operator.add(total, partial)


def _in_process(func, tasks, broadcast, groups, lanes, progress):
    results: list = [None] * len(tasks)
    sums, done = [], 0
    for group in groups:
        total = None
        for lane in lane_slices(len(group), lanes):
            acc = None
            for pos in lane:
                t = group[pos]
                partial, results[t] = func(*broadcast, *tasks[t])
                acc = _add(acc, partial, inplace=True)
                del partial
                done += 1
                if progress:
                    progress(done, len(tasks))
            total = _add(total, acc, inplace=True)
            del acc
        sums.append(total)
    return sums, results


def _on_cluster(func, tasks, broadcast, groups, lanes, window, client, progress, retries):
    """The same folds as :func:`_in_process`, as futures: partials are added into their lane in task order
    as they arrive (a partial that finished early waits, within the window, for its predecessors)."""
    from distributed import as_completed, wait

    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    window = max(4, 2 * n_workers) if window is None else max(1, int(window))
    shared = [client.scatter(b, broadcast=True, hash=False) for b in broadcast]
    # the lane of each task, the group of each lane; submission round-robin over the lanes
    lane_of, lane_group, lane_tasks = {}, [], []
    for g, group in enumerate(groups):
        for lane in lane_slices(len(group), lanes):
            lane_tasks.append([group[p] for p in lane])
            lane_group.append(g)
            for t in lane_tasks[-1]:
                lane_of[t] = len(lane_tasks) - 1
    longest = max((len(lt) for lt in lane_tasks), default=0)
    order = [lt[i] for i in range(longest) for lt in lane_tasks if i < len(lt)]
    next_pos = [0] * len(lane_tasks)
    lane_acc: list = [None] * len(lane_tasks)
    lane_adds = [deque() for _ in lane_tasks]
    ready: dict[int, Any] = {}
    result_futures: dict[int, Any] = {}
    key_task: dict[str, int] = {}
    outstanding = 0
    pending = as_completed()
    submit_at = 0

    def submit_next():
        nonlocal submit_at, outstanding
        t = order[submit_at]
        submit_at += 1
        fut = client.submit(func, *shared, *tasks[t], pure=False, retries=retries)
        key_task[fut.key] = t
        pending.add(fut)
        outstanding += 1

    while submit_at < len(order) and outstanding < window:
        submit_next()
    done = 0
    for fut in pending:
        t = key_task.pop(fut.key)
        if fut.status == "error":
            fut.result()  # raises the task's exception here
        ready[t] = client.submit(operator.getitem, fut, 0, pure=False, retries=retries)
        result_futures[t] = client.submit(operator.getitem, fut, 1, pure=False, retries=retries)
        del fut
        done += 1
        if progress:
            progress(done, len(tasks))
        lane = lane_of[t]
        # fold every partial of this lane that is next in line
        while next_pos[lane] < len(lane_tasks[lane]) and lane_tasks[lane][next_pos[lane]] in ready:
            part = ready.pop(lane_tasks[lane][next_pos[lane]])
            next_pos[lane] += 1
            lane_acc[lane] = part if lane_acc[lane] is None else \
                client.submit(_add, lane_acc[lane], part, False, pure=False, retries=retries)
            lane_adds[lane].append(lane_acc[lane])
            outstanding -= 1
        # keep each lane's chain of pending additions short (bounded memory on the workers), and hold no
        # finished intermediate sum: only the lane's newest sum is needed further
        for chain in lane_adds:
            while len(chain) > 2:
                wait(chain.popleft())
            while len(chain) > 1 and chain[1].done():
                chain.popleft()
        while submit_at < len(order) and outstanding < window:
            submit_next()
    sums = []
    for g in range(len(groups)):
        total = None
        for gl, acc in zip(lane_group, lane_acc):
            if gl == g:
                total = acc if total is None else client.submit(_add, total, acc, False, pure=False,
                                                                retries=retries)
        sums.append(None if total is None else total.result())
    keys = sorted(result_futures)
    gathered = client.gather([result_futures[t] for t in keys])
    results: list = [None] * len(tasks)
    for t, r in zip(keys, gathered):
        results[t] = r
    return sums, results
