// AdamW (Loshchilov & Hutter, Algorithm 2) on the GPU: the decay term is added to the Adam step.
// Same update as ops/cpu/adamw.cpp, fp32, bias corrections 1 / (1 - beta^t) in double on the host.
#include <cuda_runtime.h>

#include "core/error.h"
#include "ops/adamw_step.h"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops_cuda.h"

namespace lmf::cuda {
namespace {

using ops::AdamwStep;

// Element i, gradient gi, weight decay wd: the update both kernels apply.
__device__ __forceinline__ void adamw_element(float* __restrict__ p, float* __restrict__ m,
                                              float* __restrict__ v, size_t i, float gi,
                                              const AdamwStep& s, float wd) {
  const float mi = s.beta1 * m[i] + (1.0f - s.beta1) * gi;
  const float vi = s.beta2 * v[i] + (1.0f - s.beta2) * gi * gi;
  m[i] = mi;
  v[i] = vi;
  const float mhat = mi * s.inv_b1c, vhat = vi * s.inv_b2c;
  const float pi = p[i];
  p[i] = pi - s.lr * (mhat / (sqrtf(vhat) + s.eps) + wd * pi);
}

__global__ void adamw_kernel(float* __restrict__ p, const float* __restrict__ g,
                             float* __restrict__ m, float* __restrict__ v, size_t n, AdamwStep s) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    adamw_element(p, m, v, i, g[i], s, s.wd);
}

// Block b: chunk b, its threads striding over it.
__global__ void adamw_chunks_kernel(float* __restrict__ p, const float* __restrict__ g,
                                    float* __restrict__ m, float* __restrict__ v,
                                    const ops::AdamwChunk* __restrict__ chunks, AdamwStep s,
                                    float gs) {
  const ops::AdamwChunk c = chunks[blockIdx.x];
  for (uint32_t j = threadIdx.x; j < c.size; j += blockDim.x) {
    const size_t i = c.offset + j;
    adamw_element(p, m, v, i, g[i] * gs, s, c.wd);
  }
}

}  // namespace

void adamw_chunks(float* p, const float* g, float* m, float* v, const ops::AdamwChunk* chunks,
                  size_t nchunks, AdamwStep s, float grad_scale, cudaStream_t stream) {
  if (nchunks == 0) return;
  LMF_CHECK(nchunks < (1u << 31), "adamw_chunks: {} chunks", nchunks);
  LMF_LAUNCH(adamw_chunks_kernel, (unsigned)nchunks, detail::kThreads, 0, stream)(p, g, m, v, chunks, s,
                                                                               grad_scale);
  LMF_CUDA_CHECK_LAUNCH();
}

void adamw_update(float* p, const float* g, float* m, float* v, size_t n, float lr, float beta1,
                  float beta2, float eps, float wd, long t, cudaStream_t stream) {
  if (n == 0) return;
  const AdamwStep s = AdamwStep::at(lr, beta1, beta2, eps, wd, t);
  LMF_LAUNCH(adamw_kernel, detail::grid_for(n), detail::kThreads, 0, stream)(p, g, m, v, n, s);
  LMF_CUDA_CHECK_LAUNCH();
}

}  // namespace lmf::cuda
