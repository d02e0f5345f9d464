// RMSNorm (Zhang & Sennrich 2019, eq. 4) on the GPU: no mean subtraction, no bias; the same
// formulas and operation order as ops/cpu/rmsnorm.cpp, fp32 throughout.
//  forward:  one warp per row, sum x^2 by warp shuffles (ops/cuda/reduce.cuh row layout).
//  backward: with norm = x * rstd, dnorm = w * dout:
//            dinp += (dnorm - norm * mean(dnorm * norm)) * rstd, one warp per row;
//            dw += sum_i norm * dout, column sums in a fixed order (reduce.cuh). No atomics:
//            deterministic for a given (N, C).
// The gradient rule (ops/ops.h, nn/nn.h): dinp and dw ACCUMULATE (+=).
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

// One row by one warp, given its sum of squares: the output and rstd. Each lane reads only the
// columns c = lane (mod 32), the ones it summed (and, fused, wrote).
__device__ void rms_row(float* __restrict__ out, float* __restrict__ rstd, const float* x,
                        const float* __restrict__ w, int row, int C, int lane, float ss, float eps) {
  const float r = 1.0f / sqrtf(warp_sum(ss) / C + eps);
  float* o = out + (size_t)row * C;
  for (int c = lane; c < C; c += kWarp) o[c] = x[c] * r * w[c];
  if (lane == 0) rstd[row] = r;
}

// out, inp (N, C); rstd (N); w (C).
__global__ void rms_fwd_kernel(float* __restrict__ out, float* __restrict__ rstd,
                               const float* __restrict__ inp, const float* __restrict__ w, int N,
                               int C, float eps) {
  const int lane = threadIdx.x % kWarp;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= N) return;  // uniform across the warp: the shuffles below see all 32 lanes
  const float* x = inp + (size_t)row * C;
  float ss = 0.0f;
  for (int c = lane; c < C; c += kWarp) ss += x[c] * x[c];
  rms_row(out, rstd, x, w, row, C, lane, ss, eps);
}

// res = a + b while summing its squares (res may be a: no __restrict__ on them).
__global__ void residual_rms_fwd_kernel(float* res, float* __restrict__ out, float* __restrict__ rstd,
                                        const float* a, const float* b, const float* __restrict__ w,
                                        int N, int C, float eps) {
  const int lane = threadIdx.x % kWarp;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= N) return;
  const size_t off = (size_t)row * C;
  float* x = res + off;
  float ss = 0.0f;
  for (int c = lane; c < C; c += kWarp) {
    const float v = a[off + c] + b[off + c];
    x[c] = v;
    ss += v * v;
  }
  rms_row(out, rstd, x, w, row, C, lane, ss, eps);
}

// dinp row += (dnorm - norm * mean(dnorm * norm)) * rstd. dinp, dout, inp (N, C); w (C).
__global__ void rms_bwd_dinp_kernel(float* __restrict__ dinp, const float* __restrict__ dout,
                                    const float* __restrict__ inp, const float* __restrict__ w,
                                    const float* __restrict__ rstd, int N, int C) {
  const int lane = threadIdx.x % kWarp;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= N) return;
  const size_t off = (size_t)row * C;
  const float* x = inp + off;
  const float* d = dout + off;
  const float r = rstd[row];
  float m = 0.0f;
  for (int c = lane; c < C; c += kWarp) m += w[c] * d[c] * (x[c] * r);
  m = warp_sum(m) / C;
  float* di = dinp + off;
  for (int c = lane; c < C; c += kWarp) di[c] += (w[c] * d[c] - x[c] * r * m) * r;
}

// dw (C) += sum_i x[i, c] * rstd[i] * dout[i, c], in the fixed order of column_sums_accumulate.
__global__ void rms_bwd_dw_kernel(float* __restrict__ dw, const float* __restrict__ dout,
                                  const float* __restrict__ inp, const float* __restrict__ rstd,
                                  int N, int C) {
  float* const dst[1] = {dw};
  detail::column_sums_accumulate<1>(dst, N, C, [=](float(&acc)[1], int i, int c) {
    const size_t k = (size_t)i * C + c;
    acc[0] += inp[k] * rstd[i] * dout[k];
  });
}

}  // namespace

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* w, int N, int C,
                     float eps, cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  LMF_LAUNCH(rms_fwd_kernel, row_blocks(N), kRowsPerBlock * kWarp, 0, stream)(out, rstd, inp, w, N, C, eps);
  LMF_CUDA_CHECK_LAUNCH();
}

void residual_rmsnorm_forward(float* res, float* out, float* rstd, const float* a, const float* b,
                              const float* w, int N, int C, float eps, cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  LMF_LAUNCH(residual_rms_fwd_kernel, row_blocks(N), kRowsPerBlock * kWarp, 0, stream)(
      res, out, rstd, a, b, w, N, C, eps);
  LMF_CUDA_CHECK_LAUNCH();
}

void rmsnorm_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                      const float* rstd, int N, int C, cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  LMF_LAUNCH(rms_bwd_dinp_kernel, row_blocks(N), kRowsPerBlock * kWarp, 0, stream)(dinp, dout, inp, w, rstd,
                                                                           N, C);
  LMF_CUDA_CHECK_LAUNCH();
  LMF_LAUNCH(rms_bwd_dw_kernel, detail::col_sum_blocks(C), detail::col_sum_block(), 0, stream)(
      dw, dout, inp, rstd, N, C);
  LMF_CUDA_CHECK_LAUNCH();
}

}  // namespace lmf::cuda
