// The tiled attention kernels (attention_tiled_body.h holds their bodies and the description)
// and their launches.
#include <cuda_runtime.h>

#include <cmath>
#include <mutex>
#include <type_traits>

#include "core/error.h"
#include "ops/cuda/attention.cuh"
#include "ops/cuda/cuda_util.h"

#define LMF_TILED_DEV __device__ __forceinline__
#define LMF_TILED_UNROLL _Pragma("unroll")
#define LMF_TILED_TID threadIdx.x
#define LMF_TILED_BID blockIdx.x
#define LMF_TILED_SYNC_THREADS() __syncthreads()
#define LMF_TILED_SYNC_WARP() __syncwarp()
#define LMF_TILED_SHFL_XOR(v, m) __shfl_xor_sync(0xffffffffu, v, m)
#include "ops/cuda/attention_tiled_body.h"

namespace lmf::cuda::detail {
namespace {

using namespace tiled;

template <int kPer>
__global__ void __launch_bounds__(kThreadsT)
    fwd_tiled(float* __restrict__ out, float* __restrict__ lse, const float* __restrict__ q,
              const float* __restrict__ k, const float* __restrict__ v, Heads g) {
  extern __shared__ float sm[];
  fwd_tiled_body<kPer>(sm, out, lse, q, k, v, g);
}

template <int kPer>
__global__ void __launch_bounds__(kThreadsT)
    dq_tiled(float* __restrict__ dq, const float* __restrict__ dout, const float* __restrict__ q,
             const float* __restrict__ k, const float* __restrict__ v,
             const float* __restrict__ out, const float* __restrict__ lse, Heads g) {
  extern __shared__ float sm[];
  dq_tiled_body<kPer>(sm, dq, dout, q, k, v, out, lse, g);
}

template <int kPer>
__global__ void __launch_bounds__(kThreadsT)
    dkv_tiled(float* __restrict__ dk, float* __restrict__ dv, const float* __restrict__ dout,
              const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
              const float* __restrict__ out, const float* __restrict__ lse, Heads g) {
  extern __shared__ float sm[];
  dkv_tiled_body<kPer>(sm, dk, dv, dout, q, k, v, out, lse, g);
}

// Launches Kernel with `bytes` of dynamic shared memory, raising the kernel's limit (once per
// kernel and process, for the current device) to the most any head size needs; above 48 KiB
// that is an opt-in (all sm_70+ GPUs).
template <auto Kernel, class... Args>
void launch(unsigned blocks, size_t bytes, size_t max_bytes, cudaStream_t stream, Args... args) {
  static std::once_flag once;
  std::call_once(once, [&] {
    LMF_CUDA_CHECK(
        cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)max_bytes));
  });
  Kernel<<<blocks, kThreadsT, bytes, stream>>>(args...);
  LMF_CUDA_CHECK_LAUNCH();
}

// f(std::integral_constant<int, kPer>{}), kPer = dimensions per thread for hs (hs <= 128).
template <class F>
void dispatch_per_thread(int hs, F f) {
  if (hs <= 32) {
    f(std::integral_constant<int, 8>{});
  } else if (hs <= 64) {
    f(std::integral_constant<int, 16>{});
  } else {
    f(std::integral_constant<int, 32>{});
  }
}

}  // namespace

void tiled_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                   const Heads& g, cudaStream_t stream) {
  LMF_CHECK(g.hs <= kTiledMaxHs, "tiled attention: head size {} above {}", g.hs, kTiledMaxHs);
  if (g.B == 0 || g.T == 0) return;
  const unsigned blocks = (unsigned)((long)g.B * g.NH * ((g.T + kRows - 1) / kRows));
  dispatch_per_thread(g.hs, [&](auto per) {
    launch<fwd_tiled<decltype(per)::value>>(blocks, fwd_floats(g.hs) * sizeof(float),
                                            fwd_floats(kTiledMaxHs) * sizeof(float), stream, out,
                                            lse, q, k, v, g);
  });
}

void tiled_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                    const float* k, const float* v, const float* out, const float* lse,
                    const Heads& g, cudaStream_t stream) {
  LMF_CHECK(g.hs <= kTiledMaxHs, "tiled attention: head size {} above {}", g.hs, kTiledMaxHs);
  if (g.B == 0 || g.T == 0) return;
  const long tiles = (g.T + kRows - 1) / kRows;
  dispatch_per_thread(g.hs, [&](auto per) {
    constexpr int kPer = decltype(per)::value;
    launch<dq_tiled<kPer>>((unsigned)((long)g.B * g.NH * tiles), dq_floats(g.hs) * sizeof(float),
                           dq_floats(kTiledMaxHs) * sizeof(float), stream, dq, dout, q, k, v, out,
                           lse, g);
    launch<dkv_tiled<kPer>>((unsigned)((long)g.B * g.KVH * tiles), dkv_floats(g.hs) * sizeof(float),
                            dkv_floats(kTiledMaxHs) * sizeof(float), stream, dk, dv, dout, q, k, v,
                            out, lse, g);
  });
}

}  // namespace lmf::cuda::detail
