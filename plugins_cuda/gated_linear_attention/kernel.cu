// GatedLinearAttention, per (batch, head):  S_t = diag(g_t) S_{t-1} + k_t v_tᵀ,  o_t = S_tᵀ q_t
// q, k, g [BH, T, Dk]; v [BH, T, Dv]; s0, s_out [BH, Dk, Dv]; o [BH, T, Dv]; gates in (0, 1].
// State and arithmetic are fp32 inside the kernels; inputs/outputs are T (f32, f16, bf16).
//
//   gla_recurrent_*  decode (T = 1, or any T sequentially): the state lives in registers,
//                    column j of S per thread-x, rows split over 4 warps; grid (BH, ceil(Dv/32)),
//                    block (32, 4), no dynamic shared memory.
//   gla_chunked_*    prefill, chunked-parallel form with chunks of C = 16 steps. Inside a chunk,
//                    with Λ_r = Σ_{s<=r} log g_s (per key dim, from the chunk start):
//                      o_r   = (q_r ⊙ e^{Λ_r})ᵀ S + Σ_{s<=r} A[r,s] v_s,  A[r,s] = Σ_d q_rd k_sd e^{Λ_rd - Λ_sd}
//                      S_new = diag(e^{Λ_C}) S + Σ_s (k_s ⊙ e^{Λ_C - Λ_s}) v_sᵀ
//                    Only differences Λ_r - Λ_s with s <= r are exponentiated, so nothing
//                    overflows. The state (Dk x 32 columns) stays in shared memory across chunks;
//                    grid (BH, ceil(Dv/32)), block 128, dynamic shared memory
//                    gla_chunked_smem_bytes(Dk) = 4 * (3*C*Dk + 32*Dk + 32*C + C*C).
// Dk <= 128 (the plugin checks); Dv is free.
#include "../include/trtforge_cuda.cuh"

namespace gla {

using trtforge::from_float;
using trtforge::to_float;

constexpr int kMaxDk = 128;
constexpr int kRowWarps = 4;
constexpr int kCols = 32;  // state columns per block
constexpr int kChunk = 16;

template <typename T>
__device__ __forceinline__ void recurrent(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                          const T* __restrict__ g, const T* __restrict__ s0, int BH, int T_, int Dk,
                                          int Dv, T* __restrict__ o, T* __restrict__ s_out) {
    constexpr int R = kMaxDk / kRowWarps;
    __shared__ float sq[kMaxDk], sk[kMaxDk], sg[kMaxDk];
    __shared__ float red[kRowWarps][32];
    const int bh = blockIdx.x;
    if (bh >= BH) return;
    const int j = blockIdx.y * kCols + threadIdx.x;
    const bool jv = j < Dv;
    const int tid = threadIdx.y * 32 + threadIdx.x;
    const size_t koff = static_cast<size_t>(bh) * T_ * Dk, voff = static_cast<size_t>(bh) * T_ * Dv;
    const size_t soff = static_cast<size_t>(bh) * Dk * Dv;
    float st[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int i = threadIdx.y + kRowWarps * r;
        st[r] = (i < Dk && jv) ? to_float(s0[soff + static_cast<size_t>(i) * Dv + j]) : 0.f;
    }
    for (int t = 0; t < T_; ++t) {
        for (int i = tid; i < Dk; i += 32 * kRowWarps) {
            const size_t at = koff + static_cast<size_t>(t) * Dk + i;
            sq[i] = to_float(q[at]);
            sk[i] = to_float(k[at]);
            sg[i] = to_float(g[at]);
        }
        __syncthreads();
        const float vj = jv ? to_float(v[voff + static_cast<size_t>(t) * Dv + j]) : 0.f;
        float part = 0.f;
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const int i = threadIdx.y + kRowWarps * r;
            if (i < Dk) {
                st[r] = fmaf(sg[i], st[r], sk[i] * vj);
                part = fmaf(sq[i], st[r], part);
            }
        }
        red[threadIdx.y][threadIdx.x] = part;
        __syncthreads();
        if (threadIdx.y == 0 && jv) {
            float sum = 0.f;
#pragma unroll
            for (int w = 0; w < kRowWarps; ++w) sum += red[w][threadIdx.x];
            o[voff + static_cast<size_t>(t) * Dv + j] = from_float<T>(sum);
        }
        __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int i = threadIdx.y + kRowWarps * r;
        if (i < Dk && jv) s_out[soff + static_cast<size_t>(i) * Dv + j] = from_float<T>(st[r]);
    }
}

