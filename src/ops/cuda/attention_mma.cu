// Causal (grouped-query) attention on the tensor cores: FlashAttention-2's schedule (Dao 2023)
// with every product a bf16 mma.sync (m16n8k16, fp32 accumulate; mma.cuh), for matmul_precision
// = bf16. q, k, v, dout and the outputs stay in global memory in their storage type; a tile is
// rounded to bf16 (fp32 storage) as it is staged in shared memory, the probabilities P and the
// score gradients dS as they become operands. The softmax, lse, D_t = dout_t . out_t and every sum
// stay fp32.
//
//  forward  (block: b, h, 64 query rows, 4 warps of 16; 64 keys per step): a warp keeps its q
//           fragments, scores S (16 x 64) and output (16 x hs) in registers; the online softmax
//           runs on S's fragments (a row lives in the four lanes of a quad), and P, packed to
//           bf16, is directly the A operand of P V (mma.cuh explains why the layouts agree).
//  dq       (block: b, h, 64 query rows; 64 keys per step): S = q k^T and dP = dout v^T on the
//           tensor cores, P = exp(S scale - lse), dS = P (dP - D) scale, dq += dS k.
//  dk, dv   (block: b, kv head, 64 key rows; the group's query heads in order, 64 query rows
//           per step from the diagonal on): S^T = k q^T, dP^T = v dout^T, dv += P^T dout,
//           dk += dS^T q.
//  D        (before both backward kernels: one thread per query row) D_t for every (b, h, t),
//           in a per-device buffer, so neither kernel recomputes it.
// Above hs = 64 both backward kernels step over 32 rows of the other side, and dk and dv are two
// kernels, each recomputing S^T (the accumulators and fragments would not fit the registers).
// Each output element has one owner and a fixed summation order: no atomics, deterministic. The
// same schedule as attention_tiled.cu, whose fp32 arithmetic these kernels' tests compare with.
//
// Shared tiles are bf16, row-major for operands read along the head dimension and transposed
// (dimension-major) for those read along the sequence, so that every fragment register is one
// aligned 32-bit load. Rows are padded by 8 bf16 (16 bytes): a fragment load's 32 lanes then hit
// 32 different banks.
// Templated over the storage type F of q, k, v, out, dout and the gradients: fp32 (rounded to bf16
// as staged) or bf16 storage (read exactly: the same tiles without the rounding), outputs stored
// through bf16.cuh (for bf16 rounded once).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "ops/cuda/attention.cuh"
#include "ops/cuda/bf16.cuh"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/pack.cuh"

namespace lmf::cuda::detail {
namespace {

constexpr int kWarps = 4;
constexpr int kThreadsM = kWarps * 32;
constexpr int kTile = 64;  // rows a block owns (4 warps of 16), and the forward's keys per step
constexpr int kBatch = 4;  // stage(): groups whose loads a thread issues before their stores


// 8 consecutive elements of a head row as 4 bf16 pairs (element 2e in the low half of w[e]), the
// values pack_bf16 makes of them: for bf16 storage the stored bits, for fp32 rounded. With vec
// (the row 16-byte aligned) one 16-byte load of bf16 or two of fp32, else 8 single loads.
__device__ __forceinline__ void load_group(uint32_t (&w)[4], const bf16* p, bool vec) {
  if (vec) {
    bf16 v[8];
    load16(v, p);
    memcpy(w, v, 16);  // little-endian: element 2e is the low half, as pack_bf16 puts it
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e) w[e] = (uint32_t)p[2 * e].bits | ((uint32_t)p[2 * e + 1].bits << 16);
  }
}
__device__ __forceinline__ void load_group(uint32_t (&w)[4], const float* p, bool vec) {
  float x[8];
  if (vec) {
    load_n<8>(x, p);
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) x[e] = p[e];
  }
  pack_bf16x8(w, x);
}

