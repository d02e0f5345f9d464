// Causal (grouped-query) attention on the GPU in tiles, FlashAttention-2's schedule (Dao 2023) on
// the CUDA cores in fp32: a block of 256 threads owns a tile of rows, walks the tiles of the other
// side through shared memory, and keeps its accumulators in registers. Against the row kernels of
// attention.cu, each k and v row is read from global memory once per tile of 64 query rows instead
// of once per query row. The arithmetic is theirs: every score and D_t a serial dot in d order, the
// forward's online softmax over chunks of 32 keys (so the same error bound), P recomputed from lse
// in the backward, and two backward kernels that each own their outputs (no atomics, fixed
// summation orders: deterministic).
//
//  forward  (block: b, h, 64 query rows; 32 keys per step): thread (r, c4) = (tid / 4, tid % 4)
//           scores its row r against keys c4, c4 + 4, ..., c4 + 28, the row's four threads agree on
//           the running max and sum by shuffles, write their p to a shared (64, 33) tile, and then
//           each accumulates dimensions c4, c4 + 4, ... of its row: acc = corr acc + sum_c p_c v_c.
//  dq       (block: b, h, 64 query rows; 32 keys per step): the same layout; dS_tc =
//           p_tc (dout_t . v_c - D_t) scale through a shared tile, dq_t = sum_c dS_tc k_c.
//  dk, dv   (block: b, kv head, 64 key rows; the group's query heads in order, 32 query rows per
//           step from the diagonal on): thread (s, c4) owns key row s, queries c4, c4 + 4, ...;
//           dv_s = sum p_ts dout_t, dk_s = sum dS_ts q_t, in (h, t) ascending order. D_t is
//           dq's, which it leaves in a per-device buffer (device_scratch), not recomputed for
//           every key tile.
// Shared rows are padded to hs + 1 floats, so the threads of a warp, which read 8 rows at the same
// d, hit 8 different banks.
// Templated over the storage type T of q, k, v, out, dout and the gradients (float or bf16,
// bf16.cuh): tiles are widened into fp32 shared memory, outputs rounded once as stored.
#include <cuda_runtime.h>

#include <cmath>
#include <mutex>
#include <type_traits>

#include "core/error.h"
#include "ops/cuda/attention.cuh"
#include "ops/cuda/bf16.cuh"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/launch.cuh"

namespace lmf::cuda::detail {
namespace {

constexpr int kThreadsT = 256;   // 64 rows x 4 threads
constexpr int kRows = 64;        // rows a block owns (queries in forward and dq, keys in dk/dv)
constexpr int kStep = 32;        // rows of the other side per step (8 per thread)
constexpr int kPad = kStep + 1;  // a (kRows, kStep) score tile's row stride


// a (n) . b (n) in d order: the same serial dot as attention.cu's dot_serial.
template <class B>
__device__ __forceinline__ float dot_in_order(const float* a, const B* b, int n) {
  float s = 0.0f;
  for (int d = 0; d < n; ++d) s += a[d] * load(b + d);
  return s;
}

// out[j] = a . b_j for the thread's 8 rows b_j = b + 4 j ld (its rows c4, c4 + 4, ... of a
// tile), each a serial sum in d order (the bits of dot_in_order), with d outermost so that a[d]
// is read once for all eight.
__device__ __forceinline__ void scores(float (&out)[kStep / 4], const float* a, const float* b,
                                       int ld, int hs) {
#pragma unroll
  for (int j = 0; j < kStep / 4; ++j) out[j] = 0.0f;
  for (int d = 0; d < hs; ++d) {
    const float ad = a[d];
#pragma unroll
    for (int j = 0; j < kStep / 4; ++j) out[j] += ad * b[4 * j * ld + d];
  }
}

// rows [r0, r0 + n) of a (T, hs) head with row stride ld_src into shared dst (n, ld); rows past
// T are zero.
template <class F>
__device__ __forceinline__ void load_tile(float* dst, int ld, const F* src, int ld_src, int r0,
                                          int n, int T, int hs) {
  for (int i = threadIdx.x; i < n * hs; i += kThreadsT) {
    const int r = i / hs, d = i % hs;
    dst[r * ld + d] = r0 + r < T ? load(src + (size_t)(r0 + r) * ld_src + d) : 0.0f;
  }
}

// A query-tile block's place (forward and dq): batch b, query head h reading kv head kh, the
// tile's first row q0, and this thread's row r (query t, in range if row_ok) and quarter c4.
struct QueryTilePlace {
  int b, h, kh, r, c4, q0, t;
  bool row_ok;
};
__device__ __forceinline__ QueryTilePlace query_tile_place(const Heads& g) {
  int qt, h, b;
  block_place((g.T + kRows - 1) / kRows, g.NH, qt, h, b);
  const int r = threadIdx.x / 4, q0 = qt * kRows;
  return {b, h, h / (g.NH / g.KVH), r, int(threadIdx.x % 4), q0, q0 + r, q0 + r < g.T};
}

// acc[i] += sum_c w[c] tile[c][c4 + 4 i] over the step's kStep rows, c ascending: a thread's
// dimensions of its row, from a shared tile (ld) weighted by its row's shared weights w (kStep).
template <int kPer>
__device__ __forceinline__ void accumulate_rows(float (&acc)[kPer], const float* w,
                                                const float* tile, int ld, int c4, int hs) {
  for (int c = 0; c < kStep; ++c) {
    const float wc = w[c];
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int d = c4 + 4 * i;
      if (d < hs) acc[i] += wc * tile[c * ld + d];
    }
  }
}

// dst[c4 + 4 i] = acc[i] * s: a thread's dimensions of its row.
template <int kPer, class F>
__device__ __forceinline__ void store_row(F* dst, const float (&acc)[kPer], float s, int c4,
                                          int hs) {
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int d = c4 + 4 * i;
    if (d < hs) store(dst + d, acc[i] * s);
  }
}

