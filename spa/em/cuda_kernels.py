"""CUDA kernels (CuPy ``RawModule``) for the slice interpolation of every E-step: the loops of
:mod:`spa.em.fused` on the GPU.

Four kernels, one thread per (row, pixel) point, in grid-stride loops:

* ``project3d`` / ``insert3d``: the central slice pad·Aᵀ(jx, jy, 0) of a padded 3D half grid and its
  transpose (trilinear, the rule of :func:`spa.em.projector.trilinear_corners`);
* ``project2d`` / ``insert2d``: a class image rotated in-plane by ψ, pad·Aᵀ(jx, jy) with
  A = [[c, s], [−s, c]], and its transpose (bilinear, the rule of :func:`spa.em.inplane.bilinear_setup`).

Both rules: Friedel reflection for x < 0 (the value is conjugated), FFT-order wrap in y (and z), x
clamped to the last stored column, corners and their weights formed in the same order and in float32
as the NumPy path forms them.  The source is compiled with ``--fmad=false``, so no product is fused
into an add and a projection is the NumPy path's to float32 rounding (bit-identical where the inputs
are: the rotations and the cos/sin of ψ are computed on the host by NumPy for that reason).  Every row
carries its class, so all classes of a batch are one launch (2D classification inserts K = 50 classes
per chunk: one launch instead of 50 sorts).

**Deterministic insertion.**  Float atomic adds land in a different order on every run, so the
rounding, and with it the map, would change from run to run (the same-seed tests failed with them).
Each addend is instead rounded to a 64-bit integer in fixed point and added with integer atomics
(exact and associative, so any order gives the same bits), into a scratch accumulator; one finishing
pass converts the sums and adds them to the caller's grids.  The scale is a power of two chosen on the
device from the largest |value| (and |weight|) of the call and a bound on the addends one voxel can
receive (:func:`fixed_point_bits`), so no sum can overflow; an addend is resolved to 2⁻ᵇ of the
largest (b ≥ 30 for any realistic call, finer than the float32 values themselves).

Imported only when the arrays are CuPy arrays; CuPy comes through :mod:`spa.backend`.  ``SPA_CUDA_KERNELS=0``
turns the kernels off (the CuPy array path of the projector is then used, as under the CuPy emulator
``tests/fakegpu``, which has no ``RawModule``).
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from spa.backend import array_module, backend_of, cupy_available, get_backend

SOURCE = r"""
// Conventions: complex arrays are interleaved float (re, im); grids are flat half grids [z][y][x]
// (3D) or [y][x] (2D) with x in 0 .. P/2 and y, z in FFT order; several classes are consecutive grids.

__device__ __forceinline__ bool trilinear(const float* a, float jxf, float jyf, int padded,
                                          long long* idx, float* w)
{
    // a: one rotation matrix (row-major 3×3), already multiplied by the padding factor
    const int half = padded / 2 + 1;
    float qx = a[0] * jxf + a[3] * jyf;
    float qy = a[1] * jxf + a[4] * jyf;
    float qz = a[2] * jxf + a[5] * jyf;
    const bool conj = qx < 0.0f;
    const float sign = 1.0f - 2.0f * (conj ? 1.0f : 0.0f);
    qx = fabsf(qx);
    qy = qy * sign;
    qz = qz * sign;
    const float bx = floorf(qx), by = floorf(qy), bz = floorf(qz);
    const float fx = qx - bx, fy = qy - by, fz = qz - bz;
    int x0 = (int)bx;
    if (x0 > half - 1) x0 = half - 1;
    int x1 = x0 + 1;
    if (x1 > half - 1) x1 = half - 1;
    int y0 = (int)by, z0 = (int)bz;
    if (y0 < 0) y0 += padded;
    if (z0 < 0) z0 += padded;
    int y1 = y0 + 1, z1 = z0 + 1;
    if (y1 > padded - 1) y1 -= padded;
    if (z1 > padded - 1) z1 -= padded;
    const long long plane = (long long)padded * half;
    const long long rz[2] = {z0 * plane, z1 * plane};
    const long long ry[2] = {(long long)y0 * half, (long long)y1 * half};
    const float wz[2] = {1.0f - fz, fz};
    const float wy[2] = {1.0f - fy, fy};
    const float wx[2] = {1.0f - fx, fx};
    const int xs[2] = {x0, x1};
#pragma unroll
    for (int a2 = 0; a2 < 2; ++a2) {
#pragma unroll
        for (int b = 0; b < 2; ++b) {
            const long long row = rz[a2] + ry[b];
            const float wzy = wz[a2] * wy[b];
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                idx[4 * a2 + 2 * b + c] = row + xs[c];
                w[4 * a2 + 2 * b + c] = wzy * wx[c];
            }
        }
    }
    return conj;
}

