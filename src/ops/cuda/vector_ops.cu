// Flat-vector CUDA ops: fill, sum of squares (for gradient clipping) and scale, as the backend
// table's fill and ops/cpu/adamw.cpp's sum_squares and scale, fp32; fill, copy and the rounding
// copy to_bf16 also over bf16 storage (bf16.cuh).
//  sum_squares is deterministic without atomics: a grid of kSumBlocks blocks at most (a function of
//  n alone), each thread adding x^2 in double over a grid-stride loop in order, a fixed tree per
//  block to one double partial in a per-device workspace, then one block that sums the partials
//  in a fixed order. The order differs from the CPU's (16 lanes per thread range), so the results
//  agree to double rounding, not bitwise; each is a function of (x, n) only.
#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <mutex>

#include "core/error.h"
#include "ops/cuda/bf16.cuh"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops_cuda.h"
#include "ops/cuda/pack.cuh"

namespace lmf::cuda {
namespace {

using detail::kThreads;

// Blocks of the sum-of-squares pass: about one full wave of 256-thread blocks on an H100 (132
// SMs x 8); more only adds partials. Also the partials' count, summed by one block of kThreads.
constexpr unsigned kSumBlocks = 1024;
constexpr int kMaxDevices = 64;

__global__ void fill_kernel(float* x, float value, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) x[i] = value;
}

// x (n) = value, the bits already rounded by the host (bf16 value is what the table passes).
__global__ void fill_bf16_kernel(bf16* x, bf16 value, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    x[i].bits = value.bits;
}

// dst (n) = src (n) rounded to bf16 (core/half.h's float_to_bf16, bit for bit).
template <int K>
__global__ void to_bf16_storage_kernel(bf16* __restrict__ dst, const float* __restrict__ src,
                                       size_t n) {  // n groups of K (pack.cuh)
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    float v[K];
    detail::load_n(v, src + i * K);
    detail::store_n(dst + i * K, v);
  }
}

// x *= s: one fp32 multiply per element, bitwise equal to the CPU's.
__global__ void scale_kernel(float* x, float s, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) x[i] *= s;
}

// Sum of v over the block (kThreads) by a fixed tree in shared memory; the result in thread 0.
__device__ double block_sum(double v, double* part) {
  part[threadIdx.x] = v;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if ((int)threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
    __syncthreads();
  }
  return part[0];
}

// partial[blockIdx.x] = sum of x[i]^2 over this block's grid-stride share. Each product of two
// floats is exact in double (48 significant bits), so only the additions round.
__global__ void __launch_bounds__(kThreads)
    sum_squares_partial_kernel(const float* __restrict__ x, size_t n,
                               double* __restrict__ partial) {
  __shared__ double part[kThreads];
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  double acc = 0.0;
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  // Four of the thread's elements loaded before the first is added, so four loads are in flight
  // (one loop iteration each left one: the add waits for its load, and the next load comes after
  // it); added in the same order as one at a time, so the same bits.
  for (; i + 3 * stride < n; i += 4 * stride) {
    float v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = x[i + u * stride];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const double xi = (double)v[u];
      acc += xi * xi;
    }
  }
  for (; i < n; i += stride) {
    const double xi = (double)x[i];
    acc += xi * xi;
  }
  const double s = block_sum(acc, part);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// *total = sum of partial[0, nblocks): thread t adds t, t + kThreads, ... in order, then the tree.
__global__ void __launch_bounds__(kThreads)
    sum_partials_kernel(const double* __restrict__ partial, unsigned nblocks,
                        double* __restrict__ total) {
  __shared__ double part[kThreads];
  double acc = 0.0;
  for (unsigned b = threadIdx.x; b < nblocks; b += kThreads) acc += partial[b];
  const double s = block_sum(acc, part);
  if (threadIdx.x == 0) *total = s;
}

// The partials per device: kSumBlocks + 1 doubles (the last holds the total), allocated on first
// use and kept, so no call allocates (a cudaMalloc per call would synchronise the device). Never
// freed, as classifier.cu's workspace. The mutex is held for a whole call, which ends with a
// stream synchronise, so the next call finds the workspace idle.
struct SumWorkspace {
  std::mutex mu;
  double* partial = nullptr;  // (kSumBlocks + 1)
};

SumWorkspace& workspace_for_current_device() {
  int dev = 0;
  LMF_CUDA_CHECK(cudaGetDevice(&dev));
  LMF_CHECK(dev >= 0 && dev < kMaxDevices, "sum_squares: device {} beyond the {} supported", dev,
            kMaxDevices);
  static auto* slots = new std::array<SumWorkspace, kMaxDevices>();  // never freed, see above
  return (*slots)[dev];
}

std::atomic<bool>& vectorised_choice() {
  static std::atomic<bool> on{env_switch("LMF_CUDA_VEC")};
  return on;
}

}  // namespace

void set_vectorised_access(bool on) { vectorised_choice().store(on); }
bool vectorised_access() { return vectorised_choice().load(); }

void fill(float* x, float value, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  LMF_LAUNCH(fill_kernel, detail::grid_for(n), kThreads, 0, stream)(x, value, n);
  LMF_CUDA_CHECK_LAUNCH();
}

void fill(bf16* x, bf16 value, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  LMF_LAUNCH(fill_bf16_kernel, detail::grid_for(n), kThreads, 0, stream)(x, value, n);
  LMF_CUDA_CHECK_LAUNCH();
}

void copy(float* dst, const float* src, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  LMF_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, stream));
}

void copy(bf16* dst, const bf16* src, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  LMF_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(bf16), cudaMemcpyDeviceToDevice, stream));
}

void to_bf16(bf16* dst, const float* src, size_t n, cudaStream_t stream) {
  detail::launch_groups(n, stream, [](auto k) { return &to_bf16_storage_kernel<decltype(k)::value>; }, dst, src);
}

void scale(float* x, float s, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  LMF_LAUNCH(scale_kernel, detail::grid_for(n), kThreads, 0, stream)(x, s, n);
  LMF_CUDA_CHECK_LAUNCH();
}

double sum_squares(const float* x, size_t n, cudaStream_t stream) {
  if (n == 0) return 0.0;
  const size_t want = (n + kThreads - 1) / kThreads;
  const unsigned blocks = want < kSumBlocks ? (unsigned)want : kSumBlocks;  // a function of n only

  SumWorkspace& ws = workspace_for_current_device();
  std::lock_guard<std::mutex> lock(ws.mu);
  if (ws.partial == nullptr)
    ws.partial = static_cast<double*>(device_malloc((kSumBlocks + 1) * sizeof(double)));
  double* total = ws.partial + kSumBlocks;

  LMF_LAUNCH(sum_squares_partial_kernel, blocks, kThreads, 0, stream)(x, n, ws.partial);
  LMF_CUDA_CHECK_LAUNCH();
  LMF_LAUNCH(sum_partials_kernel, 1, kThreads, 0, stream)(ws.partial, blocks, total);
  LMF_CUDA_CHECK_LAUNCH();
  double host = 0.0;
  LMF_CUDA_CHECK(cudaMemcpyAsync(&host, total, sizeof(double), cudaMemcpyDeviceToHost, stream));
  LMF_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

}  // namespace lmf::cuda