template <class F, int kPer>  // dimensions per thread: ceil(hs / 4) rounded up to 8, 16 or 32
__global__ void __launch_bounds__(kThreadsT)
    fwd_tiled(F* __restrict__ out, float* __restrict__ lse, const F* __restrict__ q,
              const F* __restrict__ k, const F* __restrict__ v, Heads g) {
  LMF_DYNAMIC_SHARED(float, sm);
  const int hs = g.hs, ld = hs + 1;
  float* Qs = sm;               // (kRows, ld)
  float* Ks = Qs + kRows * ld;  // (kStep, ld)
  float* Vs = Ks + kStep * ld;  // (kStep, ld)
  float* Ps = Vs + kStep * ld;  // (kRows, kPad)
  const auto [b, h, kh, r, c4, q0, t, row_ok] = query_tile_place(g);
  const F* qh = q + (size_t)b * g.T * g.ldq + (size_t)h * hs;
  const F* kb = k + (size_t)b * g.T * g.ldkv + (size_t)kh * hs;
  const F* vb = v + (size_t)b * g.T * g.ldkv + (size_t)kh * hs;
  load_tile(Qs, ld, qh, g.ldq, q0, kRows, g.T, hs);

  // Invariant after each step, for row t: m = max score so far, l = sum exp(score - m), acc =
  // sum exp(score - m) v, over the keys seen. Key 0 comes first and is visible to every row, so
  // m is finite from the first step on (for rows past T it stays -inf, and nothing is written).
  float m = -INFINITY, l = 0.0f, acc[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) acc[i] = 0.0f;
  const int last_key = min(g.T, q0 + kRows) - 1;
  for (int k0 = 0; k0 <= last_key; k0 += kStep) {
    __syncthreads();  // the previous step's tiles are no longer read
    load_tile(Ks, ld, kb, g.ldkv, k0, kStep, g.T, hs);
    load_tile(Vs, ld, vb, g.ldkv, k0, kStep, g.T, hs);
    __syncthreads();
    float s[kStep / 4];
    scores(s, Qs + r * ld, Ks + c4 * ld, ld, hs);
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < kStep / 4; ++j) {
      s[j] = row_ok && k0 + c4 + 4 * j <= t ? s[j] * g.scale : -INFINITY;
      mx = fmaxf(mx, s[j]);
    }
    const float m_new = fmaxf(m, quad_max(mx));
    const float corr = m == -INFINITY ? 0.0f : expf(m - m_new);
    float psum = 0.0f;
#pragma unroll
    for (int j = 0; j < kStep / 4; ++j) {
      const float p = s[j] == -INFINITY ? 0.0f : expf(s[j] - m_new);
      Ps[r * kPad + c4 + 4 * j] = p;
      psum += p;
    }
    l = l * corr + quad_sum(psum);
    m = m_new;
    __syncwarp();  // the row's p, written by its four threads (one warp), visible to all four
#pragma unroll
    for (int i = 0; i < kPer; ++i) acc[i] *= corr;
    accumulate_rows(acc, Ps + r * kPad, Vs, ld, c4, hs);
  }
  if (!row_ok) return;
  store_row(out + ((size_t)b * g.T + t) * g.ldo + (size_t)h * hs, acc, 1.0f / l, c4, hs);
  if (c4 == 0) lse[((size_t)b * g.NH + h) * g.T + t] = m + logf(l);
}