template <typename T>
__device__ __forceinline__ void chunked(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                        const T* __restrict__ g, const T* __restrict__ s0, int BH, int T_, int Dk,
                                        int Dv, T* __restrict__ o, T* __restrict__ s_out) {
    constexpr int C = kChunk;
    extern __shared__ float smem[];
    float* sQ = smem;             // [C][Dk]
    float* sK = sQ + C * Dk;      // [C][Dk]
    float* sL = sK + C * Dk;      // [C][Dk] log gates, then their running sum inside the chunk
    float* sS = sL + C * Dk;      // [Dk][kCols] state columns of this block
    float* sV = sS + Dk * kCols;  // [C][kCols]
    float* sA = sV + C * kCols;   // [C][C]
    const int bh = blockIdx.x;
    if (bh >= BH) return;
    const int j0 = blockIdx.y * kCols;
    const int tid = threadIdx.x, nthreads = blockDim.x;
    const size_t koff = static_cast<size_t>(bh) * T_ * Dk, voff = static_cast<size_t>(bh) * T_ * Dv;
    const size_t soff = static_cast<size_t>(bh) * Dk * Dv;
    for (int i = tid; i < Dk * kCols; i += nthreads) {
        const int d = i / kCols, j = j0 + i % kCols;
        sS[i] = j < Dv ? to_float(s0[soff + static_cast<size_t>(d) * Dv + j]) : 0.f;
    }
    for (int t0 = 0; t0 < T_; t0 += C) {
        const int len = min(C, T_ - t0);
        for (int i = tid; i < C * Dk; i += nthreads) {
            const int r = i / Dk;
            const size_t at = koff + static_cast<size_t>(t0) * Dk + i;
            const bool valid = r < len;
            sQ[i] = valid ? to_float(q[at]) : 0.f;
            sK[i] = valid ? to_float(k[at]) : 0.f;
            sL[i] = valid ? logf(to_float(g[at])) : 0.f;  // padded steps: gate 1, no input
        }
        for (int i = tid; i < C * kCols; i += nthreads) {
            const int r = i / kCols, j = j0 + i % kCols;
            sV[i] = (r < len && j < Dv) ? to_float(v[voff + static_cast<size_t>(t0 + r) * Dv + j]) : 0.f;
        }
        __syncthreads();
        for (int d = tid; d < Dk; d += nthreads) {
            float run = 0.f;
            for (int r = 0; r < C; ++r) {
                run += sL[r * Dk + d];
                sL[r * Dk + d] = run;
            }
        }
        __syncthreads();
        for (int i = tid; i < C * C; i += nthreads) {
            const int r = i / C, s = i % C;
            float a = 0.f;
            if (s <= r) {
                const float* qr = sQ + r * Dk;
                const float* ks = sK + s * Dk;
                const float* lr = sL + r * Dk;
                const float* ls = sL + s * Dk;
                for (int d = 0; d < Dk; ++d) a = fmaf(qr[d] * ks[d], expf(lr[d] - ls[d]), a);
            }
            sA[i] = a;
        }
        __syncthreads();
        for (int i = tid; i < C * kCols; i += nthreads) {
            const int r = i / kCols, c = i % kCols, j = j0 + c;
            if (r >= len || j >= Dv) continue;
            float acc = 0.f;
            for (int d = 0; d < Dk; ++d) acc = fmaf(sQ[r * Dk + d] * expf(sL[r * Dk + d]), sS[d * kCols + c], acc);
            for (int s = 0; s <= r; ++s) acc = fmaf(sA[r * C + s], sV[s * kCols + c], acc);
            o[voff + static_cast<size_t>(t0 + r) * Dv + j] = from_float<T>(acc);
        }
        __syncthreads();
        for (int i = tid; i < Dk * kCols; i += nthreads) {
            const int d = i / kCols, c = i % kCols;
            const float last = sL[(C - 1) * Dk + d];
            float acc = expf(last) * sS[i];
            for (int s = 0; s < len; ++s) acc = fmaf(sK[s * Dk + d] * expf(last - sL[s * Dk + d]), sV[s * kCols + c], acc);
            sS[i] = acc;  // each thread updates only its own entries
        }
        __syncthreads();
    }
    for (int i = tid; i < Dk * kCols; i += nthreads) {
        const int d = i / kCols, j = j0 + i % kCols;
        if (j < Dv) s_out[soff + static_cast<size_t>(d) * Dv + j] = from_float<T>(sS[i]);
    }
}

}  // namespace gla

#define GLA_ARGS(T)                                                                                      \
    const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ v, const T *__restrict__ g, \
        const T *__restrict__ s0, int BH, int T_, int Dk, int Dv, T *__restrict__ o, T *__restrict__ s_out
#define GLA_CALL q, k, v, g, s0, BH, T_, Dk, Dv, o, s_out

#define GLA_KERNELS(SUFFIX, T)                                                                                     \
    extern "C" __global__ void __launch_bounds__(128) gla_recurrent_##SUFFIX(GLA_ARGS(T)) { gla::recurrent<T>(GLA_CALL); } \
    extern "C" __global__ void __launch_bounds__(128) gla_chunked_##SUFFIX(GLA_ARGS(T)) { gla::chunked<T>(GLA_CALL); }

GLA_KERNELS(f32, float)
GLA_KERNELS(f16, __half)
GLA_KERNELS(bf16, __nv_bfloat16)
