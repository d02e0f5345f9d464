// CUDA matmul and classifier ops (ops/cuda/matmul.cu, classifier.cu, cuBLAS) against the CPU ops
// (ops/ops.h), the specification, in fp32 on the same inputs. Every test that needs a device
// skips without one; in a build without CUDA only a skip marker runs.
//
// Tolerances are those of tests/unit/test_ops.cpp (check_matmul, check_classifier; read its
// header): for a sum of K rounded terms, |computed - exact| <= gamma(K) * sum|terms| with
// gamma(K) = lambda sqrt(K) u (Higham & Mary 2019, probabilistic; lambda = 6, u = fp32 epsilon).
// That bound holds for any summation order (cuBLAS's tiles and split-K trees, the CPU's OpenBLAS
// loops, the chunk-by-chunk accumulation of dw). Both the GPU and the CPU result lie within it of
// the exact (double) value, so they lie within twice it of each other: every tolerance here is
// kBoth times test_ops.cpp's. Outputs whose exact value is 0 by construction (the loss and the
// gradient rows of ignored targets) get tolerance 0.
// Shapes are odd on purpose: no dimension a multiple of a cuBLAS tile, the 32-column tiles of the
// dbias sum, or the 256 threads of the cross-entropy rows; V = 1031 is prime.
#include <gtest/gtest.h>

#include "core/error.h"
#include "ops/cuda_backend.h"

#ifndef LMF_HAVE_CUDA

TEST(CudaMatmul, Skipped) { GTEST_SKIP() << "built without CUDA"; }

#else

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "core/rng.h"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/ops_cuda.h"
#include "ops/ops.h"
#include "ops/reference.h"
#include "gpu/cuda_test_util.h"
#include "matmul_precision_ref.h"

namespace lmf {
namespace {

using namespace test;  // NOLINT: the shared GPU test helpers (cuda_test_util.h)

// Whether a shared library whose file name starts with `stem` is mapped into this process.
bool library_mapped(const std::string& stem) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    const size_t slash = line.rfind('/');
    if (slash != std::string::npos && line.compare(slash + 1, stem.size(), stem) == 0) return true;
  }
  return false;
}

// cuBLAS and cuBLASLt are loaded on first use, not linked (ops/cuda/cublas_api.h): on any
// machine with the toolkit's libraries, a GPU or not, they load and every entry point is found;
// and the program had not loaded them before (its start-up stays free of cuBLASLt's). The first
// test of the file, so that in a run of the whole program no GEMM has loaded them yet.
TEST(CudaMatmul, CublasLoadsOnDemand) {
  const bool before = library_mapped("libcublasLt");
  std::string where;
  ASSERT_NO_THROW(where = cuda::cublas_libraries());
#ifdef LMF_CUDA_EMU
  EXPECT_EQ(where, "the CPU emulation");
#else
  EXPECT_FALSE(before) << "libcublasLt was mapped before the first GEMM";
  EXPECT_NE(where.find("libcublasLt.so"), std::string::npos) << where;
  EXPECT_NE(where.find("libcublas.so"), std::string::npos) << where;
  EXPECT_TRUE(library_mapped("libcublasLt")) << where;
#endif
  (void)before;
}

// ---- matmul: out = inp @ w^T + bias -------------------------------------------------------------

struct MatmulShape {
  int N, C, OC;
};