// Rows [r0, r0 + R) of a (T, HS) head (row stride ld) as bf16 into shared memory: row-major rm
// (R, HS + 8) if kRm, transposed tr (HS, R + 8) if kTr; rows past T are zero. A thread takes
// groups of 8 consecutive elements of a row (load_group; vec: every row 16-byte aligned), a warp
// consecutive groups of consecutive rows (coalesced loads, and row-major stores of 16 bytes that
// fill the banks), and issues the loads of kBatch groups before their stores, so that they are in
// flight together. (The transposed stores, 2 bytes each, still meet on a few banks, as before;
// taking rows fastest instead would spread them, but it cost dq_mma 206 registers at hs = 64, two
// blocks an SM instead of three.)
template <int HS, int R, bool kRm, bool kTr, class F>
__device__ __forceinline__ void stage(uint16_t (*rm)[HS + 8], uint16_t (*tr)[R + 8], const F* src,
                                      int ld, int r0, int T, bool vec) {
  constexpr int kCols = HS / 8, kGroups = R * kCols;
  constexpr int kPer = (kGroups + kThreadsM - 1) / kThreadsM;  // groups per thread
#pragma unroll
  for (int j0 = 0; j0 < kPer; j0 += kBatch) {
    uint32_t w[kBatch][4];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int i = threadIdx.x + (j0 + j) * kThreadsM, r = i / kCols, cg = i % kCols;
      w[j][0] = w[j][1] = w[j][2] = w[j][3] = 0u;
      if (j0 + j < kPer && i < kGroups && r0 + r < T) load_group(w[j], src + (size_t)(r0 + r) * ld + 8 * cg, vec);
    }
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int i = threadIdx.x + (j0 + j) * kThreadsM, r = i / kCols, cg = i % kCols;
      if (j0 + j >= kPer || i >= kGroups) continue;
      if constexpr (kRm) store16(&rm[r][8 * cg], reinterpret_cast<const uint16_t*>(w[j]));
      if constexpr (kTr) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          tr[8 * cg + 2 * e][r] = (uint16_t)(w[j][e] & 0xffffu);
          tr[8 * cg + 2 * e + 1][r] = (uint16_t)(w[j][e] >> 16);
        }
      }
    }
  }
}

// The A fragments (HS / 16 k-slabs) of rows [r0, r0 + 16) of a (T, HS) fp32 head in global
// memory, rounded to bf16; rows past T are zero.
template <int HS, class F>
__device__ __forceinline__ void load_a(uint32_t (&a)[HS / 16][4], const F* src, int ld, int r0,
                                       int T) {
  const int ln = threadIdx.x % 32, g = ln / 4, c = ln % 4;
  const int ra = r0 + g, rb = r0 + g + 8;
#pragma unroll
  for (int s = 0; s < HS / 16; ++s) {
    const int d0 = 16 * s + 2 * c, d1 = d0 + 8;
    auto at = [&](int r, int d) { return r < T ? load(src + (size_t)r * ld + d) : 0.0f; };
    a[s][0] = pack_bf16(at(ra, d0), at(ra, d0 + 1));
    a[s][1] = pack_bf16(at(rb, d0), at(rb, d0 + 1));
    a[s][2] = pack_bf16(at(ra, d1), at(ra, d1 + 1));
    a[s][3] = pack_bf16(at(rb, d1), at(rb, d1 + 1));
  }
}

// acc[j] (16 x 8 n-tile j of R / 8) = a (16 x HS) times the rows 8j.. of a row-major shared tile
// (R, HS + 8), transposed: acc = a tile^T. N-tiles j > j_last are skipped (left zero).
template <int HS, int R>
__device__ __forceinline__ void product_nt(float (&acc)[R / 8][4], const uint32_t (&a)[HS / 16][4],
                                           const uint16_t (*tile)[HS + 8], int j_last) {
  const int ln = threadIdx.x % 32, g = ln / 4, c = ln % 4;
#pragma unroll
  for (int j = 0; j < R / 8; ++j) {
    acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
    if (j > j_last) continue;  // warp-uniform
#pragma unroll
    for (int s = 0; s < HS / 16; ++s) {
      const uint32_t b[2] = {load_pair(tile[8 * j + g], 16 * s + 2 * c),
                             load_pair(tile[8 * j + g], 16 * s + 2 * c + 8)};
      mma_bf16_16816(acc[j], a[s], b);
    }
  }
}

