"""Machine reference rates measured in the same run, so ratios survive a noisy machine."""

from __future__ import annotations

import time

import numpy as np


def best_time(fn, repeat: int = 5) -> float:
    """Fastest of ``repeat`` calls (seconds): the least disturbed measurement."""
    fn()  # warm-up (plans, caches)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def sgemm_gflops(n: int = 1024, backend: str | None = None) -> float:
    """Single-precision matrix-multiply rate (GFLOP/s) of the backend the stages use (default: as
    $SPA_BACKEND; on a GPU the device's, synchronised)."""
    from spa.backend import get_backend

    be = get_backend(backend)
    if be.name != "numpy":
        n = max(n, 4096)
    a = be.xp.ones((n, n), dtype=be.xp.float32)
    b = be.xp.ones((n, n), dtype=be.xp.float32)

    def multiply():
        a @ b
        be.synchronize()

    return 2 * n**3 / best_time(multiply) / 1e9


def fft2_rate(box: int, batch: int = 256) -> float:
    """Batched 2D real FFTs per second at this box size (scipy.fft)."""
    import scipy.fft as sfft

    a = np.random.default_rng(0).normal(size=(batch, box, box)).astype(np.float32)
    t = best_time(lambda: sfft.rfftn(a, axes=(-2, -1)))
    return batch / t
