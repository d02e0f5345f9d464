#pragma once
// Shared by the attention kernels (attention.cu: one warp per row; attention_tiled.cu: tiles in
// shared memory; attention_mma.cu: tiles on the tensor cores). Include from .cu only.
#include <cuda_runtime.h>

#include "ops/cuda/attention_heads.h"

namespace lmf::cuda::detail {

// The tiled kernels (attention_tiled.cu), for hs <= kTiledMaxHs; same contracts as the row
// kernels of attention.cu (outputs assigned, lse (B, NH, T)).
constexpr int kTiledMaxHs = 128;
void tiled_forward(float* out, float* lse, const float* q, const float* k, const float* v, const Heads& g,
                   cudaStream_t stream);
void tiled_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                    const float* v, const float* out, const float* lse, const Heads& g, cudaStream_t stream);

// The tensor-core kernels (attention_mma.cu: bf16 products, fp32 softmax and sums), for head
// sizes 16, 32, 64 and 128 (mma_supported); same contracts.
bool mma_supported(const Heads& g);
void mma_forward(float* out, float* lse, const float* q, const float* k, const float* v, const Heads& g,
                 cudaStream_t stream);
void mma_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                  const float* v, const float* out, const float* lse, const Heads& g, cudaStream_t stream);

}  // namespace lmf::cuda::detail