void check_matmul(const MatmulShape& s) {
  const int N = s.N, C = s.C, OC = s.OC;
  SCOPED_TRACE("N = " + std::to_string(N) + ", C = " + std::to_string(C) +
               ", OC = " + std::to_string(OC));
  const Tol t = tol_f32();
  const Vec inp = rand_vec((size_t)N * C, 1), w = rand_vec((size_t)OC * C, 2),
            bias = rand_vec(OC, 3), dout = rand_vec((size_t)N * OC, 4),
            dw0 = rand_vec((size_t)OC * C, 5), db0 = rand_vec(OC, 6);
  const double A = max_abs(inp), W = max_abs(w), G = max_abs(dout);
  const FVec inpf = to_f(inp), wf = to_f(w), biasf = to_f(bias), doutf = to_f(dout);
  DeviceBuffer<float> d_inp(inpf), d_w(wf), d_bias(biasf), d_dout(doutf);

  // Bounds of test_ops.cpp check_matmul, times kBoth:
  //  out: a dot product of length C plus the bias, C + 1 terms, sum|terms| <= C A W + |bias|;
  //  dinp: a dot product of length OC, sum|terms| <= OC G W;
  //  dw: dw0 plus N terms, sum|terms| <= N G A + |dw0|; dbias: db0 plus N terms <= N G + |db0|.
  const auto tol_out = [&](bool b) {
    return kBoth * t.gamma(C + 1) * (C * A * W + (b ? max_abs(bias) : 0));
  };
  const double tol_dinp = kBoth * t.gamma(OC) * OC * G * W;
  const double tol_dw = kBoth * t.gamma(N + 1) * (N * G * A + max_abs(dw0));
  const double tol_db = kBoth * t.gamma(N + 1) * (N * G + max_abs(db0));

  for (bool with_bias : {true, false})
    for (bool with_dinp : {true, false}) {  // every branch: bias / dbias, dinp present or null
      SCOPED_TRACE(std::string(with_bias ? "bias" : "no bias") + ", " +
                   (with_dinp ? "dinp" : "dinp = nullptr"));
      const float* bias_c = with_bias ? biasf.data() : nullptr;
      FVec out_c((size_t)N * OC);
      ops::matmul_forward<float>(out_c.data(), inpf.data(), wf.data(), bias_c, N, C, OC);
      DeviceBuffer<float> d_out(nans(out_c.size()));  // assigned: NaN until written
      cuda::matmul_forward(d_out.data(), d_inp.data(), d_w.data(),
                           with_bias ? d_bias.data() : nullptr, N, C, OC);
      expect_close("out", d_out.to_host(), out_c, tol_out(with_bias));

      // Gradients accumulate onto nonzero dw0, db0; dinp is assigned (starts as NaN).
      FVec dinp_c((size_t)N * C), dw_c = to_f(dw0), db_c = to_f(db0);
      ops::matmul_backward<float>(with_dinp ? dinp_c.data() : nullptr, dw_c.data(),
                                  with_bias ? db_c.data() : nullptr, doutf.data(), inpf.data(),
                                  wf.data(), N, C, OC);
      DeviceBuffer<float> d_dinp(nans(dinp_c.size())), d_dw(to_f(dw0)), d_db(to_f(db0));
      cuda::matmul_backward(with_dinp ? d_dinp.data() : nullptr, d_dw.data(),
                            with_bias ? d_db.data() : nullptr, d_dout.data(), d_inp.data(),
                            d_w.data(), N, C, OC);
      if (with_dinp) expect_close("dinp", d_dinp.to_host(), dinp_c, tol_dinp);
      expect_close("dw", d_dw.to_host(), dw_c, tol_dw);
      // Without a bias the GPU must leave db untouched (bit-equal to db0, as the CPU's).
      expect_close("dbias", d_db.to_host(), db_c, with_bias ? tol_db : 0.0);
      if (!with_dinp) {  // skipped: still all NaN
        const FVec untouched = d_dinp.to_host();
        EXPECT_TRUE(std::all_of(untouched.begin(), untouched.end(), [](float v) {
          return std::isnan(v);
        })) << "dinp written although nullptr was passed";
      }

      // Deterministic: the same backward again gives the same bits.
      DeviceBuffer<float> d_dinp2(nans(dinp_c.size())), d_dw2(to_f(dw0)), d_db2(to_f(db0));
      cuda::matmul_backward(with_dinp ? d_dinp2.data() : nullptr, d_dw2.data(),
                            with_bias ? d_db2.data() : nullptr, d_dout.data(), d_inp.data(),
                            d_w.data(), N, C, OC);
      if (with_dinp) {
        EXPECT_EQ(d_dinp2.to_host(), d_dinp.to_host());
      }
      EXPECT_EQ(d_dw2.to_host(), d_dw.to_host());
      EXPECT_EQ(d_db2.to_host(), d_db.to_host());
    }
}

