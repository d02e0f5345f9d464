#pragma once
// Row-major GEMM over OpenBLAS: C (M, N) = alpha * op(A) (M, K) @ op(B) (K, N) + beta * C.
// op(A) is A (M, K) with leading dimension lda, or A^T where A is (K, M); likewise B.
// The build links OpenBLAS's OpenMP variant: called inside our own `omp parallel` region a GEMM
// runs on the calling thread; called outside, it uses all threads.
// Up to kSkinnyRows rows times B^T (a decoder's step, over one sequence or a batch) go to
// gemm_skinny, and other single rows to GEMV: OpenBLAS's GEMM packs the whole of B first, a copy
// of every weight per token that costs more than the product itself.
#include <cblas.h>

#include <type_traits>

#include "core/half.h"

namespace lmf::ops::cpu {

// Up to this many rows, a float product with B stored transposed (the linear layers' forward)
// goes to gemm_skinny (one row too: as fast as OpenBLAS's GEMV there, bench_ops BM_gemv, and the
// same sums as the bf16 weights' kernel).
inline constexpr int kSkinnyRows = 16;

// C (M, N) = alpha * A (M, K) @ B^T + beta * C (C not read when beta = 0), B (N, K): each row of B
// read once for all of A's rows, over the threads (gemm_skinny.cpp). For M in [1, kSkinnyRows].
void gemm_skinny(int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb, float beta,
                 float* C, int ldc);
// The same over bf16 weights, read as they are (half the bytes) and widened in registers: the float
// kernel's numbers on the widened B, bit for bit. For M in [1, kSkinnyRows] (the bf16 decoders').
void gemm_skinny(int M, int N, int K, float alpha, const float* A, int lda, const bf16* B, int ldb, float beta,
                 float* C, int ldc);

template <class T>
inline void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda,
                 const T* B, int ldb, T beta, T* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // BLAS leaves this case to the caller: C = beta * C
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j)
        C[(size_t)i * ldc + j] = beta == T(0) ? T(0) : beta * C[(size_t)i * ldc + j];
    return;
  }
  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>) {
    if (M <= kSkinnyRows && !trans_a && trans_b)
      return gemm_skinny(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
  if (M == 1) {
    // C (1, N) = alpha * a (K) @ op(B) (K, N): y = op(B)^T a, with op(B)^T = B (N, K) when B is
    // stored transposed, else B^T of B (K, N). a is A's row, or A's column (stride lda) when A^T.
    const int inc_a = trans_a ? lda : 1;
    const int rows = trans_b ? N : K, cols = trans_b ? K : N;
    const CBLAS_TRANSPOSE tv = trans_b ? CblasNoTrans : CblasTrans;
    if constexpr (std::is_same_v<T, float>) {
      cblas_sgemv(CblasRowMajor, tv, rows, cols, alpha, B, ldb, A, inc_a, beta, C, 1);
    } else {
      cblas_dgemv(CblasRowMajor, tv, rows, cols, alpha, B, ldb, A, inc_a, beta, C, 1);
    }
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  } else {
    static_assert(std::is_same_v<T, double>);
    cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
}

}  // namespace lmf::ops::cpu
