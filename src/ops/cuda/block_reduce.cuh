#pragma once
// Reductions over a thread block in a fixed order (device code; include from .cu only): each
// warp's butterfly, then the warps' partials by warp 0's butterfly; every thread gets the result.
// shared holds kThreads / 32 + 1 floats. The first __syncthreads also orders a call after any
// earlier use of shared by the same block.
#include <cuda_runtime.h>

#include "ops/cuda/launch.cuh"

namespace lmf::cuda::detail {

template <int kThreads>
__device__ float block_max(float v, float* shared) {
  constexpr int kWarps = kThreads / kWarp;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = o > v ? o : v;
  }
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float t = lane < kWarps ? shared[lane] : shared[0];
#pragma unroll
    for (int off = kWarp / 2; off > 0; off >>= 1) {
      const float o = __shfl_xor_sync(0xffffffffu, t, off);
      t = o > t ? o : t;
    }
    if (lane == 0) shared[kWarps] = t;
  }
  __syncthreads();
  return shared[kWarps];
}

template <int kThreads>
__device__ float block_sum(float v, float* shared) {
  constexpr int kWarps = kThreads / kWarp;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  v = warp_sum(v);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const float t = warp_sum(lane < kWarps ? shared[lane] : 0.0f);
    if (lane == 0) shared[kWarps] = t;
  }
  __syncthreads();
  return shared[kWarps];
}

}  // namespace lmf::cuda::detail
