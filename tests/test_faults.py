"""Faults on a Dask cluster of worker processes: a worker killed during a pass, a task that raises once.

The pass must finish with the same sums, bit for bit, as an undisturbed one: Dask runs again the
tasks the dead worker was running and recomputes, from the task graph, the partials and lane sums
it held; a task that raised is retried (spa.parallel.DEFAULT_RETRIES).  Each task appends its
number to a file when it runs, so the test also sees that the fault did make work run twice.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import cloudpickle
import numpy as np
import pytest

from spa.parallel import map_reduce

# the workers are other processes: send this module's task functions by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])

N_TASKS = 24


def slow_partial(log_path, seconds, i):
    """A task of a pass: a partial sum that depends only on ``i``, after ``seconds`` of 'work'."""
    with open(log_path, "a") as fh:
        fh.write(f"{i}\n")
    time.sleep(seconds)
    return np.random.default_rng(i).normal(size=2048) * 10.0 ** (i % 7 - 3), i * i


def flaky_partial(log_path, i):
    """Raises OSError the first time task 5 runs (a transient fault), then succeeds."""
    with open(log_path, "a") as fh:
        fh.write(f"{i}\n")
    if i == 5 and open(log_path).read().split().count("5") == 1:
        raise OSError("transient read error")
    return np.random.default_rng(i).normal(size=256), i


def runs(log_path) -> list[int]:
    return [int(x) for x in open(log_path).read().split()]


def test_an_input_error_travels_between_processes():
    """A SpaInputError survives a pickle round trip (raised in another process, it is pickled on its way
    back; Dask copes with exceptions that do not, plain pickle — a process pool — does not)."""
    import pickle

    from spa.errors import SpaInputError

    err = pickle.loads(pickle.dumps(SpaInputError("/data/particles.mrcs", "image 7 has NaN/Inf pixels")))
    assert isinstance(err, SpaInputError) and err.path == "/data/particles.mrcs"
    assert str(err) == "/data/particles.mrcs: image 7 has NaN/Inf pixels"


GROUPS = [list(range(0, N_TASKS, 2)), list(range(1, N_TASKS, 2))]


@pytest.fixture(scope="module")
def cluster_client():
    """Two single-threaded worker processes, as ``spa --workers 2`` starts."""
    from spa.cluster import close_client, make_client

    client = make_client(workers=2)
    yield client
    close_client(client)


def test_a_worker_killed_during_a_pass_changes_nothing(cluster_client, tmp_path):
    client = cluster_client
    tasks = [(i,) for i in range(N_TASKS)]
    undisturbed_log = tmp_path / "undisturbed.txt"
    undisturbed, res0 = map_reduce(slow_partial, tasks, broadcast=(str(undisturbed_log), 0.15), client=client,
                                   groups=GROUPS, lanes=2)
    assert sorted(runs(undisturbed_log)) == list(range(N_TASKS))
    in_process, _ = map_reduce(slow_partial, tasks, broadcast=(str(tmp_path / "local.txt"), 0.0),
                               groups=GROUPS, lanes=2)

    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    killed = []
    log = tmp_path / "killed.txt"

    def kill_midway(done, total):
        if done == N_TASKS // 3 and not killed:  # a third done: the victim holds partials and lane sums
            os.kill(victim, signal.SIGKILL)
            killed.append(runs(log))  # the tasks started so far

    disturbed, res1 = map_reduce(slow_partial, tasks, broadcast=(str(log), 0.15), client=client, groups=GROUPS,
                                 lanes=2, progress=kill_midway)
    assert killed
    ran = runs(log)
    assert sorted(set(ran)) == list(range(N_TASKS))
    started = killed[0]
    again = [i for i in ran[len(started):] if i in started]
    # at most one task was running on the victim: the others run again had finished, and what they
    # made (a partial, or a lane sum they were added into) was lost with it and recomputed
    assert len(again) >= 2, (started, ran)
    assert res1 == res0 == [i * i for i in range(N_TASKS)]
    for a, b, c in zip(disturbed, undisturbed, in_process):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker


def test_a_task_that_raises_once_is_retried(cluster_client, tmp_path):
    tasks = [(i,) for i in range(12)]
    log = tmp_path / "flaky.txt"
    total, results = map_reduce(flaky_partial, tasks, broadcast=(str(log),), client=cluster_client, lanes=2)
    assert runs(log).count(5) == 2
    reference = None
    for lane in (range(0, 6), range(6, 12)):  # two lanes of six, as map_reduce adds them
        acc = None
        for i in lane:
            p = np.random.default_rng(i).normal(size=256)
            acc = p if acc is None else acc + p
        reference = acc if reference is None else reference + acc
    assert np.array_equal(total, reference)
    assert results == list(range(12))
    # with retries=0 the error reaches the caller
    with pytest.raises(OSError, match="transient"):
        map_reduce(flaky_partial, tasks, broadcast=(str(tmp_path / "again.txt"),), client=cluster_client,
                   retries=0)


class DyingImages:
    """An in-memory image source whose reads are logged, and whose ``die_at``-th read kills the worker
    process doing it (SIGKILL, once: a marker file says it happened)."""

    def __init__(self, images, pixel_size, log_path, die_at=None):
        from spa.em.engine import ArrayImages

        self.inner = ArrayImages(images, pixel_size)
        self.box, self.pixel_size, self.images = self.inner.box, self.inner.pixel_size, self.inner.images
        self.log_path, self.die_at = str(log_path), die_at

    def __len__(self):
        return len(self.inner)

    def read(self, indices):
        with open(self.log_path, "a") as fh:
            fh.write(f"{int(indices[0])}\n")
        time.sleep(0.05)
        if self.die_at is not None and len(runs(self.log_path)) >= self.die_at:
            try:
                os.close(os.open(self.log_path + ".killed", os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.read(indices)


def test_a_worker_killed_during_an_estep_gives_the_same_iteration(cluster_client, tmp_path):
    """A 2D-classification iteration on two worker processes, one of which dies in the middle of the
    E-step: the class averages, model and poses equal those of an undisturbed run, bit for bit."""
    from spa.class2d.classify import Class2DOptions, run_class2d
    from spa.class2d.synthetic import make_particles, make_views

    box, px, n, chunk = 32, 4.0, 192, 16
    images, table = make_particles(make_views(2, box, px, 90, 1), n, px, snr=0.5, max_shift_px=1.0, rng=2)
    opts = Class2DOptions(n_classes=2, n_iter=1, particle_diameter=100, offset_range=2, seed=3, noise_decoys=0,
                          chunk_size=chunk, reduction_lanes=2)

    def run(name, die_at=None):
        source = DyingImages(images, px, tmp_path / f"{name}.txt", die_at)
        model, refs, out = run_class2d(table, source, opts, tmp_path / name, client=cluster_client, log=None)
        return model, np.asarray(refs.images), out, runs(source.log_path)

    m0, refs0, table0, reads0 = run("undisturbed")
    passes = n // chunk  # reads per pass over the particles: the initial averages, then the E-step
    assert len(reads0) == 2 * passes
    m1, refs1, table1, reads1 = run("killed", die_at=passes + passes // 2)  # half-way through the E-step
    assert (tmp_path / "killed.txt.killed").exists()
    assert len(reads1) > 2 * passes  # the dead worker's chunks were read again
    assert np.array_equal(refs1, refs0)
    for name in ("pdf_class", "sigma2_noise", "tau2", "data_vs_prior"):
        assert np.array_equal(getattr(m1, name), getattr(m0, name)), name
    assert m1.loglike == m0.loglike
    cols = ["rlnClassNumber", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnMaxValueProbDistribution"]
    assert table1[cols].equals(table0[cols])
    cluster_client.wait_for_workers(2, timeout=60)