// out[d] (16 x 8 n-tile d of HS / 8) += p (16 x R, fp32 fragments, packed to bf16 here) times a
// transposed shared tile tr (HS, R + 8), i.e. p tile. K-slabs past s_last are skipped.
template <int HS, int R>
__device__ __forceinline__ void product_pv(float (&out)[HS / 8][4], const float (&p)[R / 8][4],
                                           const uint16_t (*tr)[R + 8], int s_last) {
  const int ln = threadIdx.x % 32, g = ln / 4, c = ln % 4;
#pragma unroll
  for (int s = 0; s < R / 16; ++s) {
    if (s > s_last) continue;  // warp-uniform
    const uint32_t a[4] = {pack_bf16(p[2 * s][0], p[2 * s][1]), pack_bf16(p[2 * s][2], p[2 * s][3]),
                           pack_bf16(p[2 * s + 1][0], p[2 * s + 1][1]),
                           pack_bf16(p[2 * s + 1][2], p[2 * s + 1][3])};
#pragma unroll
    for (int d = 0; d < HS / 8; ++d) {
      const uint32_t b[2] = {load_pair(tr[8 * d + g], 16 * s + 2 * c),
                             load_pair(tr[8 * d + g], 16 * s + 2 * c + 8)};
      mma_bf16_16816(out[d], a, b);
    }
  }
}

template <class F, int HS>
__global__ void __launch_bounds__(kThreadsM, HS <= 64 ? 3 : 1)
    fwd_mma(F* __restrict__ out, float* __restrict__ lse, const F* __restrict__ q,
            const F* __restrict__ k, const F* __restrict__ v, Heads g, bool vec) {
  alignas(16) __shared__ uint16_t Ks[kTile][HS + 8];
  alignas(16) __shared__ uint16_t Vt[HS][kTile + 8];
  int qt, h, b;
  block_place((g.T + kTile - 1) / kTile, g.NH, qt, h, b);
  const int kh = h / (g.NH / g.KVH);
  const int w = threadIdx.x / 32, ln = threadIdx.x % 32, gr = ln / 4, c = ln % 4;
  const int q0 = qt * kTile, r0 = q0 + 16 * w;  // the warp's first row
  const int row[2] = {r0 + gr, r0 + gr + 8};     // this lane's rows (fragment halves 0, 1)
  const F* kb = k + (size_t)b * g.T * g.ldkv + (size_t)kh * HS;
  const F* vb = v + (size_t)b * g.T * g.ldkv + (size_t)kh * HS;
  uint32_t qa[HS / 16][4];
  load_a<HS>(qa, q + (size_t)b * g.T * g.ldq + (size_t)h * HS, g.ldq, r0, g.T);

  // Invariant after each step, per row: m = max scaled score so far, l = sum exp(score - m),
  // o = sum exp(score - m) v, over the keys seen. Key 0 is visible to every row, so m is finite
  // from the first step on.
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, o[HS / 8][4];
#pragma unroll
  for (int d = 0; d < HS / 8; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
  const int last_key = min(g.T, q0 + kTile) - 1;
  for (int k0 = 0; k0 <= last_key; k0 += kTile) {
    __syncthreads();  // the previous step's tiles are no longer read
    stage<HS, kTile, true, false>(Ks, nullptr, kb, g.ldkv, k0, g.T, vec);
    stage<HS, kTile, false, true>(nullptr, Vt, vb, g.ldkv, k0, g.T, vec);
    __syncthreads();
    const int j_last = min(kTile / 8 - 1, (r0 + 15 - k0) / 8);  // n-tiles with a visible key
    float s[kTile / 8][4];
    product_nt<HS, kTile>(s, qa, Ks, j_last);
    float mx[2] = {-INFINITY, -INFINITY};
    if (k0 + kTile - 1 <= r0 && k0 + kTile <= g.T) {  // every key visible to the warp's rows: no mask
#pragma unroll
      for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          s[j][i] *= g.scale;
          mx[i / 2] = fmaxf(mx[i / 2], s[j][i]);
        }
    } else {
#pragma unroll
      for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int key = k0 + 8 * j + 2 * c + (i & 1), r = row[i / 2];
          s[j][i] = key <= r && key < g.T ? s[j][i] * g.scale : -INFINITY;
          mx[i / 2] = fmaxf(mx[i / 2], s[j][i]);
        }
    }
    float corr[2], psum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int x = 0; x < 2; ++x) {
      const float m_new = fmaxf(m[x], quad_max(mx[x]));
      corr[x] = m[x] == -INFINITY ? 0.0f : expf(m[x] - m_new);
      m[x] = m_new;
    }