template <class F, int kPer>
__global__ void __launch_bounds__(kThreadsT)
    dq_tiled(F* __restrict__ dq, const F* __restrict__ dout, const F* __restrict__ q,
             const F* __restrict__ k, const F* __restrict__ v, const F* __restrict__ out,
             const float* __restrict__ lse, float* __restrict__ drow, Heads g) {
  LMF_DYNAMIC_SHARED(float, sm);
  const int hs = g.hs, ld = hs + 1;
  float* Qs = sm;               // (kRows, ld)
  float* Ds = Qs + kRows * ld;  // dout rows (kRows, ld)
  float* Ks = Ds + kRows * ld;  // (kStep, ld)
  float* Vs = Ks + kStep * ld;  // (kStep, ld)
  float* Ss = Vs + kStep * ld;  // dS (kRows, kPad)
  const auto [b, h, kh, r, c4, q0, t, row_ok] = query_tile_place(g);
  const F* kb = k + (size_t)b * g.T * g.ldkv + (size_t)kh * hs;
  const F* vb = v + (size_t)b * g.T * g.ldkv + (size_t)kh * hs;
  load_tile(Qs, ld, q + (size_t)b * g.T * g.ldq + (size_t)h * hs, g.ldq, q0, kRows, g.T, hs);
  load_tile(Ds, ld, dout + (size_t)b * g.T * g.ldo + (size_t)h * hs, g.ldo, q0, kRows, g.T, hs);
  __syncthreads();
  float D = 0.0f, lse_t = 0.0f;
  if (row_ok) {
    D = dot_in_order(Ds + r * ld, out + ((size_t)b * g.T + t) * g.ldo + (size_t)h * hs, hs);
    lse_t = lse[((size_t)b * g.NH + h) * g.T + t];
    if (c4 == 0) drow[((size_t)b * g.NH + h) * g.T + t] = D;  // for dkv_tiled
  }
  float acc[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) acc[i] = 0.0f;
  const int last_key = min(g.T, q0 + kRows) - 1;
  for (int k0 = 0; k0 <= last_key; k0 += kStep) {
    __syncthreads();
    load_tile(Ks, ld, kb, g.ldkv, k0, kStep, g.T, hs);
    load_tile(Vs, ld, vb, g.ldkv, k0, kStep, g.T, hs);
    __syncthreads();
    float qk[kStep / 4], dp[kStep / 4];
    scores(qk, Qs + r * ld, Ks + c4 * ld, ld, hs);
    scores(dp, Ds + r * ld, Vs + c4 * ld, ld, hs);
#pragma unroll
    for (int j = 0; j < kStep / 4; ++j) {
      const int c = c4 + 4 * j;
      float ds = 0.0f;  // dS_tc = p_tc (dP_tc - D_t) scale, 0 for masked keys
      if (row_ok && k0 + c <= t) ds = expf(qk[j] * g.scale - lse_t) * (dp[j] - D) * g.scale;
      Ss[r * kPad + c] = ds;
    }
    __syncwarp();
    accumulate_rows(acc, Ss + r * kPad, Ks, ld, c4, hs);
  }
  if (!row_ok) return;
  store_row(dq + ((size_t)b * g.T + t) * g.ldq + (size_t)h * hs, acc, 1.0f, c4, hs);
}

