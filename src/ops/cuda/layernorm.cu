// LayerNorm (Ba et al. 2016) on the GPU, eps 1e-5, biased two-pass variance; the same formulas as
// ops/cpu/layernorm.cpp, fp32 throughout.
//  forward:  one warp per row; mean, then sum (x - mean)^2 (no cancellation), warp shuffles. A lane
//            takes groups of 8 columns in 16-byte accesses when the rows allow (pack.cuh), else
//            single columns; bf16 and float choose alike, so they sum in the same order.
//  backward: dinp += ... one warp per row (two row reductions);
//            dw += sum_i norm * dout, db += sum_i dout: column sums (ops/cuda/reduce.cuh), one
//            block per 32 columns, 32 row lanes each summing rows i = lane (mod 32) in order, then
//            the 32 partials in order. No atomics: deterministic for a given (N, C).
// The gradient rule (ops/ops.h, nn/nn.h): dinp, dw and db all ACCUMULATE (+=).
// Templated over the storage type T of out, inp, w, b, dout, dinp (float or bf16, bf16.cuh); mean,
// rstd, dw and db are float for both. A bf16 dinp += widens, adds in float and rounds once.
#include <cuda_runtime.h>

#include "ops/cuda/bf16.cuh"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops_cuda.h"
#include "ops/cuda/pack.cuh"
#include "ops/cuda/reduce.cuh"

namespace lmf::cuda {
namespace {

using detail::as_stored;
using detail::kRowsPerBlock;
using detail::kWarp;
using detail::load;
using detail::load_n;
using detail::row_blocks;
using detail::store_n;
using detail::warp_sum;

constexpr float kEps = 1e-5f;

// One row by one warp, given its sum: the mean, the variance, the output and the statistics. Each
// lane reads only the columns it summed (and, fused, wrote): its groups of K (pack.cuh,
// with_row_vec).
template <class T, int K>
__device__ void ln_row(T* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
                       const T* x, const T* __restrict__ w, const T* __restrict__ b, int row, int C,
                       int lane, float s) {
  const float m = warp_sum(s) / C;
  float v = 0.0f;
  for (int c = lane * K; c < C; c += kWarp * K) {
    float xv[K];
    load_n(xv, x + c);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const float d = xv[k] - m;
      v += d * d;
    }
  }
  const float r = 1.0f / sqrtf(warp_sum(v) / C + kEps);
  T* o = out + (size_t)row * C;
  for (int c = lane * K; c < C; c += kWarp * K) {
    float xv[K], wv[K], bv[K];
    load_n(xv, x + c);
    load_n(wv, w + c);
    load_n(bv, b + c);
#pragma unroll
    for (int k = 0; k < K; ++k) xv[k] = (xv[k] - m) * r * wv[k] + bv[k];
    store_n(o + c, xv);
  }
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = r;
  }
}

template <class T, int K>
__global__ void ln_fwd_kernel(T* __restrict__ out, float* __restrict__ mean,
                              float* __restrict__ rstd, const T* __restrict__ inp,
                              const T* __restrict__ w, const T* __restrict__ b, int N, int C) {
  const int lane = threadIdx.x % kWarp;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= N) return;  // uniform across the warp: the shuffles below see all 32 lanes
  const T* x = inp + (size_t)row * C;
  float s = 0.0f;
  for (int c = lane * K; c < C; c += kWarp * K) {
    float xv[K];
    load_n(xv, x + c);
#pragma unroll
    for (int k = 0; k < K; ++k) s += xv[k];
  }
  ln_row<T, K>(out, mean, rstd, x, w, b, row, C, lane, s);
}

// res = a + b while summing it: a and b read once, res written and read back by the same lane (no
// __restrict__ on them: res may be a). The sum is of res as stored (rounded, for bf16), the value
// the unfused pair's norm reads.
template <class T, int K>
__global__ void residual_ln_fwd_kernel(T* res, T* __restrict__ out, float* __restrict__ mean,
                                       float* __restrict__ rstd, const T* a, const T* b,
                                       const T* __restrict__ w, const T* __restrict__ bias, int N,
                                       int C) {
  const int lane = threadIdx.x % kWarp;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= N) return;
  const size_t off = (size_t)row * C;
  T* x = res + off;
  float s = 0.0f;
  for (int c = lane * K; c < C; c += kWarp * K) {
    float av[K], bv[K];
    load_n(av, a + off + c);
    load_n(bv, b + off + c);
#pragma unroll
    for (int k = 0; k < K; ++k) av[k] = as_stored<T>(av[k] + bv[k]);
    store_n(x + c, av);
#pragma unroll
    for (int k = 0; k < K; ++k) s += av[k];
  }
  ln_row<T, K>(out, mean, rstd, x, w, bias, row, C, lane, s);
}

