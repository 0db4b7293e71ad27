"""E-step throughput against the machine's own float32 matrix-multiply rate (measured in the same run).

For each configuration (K classes, box B, ψ step, offset range, Fourier window)
it reports: images/s of the whole E-step of a chunk (both passes plus the
M-step sums), the GFLOP/s of the pass-1 GEMMs inside it, and that rate as a
fraction of (a) np.matmul on the *same shapes* timed alone and (b) a large
square sgemm (the machine's peak).  Run:  python benchmarks/bench_estep.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from spa.backend import get_backend
from spa.class2d.classify import coarse_shells_for
from spa.class2d.synthetic import make_particles, make_views
from spa.ctf import ctf_2d
from spa.em.estep import ActivePixels, coarse_pass, prepare_chunk
from spa.em.expectation import expectation
from spa.em.inplane import InplaneReferences, InplaneSampling
from spa.em.noise import initial_sigma2, group_power


def _timeit(f, be, repeat=3):
    """Best wall time of ``repeat`` calls, waiting for queued GPU work before and after each."""
    best = np.inf
    for _ in range(repeat):
        be.synchronize()
        t = time.perf_counter()
        f()
        be.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def peak_sgemm(be, n=2048):
    xp = be.xp
    a = xp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype=xp.float32)
    b = a.T.copy()
    a @ b
    t = _timeit(lambda: a @ b, be)
    return 2 * n**3 / t / 1e9


def setup(k, box, psi_step, offset_range, be, n=512, window_frac=0.25):
    """The benchmark's chunk: (data, refs, sampling, log class prior, coarse shells, active pixels)."""
    xp = be.xp
    px = 2.0
    diam = 0.8 * box * px
    rng = np.random.default_rng(1)
    views = make_views(k, box, px, diam, rng)
    images, table = make_particles(views, n, px, snr=0.1, max_shift_px=offset_range / 2, rng=2)
    ctf = ctf_2d(box, px, table.rlnDefocusU.to_numpy(), table.rlnDefocusV.to_numpy(),
                 table.rlnDefocusAngle.to_numpy(), 300, 2.7, 0.1)
    samp = InplaneSampling(psi_step, offset_range, 1.0)
    fine_shells = max(8, int(window_frac * box))
    radius = diam / 2 / px
    coarse = min(fine_shells, coarse_shells_for(psi_step, radius, box))
    group = np.zeros(n, int)
    from spa.fourier import rfft_centered, shell_sum, shells_2d

    f = rfft_centered(images)
    pw = shell_sum((f.real**2 + f.imag**2).astype(np.float64), shells_2d(box), box // 2 + 1)
    s2 = initial_sigma2(group_power(pw, group, 1), [n], box)
    act = ActivePixels.make(box, fine_shells, xp)
    refs = InplaneReferences(xp.asarray(views))
    data = prepare_chunk(xp.asarray(images), xp.asarray(ctf), group, np.zeros((n, 2)), s2, act, radius)
    lp = np.log(np.full(k, 1.0 / k))
    return data, refs, samp, lp, coarse, act


def bench(k, box, psi_step, offset_range, be, n=512, window_frac=0.25, max_sig=64):
    xp = be.xp
    data, refs, samp, lp, coarse, act = setup(k, box, psi_step, offset_range, be, n, window_frac)

    def full():
        post, _ = expectation(data, refs, samp, lp, offset_range / 2, coarse, max_significant=max_sig,
                              sums=refs.new_sums(), resid=xp.zeros((1, act.size)))
        return post

    def pass1():
        coarse_pass(data, refs, samp, lp, offset_range / 2, coarse, max_significant=max_sig)

    full()
    t_full = _timeit(full, be, 2)
    t_p1 = _timeit(pass1, be, 2)
    fc = act.count(coarse)
    r, s = len(samp.coarse_rotations), len(samp.coarse_translations)
    flops = 2.0 * n * s * 2 * fc * k * r + 2.0 * n * fc * k * r  # cross-term GEMM + norm GEMM
    # np.matmul of the same shapes, alone
    a = xp.asarray(np.random.default_rng(3).standard_normal((n * s, 2 * fc)), dtype=xp.float32)
    b = xp.asarray(np.random.default_rng(4).standard_normal((2 * fc, k * r)), dtype=xp.float32)
    nb = max(1, (1 << 24) // max(1, s * max(k * r, 2 * fc)))  # the E-step's image batch
    rows = nb * s

    def gemm_same():
        for i in range(0, n * s, rows):
            a[i:i + rows] @ b

    t_gemm = _timeit(gemm_same, be, 2)
    post = full()
    return dict(K=k, box=box, psi=psi_step, R=r, S=s, F_coarse=fc, F_fine=act.size, n=n,
                img_s=n / t_full, pass1_s=t_p1, full_s=t_full, gflops_pass1=flops / t_p1 / 1e9,
                gflops_gemm_alone=2.0 * n * s * 2 * fc * k * r / t_gemm / 1e9,
                mean_sig=float(post.n_significant.mean()))


#: functions timed one by one with --profile (inclusive, synchronised before and after each call)
DETAIL = [("spa.em.estep", "significant"), ("spa.em.significance", "_top_m"), ("spa.em.cuda_kernels", "add_priors"),
          ("spa.em.cuda_kernels", "topk_rows"),
          ("spa.em.cuda_kernels", "row_exp_sums"), ("spa.em.estep", "project_rows"), ("spa.em.estep", "unique_inverse"),
          ("spa.em.estep", "phase_factors"), ("spa.em.estep", "sum_rows_by_index"), ("spa.em.estep", "scatter_add"),
          ("spa.em.estep", "insert_rows")]


def _timed(be, targets):
    """Replace each (module, function) by a synchronised timer; returns (seconds per name, undo list)."""
    import importlib

    spent, undo = {}, []
    for mod_name, name in targets:
        mod = importlib.import_module(mod_name)
        f = getattr(mod, name, None)
        if f is None:
            continue

        def wrapped(*args, _f=f, _key=f"{mod_name.rsplit('.', 1)[-1]}.{name}", **kwargs):
            be.synchronize()
            t0 = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                be.synchronize()
                spent[_key] = spent.get(_key, 0.0) + time.perf_counter() - t0

        setattr(mod, name, wrapped)
        undo.append((mod, name, f))
    return spent, undo


def profile(k, box, psi_step, offset_range, be, n=512, max_sig=64, repeat=3):
    """Seconds per phase of one E-step (synchronised; the best of ``repeat``): where the time goes; then
    one more E-step with the functions of DETAIL timed one by one."""
    from spa.em.estep import fine_candidates
    from spa.em.finepass import FinePass

    xp = be.xp
    data, refs, samp, lp, coarse, act = setup(k, box, psi_step, offset_range, be, n)
    best = {}
    for round_ in range(repeat + 2):  # round 0 compiles kernels and fills caches: not counted
        times, t = {}, time.perf_counter()

        def lap(name):
            nonlocal t
            be.synchronize()
            now = time.perf_counter()
            times[name] = now - t
            t = now

        if round_ == repeat + 1:
            spent, undo = _timed(be, DETAIL)
        be.synchronize()
        t = time.perf_counter()
        sample, valid, n_sig = coarse_pass(data, refs, samp, lp, offset_range / 2, coarse, max_significant=max_sig)
        lap("pass 1 (GEMM, priors, selection)")
        img, cls, rot, shift, dense = fine_candidates(sample, valid, refs, samp)
        fine = FinePass(data, refs, samp, img, cls, rot, shift)
        lap("pass 2 set-up (candidates, projections)")
        weight, _ = fine.score(lp, offset_range / 2, dense)
        lap("pass 2 scores")
        sums = refs.new_sums()
        fine.accumulate(weight, refs, sums, xp.zeros((1, act.size)))
        lap("M-step sums and insertion")
        if 0 < round_ <= repeat:
            for key, v in times.items():
                best[key] = min(best.get(key, np.inf), v)
    for mod, name, f in undo:
        setattr(mod, name, f)
    total = sum(best.values())
    print(f"profile K={k} box={box} n={n} candidates={int(img.shape[0])} rows={int(fine.A.shape[0])}:")
    for key, v in best.items():
        print(f"  {key:<42} {1e3 * v:8.1f} ms  {100 * v / total:5.1f} %")
    print("  inside, each call timed alone (inclusive):")
    for key, v in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"    {key:<40} {1e3 * v:8.1f} ms")


def _parse_configs(text):
    """"K:box[:psi:offset],..." → [(K, box, psi, offset)] (default ψ 6°, offsets ±5 px)."""
    out = []
    for c in text.split(","):
        v = [float(x) for x in c.split(":")] + [6.0, 5.0][len(c.split(":")) - 2:]
        out.append((int(v[0]), int(v[1]), v[2], v[3]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--backend", default="numpy", help="numpy or cupy (arrays on the GPU; timings synchronised)")
    ap.add_argument("--n", type=int, default=None, help="images per chunk (default 512, 256 with --quick)")
    ap.add_argument("--configs", default=None,
                    help="K:box[:psi:offset],... instead of the default list (psi 6°, offsets ±5 px)")
    ap.add_argument("--profile", action="store_true", help="time each phase of the E-step instead")
    a = ap.parse_args()
    be = get_backend(a.backend)
    if a.profile:
        for k, box, psi, off in _parse_configs(a.configs or "50:128"):
            profile(k, box, psi, off, be, n=a.n or 512)
        return
    peak_n = 2048 if be.name == "numpy" else 8192
    peak = peak_sgemm(be, peak_n)
    print(f"backend {be.name}; float32 matmul peak ({peak_n}² square): {peak:.1f} GFLOP/s")
    configs = [(10, 64, 6.0, 5.0), (50, 64, 6.0, 5.0), (10, 128, 6.0, 5.0), (10, 64, 12.0, 3.0)]
    if not a.quick:
        configs += [(50, 128, 6.0, 5.0), (100, 64, 6.0, 5.0), (100, 128, 6.0, 5.0)]
    if a.configs:
        configs = _parse_configs(a.configs)
    # %peak: pass 1's GEMM rate vs the square sgemm; E-step %peak: the same GEMM work over the time of
    # the whole E-step (both passes and the M-step sums): the throughput the issue's target is about
    head = (f"{'K':>4} {'box':>4} {'psi':>5} {'R':>4} {'S':>4} {'Fc':>5} {'Ff':>5} {'img/s':>8} {'pass1 GF/s':>10} "
            f"{'same-shape GF/s':>15} {'%same':>6} {'%peak':>6} {'pass1/full':>10} {'E-step %peak':>12} "
            f"{'<nsig>':>7}")
    print(head)
    for k, box, psi, off in configs:
        r = bench(k, box, psi, off, be, n=a.n or (256 if a.quick else 512))
        print(f"{r['K']:>4} {r['box']:>4} {r['psi']:>5.1f} {r['R']:>4} {r['S']:>4} {r['F_coarse']:>5} {r['F_fine']:>5} "
              f"{r['img_s']:>8.1f} {r['gflops_pass1']:>10.1f} {r['gflops_gemm_alone']:>15.1f} "
              f"{100 * r['gflops_pass1'] / r['gflops_gemm_alone']:>5.0f}% {100 * r['gflops_pass1'] / peak:>5.0f}% "
              f"{r['pass1_s'] / r['full_s']:>10.2f} "
              f"{100 * r['gflops_pass1'] * r['pass1_s'] / r['full_s'] / peak:>11.0f}% {r['mean_sig']:>7.1f}")


if __name__ == "__main__":
    main()
