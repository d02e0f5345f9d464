// Causal self-attention on the GPU, multi-head over a packed qkv and grouped-query (Ainslie et al.
// 2023: query head h reads kv head h / (NH / KVH)), one implementation for both, as
// ops/cpu/attention.cpp. fp32, scale 1/sqrt(hs), hs <= kMaxHs.
//
// Memory as the CPU op (FlashAttention's scheme, Dao et al. 2022): no (T, T) matrix anywhere.
//  forward:  one warp per query row (b, h, t), an online softmax (Milakov & Gimelshein 2018) over
//            keys 0..t in chunks of 32; lse (B, NH, T) saved.
//  backward: P recomputed from q, k and lse, p_ts = exp(scale q_t . k_s - lse_t), in two kernels
//            that each own their outputs (no atomics, a fixed summation order: deterministic):
//   (a) one warp per query row t:  dq_t = scale sum_{s<=t} p_ts (dout_t . v_s - D_t) k_s;
//   (b) one warp per key row s of a kv head, summing the group's query heads in order, then
//       t ascending:               dk_s = scale sum_h sum_{t>=s} p_ts (dout_t . v_s - D_t) q_t,
//                                  dv_s = sum_h sum_{t>=s} p_ts dout_t;
//       with D_t = dout_t . out_t recomputed where it is needed (no workspace: the signature is
//       the CPU op's) by the same serial dot in both kernels, so both see the same bits.
// Scores are computed lane-per-key (lane j: key s0 + j, a serial dot of length hs against the
// query row held in shared memory), so a chunk of 32 keys costs no shuffles; weighted sums over a
// chunk are lane-per-dimension (coalesced rows of v, k, q, dout), the chunk's weights broadcast by
// __shfl_sync. Simple and exact in structure; a tiled tensor-core kernel is to replace it.
// Every kernel is templated over the storage type T of q, k, v, out, dout and the gradients (float,
// or bf16: loads widen, stores round once, bf16.cuh); lse and all arithmetic stay fp32.
#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <string_view>
#include <type_traits>

#include "core/error.h"
#include "ops/cuda/attention.cuh"
#include "ops/cuda/bf16.cuh"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops_cuda.h"

namespace lmf::cuda {
namespace {

using detail::Heads;

using detail::kWarp;
using detail::load;
using detail::store;
using detail::warp_sum;

constexpr int kMaxHs = 256;        // head size limit: 8 dimensions per lane
constexpr int kWarpsPerBlock = 4;  // rows per block
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, off));
  return v;
}

// a (n) . b (n), serially in d order: the one dot product every score and D_t goes through.
template <class A, class B>
__device__ __forceinline__ float dot_serial(const A* a, const B* b, int n) {
  float s = 0.0f;
  for (int d = 0; d < n; ++d) s += load(a + d) * load(b + d);
  return s;
}

// Copies one row (hs) into a warp's shared buffer, then makes it visible to the whole warp.
template <class T>
__device__ __forceinline__ void load_row(float* dst, const T* src, int hs, int lane) {
  for (int d = lane; d < hs; d += kWarp) dst[d] = load(src + d);
  __syncwarp();
}

