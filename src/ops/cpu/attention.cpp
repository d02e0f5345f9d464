// Causal self-attention over BLAS, multi-head (MHA, over a packed qkv) and grouped-query (GQA,
// Ainslie et al. 2023: query head h reads kv head h / (NH / KVH)), one implementation for both.
// Query rows are processed in blocks; the (T, T) probabilities are never stored: forward keeps
// the row log-sum-exp and backward recomputes P from q, k, lse (FlashAttention's memory scheme,
// Dao et al. 2022, here with exact-width row blocks rather than an online softmax).
//
// q, k, v are read in place through row strides (3C inside a packed qkv, NH*hs or KVH*hs for
// separate tensors): no permute copies. Query rows [i0, i1) only see keys [0, i1), so each block
// computes only those columns: about half the FLOPs of the full (T, T) product. In backward a
// task is a whole (b, kv head): it zeroes that head's dk, dv and adds the contributions of its
// group's query heads and row blocks in order, so every sum is deterministic without atomics.
//
// With a rounding function (the bf16 matmul precision, cpu/rounded.h) every GEMM here reads
// operands rounded by it, as the GPU's tensor-core kernels do (ops/cuda/attention_mma.cu): q, k,
// v, dout, the probabilities before P v and dP^T dout, dS before dS k and dS^T q. The softmax, lse,
// D = dout . out and every sum stay fp32.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "core/error.h"
#include "ops/cpu/blas.h"
#include "ops/cpu/rounded.h"
#include "ops/cpu/scratch.h"
#include "ops/cpu/simd.h"
#include "ops/ops.h"

namespace lmf::ops {
namespace {

constexpr int kRowBlock = 64;  // query rows per block; scratch per thread is kRowBlock x T

// In place: s (n_total) holds scaled scores of one query row whose first n_valid keys are
// visible; leaves the softmax probabilities there (0 for masked keys) and returns the lse.
template <class T>
LMF_INLINE T softmax_row(T* s, int n_valid, int n_total) {
  T mx = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : mx)
  for (int j = 0; j < n_valid; ++j) mx = s[j] > mx ? s[j] : mx;
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j < n_valid; ++j) {
    const T e = cpu::vexp(s[j] - mx);
    s[j] = e;
    sum += e;
  }
  const T inv = T(1) / sum;
#pragma omp simd
  for (int j = 0; j < n_valid; ++j) s[j] *= inv;
  for (int j = n_valid; j < n_total; ++j) s[j] = T(0);
  return mx + std::log(sum);
}
LMF_CLONES float softmax_row_f32(float* s, int n_valid, int n_total) {
  return softmax_row<float>(s, n_valid, n_total);
}

// In place: s (n_total) scaled scores -> P = exp(s - lse) for the n_valid visible keys, else 0.
template <class T>
LMF_INLINE void probs_row(T* s, T lse, int n_valid, int n_total) {
#pragma omp simd
  for (int j = 0; j < n_valid; ++j) s[j] = cpu::vexp(s[j] - lse);
  for (int j = n_valid; j < n_total; ++j) s[j] = T(0);
}
LMF_CLONES void probs_row_f32(float* s, float lse, int n_valid, int n_total) {
  probs_row<float>(s, lse, n_valid, n_total);
}

// In place: dp (n) -> dS = P * (dP - D) * scale, the softmax backward for one row.
template <class T>
LMF_INLINE void dscores_row(T* dp, const T* p, T D, T scale, int n) {
#pragma omp simd
  for (int j = 0; j < n; ++j) dp[j] = p[j] * (dp[j] - D) * scale;
}
LMF_CLONES void dscores_row_f32(float* dp, const float* p, float D, float scale, int n) {
  dscores_row<float>(dp, p, D, scale, n);
}

