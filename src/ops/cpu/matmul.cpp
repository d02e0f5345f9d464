// Linear layer over OpenBLAS: out = inp @ w^T + bias and its backward.
#include <algorithm>

#include "ops/cpu/blas.h"
#include "ops/cpu/rounded.h"
#include "ops/cpu/simd.h"
#include "ops/ops.h"

namespace lmf::ops {
namespace {

// dbias[o] += sum_i dout[i, o] for o in [o0, o1): rows in order, so the sum is deterministic.
// dbias (OC); dout (N, OC).
template <class T>
LMF_INLINE void bias_grad_cols(T* dbias, const T* dout, int N, int OC, int o0, int o1) {
  for (int i = 0; i < N; ++i) {
    const T* row = dout + (size_t)i * OC;
#pragma omp simd
    for (int o = o0; o < o1; ++o) dbias[o] += row[o];
  }
}
LMF_CLONES void bias_grad_cols_f32(float* dbias, const float* dout, int N, int OC, int o0, int o1) {
  bias_grad_cols<float>(dbias, dout, N, OC, o0, o1);
}

// dbias (OC) += column sums of dout (N, OC). Column blocks of 64 so each thread owns disjoint
// outputs (no atomics, no reduction order).
template <class T>
void bias_grad(T* dbias, const T* dout, int N, int OC) {
  constexpr int kBlock = 64;
  const int nblocks = (OC + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < nblocks; ++blk) {
    const int o0 = blk * kBlock, o1 = std::min(OC, o0 + kBlock);
    if constexpr (std::is_same_v<T, float>) {
      bias_grad_cols_f32(dbias, dout, N, OC, o0, o1);
    } else {
      bias_grad_cols<T>(dbias, dout, N, OC, o0, o1);
    }
  }
}

}  // namespace

template <class T>
void matmul_forward(T* out, const T* inp, const T* w, const T* bias, int N, int C, int OC) {
  T beta = T(0);
  if (bias) {
    // Seed every row with the bias and let the GEMM accumulate onto it (beta = 1): one pass.
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; ++i) std::copy(bias, bias + OC, out + (size_t)i * OC);
    beta = T(1);
  }
  cpu::gemm<T>(false, true, N, OC, C, T(1), inp, C, w, C, beta, out, OC);
}

template <class T>
void matmul_backward(T* dinp, T* dw, T* dbias, const T* dout, const T* inp, const T* w, int N,
                     int C, int OC) {
  if (dinp)
    cpu::gemm<T>(false, false, N, C, OC, T(1), dout, OC, w, C, T(0), dinp, C);  // (N,OC)@(OC,C)
  cpu::gemm<T>(true, false, OC, C, N, T(1), dout, OC, inp, C, T(1), dw, C);     // (OC,N)@(N,C)
  if (dbias) bias_grad<T>(dbias, dout, N, OC);
}

namespace cpu {
void bias_grad_accumulate(float* dbias, const float* dout, int N, int OC) {
  bias_grad<float>(dbias, dout, N, OC);
}
}  // namespace cpu

template void matmul_forward<float>(float*, const float*, const float*, const float*, int, int,
                                    int);
template void matmul_forward<double>(double*, const double*, const double*, const double*, int, int,
                                     int);
template void matmul_backward<float>(float*, float*, float*, const float*, const float*,
                                     const float*, int, int, int);
template void matmul_backward<double>(double*, double*, double*, const double*, const double*,
                                      const double*, int, int, int);

}  // namespace lmf::ops
