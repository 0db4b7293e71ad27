"""spa.parallel: chunking, the fixed order of additions, bounded memory, in-process and on Dask."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from spa.parallel import lane_slices, make_chunks, map_reduce


class Expr:
    """A partial sum that records how it was added: '(a+b)' strings expose the association."""

    alive = 0
    most = 0
    lock = threading.Lock()

    def __init__(self, text):
        self.text = text
        with Expr.lock:
            Expr.alive += 1
            Expr.most = max(Expr.most, Expr.alive)

    def __del__(self):
        with Expr.lock:
            Expr.alive -= 1

    def __add__(self, other):
        return Expr(f"({self.text}+{other.text})")

    def __iadd__(self, other):
        self.text = f"({self.text}+{other.text})"
        return self

    def __reduce__(self):  # Dask may pickle partials; a copy counts as another live partial
        return (Expr, (self.text,))


def leaf(i):
    return Expr(str(i)), i * 10


def test_make_chunks_consecutive_and_aligned():
    chunks = make_chunks(10, 4)
    assert [c.tolist() for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    rows = np.array([7, 3, 9, 1, 5])
    assert [c.tolist() for c in make_chunks(rows, 2)] == [[7, 3], [9, 1], [5]]
    assert make_chunks(0, 4) == []


def test_lanes_cover_the_tasks_in_order():
    for n in range(0, 30):
        for lanes in (1, 2, 3, 4, 7):
            s = lane_slices(n, lanes)
            assert [t for r in s for t in r] == list(range(n))
            assert len(s) == min(n, lanes)


@pytest.mark.parametrize("n,lanes,expect", [
    (1, 4, "0"),
    (5, 1, "((((0+1)+2)+3)+4)"),
    (5, 2, "((0+1)+((2+3)+4))"),
    (8, 4, "((((0+1)+(2+3))+(4+5))+(6+7))"),
])
def test_fixed_association(n, lanes, expect):
    total, results = map_reduce(leaf, [(i,) for i in range(n)], lanes=lanes)
    assert total.text == expect
    assert results == [i * 10 for i in range(n)]


def test_groups_sum_separately_and_none_adds_nothing():
    def f(i):
        return (None if i == 3 else Expr(str(i))), i

    sums, results = map_reduce(f, [(i,) for i in range(6)], groups=[[0, 2, 4], [1, 3, 5]], lanes=1)
    assert [s.text for s in sums] == ["((0+2)+4)", "(1+5)"]
    assert results == list(range(6))


def test_in_process_memory_does_not_grow_with_the_tasks():
    """At most the running total, one lane's sum and the new partial are alive at once."""
    for n in (8, 200):
        Expr.alive = Expr.most = 0
        total, _ = map_reduce(leaf, [(i,) for i in range(n)], lanes=4)
        assert Expr.most <= 3, (n, Expr.most)
        del total


def test_broadcast_arguments_come_first():
    def f(scale, offset, i):
        return np.array([scale * i + offset], np.float64), None

    total, _ = map_reduce(f, [(i,) for i in range(5)], broadcast=(2.0, 1.0))
    assert total[0] == pytest.approx(sum(2.0 * i + 1.0 for i in range(5)))


def test_errors_propagate():
    def f(i):
        if i == 2:
            raise ValueError("bad chunk 2")
        return Expr(str(i)), None

    with pytest.raises(ValueError, match="bad chunk 2"):
        map_reduce(f, [(i,) for i in range(4)])


@pytest.fixture(scope="module")
def client():
    from spa.cluster import make_client

    c = make_client(workers=2, processes=False)
    yield c
    c.close()
    if getattr(c, "cluster", None) is not None:
        c.cluster.close()


def test_dask_same_association_and_results(client):
    for n, lanes in ((1, 4), (7, 1), (23, 4), (40, 3)):
        local, res_local = map_reduce(leaf, [(i,) for i in range(n)], lanes=lanes)
        remote, res_remote = map_reduce(leaf, [(i,) for i in range(n)], lanes=lanes, client=client, window=3)
        assert remote.text == local.text
        assert res_remote == res_local


def test_dask_groups_and_float_sums_bit_identical(client):
    rng = np.random.default_rng(0)
    values = [rng.normal(size=64) * 10.0 ** rng.integers(-4, 5) for _ in range(37)]

    def f(v):
        return v.copy(), float(v.sum())

    groups = [list(range(0, 37, 2)), list(range(1, 37, 2))]
    local, _ = map_reduce(f, [(v,) for v in values], groups=groups)
    remote, _ = map_reduce(f, [(v,) for v in values], groups=groups, client=client, window=2)
    for a, b in zip(local, remote):
        assert np.array_equal(a, b)


def test_dask_window_bounds_the_partials(client):
    """Threads share this process, so the partials alive on the workers are counted directly."""
    import time

    def slow(i):
        time.sleep(0.002 * (i % 3))
        return Expr(str(i)), None

    Expr.alive = Expr.most = 0
    total, _ = map_reduce(slow, [(i,) for i in range(120)], lanes=2, client=client, window=4)
    assert total.text.count("+") == 119
    # the window's partials (each also held a moment by its finished task's result tuple) + per lane:
    # its sum, a pending addition's result and its inputs — a constant, whatever the number of tasks
    assert Expr.most <= 2 * 4 + 2 * 3, Expr.most


def test_dask_progress_and_errors(client):
    seen = []
    map_reduce(leaf, [(i,) for i in range(6)], client=client, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (6, 6) and len(seen) == 6

    def f(i):
        if i == 3:
            raise RuntimeError("worker task failed")
        return Expr(str(i)), None

    with pytest.raises(RuntimeError, match="worker task failed"):
        map_reduce(f, [(i,) for i in range(6)], client=client)
