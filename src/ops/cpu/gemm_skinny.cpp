// Products with few rows (blas.h's gemm, M in [2, kSkinnyRows], B stored transposed): a decoder
// step over a batch of sequences, C (M, N) = A (M, K) B^T with B (N, K) the weights. OpenBLAS's
// GEMM packs all of B before it multiplies, a copy of every weight per step that costs more than
// the product; its GEMV takes one row at a time, reading B once per row. Here each block of 4 rows
// of B is read from memory once, for all M rows of A (which stay in cache), each dot product
// vectorised. Each output is one thread's, in an order fixed by the ISA clone alone: the same bits
// for any thread count.
#include <algorithm>

#include "ops/cpu/blas.h"
#include "ops/cpu/simd.h"

namespace lmf::ops::cpu {
namespace {

// Columns [n0, n1) of C for all M rows.
LMF_CLONES void skinny_block(float* C, int ldc, const float* A, int lda, const float* B, int ldb, int M, int n0,
                             int n1, int K, float alpha, float beta) {
  auto store = [&](int m, int n, float s) {
    float& c = C[size_t(m) * ldc + n];
    c = alpha * s + (beta == 0.0f ? 0.0f : beta * c);
  };
  int n = n0;
  for (; n + 4 <= n1; n += 4) {
    const float *b0 = B + size_t(n) * ldb, *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
    for (int m = 0; m < M; ++m) {
      const float* a = A + size_t(m) * lda;
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
      for (int k = 0; k < K; ++k) {
        s0 += a[k] * b0[k];
        s1 += a[k] * b1[k];
        s2 += a[k] * b2[k];
        s3 += a[k] * b3[k];
      }
      store(m, n, s0);
      store(m, n + 1, s1);
      store(m, n + 2, s2);
      store(m, n + 3, s3);
    }
  }
  for (; n < n1; ++n) {
    const float* b = B + size_t(n) * ldb;
    for (int m = 0; m < M; ++m) {
      const float* a = A + size_t(m) * lda;
      float s = 0;
#pragma omp simd reduction(+ : s)
      for (int k = 0; k < K; ++k) s += a[k] * b[k];
      store(m, n, s);
    }
  }
}

}  // namespace

void gemm_skinny(int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb, float beta,
                 float* C, int ldc) {
  // Blocks of 64 columns (a multiple of 4, so the grouping does not depend on the threads).
  constexpr int kBlock = 64;
  const int nblocks = (N + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (size_t(N) * K >= (size_t(1) << 16))
  for (int b = 0; b < nblocks; ++b)
    skinny_block(C, ldc, A, lda, B, ldb, M, b * kBlock, std::min(N, (b + 1) * kBlock), K, alpha, beta);
}

}  // namespace lmf::ops::cpu