__device__ __forceinline__ bool bilinear(float c, float s, float jxf, float jyf, float pad, int padded,
                                         long long* idx, float* w)
{
    const long long half = padded / 2 + 1;
    float qx = pad * (c * jxf - s * jyf);
    float qy = pad * (s * jxf + c * jyf);
    const bool conj = qx < 0.0f;
    if (conj) {
        qx = -qx;
        qy = -qy;
    }
    const float bx = floorf(qx), by = floorf(qy);
    const float fx = qx - bx, fy = qy - by;
    long long x0 = (long long)bx;
    if (x0 > half - 1) x0 = half - 1;
    long long x1 = x0 + 1;
    if (x1 > half - 1) x1 = half - 1;
    const long long iy = (long long)by;
    const long long y0 = ((iy % padded) + padded) % padded;
    const long long y1 = (((iy + 1) % padded) + padded) % padded;
    idx[0] = y0 * half + x0;
    idx[1] = y0 * half + x1;
    idx[2] = y1 * half + x0;
    idx[3] = y1 * half + x1;
    const float gx = 1.0f - fx, gy = 1.0f - fy;
    w[0] = gy * gx;
    w[1] = gy * fx;
    w[2] = fy * gx;
    w[3] = fy * fx;
    return conj;
}

__device__ __forceinline__ double fixed_scale(float largest, int bits)
{
    // 2^(bits - e) with largest < 2^e: every addend (|v·w| ≤ largest) becomes an integer < 2^bits
    if (!(largest > 0.0f)) return 1.0;
    int e;
    frexp((double)largest, &e);
    return ldexp(1.0, bits - e);
}

__device__ __forceinline__ void add_fixed(unsigned long long* acc, float addend, double scale)
{
    // integer adds are exact and associative: the sum does not depend on the atomics' order
    const long long q = __double2ll_rn((double)addend * scale);
    if (q != 0) atomicAdd(acc, (unsigned long long)q);
}

#define POINTS_LOOP(total) \
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < (total); \
         t += (long long)blockDim.x * gridDim.x)

extern "C" __global__ void project3d(const float* __restrict__ grids, long long grid_size,
                                     const int* __restrict__ cls, const float* __restrict__ rot,
                                     const float* __restrict__ jx, const float* __restrict__ jy,
                                     int n_rows, int n_pix, int padded, float* __restrict__ out)
{
    POINTS_LOOP((long long)n_rows * n_pix) {
        const int r = (int)(t / n_pix);
        const int f = (int)(t - (long long)r * n_pix);
        long long idx[8];
        float w[8];
        const bool conj = trilinear(rot + 9LL * r, jx[f], jy[f], padded, idx, w);
        const float* g = grids + 2LL * grid_size * cls[r];
        float re = g[2 * idx[0]] * w[0];
        float im = g[2 * idx[0] + 1] * w[0];
#pragma unroll
        for (int c = 1; c < 8; ++c) {
            re += g[2 * idx[c]] * w[c];
            im += g[2 * idx[c] + 1] * w[c];
        }
        out[2 * t] = re;
        out[2 * t + 1] = conj ? -im : im;
    }
}

extern "C" __global__ void insert3d(const float* __restrict__ values, const float* __restrict__ weights,
                                    const int* __restrict__ cls, const float* __restrict__ rot,
                                    const float* __restrict__ jx, const float* __restrict__ jy,
                                    int n_rows, int n_pix, int padded, long long grid_size,
                                    long long acc_plane, const float* __restrict__ largest, int bits,
                                    unsigned long long* __restrict__ acc)
{
    const double sv = fixed_scale(largest[0], bits), sw = fixed_scale(largest[1], bits);
    POINTS_LOOP((long long)n_rows * n_pix) {
        const int r = (int)(t / n_pix);
        const int f = (int)(t - (long long)r * n_pix);
        long long idx[8];
        float w[8];
        const bool conj = trilinear(rot + 9LL * r, jx[f], jy[f], padded, idx, w);
        const float vr = values[2 * t];
        const float vi = conj ? -values[2 * t + 1] : values[2 * t + 1];
        const float wt = weights[t];
        const long long base = grid_size * cls[r];
#pragma unroll
        for (int c = 0; c < 8; ++c) {
            const long long i = base + idx[c];
            add_fixed(acc + i, vr * w[c], sv);
            add_fixed(acc + acc_plane + i, vi * w[c], sv);
            add_fixed(acc + 2 * acc_plane + i, wt * w[c], sw);
        }
    }
}

