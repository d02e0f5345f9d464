// Causal multi-head self-attention over BLAS, in blocks of query rows; the (T, T) probabilities
// are never stored: forward keeps the row log-sum-exp and backward recomputes P from q, k, lse
// (the memory scheme of FlashAttention, Dao et al. 2022, here with exact-width row blocks rather
// than an online softmax).
//
// q, k, v are read straight out of qkv (B, T, 3C) with leading dimension 3C: no permute copies.
// Query rows [i0, i1) only see keys [0, i1), so each block computes only those columns: about
// half the FLOPs of the full (T, T) product.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "core/error.h"
#include "ops/cpu/attention_rows.h"
#include "ops/cpu/blas.h"
#include "ops/cpu/scratch.h"
#include "ops/cpu/simd.h"
#include "ops/ops.h"

namespace lmf::ops {

template <class T>
void attention_forward(T* out, T* lse, const T* qkv, int B, int T_, int C, int NH) {
  LMF_CHECK(NH > 0 && C % NH == 0, "attention: C={} not divisible by NH={}", C, NH);
  const int hs = C / NH, C3 = 3 * C;
  const T scale = T(1) / std::sqrt(T(hs));
  const int nblk = (T_ + kRowBlock - 1) / kRowBlock;
  const long ntasks = (long)B * NH * nblk;
  // Tasks are (b, h, row block), block index fastest; chunk 1 deals later (costlier) blocks
  // round-robin so threads get similar work. Each task writes disjoint rows of out and lse.
#pragma omp parallel for schedule(static, 1)
  for (long task = 0; task < ntasks; ++task) {
    const int blk = (int)(task % nblk), h = (int)(task / nblk % NH), b = (int)(task / nblk / NH);
    const int i0 = blk * kRowBlock, i1 = std::min(T_, i0 + kRowBlock), br = i1 - i0;
    const T* q = qkv + (size_t)b * T_ * C3 + (size_t)h * hs;  // (T, hs), ld 3C
    const T* k = q + C;
    const T* v = q + 2 * C;
    T* S = cpu::thread_scratch<T, 0>((size_t)kRowBlock * T_);  // (br, i1), ld i1
    cpu::gemm<T>(false, true, br, i1, hs, scale, q + (size_t)i0 * C3, C3, k, C3, T(0), S, i1);
    T* lse_bh = lse + ((size_t)b * NH + h) * T_;
    for (int r = 0; r < br; ++r) {
      T* row = S + (size_t)r * i1;
      if constexpr (kF32<T>) {
        lse_bh[i0 + r] = softmax_row_f32(row, i0 + r + 1, i1);
      } else {
        lse_bh[i0 + r] = softmax_row<T>(row, i0 + r + 1, i1);
      }
    }
    T* o = out + ((size_t)b * T_ + i0) * C + (size_t)h * hs;  // (br, hs), ld C
    cpu::gemm<T>(false, false, br, hs, i1, T(1), S, i1, v, C3, T(0), o, C);
  }
}

template <class T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse, int B,
                        int T_, int C, int NH) {
  LMF_CHECK(NH > 0 && C % NH == 0, "attention: C={} not divisible by NH={}", C, NH);
  const int hs = C / NH, C3 = 3 * C;
  const T scale = T(1) / std::sqrt(T(hs));
  const int nblk = (T_ + kRowBlock - 1) / kRowBlock;
  // dK and dV of a head gather contributions from every query block, so a task is a whole
  // (b, h): its row blocks run in order on one thread (deterministic, no atomics).
#pragma omp parallel for schedule(static)
  for (int bh = 0; bh < B * NH; ++bh) {
    const int b = bh / NH, h = bh % NH;
    const size_t base = (size_t)b * T_ * C3 + (size_t)h * hs;
    const T* q = qkv + base;  // (T, hs), ld 3C; likewise k, v and dq, dk, dv
    const T* k = q + C;
    const T* v = q + 2 * C;
    T* dq = dqkv + base;
    T* dk = dq + C;
    T* dv = dq + 2 * C;
    const T* o = out + (size_t)b * T_ * C + (size_t)h * hs;     // (T, hs), ld C
    const T* d_o = dout + (size_t)b * T_ * C + (size_t)h * hs;  // (T, hs), ld C
    const T* lse_bh = lse + (size_t)bh * T_;
    for (int t = 0; t < T_; ++t) {  // dk, dv accumulate below; dq is assigned per block
      std::fill_n(dk + (size_t)t * C3, hs, T(0));
      std::fill_n(dv + (size_t)t * C3, hs, T(0));
    }
    T* P = cpu::thread_scratch<T, 0>((size_t)kRowBlock * T_);   // (br, i1), ld i1
    T* dS = cpu::thread_scratch<T, 1>((size_t)kRowBlock * T_);  // (br, i1), ld i1
    T D[kRowBlock];                                             // rowwise dO . O
    for (int blk = 0; blk < nblk; ++blk) {
      const int i0 = blk * kRowBlock, i1 = std::min(T_, i0 + kRowBlock), br = i1 - i0;
      const T* q_blk = q + (size_t)i0 * C3;
      const T* do_blk = d_o + (size_t)i0 * C;
      cpu::gemm<T>(false, true, br, i1, hs, scale, q_blk, C3, k, C3, T(0), P, i1);
      for (int r = 0; r < br; ++r) {
        if constexpr (kF32<T>) {
          probs_row_f32(P + (size_t)r * i1, lse_bh[i0 + r], i0 + r + 1, i1);
        } else {
          probs_row<T>(P + (size_t)r * i1, lse_bh[i0 + r], i0 + r + 1, i1);
        }
        D[r] = dot(do_blk + (size_t)r * C, o + (size_t)(i0 + r) * C, hs);
      }
      // dV[0:i1] += P^T dO_blk
      cpu::gemm<T>(true, false, i1, hs, br, T(1), P, i1, do_blk, C, T(1), dv, C3);
      // dP = dO_blk V[0:i1]^T, then dS = P (dP - D) scale in place
      cpu::gemm<T>(false, true, br, i1, hs, T(1), do_blk, C, v, C3, T(0), dS, i1);
      for (int r = 0; r < br; ++r) {
        if constexpr (kF32<T>) {
          dscores_row_f32(dS + (size_t)r * i1, P + (size_t)r * i1, D[r], scale, i1);
        } else {
          dscores_row<T>(dS + (size_t)r * i1, P + (size_t)r * i1, D[r], scale, i1);
        }
      }
      // dQ_blk = dS K[0:i1];  dK[0:i1] += dS^T Q_blk
      cpu::gemm<T>(false, false, br, hs, i1, T(1), dS, i1, k, C3, T(0), dq + (size_t)i0 * C3, C3);
      cpu::gemm<T>(true, false, i1, hs, br, T(1), dS, i1, q_blk, C3, T(1), dk, C3);
    }
  }
}

template void attention_forward<float>(float*, float*, const float*, int, int, int, int);
template void attention_forward<double>(double*, double*, const double*, int, int, int, int);
template void attention_backward<float>(float*, const float*, const float*, const float*,
                                        const float*, int, int, int, int);
template void attention_backward<double>(double*, const double*, const double*, const double*,
                                         const double*, int, int, int, int);

}  // namespace lmf::ops
