// GroupQuantMatMul: y[M, N] = x[M, K] · dequant(W)[N, K]ᵀ (+ bias[N]), W packed 4- or 2-bit with a
// scale and an integer-valued zero point (activation type) per group of G consecutive k (layout: packing.py).
// bias (activation type) is optional: nullptr means none.
//
// Two kernels per (activation type, bits), both correct for every M:
//   gqmm_gemv_*  decode (M = batch·seq <= 8): one warp per output feature streams its
//                packed row once with 32-bit loads, dequantises in registers and keeps
//                up to 8 rows of x in flight; grid (ceil(N / 4), ceil(M / 8)), block 128.
//                Memory-bound by design: it reads K·bits/8 bytes per feature once.
//   gqmm_gemm_*  prefill: 64x64 output tiles, K in steps of 32 (inside one group since
//                G % 32 == 0); the weight tile is dequantised into shared memory, then
//                tensor cores (WMMA 16x16x16, fp32 accumulation) for fp16/bf16 and a
//                register-blocked SIMT loop for fp32; grid (ceil(N / 64), ceil(M / 64)), block 128.
// Dequantised weights are rounded to the activation type before the product (what the
// torch reference computes); accumulation is fp32, the bias is added to the fp32 sum and
// the result rounded once to the activation type (the reference's order too).
// Arguments: x, qweight, scales, zeros, bias, M, N, K, G, y (inputs, scalars, outputs: the
// order of TensorRT's AOT plugins; the plugin always passes a bias, zeros when the graph has none).
// Requirements (checked by the plugin and the pass): K % G == 0, G in {32, 64, 128}.
#include <mma.h>

#include "../include/trtforge_cuda.cuh"

namespace gqmm {

using trtforge::from_float;
using trtforge::round_to;
using trtforge::to_float;

constexpr int kGemvWarps = 4;  // output features per block
constexpr int kGemvRows = 8;   // rows of x per block (grid.y covers the rest)
constexpr int BM = 64, BN = 64, BK = 32;
constexpr int LDS = BK + 8;  // shared-memory row pitch (elements): keeps WMMA pointers 32-byte aligned
constexpr int LDC = BN + 4;

template <typename T, int BITS>
__device__ __forceinline__ void gemv(const T* __restrict__ x, const unsigned char* __restrict__ qweight,
                                     const T* __restrict__ scales, const T* __restrict__ zeros,
                                     const T* __restrict__ bias, int M, int N, int K, int G, T* __restrict__ y) {
    constexpr int PER_WORD = 32 / BITS;
    constexpr unsigned MASK = (1u << BITS) - 1u;
    const int lane = threadIdx.x & 31;
    const int n = blockIdx.x * kGemvWarps + (threadIdx.x >> 5);
    const int m0 = blockIdx.y * kGemvRows;
    if (n >= N) return;
    const int rows = min(kGemvRows, M - m0);
    const int groups = K / G;
    const unsigned* row = reinterpret_cast<const unsigned*>(qweight + static_cast<size_t>(n) * (K / (8 / BITS)));
    const T* srow = scales + static_cast<size_t>(n) * groups;
    const T* zrow = zeros + static_cast<size_t>(n) * groups;
    const T* xb = x + static_cast<size_t>(m0) * K;
    float acc[kGemvRows];
#pragma unroll
    for (int m = 0; m < kGemvRows; ++m) acc[m] = 0.f;
    const int words = K / PER_WORD;
#pragma unroll 2
    for (int w = lane; w < words; w += 32) {
        const unsigned packed = __ldg(row + w);
        const int k0 = w * PER_WORD;
        const int g = k0 / G;  // a word never straddles groups: G % PER_WORD == 0
        const float s = to_float(srow[g]);
        const float z = to_float(zrow[g]);
        float wv[PER_WORD];
#pragma unroll
        for (int j = 0; j < PER_WORD; ++j)
            wv[j] = round_to<T>((static_cast<float>((packed >> (j * BITS)) & MASK) - z) * s);
#pragma unroll
        for (int m = 0; m < kGemvRows; ++m) {
            if (m < rows) {
                const T* xr = xb + static_cast<size_t>(m) * K + k0;
                float a = 0.f;
#pragma unroll
                for (int j = 0; j < PER_WORD; ++j) a = fmaf(to_float(xr[j]), wv[j], a);
                acc[m] += a;
            }
        }
    }
    const float b = bias != nullptr ? to_float(bias[n]) : 0.f;
#pragma unroll
    for (int m = 0; m < kGemvRows; ++m) {
        const float total = trtforge::warp_sum(acc[m]) + b;
        if (lane == 0 && m < rows) y[static_cast<size_t>(m0 + m) * N + n] = from_float<T>(total);
    }
}

// Stage one BM x BK tile of x and one BN x BK tile of dequantised W (row n, column k) in shared memory.
template <typename T, typename S, int BITS>
__device__ __forceinline__ void load_tiles(const T* __restrict__ x, const unsigned char* __restrict__ qweight,
                                           const T* __restrict__ scales, const T* __restrict__ zeros,
                                           int M, int N, int K, int G, int m0, int n0, int k0, S* As, S* Bs) {
    constexpr int P = 8 / BITS;
    constexpr unsigned MASK = (1u << BITS) - 1u;
    for (int i = threadIdx.x; i < BM * BK; i += blockDim.x) {
        const int r = i / BK, c = i % BK;
        const int m = m0 + r;
        const float v = m < M ? to_float(x[static_cast<size_t>(m) * K + k0 + c]) : 0.f;
        As[r * LDS + c] = from_float<S>(v);
    }
    const int g = k0 / G;
    for (int i = threadIdx.x; i < BN * (BK / P); i += blockDim.x) {
        const int r = i / (BK / P), byte = i % (BK / P);
        const int n = n0 + r;
        S* dst = Bs + r * LDS + byte * P;
        if (n < N) {
            const unsigned b = qweight[static_cast<size_t>(n) * (K / P) + k0 / P + byte];
            const float s = to_float(scales[static_cast<size_t>(n) * (K / G) + g]);
            const float z = to_float(zeros[static_cast<size_t>(n) * (K / G) + g]);
#pragma unroll
            for (int j = 0; j < P; ++j)
                dst[j] = from_float<S>(round_to<T>((static_cast<float>((b >> (j * BITS)) & MASK) - z) * s));
        } else {
#pragma unroll
            for (int j = 0; j < P; ++j) dst[j] = from_float<S>(0.f);
        }
    }
}

// fp16 / bf16: tensor cores. 4 warps, each a 32x32 quarter of the 64x64 tile.
template <typename T, int BITS>
__device__ __forceinline__ void gemm_tc(const T* __restrict__ x, const unsigned char* __restrict__ qweight,
                                        const T* __restrict__ scales, const T* __restrict__ zeros,
                                        const T* __restrict__ bias, int M, int N, int K, int G,
                                        T* __restrict__ y) {
    using namespace nvcuda;
    __shared__ __align__(32) T As[BM * LDS];
    __shared__ __align__(32) T Bs[BN * LDS];
    __shared__ __align__(32) float Cs[BM * LDC];
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int warp = threadIdx.x >> 5;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);
    for (int k0 = 0; k0 < K; k0 += BK) {
        load_tiles<T, T, BITS>(x, qweight, scales, zeros, M, N, K, G, m0, n0, k0, As, Bs);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], As + (wm + 16 * i) * LDS + kk, LDS);
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], Bs + (wn + 16 * j) * LDS + kk, LDS);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
            wmma::store_matrix_sync(Cs + (wm + 16 * i) * LDC + wn + 16 * j, acc[i][j], LDC, wmma::mem_row_major);
    __syncthreads();
    for (int i = threadIdx.x; i < BM * BN; i += blockDim.x) {
        const int r = i / BN, c = i % BN;
        const int m = m0 + r, n = n0 + c;
        if (m < M && n < N) {
            const float b = bias != nullptr ? to_float(bias[n]) : 0.f;
            y[static_cast<size_t>(m) * N + n] = from_float<T>(Cs[r * LDC + c] + b);
        }
    }
}

