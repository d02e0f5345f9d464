// Token + position embedding on the GPU and its backward, as ops/cpu/encoder.cpp, fp32.
//  forward:  out[b, t] = wte[tokens[b, t]] + wpe[t] (or wte[...] alone without wpe), elementwise.
//  backward: dwte[tok] += dout[b, t] over the positions holding tok, dwpe[t] += sum_b dout[b, t].
//            Both ACCUMULATE and are deterministic without atomics. A token may repeat, so rows of
//            dwte are not owned by one position: the host groups the positions by token id
//            (stable, so each group stays in (b, t) order; a CSR: unique tokens, offsets,
//            positions), uploads it, and one thread per (unique token, channel) adds its
//            positions' gradients in that order. Every dwte and dwpe element thus sees the same
//            sequence of fp32 additions as on the CPU (which walks (b, t) in order per element):
//            the results are bitwise equal to the CPU op's.
// Templated over the storage type T of out, wte, wpe and dout (float or bf16, bf16.cuh); dwte and
// dwpe are float (parameter gradients) for both, so a bf16 dout is widened and summed in float.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "ops/cuda/bf16.cuh"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/ops_cuda.h"

namespace lmf::cuda {
namespace {

using detail::kThreads;
using detail::load;
using detail::store;

// out (B*T, C); tokens (B*T) on the device; wte (V, C); wpe (T, C) or nullptr.
template <class F>
__global__ void encoder_fwd_kernel(F* __restrict__ out, const int32_t* __restrict__ tokens,
                                   const F* __restrict__ wte, const F* __restrict__ wpe, int T,
                                   int C, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const size_t bt = i / C;
    const int c = (int)(i % C), t = (int)(bt % T);
    const float e = load(wte + (size_t)tokens[bt] * C + c);
    store(out + i, wpe ? e + load(wpe + (size_t)t * C + c) : e);
  }
}

// dwte[tok[u], c] += dout[pos[j], c] for j in [off[u], off[u+1]) in order. Grid (U, channel
// tiles): block x is one unique token, threads run over channels (coalesced rows of dout).
// csr = [tok (U) | off (U + 1) | pos (B*T)].
template <class F>
__global__ void encoder_bwd_dwte_kernel(float* __restrict__ dwte, const F* __restrict__ dout,
                                        const int32_t* __restrict__ csr, int U, int C) {
  const int u = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int32_t* off = csr + U;
  const int32_t* pos = off + U + 1;
  float* dst = dwte + (size_t)csr[u] * C + c;
  float acc = *dst;
  for (int j = off[u]; j < off[u + 1]; ++j) acc += load(dout + (size_t)pos[j] * C + c);
  *dst = acc;
}

// dwpe[t, c] += dout[b, t, c] for b = 0..B-1 in order. dwpe (T, C); dout (B, T, C).
template <class F>
__global__ void encoder_bwd_dwpe_kernel(float* __restrict__ dwpe, const F* __restrict__ dout, int B,
                                        int T, int C) {
  const size_t n = (size_t)T * C, stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    float acc = dwpe[i];
    for (int b = 0; b < B; ++b) acc += load(dout + (size_t)b * n + i);
    dwpe[i] = acc;
  }
}

// The positions-by-token CSR of the last call on one device, kept so that no call allocates once
// the largest shape has been seen. `done` is recorded after the kernel that reads `dev`; the next
// call waits on it before overwriting `host` or `dev`, which makes reuse safe across streams.
struct CsrWorkspace {
  std::vector<int32_t> host;  // staging for the async upload: [tok (U) | off (U+1) | pos (BT)]
  DeviceBuffer<int32_t> dev;  // (>= 3 BT + 1 >= 2U + 1 + BT, for the largest BT so far)
  cudaEvent_t done = nullptr;
};

// One workspace per device, behind one mutex. Never destroyed: freeing device memory from a
// static destructor would run after the CUDA runtime has shut down.
CsrWorkspace& workspace_for_current_device(std::unique_lock<std::mutex>& lock) {
  static std::mutex mu;
  static auto* by_device = new std::map<int, CsrWorkspace>();
  lock = std::unique_lock<std::mutex>(mu);
  int dev = 0;
  LMF_CUDA_CHECK(cudaGetDevice(&dev));
  CsrWorkspace& ws = (*by_device)[dev];
  if (ws.done == nullptr)
    LMF_CUDA_CHECK(cudaEventCreateWithFlags(&ws.done, cudaEventDisableTiming));
  return ws;
}

