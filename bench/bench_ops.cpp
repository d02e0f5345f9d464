// CPU op benchmarks at GPT-2 124M shapes (C = 768, NH = 12, V = 50257), forward and backward,
// plus the raw SGEMM rate the BLAS-bound ops should approach. Threads: OMP_NUM_THREADS.
//   ./bench_ops --benchmark_min_time=0.2
// GFLOP/s counts useful FLOPs only (attention: the causal half of QK^T and PV).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "core/buffer.h"
#include "core/rng.h"
#include "infer/generate.h"
#include "ops/cpu/blas.h"
#include "ops/ops.h"

namespace lmf::ops {
namespace {

Buffer<float> rand_buf(size_t n, uint64_t stream, float lo = -1.0f, float hi = 1.0f) {
  Buffer<float> b(n);
  Rng r(42, stream);
  for (size_t i = 0; i < n; ++i) b[i] = lo + (hi - lo) * (float)r.uniform();
  return b;
}
std::vector<int32_t> rand_tokens(size_t n, int V, uint64_t stream) {
  Rng r(42, stream);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = (int32_t)r.below((uint64_t)V);
  return t;
}
void set_gflops(benchmark::State& state, double flops_per_iter) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops_per_iter * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// ---- raw SGEMM: C (M, N) = A (M, K) @ B^T (N, K), as the linear layers call it
// -----------------------
void BM_sgemm(benchmark::State& state) {
  const int M = (int)state.range(0), N = (int)state.range(1), K = (int)state.range(2);
  auto A = rand_buf((size_t)M * K, 1), B = rand_buf((size_t)N * K, 2);
  Buffer<float> C((size_t)M * N);
  for (auto _ : state) {
    cpu::gemm<float>(false, true, M, N, K, 1.0f, A.data(), K, B.data(), K, 0.0f, C.data(), N);
    benchmark::ClobberMemory();
  }
  set_gflops(state, 2.0 * M * N * K);
}
BENCHMARK(BM_sgemm)
    ->Args({1024, 1024, 1024})
    ->Args({4096, 2304, 768})
    ->Unit(benchmark::kMillisecond);

// ---- matmul (N, C) -> (N, OC)
// -----------------------------------------------------------------------
void BM_matmul_forward(benchmark::State& state) {
  const int N = (int)state.range(0), C = (int)state.range(1), OC = (int)state.range(2);
  auto inp = rand_buf((size_t)N * C, 3), w = rand_buf((size_t)OC * C, 4), bias = rand_buf(OC, 5);
  Buffer<float> out((size_t)N * OC);
  for (auto _ : state) {
    matmul_forward<float>(out.data(), inp.data(), w.data(), bias.data(), N, C, OC);
    benchmark::ClobberMemory();
  }
  set_gflops(state, 2.0 * N * C * OC);
}
void BM_matmul_backward(benchmark::State& state) {
  const int N = (int)state.range(0), C = (int)state.range(1), OC = (int)state.range(2);
  auto inp = rand_buf((size_t)N * C, 3), w = rand_buf((size_t)OC * C, 4),
       dout = rand_buf((size_t)N * OC, 6);
  Buffer<float> dinp((size_t)N * C), dw((size_t)OC * C), dbias(OC);
  for (auto _ : state) {
    matmul_backward<float>(dinp.data(), dw.data(), dbias.data(), dout.data(), inp.data(), w.data(),
                           N, C, OC);
    benchmark::ClobberMemory();
  }
  set_gflops(state, 4.0 * N * C * OC);
}
// qkv, attention proj, fc, fc proj at B*T = 4096.
#define MATMUL_SHAPES           \
  Args({4096, 768, 2304})       \
      ->Args({4096, 768, 768})  \
      ->Args({4096, 768, 3072}) \
      ->Args({4096, 3072, 768}) \
      ->Unit(benchmark::kMillisecond)
BENCHMARK(BM_matmul_forward)->MATMUL_SHAPES;
BENCHMARK(BM_matmul_backward)->MATMUL_SHAPES;

// ---- attention (B, T, C, NH)
// ----------------------------------------------------------------------
double attention_flops(int B, int T, int C) {  // QK^T and PV over the causal triangle
  return 2.0 * 2.0 * B * (T * (T + 1.0) / 2.0) * C;
}
void BM_attention_forward(benchmark::State& state) {
  const int B = (int)state.range(0), T = (int)state.range(1), C = (int)state.range(2),
            NH = (int)state.range(3);
  auto qkv = rand_buf((size_t)B * T * 3 * C, 7);
  Buffer<float> out((size_t)B * T * C), lse((size_t)B * NH * T);
  for (auto _ : state) {
    attention_forward<float>(out.data(), lse.data(), qkv.data(), B, T, C, NH);
    benchmark::ClobberMemory();
  }
  set_gflops(state, attention_flops(B, T, C));
}
void BM_attention_backward(benchmark::State& state) {
  const int B = (int)state.range(0), T = (int)state.range(1), C = (int)state.range(2),
            NH = (int)state.range(3);
  auto qkv = rand_buf((size_t)B * T * 3 * C, 7), dout = rand_buf((size_t)B * T * C, 8);
  Buffer<float> out((size_t)B * T * C), lse((size_t)B * NH * T), dqkv((size_t)B * T * 3 * C);
  attention_forward<float>(out.data(), lse.data(), qkv.data(), B, T, C, NH);
  for (auto _ : state) {
    attention_backward<float>(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T, C,
                              NH);
    benchmark::ClobberMemory();
  }
  // QK^T recomputed, dV, dP, dQ, dK: five products over the causal triangle.
  set_gflops(state, 2.5 * attention_flops(B, T, C));
}
BENCHMARK(BM_attention_forward)
    ->Args({4, 64, 768, 12})
    ->Args({1, 1024, 768, 12})
    ->Args({4, 1024, 768, 12})
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_attention_backward)
    ->Args({4, 64, 768, 12})
    ->Args({1, 1024, 768, 12})
    ->Args({4, 1024, 768, 12})
    ->Unit(benchmark::kMillisecond);

// ---- classifier + cross-entropy (N, C, V)
// -----------------------------------------------------------
void BM_classifier(benchmark::State& state) {
  const int N = (int)state.range(0), C = (int)state.range(1), V = (int)state.range(2);
  const bool backward = state.range(3) != 0;
  auto x = rand_buf((size_t)N * C, 9), w = rand_buf((size_t)V * C, 10, -0.05f, 0.05f),
       dloss = rand_buf(N, 11);
  auto targets = rand_tokens(N, V, 12);
  Buffer<float> losses(N), dx(backward ? (size_t)N * C : 0), dw(backward ? (size_t)V * C : 0);
  // One untimed call: the first allocates and faults in the kernel's (256, V) scratch.
  classifier_ce_forward<float>(losses.data(), backward ? dx.data() : nullptr,
                               backward ? dw.data() : nullptr, x.data(), w.data(), targets.data(),
                               dloss.data(), N, C, V);
  for (auto _ : state) {
    double total = classifier_ce_forward<float>(losses.data(), backward ? dx.data() : nullptr,
                                                backward ? dw.data() : nullptr, x.data(), w.data(),
                                                targets.data(), dloss.data(), N, C, V);
    benchmark::DoNotOptimize(total);
  }
  set_gflops(state, (backward ? 6.0 : 2.0) * N * C * V);
}
BENCHMARK(BM_classifier)
    ->ArgNames({"N", "C", "V", "bwd"})
    ->Args({256, 768, 50257, 0})
    ->Args({256, 768, 50257, 1})
    ->Unit(benchmark::kMillisecond);

// ---- pointwise and row-wise ops (memory-bound: bytes/s is the figure of merit)
// -----------------------
void set_bytes(benchmark::State& state, double bytes_per_iter) {
  state.SetBytesProcessed((int64_t)(bytes_per_iter * (double)state.iterations()));
}
void BM_layernorm_forward(benchmark::State& state) {
  const int N = (int)state.range(0), C = (int)state.range(1);
  auto inp = rand_buf((size_t)N * C, 13), w = rand_buf(C, 14), b = rand_buf(C, 15);
  Buffer<float> out((size_t)N * C), mean(N), rstd(N);
  for (auto _ : state) {
    layernorm_forward<float>(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(),
                             N, C);
    benchmark::ClobberMemory();
  }
  set_bytes(state, 2.0 * N * C * 4);
}
void BM_layernorm_backward(benchmark::State& state) {
  const int N = (int)state.range(0), C = (int)state.range(1);
  auto inp = rand_buf((size_t)N * C, 13), w = rand_buf(C, 14), b = rand_buf(C, 15),
       dout = rand_buf((size_t)N * C, 16);
  Buffer<float> out((size_t)N * C), mean(N), rstd(N), dinp((size_t)N * C), dw(C), db(C);
  layernorm_forward<float>(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), N,
                           C);
  for (auto _ : state) {
    layernorm_backward<float>(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(),
                              mean.data(), rstd.data(), N, C);
    benchmark::ClobberMemory();
  }
  set_bytes(state, 5.0 * N * C * 4);  // pass 1 reads inp, dout, dinp, writes dinp; pass 2 reads two
}
BENCHMARK(BM_layernorm_forward)->Args({4096, 768})->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_layernorm_backward)->Args({4096, 768})->Unit(benchmark::kMicrosecond);

