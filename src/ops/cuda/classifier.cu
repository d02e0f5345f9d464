// Classifier (x @ w^T) fused with softmax cross-entropy on the GPU, in chunks of rows so the
// (N, V) logits never exist whole; the same formulas and operation order as
// ops/cpu/classifier.cpp but for the softmax's one-pass sum, fp32, with the GEMMs of
// ops/cuda/matmul.cu (cuBLAS, fp32 accumulation, products in the call's MatmulPrecision). Per chunk
// of n rows:
//   logits (n, V) = x_chunk @ w^T                                   (matmul_forward, no bias)
//   per row, one block: mx = max_j l_j and sum = sum_j exp(l_j - mx) in one pass (online, per
//            thread, then combined); loss = mx + log(sum) - l_t;
//            if grad, l_j <- exp(l_j - mx) * (dloss / sum), and l_t -= dloss (dlogits in place)
//   if grad: dx_chunk = dlogits @ w (assigned); dw += dlogits^T @ x_chunk  (matmul_backward)
// Chunks run in order on one stream, so dw's sum order is fixed: deterministic for a given
// (N, C, V, chunk). The loss total is summed in double by one block, in a fixed tree order.
//
// With matmul_precision = bf16 and the backward, the GEMMs' operands are bf16 in memory: w is
// rounded once per call into a kept bf16 copy, each x chunk into another, and the row kernel
// writes dlogits as bf16 into a third buffer instead of fp32 in place. The two backward GEMMs then
// read half the bytes of the (n, V) block that dominates this op's traffic, and run bf16 x bf16
// on the tensor cores. The numbers are the mode's: every GEMM operand rounded to bf16 (the CPU's
// emulation, cpu/classifier.cpp, rounds the same three), products exact, fp32 accumulation; the
// logits and the softmax stay fp32.
//
// bf16 storage (the overload on bf16 x, w, dx): x and w are bf16 already, so the GEMMs read them
// as they are (no rounded copies); everything else is the bf16 mode's backward above: fp32 logits
// in the workspace, dlogits written as bf16, dx (bf16, rounded once) and dw (fp32, beta = 1) from
// bf16 x bf16 products. Without the backward, the same forward GEMM and row kernel.
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <climits>
#include <limits>
#include <cstdint>
#include <mutex>

#include "core/error.h"
#include "ops/cuda/block_reduce.cuh"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/gemm.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/ops_cuda.h"

