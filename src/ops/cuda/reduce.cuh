#pragma once
// Reduction layouts shared by the normalisation kernels (layernorm.cu, rmsnorm.cu); device code,
// include from .cu only. Both are deterministic: a fixed summation order for a given shape, no
// atomics.
//  rows:    one warp per row of C, kRowsPerBlock rows per block; lane l sums columns l, l + 32,
//           ... in order, then warp_sum's fixed butterfly.
//  columns: parameter gradients dst[c] += sum_i term(i, c), one block per kColTile columns.
#include <cuda_runtime.h>

#include "ops/cuda/launch.cuh"

namespace lmf::cuda::detail {

constexpr int kRowsPerBlock = 8;  // warps (rows) per block: 256 threads
constexpr int kColTile = 32;      // column sums: columns per block
constexpr int kRowLanes = 32;     // column sums: row lanes per block
// Threads of a column-sum block: 1024, the only blocks above 256 threads. Their kernels declare
// __launch_bounds__(kColSumThreads), so ptxas holds them to the 64 registers a thread that such
// a launch can have, and no launch fails for want of registers.
constexpr int kColSumThreads = kColTile * kRowLanes;

// Blocks of kRowsPerBlock warps for N rows.
inline unsigned row_blocks(int N) { return (unsigned)((N + kRowsPerBlock - 1) / kRowsPerBlock); }

// Launch shape for column_sums_accumulate over C columns.
inline dim3 col_sum_block() { return dim3(kColTile, kRowLanes); }
inline unsigned col_sum_blocks(int C) { return (unsigned)((C + kColTile - 1) / kColTile); }

// dst[k][c] += sum_{i < N} term_k(i, c) for K outputs at once, c = blockIdx.x * kColTile + tx.
// add_row(acc, i, c) adds row i's K terms into float acc[K]. Block (kColTile, kRowLanes): thread
// (tx, ty) sums rows ty, ty + 32, ... in order (coalesced: a warp reads 32 consecutive columns of
// one row), then thread ty == 0 adds the 32 partials in order and accumulates into dst.
template <int K, class AddRow>
__device__ __forceinline__ void column_sums_accumulate(float* const (&dst)[K], int N, int C,
                                                       AddRow add_row) {
  __shared__ float part[K][kRowLanes][kColTile + 1];  // +1: no bank conflicts on the column read
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int c = blockIdx.x * kColTile + tx;
  float acc[K];
#pragma unroll
  for (int k = 0; k < K; ++k) acc[k] = 0.0f;
  if (c < C)
    for (int i = ty; i < N; i += kRowLanes) add_row(acc, i, c);
#pragma unroll
  for (int k = 0; k < K; ++k) part[k][ty][tx] = acc[k];
  __syncthreads();
  if (ty == 0 && c < C) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      float total = 0.0f;
      for (int l = 0; l < kRowLanes; ++l) total += part[k][l][tx];
      dst[k][c] += total;
    }
  }
}

}  // namespace lmf::cuda::detail
