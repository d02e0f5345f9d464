// RMSNorm (Zhang & Sennrich 2019, eq. 4) on the GPU: no mean subtraction, no bias; the same
// formulas and operation order as ops/cpu/rmsnorm.cpp, fp32 throughout.
//  forward:  one warp per row, sum x^2 by warp shuffles (ops/cuda/reduce.cuh row layout); a lane
//            takes groups of 8 columns in 16-byte accesses when the rows allow (pack.cuh), else
//            single columns; bf16 and float choose alike, so they sum in the same order.
//  backward: with norm = x * rstd, dnorm = w * dout:
//            dinp += (dnorm - norm * mean(dnorm * norm)) * rstd, one warp per row;
//            dw += sum_i norm * dout, column sums in a fixed order (reduce.cuh). No atomics:
//            deterministic for a given (N, C).
// The gradient rule (ops/ops.h, nn/nn.h): dinp and dw ACCUMULATE (+=).
// Templated over the storage type T of out, inp, w, dout, dinp (float or bf16, bf16.cuh); rstd and
// dw are float for both. A bf16 dinp += widens, adds in float and rounds once.
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

// One row by one warp, given its sum of squares: the output and rstd. Each lane reads only the
// columns it summed (and, fused, wrote): its groups of K (pack.cuh, with_row_vec).
template <class T, int K>
__device__ void rms_row(T* __restrict__ out, float* __restrict__ rstd, const T* x,
                        const T* __restrict__ w, int row, int C, int lane, float ss, float eps) {
  const float r = 1.0f / sqrtf(warp_sum(ss) / C + eps);
  T* o = out + (size_t)row * C;
  for (int c = lane * K; c < C; c += kWarp * K) {
    float xv[K], wv[K];
    load_n(xv, x + c);
    load_n(wv, w + c);
#pragma unroll
    for (int k = 0; k < K; ++k) xv[k] = xv[k] * r * wv[k];
    store_n(o + c, xv);
  }
  if (lane == 0) rstd[row] = r;
}

// out, inp (N, C); rstd (N); w (C).
template <class T, int K>
__global__ void rms_fwd_kernel(T* __restrict__ out, float* __restrict__ rstd,
                               const T* __restrict__ inp, const T* __restrict__ w, int N, int C,
                               float eps) {
  const int lane = threadIdx.x % kWarp;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= N) return;  // uniform across the warp: the shuffles below see all 32 lanes
  const T* x = inp + (size_t)row * C;
  float ss = 0.0f;
  for (int c = lane * K; c < C; c += kWarp * K) {
    float xv[K];
    load_n(xv, x + c);
#pragma unroll
    for (int k = 0; k < K; ++k) ss += xv[k] * xv[k];
  }
  rms_row<T, K>(out, rstd, x, w, row, C, lane, ss, eps);
}

// res = a + b while summing its squares (res may be a: no __restrict__ on them), of res as stored
// (rounded, for bf16), the value the unfused pair's norm reads.
template <class T, int K>
__global__ void residual_rms_fwd_kernel(T* res, T* __restrict__ out, float* __restrict__ rstd,
                                        const T* a, const T* b, const T* __restrict__ w, int N,
                                        int C, float eps) {
  const int lane = threadIdx.x % kWarp;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= N) return;
  const size_t off = (size_t)row * C;
  T* x = res + off;
  float ss = 0.0f;
  for (int c = lane * K; c < C; c += kWarp * K) {
    float av[K], bv[K];
    load_n(av, a + off + c);
    load_n(bv, b + off + c);
#pragma unroll
    for (int k = 0; k < K; ++k) av[k] = as_stored<T>(av[k] + bv[k]);
    store_n(x + c, av);
#pragma unroll
    for (int k = 0; k < K; ++k) ss += av[k] * av[k];
  }
  rms_row<T, K>(out, rstd, x, w, row, C, lane, ss, eps);
}

// dinp row += (dnorm - norm * mean(dnorm * norm)) * rstd. dinp, dout, inp (N, C); w (C).
template <class T, int K>
__global__ void rms_bwd_dinp_kernel(T* __restrict__ dinp, const T* __restrict__ dout,
                                    const T* __restrict__ inp, const T* __restrict__ w,
                                    const float* __restrict__ rstd, int N, int C) {
  const int lane = threadIdx.x % kWarp;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= N) return;
  const size_t off = (size_t)row * C;
  const T* x = inp + off;
  const T* d = dout + off;
  const float r = rstd[row];
  float m = 0.0f;
  for (int c = lane * K; c < C; c += kWarp * K) {
    float xv[K], wv[K], dv[K];
    load_n(xv, x + c);
    load_n(wv, w + c);
    load_n(dv, d + c);
#pragma unroll
    for (int k = 0; k < K; ++k) m += wv[k] * dv[k] * (xv[k] * r);
  }
  m = warp_sum(m) / C;
  T* di = dinp + off;
  for (int c = lane * K; c < C; c += kWarp * K) {
    float xv[K], wv[K], dv[K], iv[K];
    load_n(xv, x + c);
    load_n(wv, w + c);
    load_n(dv, d + c);
    load_n(iv, di + c);
#pragma unroll
    for (int k = 0; k < K; ++k) iv[k] = iv[k] + (wv[k] * dv[k] - xv[k] * r * m) * r;
    store_n(di + c, iv);
  }
}