TEST(CudaMatmul, AgainstCpu) {
  SKIP_WITHOUT_DEVICE();
  // 1: the degenerate case; 37 x 67 x 131: odd everywhere; 31/32/33 around the warp; 257 rows:
  // more than 8 blocks of 32 dbias rows; 4 x 768 x 1000: wide and short; 8 x 4096 x 64: a long
  // reduction on a small output, where cuBLAS may split K (its determinism is checked too);
  // 300 x 1031: more dbias column tiles than fit one wave of a small GPU's SMs.
  for (const MatmulShape& s :
       {MatmulShape{1, 1, 1}, MatmulShape{37, 67, 131}, MatmulShape{31, 32, 33},
        MatmulShape{33, 31, 32}, MatmulShape{257, 96, 130}, MatmulShape{4, 768, 1000},
        MatmulShape{8, 4096, 64}, MatmulShape{300, 65, 1031}})
    check_matmul(s);
}

// ---- tf32 / bf16 products (CUBLAS_COMPUTE_32F_FAST_TF32 / _FAST_16BF) -----------------------------

// The tensor-core GEMMs of a MatmulPrecision against the exact product of the UNROUNDED operands,
// within (2u' + u'^2 + gamma32(K)) sum|terms| (matmul_precision_ref.h: holds whether cuBLAS rounds
// or truncates the operands, in any order), and against the CPU's emulation of the same mode
// within twice that. Shapes large enough for the tensor-core kernels (multiples of 8 and not).
void check_matmul_precision(ops::MatmulPrecision p, const MatmulShape& s) {
  const int N = s.N, C = s.C, OC = s.OC;
  SCOPED_TRACE(std::string(ops::to_string(p)) + ": N = " + std::to_string(N) + ", C = " + std::to_string(C) +
               ", OC = " + std::to_string(OC));
  const Vec inp = rand_vec((size_t)N * C, 41), w = rand_vec((size_t)OC * C, 42), bias = rand_vec(OC, 43),
            dout = rand_vec((size_t)N * OC, 44), dw0 = rand_vec((size_t)OC * C, 45);
  const double A = max_abs(inp), W = max_abs(w), G = max_abs(dout), e = test::product_error(p);
  const Tol t = tol_f32();
  const double tol_out = (e + t.gamma(C + 1)) * (C * A * W + max_abs(bias));
  const double tol_dinp = (e + t.gamma(OC)) * OC * G * W;
  const double tol_dw = (e + t.gamma(N + 1)) * (N * G * A + max_abs(dw0));
  const FVec inpf = to_f(inp), wf = to_f(w), biasf = to_f(bias), doutf = to_f(dout), dw0f = to_f(dw0);
  DeviceBuffer<float> d_inp(inpf), d_w(wf), d_bias(biasf), d_dout(doutf), d_out(nans((size_t)N * OC)),
      d_dinp(nans((size_t)N * C)), d_dw(dw0f);
  cuda::matmul_forward(d_out.data(), d_inp.data(), d_w.data(), d_bias.data(), N, C, OC, 0, p);
  cuda::matmul_backward(d_dinp.data(), d_dw.data(), nullptr, d_dout.data(), d_inp.data(), d_w.data(), N, C, OC, 0,
                        p);
  Vec out_x((size_t)N * OC), dinp_x((size_t)N * C), dw_x = dw0;
  ops::ref::matmul_forward<double>(out_x.data(), inp.data(), w.data(), bias.data(), N, C, OC);
  ops::ref::matmul_backward<double>(dinp_x.data(), dw_x.data(), nullptr, dout.data(), inp.data(), w.data(), N, C,
                                    OC);
  const FVec out = d_out.to_host(), dinp = d_dinp.to_host(), dw = d_dw.to_host();
  expect_close("out vs exact", out, to_f(out_x), tol_out);
  expect_close("dinp vs exact", dinp, to_f(dinp_x), tol_dinp);
  expect_close("dw vs exact", dw, to_f(dw_x), tol_dw);
  const ops::Backend<float>& cpu = ops::cpu_backend<float>(p);
  FVec out_c((size_t)N * OC), dinp_c((size_t)N * C), dw_c = dw0f;
  cpu.matmul_forward(out_c.data(), inpf.data(), wf.data(), biasf.data(), N, C, OC);
  cpu.matmul_backward(dinp_c.data(), dw_c.data(), nullptr, doutf.data(), inpf.data(), wf.data(), N, C, OC);
  expect_close("out vs the CPU's emulation", out, out_c, kBoth * tol_out);
  expect_close("dinp vs the CPU's emulation", dinp, dinp_c, kBoth * tol_dinp);
  expect_close("dw vs the CPU's emulation", dw, dw_c, kBoth * tol_dw);
  // How close the emulation is (expected: fp32 accumulation error only, if cuBLAS rounds to
  // nearest even as the CPU does): printed for docs/cuda.md, not asserted.
  double d = 0;
  for (size_t i = 0; i < out.size(); ++i) d = std::max(d, std::abs((double)out[i] - out_c[i]));
  std::printf("[ info ] %s %dx%dx%d: max |gpu - cpu emulation| %.3g, bound vs exact %.3g\n", ops::to_string(p), N, C,
              OC, d, tol_out);
}

