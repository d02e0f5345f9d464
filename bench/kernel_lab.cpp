// The kernel lab: every CUDA kernel (ops/cuda/ops_cuda.h) at GPT-2 124M shapes (B 8, T 1024,
// C 768, 12 heads) or the Llama family's, run on the same inputs as its CPU op (ops/ops.h, the
// specification) and timed in isolation with a cold L2: before every timed launch a buffer of
// twice the L2 size is overwritten, then CUDA events time the kernel alone.
//   ./kernel_lab                              # all, or
//   ./kernel_lab --benchmark_filter=layernorm
// Counters: GB/s (bytes each launch must read and write, once), max_err (max |GPU - CPU| over
// max |CPU|, fp32: expect ~1e-6; the tests in tests/gpu bound it properly). Without a device
// every benchmark reports the skip. The BM_bf16_* cases run the bf16-storage kernels against
// the CPU specification of bf16 storage.
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "core/rng.h"
#include "model/model.h"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/ops_cuda.h"
#include "ops/cuda_backend.h"
#include "ops/ops.h"

namespace lmf {
namespace {

using cuda::DeviceBuffer;
using FVec = std::vector<float>;

constexpr int kB = 8, kT = 1024, kC = 768, kNH = 12, kN = kB * kT;
constexpr int kLlamaC = 2048, kLlamaNH = 32, kLlamaHs = 64, kLlamaH = 8192, kLlamaT = 2048, kLlamaB = 2;

FVec rand_vec(size_t n, uint64_t stream, float lo = -1.0f, float hi = 1.0f) {
  FVec v(n);
  Rng r(7, stream);
  for (auto& x : v) x = lo + (hi - lo) * float(r.uniform());
  return v;
}

// n token ids uniform in [0, V).
std::vector<int32_t> rand_tokens(size_t n, int V, uint64_t stream) {
  std::vector<int32_t> t(n);
  Rng r(7, stream);
  for (auto& x : t) x = int32_t(r.below(V));
  return t;
}

// max |got - ref| / max |ref|.
double max_err(const FVec& got, const FVec& ref) {
  double d = 0, m = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    d = std::max(d, std::abs(double(got[i]) - double(ref[i])));
    m = std::max(m, std::abs(double(ref[i])));
  }
  return d / std::max(m, 1e-30);
}

// Cold-L2 timing of one launch: overwrite a 2x-L2 buffer, then time the kernel with events.
class Lab {
 public:
  Lab() {
    int dev = 0, l2 = 0;
    LMF_CUDA_CHECK(cudaGetDevice(&dev));
    LMF_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
    flush_ = DeviceBuffer<char>(size_t(std::max(l2, 1 << 20)) * 2);
    LMF_CUDA_CHECK(cudaEventCreate(&start_));
    LMF_CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~Lab() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  // Seconds the launch took.
  double time(const std::function<void()>& launch) {
    LMF_CUDA_CHECK(cudaMemsetAsync(flush_.data(), ++fill_, flush_.size()));
    LMF_CUDA_CHECK(cudaEventRecord(start_));
    launch();
    LMF_CUDA_CHECK(cudaEventRecord(stop_));
    LMF_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0;
    LMF_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return ms * 1e-3;
  }

 private:
  DeviceBuffer<char> flush_;
  cudaEvent_t start_{}, stop_{};
  int fill_ = 0;
};

bool need_device(benchmark::State& st) {
  if (cuda::available()) return true;
  st.SkipWithError("no CUDA device");
  return false;
}

// Times `launch` in the benchmark loop; `bytes` per launch gives GB/s, `err` the check.
void run(benchmark::State& st, const std::function<void()>& launch, double bytes, double err) {
  Lab lab;
  launch();  // warm-up (first-launch costs, lazy handles)
  LMF_CUDA_CHECK(cudaDeviceSynchronize());
  for (auto _ : st) st.SetIterationTime(lab.time(launch));
  st.counters["GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["max_err"] = err;
}

// ---- elementwise -----------------------------------------------------------------------------

void BM_residual(benchmark::State& st) {
  if (!need_device(st)) return;
  const size_t n = size_t(kN) * kC;
  auto a = rand_vec(n, 1), b = rand_vec(n, 2);
  FVec ref(n);
  ops::residual_forward(ref.data(), a.data(), b.data(), n);
  DeviceBuffer<float> da(a), db(b), out(n);
  cuda::residual_forward(out.data(), da.data(), db.data(), n);
  double err = max_err(out.to_host(), ref);
  run(st, [&] { cuda::residual_forward(out.data(), da.data(), db.data(), n); }, 12.0 * n, err);
}

void BM_gelu_forward(benchmark::State& st) {
  if (!need_device(st)) return;
  const size_t n = size_t(kN) * 4 * kC;
  auto x = rand_vec(n, 3, -4, 4);
  FVec ref(n);
  ops::gelu_forward(ref.data(), x.data(), n);
  DeviceBuffer<float> dx(x), out(n);
  cuda::gelu_forward(out.data(), dx.data(), n);
  double err = max_err(out.to_host(), ref);
  run(st, [&] { cuda::gelu_forward(out.data(), dx.data(), n); }, 8.0 * n, err);
}

void BM_gelu_backward(benchmark::State& st) {
  if (!need_device(st)) return;
  const size_t n = size_t(kN) * 4 * kC;
  auto x = rand_vec(n, 4, -4, 4), g = rand_vec(n, 5);
  FVec ref(n);
  ops::gelu_backward(ref.data(), x.data(), g.data(), n);
  DeviceBuffer<float> dx(x), dg(g), out(n);
  cuda::gelu_backward(out.data(), dx.data(), dg.data(), n);
  double err = max_err(out.to_host(), ref);
  run(st, [&] { cuda::gelu_backward(out.data(), dx.data(), dg.data(), n); }, 12.0 * n, err);
}

void BM_swiglu_forward(benchmark::State& st) {
  if (!need_device(st)) return;
  const size_t n = size_t(kLlamaB) * kLlamaT * kLlamaH;
  auto g = rand_vec(n, 6, -4, 4), u = rand_vec(n, 7);
  FVec ref(n);
  ops::swiglu_forward(ref.data(), g.data(), u.data(), n);
  DeviceBuffer<float> dg(g), du(u), out(n);
  cuda::swiglu_forward(out.data(), dg.data(), du.data(), n);
  double err = max_err(out.to_host(), ref);
  run(st, [&] { cuda::swiglu_forward(out.data(), dg.data(), du.data(), n); }, 12.0 * n, err);
}

void BM_swiglu_backward(benchmark::State& st) {
  if (!need_device(st)) return;
  const size_t n = size_t(kLlamaB) * kLlamaT * kLlamaH;
  auto g = rand_vec(n, 8, -4, 4), u = rand_vec(n, 9), d = rand_vec(n, 10);
  FVec rg(n), ru(n);
  ops::swiglu_backward(rg.data(), ru.data(), d.data(), g.data(), u.data(), n);
  DeviceBuffer<float> dg(g), du(u), dd(d), og(n), ou(n);
  cuda::swiglu_backward(og.data(), ou.data(), dd.data(), dg.data(), du.data(), n);
  double err = std::max(max_err(og.to_host(), rg), max_err(ou.to_host(), ru));
  run(st, [&] { cuda::swiglu_backward(og.data(), ou.data(), dd.data(), dg.data(), du.data(), n); }, 20.0 * n, err);
}

void BM_rope(benchmark::State& st) {
  if (!need_device(st)) return;
  const int B = kLlamaB, T = kLlamaT, NH = kLlamaNH, hs = kLlamaHs;
  const size_t n = size_t(B) * T * NH * hs;
  const bool backward = st.range(0) != 0;
  auto x = rand_vec(n, 11);
  auto inv = ops::rope_inv_freq(hs, 500000.0);
  FVec ref(n);
  if (backward)
    ops::rope_backward(ref.data(), x.data(), B, T, NH, hs, inv.data(), false);
  else
    ops::rope_forward(ref.data(), x.data(), B, T, NH, hs, inv.data(), false);
  DeviceBuffer<float> dx(x), out(n);
  DeviceBuffer<double> dinv(inv);
  auto launch = [&] {
    if (backward)
      cuda::rope_backward(out.data(), dx.data(), B, T, NH, hs, dinv.data(), false);
    else
      cuda::rope_forward(out.data(), dx.data(), B, T, NH, hs, dinv.data(), false);
  };
  launch();
  double err = max_err(out.to_host(), ref);
  run(st, launch, 8.0 * n, err);
}

// ---- normalisation ---------------------------------------------------------------------------

void BM_layernorm_forward(benchmark::State& st) {
  if (!need_device(st)) return;
  const int N = kN, C = kC;
  auto x = rand_vec(size_t(N) * C, 12), w = rand_vec(C, 13), b = rand_vec(C, 14);
  FVec ref(size_t(N) * C), mean(N), rstd(N);
  ops::layernorm_forward(ref.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  DeviceBuffer<float> dx(x), dw(w), db(b), out(size_t(N) * C), dm(N), dr(N);
  auto launch = [&] { cuda::layernorm_forward(out.data(), dm.data(), dr.data(), dx.data(), dw.data(), db.data(), N, C); };
  launch();
  double err = max_err(out.to_host(), ref);
  run(st, launch, 8.0 * N * C + 8.0 * N, err);
}

void BM_layernorm_backward(benchmark::State& st) {
  if (!need_device(st)) return;
  const int N = kN, C = kC;
  auto x = rand_vec(size_t(N) * C, 15), w = rand_vec(C, 16), b = rand_vec(C, 17), g = rand_vec(size_t(N) * C, 18);
  FVec y(size_t(N) * C), mean(N), rstd(N);
  ops::layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  FVec ref(size_t(N) * C, 0.0f), rw(C, 0.0f), rb(C, 0.0f);
  ops::layernorm_backward(ref.data(), rw.data(), rb.data(), g.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C);
  DeviceBuffer<float> dx(x), dw(w), dg(g), dm(mean), dr(rstd), dinp(FVec(size_t(N) * C, 0.0f)), ddw(FVec(C, 0.0f)),
      ddb(FVec(C, 0.0f));
  cuda::layernorm_backward(dinp.data(), ddw.data(), ddb.data(), dg.data(), dx.data(), dw.data(), dm.data(), dr.data(), N, C);
  double err = std::max({max_err(dinp.to_host(), ref), max_err(ddw.to_host(), rw), max_err(ddb.to_host(), rb)});
  // Timed launches keep accumulating into the gradients: the time, not the values, matters here.
  run(st, [&] {
    cuda::layernorm_backward(dinp.data(), ddw.data(), ddb.data(), dg.data(), dx.data(), dw.data(), dm.data(), dr.data(), N, C);
  }, 16.0 * N * C, err);
}

void BM_rmsnorm_forward(benchmark::State& st) {
  if (!need_device(st)) return;
  const int N = kLlamaB * kLlamaT, C = kLlamaC;
  auto x = rand_vec(size_t(N) * C, 19), w = rand_vec(C, 20);
  FVec ref(size_t(N) * C), rstd(N);
  ops::rmsnorm_forward(ref.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
  DeviceBuffer<float> dx(x), dw(w), out(size_t(N) * C), dr(N);
  auto launch = [&] { cuda::rmsnorm_forward(out.data(), dr.data(), dx.data(), dw.data(), N, C, 1e-5f); };
  launch();
  double err = max_err(out.to_host(), ref);
  run(st, launch, 8.0 * N * C + 4.0 * N, err);
}

// The residual add fused with the norm after it (GPT-2 124M's ln2, a Llama 1B's ffn_norm), and
// the unfused pair beside it: arg 0 the norm (0 layernorm, 1 rmsnorm), arg 1 fused (1) or the two
// kernels (0). GB/s counts the fused op's bytes (a, b read, res, out written) for both, so the
// ratio of the two rows is the saving.
void BM_residual_norm(benchmark::State& st) {
  if (!need_device(st)) return;
  const bool rms = st.range(0) == 1, fused = st.range(1) == 1;
  const int N = rms ? kLlamaB * kLlamaT : kN, C = rms ? kLlamaC : kC;
  const size_t NC = size_t(N) * C;
  auto a = rand_vec(NC, 60), b = rand_vec(NC, 61), w = rand_vec(C, 62), bias = rand_vec(C, 63);
  FVec res(NC), ref(NC), mean(N), rstd(N);
  if (rms)
    ops::residual_rmsnorm_forward(res.data(), ref.data(), rstd.data(), a.data(), b.data(), w.data(), N, C, 1e-5f);
  else
    ops::residual_layernorm_forward(res.data(), ref.data(), mean.data(), rstd.data(), a.data(), b.data(), w.data(),
                                    bias.data(), N, C);
  DeviceBuffer<float> da(a), db(b), dw(w), dbias(bias), dres(NC), out(NC), dm(N), dr(N);
  auto launch = [&] {
    if (fused && rms)
      cuda::residual_rmsnorm_forward(dres.data(), out.data(), dr.data(), da.data(), db.data(), dw.data(), N, C, 1e-5f);
    else if (fused)
      cuda::residual_layernorm_forward(dres.data(), out.data(), dm.data(), dr.data(), da.data(), db.data(), dw.data(),
                                       dbias.data(), N, C);
    else
      cuda::residual_forward(dres.data(), da.data(), db.data(), NC);
    if (!fused && rms) cuda::rmsnorm_forward(out.data(), dr.data(), dres.data(), dw.data(), N, C, 1e-5f);
    if (!fused && !rms)
      cuda::layernorm_forward(out.data(), dm.data(), dr.data(), dres.data(), dw.data(), dbias.data(), N, C);
  };
  launch();
  double err = max_err(out.to_host(), ref);
  run(st, launch, 16.0 * NC + (rms ? 4.0 : 8.0) * N, err);
}

void BM_rmsnorm_backward(benchmark::State& st) {
  if (!need_device(st)) return;
  const int N = kLlamaB * kLlamaT, C = kLlamaC;
  auto x = rand_vec(size_t(N) * C, 21), w = rand_vec(C, 22), g = rand_vec(size_t(N) * C, 23);
  FVec y(size_t(N) * C), rstd(N);
  ops::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
  FVec ref(size_t(N) * C, 0.0f), rw(C, 0.0f);
  ops::rmsnorm_backward(ref.data(), rw.data(), g.data(), x.data(), w.data(), rstd.data(), N, C);
  DeviceBuffer<float> dx(x), dw(w), dg(g), dr(rstd), dinp(FVec(size_t(N) * C, 0.0f)), ddw(FVec(C, 0.0f));
  cuda::rmsnorm_backward(dinp.data(), ddw.data(), dg.data(), dx.data(), dw.data(), dr.data(), N, C);
  double err = std::max(max_err(dinp.to_host(), ref), max_err(ddw.to_host(), rw));
  run(st, [&] { cuda::rmsnorm_backward(dinp.data(), ddw.data(), dg.data(), dx.data(), dw.data(), dr.data(), N, C); },
      16.0 * N * C, err);
}

// ---- optimizer -------------------------------------------------------------------------------

void BM_adamw(benchmark::State& st) {
  if (!need_device(st)) return;
  const size_t n = 124'439'808;  // GPT-2 124M
  auto p = rand_vec(n, 24), g = rand_vec(n, 25), m = rand_vec(n, 26, -0.01f, 0.01f), v = rand_vec(n, 27, 0, 1e-4f);
  FVec rp = p, rm = m, rv = v;
  ops::adamw_update(rp.data(), g.data(), rm.data(), rv.data(), n, 6e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 3);
  DeviceBuffer<float> dp(p), dg(g), dm(m), dv(v);
  cuda::adamw_update(dp.data(), dg.data(), dm.data(), dv.data(), n, 6e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 3);
  double err = max_err(dp.to_host(), rp);
  run(st, [&] { cuda::adamw_update(dp.data(), dg.data(), dm.data(), dv.data(), n, 6e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 3); },
      28.0 * n, err);
}

// A whole AdamW step over GPT-2 124M's registry (148 tensors): range(0) 0 launches
// adamw_update once per tensor (the old path), 1 runs the multi-tensor adamw_chunks in one launch
// with the clipping factor folded in (what optim/adamw.cpp does). The error is against the CPU's
// multi-tensor op.
void BM_adamw_step(benchmark::State& st) {
  if (!need_device(st)) return;
  ModelConfig cfg;  // GPT-2 124M, the defaults but the vocabulary and context
  cfg.vocab_size = 50257;
  cfg.block_size = 1024;
  cfg.n_layer = 12;
  cfg.n_head = 12;
  cfg.n_embd = 768;
  const auto model = make_model(cfg, /*allocate=*/false);
  const ParamStore<float>& ps = model->params();
  const size_t n = ps.flat_size();
  std::vector<ops::AdamwChunk> chunks;
  for (const auto& e : ps.entries())
    for (size_t at = e.offset; at < e.offset + e.size; at += ops::kAdamwChunk)
      chunks.push_back({at, (uint32_t)std::min<size_t>(ops::kAdamwChunk, e.offset + e.size - at), e.decay ? 0.1f : 0.0f});
  auto p = rand_vec(n, 24), g = rand_vec(n, 25), m = rand_vec(n, 26, -0.01f, 0.01f), v = rand_vec(n, 27, 0, 1e-4f);
  const auto s = ops::AdamwStep::at(6e-4f, 0.9f, 0.95f, 1e-8f, 0.0f, 3);
  FVec rp = p, rm = m, rv = v;
  ops::adamw_chunks(rp.data(), g.data(), rm.data(), rv.data(), chunks.data(), chunks.size(), s, 0.5f);
  DeviceBuffer<float> dp(p), dg(g), dm(m), dv(v);
  DeviceBuffer<ops::AdamwChunk> dc(chunks);
  const bool fused = st.range(0) != 0;
  auto step = [&](float gs) {
    if (fused) {
      cuda::adamw_chunks(dp.data(), dg.data(), dm.data(), dv.data(), dc.data(), chunks.size(), s, gs);
      return;
    }
    cuda::scale(dg.data(), gs, n);  // the clipping pass the fused form saves
    for (const auto& e : ps.entries())
      cuda::adamw_update(dp.data() + e.offset, dg.data() + e.offset, dm.data() + e.offset, dv.data() + e.offset,
                         e.size, 6e-4f, 0.9f, 0.95f, 1e-8f, e.decay ? 0.1f : 0.0f, 3);
  };
  step(0.5f);
  const double err = max_err(dp.to_host(), rp);
  dg.copy_from_host(g.data(), n);
  run(st, [&] { step(1.0f); }, 28.0 * n, err);
  st.counters["launches"] = fused ? 1.0 : double(ps.entries().size() + 2);
}

// Flat vectors at GPT-2 124M's parameter count: fill (zeroing/setting buffers), the gradient
// norm's sum of squares and the clipping scale. sum_squares synchronises and copies its result to
// the host inside the timed interval: that is the op's cost to a caller.
void BM_fill(benchmark::State& st) {
  if (!need_device(st)) return;
  const size_t n = 124'439'808;
  const FVec ref(n, 0.25f);
  DeviceBuffer<float> dx(n);
  cuda::fill(dx.data(), 0.25f, n);
  double err = max_err(dx.to_host(), ref);
  run(st, [&] { cuda::fill(dx.data(), 0.25f, n); }, 4.0 * n, err);
}

void BM_sum_squares(benchmark::State& st) {
  if (!need_device(st)) return;
  const size_t n = 124'439'808;
  auto x = rand_vec(n, 28);
  const double ref = ops::sum_squares(x.data(), n);
  DeviceBuffer<float> dx(x);
  double err = std::abs(cuda::sum_squares(dx.data(), n) - ref) / ref;
  run(st, [&] { benchmark::DoNotOptimize(cuda::sum_squares(dx.data(), n)); }, 4.0 * n, err);
}

void BM_scale(benchmark::State& st) {
  if (!need_device(st)) return;
  const size_t n = 124'439'808;
  auto x = rand_vec(n, 29);
  DeviceBuffer<float> dx(x);
  ops::scale(x.data(), 0.999f, n);
  cuda::scale(dx.data(), 0.999f, n);
  double err = max_err(dx.to_host(), x);
  // Timed launches keep scaling: the time, not the values, matters here.
  run(st, [&] { cuda::scale(dx.data(), 0.999f, n); }, 8.0 * n, err);
}

// ---- matmul (cuBLAS, fp32), attention, embedding, classifier ----------------------------------

void set_tflops(benchmark::State& st, double flops) {
  st.counters["TFLOP/s"] = benchmark::Counter(flops * 1e-12, benchmark::Counter::kIsIterationInvariantRate);
}

// GPT-2's linear layers: (N, C) -> (N, OC); range(0) = OC, range(1) = C, range(2) = the
// MatmulPrecision (0 fp32, 1 tf32, 2 bf16; the error is against the CPU's emulation of it).
ops::MatmulPrecision precision_arg(const benchmark::State& st) {
  return static_cast<ops::MatmulPrecision>(st.range(2));
}

void BM_matmul_forward(benchmark::State& st) {
  if (!need_device(st)) return;
  const int N = kN, OC = int(st.range(0)), C = int(st.range(1));
  const ops::MatmulPrecision p = precision_arg(st);
  auto x = rand_vec(size_t(N) * C, 30), w = rand_vec(size_t(OC) * C, 31, -0.05f, 0.05f), b = rand_vec(OC, 32);
  FVec ref(size_t(N) * OC);
  ops::cpu_backend<float>(p).matmul_forward(ref.data(), x.data(), w.data(), b.data(), N, C, OC);
  DeviceBuffer<float> dx(x), dw(w), db(b), out(size_t(N) * OC);
  auto launch = [&] { cuda::matmul_forward(out.data(), dx.data(), dw.data(), db.data(), N, C, OC, 0, p); };
  launch();
  double err = max_err(out.to_host(), ref);
  run(st, launch, 4.0 * (double(N) * C + double(OC) * C + double(N) * OC), err);
  set_tflops(st, 2.0 * N * C * OC);
}

void BM_matmul_backward(benchmark::State& st) {
  if (!need_device(st)) return;
  const int N = kN, OC = int(st.range(0)), C = int(st.range(1));
  const ops::MatmulPrecision p = precision_arg(st);
  auto x = rand_vec(size_t(N) * C, 33), w = rand_vec(size_t(OC) * C, 34, -0.05f, 0.05f);
  auto g = rand_vec(size_t(N) * OC, 35);
  FVec rdx(size_t(N) * C), rdw(size_t(OC) * C, 0.0f), rdb(OC, 0.0f);
  ops::cpu_backend<float>(p).matmul_backward(rdx.data(), rdw.data(), rdb.data(), g.data(), x.data(), w.data(), N, C,
                                             OC);
  DeviceBuffer<float> dx(x), dw(w), dg(g), ddx(size_t(N) * C), ddw(FVec(size_t(OC) * C, 0.0f)), ddb(FVec(OC, 0.0f));
  cuda::matmul_backward(ddx.data(), ddw.data(), ddb.data(), dg.data(), dx.data(), dw.data(), N, C, OC, 0, p);
  double err = std::max({max_err(ddx.to_host(), rdx), max_err(ddw.to_host(), rdw), max_err(ddb.to_host(), rdb)});
  run(st, [&] { cuda::matmul_backward(ddx.data(), ddw.data(), ddb.data(), dg.data(), dx.data(), dw.data(), N, C, OC, 0, p); },
      4.0 * (2.0 * N * C + 3.0 * OC * C + double(N) * OC), err);
  set_tflops(st, 4.0 * N * C * OC);
}

// Causal attention, GPT-2 124M: useful FLOPs are the causal half of QK^T and PV (x2 backward).
// range(0): 0 forward, 1 backward; range(1): the kernels (0 rowwise, 1 tiled, 2 tensor cores:
// matmul precision bf16, attention_mma.cu; its error is against the fp32 CPU op).
void BM_attention(benchmark::State& st) {
  if (!need_device(st)) return;
  const int B = kB, T = kT, C = kC, NH = kNH;
  const bool backward = st.range(0) != 0;
  const cuda::AttentionKernel saved = cuda::attention_kernel();
  cuda::set_attention_kernel(st.range(1) ? cuda::AttentionKernel::tiled : cuda::AttentionKernel::rowwise);
  const ops::MatmulPrecision p = st.range(1) == 2 ? ops::MatmulPrecision::bf16 : ops::MatmulPrecision::fp32;
  struct Restore {
    cuda::AttentionKernel k;
    ~Restore() { cuda::set_attention_kernel(k); }
  } restore{saved};
  auto qkv = rand_vec(size_t(B) * T * 3 * C, 36);
  FVec out(size_t(B) * T * C), lse(size_t(B) * NH * T);
  ops::attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, NH);
  DeviceBuffer<float> dqkv_in(qkv), dout(size_t(B) * T * C), dlse(size_t(B) * NH * T);
  cuda::attention_forward(dout.data(), dlse.data(), dqkv_in.data(), B, T, C, NH, 0, p);
  double err = max_err(dout.to_host(), out);
  const double fwd_flops = 2.0 * 2.0 * B * NH * (double(T) * T / 2) * (C / NH);
  if (!backward) {
    run(st, [&] { cuda::attention_forward(dout.data(), dlse.data(), dqkv_in.data(), B, T, C, NH, 0, p); },
        4.0 * (4.0 * B * T * C), err);
    set_tflops(st, fwd_flops);
    return;
  }
  auto g = rand_vec(size_t(B) * T * C, 37);
  FVec rd(size_t(B) * T * 3 * C);
  ops::attention_backward(rd.data(), g.data(), qkv.data(), out.data(), lse.data(), B, T, C, NH);
  DeviceBuffer<float> dg(g), dd(size_t(B) * T * 3 * C);
  cuda::attention_backward(dd.data(), dg.data(), dqkv_in.data(), dout.data(), dlse.data(), B, T, C, NH, 0, p);
  err = max_err(dd.to_host(), rd);
  run(st, [&] {
    cuda::attention_backward(dd.data(), dg.data(), dqkv_in.data(), dout.data(), dlse.data(), B, T, C, NH, 0, p);
  },
      4.0 * (8.0 * B * T * C), err);
  set_tflops(st, 2.0 * fwd_flops);
}

// One decoding step's attention over KV caches of range(0) positions, GPT-2 124M's heads (12 x
// 64), for range(1) sequences: one sequence reads its cache once (2 T C floats); 8 sequences share
// the first T - 64 positions (a prompt cached once, in sequence 0's cache), so the step reads
// that prefix once, through L2 at best, and each sequence's last 64 rows.
void BM_attention_decode(benchmark::State& st) {
  if (!need_device(st)) return;
  const int T = int(st.range(0)), B = int(st.range(1)), C = kC, NH = kNH, hs = kC / kNH;
  const int shared = B > 1 ? std::max(0, T - 64) : 0;
  const size_t seq = size_t(T) * C;
  auto q = rand_vec(size_t(B) * C, 38), k = rand_vec(B * seq, 39), v = rand_vec(B * seq, 40);
  FVec ref(size_t(B) * C), scratch(size_t(B) * NH * T);
  const ops::DecodeLayout lay{.B = B, .T = T, .shared = shared, .ld = C, .seq = seq, .q_ld = C};
  ops::attention_decode(ref.data(), scratch.data(), q.data(), k.data(), v.data(), lay, NH, NH, hs);
  DeviceBuffer<float> dq(q), dk(k), dv(v), dy(size_t(B) * C), ds(size_t(B) * NH * T);
  auto launch = [&] { cuda::attention_decode(dy.data(), ds.data(), dq.data(), dk.data(), dv.data(), lay, NH, NH, hs); };
  launch();
  run(st, launch, 4.0 * 2.0 * (shared + double(B) * (T - shared)) * C, max_err(dy.to_host(), ref));
}

void BM_encoder(benchmark::State& st) {
  if (!need_device(st)) return;
  const int B = kB, T = kT, C = kC, V = 50257;
  const bool backward = st.range(0) != 0;
  const std::vector<int32_t> tok = rand_tokens(size_t(B) * T, V, 38);
  auto wte = rand_vec(size_t(V) * C, 39), wpe = rand_vec(size_t(T) * C, 40);
  DeviceBuffer<int32_t> dtok(tok);
  DeviceBuffer<float> dwte(wte), dwpe(wpe);
  if (!backward) {
    FVec ref(size_t(B) * T * C);
    ops::encoder_forward(ref.data(), tok.data(), wte.data(), wpe.data(), B, T, C);
    DeviceBuffer<float> out(size_t(B) * T * C);
    auto launch = [&] { cuda::encoder_forward(out.data(), dtok.data(), dwte.data(), dwpe.data(), B, T, C); };
    launch();
    run(st, launch, 12.0 * B * T * C, max_err(out.to_host(), ref));
    return;
  }
  auto g = rand_vec(size_t(B) * T * C, 41);
  FVec rwte(size_t(V) * C, 0.0f), rwpe(size_t(T) * C, 0.0f);
  ops::encoder_backward(rwte.data(), rwpe.data(), g.data(), tok.data(), B, T, C);
  DeviceBuffer<float> dg(g), gwte(FVec(size_t(V) * C, 0.0f)), gwpe(FVec(size_t(T) * C, 0.0f));
  auto launch = [&] { cuda::encoder_backward(gwte.data(), gwpe.data(), dg.data(), tok.data(), B, T, C); };
  launch();
  double err = std::max(max_err(gwte.to_host(), rwte), max_err(gwpe.to_host(), rwpe));
  run(st, launch, 4.0 * (3.0 * B * T * C), err);
}

// The classifier fused with cross-entropy and its backward, GPT-2's head: N = T rows (one
// sequence: the CPU reference is slow), V = 50257.
void BM_classifier_ce(benchmark::State& st) {
  if (!need_device(st)) return;
  const int N = kT, C = kC, V = 50257;
  auto x = rand_vec(size_t(N) * C, 42), w = rand_vec(size_t(V) * C, 43, -0.05f, 0.05f);
  const std::vector<int32_t> tg = rand_tokens(N, V, 44);
  FVec dloss(N, 1.0f / N), rl(N), rdx(size_t(N) * C), rdw(size_t(V) * C, 0.0f);
  ops::classifier_ce_forward(rl.data(), rdx.data(), rdw.data(), x.data(), w.data(), tg.data(), dloss.data(), N, C, V);
  DeviceBuffer<float> dx(x), dw(w), ddl(dloss), dl(N), ddx(size_t(N) * C), ddw(FVec(size_t(V) * C, 0.0f));
  DeviceBuffer<int32_t> dtg(tg);
  auto launch = [&] {
    cuda::classifier_ce_forward(dl.data(), ddx.data(), ddw.data(), dx.data(), dw.data(), dtg.data(), ddl.data(), N, C,
                                V);
  };
  launch();
  double err = std::max({max_err(dl.to_host(), rl), max_err(ddx.to_host(), rdx), max_err(ddw.to_host(), rdw)});
  run(st, launch, 4.0 * (3.0 * V * C + 2.0 * N * C), err);
  set_tflops(st, 6.0 * N * C * V);
}

// ---- bf16 storage (cuda::backend_bf16; the CPU specification is ops::cpu_backend<bf16>) --------
// The same shapes with bf16 activations and weights (float gradients of the weights and
// statistics): half the bytes of the memory-bound kernels. max_err is against the CPU
// specification, relative to its largest value: about one bf16 step (2^-8) where a value rounds
// the other way, more for long sums.

using BVec = std::vector<bf16>;

BVec rand_bf16(size_t n, uint64_t stream, float lo = -1.0f, float hi = 1.0f) {
  BVec v;
  v.reserve(n);
  for (float x : rand_vec(n, stream, lo, hi)) v.push_back(bf16(x));
  return v;
}
FVec widen(const BVec& v) {
  FVec w(v.size());
  for (size_t i = 0; i < v.size(); ++i) w[i] = float(v[i]);
  return w;
}
double max_err(const BVec& got, const BVec& ref) { return max_err(widen(got), widen(ref)); }
const ops::Backend<bf16>& spec() { return ops::cpu_backend<bf16>(); }

// range(i) of the memory-bound bf16 cases: 1 with 16-byte accesses (the default), 0 with one
// element per access (ops_cuda.h vectorised_access): the two paths side by side. Restored after.
struct AccessArg {
  bool was = cuda::vectorised_access();
  AccessArg(benchmark::State& st, int i) {
    cuda::set_vectorised_access(st.range(i) != 0);
    st.SetLabel(st.range(i) != 0 ? "16-byte" : "plain");
  }
  ~AccessArg() { cuda::set_vectorised_access(was); }
};

void BM_bf16_residual(benchmark::State& st) {  // range(0): AccessArg
  if (!need_device(st)) return;
  const AccessArg access(st, 0);
  const size_t n = size_t(kN) * kC;
  auto a = rand_bf16(n, 1), b = rand_bf16(n, 2);
  BVec ref(n);
  spec().residual_forward(ref.data(), a.data(), b.data(), n);
  DeviceBuffer<bf16> da(a), db(b), out(n);
  auto launch = [&] { cuda::residual_forward(out.data(), da.data(), db.data(), n); };
  launch();
  run(st, launch, 6.0 * n, max_err(out.to_host(), ref));
}

void BM_bf16_gelu(benchmark::State& st) {  // range(0): 0 forward, 1 backward; range(1): AccessArg
  if (!need_device(st)) return;
  const AccessArg access(st, 1);
  const size_t n = size_t(kN) * 4 * kC;
  const bool backward = st.range(0) != 0;
  auto x = rand_bf16(n, 3, -4, 4), g = rand_bf16(n, 4);
  BVec ref(n);
  if (backward)
    spec().gelu_backward(ref.data(), x.data(), g.data(), n);
  else
    spec().gelu_forward(ref.data(), x.data(), n);
  DeviceBuffer<bf16> dx(x), dg(g), out(n);
  auto launch = [&] {
    if (backward)
      cuda::gelu_backward(out.data(), dx.data(), dg.data(), n);
    else
      cuda::gelu_forward(out.data(), dx.data(), n);
  };
  launch();
  run(st, launch, (backward ? 6.0 : 4.0) * n, max_err(out.to_host(), ref));
}

void BM_bf16_swiglu_forward(benchmark::State& st) {  // range(0): AccessArg
  if (!need_device(st)) return;
  const AccessArg access(st, 0);
  const size_t n = size_t(kLlamaB) * kLlamaT * kLlamaH;
  auto g = rand_bf16(n, 5, -4, 4), u = rand_bf16(n, 6);
  BVec ref(n);
  spec().swiglu_forward(ref.data(), g.data(), u.data(), n);
  DeviceBuffer<bf16> dg(g), du(u), out(n);
  auto launch = [&] { cuda::swiglu_forward(out.data(), dg.data(), du.data(), n); };
  launch();
  run(st, launch, 6.0 * n, max_err(out.to_host(), ref));
}

// range(0): 0 layernorm (GPT-2 124M), 1 rmsnorm (Llama 1B); range(1): 0 forward, 1 backward;
// range(2): AccessArg.
void BM_bf16_norm(benchmark::State& st) {
  if (!need_device(st)) return;
  const AccessArg access(st, 2);
  const bool rms = st.range(0) == 1, backward = st.range(1) == 1;
  const int N = rms ? kLlamaB * kLlamaT : kN, C = rms ? kLlamaC : kC;
  auto x = rand_bf16(size_t(N) * C, 12, 1, 3), w = rand_bf16(C, 13), b = rand_bf16(C, 14),
       g = rand_bf16(size_t(N) * C, 15);
  BVec y(size_t(N) * C), ref(size_t(N) * C, bf16(0.0f));
  FVec mean(N), rstd(N), rw(C, 0.0f), rb(C, 0.0f);
  if (rms)
    spec().rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
  else
    spec().layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  DeviceBuffer<bf16> dx(x), dw(w), db(b), dg(g), out(size_t(N) * C), dinp(ref);
  DeviceBuffer<float> dm(mean), dr(rstd), gw(rw), gb(rb);
  auto launch = [&] {
    if (rms && backward)
      cuda::rmsnorm_backward(dinp.data(), gw.data(), dg.data(), dx.data(), dw.data(), dr.data(), N, C);
    else if (rms)
      cuda::rmsnorm_forward(out.data(), dr.data(), dx.data(), dw.data(), N, C, 1e-5f);
    else if (backward)
      cuda::layernorm_backward(dinp.data(), gw.data(), gb.data(), dg.data(), dx.data(), dw.data(), dm.data(), dr.data(),
                               N, C);
    else
      cuda::layernorm_forward(out.data(), dm.data(), dr.data(), dx.data(), dw.data(), db.data(), N, C);
  };
  double err = 0;
  if (backward) {
    if (rms)
      spec().rmsnorm_backward(ref.data(), rw.data(), g.data(), x.data(), w.data(), rstd.data(), N, C);
    else
      spec().layernorm_backward(ref.data(), rw.data(), rb.data(), g.data(), x.data(), w.data(), mean.data(),
                                rstd.data(), N, C);
    launch();  // once from zero gradients, for the check
    err = std::max(max_err(dinp.to_host(), ref), max_err(gw.to_host(), rw));
  } else {
    launch();
    err = max_err(out.to_host(), y);
  }
  // Timed backward launches keep accumulating: the time, not the values, matters there.
  run(st, launch, backward ? 8.0 * N * C : 4.0 * N * C, err);
}

// GPT-2's linear layers in bf16: range(0) = OC, range(1) = C, range(2): 0 forward, 1 backward.
void BM_bf16_matmul(benchmark::State& st) {
  if (!need_device(st)) return;
  const int N = kN, OC = int(st.range(0)), C = int(st.range(1));
  const bool backward = st.range(2) != 0;
  auto x = rand_bf16(size_t(N) * C, 30), w = rand_bf16(size_t(OC) * C, 31, -0.05f, 0.05f), b = rand_bf16(OC, 32),
       g = rand_bf16(size_t(N) * OC, 35);
  DeviceBuffer<bf16> dx(x), dw(w), db(b), dg(g), out(size_t(N) * OC), ddx(size_t(N) * C);
  DeviceBuffer<float> ddw(FVec(size_t(OC) * C, 0.0f)), ddb(FVec(OC, 0.0f));
  auto launch = [&] {
    if (backward)
      cuda::matmul_backward(ddx.data(), ddw.data(), ddb.data(), dg.data(), dx.data(), dw.data(), N, C, OC);
    else
      cuda::matmul_forward(out.data(), dx.data(), dw.data(), db.data(), N, C, OC);
  };
  launch();
  double err = 0;
  if (backward) {
    BVec rdx(size_t(N) * C);
    FVec rdw(size_t(OC) * C, 0.0f), rdb(OC, 0.0f);
    spec().matmul_backward(rdx.data(), rdw.data(), rdb.data(), g.data(), x.data(), w.data(), N, C, OC);
    err = std::max({max_err(ddx.to_host(), rdx), max_err(ddw.to_host(), rdw), max_err(ddb.to_host(), rdb)});
  } else {
    BVec ref(size_t(N) * OC);
    spec().matmul_forward(ref.data(), x.data(), w.data(), b.data(), N, C, OC);
    err = max_err(out.to_host(), ref);
  }
  run(st, launch,
      backward ? 2.0 * (2.0 * N * C + OC * C + double(N) * OC) + 8.0 * OC * C
               : 2.0 * (double(N) * C + double(OC) * C + double(N) * OC),
      err);
  set_tflops(st, (backward ? 4.0 : 2.0) * N * C * OC);
}

// Causal attention in bf16 (the tensor-core kernels), GPT-2 124M; range(0): 0 forward, 1 backward.
void BM_bf16_attention(benchmark::State& st) {
  if (!need_device(st)) return;
  const int B = kB, T = kT, C = kC, NH = kNH;
  const bool backward = st.range(0) != 0;
  auto qkv = rand_bf16(size_t(B) * T * 3 * C, 36), g = rand_bf16(size_t(B) * T * C, 37);
  BVec out(size_t(B) * T * C);
  FVec lse(size_t(B) * NH * T);
  spec().attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, NH);
  DeviceBuffer<bf16> dqkv(qkv), dout(size_t(B) * T * C), dg(g), dd(size_t(B) * T * 3 * C);
  DeviceBuffer<float> dlse(size_t(B) * NH * T);
  cuda::attention_forward(dout.data(), dlse.data(), dqkv.data(), B, T, C, NH);
  double err = max_err(dout.to_host(), out);
  const double fwd_flops = 2.0 * 2.0 * B * NH * (double(T) * T / 2) * (C / NH);
  if (!backward) {
    run(st, [&] { cuda::attention_forward(dout.data(), dlse.data(), dqkv.data(), B, T, C, NH); },
        2.0 * (4.0 * B * T * C), err);
    set_tflops(st, fwd_flops);
    return;
  }
  BVec rd(size_t(B) * T * 3 * C);
  spec().attention_backward(rd.data(), g.data(), qkv.data(), out.data(), lse.data(), B, T, C, NH);
  auto launch = [&] {
    cuda::attention_backward(dd.data(), dg.data(), dqkv.data(), dout.data(), dlse.data(), B, T, C, NH);
  };
  launch();
  run(st, launch, 2.0 * (8.0 * B * T * C), max_err(dd.to_host(), rd));
  set_tflops(st, 2.0 * fwd_flops);
}

// The classifier with cross-entropy and its backward in bf16, GPT-2's head (N = T rows).
void BM_bf16_classifier_ce(benchmark::State& st) {
  if (!need_device(st)) return;
  const int N = kT, C = kC, V = 50257;
  auto x = rand_bf16(size_t(N) * C, 42), w = rand_bf16(size_t(V) * C, 43, -0.05f, 0.05f);
  const std::vector<int32_t> tg = rand_tokens(N, V, 44);
  FVec dloss(N, 1.0f / N), rl(N), rdw(size_t(V) * C, 0.0f);
  BVec rdx(size_t(N) * C);
  spec().classifier_ce_forward(rl.data(), rdx.data(), rdw.data(), x.data(), w.data(), tg.data(), dloss.data(), N, C,
                               V);
  DeviceBuffer<bf16> dx(x), dw(w), ddx(size_t(N) * C);
  DeviceBuffer<float> ddl(dloss), dl(N), ddw(FVec(size_t(V) * C, 0.0f));
  DeviceBuffer<int32_t> dtg(tg);
  auto launch = [&] {
    cuda::classifier_ce_forward(dl.data(), ddx.data(), ddw.data(), dx.data(), dw.data(), dtg.data(), ddl.data(), N, C,
                                V);
  };
  launch();
  double err = std::max({max_err(dl.to_host(), rl), max_err(ddx.to_host(), rdx), max_err(ddw.to_host(), rdw)});
  run(st, launch, 2.0 * (V * C + 2.0 * N * C) + 8.0 * V * C, err);
  set_tflops(st, 6.0 * N * C * V);
}

// GPT-2 124M's MLP GEMMs with GELU: forward fc (C -> 4C) and GELU, backward of the fc proj
// (4C -> C) through GELU. range(0): 0 forward, 1 backward; range(1): 1 cuBLASLt's GELU epilogues,
// 0 the GEMM and the GELU kernel in turn (set_gelu_epilogues). TFLOP/s of the GEMM (the backward's
// dinp GEMM only; dw's is timed too and adds as much again).
void BM_bf16_mlp_gelu(benchmark::State& st) {
  if (!need_device(st)) return;
  const bool backward = st.range(0) != 0, fused = st.range(1) != 0;
  const bool was = cuda::gelu_epilogues();
  cuda::set_gelu_epilogues(fused);
  st.SetLabel(fused ? "epilogue" : "two ops");
  const int N = kN, C = backward ? 4 * kC : kC, OC = backward ? kC : 4 * kC;
  auto x = rand_bf16(size_t(N) * C, 50), w = rand_bf16(size_t(OC) * C, 51), b = rand_bf16(OC, 52),
       g = rand_bf16(size_t(N) * OC, 53), pre_in = rand_bf16(size_t(N) * C, 54, -4, 4);
  BVec out(backward ? size_t(N) * C : size_t(N) * OC), pre(size_t(N) * OC);
  FVec dw(size_t(OC) * C, 0.0f), db(OC, 0.0f);
  if (backward)
    spec().matmul_dgelu_backward(out.data(), dw.data(), db.data(), g.data(), x.data(), w.data(), pre_in.data(), N, C,
                                 OC);
  else
    spec().matmul_gelu_forward(out.data(), pre.data(), x.data(), w.data(), b.data(), N, C, OC);
  DeviceBuffer<bf16> dx(x), dwt(w), dbias(b), dg(g), dpre_in(pre_in), dout(out.size()), dpre(pre.size());
  DeviceBuffer<float> ddw(dw.size()), ddb(db.size());
  const ops::Backend<bf16>& be = cuda::backend_bf16();
  auto launch = [&] {
    if (backward)
      be.matmul_dgelu_backward(dout.data(), ddw.data(), ddb.data(), dg.data(), dx.data(), dwt.data(), dpre_in.data(),
                               N, C, OC);
    else
      be.matmul_gelu_forward(dout.data(), dpre.data(), dx.data(), dwt.data(), dbias.data(), N, C, OC);
  };
  ddw.copy_from_host(FVec(dw.size(), 0.0f).data(), dw.size());
  ddb.copy_from_host(FVec(db.size(), 0.0f).data(), db.size());
  launch();
  const double err = max_err(dout.to_host(), out);
  run(st, launch, 2.0 * (backward ? double(N) * C * 3 + double(N) * OC : double(N) * OC * 2 + double(N) * C), err);
  set_tflops(st, 2.0 * N * C * OC);
  cuda::set_gelu_epilogues(was);
}

// The master weights rounded into the compute copy (once per step's forward), GPT-2 124M's 124M.
void BM_bf16_to_compute(benchmark::State& st) {  // range(0): AccessArg
  if (!need_device(st)) return;
  const AccessArg access(st, 0);
  const size_t n = 124439808;
  auto m = rand_vec(n, 45);
  DeviceBuffer<float> dm(m);
  DeviceBuffer<bf16> out(n);
  BVec ref(n);
  spec().to_compute(ref.data(), m.data(), n);
  auto launch = [&] { cuda::to_bf16(out.data(), dm.data(), n); };
  launch();
  run(st, launch, 6.0 * n, max_err(out.to_host(), ref));
}

#define LAB(fn) BENCHMARK(fn)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.2)
LAB(BM_residual);
LAB(BM_gelu_forward);
LAB(BM_gelu_backward);
LAB(BM_swiglu_forward);
LAB(BM_swiglu_backward);
LAB(BM_rope)->Arg(0)->Arg(1);
LAB(BM_layernorm_forward);
LAB(BM_layernorm_backward);
LAB(BM_rmsnorm_forward);
LAB(BM_rmsnorm_backward);
LAB(BM_residual_norm)->ArgsProduct({{0, 1}, {0, 1}});
LAB(BM_adamw);
LAB(BM_fill);
LAB(BM_sum_squares);
LAB(BM_scale);
LAB(BM_matmul_forward)->ArgsProduct({{3 * kC, 4 * kC}, {kC}, {0, 1, 2}})->ArgsProduct({{kC}, {4 * kC}, {0, 1, 2}});
LAB(BM_matmul_backward)->ArgsProduct({{3 * kC, 4 * kC}, {kC}, {0, 1, 2}})->ArgsProduct({{kC}, {4 * kC}, {0, 1, 2}});
LAB(BM_adamw_step)->Arg(0)->Arg(1);
LAB(BM_attention_decode)->ArgsProduct({{64, 1024, 8192}, {1}})->ArgsProduct({{1024, 8192}, {8}});
LAB(BM_attention)->ArgsProduct({{0, 1}, {0, 1, 2}});
LAB(BM_encoder)->Arg(0)->Arg(1);
LAB(BM_classifier_ce);
LAB(BM_bf16_residual)->Arg(1)->Arg(0);
LAB(BM_bf16_gelu)->ArgsProduct({{0, 1}, {1, 0}});
LAB(BM_bf16_swiglu_forward)->Arg(1)->Arg(0);
LAB(BM_bf16_norm)->ArgsProduct({{0, 1}, {0, 1}, {1, 0}});
LAB(BM_bf16_matmul)->ArgsProduct({{3 * kC, 4 * kC}, {kC}, {0, 1}})->ArgsProduct({{kC}, {4 * kC}, {0, 1}});
LAB(BM_bf16_attention)->Arg(0)->Arg(1);
LAB(BM_bf16_classifier_ce);
LAB(BM_bf16_to_compute)->Arg(1)->Arg(0);
LAB(BM_bf16_mlp_gelu)->ArgsProduct({{0, 1}, {1, 0}});

}  // namespace
}  // namespace lmf

BENCHMARK_MAIN();
