// SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer", eq. 5): silu(gate) * up.
// silu'(x) = s + x s (1 - s), s = sigmoid(x).
#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "ops/cpu/simd.h"
#include "ops/ops.h"

namespace lmf::ops {
namespace {

// Elements per parallel chunk, as for gelu.
constexpr size_t kChunk = 1 << 14;

// sigmoid(x) = 1 / (1 + exp(-x)): vexp saturates instead of overflowing, so s -> 0 cleanly.
template <class T>
LMF_INLINE T sigmoid(T x) {
  return T(1) / (T(1) + cpu::vexp(-x));
}

template <class T>
LMF_INLINE void swiglu_fwd_chunk(T* out, const T* g, const T* u, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) out[i] = g[i] * sigmoid(g[i]) * u[i];
}
LMF_CLONES void swiglu_fwd_chunk_f32(float* out, const float* g, const float* u, size_t n) {
  swiglu_fwd_chunk<float>(out, g, u, n);
}

template <class T>
LMF_INLINE void swiglu_bwd_chunk(T* dg, T* du, const T* dout, const T* g, const T* u, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) {
    const T s = sigmoid(g[i]);
    const T silu = g[i] * s;
    dg[i] = dout[i] * u[i] * (s + silu * (T(1) - s));
    du[i] = dout[i] * silu;
  }
}
LMF_CLONES void swiglu_bwd_chunk_f32(float* dg, float* du, const float* dout, const float* g,
                                     const float* u, size_t n) {
  swiglu_bwd_chunk<float>(dg, du, dout, g, u, n);
}

}  // namespace

template <class T>
void swiglu_forward(T* out, const T* gate, const T* up, size_t n) {
  const long nchunks = (long)((n + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static)
  for (long k = 0; k < nchunks; ++k) {
    const size_t i0 = (size_t)k * kChunk, len = std::min(n - i0, kChunk);
    if constexpr (std::is_same_v<T, float>) {
      swiglu_fwd_chunk_f32(out + i0, gate + i0, up + i0, len);
    } else {
      swiglu_fwd_chunk<T>(out + i0, gate + i0, up + i0, len);
    }
  }
}

template <class T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, size_t n) {
  const long nchunks = (long)((n + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static)
  for (long k = 0; k < nchunks; ++k) {
    const size_t i0 = (size_t)k * kChunk, len = std::min(n - i0, kChunk);
    if constexpr (std::is_same_v<T, float>) {
      swiglu_bwd_chunk_f32(dgate + i0, dup + i0, dout + i0, gate + i0, up + i0, len);
    } else {
      swiglu_bwd_chunk<T>(dgate + i0, dup + i0, dout + i0, gate + i0, up + i0, len);
    }
  }
}

template void swiglu_forward<float>(float*, const float*, const float*, size_t);
template void swiglu_forward<double>(double*, const double*, const double*, size_t);
template void swiglu_backward<float>(float*, float*, const float*, const float*, const float*,
                                     size_t);
template void swiglu_backward<double>(double*, double*, const double*, const double*, const double*,
                                      size_t);

}  // namespace lmf::ops