TEST(CudaMatmul, Tf32AndBf16ProductsWithinTheirBound) {
  SKIP_WITHOUT_DEVICE();
  for (auto p : {ops::MatmulPrecision::tf32, ops::MatmulPrecision::bf16})
    for (const MatmulShape& s : {MatmulShape{37, 67, 131}, MatmulShape{256, 768, 512}, MatmulShape{8, 4096, 64}})
      check_matmul_precision(p, s);
}

// The classifier in a rounded mode against the exact (unrounded, double) classifier. Logits are
// off by at most dl = (e + gamma32(C)) C X W; the loss lse - l_t by 2 dl plus the fp32 softmax;
// dlogits by a relative 2 dl + softmax per p_v (sum_v p_v = 1); dx, dw then carry that plus
// their own products' error e and fp32 sums (test_matmul_precision.cpp derives the same).
TEST(CudaClassifier, Tf32AndBf16WithinTheirBound) {
  SKIP_WITHOUT_DEVICE();
  const int N = 70, C = 96, V = 1031;
  const Vec x = rand_vec((size_t)N * C, 61), w = rand_vec((size_t)V * C, 62), dw0 = rand_vec((size_t)V * C, 63),
            dloss = rand_vec(N, 64, 0.5, 2.0);
  std::vector<int32_t> targets = rand_tokens(N, V, 65);
  targets[4] = -1;
  Vec losses_x(N), dx_x((size_t)N * C), dw_x = dw0;
  ops::ref::classifier_ce_forward(losses_x.data(), dx_x.data(), dw_x.data(), x.data(), w.data(), targets.data(),
                                  dloss.data(), N, C, V);
  const Tol t = tol_f32();
  const double X = max_abs(x), W = max_abs(w), D = max_abs(dloss);
  for (auto p : {ops::MatmulPrecision::tf32, ops::MatmulPrecision::bf16}) {
    SCOPED_TRACE(ops::to_string(p));
    const double e = test::product_error(p), dl = (e + t.gamma(C)) * C * X * W;
    const double soft = t.gamma(16 * V), sum_ddl = (2 * dl + soft) * D;
    const double tol_loss = 2 * dl + soft * (1 + max_abs(losses_x) + C * X * W);
    const double tol_dx = sum_ddl * W + (e + t.gamma(V)) * 2 * D * W;
    const double tol_dw = sum_ddl * X + (e + t.gamma(N + 1)) * (2 * D * X * N + max_abs(dw0));
    // One chunk, chunks of 16 rows, and groups of two such chunks (bf16's backward keeps dlogits
    // and the operands of a group in bf16 buffers, reused group after group).
    for (const auto& [chunk, group] : {std::pair{0, 0}, std::pair{16, 0}, std::pair{16, 2}}) {
      SCOPED_TRACE("chunk rows " + std::to_string(chunk) + ", chunks per group " + std::to_string(group));
      cuda::set_classifier_chunk_rows(chunk);
      cuda::set_classifier_group_chunks(group);
      DeviceBuffer<float> d_x(to_f(x)), d_w(to_f(w)), d_dl(to_f(dloss)), d_losses(nans(N)),
          d_dx(nans((size_t)N * C)), d_dw(to_f(dw0));
      DeviceBuffer<int32_t> d_t(targets);
      cuda::classifier_ce_forward(d_losses.data(), d_dx.data(), d_dw.data(), d_x.data(), d_w.data(), d_t.data(),
                                  d_dl.data(), N, C, V, 0, p);
      cuda::set_classifier_chunk_rows(0);
      cuda::set_classifier_group_chunks(0);
      expect_close("losses", d_losses.to_host(), to_f(losses_x), tol_loss);
      expect_close("dx", d_dx.to_host(), to_f(dx_x), tol_dx);
      expect_close("dw", d_dw.to_host(), to_f(dw_x), tol_dw);
      EXPECT_EQ(d_w.to_host(), to_f(w));  // read only: the bf16 copy is the workspace's
    }
  }
}

