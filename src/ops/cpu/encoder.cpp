// Token + position embedding and its backward.
#include <algorithm>
#include <type_traits>

#include "ops/cpu/simd.h"
#include "ops/ops.h"

namespace lmf::ops {
namespace {

// out (C) = a (C) + b (C)
template <class T>
LMF_INLINE void add_row(T* out, const T* a, const T* b, int n) {
#pragma omp simd
  for (int c = 0; c < n; ++c) out[c] = a[c] + b[c];
}
LMF_CLONES void add_row_f32(float* out, const float* a, const float* b, int n) {
  add_row<float>(out, a, b, n);
}

// acc (n) += x (n)
template <class T>
LMF_INLINE void acc_row(T* acc, const T* x, int n) {
#pragma omp simd
  for (int c = 0; c < n; ++c) acc[c] += x[c];
}
LMF_CLONES void acc_row_f32(float* acc, const float* x, int n) { acc_row<float>(acc, x, n); }

template <class T>
LMF_INLINE void acc_any(T* acc, const T* x, int n) {
  if constexpr (std::is_same_v<T, float>) {
    acc_row_f32(acc, x, n);
  } else {
    acc_row<T>(acc, x, n);
  }
}

}  // namespace

template <class T>
void encoder_forward(T* out, const int32_t* tokens, const T* wte, const T* wpe, int B, int T_,
                     int C) {
  const long BT = (long)B * T_;
#pragma omp parallel for schedule(static)
  for (long bt = 0; bt < BT; ++bt) {
    const int t = (int)(bt % T_);
    const T* e = wte + (size_t)tokens[bt] * C;
    if (!wpe) {
      std::copy(e, e + C, out + bt * C);
      continue;
    }
    const T* p = wpe + (size_t)t * C;
    if constexpr (std::is_same_v<T, float>) {
      add_row_f32(out + bt * C, e, p, C);
    } else {
      add_row<T>(out + bt * C, e, p, C);
    }
  }
}

template <class T>
void encoder_backward(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int B, int T_,
                      int C) {
  // dwpe[t] += sum_b dout[b, t]: positions are disjoint across threads; b in order.
  if (dwpe) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < T_; ++t)
      for (int b = 0; b < B; ++b) acc_any(dwpe + (size_t)t * C, dout + ((size_t)b * T_ + t) * C, C);
  }

  // dwte: a token may repeat, so rows of dwte are not owned by one (b, t). Instead each thread
  // owns a block of channels and walks all tokens in order: no atomics, and every element's sum
  // runs in token order whatever the thread count (bit-reproducible).
  constexpr int kBlock = 64;
  const int nblocks = (C + kBlock - 1) / kBlock;
  const long BT = (long)B * T_;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < nblocks; ++blk) {
    const int c0 = blk * kBlock, n = std::min(C, c0 + kBlock) - c0;
    for (long bt = 0; bt < BT; ++bt)
      acc_any(dwte + (size_t)tokens[bt] * C + c0, dout + bt * C + c0, n);
  }
}

template void encoder_forward<float>(float*, const int32_t*, const float*, const float*, int, int,
                                     int);
template void encoder_forward<double>(double*, const int32_t*, const double*, const double*, int,
                                      int, int);
template void encoder_backward<float>(float*, float*, const float*, const int32_t*, int, int, int);
template void encoder_backward<double>(double*, double*, const double*, const int32_t*, int, int,
                                       int);

}  // namespace lmf::ops