template <class T>
LMF_INLINE T dot(const T* a, const T* b, int n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <class T>
constexpr bool kF32 = std::is_same_v<T, float>;

// Rounds n values to a narrower operand precision (dst may equal src); nullptr: none.
template <class T>
using RoundFn = void (*)(T* dst, const T* src, size_t n);

// Rows [r0, r0 + n) of a (., hs) matrix with row stride ld, as a GEMM operand: the matrix itself,
// or with `round`, a rounded copy in scratch slot Slot (row stride hs).
template <class T, int Slot>
const T* operand(const T* src, int ld, int r0, int n, int hs, RoundFn<T> round, int& ld_out) {
  if (round == nullptr) {
    ld_out = ld;
    return src + (size_t)r0 * ld;
  }
  T* dst = cpu::thread_scratch<T, Slot>((size_t)n * hs);
  for (int r = 0; r < n; ++r) round(dst + (size_t)r * hs, src + (size_t)(r0 + r) * ld, hs);
  ld_out = hs;
  return dst;
}


// Where the heads live: base pointers of batch 0, head 0 and the row stride of each tensor
// (batch b starts T * stride further on; head h at h * hs within a row).
struct Heads {
  int B, seq, NH, KVH, hs;
  int ldq, ldkv, ldo;  // row strides of q (and dq), k and v (and dk, dv), out (and dout)
};

void check_heads(int NH, int KVH, int hs) {
  LMF_CHECK(NH > 0 && KVH > 0 && hs > 0 && NH % KVH == 0,
            "attention: NH={} not a positive multiple of KVH={} (hs={})", NH, KVH, hs);
}

template <class T>
void forward_impl(T* out, T* lse, const T* q, const T* k, const T* v, const Heads& g,
                  RoundFn<T> round = nullptr) {
  const int T_ = g.seq, hs = g.hs, group = g.NH / g.KVH;
  const T scale = T(1) / std::sqrt(T(hs));
  const int nblk = (T_ + kRowBlock - 1) / kRowBlock;
  const long ntasks = (long)g.B * g.NH * nblk;
  // Tasks are (b, h, row block), block index fastest; chunk 1 deals the costlier later blocks
  // round-robin so threads get similar work. Each task writes disjoint rows of out and lse.
#pragma omp parallel for schedule(static, 1)
  for (long task = 0; task < ntasks; ++task) {
    const int blk = (int)(task % nblk), h = (int)(task / nblk % g.NH), b = (int)(task / nblk / g.NH);
    const int i0 = blk * kRowBlock, i1 = std::min(T_, i0 + kRowBlock), br = i1 - i0;
    const int kh = h / group;
    const T* qh = q + (size_t)b * T_ * g.ldq + (size_t)h * hs;     // (T, hs), ld ldq
    const T* kk = k + (size_t)b * T_ * g.ldkv + (size_t)kh * hs;   // (T, hs), ld ldkv
    const T* vv = v + (size_t)b * T_ * g.ldkv + (size_t)kh * hs;   // (T, hs), ld ldkv
    T* S = cpu::thread_scratch<T, 0>((size_t)kRowBlock * T_);      // (br, i1), ld i1
    int ldq, ldk, ldv;
    const T* qo = operand<T, 8>(qh, g.ldq, i0, br, hs, round, ldq);
    const T* ko = operand<T, 9>(kk, g.ldkv, 0, i1, hs, round, ldk);
    const T* vo = operand<T, 10>(vv, g.ldkv, 0, i1, hs, round, ldv);
    cpu::gemm<T>(false, true, br, i1, hs, scale, qo, ldq, ko, ldk, T(0), S, i1);
    T* lse_bh = lse + ((size_t)b * g.NH + h) * T_;
    for (int r = 0; r < br; ++r) {
      T* row = S + (size_t)r * i1;
      if constexpr (kF32<T>) {
        lse_bh[i0 + r] = softmax_row_f32(row, i0 + r + 1, i1);
      } else {
        lse_bh[i0 + r] = softmax_row<T>(row, i0 + r + 1, i1);
      }
    }
    if (round) round(S, S, (size_t)br * i1);
    T* o = out + ((size_t)b * T_ + i0) * g.ldo + (size_t)h * hs;  // (br, hs), ld ldo
    cpu::gemm<T>(false, false, br, hs, i1, T(1), S, i1, vo, ldv, T(0), o, g.ldo);
  }
}

// dq assigned; dk, dv assigned (zeroed, then summed over the group's heads and row blocks).
template <class T>
void backward_impl(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* out,
                   const T* lse, const Heads& g, RoundFn<T> round = nullptr) {
  const int T_ = g.seq, hs = g.hs, group = g.NH / g.KVH;
  const T scale = T(1) / std::sqrt(T(hs));
  const int nblk = (T_ + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for schedule(static)
  for (int bk = 0; bk < g.B * g.KVH; ++bk) {
    const int b = bk / g.KVH, kh = bk % g.KVH;
    const size_t kbase = (size_t)b * T_ * g.ldkv + (size_t)kh * hs;
    const T* kk = k + kbase;  // (T, hs), ld ldkv; likewise v, dk, dv
    const T* vv = v + kbase;
    T* dkk = dk + kbase;
    T* dvv = dv + kbase;
    for (int t = 0; t < T_; ++t) {
      std::fill_n(dkk + (size_t)t * g.ldkv, hs, T(0));
      std::fill_n(dvv + (size_t)t * g.ldkv, hs, T(0));
    }
    int ldk, ldv;  // the GEMMs' k and v: as they are, or rounded (the whole head, once)
    const T* ko = operand<T, 9>(kk, g.ldkv, 0, T_, hs, round, ldk);
    const T* vo = operand<T, 10>(vv, g.ldkv, 0, T_, hs, round, ldv);
    T* P = cpu::thread_scratch<T, 0>((size_t)kRowBlock * T_);   // (br, i1), ld i1
    T* dS = cpu::thread_scratch<T, 1>((size_t)kRowBlock * T_);  // (br, i1), ld i1
    T D[kRowBlock];                                             // rowwise dO . O
    for (int h = kh * group; h < (kh + 1) * group; ++h) {
      const T* qq = q + (size_t)b * T_ * g.ldq + (size_t)h * hs;  // (T, hs), ld ldq; likewise dq
      T* dqq = dq + (size_t)b * T_ * g.ldq + (size_t)h * hs;
      const T* o = out + (size_t)b * T_ * g.ldo + (size_t)h * hs;  // (T, hs), ld ldo; likewise dout
      const T* d_o = dout + (size_t)b * T_ * g.ldo + (size_t)h * hs;
      const T* lse_bh = lse + ((size_t)b * g.NH + h) * T_;
      for (int blk = 0; blk < nblk; ++blk) {
        const int i0 = blk * kRowBlock, i1 = std::min(T_, i0 + kRowBlock), br = i1 - i0;
        const T* do_blk = d_o + (size_t)i0 * g.ldo;
        int ldq, ldg;
        const T* q_blk = operand<T, 8>(qq, g.ldq, i0, br, hs, round, ldq);
        const T* g_blk = operand<T, 11>(d_o, g.ldo, i0, br, hs, round, ldg);
        cpu::gemm<T>(false, true, br, i1, hs, scale, q_blk, ldq, ko, ldk, T(0), P, i1);
        for (int r = 0; r < br; ++r) {
          if constexpr (kF32<T>) {
            probs_row_f32(P + (size_t)r * i1, lse_bh[i0 + r], i0 + r + 1, i1);
          } else {
            probs_row<T>(P + (size_t)r * i1, lse_bh[i0 + r], i0 + r + 1, i1);
          }
          D[r] = dot(do_blk + (size_t)r * g.ldo, o + (size_t)(i0 + r) * g.ldo, hs);
        }
        // dV[0:i1] += P^T dO_blk (P rounded into a copy: dS below needs it as it is)
        const T* p_op = P;
        if (round) {
          T* pr = cpu::thread_scratch<T, 12>((size_t)br * i1);
          round(pr, P, (size_t)br * i1);
          p_op = pr;
        }
        cpu::gemm<T>(true, false, i1, hs, br, T(1), p_op, i1, g_blk, ldg, T(1), dvv, g.ldkv);
        // dP = dO_blk V[0:i1]^T, then dS = P (dP - D) scale in place
        cpu::gemm<T>(false, true, br, i1, hs, T(1), g_blk, ldg, vo, ldv, T(0), dS, i1);
        for (int r = 0; r < br; ++r) {
          if constexpr (kF32<T>) {
            dscores_row_f32(dS + (size_t)r * i1, P + (size_t)r * i1, D[r], scale, i1);
          } else {
            dscores_row<T>(dS + (size_t)r * i1, P + (size_t)r * i1, D[r], scale, i1);
          }
        }
        // dQ_blk = dS K[0:i1];  dK[0:i1] += dS^T Q_blk
        if (round) round(dS, dS, (size_t)br * i1);
        cpu::gemm<T>(false, false, br, hs, i1, T(1), dS, i1, ko, ldk, T(0), dqq + (size_t)i0 * g.ldq, g.ldq);
        cpu::gemm<T>(true, false, i1, hs, br, T(1), dS, i1, q_blk, ldq, T(1), dkk, g.ldkv);
      }
    }
  }
}

}  // namespace

template <class T>
void attention_forward(T* out, T* lse, const T* qkv, int B, int T_, int C, int NH) {
  LMF_CHECK(NH > 0 && C % NH == 0, "attention: C={} not divisible by NH={}", C, NH);
  const Heads g{B, T_, NH, NH, C / NH, 3 * C, 3 * C, C};
  forward_impl(out, lse, qkv, qkv + C, qkv + 2 * C, g);
}

template <class T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse, int B, int T_, int C,
                        int NH) {
  LMF_CHECK(NH > 0 && C % NH == 0, "attention: C={} not divisible by NH={}", C, NH);
  const Heads g{B, T_, NH, NH, C / NH, 3 * C, 3 * C, C};
  backward_impl(dqkv, dqkv + C, dqkv + 2 * C, dout, qkv, qkv + C, qkv + 2 * C, out, lse, g);
}