// fp32: SIMT, each of the 128 threads owns an 8x4 block of the 64x64 tile.
template <int BITS>
__device__ __forceinline__ void gemm_simt(const float* __restrict__ x, const unsigned char* __restrict__ qweight,
                                          const float* __restrict__ scales, const float* __restrict__ zeros,
                                          const float* __restrict__ bias, int M, int N, int K, int G,
                                          float* __restrict__ y) {
    __shared__ float As[BM * LDS];
    __shared__ float Bs[BN * LDS];
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;  // 16 column groups of 4, 8 row groups of 8
    float acc[8][4];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
    for (int k0 = 0; k0 < K; k0 += BK) {
        load_tiles<float, float, BITS>(x, qweight, scales, zeros, M, N, K, G, m0, n0, k0, As, Bs);
        __syncthreads();
#pragma unroll 4
        for (int k = 0; k < BK; ++k) {
            float a[8], b[4];
#pragma unroll
            for (int i = 0; i < 8; ++i) a[i] = As[(ty * 8 + i) * LDS + k];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = Bs[(tx + 16 * j) * LDS + k];
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
    float b[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int n = n0 + tx + 16 * j;
        b[j] = bias != nullptr && n < N ? bias[n] : 0.f;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int m = m0 + ty * 8 + i, n = n0 + tx + 16 * j;
            if (m < M && n < N) y[static_cast<size_t>(m) * N + n] = acc[i][j] + b[j];
        }
}

}  // namespace gqmm

#define GQMM_ARGS(T)                                                                                     \
    const T *__restrict__ x, const unsigned char *__restrict__ qweight, const T *__restrict__ scales,   \
        const T *__restrict__ zeros, const T *__restrict__ bias, int M, int N, int K, int G, T *__restrict__ y
#define GQMM_CALL x, qweight, scales, zeros, bias, M, N, K, G, y

#define GQMM_KERNELS(SUFFIX, T, BITS, GEMM)                                                            \
    extern "C" __global__ void __launch_bounds__(128) gqmm_gemv_w##BITS##_##SUFFIX(GQMM_ARGS(T)) {    \
        gqmm::gemv<T, BITS>(GQMM_CALL);                                                                \
    }                                                                                                  \
    extern "C" __global__ void __launch_bounds__(128) gqmm_gemm_w##BITS##_##SUFFIX(GQMM_ARGS(T)) {    \
        GEMM(GQMM_CALL);                                                                               \
    }

GQMM_KERNELS(f16, __half, 4, (gqmm::gemm_tc<__half, 4>))
GQMM_KERNELS(f16, __half, 2, (gqmm::gemm_tc<__half, 2>))
GQMM_KERNELS(bf16, __nv_bfloat16, 4, (gqmm::gemm_tc<__nv_bfloat16, 4>))
GQMM_KERNELS(bf16, __nv_bfloat16, 2, (gqmm::gemm_tc<__nv_bfloat16, 2>))
GQMM_KERNELS(f32, float, 4, gqmm::gemm_simt<4>)
GQMM_KERNELS(f32, float, 2, gqmm::gemm_simt<2>)
