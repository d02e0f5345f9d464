// Residual add: out = a + b. Its backward is the identity (the caller passes dout through).
#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "ops/cpu/simd.h"
#include "ops/ops.h"

namespace lmf::ops {
namespace {

constexpr size_t kChunk = 1 << 14;  // elements per parallel chunk

template <class T>
LMF_INLINE void add_chunk(T* out, const T* a, const T* b, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}
LMF_CLONES void add_chunk_f32(float* out, const float* a, const float* b, size_t n) {
  add_chunk<float>(out, a, b, n);
}

}  // namespace

template <class T>
void residual_forward(T* out, const T* a, const T* b, size_t n) {
  const long nchunks = (long)((n + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static)
  for (long k = 0; k < nchunks; ++k) {
    const size_t i0 = (size_t)k * kChunk, len = std::min(n - i0, kChunk);
    if constexpr (std::is_same_v<T, float>) {
      add_chunk_f32(out + i0, a + i0, b + i0, len);
    } else {
      add_chunk<T>(out + i0, a + i0, b + i0, len);
    }
  }
}

template void residual_forward<float>(float*, const float*, const float*, size_t);
template void residual_forward<double>(double*, const double*, const double*, size_t);

}  // namespace lmf::ops
