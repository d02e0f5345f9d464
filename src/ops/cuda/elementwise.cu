// Elementwise CUDA ops: residual add, GELU (tanh approximation) forward and backward.
// Same formulas as ops/cpu/residual.cpp and ops/cpu/gelu.cpp, in fp32 (tanhf, no fast math).
// No __restrict__: callers run these in place (out == a, dinp == dout; see nn/gpt2_block.h).
#include <cuda_runtime.h>

#include "ops/cuda/cuda_util.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops_cuda.h"

namespace lmf::cuda {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;

__global__ void residual_kernel(float* out, const float* a, const float* b, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = a[i] + b[i];
}

__global__ void gelu_fwd_kernel(float* out, const float* x, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float xi = x[i];
    const float u = kSqrt2OverPi * (xi + kCubic * xi * xi * xi);
    out[i] = 0.5f * xi * (1.0f + tanhf(u));
  }
}

// gelu'(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx, du/dx = s (1 + 3 a x^2).
__global__ void gelu_bwd_kernel(float* dinp, const float* x, const float* dout, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float xi = x[i];
    const float th = tanhf(kSqrt2OverPi * (xi + kCubic * xi * xi * xi));
    const float dudx = kSqrt2OverPi * (1.0f + 3.0f * kCubic * xi * xi);
    dinp[i] = (0.5f * (1.0f + th) + 0.5f * xi * (1.0f - th * th) * dudx) * dout[i];
  }
}

}  // namespace

void residual_forward(float* out, const float* a, const float* b, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  LMF_LAUNCH(residual_kernel, detail::grid_for(n), detail::kThreads, 0, stream)(out, a, b, n);
  LMF_CUDA_CHECK_LAUNCH();
}

void gelu_forward(float* out, const float* inp, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  LMF_LAUNCH(gelu_fwd_kernel, detail::grid_for(n), detail::kThreads, 0, stream)(out, inp, n);
  LMF_CUDA_CHECK_LAUNCH();
}

void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n,
                   cudaStream_t stream) {
  if (n == 0) return;
  LMF_LAUNCH(gelu_bwd_kernel, detail::grid_for(n), detail::kThreads, 0, stream)(dinp, inp, dout, n);
  LMF_CUDA_CHECK_LAUNCH();
}

}  // namespace lmf::cuda
