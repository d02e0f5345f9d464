#pragma once
// Shared by the attention kernels (attention.cu: one warp per row; attention_tiled.cu: tiles in
// shared memory; attention_mma.cu: tiles on the tensor cores). Include from .cu only.
#include <cuda_runtime.h>

#include <cstddef>

#include "core/half.h"
#include "ops/cuda/attention_heads.h"

namespace lmf::cuda::detail {

// Device helpers of the tiled and tensor-core kernels. A row's four threads are the four lanes of
// a quad (lanes 4j..4j+3 of one warp).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// A block's (tile, head, batch) from blockIdx.x: tiles are taken last first, so the longest query
// rows (most keys) start first and the short ones fill in behind them.
__device__ __forceinline__ void block_place(int tiles, int heads, int& tile, int& head, int& b) {
  const int x = blockIdx.x;
  tile = tiles - 1 - x % tiles;
  head = x / tiles % heads;
  b = x / tiles / heads;
}

// The tiled kernels (attention_tiled.cu), for hs <= kTiledMaxHs; same contracts as the row
// kernels of attention.cu (outputs assigned, lse (B, NH, T)). F, the storage type of every tensor
// but lse: float or bf16 (instantiated for both).
constexpr int kTiledMaxHs = 128;
template <class F>
void tiled_forward(F* out, float* lse, const F* q, const F* k, const F* v, const Heads& g,
                   cudaStream_t stream);
template <class F>
void tiled_backward(F* dq, F* dk, F* dv, const F* dout, const F* q, const F* k, const F* v,
                    const F* out, const float* lse, const Heads& g, cudaStream_t stream);

// The tensor-core kernels (attention_mma.cu: bf16 products, fp32 softmax and sums), for head
// sizes that are multiples of 16 up to 128 (mma_supported); same contracts.
bool mma_supported(const Heads& g);
template <class F>
void mma_forward(F* out, float* lse, const F* q, const F* k, const F* v, const Heads& g,
                 cudaStream_t stream);
template <class F>
void mma_backward(F* dq, F* dk, F* dv, const F* dout, const F* q, const F* k, const F* v,
                  const F* out, const float* lse, const Heads& g, cudaStream_t stream);

}  // namespace lmf::cuda::detail