extern "C" __global__ void project2d(const float* __restrict__ grids, long long grid_size,
                                     const int* __restrict__ cls, const float* __restrict__ cs,
                                     const float* __restrict__ sn, const float* __restrict__ jx,
                                     const float* __restrict__ jy, int n_rows, int n_pix, float pad,
                                     int padded, float* __restrict__ out)
{
    POINTS_LOOP((long long)n_rows * n_pix) {
        const int r = (int)(t / n_pix);
        const int f = (int)(t - (long long)r * n_pix);
        long long idx[4];
        float w[4];
        const bool conj = bilinear(cs[r], sn[r], jx[f], jy[f], pad, padded, idx, w);
        const float* g = grids + 2LL * grid_size * cls[r];
        float re = g[2 * idx[0]] * w[0];
        float im = g[2 * idx[0] + 1] * w[0];
#pragma unroll
        for (int c = 1; c < 4; ++c) {
            re += g[2 * idx[c]] * w[c];
            im += g[2 * idx[c] + 1] * w[c];
        }
        out[2 * t] = re;
        out[2 * t + 1] = conj ? -im : im;
    }
}

extern "C" __global__ void insert2d(const float* __restrict__ values, const float* __restrict__ weights,
                                    const int* __restrict__ cls, const float* __restrict__ cs,
                                    const float* __restrict__ sn, const float* __restrict__ jx,
                                    const float* __restrict__ jy, int n_rows, int n_pix, float pad,
                                    int padded, long long grid_size, long long acc_plane,
                                    const float* __restrict__ largest, int bits,
                                    unsigned long long* __restrict__ acc)
{
    const double sv = fixed_scale(largest[0], bits), sw = fixed_scale(largest[1], bits);
    POINTS_LOOP((long long)n_rows * n_pix) {
        const int r = (int)(t / n_pix);
        const int f = (int)(t - (long long)r * n_pix);
        long long idx[4];
        float w[4];
        const bool conj = bilinear(cs[r], sn[r], jx[f], jy[f], pad, padded, idx, w);
        const float vr = values[2 * t];
        const float vi = conj ? -values[2 * t + 1] : values[2 * t + 1];
        const float wt = weights[t];
        const long long base = grid_size * cls[r];
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const long long i = base + idx[c];
            add_fixed(acc + i, vr * w[c], sv);
            add_fixed(acc + acc_plane + i, vi * w[c], sv);
            add_fixed(acc + 2 * acc_plane + i, wt * w[c], sw);
        }
    }
}

// pass 1 of the E-step, after its GEMM: logp[i, s, c] += row_term[i, c] + lp_trans[i, s] (in that order,
// as the NumPy path rounds), and the column maxima over s that the top-m search starts from; one read
// and one write of logp instead of two read-modify-writes and a read
extern "C" __global__ void add_priors(float* __restrict__ logp, const float* __restrict__ row_term,
                                      const float* __restrict__ lp_trans, int n, int n_shifts, int width,
                                      float* __restrict__ col_max)
{
    POINTS_LOOP((long long)n * width) {
        const long long i = t / width;
        const long long c = t - i * width;
        const float r = row_term[t];
        float* p = logp + i * n_shifts * (long long)width + c;
        float best = 0.0f;
        for (int s = 0; s < n_shifts; ++s) {
            const float v = (p[(long long)s * width] + r) + lp_trans[i * n_shifts + s];
            p[(long long)s * width] = v;
            best = (s == 0 || v > best) ? v : best;
        }
        col_max[t] = best;
    }
}