template <class T>
void attention_gqa_forward(T* out, T* lse, const T* q, const T* k, const T* v, int B, int T_, int NH, int KVH,
                           int hs) {
  check_heads(NH, KVH, hs);
  const Heads g{B, T_, NH, KVH, hs, NH * hs, KVH * hs, NH * hs};
  forward_impl(out, lse, q, k, v, g);
}

template <class T>
void attention_gqa_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* out,
                            const T* lse, int B, int T_, int NH, int KVH, int hs) {
  check_heads(NH, KVH, hs);
  const Heads g{B, T_, NH, KVH, hs, NH * hs, KVH * hs, NH * hs};
  backward_impl(dq, dk, dv, dout, q, k, v, out, lse, g);
}

namespace cpu {

template <MatmulPrecision P>
void attention_forward_rounded(float* out, float* lse, const float* qkv, int B, int T_, int C, int NH) {
  LMF_CHECK(NH > 0 && C % NH == 0, "attention: C={} not divisible by NH={}", C, NH);
  const Heads g{B, T_, NH, NH, C / NH, 3 * C, 3 * C, C};
  forward_impl<float>(out, lse, qkv, qkv + C, qkv + 2 * C, g, &round_operands_serial<P>);
}

template <MatmulPrecision P>
void attention_backward_rounded(float* dqkv, const float* dout, const float* qkv, const float* out,
                                const float* lse, int B, int T_, int C, int NH) {
  LMF_CHECK(NH > 0 && C % NH == 0, "attention: C={} not divisible by NH={}", C, NH);
  const Heads g{B, T_, NH, NH, C / NH, 3 * C, 3 * C, C};
  backward_impl<float>(dqkv, dqkv + C, dqkv + 2 * C, dout, qkv, qkv + C, qkv + 2 * C, out, lse, g,
                       &round_operands_serial<P>);
}

template <MatmulPrecision P>
void attention_gqa_forward_rounded(float* out, float* lse, const float* q, const float* k, const float* v,
                                   int B, int T_, int NH, int KVH, int hs) {
  check_heads(NH, KVH, hs);
  const Heads g{B, T_, NH, KVH, hs, NH * hs, KVH * hs, NH * hs};
  forward_impl<float>(out, lse, q, k, v, g, &round_operands_serial<P>);
}

template <MatmulPrecision P>
void attention_gqa_backward_rounded(float* dq, float* dk, float* dv, const float* dout, const float* q,
                                    const float* k, const float* v, const float* out, const float* lse,
                                    int B, int T_, int NH, int KVH, int hs) {
  check_heads(NH, KVH, hs);
  const Heads g{B, T_, NH, KVH, hs, NH * hs, KVH * hs, NH * hs};
  backward_impl<float>(dq, dk, dv, dout, q, k, v, out, lse, g, &round_operands_serial<P>);
}

template void attention_forward_rounded<MatmulPrecision::bf16>(float*, float*, const float*, int, int, int, int);
template void attention_backward_rounded<MatmulPrecision::bf16>(float*, const float*, const float*, const float*,
                                                                const float*, int, int, int, int);
template void attention_gqa_forward_rounded<MatmulPrecision::bf16>(float*, float*, const float*, const float*,
                                                                   const float*, int, int, int, int, int);
template void attention_gqa_backward_rounded<MatmulPrecision::bf16>(float*, float*, float*, const float*,
                                                                    const float*, const float*, const float*,
                                                                    const float*, const float*, int, int, int,
                                                                    int, int);

}  // namespace cpu

#define LMF_INSTANTIATE(T)                                                                                  \
  template void attention_forward<T>(T*, T*, const T*, int, int, int, int);                                \
  template void attention_backward<T>(T*, const T*, const T*, const T*, const T*, int, int, int, int);     \
  template void attention_gqa_forward<T>(T*, T*, const T*, const T*, const T*, int, int, int, int, int);   \
  template void attention_gqa_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*,    \
                                          const T*, int, int, int, int, int);
LMF_INSTANTIATE(float)
LMF_INSTANTIATE(double)
#undef LMF_INSTANTIATE

}  // namespace lmf::ops