void BM_gelu_forward(benchmark::State& state) {
  const size_t n = (size_t)state.range(0);
  auto inp = rand_buf(n, 17, -4.0f, 4.0f);
  Buffer<float> out(n);
  for (auto _ : state) {
    gelu_forward<float>(out.data(), inp.data(), n);
    benchmark::ClobberMemory();
  }
  set_bytes(state, 2.0 * n * 4);
}
void BM_gelu_backward(benchmark::State& state) {
  const size_t n = (size_t)state.range(0);
  auto inp = rand_buf(n, 17, -4.0f, 4.0f), dout = rand_buf(n, 18);
  Buffer<float> dinp(n);
  for (auto _ : state) {
    gelu_backward<float>(dinp.data(), inp.data(), dout.data(), n);
    benchmark::ClobberMemory();
  }
  set_bytes(state, 3.0 * n * 4);
}
BENCHMARK(BM_gelu_forward)->Arg(4096 * 3072)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gelu_backward)->Arg(4096 * 3072)->Unit(benchmark::kMicrosecond);

void BM_residual_forward(benchmark::State& state) {
  const size_t n = (size_t)state.range(0);
  auto a = rand_buf(n, 19), b = rand_buf(n, 20);
  Buffer<float> out(n);
  for (auto _ : state) {
    residual_forward<float>(out.data(), a.data(), b.data(), n);
    benchmark::ClobberMemory();
  }
  set_bytes(state, 3.0 * n * 4);
}
BENCHMARK(BM_residual_forward)->Arg(4096 * 768)->Unit(benchmark::kMicrosecond);