#pragma unroll
    for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float p = s[j][i] == -INFINITY ? 0.0f : expf(s[j][i] - m[i / 2]);
        s[j][i] = p;
        psum[i / 2] += p;
      }
#pragma unroll
    for (int x = 0; x < 2; ++x) l[x] = l[x] * corr[x] + quad_sum(psum[x]);
#pragma unroll
    for (int d = 0; d < HS / 8; ++d) {
      o[d][0] *= corr[0];
      o[d][1] *= corr[0];
      o[d][2] *= corr[1];
      o[d][3] *= corr[1];
    }
    product_pv<HS, kTile>(o, s, Vt, j_last / 2);
  }
#pragma unroll
  for (int x = 0; x < 2; ++x) {
    const int t = row[x];
    if (t >= g.T) continue;
    const float inv = 1.0f / l[x];
    F* dst = out + ((size_t)b * g.T + t) * g.ldo + (size_t)h * HS;
#pragma unroll
    for (int d = 0; d < HS / 8; ++d) {
      store(dst + 8 * d + 2 * c, o[d][2 * x] * inv);
      store(dst + 8 * d + 2 * c + 1, o[d][2 * x + 1] * inv);
    }
    if (c == 0) lse[((size_t)b * g.NH + h) * g.T + t] = m[x] + logf(l[x]);
  }
}

// D_t = dout_t . out_t, summed in d order in fp32; with vec (both rows 16-byte aligned) read 8
// elements per access (the same sum).
template <int HS, class F>
__device__ __forceinline__ float row_dot(const F* a, const F* b, bool vec) {
  float s = 0.0f;
  for (int d = 0; d < HS; d += 8) {
    float x[8], y[8];
    if (vec) {
      load_n<8>(x, a + d);
      load_n<8>(y, b + d);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        x[e] = load(a + d + e);
        y[e] = load(b + d + e);
      }
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) s += x[e] * y[e];
  }
  return s;
}

// drow (B, NH, T) = D_t of every query row, once per backward for both kernels: dkv_mma used to
// recompute it for every key tile (T / 64 times a row at the most), two of its four warps each
// walking a row while the other two waited at the barrier. One thread per row.
constexpr int kRowThreads = 256;
template <class F, int HS>
__global__ void __launch_bounds__(kRowThreads)
    row_dots_kernel(float* __restrict__ drow, const F* __restrict__ dout, const F* __restrict__ out,
                    Heads g, bool vec) {
  const long x = (long)blockIdx.x * kRowThreads + threadIdx.x;
  if (x >= (long)g.B * g.NH * g.T) return;
  const int t = (int)(x % g.T), h = (int)(x / g.T % g.NH), b = (int)(x / g.T / g.NH);
  const size_t at = ((size_t)b * g.T + t) * g.ldo + (size_t)h * HS;
  drow[x] = row_dot<HS>(dout + at, out + at, vec);
}