// dw (C) += sum_i x[i, c] * rstd[i] * dout[i, c], in the fixed order of column_sums_accumulate.
template <class T>
__global__ void __launch_bounds__(detail::kColSumThreads)
    rms_bwd_dw_kernel(float* dw, float* part, const T* __restrict__ dout, const T* __restrict__ inp,
                      const float* __restrict__ rstd, int N, int C) {
  float* const dst[1] = {dw};
  detail::column_sums_accumulate<1>(dst, part, N, C, [=](float(&t)[1], int i, int c) {
    const size_t k = (size_t)i * C + c;
    t[0] = load(inp + k) * rstd[i] * load(dout + k);
  });
}

template <class T>
void forward_launch(T* out, float* rstd, const T* inp, const T* w, int N, int C, float eps,
                    cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  detail::with_row_vec(
      C,
      [&](auto k) {
        LMF_LAUNCH((rms_fwd_kernel<T, decltype(k)::value>), row_blocks(N), kRowsPerBlock * kWarp, 0,
                   stream)
        (out, rstd, inp, w, N, C, eps);
      },
      out, inp, w);
  LMF_CUDA_CHECK_LAUNCH();
}

template <class T>
void residual_forward_launch(T* res, T* out, float* rstd, const T* a, const T* b, const T* w, int N,
                             int C, float eps, cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  detail::with_row_vec(
      C,
      [&](auto k) {
        LMF_LAUNCH((residual_rms_fwd_kernel<T, decltype(k)::value>), row_blocks(N),
                   kRowsPerBlock * kWarp, 0, stream)
        (res, out, rstd, a, b, w, N, C, eps);
      },
      res, out, a, b, w);
  LMF_CUDA_CHECK_LAUNCH();
}

template <class T>
void backward_launch(T* dinp, float* dw, const T* dout, const T* inp, const T* w, const float* rstd,
                     int N, int C, cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  detail::with_row_vec(
      C,
      [&](auto k) {
        LMF_LAUNCH((rms_bwd_dinp_kernel<T, decltype(k)::value>), row_blocks(N),
                   kRowsPerBlock * kWarp, 0, stream)
        (dinp, dout, inp, w, rstd, N, C);
      },
      dinp, dout, inp, w);
  LMF_CUDA_CHECK_LAUNCH();
  detail::column_sums<1>({{dw}}, N, C, stream, [&](dim3 grid, float* part) {
    LMF_LAUNCH(rms_bwd_dw_kernel<T>, grid, detail::col_sum_block(), 0, stream)(dw, part, dout, inp, rstd, N, C);
  });
}

}  // namespace

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* w, int N, int C,
                     float eps, cudaStream_t stream) {
  forward_launch(out, rstd, inp, w, N, C, eps, stream);
}
void rmsnorm_forward(bf16* out, float* rstd, const bf16* inp, const bf16* w, int N, int C,
                     float eps, cudaStream_t stream) {
  forward_launch(out, rstd, inp, w, N, C, eps, stream);
}

void residual_rmsnorm_forward(float* res, float* out, float* rstd, const float* a, const float* b,
                              const float* w, int N, int C, float eps, cudaStream_t stream) {
  residual_forward_launch(res, out, rstd, a, b, w, N, C, eps, stream);
}
void residual_rmsnorm_forward(bf16* res, bf16* out, float* rstd, const bf16* a, const bf16* b,
                              const bf16* w, int N, int C, float eps, cudaStream_t stream) {
  residual_forward_launch(res, out, rstd, a, b, w, N, C, eps, stream);
}

void rmsnorm_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                      const float* rstd, int N, int C, cudaStream_t stream) {
  backward_launch(dinp, dw, dout, inp, w, rstd, N, C, stream);
}
void rmsnorm_backward(bf16* dinp, float* dw, const bf16* dout, const bf16* inp, const bf16* w,
                      const float* rstd, int N, int C, cudaStream_t stream) {
  backward_launch(dinp, dw, dout, inp, w, rstd, N, C, stream);
}

}  // namespace lmf::cuda