// Σ_c exp(x[rows[j], c] − shift[j]) per listed row (float64), read in place: one block per row
extern "C" __global__ void row_exp_sums(const float* __restrict__ x, long long width,
                                        const long long* __restrict__ rows, const float* __restrict__ shift,
                                        int n_rows, double* __restrict__ out)
{
    __shared__ double part[256];
    for (int j = blockIdx.x; j < n_rows; j += gridDim.x) {
        const float* row = x + rows[j] * width;
        const float m = shift[j];
        double acc = 0.0;
        for (long long c = threadIdx.x; c < width; c += blockDim.x) acc += (double)expf(row[c] - m);
        part[threadIdx.x] = acc;
        __syncthreads();
        for (int h = blockDim.x / 2; h > 0; h >>= 1) {
            if ((int)threadIdx.x < h) part[threadIdx.x] += part[threadIdx.x + h];
            __syncthreads();
        }
        if (threadIdx.x == 0) out[j] = part[0];
        __syncthreads();
    }
}

// the k largest entries of each row, exactly, best first (k ≤ TOPK_MAX): a radix select over 64-bit keys
// (the float's order-preserving bits, then the complement of the column, so equal values rank by column
// and every key is distinct: the same choice every run), then a bitonic sort of the k found
#define TOPK_MAX 256

__device__ __forceinline__ unsigned long long topk_key(float v, unsigned int column)
{
    unsigned int b = __float_as_uint(v);
    b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ((unsigned long long)b << 32) | (0xFFFFFFFFu - column);
}

extern "C" __global__ void topk_rows(const float* __restrict__ x, int n_rows, int width, int k,
                                     long long* __restrict__ out_idx, float* __restrict__ out_val)
{
    __shared__ unsigned int hist[256];
    __shared__ unsigned long long found[TOPK_MAX];
    __shared__ unsigned long long prefix_s;
    __shared__ int need_s, count_s;
    for (int r = blockIdx.x; r < n_rows; r += gridDim.x) {
        const float* row = x + (long long)r * width;
        if (threadIdx.x == 0) {
            prefix_s = 0ull;
            need_s = k;
            count_s = 0;
        }
        __syncthreads();
        for (int pass = 0; pass < 8; ++pass) {  // one byte of the k-th largest key per pass, high first
            const int shift = 56 - 8 * pass;
            const unsigned long long high = pass == 0 ? 0ull : (~0ull << (shift + 8));
            for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0u;
            __syncthreads();
            const unsigned long long prefix = prefix_s;
            for (int c = threadIdx.x; c < width; c += blockDim.x) {
                const unsigned long long key = topk_key(row[c], (unsigned int)c);
                if ((key & high) == prefix) atomicAdd(&hist[(key >> shift) & 255ull], 1u);
            }
            __syncthreads();
            if (threadIdx.x == 0) {
                int need = need_s, d = 255;
                for (; d > 0; --d) {
                    if ((int)hist[d] >= need) break;
                    need -= (int)hist[d];
                }
                need_s = need;
                prefix_s = prefix | ((unsigned long long)d << shift);
            }
            __syncthreads();
        }
        const unsigned long long kth = prefix_s;  // keys are distinct: exactly k are ≥ this one
        for (int c = threadIdx.x; c < width; c += blockDim.x) {
            const unsigned long long key = topk_key(row[c], (unsigned int)c);
            if (key >= kth) found[atomicAdd(&count_s, 1)] = key;
        }
        int p = 1;
        while (p < k) p <<= 1;
        __syncthreads();
        for (int i = k + threadIdx.x; i < p; i += blockDim.x) found[i] = 0ull;  // below every real key
        __syncthreads();
        for (int size = 2; size <= p; size <<= 1) {
            for (int stride = size >> 1; stride > 0; stride >>= 1) {
                for (int i = threadIdx.x; i < p; i += blockDim.x) {
                    const int j = i ^ stride;
                    if (j > i) {
                        const unsigned long long a = found[i], b = found[j];
                        if (((i & size) == 0) ? (a < b) : (a > b)) {
                            found[i] = b;
                            found[j] = a;
                        }
                    }
                }
                __syncthreads();
            }
        }
        for (int i = threadIdx.x; i < k; i += blockDim.x) {
            const unsigned int c = 0xFFFFFFFFu - (unsigned int)(found[i] & 0xFFFFFFFFull);
            out_idx[(long long)r * k + i] = (long long)c;
            out_val[(long long)r * k + i] = row[c];
        }
        __syncthreads();
    }
}