// S: keys per step (64; 32 above hs = 64, which keeps the tiles in 48 KB of static shared memory).
template <class F, int HS, int S>
__global__ void __launch_bounds__(kThreadsM)
    dq_mma(F* __restrict__ dq, const F* __restrict__ dout, const F* __restrict__ q,
           const F* __restrict__ k, const F* __restrict__ v, const float* __restrict__ lse,
           const float* __restrict__ drow, Heads g, bool vec) {
  alignas(16) __shared__ uint16_t Ks[S][HS + 8];
  alignas(16) __shared__ uint16_t Vs[S][HS + 8];
  alignas(16) __shared__ uint16_t Kt[HS][S + 8];
  int qt, h, b;
  block_place((g.T + kTile - 1) / kTile, g.NH, qt, h, b);
  const int kh = h / (g.NH / g.KVH);
  const int w = threadIdx.x / 32, ln = threadIdx.x % 32, gr = ln / 4, c = ln % 4;
  const int q0 = qt * kTile, r0 = q0 + 16 * w;
  const int row[2] = {r0 + gr, r0 + gr + 8};
  const F* kb = k + (size_t)b * g.T * g.ldkv + (size_t)kh * HS;
  const F* vb = v + (size_t)b * g.T * g.ldkv + (size_t)kh * HS;
  const F* gb = dout + (size_t)b * g.T * g.ldo + (size_t)h * HS;
  uint32_t qa[HS / 16][4], ga[HS / 16][4];
  load_a<HS>(qa, q + (size_t)b * g.T * g.ldq + (size_t)h * HS, g.ldq, r0, g.T);
  load_a<HS>(ga, gb, g.ldo, r0, g.T);
  float D[2] = {0.0f, 0.0f}, L[2] = {0.0f, 0.0f};
#pragma unroll
  for (int x = 0; x < 2; ++x)
    if (row[x] < g.T) {
      D[x] = drow[((size_t)b * g.NH + h) * g.T + row[x]];
      L[x] = lse[((size_t)b * g.NH + h) * g.T + row[x]];
    }
  float acc[HS / 8][4];
#pragma unroll
  for (int d = 0; d < HS / 8; ++d) acc[d][0] = acc[d][1] = acc[d][2] = acc[d][3] = 0.0f;
  const int last_key = min(g.T, q0 + kTile) - 1;
  for (int k0 = 0; k0 <= last_key; k0 += S) {
    __syncthreads();
    stage<HS, S, true, true>(Ks, Kt, kb, g.ldkv, k0, g.T, vec);
    stage<HS, S, true, false>(Vs, nullptr, vb, g.ldkv, k0, g.T, vec);
    __syncthreads();
    // N-tiles with a visible key (negative: none, on a step past the warp's last row).
    const int j_last = min(S / 8 - 1, (r0 + 15 - k0) / 8);
    float s[S / 8][4], dp[S / 8][4];
    product_nt<HS, S>(s, qa, Ks, j_last);
    product_nt<HS, S>(dp, ga, Vs, j_last);
    if (k0 + S - 1 <= r0 && r0 + 15 < g.T) {  // every key visible to the warp's rows, all in T: no mask
#pragma unroll
      for (int j = 0; j < S / 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i)
          s[j][i] = expf(s[j][i] * g.scale - L[i / 2]) * (dp[j][i] - D[i / 2]) * g.scale;
    } else {
#pragma unroll
      for (int j = 0; j < S / 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int key = k0 + 8 * j + 2 * c + (i & 1), r = row[i / 2];
          float ds = 0.0f;  // dS = P (dP - D) scale, 0 for masked keys
          if (key <= r && r < g.T) ds = expf(s[j][i] * g.scale - L[i / 2]) * (dp[j][i] - D[i / 2]) * g.scale;
          s[j][i] = ds;
        }
    }
    product_pv<HS, S>(acc, s, Kt, j_last < 0 ? -1 : j_last / 2);
  }
#pragma unroll
  for (int x = 0; x < 2; ++x) {
    const int t = row[x];
    if (t >= g.T) continue;
    F* dst = dq + ((size_t)b * g.T + t) * g.ldq + (size_t)h * HS;
#pragma unroll
    for (int d = 0; d < HS / 8; ++d) {
      store(dst + 8 * d + 2 * c, acc[d][2 * x]);
      store(dst + 8 * d + 2 * c + 1, acc[d][2 * x + 1]);
    }
  }
}