// out (B, T, ldo), lse (B, NH, T). Warp per query row; kPer dimensions per lane (d = lane + 32 i).
template <class T, int kPer>
__global__ void attn_fwd_kernel(T* __restrict__ out, float* __restrict__ lse,
                                const T* __restrict__ q, const T* __restrict__ k,
                                const T* __restrict__ v, Heads g) {
  __shared__ float q_sh[kWarpsPerBlock][kMaxHs];
  const int lane = threadIdx.x % kWarp, w = threadIdx.x / kWarp;
  const long row = (long)blockIdx.x * kWarpsPerBlock + w;  // (b, h, t), t fastest
  if (row >= (long)g.B * g.NH * g.T) return;               // uniform across the warp
  const int t = (int)(row % g.T), h = (int)(row / g.T % g.NH), b = (int)(row / g.T / g.NH);
  const int hs = g.hs, kh = h / (g.NH / g.KVH);
  const T* kk = k + (size_t)b * g.T * g.ldkv + (size_t)kh * hs;  // (T, hs), ld ldkv
  const T* vv = v + (size_t)b * g.T * g.ldkv + (size_t)kh * hs;
  float* qs = q_sh[w];
  load_row(qs, q + ((size_t)b * g.T + t) * g.ldq + (size_t)h * hs, hs, lane);

  // Invariant after each chunk: m = max score so far, l = sum exp(score - m), acc = sum exp(score
  // - m) v, over the keys seen. Key 0 is always visible, so m is finite after the first chunk.
  float m = -INFINITY, l = 0.0f, acc[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) acc[i] = 0.0f;
  for (int s0 = 0; s0 <= t; s0 += kWarp) {
    const int s = s0 + lane, n = min(kWarp, t + 1 - s0);
    const bool valid = s <= t;
    const float score = valid ? dot_serial(qs, kk + (size_t)s * g.ldkv, hs) * g.scale : -INFINITY;
    const float m_new = fmaxf(m, warp_max(score));
    const float corr = expf(m - m_new);  // 0 on the first chunk (m = -inf)
    const float p = valid ? expf(score - m_new) : 0.0f;
    l = l * corr + warp_sum(p);
#pragma unroll
    for (int i = 0; i < kPer; ++i) acc[i] *= corr;
    for (int j = 0; j < n; ++j) {
      const float pj = __shfl_sync(kFull, p, j);
      const T* vrow = vv + (size_t)(s0 + j) * g.ldkv;
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const int d = lane + i * kWarp;
        if (d < hs) acc[i] += pj * load(vrow + d);
      }
    }
    m = m_new;
  }
  T* o = out + ((size_t)b * g.T + t) * g.ldo + (size_t)h * hs;
  const float inv = 1.0f / l;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int d = lane + i * kWarp;
    if (d < hs) store(o + d, acc[i] * inv);
  }
  if (lane == 0) lse[((size_t)b * g.NH + h) * g.T + t] = m + logf(l);
}

// (a) dq (B, T, ldq) assigned. Warp per query row (b, h, t).
template <class T, int kPer>
__global__ void attn_bwd_dq_kernel(T* __restrict__ dq, const T* __restrict__ dout,
                                   const T* __restrict__ q, const T* __restrict__ k,
                                   const T* __restrict__ v, const T* __restrict__ out,
                                   const float* __restrict__ lse, Heads g) {
  __shared__ float q_sh[kWarpsPerBlock][kMaxHs];
  __shared__ float do_sh[kWarpsPerBlock][kMaxHs];
  const int lane = threadIdx.x % kWarp, w = threadIdx.x / kWarp;
  const long row = (long)blockIdx.x * kWarpsPerBlock + w;
  if (row >= (long)g.B * g.NH * g.T) return;
  const int t = (int)(row % g.T), h = (int)(row / g.T % g.NH), b = (int)(row / g.T / g.NH);
  const int hs = g.hs, kh = h / (g.NH / g.KVH);
  const T* kk = k + (size_t)b * g.T * g.ldkv + (size_t)kh * hs;  // (T, hs), ld ldkv
  const T* vv = v + (size_t)b * g.T * g.ldkv + (size_t)kh * hs;
  const size_t orow = ((size_t)b * g.T + t) * g.ldo + (size_t)h * hs;
  float* qs = q_sh[w];
  float* dos = do_sh[w];
  load_row(qs, q + ((size_t)b * g.T + t) * g.ldq + (size_t)h * hs, hs, lane);
  load_row(dos, dout + orow, hs, lane);
  const float D = dot_serial(dos, out + orow, hs);  // every lane, the same bits
  const float lse_t = lse[((size_t)b * g.NH + h) * g.T + t];

  float acc[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) acc[i] = 0.0f;
  for (int s0 = 0; s0 <= t; s0 += kWarp) {
    const int s = s0 + lane, n = min(kWarp, t + 1 - s0);
    float ds = 0.0f;  // dS_ts = p_ts (dP_ts - D_t) scale, 0 for masked keys
    if (s <= t) {
      const float p = expf(dot_serial(qs, kk + (size_t)s * g.ldkv, hs) * g.scale - lse_t);
      const float dp = dot_serial(dos, vv + (size_t)s * g.ldkv, hs);
      ds = p * (dp - D) * g.scale;
    }
    for (int j = 0; j < n; ++j) {
      const float dsj = __shfl_sync(kFull, ds, j);
      const T* krow = kk + (size_t)(s0 + j) * g.ldkv;
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const int d = lane + i * kWarp;
        if (d < hs) acc[i] += dsj * load(krow + d);
      }
    }
  }
  T* dqr = dq + ((size_t)b * g.T + t) * g.ldq + (size_t)h * hs;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int d = lane + i * kWarp;
    if (d < hs) store(dqr + d, acc[i]);
  }
}