// sums of rows by target index, the entries already sorted by target (stable: a fixed order, so the same
// bits every run): out[targets[g], c] = Σ_{e in segment g} weights[e]·values[src[e], c], summed in float64
extern "C" __global__ void segment_rows(const float* __restrict__ values, long long width,
                                        const long long* __restrict__ src, const float* __restrict__ weights,
                                        int weighted, const long long* __restrict__ starts,
                                        const long long* __restrict__ targets, int n_segments,
                                        float* __restrict__ out)
{
    POINTS_LOOP((long long)n_segments * width) {
        const long long g = t / width;
        const long long c = t - g * width;
        double acc = 0.0;
        for (long long e = starts[g]; e < starts[g + 1]; ++e) {
            const float v = values[src[e] * width + c];
            acc += (double)(weighted ? v * weights[e] : v);  // the float32 product, as the array path forms it
        }
        out[targets[g] * width + c] = (float)acc;
    }
}

// target[targets[g]] += Σ_{e in segment g} values[src[e]] (float64), entries sorted by target
extern "C" __global__ void segment_add(const double* __restrict__ values, const long long* __restrict__ src,
                                       const long long* __restrict__ starts,
                                       const long long* __restrict__ targets, int n_segments,
                                       double* __restrict__ target)
{
    POINTS_LOOP(n_segments) {
        double acc = 0.0;
        for (long long e = starts[t]; e < starts[t + 1]; ++e) acc += values[src[e]];
        target[targets[t]] += acc;
    }
}

// the fixed-point sums (three planes: re, im, weight) added to the caller's grids
extern "C" __global__ void finish_f64(const long long* __restrict__ acc, long long n,
                                      const float* __restrict__ largest, int bits,
                                      double* __restrict__ data, double* __restrict__ weight)
{
    const double iv = 1.0 / fixed_scale(largest[0], bits), iw = 1.0 / fixed_scale(largest[1], bits);
    POINTS_LOOP(n) {
        const long long a = acc[t], b = acc[n + t], c = acc[2 * n + t];
        if (a != 0) data[2 * t] += (double)a * iv;
        if (b != 0) data[2 * t + 1] += (double)b * iv;
        if (c != 0) weight[t] += (double)c * iw;
    }
}