namespace lmf::cuda {
namespace {

using detail::kWarp;
using detail::warp_sum;

// The logits workspace per device: 32 Mi floats (128 MiB), 667 rows of V = 50257. The bf16
// backward's dw GEMM, which reads and writes all of dw (V, C), runs per group of chunks
// (kDlogitsBytes below).
constexpr size_t kWorkspaceFloats = size_t(32) << 20;
constexpr int kMaxDevices = 64;
constexpr int kCeThreads = 256;  // one block per row
constexpr int kCeWarps = kCeThreads / kWarp;
// Logits a thread loads at a time in each pass. A 128 MiB chunk at V 50257 is 667 rows, one block
// each: about 5 blocks of 256 threads an SM, so 8 loads of 4 bytes a thread keep some 40 KB in flight
// per SM, about what the DRAM's bandwidth times its latency asks (Little's law).
constexpr int kCeLoads = 8;
constexpr int kSumThreads = 256;  // the single block that sums the losses
constexpr unsigned kNoBadRow = UINT_MAX;

// set_classifier_chunk_rows; 0: automatic; -1: the environment's LMF_CLASSIFIER_CHUNK_ROWS, read
// at the first call.
std::atomic<int> g_chunk_rows_override{-1};
std::atomic<int> g_group_chunks_override{0};  // set_classifier_group_chunks; 0: automatic

// The bf16 backward's dlogits (bf16) of a group of chunks are kept, at most this many bytes, and
// its dx and dw GEMMs run once per group: the dw GEMM reads and writes all of dw (V, C) in fp32,
// so per chunk it would pass over dw 25 times a step at GPT-2 124M, B 16 (N 16384 in chunks of
// 667 rows of V 50257: some 7.7 GB), and 32 times at the Llama 1B shape, B 8 (V 128256, dw 1 GB
// in fp32: some 62 GB, tens of milliseconds). With 1 GiB groups both take two passes.
constexpr size_t kDlogitsBytes = size_t(1) << 30;

// Rows per group for (N, V) in chunks of `chunk` rows: whole chunks within kDlogitsBytes of bf16
// (at least one), at most N.
int group_rows(int N, int V, int chunk) {
  const int forced = g_group_chunks_override.load();
  const size_t fit = kDlogitsBytes / (sizeof(uint16_t) * (size_t)std::max(V, 1)) / (size_t)chunk;
  const size_t chunks = forced > 0 ? (size_t)forced : std::max(fit, size_t(1));
  return (int)std::min(chunks * (size_t)chunk, (size_t)N);
}

struct CeResult {
  double total;      // sum of the losses (ignored rows are 0)
  unsigned bad_row;  // first row whose target is >= V, or kNoBadRow
};

// Device memory kept across calls, one per device: a fresh cudaMalloc of the (chunk, V) block per
// call would synchronise the device every step. Grown on demand, never shrunk, never freed (as
// the cuBLAS handles in matmul.cu: the driver reclaims it at exit). The mutex is held for a whole
// call, which ends with a stream synchronise, so the next call finds the workspace idle.
struct Workspace {
  std::mutex mu;
  float* logits = nullptr;  // (chunk, V)
  size_t cap = 0;           // floats in logits
  CeResult* result = nullptr;
  const int32_t* targets = nullptr;  // the last call's, for the bad target's error
  int V = 0;
  // The bf16 backward's operands (raw bits): dlogits (chunk, V), w (V, C), an x chunk (chunk, C).
  struct Bits {
    uint16_t* p = nullptr;
    size_t cap = 0;
  } dlogits16, w16, x16;
};

// p holds at least n values of T (grown, contents not kept); cap is its size. The caller holds
// the workspace's mutex. A grown buffer's old one is kept, not freed: a CUDA graph captured
// before (ops/backend.h) still reads and writes it at each launch. It grows once per larger
// shape, so this keeps little.
template <class T>
T* reserve(T*& p, size_t& cap, size_t n) {
  if (cap < n) {
    p = static_cast<T*>(device_malloc(n * sizeof(T)));
    cap = n;
  }
  return p;
}
uint16_t* reserve(Workspace::Bits& b, size_t n) { return reserve(b.p, b.cap, n); }

Workspace& workspace_for_current_device() {
  int dev = 0;
  LMF_CUDA_CHECK(cudaGetDevice(&dev));
  LMF_CHECK(dev >= 0 && dev < kMaxDevices, "classifier_ce: device {} beyond the {} supported", dev,
            kMaxDevices);
  static auto* slots = new std::array<Workspace, kMaxDevices>();  // never freed, see above
  return (*slots)[dev];
}

// A gradient value into dlogits: fp32 (in place of the logits) or bf16.
__device__ __forceinline__ void store_grad(float* p, float g) { *p = g; }
__device__ __forceinline__ void store_grad(uint16_t* p, float g) { *p = detail::to_bf16(g); }

// x[u] = l[j0 + u kCeThreads], -inf past V. whole: all kCeLoads are in the row, and are loaded with
// no branch between them, so that they are in flight together.
__device__ __forceinline__ void load_logits(float (&x)[kCeLoads], const float* l, int j0, int V, bool whole) {
  if (whole) {
#pragma unroll
    for (int u = 0; u < kCeLoads; ++u) x[u] = l[j0 + u * kCeThreads];
  } else {
#pragma unroll
    for (int u = 0; u < kCeLoads; ++u) {
      const int j = j0 + u * kCeThreads;
      x[u] = j < V ? l[j] : -INFINITY;
    }
  }
}

// One block per row r of the chunk: losses[r] and, if kGrad, dlogits: G = float in place of the
// logits (dlogits == logits), G = uint16_t (bf16) into its own (n, V) buffer.
// logits (n, V); losses, targets, dloss (n), offset to the chunk; row0: the chunk's first row.
// A target < 0 is ignored (loss 0, zero gradient row); one >= V is reported through bad_row (the
// smallest such row) and otherwise treated as ignored, so nothing reads out of bounds.
template <bool kGrad, class G>
__global__ void __launch_bounds__(kCeThreads)
    ce_rows_kernel(float* logits, G* dlogits, float* __restrict__ losses,
                   const int32_t* __restrict__ targets, const float* __restrict__ dloss, int V,
                   int row0, unsigned* __restrict__ bad_row) {
  __shared__ float shared[kCeWarps + 1];
  const int r = blockIdx.x;
  float* l = logits + (size_t)r * V;
  G* dl_row = kGrad ? dlogits + (size_t)r * V : nullptr;
  const int target = targets[r];
  if (target < 0 || target >= V) {  // uniform across the block
    if (target >= V && threadIdx.x == 0) atomicMin(bad_row, (unsigned)(row0 + r));
    if (kGrad)
      for (int j = threadIdx.x; j < V; j += kCeThreads) store_grad(dl_row + j, 0.0f);
    if (threadIdx.x == 0) losses[r] = 0.0f;
    return;
  }
  const float lt = l[target];  // read before the gradient pass overwrites the row
  // The max and the sum in one read of the row (online softmax, Milakov & Gimelshein 2018): each
  // thread keeps the running max m of its logits and s = sum exp(l - m), rescaled when m grows;
  // the block then combines its (m, s) pairs onto the row's max. A thread takes kCeLoads logits
  // at a time (j, j + 256, ...: each load still one coalesced row segment per warp), all loaded
  // before any is used: one load after a data-dependent branch at a time, as per logit, leaves
  // too few reads in flight for the DRAM's bandwidth (the row is read from DRAM: 128 MiB chunks).
  // Past V a logit counts as -inf, whose exp is 0.
  float m = -INFINITY, s = 0.0f;
  for (int j0 = threadIdx.x; j0 < V; j0 += kCeLoads * kCeThreads) {
    float x[kCeLoads];
    load_logits(x, l, j0, V, j0 + (kCeLoads - 1) * kCeThreads < V);
    float gm = x[0];
#pragma unroll
    for (int u = 1; u < kCeLoads; ++u) gm = fmaxf(gm, x[u]);
    if (gm == -INFINITY) continue;  // nothing here adds to s (and m - gm would be NaN)
    if (gm > m) {
      s = m == -INFINITY ? 0.0f : s * expf(m - gm);
      m = gm;
    }
#pragma unroll
    for (int u = 0; u < kCeLoads; ++u) s += expf(x[u] - m);
  }
  const float mx = detail::block_max<kCeThreads>(m, shared);
  const float sum = detail::block_sum<kCeThreads>(m == -INFINITY ? 0.0f : s * expf(m - mx), shared);
  if (kGrad) {
    // As the CPU: e * (dloss / sum), then minus dloss at the target. exp is recomputed rather
    // than stored by the sum pass: the same inputs give the same bits.
    const float dl = dloss[r], f = dl / sum;
    for (int j0 = threadIdx.x; j0 < V; j0 += kCeLoads * kCeThreads) {
      float x[kCeLoads];
      const bool whole = j0 + (kCeLoads - 1) * kCeThreads < V;
      load_logits(x, l, j0, V, whole);
#pragma unroll
      for (int u = 0; u < kCeLoads; ++u) {
        const int j = j0 + u * kCeThreads;
        if (!whole && j >= V) continue;
        float g = expf(x[u] - mx) * f;
        if (j == target) g -= dl;
        store_grad(dl_row + j, g);
      }
    }
  }
  if (threadIdx.x == 0) losses[r] = mx + logf(sum) - lt;
}

// result->total = sum of losses (N) in double: thread t sums rows t, t + kSumThreads, ... in
// order, then a fixed tree. One block: deterministic, and N is at most a batch of tokens.
__global__ void __launch_bounds__(kSumThreads)
    sum_losses_kernel(const float* __restrict__ losses, int N, CeResult* __restrict__ result) {
  __shared__ double part[kSumThreads];
  double s = 0.0;
  for (int i = threadIdx.x; i < N; i += kSumThreads) s += (double)losses[i];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int half = kSumThreads / 2; half > 0; half >>= 1) {
    if ((int)threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) result->total = part[0];
}

// A call's start, its workspace locked: the logits for `need` floats, the result, no bad row yet.
void begin_call(Workspace& ws, size_t need, const int32_t* targets, int V, cudaStream_t stream) {
  ws.targets = targets;
  ws.V = V;
  reserve(ws.logits, ws.cap, need);
  if (ws.result == nullptr) ws.result = static_cast<CeResult*>(device_malloc(sizeof(CeResult)));
  LMF_CUDA_CHECK(
      cudaMemsetAsync(&ws.result->bad_row, 0xff, sizeof(unsigned), stream));  // kNoBadRow
}

// The result of the last call's work, once it has run (synchronous copies wait for every
// blocking stream), or the bad target's error. The workspace is locked.
double read_result(const Workspace& ws) {
  LMF_CHECK(ws.result != nullptr, "classifier_ce_last_sum: no classifier_ce_forward has run on this device");
  CeResult host{};
  LMF_CUDA_CHECK(cudaMemcpy(&host, ws.result, sizeof(CeResult), cudaMemcpyDeviceToHost));
  if (host.bad_row != kNoBadRow) {
    int32_t t = 0;
    LMF_CUDA_CHECK(cudaMemcpy(&t, ws.targets + host.bad_row, sizeof(t), cudaMemcpyDeviceToHost));
    LMF_CHECK(false, "classifier_ce: target {} at row {} out of range V={}", t, host.bad_row, ws.V);
  }
  return host.total;
}

// A call's end: the losses' sum on the host (synchronising the stream), or the bad target's error;
// NaN on a capturing stream, whose work runs only when its graph is launched.
double sum_and_check(Workspace& ws, const float* losses, int N, cudaStream_t stream) {
  LMF_LAUNCH(sum_losses_kernel, 1, kSumThreads, 0, stream)(losses, N, ws.result);
  LMF_CUDA_CHECK_LAUNCH();
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  LMF_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone) return std::numeric_limits<double>::quiet_NaN();
  return read_result(ws);
}

// The classifier on bf16 operands (w16 (V, C) and x's rows as bf16 bits), in chunks of `chunk` rows;
// with the backward (dx non-null) in groups of chunks (group_rows): per chunk the logits (fp32) and
// the rows' dlogits (bf16, kept for the group), then per group dx (assigned, fp32 or bf16 as DX)
// and dw (+=, fp32). Without it the logits and losses alone, one group of all N rows.
// x_rows(r0, n, g0) returns x's rows r0 .. r0 + n - 1 as bf16 bits, (n, C), contiguous with the
// rows of the group from g0 returned before: the fp32-storage overload rounds them into the
// group's buffer, the bf16-storage one points at the stored ones. Both make the same cuBLAS calls,
// so their dw is the same bits (CudaBf16.Classifier). Column-major, as matmul.cu: logits^T (V, n)
// = w16 (op T) x^T; dx^T (C, gn) = w16^T dlogits^T; dw^T (C, V) += x^T dlogits (op T on the
// (V, gn) buffer). The caller holds ws.mu and began the call (begin_call).
template <class DX, class XRows>
void classifier_bf16_groups(Workspace& ws, float* losses, DX* dx, float* dw, const uint16_t* w16, XRows x_rows,
                            const int32_t* targets, const float* dloss, int N, int C, int V, int chunk,
                            cudaStream_t stream) {
  const bool grad = dx != nullptr;
  const int group = grad ? group_rows(N, V, chunk) : N;
  if (grad) reserve(ws.dlogits16, (size_t)group * V);
  for (int g0 = 0; g0 < N; g0 += group) {
    const int gn = std::min(group, N - g0);
    const uint16_t* xg = nullptr;  // (gn, C): the group's rows
    for (int r0 = g0; r0 < g0 + gn; r0 += chunk) {
      const int n = std::min(chunk, g0 + gn - r0);
      const uint16_t* xc = x_rows(r0, n, g0);
      if (r0 == g0) xg = xc;
      detail::gemm_bf16(stream, true, false, V, n, C, w16, C, xc, C, 0.0f, ws.logits, V);
      if (grad) {
        LMF_LAUNCH((ce_rows_kernel<true, uint16_t>), n, kCeThreads, 0, stream)(
            ws.logits, ws.dlogits16.p + (size_t)(r0 - g0) * V, losses + r0, targets + r0, dloss + r0, V, r0,
            &ws.result->bad_row);
      } else {
        LMF_LAUNCH((ce_rows_kernel<false, float>), n, kCeThreads, 0, stream)(
            ws.logits, static_cast<float*>(nullptr), losses + r0, targets + r0, nullptr, V, r0, &ws.result->bad_row);
      }
      LMF_CUDA_CHECK_LAUNCH();
    }
    if (!grad) continue;
    detail::gemm_bf16(stream, false, false, C, gn, V, w16, C, ws.dlogits16.p, V, 0.0f, dx + (size_t)g0 * C, C);
    detail::gemm_bf16(stream, false, true, C, V, gn, xg, C, ws.dlogits16.p, V, 1.0f, dw, C);
  }
}

}  // namespace