// bf16's backward keeps dlogits in bf16: with w = [I | 0] (V <= C) the logits are the first V
// columns of x rounded to bf16, dx is exactly the GPU's bf16 dlogits (w's ones and zeros are
// exact), and dw = dw0 + dlogits^T x in bf16 operands. Against the double softmax on the rounded
// logits: dx within one bf16 rounding (2^-9 relative) plus the fp32 softmax's error, and
// somewhere outside the fp32 bound alone (so the rounding happened); dw within its fp32 sums
// plus each term's operand roundings. Several chunks, so the buffers are reused.
TEST(CudaClassifier, Bf16BackwardRoundsDlogitsOnce) {
  SKIP_WITHOUT_DEVICE();
  const int N = 70, C = 96, V = 64;
  const Vec x = rand_vec((size_t)N * C, 66, -4.0, 4.0), dw0 = rand_vec((size_t)V * C, 67), dloss = rand_vec(N, 68, 0.5, 2.0);
  Vec w((size_t)V * C, 0.0);
  for (int v = 0; v < V; ++v) w[(size_t)v * C + v] = 1.0;
  const std::vector<int32_t> targets = rand_tokens(N, V, 69);
  const auto bf = [](double a) { return (double)ops::round_operand((float)a, ops::MatmulPrecision::bf16); };
  Vec dl((size_t)N * V);  // the exact dlogits of the bf16 logits
  for (int i = 0; i < N; ++i) {
    double mx = -1e300, sum = 0;
    for (int v = 0; v < V; ++v) mx = std::max(mx, bf(x[(size_t)i * C + v]));
    for (int v = 0; v < V; ++v) sum += std::exp(bf(x[(size_t)i * C + v]) - mx);
    for (int v = 0; v < V; ++v)
      dl[(size_t)i * V + v] = std::exp(bf(x[(size_t)i * C + v]) - mx) / sum * dloss[i] - (v == targets[i] ? dloss[i] : 0);
  }
  const Tol t = tol_f32();
  const double soft = t.gamma(16 * V) * max_abs(dloss);  // fp32 softmax, per element of a row
  const double u = ops::operand_unit_roundoff(ops::MatmulPrecision::bf16);
  cuda::set_classifier_chunk_rows(16);
  DeviceBuffer<float> d_x(to_f(x)), d_w(to_f(w)), d_dl(to_f(dloss)), d_losses(nans(N)), d_dx(nans((size_t)N * C)),
      d_dw(to_f(dw0));
  DeviceBuffer<int32_t> d_t(targets);
  cuda::classifier_ce_forward(d_losses.data(), d_dx.data(), d_dw.data(), d_x.data(), d_w.data(), d_t.data(),
                              d_dl.data(), N, C, V, 0, ops::MatmulPrecision::bf16);
  cuda::set_classifier_chunk_rows(0);
  const FVec dx = d_dx.to_host(), dw = d_dw.to_host();
  double worst = 0, worst32 = 0;
  for (int i = 0; i < N; ++i)
    for (int c = 0; c < C; ++c) {
      const double want = c < V ? dl[(size_t)i * V + c] : 0.0, got = dx[(size_t)i * C + c];
      const double err = std::abs(got - want);
      worst = std::max(worst, err / (u * std::abs(want) * (1 + 4 * t.u) + 2 * soft + 1e-300));
      worst32 = std::max(worst32, err / (2 * soft + 1e-300));
    }
  EXPECT_LE(worst, 1.0) << "dx: not the bf16 rounding of the softmax gradient";
  EXPECT_GT(worst32, 1.0) << "dx within the fp32 bound: dlogits were not rounded to bf16";
  for (int v = 0; v < V; ++v)
    for (int c = 0; c < C; ++c) {
      double want = dw0[(size_t)v * C + c], terms = std::abs(want), dl_err = 0;
      for (int i = 0; i < N; ++i) {
        const double xr = bf(x[(size_t)i * C + c]), g = dl[(size_t)i * V + v];
        want += g * xr;
        terms += std::abs(g * xr);
        dl_err += (u * std::abs(g) * (1 + 4 * t.u) + 2 * soft) * std::abs(xr);
      }
      const double tol = dl_err + t.gamma(N + 1) * terms;
      ASSERT_LE(std::abs(dw[(size_t)v * C + c] - want), tol) << "dw at (" << v << ", " << c << ")";
    }
}

