// GELU, tanh approximation (Hendrycks & Gimpel 2016, eq. in sec. 2), and its derivative.
#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "ops/cpu/simd.h"
#include "ops/ops.h"

namespace lmf::ops {
namespace {

constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kCubic = 0.044715;
// Elements per parallel chunk: large enough to amortise the per-chunk call, small enough to
// balance threads.
constexpr size_t kChunk = 1 << 14;

template <class T>
LMF_INLINE void gelu_fwd_chunk(T* out, const T* x, size_t n) {
  const T s = T(kSqrt2OverPi), a = T(kCubic);
#pragma omp simd
  for (size_t i = 0; i < n; ++i) {
    const T u = s * (x[i] + a * x[i] * x[i] * x[i]);
    out[i] = T(0.5) * x[i] * (T(1) + cpu::vtanh(u));
  }
}
LMF_CLONES void gelu_fwd_chunk_f32(float* out, const float* x, size_t n) {
  gelu_fwd_chunk<float>(out, x, n);
}

// gelu'(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx, du/dx = s (1 + 3 a x^2).
template <class T>
LMF_INLINE void gelu_bwd_chunk(T* dinp, const T* x, const T* dout, size_t n) {
  const T s = T(kSqrt2OverPi), a = T(kCubic);
#pragma omp simd
  for (size_t i = 0; i < n; ++i) {
    const T xi = x[i];
    const T th = cpu::vtanh(s * (xi + a * xi * xi * xi));
    const T dudx = s * (T(1) + T(3) * a * xi * xi);
    dinp[i] = (T(0.5) * (T(1) + th) + T(0.5) * xi * (T(1) - th * th) * dudx) * dout[i];
  }
}
LMF_CLONES void gelu_bwd_chunk_f32(float* dinp, const float* x, const float* dout, size_t n) {
  gelu_bwd_chunk<float>(dinp, x, dout, n);
}

}  // namespace

template <class T>
void gelu_forward(T* out, const T* inp, size_t n) {
  const long nchunks = (long)((n + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static)
  for (long k = 0; k < nchunks; ++k) {
    const size_t i0 = (size_t)k * kChunk, len = std::min(n - i0, kChunk);
    if constexpr (std::is_same_v<T, float>) {
      gelu_fwd_chunk_f32(out + i0, inp + i0, len);
    } else {
      gelu_fwd_chunk<T>(out + i0, inp + i0, len);
    }
  }
}

template <class T>
void gelu_backward(T* dinp, const T* inp, const T* dout, size_t n) {
  const long nchunks = (long)((n + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static)
  for (long k = 0; k < nchunks; ++k) {
    const size_t i0 = (size_t)k * kChunk, len = std::min(n - i0, kChunk);
    if constexpr (std::is_same_v<T, float>) {
      gelu_bwd_chunk_f32(dinp + i0, inp + i0, dout + i0, len);
    } else {
      gelu_bwd_chunk<T>(dinp + i0, inp + i0, dout + i0, len);
    }
  }
}

template void gelu_forward<float>(float*, const float*, size_t);
template void gelu_forward<double>(double*, const double*, size_t);
template void gelu_backward<float>(float*, const float*, const float*, size_t);
template void gelu_backward<double>(double*, const double*, const double*, size_t);

}  // namespace lmf::ops
