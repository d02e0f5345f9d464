// LayerNorm (Ba et al. 2016) on the GPU, eps 1e-5, biased two-pass variance; the same formulas as
// ops/cpu/layernorm.cpp, fp32 throughout.
//  forward:  one warp per row; mean, then sum (x - mean)^2 (no cancellation), warp shuffles.
//  backward: dinp += ... one warp per row (two row reductions);
//            dw += sum_i norm * dout, db += sum_i dout: one block per 32 columns, 32 row lanes each
//            summing rows i = lane (mod 32) in order, then the 32 partials in order. No atomics:
//            deterministic for a given (N, C).
// The gradient rule (ops/ops.h, nn/nn.h): dinp, dw and db all ACCUMULATE (+=).
#include <cuda_runtime.h>

#include "ops/cuda/cuda_util.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops_cuda.h"

namespace lmf::cuda {
namespace {

using detail::kWarp;
using detail::warp_sum;

constexpr float kEps = 1e-5f;
constexpr int kRowsPerBlock = 8;  // warps (rows) per block: 256 threads
constexpr int kColTile = 32;      // backward params: columns per block
constexpr int kRowLanes = 32;     // backward params: row lanes per block

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

// Block (kColTile, kRowLanes): thread (tx, ty) sums column c0 + tx over rows ty, ty + 32, ...
// (coalesced: a warp reads 32 consecutive columns of one row), then thread ty == 0 adds the 32
// partials in order and accumulates into dw, db.
__global__ void ln_bwd_params_kernel(float* __restrict__ dw, float* __restrict__ db,
                                     const float* __restrict__ dout, const float* __restrict__ inp,
                                     const float* __restrict__ mean, const float* __restrict__ rstd,
                                     int N, int C) {
  __shared__ float sw[kRowLanes][kColTile + 1];
  __shared__ float sb[kRowLanes][kColTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int c = blockIdx.x * kColTile + tx;
  float aw = 0.0f, ab = 0.0f;
  if (c < C) {
    for (int i = ty; i < N; i += kRowLanes) {
      const size_t k = (size_t)i * C + c;
      const float d = dout[k];
      aw += (inp[k] - mean[i]) * rstd[i] * d;
      ab += d;
    }
  }
  sw[ty][tx] = aw;
  sb[ty][tx] = ab;
  __syncthreads();
  if (ty == 0 && c < C) {
    float tw = 0.0f, tb = 0.0f;
    for (int l = 0; l < kRowLanes; ++l) {
      tw += sw[l][tx];
      tb += sb[l][tx];
    }
    dw[c] += tw;
    db[c] += tb;
  }
}

unsigned row_blocks(int N) { return (unsigned)((N + kRowsPerBlock - 1) / kRowsPerBlock); }

}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* w,
                       const float* b, int N, int C, cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  ln_fwd_kernel<<<row_blocks(N), kRowsPerBlock * kWarp, 0, stream>>>(out, mean, rstd, inp, w, b, N,
                                                                     C);
  LMF_CUDA_CHECK_LAUNCH();
}

void layernorm_backward(float* dinp, float* dw, float* db, const float* dout, const float* inp,
                        const float* w, const float* mean, const float* rstd, int N, int C,
                        cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  ln_bwd_dinp_kernel<<<row_blocks(N), kRowsPerBlock * kWarp, 0, stream>>>(dinp, dout, inp, w, mean,
                                                                          rstd, N, C);
  LMF_CUDA_CHECK_LAUNCH();
  const dim3 block(kColTile, kRowLanes);
  const unsigned col_blocks = (unsigned)((C + kColTile - 1) / kColTile);
  ln_bwd_params_kernel<<<col_blocks, block, 0, stream>>>(dw, db, dout, inp, mean, rstd, N, C);
  LMF_CUDA_CHECK_LAUNCH();
}

}  // namespace lmf::cuda