// The backend tables carry their precision into the GEMMs: bf16's output differs from fp32's.
TEST(CudaMatmul, BackendTablesPassTheirPrecision) {
  SKIP_WITHOUT_DEVICE();
  const int N = 64, C = 256, OC = 64;
  const FVec inpf = to_f(rand_vec((size_t)N * C, 51)), wf = to_f(rand_vec((size_t)OC * C, 52));
  DeviceBuffer<float> d_inp(inpf), d_w(wf), a(nans((size_t)N * OC)), b(nans((size_t)N * OC));
  EXPECT_EQ(cuda::backend(ops::MatmulPrecision::bf16).matmul_precision, ops::MatmulPrecision::bf16);
  cuda::backend().matmul_forward(a.data(), d_inp.data(), d_w.data(), nullptr, N, C, OC);
  cuda::backend(ops::MatmulPrecision::bf16).matmul_forward(b.data(), d_inp.data(), d_w.data(), nullptr, N, C, OC);
  EXPECT_NE(a.to_host(), b.to_host());
}

// ---- classifier + cross-entropy -----------------------------------------------------------------

// Sets the classifier's rows per chunk for one scope; back to automatic on exit.
struct ChunkRows {
  explicit ChunkRows(int rows) { cuda::set_classifier_chunk_rows(rows); }
  ~ChunkRows() { cuda::set_classifier_chunk_rows(0); }
  ChunkRows(const ChunkRows&) = delete;
  ChunkRows& operator=(const ChunkRows&) = delete;
};

struct ClassifierShape {
  int N, C, V;
};

// Inputs and bounds of test_ops.cpp check_classifier, the CPU op's results, for one shape.
struct ClassifierCase {
  int N, C, V;
  Vec x, w, dloss, dw0;
  std::vector<int32_t> targets;
  FVec losses_c, dx_c, dw_c, logits_c;
  double total_c = 0;
  Vec tol_loss, tol_dx, tol_dw, tol_logits;
  double tol_total = 0;
};