template <class F, int kPer>
__global__ void __launch_bounds__(kThreadsT)
    dkv_tiled(F* __restrict__ dk, F* __restrict__ dv, const F* __restrict__ dout,
              const F* __restrict__ q, const F* __restrict__ k, const F* __restrict__ v,
              const float* __restrict__ lse, const float* __restrict__ drow, Heads g) {
  LMF_DYNAMIC_SHARED(float, sm);
  const int hs = g.hs, ld = hs + 1;
  float* Ks = sm;                 // (kRows, ld)
  float* Vs = Ks + kRows * ld;    // (kRows, ld)
  float* Qs = Vs + kRows * ld;    // (kStep, ld)
  float* Os = Qs + kStep * ld;    // dout rows (kStep, ld)
  float* Ps = Os + kStep * ld;    // (kRows, kPad)
  float* Ss = Ps + kRows * kPad;  // dS (kRows, kPad)
  float* Dq = Ss + kRows * kPad;  // D_t (kStep)
  float* Lq = Dq + kStep;         // lse_t (kStep)
  const int tiles = (g.T + kRows - 1) / kRows;
  int st, kh, b;
  block_place(tiles, g.KVH, st, kh, b);
  const int group = g.NH / g.KVH;
  const int r = threadIdx.x / 4, c4 = threadIdx.x % 4;
  const int k0 = st * kRows, s = k0 + r;
  const bool row_ok = s < g.T;
  const size_t kv_at = (size_t)b * g.T * g.ldkv + (size_t)kh * hs;
  load_tile(Ks, ld, k + kv_at, g.ldkv, k0, kRows, g.T, hs);
  load_tile(Vs, ld, v + kv_at, g.ldkv, k0, kRows, g.T, hs);

  float dk_acc[kPer], dv_acc[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) dk_acc[i] = dv_acc[i] = 0.0f;
  for (int h = kh * group; h < (kh + 1) * group; ++h) {
    const F* qh = q + (size_t)b * g.T * g.ldq + (size_t)h * hs;
    const F* dh = dout + (size_t)b * g.T * g.ldo + (size_t)h * hs;
    const float* lse_bh = lse + ((size_t)b * g.NH + h) * g.T;
    const float* d_bh = drow + ((size_t)b * g.NH + h) * g.T;  // dq_tiled's D_t
    for (int q0 = k0; q0 < g.T; q0 += kStep) {  // queries before k0 see none of these keys
      __syncthreads();
      load_tile(Qs, ld, qh, g.ldq, q0, kStep, g.T, hs);
      load_tile(Os, ld, dh, g.ldo, q0, kStep, g.T, hs);
      if (threadIdx.x < kStep) {
        const int t = q0 + threadIdx.x;
        Dq[threadIdx.x] = t < g.T ? d_bh[t] : 0.0f;
        Lq[threadIdx.x] = t < g.T ? lse_bh[t] : 0.0f;
      }
      __syncthreads();
      float qk[kStep / 4], dp[kStep / 4];
      scores(qk, Ks + r * ld, Qs + c4 * ld, ld, hs);
      scores(dp, Vs + r * ld, Os + c4 * ld, ld, hs);
#pragma unroll
      for (int j = 0; j < kStep / 4; ++j) {
        const int c = c4 + 4 * j, t = q0 + c;
        float p = 0.0f, ds = 0.0f;
        if (row_ok && t < g.T && t >= s) {
          p = expf(qk[j] * g.scale - Lq[c]);
          ds = p * (dp[j] - Dq[c]) * g.scale;
        }
        Ps[r * kPad + c] = p;
        Ss[r * kPad + c] = ds;
      }
      __syncwarp();
      accumulate_rows(dv_acc, Ps + r * kPad, Os, ld, c4, hs);
      accumulate_rows(dk_acc, Ss + r * kPad, Qs, ld, c4, hs);
    }
  }
  if (!row_ok) return;
  const size_t at = kv_at + (size_t)s * g.ldkv;
  store_row(dk + at, dk_acc, 1.0f, c4, hs);
  store_row(dv + at, dv_acc, 1.0f, c4, hs);
}

