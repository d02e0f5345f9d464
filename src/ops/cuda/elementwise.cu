// Elementwise CUDA ops: residual add, GELU (tanh approximation) forward and backward.
// Same formulas as ops/cpu/residual.cpp and ops/cpu/gelu.cpp, in fp32 (tanhf, no fast math;
// GELU's in gelu.cuh).
// Templated over the storage type T (float or bf16, bf16.cuh): loads widen, stores round; 16-byte
// accesses where the pointers allow (pack.cuh), with the same arithmetic and bits.
// No __restrict__: callers run these in place (out == a, dinp == dout; see nn/gpt2_block.h).
#include <cuda_runtime.h>

#include "ops/cuda/bf16.cuh"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/gelu.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops_cuda.h"
#include "ops/cuda/pack.cuh"

namespace lmf::cuda {
namespace {

using detail::gelu;
using detail::gelu_grad;
using detail::load_n;
using detail::store_n;

// Each kernel runs over n groups of K elements (pack.cuh): K = kVec in 16-byte accesses, or K = 1.
// A thread reads all of a group's inputs before it writes any output, so in-place calls work.
template <class T, int K>
__global__ void residual_kernel(T* out, const T* a, const T* b, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    float x[K], y[K];
    load_n(x, a + i * K);
    load_n(y, b + i * K);
#pragma unroll
    for (int k = 0; k < K; ++k) x[k] += y[k];
    store_n(out + i * K, x);
  }
}

template <class T, int K>
__global__ void gelu_fwd_kernel(T* out, const T* x, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    float v[K];
    load_n(v, x + i * K);
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] = gelu(v[k]);
    store_n(out + i * K, v);
  }
}

template <class T, int K>
__global__ void gelu_bwd_kernel(T* dinp, const T* x, const T* dout, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    float v[K], d[K];
    load_n(v, x + i * K);
    load_n(d, dout + i * K);
#pragma unroll
    for (int k = 0; k < K; ++k) d[k] = gelu_grad(v[k], d[k]);
    store_n(dinp + i * K, d);
  }
}

template <class T>
void residual_launch(T* out, const T* a, const T* b, size_t n, cudaStream_t stream) {
  detail::launch_groups(
      n, stream, [](auto k) { return &residual_kernel<T, decltype(k)::value>; }, out, a, b);
}

template <class T>
void gelu_forward_launch(T* out, const T* inp, size_t n, cudaStream_t stream) {
  detail::launch_groups(
      n, stream, [](auto k) { return &gelu_fwd_kernel<T, decltype(k)::value>; }, out, inp);
}

template <class T>
void gelu_backward_launch(T* dinp, const T* inp, const T* dout, size_t n, cudaStream_t stream) {
  detail::launch_groups(
      n, stream, [](auto k) { return &gelu_bwd_kernel<T, decltype(k)::value>; }, dinp, inp, dout);
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