// (b) dk, dv (B, T, ldkv) assigned. Warp per key row (b, kh, s); the group's query heads in
// ascending order, query rows t = s..T-1 ascending.
template <class T, int kPer>
__global__ void attn_bwd_dkv_kernel(T* __restrict__ dk, T* __restrict__ dv,
                                    const T* __restrict__ dout, const T* __restrict__ q,
                                    const T* __restrict__ k, const T* __restrict__ v,
                                    const T* __restrict__ out, const float* __restrict__ lse,
                                    Heads g) {
  __shared__ float k_sh[kWarpsPerBlock][kMaxHs];
  __shared__ float v_sh[kWarpsPerBlock][kMaxHs];
  const int lane = threadIdx.x % kWarp, w = threadIdx.x / kWarp;
  const long row = (long)blockIdx.x * kWarpsPerBlock + w;  // (b, kh, s), s fastest
  if (row >= (long)g.B * g.KVH * g.T) return;
  const int s = (int)(row % g.T), kh = (int)(row / g.T % g.KVH), b = (int)(row / g.T / g.KVH);
  const int hs = g.hs, group = g.NH / g.KVH;
  const size_t kvrow = ((size_t)b * g.T + s) * g.ldkv + (size_t)kh * hs;
  float* ks = k_sh[w];
  float* vs = v_sh[w];
  load_row(ks, k + kvrow, hs, lane);
  load_row(vs, v + kvrow, hs, lane);

  float dk_acc[kPer], dv_acc[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) dk_acc[i] = dv_acc[i] = 0.0f;
  for (int h = kh * group; h < (kh + 1) * group; ++h) {
    const T* qq = q + (size_t)b * g.T * g.ldq + (size_t)h * hs;         // (T, hs), ld ldq
    const T* oo = out + (size_t)b * g.T * g.ldo + (size_t)h * hs;       // (T, hs), ld ldo
    const T* dd = dout + (size_t)b * g.T * g.ldo + (size_t)h * hs;      // (T, hs), ld ldo
    const float* lse_bh = lse + ((size_t)b * g.NH + h) * g.T;           // (T)
    for (int t0 = s; t0 < g.T; t0 += kWarp) {
      const int t = t0 + lane, n = min(kWarp, g.T - t0);
      float p = 0.0f, ds = 0.0f;  // p_ts and dS_ts for query row t (0 past the end)
      if (t < g.T) {
        const T* do_t = dd + (size_t)t * g.ldo;
        p = expf(dot_serial(qq + (size_t)t * g.ldq, ks, hs) * g.scale - lse_bh[t]);
        const float D = dot_serial(do_t, oo + (size_t)t * g.ldo, hs);
        const float dp = dot_serial(do_t, vs, hs);
        ds = p * (dp - D) * g.scale;
      }
      for (int j = 0; j < n; ++j) {
        const float pj = __shfl_sync(kFull, p, j), dsj = __shfl_sync(kFull, ds, j);
        const T* qrow = qq + (size_t)(t0 + j) * g.ldq;
        const T* dorow = dd + (size_t)(t0 + j) * g.ldo;
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
          const int d = lane + i * kWarp;
          if (d < hs) {
            dk_acc[i] += dsj * load(qrow + d);
            dv_acc[i] += pj * load(dorow + d);
          }
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int d = lane + i * kWarp;
    if (d < hs) {
      store(dk + kvrow + d, dk_acc[i]);
      store(dv + kvrow + d, dv_acc[i]);
    }
  }
}

void check_heads(int NH, int KVH, int hs) {
  LMF_CHECK(NH > 0 && KVH > 0 && hs > 0 && NH % KVH == 0,
            "cuda attention: NH={} not a positive multiple of KVH={} (hs={})", NH, KVH, hs);
  LMF_CHECK(hs <= kMaxHs, "cuda attention: head size {} above the kernels' limit {}", hs, kMaxHs);
}

Heads make_heads(int B, int T, int NH, int KVH, int hs, int ldq, int ldkv, int ldo) {
  return Heads{B, T, NH, KVH, hs, ldq, ldkv, ldo, 1.0f / std::sqrt((float)hs)};
}

unsigned row_blocks(long rows) { return (unsigned)((rows + kWarpsPerBlock - 1) / kWarpsPerBlock); }

// Calls f(std::integral_constant<int, kPer>{}) with kPer the dimensions per lane, ceil(hs / 32)
// rounded up to a power of two (1, 2, 4, 8).
template <class F>
void dispatch_per_lane(int hs, F f) {
  if (hs <= kWarp) {
    f(std::integral_constant<int, 1>{});
  } else if (hs <= 2 * kWarp) {
    f(std::integral_constant<int, 2>{});
  } else if (hs <= 4 * kWarp) {
    f(std::integral_constant<int, 4>{});
  } else {
    f(std::integral_constant<int, 8>{});
  }
}

AttentionKernel initial_kernel() {
  const char* e = std::getenv("LMF_CUDA_ATTENTION");
  if (e == nullptr || std::string_view(e).empty() || std::string_view(e) == "tiled") return AttentionKernel::tiled;
  if (std::string_view(e) == "rowwise") return AttentionKernel::rowwise;
  throw UserError("LMF_CUDA_ATTENTION: expected rowwise or tiled (got \"{}\")", e);
}

std::atomic<AttentionKernel>& kernel_choice() {
  static std::atomic<AttentionKernel> k{initial_kernel()};
  return k;
}

bool use_tiled(const Heads& g) {
  return kernel_choice().load() == AttentionKernel::tiled && g.hs <= detail::kTiledMaxHs;
}

// bf16 products run on the tensor cores where those kernels take the head size; otherwise (and
// for fp32 and tf32) the fp32 kernels run, as for every op outside the GEMMs.
bool use_mma(const Heads& g, ops::MatmulPrecision p) {
  return p == ops::MatmulPrecision::bf16 && detail::mma_supported(g);
}

template <class T>
void forward_impl(T* out, float* lse, const T* q, const T* k, const T* v, const Heads& g,
                  cudaStream_t stream, ops::MatmulPrecision p) {
  const long rows = (long)g.B * g.NH * g.T;
  if (rows == 0) return;
  if (use_mma(g, p)) return detail::mma_forward(out, lse, q, k, v, g, stream);
  if (use_tiled(g)) return detail::tiled_forward(out, lse, q, k, v, g, stream);
  dispatch_per_lane(g.hs, [&](auto per) {
    LMF_LAUNCH((attn_fwd_kernel<T, decltype(per)::value>), row_blocks(rows), kWarpsPerBlock * kWarp,
               0, stream)
    (out, lse, q, k, v, g);
  });
  LMF_CUDA_CHECK_LAUNCH();
}

template <class T>
void backward_impl(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                   const T* out, const float* lse, const Heads& g, cudaStream_t stream,
                   ops::MatmulPrecision p) {
  const long qrows = (long)g.B * g.NH * g.T, kvrows = (long)g.B * g.KVH * g.T;
  if (qrows == 0) return;
  if (use_mma(g, p)) return detail::mma_backward(dq, dk, dv, dout, q, k, v, out, lse, g, stream);
  if (use_tiled(g)) return detail::tiled_backward(dq, dk, dv, dout, q, k, v, out, lse, g, stream);
  dispatch_per_lane(g.hs, [&](auto per) {
    constexpr int kPer = decltype(per)::value;
    LMF_LAUNCH((attn_bwd_dq_kernel<T, kPer>), row_blocks(qrows), kWarpsPerBlock * kWarp, 0, stream)
    (dq, dout, q, k, v, out, lse, g);
    LMF_CUDA_CHECK_LAUNCH();
    LMF_LAUNCH((attn_bwd_dkv_kernel<T, kPer>), row_blocks(kvrows), kWarpsPerBlock * kWarp, 0,
               stream)
    (dk, dv, dout, q, k, v, out, lse, g);
    LMF_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

void set_attention_kernel(AttentionKernel k) { kernel_choice().store(k); }
AttentionKernel attention_kernel() { return kernel_choice().load(); }

namespace {

template <class F>
void packed_forward(F* out, float* lse, const F* qkv, int B, int T, int C, int NH,
                    cudaStream_t stream, ops::MatmulPrecision p) {
  LMF_CHECK(NH > 0 && C % NH == 0, "cuda attention: C={} not divisible by NH={}", C, NH);
  check_heads(NH, NH, C / NH);
  const Heads g = make_heads(B, T, NH, NH, C / NH, 3 * C, 3 * C, C);
  forward_impl(out, lse, qkv, qkv + C, qkv + 2 * C, g, stream, p);
}

template <class F>
void packed_backward(F* dqkv, const F* dout, const F* qkv, const F* out, const float* lse, int B,
                     int T, int C, int NH, cudaStream_t stream, ops::MatmulPrecision p) {
  LMF_CHECK(NH > 0 && C % NH == 0, "cuda attention: C={} not divisible by NH={}", C, NH);
  check_heads(NH, NH, C / NH);
  const Heads g = make_heads(B, T, NH, NH, C / NH, 3 * C, 3 * C, C);
  backward_impl(dqkv, dqkv + C, dqkv + 2 * C, dout, qkv, qkv + C, qkv + 2 * C, out, lse, g, stream, p);
}

template <class F>
void gqa_forward(F* out, float* lse, const F* q, const F* k, const F* v, int B, int T, int NH,
                 int KVH, int hs, cudaStream_t stream, ops::MatmulPrecision p) {
  check_heads(NH, KVH, hs);
  const Heads g = make_heads(B, T, NH, KVH, hs, NH * hs, KVH * hs, NH * hs);
  forward_impl(out, lse, q, k, v, g, stream, p);
}

template <class F>
void gqa_backward(F* dq, F* dk, F* dv, const F* dout, const F* q, const F* k, const F* v,
                  const F* out, const float* lse, int B, int T, int NH, int KVH, int hs,
                  cudaStream_t stream, ops::MatmulPrecision p) {
  check_heads(NH, KVH, hs);
  const Heads g = make_heads(B, T, NH, KVH, hs, NH * hs, KVH * hs, NH * hs);
  backward_impl(dq, dk, dv, dout, q, k, v, out, lse, g, stream, p);
}

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH,
                       cudaStream_t stream, ops::MatmulPrecision p) {
  packed_forward(out, lse, qkv, B, T, C, NH, stream, p);
}
void attention_forward(bf16* out, float* lse, const bf16* qkv, int B, int T, int C, int NH,
                       cudaStream_t stream, ops::MatmulPrecision p) {
  packed_forward(out, lse, qkv, B, T, C, NH, stream, p);
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int C, int NH, cudaStream_t stream,
                        ops::MatmulPrecision p) {
  packed_backward(dqkv, dout, qkv, out, lse, B, T, C, NH, stream, p);
}
void attention_backward(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                        const float* lse, int B, int T, int C, int NH, cudaStream_t stream,
                        ops::MatmulPrecision p) {
  packed_backward(dqkv, dout, qkv, out, lse, B, T, C, NH, stream, p);
}

void attention_gqa_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                           int B, int T, int NH, int KVH, int hs, cudaStream_t stream,
                           ops::MatmulPrecision p) {
  gqa_forward(out, lse, q, k, v, B, T, NH, KVH, hs, stream, p);
}
void attention_gqa_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                           int B, int T, int NH, int KVH, int hs, cudaStream_t stream,
                           ops::MatmulPrecision p) {
  gqa_forward(out, lse, q, k, v, B, T, NH, KVH, hs, stream, p);
}

void attention_gqa_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                            const float* k, const float* v, const float* out, const float* lse,
                            int B, int T, int NH, int KVH, int hs, cudaStream_t stream,
                            ops::MatmulPrecision p) {
  gqa_backward(dq, dk, dv, dout, q, k, v, out, lse, B, T, NH, KVH, hs, stream, p);
}
void attention_gqa_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q,
                            const bf16* k, const bf16* v, const bf16* out, const float* lse, int B,
                            int T, int NH, int KVH, int hs, cudaStream_t stream,
                            ops::MatmulPrecision p) {
  gqa_backward(dq, dk, dv, dout, q, k, v, out, lse, B, T, NH, KVH, hs, stream, p);
}

}  // namespace lmf::cuda