// S: queries per step (as dq_mma). kParts: 3 computes dk and dv; above hs = 64, where both
// accumulators and the k, v fragments would not fit the registers, 1 (dk only) and 2 (dv only)
// run as two kernels, each recomputing the scores.
template <class F, int HS, int S, int kParts>
__global__ void __launch_bounds__(kThreadsM)
    dkv_mma(F* __restrict__ dk, F* __restrict__ dv, const F* __restrict__ dout,
            const F* __restrict__ q, const F* __restrict__ k, const F* __restrict__ v,
            const float* __restrict__ lse, const float* __restrict__ drow, Heads g, bool vec) {
  constexpr bool kDk = (kParts & 1) != 0, kDv = (kParts & 2) != 0;
  alignas(16) __shared__ uint16_t Qs[S][HS + 8];
  alignas(16) __shared__ uint16_t Qt[HS][S + 8];
  alignas(16) __shared__ uint16_t Gs[S][HS + 8];  // dout rows
  alignas(16) __shared__ uint16_t Gt[HS][S + 8];
  __shared__ float Dq[S], Lq[S];  // D_t and lse_t of the step's queries
  const int tiles = (g.T + kTile - 1) / kTile;
  int st, kh, b;
  block_place(tiles, g.KVH, st, kh, b);
  const int group = g.NH / g.KVH;
  const int w = threadIdx.x / 32, ln = threadIdx.x % 32, gr = ln / 4, c = ln % 4;
  const int k0 = st * kTile, s0 = k0 + 16 * w;  // the block's and the warp's first key
  const int key[2] = {s0 + gr, s0 + gr + 8};
  const size_t kv_at = (size_t)b * g.T * g.ldkv + (size_t)kh * HS;
  uint32_t ka[HS / 16][4], va[kDk ? HS / 16 : 1][4];
  load_a<HS>(ka, k + kv_at, g.ldkv, s0, g.T);
  if constexpr (kDk) load_a<HS>(va, v + kv_at, g.ldkv, s0, g.T);

  float dk_acc[HS / 8][4], dv_acc[HS / 8][4];
#pragma unroll
  for (int d = 0; d < HS / 8; ++d)
#pragma unroll
    for (int i = 0; i < 4; ++i) dk_acc[d][i] = dv_acc[d][i] = 0.0f;
  for (int h = kh * group; h < (kh + 1) * group; ++h) {
    const F* qh = q + (size_t)b * g.T * g.ldq + (size_t)h * HS;
    const F* gh = dout + (size_t)b * g.T * g.ldo + (size_t)h * HS;
    const float* lse_bh = lse + ((size_t)b * g.NH + h) * g.T;
    const float* d_bh = drow + ((size_t)b * g.NH + h) * g.T;
    for (int q0 = k0; q0 < g.T; q0 += S) {  // queries before k0 see none of these keys
      __syncthreads();
      stage<HS, S, true, kDk>(Qs, Qt, qh, g.ldq, q0, g.T, vec);
      stage<HS, S, kDk, kDv>(Gs, Gt, gh, g.ldo, q0, g.T, vec);
      if (threadIdx.x < S) {
        const int t = q0 + threadIdx.x;
        Dq[threadIdx.x] = kDk && t < g.T ? d_bh[t] : 0.0f;
        Lq[threadIdx.x] = t < g.T ? lse_bh[t] : 0.0f;
      }
      __syncthreads();
      float p[S / 8][4], ds[kDk ? S / 8 : 1][4];
      product_nt<HS, S>(p, ka, Qs, S / 8 - 1);
      if constexpr (kDk) product_nt<HS, S>(ds, va, Gs, S / 8 - 1);
#pragma unroll
      for (int j = 0; j < S / 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int col = 8 * j + 2 * c + (i & 1), t = q0 + col, s = i < 2 ? key[0] : key[1];
          float pv = 0.0f;
          if (t >= s && t < g.T && s < g.T) pv = expf(p[j][i] * g.scale - Lq[col]);
          if constexpr (kDk) ds[j][i] = pv * (ds[j][i] - Dq[col]) * g.scale;
          p[j][i] = pv;
        }
      if constexpr (kDv) product_pv<HS, S>(dv_acc, p, Gt, S / 16 - 1);
      if constexpr (kDk) product_pv<HS, S>(dk_acc, ds, Qt, S / 16 - 1);
    }
  }
#pragma unroll
  for (int x = 0; x < 2; ++x) {
    const int s = key[x];
    if (s >= g.T) continue;
    const size_t at = kv_at + (size_t)s * g.ldkv;
#pragma unroll
    for (int d = 0; d < HS / 8; ++d) {
      if constexpr (kDk) {
        store(dk + at + 8 * d + 2 * c, dk_acc[d][2 * x]);
        store(dk + at + 8 * d + 2 * c + 1, dk_acc[d][2 * x + 1]);
      }
      if constexpr (kDv) {
        store(dv + at + 8 * d + 2 * c, dv_acc[d][2 * x]);
        store(dv + at + 8 * d + 2 * c + 1, dv_acc[d][2 * x + 1]);
      }
    }
  }
}

