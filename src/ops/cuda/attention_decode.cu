// One new query against a KV cache on the GPU (ops.h attention_decode), for decoding: one block
// per query head. Its threads score the cached positions (a serial dot in d order each), agree on
// the max and the sum of exps (block_reduce.cuh), and then each owns dimensions of y, summing
// (e_t / sum) v_t in t order as the CPU op does. fp32; the CPU op's numbers up to the order of
// the sum of exps. Templated over the storage type T of y, q, k, v (float or bf16, bf16.cuh);
// scratch is float.
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
                  const F* __restrict__ k, const F* __restrict__ v, int T, int NH, int KVH, int hs,
                  int ld, float scale) {
  __shared__ float shared[kDecodeThreads / detail::kWarp + 1];
  const int h = blockIdx.x;
  const size_t koff = size_t(h / (NH / KVH)) * hs;
  const F* qh = q + size_t(h) * hs;
  float* a = scratch + size_t(h) * T;  // (T)
  float mx = -INFINITY;
  for (int t = threadIdx.x; t < T; t += kDecodeThreads) {
    const F* kt = k + size_t(t) * ld + koff;
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
  for (int d = threadIdx.x; d < hs; d += kDecodeThreads) {
    float acc = 0.0f;
    for (int t = 0; t < T; ++t) acc += (a[t] / z) * load(v + size_t(t) * ld + koff + d);
    store(y + size_t(h) * hs + d, acc);
  }
}

template <class F>
void decode_launch(F* y, float* scratch, const F* q, const F* k, const F* v, int T, int NH, int KVH,
                   int hs, int ld, cudaStream_t stream) {
  LMF_CHECK(T > 0 && NH > 0 && KVH > 0 && NH % KVH == 0 && hs > 0 && ld >= KVH * hs,
            "cuda attention_decode: T={} NH={} KVH={} hs={} ld={}", T, NH, KVH, hs, ld);
  LMF_LAUNCH(decode_kernel<F>, NH, kDecodeThreads, 0, stream)
  (y, scratch, q, k, v, T, NH, KVH, hs, ld, 1.0f / std::sqrt((float)hs));
  LMF_CUDA_CHECK_LAUNCH();
}

}  // namespace

void attention_decode(float* y, float* scratch, const float* q, const float* k, const float* v,
                      int T, int NH, int KVH, int hs, int ld, cudaStream_t stream) {
  decode_launch(y, scratch, q, k, v, T, NH, KVH, hs, ld, stream);
}
void attention_decode(bf16* y, float* scratch, const bf16* q, const bf16* k, const bf16* v, int T,
                      int NH, int KVH, int hs, int ld, cudaStream_t stream) {
  decode_launch(y, scratch, q, k, v, T, NH, KVH, hs, ld, stream);
}

}  // namespace lmf::cuda
