"""The CUDA C source of :mod:`spa.em.cuda_kernels` (compiled at run time by NVRTC through CuPy).

Kept apart from the launchers only for length.  Conventions: complex arrays are interleaved float
(re, im); grids are flat padded half grids, [z][y][x] (3D) or [y][x] (2D), x in 0 … P/2, y and z in FFT
order, several classes' grids one after the other; every kernel runs grid-stride loops, so any launch
size covers all points (and the CPU build of ``tests/cuda_shim.py``, one thread, runs them serially).
Built with ``--fmad=false``: every product is rounded before it is added, as NumPy does.
"""

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
