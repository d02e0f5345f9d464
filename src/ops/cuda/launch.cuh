#pragma once
// Launch helpers shared by the kernel files (device code; include from .cu only).
#include <cstddef>

// LMF_LAUNCH(kernel, grid, block, shared_bytes, stream)(args...) launches a kernel:
// kernel<<<grid, block, shared_bytes, stream>>>(args...) under nvcc. In the CPU emulation of
// CUDA (tests/cuda_emu/, which compiles these files as C++ to run the GPU tests on any machine)
// it runs the kernel's threads as fibers. LMF_DYNAMIC_SHARED(T, name) declares the dynamic
// shared memory, as `extern __shared__ T name[]`.
#ifdef LMF_CUDA_EMU
#define LMF_LAUNCH(kernel, grid, block, shared_bytes, stream) \
  ::lmf::emu::launcher(kernel, grid, block, shared_bytes, stream)
#define LMF_DYNAMIC_SHARED(T, name) T* name = ::lmf::emu::dynamic_shared<T>()
#else
#define LMF_LAUNCH(kernel, grid, block, shared_bytes, stream) \
  kernel<<<grid, block, shared_bytes, stream>>>
#define LMF_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif

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