void set_classifier_group_chunks(int chunks) {
  LMF_CHECK(chunks >= 0, "set_classifier_group_chunks: chunks {} < 0", chunks);
  g_group_chunks_override.store(chunks);
}

void set_classifier_chunk_rows(int rows) {
  LMF_CHECK(rows >= 0, "set_classifier_chunk_rows: rows {} < 0", rows);
  g_chunk_rows_override.store(rows);
}

double classifier_ce_last_sum() {
  Workspace& ws = workspace_for_current_device();
  std::lock_guard<std::mutex> lock(ws.mu);
  return read_result(ws);
}

int classifier_chunk_rows(int N, int V) {
  if (N <= 0) return 0;
  int forced = g_chunk_rows_override.load();
  if (forced < 0) {
    forced = env_count("LMF_CLASSIFIER_CHUNK_ROWS");
    g_chunk_rows_override.store(forced);
  }
  if (forced > 0) return std::min(N, forced);
  const size_t rows = kWorkspaceFloats / (size_t)std::max(V, 1);
  return (int)std::clamp(rows, size_t(1), (size_t)N);
}

double classifier_ce_forward(float* losses, float* dx, float* dw, const float* x, const float* w,
                             const int32_t* targets, const float* dloss, int N, int C, int V,
                             cudaStream_t stream, ops::MatmulPrecision p) {
  LMF_CHECK(!dx || (dw && dloss), "classifier_ce: the backward needs dw and dloss");
  LMF_CHECK(N >= 0 && C > 0 && V > 0, "classifier_ce: bad shape N={} C={} V={}", N, C, V);
  if (N == 0) return 0.0;
  const bool grad = dx != nullptr;
  const int chunk = classifier_chunk_rows(N, V);

  Workspace& ws = workspace_for_current_device();
  std::lock_guard<std::mutex> lock(ws.mu);
  const size_t need = (size_t)chunk * V;
  begin_call(ws, need, targets, V, stream);

  if (grad && p == ops::MatmulPrecision::bf16) {
    // The mode's rounding: bf16 copies of w and of each chunk of x's rows (in the group's buffer).
    reserve(ws.x16, (size_t)group_rows(N, V, chunk) * C);
    detail::round_to_bf16(reserve(ws.w16, (size_t)V * C), w, (size_t)V * C, stream);
    auto x_rows = [&](int r0, int n, int g0) {
      uint16_t* x16 = ws.x16.p + (size_t)(r0 - g0) * C;
      detail::round_to_bf16(x16, x + (size_t)r0 * C, (size_t)n * C, stream);
      return static_cast<const uint16_t*>(x16);
    };
    classifier_bf16_groups(ws, losses, dx, dw, ws.w16.p, x_rows, targets, dloss, N, C, V, chunk, stream);
    return sum_and_check(ws, losses, N, stream);
  }
  for (int r0 = 0; r0 < N; r0 += chunk) {
    const int n = std::min(chunk, N - r0);
    const float* xc = x + (size_t)r0 * C;  // (n, C)
    matmul_forward(ws.logits, xc, w, nullptr, n, C, V, stream, p);
    if (grad) {
      LMF_LAUNCH((ce_rows_kernel<true, float>), n, kCeThreads, 0, stream)(
          ws.logits, ws.logits, losses + r0, targets + r0, dloss + r0, V, r0, &ws.result->bad_row);
      LMF_CUDA_CHECK_LAUNCH();
      // dx_chunk (n, C) = dlogits (n, V) @ w (V, C); dw (V, C) += dlogits^T @ x_chunk.
      matmul_backward(dx + (size_t)r0 * C, dw, nullptr, ws.logits, xc, w, n, C, V, stream, p);
    } else {
      LMF_LAUNCH((ce_rows_kernel<false, float>), n, kCeThreads, 0, stream)(
          ws.logits, static_cast<float*>(nullptr), losses + r0, targets + r0, nullptr, V, r0, &ws.result->bad_row);
      LMF_CUDA_CHECK_LAUNCH();
    }
  }
  return sum_and_check(ws, losses, N, stream);
}

