#pragma once
// Launch helpers shared by the kernel files (device code; include from .cu only).
#include <cstddef>

namespace lmf::cuda::detail {

constexpr int kThreads = 256;  // threads per block for elementwise kernels
constexpr int kWarp = 32;

// Blocks for a grid-stride loop over n elements: enough to fill the GPU, capped so huge n still
// launches (the loop covers the rest).
inline unsigned grid_for(size_t n) {
  const size_t blocks = (n + kThreads - 1) / kThreads;
  return (unsigned)(blocks < (size_t)(1u << 20) ? blocks : (size_t)(1u << 20));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

}  // namespace lmf::cuda::detail
