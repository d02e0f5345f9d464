#pragma once
// Reduction layouts shared by the normalisation kernels (layernorm.cu, rmsnorm.cu) and the bias
// gradients (matmul.cu); device code, include from .cu only. Both are deterministic: a fixed
// summation order for a given shape, no atomics.
//  rows:    one warp per row of C, kRowsPerBlock rows per block; lane l sums columns l, l + 32,
//           ... in order, then warp_sum's fixed butterfly.
//  columns: parameter gradients dst[c] += sum_i term(i, c): blocks of kColTile columns by one
//           chunk of rows each (col_sum_chunks), so that a gradient of a few hundred columns still
//           fills the GPU; each chunk's sums go to a scratch buffer, and a second kernel adds them
//           in chunk order (one chunk: straight into dst).
#include <cuda_runtime.h>

#include <cstddef>

#include "ops/cuda/cuda_util.h"
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

// Chunks of rows for column sums over (N, C), a function of the shape only (so the summation
// order, and the bits, do not depend on the GPU): about kColSumBlocks blocks in all (four per SM
// of an H100, two resident at a time), each chunk at least kColSumRows rows (four per row lane).
// One block per column tile, as before, left a 768-column gradient on 24 of 132 SMs, each warp
// with one load in flight.
constexpr int kColSumBlocks = 528;
constexpr int kColSumRows = 4 * kRowLanes;
inline int col_sum_chunks(int N, int C) {
  const int tiles = (int)col_sum_blocks(C);
  const int want = (kColSumBlocks + tiles - 1) / tiles, most = (N + kColSumRows - 1) / kColSumRows;
  return want < most ? want : (most > 0 ? most : 1);
}

// dst[k][c] += sum_{i < N} term_k(i, c) for K outputs at once, c = blockIdx.x * kColTile + tx, over
// the rows of chunk blockIdx.y of gridDim.y (rows [r ceil(N / R), (r + 1) ceil(N / R))). term(t, i,
// c) writes row i's K terms into float t[K]. Block (kColTile, kRowLanes): thread (tx, ty) sums its
// chunk's rows ty, ty + 32, ... in order (coalesced: a warp reads 32 consecutive columns of one
// row; the terms of kUnroll rows are read before any is added, so that many loads are in flight),
// then thread ty == 0 adds the 32 partials in order: into dst when there is one chunk, else into
// part (R, K, C), which column_sums_finish_kernel then adds into dst in chunk order.
constexpr int kUnroll = 4;
template <int K, class Term>
__device__ __forceinline__ void column_sums_accumulate(float* const (&dst)[K], float* __restrict__ part, int N,
                                                       int C, Term term) {
  __shared__ float lanes[K][kRowLanes][kColTile + 1];  // +1: no bank conflicts on the column read
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int c = blockIdx.x * kColTile + tx;
  const int R = (int)gridDim.y, r = (int)blockIdx.y, chunk = (N + R - 1) / R;
  const int lo = r * chunk, hi = min(N, lo + chunk);
  float acc[K];
#pragma unroll
  for (int k = 0; k < K; ++k) acc[k] = 0.0f;
  if (c < C) {
    int i = lo + ty;
    for (; i + (kUnroll - 1) * kRowLanes < hi; i += kUnroll * kRowLanes) {
      float t[kUnroll][K];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) term(t[u], i + u * kRowLanes, c);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
#pragma unroll
        for (int k = 0; k < K; ++k) acc[k] += t[u][k];
    }
    for (; i < hi; i += kRowLanes) {
      float t[K];
      term(t, i, c);
#pragma unroll
      for (int k = 0; k < K; ++k) acc[k] += t[k];
    }
  }
#pragma unroll
  for (int k = 0; k < K; ++k) lanes[k][ty][tx] = acc[k];
  __syncthreads();
  if (ty == 0 && c < C) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      float total = 0.0f;
      for (int l = 0; l < kRowLanes; ++l) total += lanes[k][l][tx];
      if (R == 1)
        dst[k][c] += total;
      else
        part[((size_t)r * K + k) * C + c] = total;
    }
  }
}

template <int K>
struct ColumnSums {
  float* dst[K];
};

// dst.dst[k][c] += sum_r part[r][k][c], r = 0 .. R-1 in order; one thread per (k, c).
template <int K>
__global__ void column_sums_finish_kernel(ColumnSums<K> dst, const float* __restrict__ part, int R, int C) {
  const size_t n = (size_t)K * C, stride = (size_t)gridDim.x * blockDim.x;
  for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += stride) {
    const int k = (int)(j / C), c = (int)(j % C);
    float total = 0.0f;
    for (int r = 0; r < R; ++r) total += part[((size_t)r * K + k) * C + c];
    dst.dst[k][c] += total;
  }
}

// Host: column sums over (N, C) into dst. launch(grid, part) launches the caller's kernel, which
// calls column_sums_accumulate(dst, part, ...), with block col_sum_block(); then the chunks' sums
// are added into dst when there are several.
template <int K, class Launch>
void column_sums(const ColumnSums<K>& dst, int N, int C, cudaStream_t stream, Launch launch) {
  const int R = col_sum_chunks(N, C);
  float* part = R > 1 ? device_scratch(Scratch::column_sums, (size_t)R * K * C) : nullptr;
  launch(dim3(col_sum_blocks(C), (unsigned)R), part);
  LMF_CUDA_CHECK_LAUNCH();
  if (R == 1) return;
  LMF_LAUNCH(column_sums_finish_kernel<K>, grid_for((size_t)K * C), kThreads, 0, stream)(dst, part, R, C);
  LMF_CUDA_CHECK_LAUNCH();
}

}  // namespace lmf::cuda::detail