extern "C" __global__ void finish_f32(const long long* __restrict__ acc, long long n,
                                      const float* __restrict__ largest, int bits,
                                      float* __restrict__ data, float* __restrict__ weight)
{
    const double iv = 1.0 / fixed_scale(largest[0], bits), iw = 1.0 / fixed_scale(largest[1], bits);
    POINTS_LOOP(n) {
        const long long a = acc[t], b = acc[n + t], c = acc[2 * n + t];
        if (a != 0) data[2 * t] += (float)((double)a * iv);
        if (b != 0) data[2 * t + 1] += (float)((double)b * iv);
        if (c != 0) weight[t] += (float)((double)c * iw);
    }
}
"""

#: no fused multiply-adds: the NumPy path rounds every product before adding it
OPTIONS = ("--fmad=false",)
THREADS = 256
MAX_BLOCKS = 1 << 16  # grid-stride loops beyond this (the H200 holds ~2 000 blocks of 256 at once)
#: contributions one row (one slice, one rotated image) can make to one voxel, an upper bound: the
#: row's points lie on a lattice of spacing pad ≥ 1, so at most 13 of them fall in the 2×2(×2) cell
#: around a voxel; ×2 for Friedel mates, ×4 for wraps in y and z, ×2 for the clamp of x (checked by
#: a test against the NumPy corners)
ROW_HITS_BOUND = 256


def available() -> bool:
    """Whether the kernels run: CuPy with a usable CUDA device and run-time compilation (not the CuPy
    emulator), and not turned off by ``SPA_CUDA_KERNELS=0``."""
    return os.environ.get("SPA_CUDA_KERNELS", "1") != "0" and _runtime_ok()


@lru_cache(maxsize=None)
def _runtime_ok() -> bool:
    if not cupy_available():
        return False
    return hasattr(get_backend("cupy").xp, "RawModule")


def active(*arrays) -> bool:
    """True when every array is a CuPy array and the kernels are :func:`available`."""
    return all(array_module(a) is not np for a in arrays) and available()


@lru_cache(maxsize=None)
def _compiled(xp):
    return xp.RawModule(code=SOURCE, options=OPTIONS)


def _module(xp):
    """The compiled module (once per process; a test can put a CPU build of ``SOURCE`` here)."""
    return _compiled(xp)


def _launch(xp, name: str, total: int, args, blocks: int | None = None) -> None:
    """Launch ``name`` over ``total`` points (THREADS per block, grid-stride), or on ``blocks`` blocks."""
    if total <= 0:
        return
    if blocks is None:
        blocks = (total + THREADS - 1) // THREADS
    _module(xp).get_function(name)((int(min(blocks, MAX_BLOCKS)),), (THREADS,), tuple(args))


def fixed_point_bits(n_addends: int, n_rows: int) -> int:
    """Bits b of the fixed-point scale: each addend becomes an integer < 2^b, and no voxel receives more
    than min(n_addends, ROW_HITS_BOUND·n_rows) ≤ 2^(62−b) of them, so no sum leaves int64."""
    bound = max(1, min(int(n_addends), ROW_HITS_BOUND * max(int(n_rows), 1)))
    return max(1, 62 - (bound - 1).bit_length())


def grids_supported(data, weight) -> bool:
    """Whether :func:`insert3d` / :func:`insert2d` can add into these grids (in place)."""
    pairs = ((np.complex128, np.float64), (np.complex64, np.float32))
    return ((np.dtype(data.dtype), np.dtype(weight.dtype)) in pairs and data.size == weight.size
            and bool(data.flags.c_contiguous) and bool(weight.flags.c_contiguous))


def _largest(xp, values, weights):
    """(2,) float32 on the device: max |re, im| of ``values`` and max |weights| (no host sync)."""
    v = values.view(xp.float32)
    return xp.stack([xp.maximum(v.max(), -v.min()), xp.maximum(weights.max(), -weights.min())]).astype(xp.float32)


def _c64(xp, a):
    return xp.ascontiguousarray(xp.asarray(a), dtype=xp.complex64)


def _f32(xp, a):
    return xp.ascontiguousarray(xp.asarray(a), dtype=xp.float32)


def _classes(xp, classes, n_rows: int):
    """Per-row class indices (int32 on the device); an int: every row that class."""
    if np.isscalar(classes) or getattr(classes, "ndim", 1) == 0:
        return xp.full(n_rows, int(classes), xp.int32)
    return xp.ascontiguousarray(xp.asarray(classes), dtype=xp.int32)


def _grid_size(padded: int, ndim: int) -> int:
    return padded ** (ndim - 1) * (padded // 2 + 1)


def project3d(grids, classes, rotations, jx, jy, pad: float, padded: int):
    """Central slices (R, F) complex64: row r of class ``classes[r]`` (an int: all rows) of ``grids``
    (K flat padded half grids, complex64) at pad·Aᵀ(jx, jy, 0), A = ``rotations[r]`` (R, 3, 3)."""
    xp = array_module(grids)
    rot = _f32(xp, xp.asarray(rotations, dtype=xp.float32) * np.float32(pad))
    n_rows, n_pix = int(rot.shape[0]), int(jx.shape[0])
    out = xp.empty((n_rows, n_pix), xp.complex64)
    _launch(xp, "project3d", n_rows * n_pix,
            (_c64(xp, grids), np.int64(_grid_size(padded, 3)), _classes(xp, classes, n_rows), rot,
             _f32(xp, jx), _f32(xp, jy), np.int32(n_rows), np.int32(n_pix), np.int32(padded), out))
    return out


def _insert(xp, data, weight, launches, values, weights, corners: int, n_rows: int, n_pix: int):
    """Fixed-point accumulation of ``launches`` [(kernel name, argument tuple before ``largest``)] and
    the finishing pass into ``data`` (complex) and ``weight`` (real), flat grids of equal size."""
    n = int(weight.size)
    if n_rows * n_pix == 0 or not launches:
        return
    if not grids_supported(data, weight):
        raise TypeError(f"insertion grids must be contiguous, of one size, complex128 + float64 or complex64 + "
                        f"float32; got {data.dtype} {data.shape} + {weight.dtype} {weight.shape}")
    finish = "finish_f64" if data.dtype == np.complex128 else "finish_f32"
    largest = _largest(xp, values, weights)
    bits = fixed_point_bits(len(launches) * n_rows * n_pix * corners, len(launches) * n_rows)
    acc = xp.zeros(3 * n, xp.int64)
    for name, args in launches:
        _launch(xp, name, n_rows * n_pix, args + (np.int64(n), largest, np.int32(bits), acc))
    _launch(xp, finish, n, (acc, np.int64(n), largest, np.int32(bits), data.reshape(-1), weight.reshape(-1)))


def insert3d(data, weight, classes, rotation_sets, jx, jy, values, weights, pad: float, padded: int) -> None:
    """Add ``values`` (R, F) complex and ``weights`` (R, F) into ``data`` / ``weight`` (K padded half
    grids, flat or not; complex128 + float64 or complex64 + float32), row r into class ``classes[r]``
    at pad·Aᵀ(jx, jy, 0) for A = each ``rotation_sets[i][r]`` (one set per symmetry copy, or one
    (R, 3, 3) array): the transpose of :func:`project3d`, deterministic (see the module docstring)."""
    xp = array_module(data)
    if getattr(rotation_sets, "ndim", 0) == 3:
        rotation_sets = [rotation_sets]
    vals, wts = _c64(xp, values), _f32(xp, weights)
    n_rows, n_pix = int(vals.shape[0]), int(jx.shape[0])
    common = (_classes(xp, classes, n_rows),)
    pix = (_f32(xp, jx), _f32(xp, jy), np.int32(n_rows), np.int32(n_pix), np.int32(padded),
           np.int64(_grid_size(padded, 3)))
    launches = [("insert3d", (vals, wts) + common + (_f32(xp, xp.asarray(r, dtype=xp.float32) * np.float32(pad)),)
                 + pix) for r in rotation_sets]
    _insert(xp, data, weight, launches, vals, wts, 8, n_rows, n_pix)


def _cos_sin(xp, angles_deg):
    """cos ψ, sin ψ (float32, on the device) computed on the host by NumPy exactly as
    :class:`spa.em.inplane.AngleTable` does (angles keyed to 10⁻⁶ degree), so the NumPy and CUDA paths
    interpolate at the same coordinates."""
    a = np.asarray(backend_of(angles_deg).to_numpy(angles_deg), np.float64).reshape(-1)
    psi = np.deg2rad(np.rint(a * 1e6) / 1e6).astype(np.float32)
    return xp.asarray(np.cos(psi)), xp.asarray(np.sin(psi))


def project2d(grids, classes, angles_deg, jx, jy, pad: float, padded: int):
    """In-plane rotated classes (R, F) complex64: row r is class ``classes[r]`` (an int: all rows) of
    ``grids`` (K padded half grids (P, P//2+1), complex64) at pad·Aᵀ(jx, jy), A = A(ψ = angles_deg[r])."""
    xp = array_module(grids)
    cs, sn = _cos_sin(xp, angles_deg)
    n_rows, n_pix = int(cs.shape[0]), int(jx.shape[0])
    out = xp.empty((n_rows, n_pix), xp.complex64)
    _launch(xp, "project2d", n_rows * n_pix,
            (_c64(xp, grids), np.int64(_grid_size(padded, 2)), _classes(xp, classes, n_rows), cs, sn,
             _f32(xp, jx), _f32(xp, jy), np.int32(n_rows), np.int32(n_pix), np.float32(pad), np.int32(padded), out))
    return out


def insert2d(data, weight, classes, angles_deg, jx, jy, values, weights, pad: float, padded: int) -> None:
    """Transpose of :func:`project2d`: add ``values`` (R, F) and ``weights`` (R, F) into class
    ``classes[r]`` of ``data`` / ``weight`` (K padded half grids), deterministically."""
    xp = array_module(data)
    cs, sn = _cos_sin(xp, angles_deg)
    vals, wts = _c64(xp, values), _f32(xp, weights)
    n_rows, n_pix = int(vals.shape[0]), int(jx.shape[0])
    args = (vals, wts, _classes(xp, classes, n_rows), cs, sn, _f32(xp, jx), _f32(xp, jy), np.int32(n_rows),
            np.int32(n_pix), np.float32(pad), np.int32(padded), np.int64(_grid_size(padded, 2)))
    _insert(xp, data, weight, [("insert2d", args)], vals, wts, 4, n_rows, n_pix)


# -- the E-step's pass 1 -----------------------------------------------------------------------------
def add_priors(logp, row_term, lp_trans):
    """``logp`` (n, S, W) float32 += ``row_term`` (n, W)[:, None, :] + ``lp_trans`` (n, S)[:, :, None], in
    place, in one pass that also returns the maxima over S, (n, W) float32 (what
    :func:`spa.em.significance.significant` starts from)."""
    xp = array_module(logp)
    if not logp.flags.c_contiguous:
        raise ValueError("add_priors: logp must be contiguous (it is written in place)")
    n, n_shifts, width = (int(d) for d in logp.shape)
    col_max = xp.empty((n, width), xp.float32)
    _launch(xp, "add_priors", n * width, (logp, _f32(xp, row_term), _f32(xp, lp_trans), np.int32(n),
                                          np.int32(n_shifts), np.int32(width), col_max))
    return col_max


def row_exp_sums(x, rows, shift):
    """Σ_c exp(x[rows[j], c] − shift[j]) (float64, (J,)) for rows of ``x`` (n, W) float32, read in place
    (no copy of the rows, no exp pass written back)."""
    xp = array_module(x)
    n_rows = int(rows.shape[0])
    out = xp.empty(n_rows, xp.float64)
    _launch(xp, "row_exp_sums", n_rows * int(x.shape[1]),
            (x, np.int64(x.shape[1]), xp.ascontiguousarray(rows, dtype=xp.int64), _f32(xp, shift),
             np.int32(n_rows), out), blocks=n_rows)
    return out


TOPK_MAX = 256  # as in SOURCE


def topk_rows(x, k: int):
    """(index (n, k) int64, value (n, k) float32): the k largest entries of each row of ``x`` (n, W) float32,
    exactly, best first, equal values by column (CuPy's partition sorts whole rows instead)."""
    xp = array_module(x)
    n, width = (int(d) for d in x.shape)
    if not 0 < k <= min(TOPK_MAX, width) or width >= 2**32:
        raise ValueError(f"topk_rows: k = {k} must be in 1 … min({TOPK_MAX}, {width})")
    idx, val = xp.empty((n, k), xp.int64), xp.empty((n, k), xp.float32)
    _launch(xp, "topk_rows", n * THREADS, (_f32(xp, x), np.int32(n), np.int32(width), np.int32(k), idx, val),
            blocks=n)
    return idx, val


# -- sums by index (the E-step's M-step sums) -----------------------------------------------------------
def _segments(xp, index):
    """(order, starts (T+1,), targets (T,)) of a stable sort of ``index``: the entries of each distinct
    index in their original order (one host synchronisation, for T)."""
    order = xp.argsort(index, kind="stable")
    idx = index[order]
    cut = xp.nonzero(idx[1:] != idx[:-1])[0].astype(xp.int64) + 1
    starts = xp.concatenate([xp.zeros(1, xp.int64), cut, xp.full(1, idx.shape[0], xp.int64)])
    return order, starts, xp.ascontiguousarray(idx[starts[:-1]], dtype=xp.int64)


def sum_rows_by_index(values, index, n_rows: int, rows=None, weights=None):
    """:meth:`spa.backend.Backend.sum_rows_by_index` for float32 ``values`` (Q, W): row j of the (n_rows, W)
    result is Σ over entries e with ``index[e]`` = j of ``weights[e]·values[rows[e]]``, in one launch
    (instead of a gather, a float64 copy and a running-sum ``reduceat`` of all entries' rows)."""
    xp = array_module(values)
    vals = xp.ascontiguousarray(values, dtype=xp.float32).reshape(values.shape[0], -1)
    out = xp.zeros((int(n_rows), vals.shape[1]), xp.float32)
    if int(index.shape[0]) == 0:
        return out.reshape((int(n_rows),) + values.shape[1:])
    order, starts, targets = _segments(xp, index)
    src = order if rows is None else xp.asarray(rows)[order]
    w = xp.zeros(1, xp.float32) if weights is None else _f32(xp, xp.asarray(weights)[order])
    n_seg = int(targets.shape[0])
    _launch(xp, "segment_rows", n_seg * int(vals.shape[1]),
            (vals, np.int64(vals.shape[1]), xp.ascontiguousarray(src, dtype=xp.int64), w,
             np.int32(weights is not None), starts, targets, np.int32(n_seg), out))
    return out.reshape((int(n_rows),) + values.shape[1:])


def scatter_add(target, index, values) -> None:
    """``target[index] += values`` for float64 1D arrays, repeated indices summed in a fixed order."""
    xp = array_module(target)
    if int(index.shape[0]) == 0:
        return
    order, starts, targets = _segments(xp, index)
    n_seg = int(targets.shape[0])
    _launch(xp, "segment_add", n_seg, (xp.ascontiguousarray(values, dtype=xp.float64),
                                       xp.ascontiguousarray(order, dtype=xp.int64), starts, targets,
                                       np.int32(n_seg), target))