double classifier_ce_forward(float* losses, bf16* dx, float* dw, const bf16* x, const bf16* w,
                             const int32_t* targets, const float* dloss, int N, int C, int V,
                             cudaStream_t stream, ops::MatmulPrecision) {
  LMF_CHECK(!dx || (dw && dloss), "classifier_ce: the backward needs dw and dloss");
  LMF_CHECK(N >= 0 && C > 0 && V > 0, "classifier_ce: bad shape N={} C={} V={}", N, C, V);
  if (N == 0) return 0.0;
  const int chunk = classifier_chunk_rows(N, V);
  Workspace& ws = workspace_for_current_device();
  std::lock_guard<std::mutex> lock(ws.mu);
  begin_call(ws, (size_t)chunk * V, targets, V, stream);
  // The stored bf16 rows and weights are the operands as they are (the fp32-storage overload's bf16
  // mode rounds copies first: the same cuBLAS calls).
  const auto* x16 = reinterpret_cast<const uint16_t*>(x);  // (N, C)
  auto x_rows = [x16, C](int r0, int, int) { return x16 + (size_t)r0 * C; };
  classifier_bf16_groups(ws, losses, reinterpret_cast<uint16_t*>(dx), dw, reinterpret_cast<const uint16_t*>(w), x_rows,
                         targets, dloss, N, C, V, chunk, stream);
  return sum_and_check(ws, losses, N, stream);
}

}  // namespace lmf::cuda