void BM_encoder_forward(benchmark::State& state) {
  const int B = (int)state.range(0), T = (int)state.range(1), C = 768, V = 50257;
  auto wte = rand_buf((size_t)V * C, 21), wpe = rand_buf((size_t)T * C, 22);
  auto tokens = rand_tokens((size_t)B * T, V, 23);
  Buffer<float> out((size_t)B * T * C);
  for (auto _ : state) {
    encoder_forward<float>(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
    benchmark::ClobberMemory();
  }
  set_bytes(state, 3.0 * B * T * C * 4);
}
void BM_encoder_backward(benchmark::State& state) {
  const int B = (int)state.range(0), T = (int)state.range(1), C = 768, V = 50257;
  auto dout = rand_buf((size_t)B * T * C, 24);
  auto tokens = rand_tokens((size_t)B * T, V, 23);
  Buffer<float> dwte((size_t)V * C), dwpe((size_t)T * C);
  for (auto _ : state) {
    encoder_backward<float>(dwte.data(), dwpe.data(), dout.data(), tokens.data(), B, T, C);
    benchmark::ClobberMemory();
  }
  set_bytes(state, 4.0 * B * T * C * 4);
}
BENCHMARK(BM_encoder_forward)->Args({4, 1024})->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_encoder_backward)->Args({4, 1024})->Unit(benchmark::kMicrosecond);

// ---- optimizer
// ------------------------------------------------------------------------------------
void BM_adamw(benchmark::State& state) {
  const size_t n = (size_t)state.range(0);
  auto p = rand_buf(n, 25), g = rand_buf(n, 26), m = rand_buf(n, 27, -0.1f, 0.1f),
       v = rand_buf(n, 28, 0.0f, 0.01f);
  long t = 1;
  for (auto _ : state) {
    adamw_update(p.data(), g.data(), m.data(), v.data(), n, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, t++);
    benchmark::ClobberMemory();
  }
  set_bytes(state, 7.0 * n * 4);  // reads p, g, m, v; writes p, m, v
}
void BM_sum_squares(benchmark::State& state) {
  const size_t n = (size_t)state.range(0);
  auto x = rand_buf(n, 29);
  for (auto _ : state) benchmark::DoNotOptimize(sum_squares(x.data(), n));
  set_bytes(state, 1.0 * n * 4);
}
BENCHMARK(BM_adamw)->Arg(1 << 24)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_sum_squares)->Arg(1 << 24)->Unit(benchmark::kMicrosecond);