ClassifierCase make_classifier_case(const ClassifierShape& s) {
  ClassifierCase k;
  const int N = k.N = s.N, C = k.C = s.C, V = k.V = s.V;
  k.x = rand_vec((size_t)N * C, 26);
  k.w = rand_vec((size_t)V * C, 27);
  k.dloss = rand_vec(N, 28);
  k.dw0 = rand_vec((size_t)V * C, 29);
  k.targets = rand_tokens(N, V, 30);
  for (int i = 3; i < N; i += 5) k.targets[i] = -1;  // ignored rows
  if (N > 1) k.targets[1] = V - 1;                   // the last class
  if (N > 2) k.targets[2] = 0;                       // the first class

  // CPU, the specification.
  const FVec xf = to_f(k.x), wf = to_f(k.w), dlf = to_f(k.dloss);
  k.losses_c.assign(N, 0.0f);
  k.dx_c.assign((size_t)N * C, 0.0f);
  k.dw_c = to_f(k.dw0);
  k.total_c =
      ops::classifier_ce_forward<float>(k.losses_c.data(), k.dx_c.data(), k.dw_c.data(), xf.data(),
                                        wf.data(), k.targets.data(), dlf.data(), N, C, V);
  k.logits_c.assign((size_t)N * V, 0.0f);
  ops::classifier_logits<float>(k.logits_c.data(), xf.data(), wf.data(), N, C, V);

  // The bounds of test_ops.cpp check_classifier (op_tolerance.h, derivation there), with the
  // GPU's one-pass softmax sum over a row's 256 threads (classifier.cu), times kBoth.
  Vec losses_r(N), dx_r((size_t)N * C), dw_r = k.dw0;
  ops::ref::classifier_ce_forward(losses_r.data(), dx_r.data(), dw_r.data(), k.x.data(), k.w.data(),
                                  k.targets.data(), k.dloss.data(), N, C, V);
  const ClassifierTolerance tol = classifier_tolerance(k.x, k.w, k.targets, k.dloss, k.dw0, losses_r, N, C, V,
                                                       tol_f32(), /*online_threads=*/256);
  auto both = [](Vec v) {
    for (double& e : v) e *= kBoth;
    return v;
  };
  k.tol_loss = both(tol.loss);
  k.tol_dx = both(tol.dx);
  k.tol_dw = both(tol.dw);
  k.tol_logits = both(tol.logits);
  k.tol_total = kBoth * tol.total;
  return k;
}

// The GPU op on one case with `chunk` rows per chunk (0: automatic), forward + backward and
// forward only, against the CPU; then determinism and the logits.
void check_classifier(const ClassifierCase& k, int chunk) {
  const int N = k.N, C = k.C, V = k.V;
  ChunkRows rows(chunk);
  const int used = cuda::classifier_chunk_rows(N, V);
  SCOPED_TRACE("N = " + std::to_string(N) + ", C = " + std::to_string(C) +
               ", V = " + std::to_string(V) + ", " + std::to_string(used) + " rows per chunk");
  if (chunk > 0) {
    EXPECT_EQ(used, std::min(chunk, N));
  }
  DeviceBuffer<float> d_x(to_f(k.x)), d_w(to_f(k.w)), d_dloss(to_f(k.dloss));
  DeviceBuffer<int32_t> d_targets(k.targets);

  FVec losses_g, dx_g, dw_g;
  double total_g = 0;
  for (bool grad : {true, false}) {  // the fused backward, and the forward-only path
    SCOPED_TRACE(grad ? "with backward" : "forward only");
    DeviceBuffer<float> d_losses(nans(N)), d_dx(nans((size_t)N * C)), d_dw(to_f(k.dw0));
    const double total = cuda::classifier_ce_forward(
        d_losses.data(), grad ? d_dx.data() : nullptr, grad ? d_dw.data() : nullptr, d_x.data(),
        d_w.data(), d_targets.data(), grad ? d_dloss.data() : nullptr, N, C, V);
    const FVec losses = d_losses.to_host();
    expect_close("losses", losses, k.losses_c, k.tol_loss);
    EXPECT_LE(std::abs(total - k.total_c), k.tol_total) << "sum of losses";
    if (grad) {
      losses_g = losses;
      dx_g = d_dx.to_host();
      dw_g = d_dw.to_host();
      total_g = total;
      expect_close("dx", dx_g, k.dx_c, k.tol_dx);
      expect_close("dw", dw_g, k.dw_c, k.tol_dw);
    } else {
      EXPECT_EQ(d_dw.to_host(), to_f(k.dw0)) << "forward only must leave dw alone";
    }
  }

  // Deterministic: the same call again gives the same bits (the workspace is reused now).
  DeviceBuffer<float> d_losses(nans(N)), d_dx(nans((size_t)N * C)), d_dw(to_f(k.dw0));
  const double total2 =
      cuda::classifier_ce_forward(d_losses.data(), d_dx.data(), d_dw.data(), d_x.data(), d_w.data(),
                                  d_targets.data(), d_dloss.data(), N, C, V);
  EXPECT_EQ(total2, total_g);
  EXPECT_EQ(d_losses.to_host(), losses_g);
  EXPECT_EQ(d_dx.to_host(), dx_g);
  EXPECT_EQ(d_dw.to_host(), dw_g);

  DeviceBuffer<float> d_logits(nans((size_t)N * V));
  cuda::classifier_logits(d_logits.data(), d_x.data(), d_w.data(), N, C, V);
  expect_close("logits", d_logits.to_host(), k.logits_c, k.tol_logits);
}