// dinp row += (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd, dnorm = w * dout.
template <class T, int K>
__global__ void ln_bwd_dinp_kernel(T* __restrict__ dinp, const T* __restrict__ dout,
                                   const T* __restrict__ inp, const T* __restrict__ w,
                                   const float* __restrict__ mean, const float* __restrict__ rstd,
                                   int N, int C) {
  const int lane = threadIdx.x % kWarp;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= N) return;
  const size_t off = (size_t)row * C;
  const T* x = inp + off;
  const T* d = dout + off;
  const float m = mean[row], r = rstd[row];
  float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
  for (int c = lane * K; c < C; c += kWarp * K) {
    float xv[K], wv[K], dv[K];
    load_n(xv, x + c);
    load_n(wv, w + c);
    load_n(dv, d + c);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const float norm = (xv[k] - m) * r;
      const float dnorm = wv[k] * dv[k];
      dnorm_mean += dnorm;
      dnorm_norm_mean += dnorm * norm;
    }
  }
  dnorm_mean = warp_sum(dnorm_mean) / C;
  dnorm_norm_mean = warp_sum(dnorm_norm_mean) / C;
  T* di = dinp + off;
  for (int c = lane * K; c < C; c += kWarp * K) {
    float xv[K], wv[K], dv[K], iv[K];
    load_n(xv, x + c);
    load_n(wv, w + c);
    load_n(dv, d + c);
    load_n(iv, di + c);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const float norm = (xv[k] - m) * r;
      const float dnorm = wv[k] * dv[k];
      iv[k] = iv[k] + (dnorm - dnorm_mean - norm * dnorm_norm_mean) * r;
    }
    store_n(di + c, iv);
  }
}

// dw += sum_i norm * dout, db += sum_i dout over the rows, in the fixed order of
// column_sums_accumulate.
template <class T>
__global__ void __launch_bounds__(detail::kColSumThreads)
    ln_bwd_params_kernel(float* dw, float* db, float* part, const T* __restrict__ dout,
                         const T* __restrict__ inp, const float* __restrict__ mean,
                         const float* __restrict__ rstd, int N, int C) {
  float* const dst[2] = {dw, db};
  detail::column_sums_accumulate<2>(dst, part, N, C, [=](float(&t)[2], int i, int c) {
    const size_t k = (size_t)i * C + c;
    const float d = load(dout + k);
    t[0] = (load(inp + k) - mean[i]) * rstd[i] * d;
    t[1] = d;
  });
}

template <class T>
void forward_launch(T* out, float* mean, float* rstd, const T* inp, const T* w, const T* b, int N,
                    int C, cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  detail::with_row_vec(
      C,
      [&](auto k) {
        LMF_LAUNCH((ln_fwd_kernel<T, decltype(k)::value>), row_blocks(N), kRowsPerBlock * kWarp, 0,
                   stream)
        (out, mean, rstd, inp, w, b, N, C);
      },
      out, inp, w, b);
  LMF_CUDA_CHECK_LAUNCH();
}

template <class T>
void residual_forward_launch(T* res, T* out, float* mean, float* rstd, const T* a, const T* b,
                             const T* w, const T* bias, int N, int C, cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  detail::with_row_vec(
      C,
      [&](auto k) {
        LMF_LAUNCH((residual_ln_fwd_kernel<T, decltype(k)::value>), row_blocks(N),
                   kRowsPerBlock * kWarp, 0, stream)
        (res, out, mean, rstd, a, b, w, bias, N, C);
      },
      res, out, a, b, w, bias);
  LMF_CUDA_CHECK_LAUNCH();
}

template <class T>
void backward_launch(T* dinp, float* dw, float* db, const T* dout, const T* inp, const T* w,
                     const float* mean, const float* rstd, int N, int C, cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  detail::with_row_vec(
      C,
      [&](auto k) {
        LMF_LAUNCH((ln_bwd_dinp_kernel<T, decltype(k)::value>), row_blocks(N),
                   kRowsPerBlock * kWarp, 0, stream)
        (dinp, dout, inp, w, mean, rstd, N, C);
      },
      dinp, dout, inp, w);
  LMF_CUDA_CHECK_LAUNCH();
  detail::column_sums<2>({{dw, db}}, N, C, stream, [&](dim3 grid, float* part) {
    LMF_LAUNCH(ln_bwd_params_kernel<T>, grid, detail::col_sum_block(), 0, stream)
    (dw, db, part, dout, inp, mean, rstd, N, C);
  });
}

}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* w,
                       const float* b, int N, int C, cudaStream_t stream) {
  forward_launch(out, mean, rstd, inp, w, b, N, C, stream);
}
void layernorm_forward(bf16* out, float* mean, float* rstd, const bf16* inp, const bf16* w,
                       const bf16* b, int N, int C, cudaStream_t stream) {
  forward_launch(out, mean, rstd, inp, w, b, N, C, stream);
}

void residual_layernorm_forward(float* res, float* out, float* mean, float* rstd, const float* a,
                                const float* b, const float* w, const float* bias, int N, int C,
                                cudaStream_t stream) {
  residual_forward_launch(res, out, mean, rstd, a, b, w, bias, N, C, stream);
}
void residual_layernorm_forward(bf16* res, bf16* out, float* mean, float* rstd, const bf16* a,
                                const bf16* b, const bf16* w, const bf16* bias, int N, int C,
                                cudaStream_t stream) {
  residual_forward_launch(res, out, mean, rstd, a, b, w, bias, N, C, stream);
}

void layernorm_backward(float* dinp, float* dw, float* db, const float* dout, const float* inp,
                        const float* w, const float* mean, const float* rstd, int N, int C,
                        cudaStream_t stream) {
  backward_launch(dinp, dw, db, dout, inp, w, mean, rstd, N, C, stream);
}
void layernorm_backward(bf16* dinp, float* dw, float* db, const bf16* dout, const bf16* inp,
                        const bf16* w, const float* mean, const float* rstd, int N, int C,
                        cudaStream_t stream) {
  backward_launch(dinp, dw, db, dout, inp, w, mean, rstd, N, C, stream);
}

}  // namespace lmf::cuda