// ---- decoding: one-row products and the choice of a token
// --------------------------------------------------------------
// y (OC) = W (OC, C) x (C), a decoder's one-row product, by the third argument: 0 OpenBLAS's GEMV,
// 1 OpenBLAS's GEMM with one row (which packs all of W first), 2 cpu::gemm (gemm_skinny over float
// W, the fp32 decoders'), 3 gemm_skinny over bf16 W (the bf16 decoders'). GB/s counts W's bytes,
// the whole of the traffic.
void BM_gemv(benchmark::State& state) {
  const int C = (int)state.range(0), OC = (int)state.range(1), how = (int)state.range(2);
  auto x = rand_buf(C, 30), w = rand_buf((size_t)OC * C, 31);
  std::vector<bf16> w16(w.size());
  for (size_t i = 0; i < w.size(); ++i) w16[i] = bf16(w[i]);
  Buffer<float> y(OC);
  for (auto _ : state) {
    if (how == 1) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 1, OC, C, 1.0f, x.data(), C, w.data(), C, 0.0f, y.data(),
                  OC);
    } else if (how == 2) {
      cpu::gemm<float>(false, true, 1, OC, C, 1.0f, x.data(), C, w.data(), C, 0.0f, y.data(), OC);
    } else if (how == 3) {
      cpu::gemm_skinny(1, OC, C, 1.0f, x.data(), C, w16.data(), C, 0.0f, y.data(), OC);
    } else {
      cblas_sgemv(CblasRowMajor, CblasNoTrans, OC, C, 1.0f, w.data(), C, x.data(), 1, 0.0f, y.data(), 1);
    }
    benchmark::ClobberMemory();
  }
  const double bytes = (how == 3 ? 2.0 : 4.0) * C * OC;
  state.counters["GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
// GPT-2 124M's qkv, MLP down projection, and classifier (W 7, 9 and 154 MB; the first two stay in
// the cache across iterations here, unlike in decoding).
BENCHMARK(BM_gemv)
    ->ArgsProduct({{768}, {2304}, {0, 1, 2, 3}})
    ->ArgsProduct({{3072}, {768}, {0, 1, 2, 3}})
    ->ArgsProduct({{768}, {50257}, {0, 1, 2, 3}})
    ->Unit(benchmark::kMicrosecond);

// sample_token at temperature 0.8 with top_p 0.95 (`lmforge sample`'s defaults), against a full
// sort of the vocabulary by logit (what it did before). Logits: "flat", uniform in [-8, 8] (an
// untrained model: a nucleus of thousands), or "peaked", -2 ln(rank) over a random order of the
// ids (Zipf-like, as a trained model's: a nucleus of tens); the second argument 1 for peaked.
Buffer<float> bench_logits(int V, bool peaked) {
  if (!peaked) return rand_buf(V, 32, -8.0f, 8.0f);
  Buffer<float> l(V);
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  Rng r(42, 33);
  for (int i = V - 1; i > 0; --i) std::swap(order[i], order[r.below(uint64_t(i) + 1)]);
  for (int rank = 0; rank < V; ++rank) l[order[rank]] = -2.0f * std::log(float(rank + 1));
  return l;
}
void BM_sample_token(benchmark::State& state) {
  const int V = (int)state.range(0);
  auto logits = bench_logits(V, state.range(1) != 0);
  SampleOptions o;
  o.temperature = 0.8;
  o.top_p = 0.95;
  Rng rng(1, kStreamSample);
  for (auto _ : state) benchmark::DoNotOptimize(sample_token(logits.data(), V, o, rng));
}
void BM_sort_vocabulary(benchmark::State& state) {
  const int V = (int)state.range(0);
  auto logits = bench_logits(V, state.range(1) != 0);
  std::vector<int32_t> ids(V);
  for (auto _ : state) {
    std::iota(ids.begin(), ids.end(), 0);
    std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
      return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
    });
    benchmark::DoNotOptimize(ids.data());
  }
}
BENCHMARK(BM_sample_token)->ArgsProduct({{50257, 128256}, {0, 1}})->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_sort_vocabulary)->ArgsProduct({{50257, 128256}, {0, 1}})->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace lmf::ops

BENCHMARK_MAIN();
