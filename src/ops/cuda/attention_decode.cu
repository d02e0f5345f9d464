// One new query per sequence against its KV cache on the GPU (ops.h attention_decode), for
// decoding: one block per (query head, sequence); a prefix the sequences share is read from
// sequence 0's rows by all of their blocks (through L2). A block's threads score the cached
// positions (a serial dot in d order each), agree on the max and the sum of exps
// (block_reduce.cuh), and then each owns dimensions of y, summing (e_t / sum) v_t in t order as
// the CPU op does. fp32; the CPU op's numbers up to the order of the dot products (the CPU's in
// lanes) and of the sum of exps. Templated over the storage type T of y, q, k, v (float or bf16,
// bf16.cuh); scratch is float.
#include <cuda_runtime.h>

#include <cmath>

#include "core/error.h"
#include "ops/cuda/bf16.cuh"
#include "ops/cuda/block_reduce.cuh"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops_cuda.h"

namespace lmf::cuda {
namespace {

constexpr int kDecodeThreads = 256;

using detail::load;
using detail::store;

template <class F>
__global__ void __launch_bounds__(kDecodeThreads)
    decode_kernel(F* __restrict__ y, float* __restrict__ scratch, const F* __restrict__ q,
                  const F* __restrict__ k, const F* __restrict__ v, ops::DecodeLayout c, int NH,
                  int KVH, int hs, float scale) {
  __shared__ float shared[kDecodeThreads / detail::kWarp + 1];
  const int h = blockIdx.x, b = blockIdx.y, T = c.T;
  const size_t koff = size_t(h / (NH / KVH)) * hs, own = size_t(b) * c.seq;
  // Row t of this sequence's cache (kv = k or v), at this head's columns.
  auto row = [&](const F* kv, int t) {
    return kv + (t < c.shared ? 0 : own) + size_t(t) * c.ld + koff;
  };
  const F* qh = q + size_t(b) * c.q_ld + size_t(h) * hs;
  float* a = scratch + (size_t(b) * NH + h) * T;  // (T)
  float mx = -INFINITY;
  for (int t = threadIdx.x; t < T; t += kDecodeThreads) {
    const F* kt = row(k, t);
    float s = 0.0f;
    for (int d = 0; d < hs; ++d) s += load(qh + d) * load(kt + d);
    a[t] = s * scale;
    mx = fmaxf(mx, a[t]);
  }
  mx = detail::block_max<kDecodeThreads>(mx, shared);
  float part = 0.0f;
  for (int t = threadIdx.x; t < T; t += kDecodeThreads) {
    const float e = expf(a[t] - mx);
    a[t] = e;
    part += e;
  }
  const float z = detail::block_sum<kDecodeThreads>(part, shared);  // its __syncthreads publish a
  F* yh = y + (size_t(b) * NH + h) * hs;
  for (int d = threadIdx.x; d < hs; d += kDecodeThreads) {
    float acc = 0.0f;
    for (int t = 0; t < T; ++t) acc += (a[t] / z) * load(row(v, t) + d);
    store(yh + d, acc);
  }
}

template <class F>
void decode_launch(F* y, float* scratch, const F* q, const F* k, const F* v, ops::DecodeLayout c,
                   int NH, int KVH, int hs, cudaStream_t stream) {
  LMF_CHECK(ops::decode_layout_ok(c, NH, KVH, hs),
            "cuda attention_decode: B={} T={} shared={} ld={} seq={} q_ld={} NH={} KVH={} hs={}", c.B,
            c.T, c.shared, c.ld, c.seq, c.q_ld, NH, KVH, hs);
  LMF_LAUNCH(decode_kernel<F>, dim3(NH, c.B), kDecodeThreads, 0, stream)
  (y, scratch, q, k, v, c, NH, KVH, hs, 1.0f / std::sqrt((float)hs));
  LMF_CUDA_CHECK_LAUNCH();
}

}  // namespace

void attention_decode(float* y, float* scratch, const float* q, const float* k, const float* v,
                      ops::DecodeLayout c, int NH, int KVH, int hs, cudaStream_t stream) {
  decode_launch(y, scratch, q, k, v, c, NH, KVH, hs, stream);
}
void attention_decode(bf16* y, float* scratch, const bf16* q, const bf16* k, const bf16* v,
                      ops::DecodeLayout c, int NH, int KVH, int hs, cudaStream_t stream) {
  decode_launch(y, scratch, q, k, v, c, NH, KVH, hs, stream);
}

}  // namespace lmf::cuda
