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

// The dot products of a (K) with R rows of B, each in simd.h's fixed lane order: the same sums for
// either type of B (over bf16 weights, the float kernel's numbers on the widened weights, bit for
// bit). a's vector is loaded once for the R rows.
template <int R, class TB>
LMF_INLINE void dots(float* out, const float* a, const TB* const* b, int K) {
  LanesF s[R];
  for (int r = 0; r < R; ++r) s[r] = LanesF{};
  int k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    const LanesF x = load_lanes(a + k);
    for (int r = 0; r < R; ++r) s[r] += x * load_lanes(b[r] + k);
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; k + j < K; ++j) s[r][j] += a[k + j] * lane_value(b[r][k + j]);
    out[r] = add_lanes(s[r]);
  }
}

// Columns [n0, n1) of C for all M rows.
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
      dots<4>(s, A + size_t(m) * lda, b, K);
      for (int r = 0; r < 4; ++r) store(m, n + r, s[r]);
    }
  }
  for (; n < n1; ++n) {
    const TB* b[1] = {B + size_t(n) * ldb};
    for (int m = 0; m < M; ++m) {
      float s;
      dots<1>(&s, A + size_t(m) * lda, b, K);
      store(m, n, s);
    }
  }
}
LMF_CLONES void skinny_block_f32(float* C, int ldc, const float* A, int lda, const float* B, int ldb, int M, int n0,
                                 int n1, int K, float alpha, float beta) {
  skinny_block(C, ldc, A, lda, B, ldb, M, n0, n1, K, alpha, beta);
}
LMF_CLONES void skinny_block_bf16(float* C, int ldc, const float* A, int lda, const bf16* B, int ldb, int M, int n0,
                                  int n1, int K, float alpha, float beta) {
  skinny_block(C, ldc, A, lda, B, ldb, M, n0, n1, K, alpha, beta);
}
void skinny_block_any(float* C, int ldc, const float* A, int lda, const float* B, int ldb, int M, int n0, int n1,
                      int K, float alpha, float beta) {
  skinny_block_f32(C, ldc, A, lda, B, ldb, M, n0, n1, K, alpha, beta);
}
void skinny_block_any(float* C, int ldc, const float* A, int lda, const bf16* B, int ldb, int M, int n0, int n1,
                      int K, float alpha, float beta) {
  skinny_block_bf16(C, ldc, A, lda, B, ldb, M, n0, n1, K, alpha, beta);
}

template <class TB>
void skinny(int M, int N, int K, float alpha, const float* A, int lda, const TB* B, int ldb, float beta, float* C,
            int ldc) {
  // Blocks of 64 columns (a multiple of 4, so the grouping does not depend on the threads).
  constexpr int kBlock = 64;
  const int nblocks = (N + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (size_t(N) * K >= (size_t(1) << 16))
  for (int b = 0; b < nblocks; ++b)
    skinny_block_any(C, ldc, A, lda, B, ldb, M, b * kBlock, std::min(N, (b + 1) * kBlock), K, alpha, beta);
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
