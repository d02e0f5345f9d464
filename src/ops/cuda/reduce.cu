// The scratch of the column sums' partials (reduce.cuh): one buffer per device, grown on demand.
// A grown buffer's old one is kept, not freed: a CUDA graph captured before (ops/backend.h) still
// writes and reads it at each launch. It grows once per larger shape (the first backward), so
// this keeps little.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <map>
#include <mutex>

#include "ops/cuda/cuda_util.h"
#include "ops/cuda/reduce.cuh"

namespace lmf::cuda::detail {

float* column_sums_scratch(size_t floats) {
  struct Scratch {
    float* p = nullptr;
    size_t cap = 0;
  };
  static std::mutex mu;
  static auto* by_device = new std::map<int, Scratch>();  // never freed, as the other workspaces
  int dev = 0;
  LMF_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard lock(mu);
  Scratch& s = (*by_device)[dev];
  if (s.cap < floats) {
    s.p = static_cast<float*>(device_malloc(floats * sizeof(float)));
    s.cap = floats;
  }
  return s.p;
}

}  // namespace lmf::cuda::detail
