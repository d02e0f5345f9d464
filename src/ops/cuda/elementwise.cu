// Elementwise CUDA ops: residual add, GELU (tanh approximation) forward and backward.
// Same formulas as ops/cpu/residual.cpp and ops/cpu/gelu.cpp, in fp32 (tanhf, no fast math).
// Templated over the storage type T (float or bf16, bf16.cuh): loads widen, stores round.
// No __restrict__: callers run these in place (out == a, dinp == dout; see nn/gpt2_block.h).
#include <cuda_runtime.h>

#include "ops/cuda/bf16.cuh"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops_cuda.h"

namespace lmf::cuda {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;

using detail::load;
using detail::store;

template <class T>
__global__ void residual_kernel(T* out, const T* a, const T* b, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    store(out + i, load(a + i) + load(b + i));
}

template <class T>
__global__ void gelu_fwd_kernel(T* out, const T* x, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float xi = load(x + i);
    const float u = kSqrt2OverPi * (xi + kCubic * xi * xi * xi);
    store(out + i, 0.5f * xi * (1.0f + tanhf(u)));
  }
}

// gelu'(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx, du/dx = s (1 + 3 a x^2).
template <class T>
__global__ void gelu_bwd_kernel(T* dinp, const T* x, const T* dout, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float xi = load(x + i);
    const float th = tanhf(kSqrt2OverPi * (xi + kCubic * xi * xi * xi));
    const float dudx = kSqrt2OverPi * (1.0f + 3.0f * kCubic * xi * xi);
    store(dinp + i, (0.5f * (1.0f + th) + 0.5f * xi * (1.0f - th * th) * dudx) * load(dout + i));
  }
}

template <class T>
void residual_launch(T* out, const T* a, const T* b, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  LMF_LAUNCH(residual_kernel<T>, detail::grid_for(n), detail::kThreads, 0, stream)(out, a, b, n);
  LMF_CUDA_CHECK_LAUNCH();
}

template <class T>
void gelu_forward_launch(T* out, const T* inp, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  LMF_LAUNCH(gelu_fwd_kernel<T>, detail::grid_for(n), detail::kThreads, 0, stream)(out, inp, n);
  LMF_CUDA_CHECK_LAUNCH();
}

template <class T>
void gelu_backward_launch(T* dinp, const T* inp, const T* dout, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  LMF_LAUNCH(gelu_bwd_kernel<T>, detail::grid_for(n), detail::kThreads, 0, stream)
  (dinp, inp, dout, n);
  LMF_CUDA_CHECK_LAUNCH();
}

}  // namespace

void residual_forward(float* out, const float* a, const float* b, size_t n, cudaStream_t stream) {
  residual_launch(out, a, b, n, stream);
}
void residual_forward(bf16* out, const bf16* a, const bf16* b, size_t n, cudaStream_t stream) {
  residual_launch(out, a, b, n, stream);
}

void gelu_forward(float* out, const float* inp, size_t n, cudaStream_t stream) {
  gelu_forward_launch(out, inp, n, stream);
}
void gelu_forward(bf16* out, const bf16* inp, size_t n, cudaStream_t stream) {
  gelu_forward_launch(out, inp, n, stream);
}

void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n,
                   cudaStream_t stream) {
  gelu_backward_launch(dinp, inp, dout, n, stream);
}
void gelu_backward(bf16* dinp, const bf16* inp, const bf16* dout, size_t n, cudaStream_t stream) {
  gelu_backward_launch(dinp, inp, dout, n, stream);
}

}  // namespace lmf::cuda