// Fills host with [tok (U) | off (U+1) | pos (BT)]: positions grouped by token id, each group in
// ascending position order (stable sort). Returns U.
int build_csr(std::vector<int32_t>& host, const int32_t* tokens, long BT) {
  std::vector<int32_t> order((size_t)BT);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return tokens[a] < tokens[b]; });
  std::vector<int32_t> tok, off;
  for (long j = 0; j < BT; ++j) {
    const int32_t id = tokens[order[(size_t)j]];
    if (j == 0 || id != tok.back()) {
      tok.push_back(id);
      off.push_back((int32_t)j);
    }
  }
  off.push_back((int32_t)BT);
  host.clear();
  host.insert(host.end(), tok.begin(), tok.end());
  host.insert(host.end(), off.begin(), off.end());
  host.insert(host.end(), order.begin(), order.end());
  return (int)tok.size();
}

template <class F>
void forward_launch(F* out, const int32_t* tokens, const F* wte, const F* wpe, int B, int T, int C,
                    cudaStream_t stream) {
  const size_t n = (size_t)B * T * C;
  if (n == 0) return;
  LMF_LAUNCH(encoder_fwd_kernel<F>, detail::grid_for(n), kThreads, 0, stream)
  (out, tokens, wte, wpe, T, C, n);
  LMF_CUDA_CHECK_LAUNCH();
}

template <class F>
void backward_launch(float* dwte, float* dwpe, const F* dout, const int32_t* tokens_host, int B,
                     int T, int C, cudaStream_t stream) {
  const long BT = (long)B * T;
  if (BT <= 0 || C <= 0) return;
  LMF_CHECK(BT < (1L << 31), "cuda encoder_backward: B*T={} too large", BT);
  for (long i = 0; i < BT; ++i)
    LMF_CHECK(tokens_host[i] >= 0, "cuda encoder_backward: negative token {} at position {}",
              tokens_host[i], i);
  if (dwpe) {
    const size_t n = (size_t)T * C;
    LMF_LAUNCH(encoder_bwd_dwpe_kernel<F>, detail::grid_for(n), kThreads, 0, stream)
    (dwpe, dout, B, T, C);
    LMF_CUDA_CHECK_LAUNCH();
  }

  std::unique_lock<std::mutex> lock;
  CsrWorkspace& ws = workspace_for_current_device(lock);
  LMF_CUDA_CHECK(cudaEventSynchronize(ws.done));  // the previous call no longer reads ws
  const int U = build_csr(ws.host, tokens_host, BT);
  // Sized for the shape's worst case (U = BT: 3 BT + 1), not this batch's U: a later batch with
  // more distinct tokens must not allocate in the step loop.
  const size_t most = 3 * (size_t)BT + 1;
  if (ws.dev.size() < most) ws.dev = DeviceBuffer<int32_t>(most);
  LMF_CUDA_CHECK(cudaMemcpyAsync(ws.dev.data(), ws.host.data(), ws.host.size() * sizeof(int32_t),
                                 cudaMemcpyHostToDevice, stream));
  const dim3 grid((unsigned)U, (unsigned)((C + kThreads - 1) / kThreads));
  LMF_LAUNCH(encoder_bwd_dwte_kernel<F>, grid, kThreads, 0, stream)
  (dwte, dout, ws.dev.data(), U, C);
  LMF_CUDA_CHECK_LAUNCH();
  LMF_CUDA_CHECK(cudaEventRecord(ws.done, stream));
}

}  // namespace

void encoder_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                     int T, int C, cudaStream_t stream) {
  forward_launch(out, tokens, wte, wpe, B, T, C, stream);
}
void encoder_forward(bf16* out, const int32_t* tokens, const bf16* wte, const bf16* wpe, int B,
                     int T, int C, cudaStream_t stream) {
  forward_launch(out, tokens, wte, wpe, B, T, C, stream);
}

void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens_host,
                      int B, int T, int C, cudaStream_t stream) {
  backward_launch(dwte, dwpe, dout, tokens_host, B, T, C, stream);
}
void encoder_backward(float* dwte, float* dwpe, const bf16* dout, const int32_t* tokens_host, int B,
                      int T, int C, cudaStream_t stream) {
  backward_launch(dwte, dwpe, dout, tokens_host, B, T, C, stream);
}

}  // namespace lmf::cuda