// f(std::integral_constant<int, HS>{}) for a supported head size.
template <class F>
void dispatch_hs(int hs, F f) {
  switch (hs) {
    case 16: return f(std::integral_constant<int, 16>{});
    case 32: return f(std::integral_constant<int, 32>{});
    case 48: return f(std::integral_constant<int, 48>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 80: return f(std::integral_constant<int, 80>{});
    case 96: return f(std::integral_constant<int, 96>{});
    case 112: return f(std::integral_constant<int, 112>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default: LMF_CHECK(false, "tensor-core attention: head size {} not a multiple of 16 up to 128", hs);
  }
}

// Elements of F per 16-byte access: a row stride that is a multiple of it keeps every row as
// aligned as the first.
template <class F>
constexpr int kPerAccess = 16 / (int)sizeof(F);

}  // namespace

bool mma_supported(const Heads& g) { return g.hs % 16 == 0 && g.hs >= 16 && g.hs <= 128; }

template <class F>
void mma_forward(F* out, float* lse, const F* q, const F* k, const F* v, const Heads& g,
                 cudaStream_t stream) {
  if (g.B == 0 || g.T == 0) return;
  const unsigned blocks = (unsigned)((long)g.B * g.NH * ((g.T + kTile - 1) / kTile));
  const bool vec = g.ldkv % kPerAccess<F> == 0 && all_aligned16(k, v);
  dispatch_hs(g.hs, [&](auto hs) {
    LMF_LAUNCH((fwd_mma<F, decltype(hs)::value>), blocks, kThreadsM, 0, stream)
    (out, lse, q, k, v, g, vec);
  });
  LMF_CUDA_CHECK_LAUNCH();
}

template <class F>
void mma_backward(F* dq, F* dk, F* dv, const F* dout, const F* q, const F* k, const F* v,
                  const F* out, const float* lse, const Heads& g, cudaStream_t stream) {
  if (g.B == 0 || g.T == 0) return;
  const long tiles = (g.T + kTile - 1) / kTile, rows = (long)g.B * g.NH * g.T;
  constexpr int kPer = kPerAccess<F>;
  const bool vec = g.ldq % kPer == 0 && g.ldkv % kPer == 0 && g.ldo % kPer == 0 &&
                   all_aligned16(q, k, v, out, dout);
  float* drow = device_scratch(Scratch::attention_rows, (size_t)rows);  // D_t (B, NH, T)
  dispatch_hs(g.hs, [&](auto hs) {
    constexpr int HS = decltype(hs)::value, S = HS > 64 ? 32 : 64;
    const auto q_blocks = (unsigned)((long)g.B * g.NH * tiles), kv_blocks = (unsigned)((long)g.B * g.KVH * tiles);
    LMF_LAUNCH((row_dots_kernel<F, HS>), (unsigned)((rows + kRowThreads - 1) / kRowThreads), kRowThreads, 0,
               stream)(drow, dout, out, g, vec);
    LMF_CUDA_CHECK_LAUNCH();
    LMF_LAUNCH((dq_mma<F, HS, S>), q_blocks, kThreadsM, 0, stream)(dq, dout, q, k, v, lse, drow, g, vec);
    LMF_CUDA_CHECK_LAUNCH();
    if constexpr (HS > 64) {  // dk and dv in two kernels (dkv_mma)
      LMF_LAUNCH((dkv_mma<F, HS, S, 1>), kv_blocks, kThreadsM, 0, stream)
      (dk, dv, dout, q, k, v, lse, drow, g, vec);
      LMF_CUDA_CHECK_LAUNCH();
      LMF_LAUNCH((dkv_mma<F, HS, S, 2>), kv_blocks, kThreadsM, 0, stream)
      (dk, dv, dout, q, k, v, lse, drow, g, vec);
    } else {
      LMF_LAUNCH((dkv_mma<F, HS, S, 3>), kv_blocks, kThreadsM, 0, stream)
      (dk, dv, dout, q, k, v, lse, drow, g, vec);
    }
    LMF_CUDA_CHECK_LAUNCH();
  });
}

template void mma_forward(float*, float*, const float*, const float*, const float*, const Heads&,
                          cudaStream_t);
template void mma_forward(bf16*, float*, const bf16*, const bf16*, const bf16*, const Heads&,
                          cudaStream_t);
template void mma_backward(float*, float*, float*, const float*, const float*, const float*,
                           const float*, const float*, const float*, const Heads&, cudaStream_t);
template void mma_backward(bf16*, bf16*, bf16*, const bf16*, const bf16*, const bf16*, const bf16*,
                           const bf16*, const float*, const Heads&, cudaStream_t);

}  // namespace lmf::cuda::detail
