// Causal grouped-query attention (Ainslie et al. 2023, "GQA") over BLAS, with the same scheme as
// attention.cpp: blocks of query rows, the row log-sum-exp kept in forward and the probabilities
// recomputed from q, k, lse in backward (never a stored (T, T) matrix per head).
//
// q, k, v, out are read in place with leading dimensions NH*hs and KVH*hs: no permute copies.
// Query head h reads kv head h / (NH / KVH). In backward a task is a whole (b, kv head): it
// zeroes that head's dk, dv and adds the contributions of its group's query heads in order, so
// the sums over the group are deterministic without atomics.
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
namespace {

void check_heads(int NH, int KVH, int hs) {
  LMF_CHECK(NH > 0 && KVH > 0 && hs > 0 && NH % KVH == 0,
            "attention_gqa: NH={} not a positive multiple of KVH={} (hs={})", NH, KVH, hs);
}

}  // namespace

template <class T>
void attention_gqa_forward(T* out, T* lse, const T* q, const T* k, const T* v, int B, int T_,
                           int NH, int KVH, int hs) {
  check_heads(NH, KVH, hs);
  const int C = NH * hs, KC = KVH * hs, group = NH / KVH;
  const T scale = T(1) / std::sqrt(T(hs));
  const int nblk = (T_ + kRowBlock - 1) / kRowBlock;
  const long ntasks = (long)B * NH * nblk;
  // Tasks are (b, h, row block), block index fastest; chunk 1 deals the costlier later blocks
  // round-robin. Each task writes disjoint rows of out and lse.
#pragma omp parallel for schedule(static, 1)
  for (long task = 0; task < ntasks; ++task) {
    const int blk = (int)(task % nblk), h = (int)(task / nblk % NH), b = (int)(task / nblk / NH);
    const int i0 = blk * kRowBlock, i1 = std::min(T_, i0 + kRowBlock), br = i1 - i0;
    const int kh = h / group;
    const T* qh = q + (size_t)b * T_ * C + (size_t)h * hs;     // (T, hs), ld C
    const T* kh_ = k + (size_t)b * T_ * KC + (size_t)kh * hs;  // (T, hs), ld KC
    const T* vh = v + (size_t)b * T_ * KC + (size_t)kh * hs;   // (T, hs), ld KC
    T* S = cpu::thread_scratch<T, 0>((size_t)kRowBlock * T_);  // (br, i1), ld i1
    cpu::gemm<T>(false, true, br, i1, hs, scale, qh + (size_t)i0 * C, C, kh_, KC, T(0), S, i1);
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
    cpu::gemm<T>(false, false, br, hs, i1, T(1), S, i1, vh, KC, T(0), o, C);
  }
}

template <class T>
void attention_gqa_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                            const T* out, const T* lse, int B, int T_, int NH, int KVH, int hs) {
  check_heads(NH, KVH, hs);
  const int C = NH * hs, KC = KVH * hs, group = NH / KVH;
  const T scale = T(1) / std::sqrt(T(hs));
  const int nblk = (T_ + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for schedule(static)
  for (int bk = 0; bk < B * KVH; ++bk) {
    const int b = bk / KVH, kh = bk % KVH;
    const size_t kbase = (size_t)b * T_ * KC + (size_t)kh * hs;
    const T* kk = k + kbase;  // (T, hs), ld KC; likewise v, dk, dv
    const T* vv = v + kbase;
    T* dkk = dk + kbase;
    T* dvv = dv + kbase;
    for (int t = 0; t < T_; ++t) {  // dk, dv accumulate over blocks and the group's heads
      std::fill_n(dkk + (size_t)t * KC, hs, T(0));
      std::fill_n(dvv + (size_t)t * KC, hs, T(0));
    }
    T* P = cpu::thread_scratch<T, 0>((size_t)kRowBlock * T_);   // (br, i1), ld i1
    T* dS = cpu::thread_scratch<T, 1>((size_t)kRowBlock * T_);  // (br, i1), ld i1
    T D[kRowBlock];                                             // rowwise dO . O
    for (int h = kh * group; h < (kh + 1) * group; ++h) {
      const size_t qbase = (size_t)b * T_ * C + (size_t)h * hs;
      const T* qq = q + qbase;  // (T, hs), ld C; likewise dq, out, dout
      T* dqq = dq + qbase;
      const T* o = out + qbase;
      const T* d_o = dout + qbase;
      const T* lse_bh = lse + ((size_t)b * NH + h) * T_;
      for (int blk = 0; blk < nblk; ++blk) {
        const int i0 = blk * kRowBlock, i1 = std::min(T_, i0 + kRowBlock), br = i1 - i0;
        const T* q_blk = qq + (size_t)i0 * C;
        const T* do_blk = d_o + (size_t)i0 * C;
        cpu::gemm<T>(false, true, br, i1, hs, scale, q_blk, C, kk, KC, T(0), P, i1);
        for (int r = 0; r < br; ++r) {
          if constexpr (kF32<T>) {
            probs_row_f32(P + (size_t)r * i1, lse_bh[i0 + r], i0 + r + 1, i1);
          } else {
            probs_row<T>(P + (size_t)r * i1, lse_bh[i0 + r], i0 + r + 1, i1);
          }
          D[r] = dot(do_blk + (size_t)r * C, o + (size_t)(i0 + r) * C, hs);
        }
        // dV[0:i1] += P^T dO_blk
        cpu::gemm<T>(true, false, i1, hs, br, T(1), P, i1, do_blk, C, T(1), dvv, KC);
        // dP = dO_blk V[0:i1]^T, then dS = P (dP - D) scale in place
        cpu::gemm<T>(false, true, br, i1, hs, T(1), do_blk, C, vv, KC, T(0), dS, i1);
        for (int r = 0; r < br; ++r) {
          if constexpr (kF32<T>) {
            dscores_row_f32(dS + (size_t)r * i1, P + (size_t)r * i1, D[r], scale, i1);
          } else {
            dscores_row<T>(dS + (size_t)r * i1, P + (size_t)r * i1, D[r], scale, i1);
          }
        }
        // dQ_blk = dS K[0:i1];  dK[0:i1] += dS^T Q_blk
        cpu::gemm<T>(false, false, br, hs, i1, T(1), dS, i1, kk, KC, T(0), dqq + (size_t)i0 * C, C);
        cpu::gemm<T>(true, false, i1, hs, br, T(1), dS, i1, q_blk, C, T(1), dkk, KC);
      }
    }
  }
}

template void attention_gqa_forward<float>(float*, float*, const float*, const float*, const float*,
                                           int, int, int, int, int);
template void attention_gqa_forward<double>(double*, double*, const double*, const double*,
                                            const double*, int, int, int, int, int);
template void attention_gqa_backward<float>(float*, float*, float*, const float*, const float*,
                                            const float*, const float*, const float*, const float*,
                                            int, int, int, int, int);
template void attention_gqa_backward<double>(double*, double*, double*, const double*,
                                             const double*, const double*, const double*,
                                             const double*, const double*, int, int, int, int, int);

}  // namespace lmf::ops
