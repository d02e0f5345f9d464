// Elementwise CUDA ops of the Llama family: SwiGLU (Shazeer 2020, eq. 5) and rotary position
// embedding (Su et al. 2021, RoFormer eq. 34), forward and backward. Same formulas and operation
// order as ops/cpu/swiglu.cpp and ops/cpu/rope.cpp, fp32 (expf, no fast math); RoPE's angles, cos
// and sin in double, rounded once to float, as the CPU's tables are. Templated over the storage
// type T (float or bf16, bf16.cuh): loads widen, stores round. SwiGLU uses 16-byte accesses where
// the pointers allow (pack.cuh), with the same arithmetic and bits.
// No __restrict__: every output element is written after all the inputs it reads (for SwiGLU, all
// of its group's), by the same thread, so in-place calls work (rope out == inp, dinp == dout;
// swiglu dgate == dout, ...).
#include <cuda_runtime.h>

#include "core/error.h"
#include "ops/cuda/bf16.cuh"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops_cuda.h"
#include "ops/cuda/pack.cuh"

namespace lmf::cuda {
namespace {

// sigmoid(x) = 1 / (1 + exp(-x)); for x < -88 expf overflows to inf and s is exactly 0 (no NaN).
__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

using detail::load;
using detail::load_n;
using detail::store;
using detail::store_n;

// out (n) = gate * sigmoid(gate) * up. Over n groups of K elements (pack.cuh).
template <class T, int K>
__global__ void swiglu_fwd_kernel(T* out, const T* gate, const T* up, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    float g[K], u[K];
    load_n(g, gate + i * K);
    load_n(u, up + i * K);
#pragma unroll
    for (int k = 0; k < K; ++k) u[k] = g[k] * sigmoid(g[k]) * u[k];
    store_n(out + i * K, u);
  }
}

// dgate = dout * up * silu'(gate), silu' = s + silu (1 - s); dup = dout * silu. All (n groups of
// K).
template <class T, int K>
__global__ void swiglu_bwd_kernel(T* dgate, T* dup, const T* dout, const T* gate, const T* up,
                                  size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    float g[K], u[K], d[K];
    load_n(g, gate + i * K);
    load_n(u, up + i * K);
    load_n(d, dout + i * K);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const float s = sigmoid(g[k]), silu = g[k] * s;
      g[k] = d[k] * u[k] * (s + silu * (1.0f - s));
      u[k] = d[k] * silu;
    }
    store_n(dgate + i * K, g);
    store_n(dup + i * K, u);
  }
}

// out, inp (B, T, NH, hs); inv_freq (hs/2) doubles. One thread per (b, t, j): the angle and its
// cos, sin (double, the costly part) once, then pair j of every head rotated by +angle (sign 1,
// forward) or -angle (sign -1, backward: R^T). Pair j is (j*step, j*step + other): (2j, 2j+1)
// interleaved, (j, j + hs/2) rotate-half.
template <class F>
__global__ void rope_kernel(F* out, const F* inp, int T, int NH, int hs,
                            const double* __restrict__ inv_freq, int step, int other, int pos0,
                            float sign, size_t n_bt_half) {
  const int half = hs / 2;
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n_bt_half; idx += stride) {
    const size_t bt = idx / half;
    const int j = (int)(idx % half), t = (int)(bt % T);
    double sd, cd;
    sincos(double(pos0 + t) * inv_freq[j], &sd, &cd);
    const float c = (float)cd, sn = sign * (float)sd;
    for (int h = 0; h < NH; ++h) {
      const size_t ia = ((size_t)bt * NH + h) * hs + (size_t)j * step, ib = ia + other;
      const float a = load(inp + ia), b = load(inp + ib);
      store(out + ia, a * c - b * sn);
      store(out + ib, a * sn + b * c);
    }
  }
}

template <class F>
void rope_launch(F* out, const F* inp, int B, int T, int NH, int hs, const double* inv_freq,
                 bool interleaved, int pos0, float sign, cudaStream_t stream) {
  LMF_CHECK(hs > 0 && hs % 2 == 0, "rope: head size {} must be even", hs);
  if (B <= 0 || T <= 0 || NH <= 0) return;
  const size_t n = (size_t)B * T * (hs / 2);
  LMF_LAUNCH(rope_kernel<F>, detail::grid_for(n), detail::kThreads, 0, stream)
  (out, inp, T, NH, hs, inv_freq, interleaved ? 2 : 1, interleaved ? 1 : hs / 2, pos0, sign, n);
  LMF_CUDA_CHECK_LAUNCH();
}

template <class T>
void swiglu_forward_launch(T* out, const T* gate, const T* up, size_t n, cudaStream_t stream) {
  detail::launch_groups(
      n, stream, [](auto k) { return &swiglu_fwd_kernel<T, decltype(k)::value>; }, out, gate, up);
}

template <class T>
void swiglu_backward_launch(T* dgate, T* dup, const T* dout, const T* gate, const T* up, size_t n,
                            cudaStream_t stream) {
  detail::launch_groups(
      n, stream, [](auto k) { return &swiglu_bwd_kernel<T, decltype(k)::value>; }, dgate, dup, dout,
      gate, up);
}

}  // namespace

void swiglu_forward(float* out, const float* gate, const float* up, size_t n, cudaStream_t stream) {
  swiglu_forward_launch(out, gate, up, n, stream);
}
void swiglu_forward(bf16* out, const bf16* gate, const bf16* up, size_t n, cudaStream_t stream) {
  swiglu_forward_launch(out, gate, up, n, stream);
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                     const float* up, size_t n, cudaStream_t stream) {
  swiglu_backward_launch(dgate, dup, dout, gate, up, n, stream);
}
void swiglu_backward(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate, const bf16* up,
                     size_t n, cudaStream_t stream) {
  swiglu_backward_launch(dgate, dup, dout, gate, up, n, stream);
}

void rope_forward(float* out, const float* inp, int B, int T, int NH, int hs,
                  const double* inv_freq, bool interleaved, int pos0, cudaStream_t stream) {
  rope_launch(out, inp, B, T, NH, hs, inv_freq, interleaved, pos0, 1.0f, stream);
}
void rope_forward(bf16* out, const bf16* inp, int B, int T, int NH, int hs, const double* inv_freq,
                  bool interleaved, int pos0, cudaStream_t stream) {
  rope_launch(out, inp, B, T, NH, hs, inv_freq, interleaved, pos0, 1.0f, stream);
}

void rope_backward(float* dinp, const float* dout, int B, int T, int NH, int hs,
                   const double* inv_freq, bool interleaved, int pos0, cudaStream_t stream) {
  rope_launch(dinp, dout, B, T, NH, hs, inv_freq, interleaved, pos0, -1.0f, stream);
}
void rope_backward(bf16* dinp, const bf16* dout, int B, int T, int NH, int hs,
                   const double* inv_freq, bool interleaved, int pos0, cudaStream_t stream) {
  rope_launch(dinp, dout, B, T, NH, hs, inv_freq, interleaved, pos0, -1.0f, stream);
}

}  // namespace lmf::cuda
