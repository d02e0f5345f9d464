// Products with few rows (blas.h's gemm, M in [1, kSkinnyRows], B stored transposed): a decoder
// step, over one sequence or a batch, C (M, N) = A (M, K) B^T with B (N, K) the weights, float or
// bf16. OpenBLAS's GEMM packs all of B before it multiplies, a copy of every weight per step that
// costs more than the product. Here each block of 4 rows of B is read from memory once, for all M
// rows of A (which stay in cache), each dot product vectorised in simd.h's fixed lane order. Each
// output is one thread's: the same bits for any thread count.
#include <algorithm>

#include "core/half.h"
#include "ops/cpu/blas.h"
#include "ops/cpu/simd.h"

namespace lmf::ops::cpu {
namespace {

// Columns [n0, n1) of C for all M rows, 4 rows of B at a time (simd.h's dot_rows: the same sums
// for either type of B, so over bf16 weights the float kernel's numbers on the widened weights,
// bit for bit).
template <class TB>
LMF_INLINE void skinny_block(float* C, int ldc, const float* A, int lda, const TB* B, int ldb, int M, int n0, int n1,
                             int K, float alpha, float beta) {
  auto store = [&](int m, int n, float s) {
    float& c = C[size_t(m) * ldc + n];
    c = alpha * s + (beta == 0.0f ? 0.0f : beta * c);
  };
  int n = n0;
  for (; n + 4 <= n1; n += 4) {
    const TB* b[4] = {B + size_t(n) * ldb, B + size_t(n + 1) * ldb, B + size_t(n + 2) * ldb, B + size_t(n + 3) * ldb};
    for (int m = 0; m < M; ++m) {
      float s[4];
      dot_rows<4>(s, A + size_t(m) * lda, b, K);
      for (int r = 0; r < 4; ++r) store(m, n + r, s[r]);
    }
  }
  for (; n < n1; ++n) {
    const TB* b[1] = {B + size_t(n) * ldb};
    for (int m = 0; m < M; ++m) {
      float s;
      dot_rows<1>(&s, A + size_t(m) * lda, b, K);
      store(m, n, s);
    }
  }
}
// The block per ISA (simd.h's clones), one overload per type of B.
LMF_CLONES void skinny_block_isa(float* C, int ldc, const float* A, int lda, const float* B, int ldb, int M, int n0,
                                 int n1, int K, float alpha, float beta) {
  skinny_block(C, ldc, A, lda, B, ldb, M, n0, n1, K, alpha, beta);
}
LMF_CLONES void skinny_block_isa(float* C, int ldc, const float* A, int lda, const bf16* B, int ldb, int M, int n0,
                                 int n1, int K, float alpha, float beta) {
  skinny_block(C, ldc, A, lda, B, ldb, M, n0, n1, K, alpha, beta);
}

template <class TB>
void skinny(int M, int N, int K, float alpha, const float* A, int lda, const TB* B, int ldb, float beta, float* C,
            int ldc) {
  // Blocks of 64 columns (a multiple of 4, so the grouping does not depend on the threads).
  constexpr int kBlock = 64;
  const int nblocks = (N + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (size_t(N) * K >= (size_t(1) << 16))
  for (int b = 0; b < nblocks; ++b)
    skinny_block_isa(C, ldc, A, lda, B, ldb, M, b * kBlock, std::min(N, (b + 1) * kBlock), K, alpha, beta);
}

}  // namespace

void gemm_skinny(int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb, float beta,
                 float* C, int ldc) {
  skinny(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void gemm_skinny(int M, int N, int K, float alpha, const float* A, int lda, const bf16* B, int ldb, float beta,
                 float* C, int ldc) {
  skinny(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace lmf::ops::cpu
