// LayerNorm (Ba et al. 2016) on the GPU, eps 1e-5, biased two-pass variance; the same formulas as
// ops/cpu/layernorm.cpp, fp32 throughout.
//  forward:  one warp per row; mean, then sum (x - mean)^2 (no cancellation), warp shuffles.
//  backward: dinp += ... one warp per row (two row reductions);
//            dw += sum_i norm * dout, db += sum_i dout: column sums (ops/cuda/reduce.cuh), one
//            block per 32 columns, 32 row lanes each summing rows i = lane (mod 32) in order, then
//            the 32 partials in order. No atomics: deterministic for a given (N, C).
// The gradient rule (ops/ops.h, nn/nn.h): dinp, dw and db all ACCUMULATE (+=).
#include <cuda_runtime.h>

#include "ops/cuda/cuda_util.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops_cuda.h"
#include "ops/cuda/reduce.cuh"

namespace lmf::cuda {
namespace {

using detail::kRowsPerBlock;
using detail::kWarp;
using detail::row_blocks;
using detail::warp_sum;

constexpr float kEps = 1e-5f;

// One row by one warp, given its sum: the mean, the variance, the output and the statistics. Each
// lane reads only the columns c = lane (mod 32), the ones it summed (and, fused, wrote).
__device__ void ln_row(float* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
                       const float* x, const float* __restrict__ w, const float* __restrict__ b,
                       int row, int C, int lane, float s) {
  const float m = warp_sum(s) / C;
  float v = 0.0f;
  for (int c = lane; c < C; c += kWarp) {
    const float d = x[c] - m;
    v += d * d;
  }
  const float r = 1.0f / sqrtf(warp_sum(v) / C + kEps);
  float* o = out + (size_t)row * C;
  for (int c = lane; c < C; c += kWarp) o[c] = (x[c] - m) * r * w[c] + b[c];
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = r;
  }
}

__global__ void ln_fwd_kernel(float* __restrict__ out, float* __restrict__ mean,
                              float* __restrict__ rstd, const float* __restrict__ inp,
                              const float* __restrict__ w, const float* __restrict__ b, int N,
                              int C) {
  const int lane = threadIdx.x % kWarp;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= N) return;  // uniform across the warp: the shuffles below see all 32 lanes
  const float* x = inp + (size_t)row * C;
  float s = 0.0f;
  for (int c = lane; c < C; c += kWarp) s += x[c];
  ln_row(out, mean, rstd, x, w, b, row, C, lane, s);
}

// res = a + b while summing it: a and b read once, res written and read back by the same lane (no
// __restrict__ on them: res may be a).
__global__ void residual_ln_fwd_kernel(float* res, float* __restrict__ out, float* __restrict__ mean,
                                       float* __restrict__ rstd, const float* a, const float* b,
                                       const float* __restrict__ w, const float* __restrict__ bias,
                                       int N, int C) {
  const int lane = threadIdx.x % kWarp;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= N) return;
  const size_t off = (size_t)row * C;
  float* x = res + off;
  float s = 0.0f;
  for (int c = lane; c < C; c += kWarp) {
    const float v = a[off + c] + b[off + c];
    x[c] = v;
    s += v;
  }
  ln_row(out, mean, rstd, x, w, bias, row, C, lane, s);
}

// dinp row += (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd, dnorm = w * dout.
__global__ void ln_bwd_dinp_kernel(float* __restrict__ dinp, const float* __restrict__ dout,
                                   const float* __restrict__ inp, const float* __restrict__ w,
                                   const float* __restrict__ mean, const float* __restrict__ rstd,
                                   int N, int C) {
  const int lane = threadIdx.x % kWarp;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= N) return;
  const size_t off = (size_t)row * C;
  const float* x = inp + off;
  const float* d = dout + off;
  const float m = mean[row], r = rstd[row];
  float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
  for (int c = lane; c < C; c += kWarp) {
    const float norm = (x[c] - m) * r;
    const float dnorm = w[c] * d[c];
    dnorm_mean += dnorm;
    dnorm_norm_mean += dnorm * norm;
  }
  dnorm_mean = warp_sum(dnorm_mean) / C;
  dnorm_norm_mean = warp_sum(dnorm_norm_mean) / C;
  float* di = dinp + off;
  for (int c = lane; c < C; c += kWarp) {
    const float norm = (x[c] - m) * r;
    const float dnorm = w[c] * d[c];
    di[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * r;
  }
}

// dw += sum_i norm * dout, db += sum_i dout over the rows, in the fixed order of
// column_sums_accumulate.
__global__ void ln_bwd_params_kernel(float* __restrict__ dw, float* __restrict__ db,
                                     const float* __restrict__ dout, const float* __restrict__ inp,
                                     const float* __restrict__ mean, const float* __restrict__ rstd,
                                     int N, int C) {
  float* const dst[2] = {dw, db};
  detail::column_sums_accumulate<2>(dst, N, C, [=](float(&acc)[2], int i, int c) {
    const size_t k = (size_t)i * C + c;
    const float d = dout[k];
    acc[0] += (inp[k] - mean[i]) * rstd[i] * d;
    acc[1] += d;
  });
}

}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* w,
                       const float* b, int N, int C, cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  LMF_LAUNCH(ln_fwd_kernel, row_blocks(N), kRowsPerBlock * kWarp, 0, stream)(out, mean, rstd, inp, w, b, N,
                                                                     C);
  LMF_CUDA_CHECK_LAUNCH();
}

void residual_layernorm_forward(float* res, float* out, float* mean, float* rstd, const float* a,
                                const float* b, const float* w, const float* bias, int N, int C,
                                cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  LMF_LAUNCH(residual_ln_fwd_kernel, row_blocks(N), kRowsPerBlock * kWarp, 0, stream)(
      res, out, mean, rstd, a, b, w, bias, N, C);
  LMF_CUDA_CHECK_LAUNCH();
}

void layernorm_backward(float* dinp, float* dw, float* db, const float* dout, const float* inp,
                        const float* w, const float* mean, const float* rstd, int N, int C,
                        cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  LMF_LAUNCH(ln_bwd_dinp_kernel, row_blocks(N), kRowsPerBlock * kWarp, 0, stream)(dinp, dout, inp, w, mean,
                                                                          rstd, N, C);
  LMF_CUDA_CHECK_LAUNCH();
  LMF_LAUNCH(ln_bwd_params_kernel, detail::col_sum_blocks(C), detail::col_sum_block(), 0, stream)(
      dw, db, dout, inp, mean, rstd, N, C);
  LMF_CUDA_CHECK_LAUNCH();
}

}  // namespace lmf::cuda