TEST(CudaClassifier, AgainstCpu) {
  SKIP_WITHOUT_DEVICE();
  // V = 1031 (prime) with the automatic chunk (one chunk here), one row per chunk, and 8 rows per
  // chunk (37 = 4 * 8 + 5: a partial last chunk); N = 1; a few rows of a GPT-2-sized V.
  const ClassifierCase odd = make_classifier_case({37, 67, 1031});
  for (int chunk : {0, 1, 8, 36}) check_classifier(odd, chunk);
  check_classifier(make_classifier_case({1, 33, 1031}), 0);
  check_classifier(make_classifier_case({300, 32, 257}), 0);
  check_classifier(make_classifier_case({300, 32, 257}), 64);  // 64 * 4 + 44
  check_classifier(make_classifier_case({6, 31, 50257}), 4);
}

TEST(CudaClassifier, ChunkRowsAutomaticFitsWorkspace) {  // host-side arithmetic, no device
  EXPECT_EQ(cuda::classifier_chunk_rows(0, 1031), 0);
  EXPECT_EQ(cuda::classifier_chunk_rows(37, 1031), 37);         // all rows fit one chunk
  EXPECT_EQ(cuda::classifier_chunk_rows(1 << 20, 1 << 30), 1);  // at least one row
  const int rows = cuda::classifier_chunk_rows(1 << 20, 50257);
  EXPECT_GT(rows, 1);
  EXPECT_LT(rows, 1 << 20);
  {
    ChunkRows forced(8);
    EXPECT_EQ(cuda::classifier_chunk_rows(37, 1031), 8);
    EXPECT_EQ(cuda::classifier_chunk_rows(5, 1031), 5);
  }
  EXPECT_EQ(cuda::classifier_chunk_rows(37, 1031), 37);
}

TEST(CudaClassifier, BackwardWithoutDwThrows) {  // checked before any device call
  float dx = 0;
  EXPECT_THROW(cuda::classifier_ce_forward(nullptr, &dx, nullptr, nullptr, nullptr, nullptr,
                                           nullptr, 1, 1, 1),
               Error);
}

TEST(CudaClassifier, TargetOutOfRangeThrows) {
  SKIP_WITHOUT_DEVICE();
  const int N = 9, C = 5, V = 7;
  std::vector<int32_t> targets = rand_tokens(N, V, 31);
  targets[4] = V;  // out of range
  targets[6] = V + 3;
  DeviceBuffer<float> d_x(to_f(rand_vec((size_t)N * C, 32))),
      d_w(to_f(rand_vec((size_t)V * C, 33))), d_losses(nans(N));
  DeviceBuffer<int32_t> d_targets(targets);
  try {
    cuda::classifier_ce_forward(d_losses.data(), nullptr, nullptr, d_x.data(), d_w.data(),
                                d_targets.data(), nullptr, N, C, V);
    FAIL() << "no error for a target >= V";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("row 4"), std::string::npos) << "names the first bad row: " << what;
  }
  // The next call, with good targets, works (the error flag is reset per call).
  targets[4] = 0;
  targets[6] = -1;
  d_targets.copy_from_host(targets.data(), targets.size());
  EXPECT_NO_THROW(cuda::classifier_ce_forward(d_losses.data(), nullptr, nullptr, d_x.data(),
                                              d_w.data(), d_targets.data(), nullptr, N, C, V));
}

}  // namespace
}  // namespace lmf

#endif  // LMF_HAVE_CUDA