// Shared memory of each kernel, in floats, for head size hs.
inline size_t fwd_floats(int hs) {
  return size_t(kRows + 2 * kStep) * (hs + 1) + size_t(kRows) * kPad;
}
inline size_t dq_floats(int hs) {
  return size_t(2 * kRows + 2 * kStep) * (hs + 1) + size_t(kRows) * kPad;
}
inline size_t dkv_floats(int hs) {
  return size_t(2 * kRows + 2 * kStep) * (hs + 1) + 2 * size_t(kRows) * kPad + 2 * size_t(kStep);
}

// Launches Kernel with `bytes` of dynamic shared memory, raising the kernel's limit (once per
// kernel and process, for the current device) to the most any head size needs; above 48 KiB
// that is an opt-in (all sm_70+ GPUs).
template <auto Kernel, class... Args>
void launch(unsigned blocks, size_t bytes, size_t max_bytes, cudaStream_t stream, Args... args) {
  static std::once_flag once;
  std::call_once(once, [&] {
    LMF_CUDA_CHECK(
        cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)max_bytes));
  });
  LMF_LAUNCH(Kernel, blocks, kThreadsT, bytes, stream)(args...);
  LMF_CUDA_CHECK_LAUNCH();
}

// f(std::integral_constant<int, kPer>{}), kPer = dimensions per thread for hs (hs <= 128).
template <class F>
void dispatch_per_thread(int hs, F f) {
  if (hs <= 32) {
    f(std::integral_constant<int, 8>{});
  } else if (hs <= 64) {
    f(std::integral_constant<int, 16>{});
  } else {
    f(std::integral_constant<int, 32>{});
  }
}

}  // namespace

template <class F>
void tiled_forward(F* out, float* lse, const F* q, const F* k, const F* v, const Heads& g,
                   cudaStream_t stream) {
  LMF_CHECK(g.hs <= kTiledMaxHs, "tiled attention: head size {} above {}", g.hs, kTiledMaxHs);
  if (g.B == 0 || g.T == 0) return;
  const unsigned blocks = (unsigned)((long)g.B * g.NH * ((g.T + kRows - 1) / kRows));
  dispatch_per_thread(g.hs, [&](auto per) {
    launch<fwd_tiled<F, decltype(per)::value>>(blocks, fwd_floats(g.hs) * sizeof(float),
                                               fwd_floats(kTiledMaxHs) * sizeof(float), stream, out,
                                               lse, q, k, v, g);
  });
}

template <class F>
void tiled_backward(F* dq, F* dk, F* dv, const F* dout, const F* q, const F* k, const F* v,
                    const F* out, const float* lse, const Heads& g, cudaStream_t stream) {
  LMF_CHECK(g.hs <= kTiledMaxHs, "tiled attention: head size {} above {}", g.hs, kTiledMaxHs);
  if (g.B == 0 || g.T == 0) return;
  const long tiles = (g.T + kRows - 1) / kRows;
  float* drow = device_scratch(Scratch::attention_rows, (size_t)g.B * g.NH * g.T);  // D_t: dq writes, dkv reads
  dispatch_per_thread(g.hs, [&](auto per) {
    constexpr int kPer = decltype(per)::value;
    launch<dq_tiled<F, kPer>>((unsigned)((long)g.B * g.NH * tiles), dq_floats(g.hs) * sizeof(float),
                              dq_floats(kTiledMaxHs) * sizeof(float), stream, dq, dout, q, k, v,
                              out, lse, drow, g);
    launch<dkv_tiled<F, kPer>>(
        (unsigned)((long)g.B * g.KVH * tiles), dkv_floats(g.hs) * sizeof(float),
        dkv_floats(kTiledMaxHs) * sizeof(float), stream, dk, dv, dout, q, k, v, lse, drow, g);
  });
}

template void tiled_forward(float*, float*, const float*, const float*, const float*, const Heads&,
                            cudaStream_t);
template void tiled_forward(bf16*, float*, const bf16*, const bf16*, const bf16*, const Heads&,
                            cudaStream_t);
template void tiled_backward(float*, float*, float*, const float*, const float*, const float*,
                             const float*, const float*, const float*, const Heads&, cudaStream_t);
template void tiled_backward(bf16*, bf16*, bf16*, const bf16*, const bf16*, const bf16*,
                             const bf16*, const bf16*, const float*, const Heads&, cudaStream_t);

}  // namespace lmf::cuda::detail
