// CUDA ops (ops/cuda/ops_cuda.h) against the CPU ops (ops/ops.h), the specification, in fp32 on the
// same inputs. Every test skips without a CUDA device; in a build without CUDA only the require()
// test runs.
//
// Tolerances as in tests/unit/test_ops.cpp (read its header): for each output, a bound on
// |computed - exact| derived from fp32 epsilon and the reduction length, gamma(K) = lambda sqrt(K)
// u. Both the GPU and the CPU result lie within that bound of the exact (double) value, so they
// lie within twice it of each other: every tolerance here is kBoth times test_ops.cpp's.
// Shapes are odd on purpose: C not a multiple of the warp (771, 31, 33), N not a multiple of the
// rows per block (37), n not a multiple of the block (100003).
#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "ops/cuda_backend.h"

TEST(CudaRuntime, RequireThrowsUserErrorWithoutDevice) {
  if (lmf::cuda::available()) GTEST_SKIP() << "a CUDA device is present";
  try {
    lmf::cuda::require();
    FAIL() << "require() did not throw";
  } catch (const lmf::UserError& e) {
    const std::string what = e.what();
    EXPECT_FALSE(what.empty());
    EXPECT_EQ(what.find('\n'), std::string::npos) << "one line: " << what;
  }
}

#ifndef LMF_HAVE_CUDA

TEST(CudaOps, Skipped) { GTEST_SKIP() << "built without CUDA"; }

#else

#include <algorithm>
#include <array>
#include <cstddef>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/memory.h"
#include "core/rng.h"
#include "model/step_graph.h"
#include "ops/backend.h"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/ops_cuda.h"
#include "ops/ops.h"
#include "ops/reference.h"
#include "gpu/cuda_test_util.h"
#include "paged_array_check.h"

namespace lmf {
namespace {

using namespace test;  // NOLINT: the shared GPU test helpers (cuda_test_util.h)

// ---- runtime ------------------------------------------------------------------------------------

TEST(CudaRuntime, CheckMacroThrowsErrorNamingTheCall) {  // needs no device
  try {
    LMF_CUDA_CHECK(cudaErrorInvalidValue);
    FAIL() << "LMF_CUDA_CHECK did not throw";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("cudaErrorInvalidValue"), std::string::npos) << what;
    EXPECT_NE(what.find("test_cuda_ops.cpp"), std::string::npos) << what;
  }
}

TEST(CudaRuntime, RequirePassesWithDevice) {
  SKIP_WITHOUT_DEVICE();
  EXPECT_NO_THROW(cuda::require());
}

TEST(CudaRuntime, DeviceBufferRoundTrip) {
  SKIP_WITHOUT_DEVICE();
  const FVec h = to_f(rand_vec(1001, 1));
  DeviceBuffer<float> d(h);
  EXPECT_EQ(d.size(), h.size());
  EXPECT_EQ(d.to_host(), h);
  DeviceBuffer<float> moved = std::move(d);
  EXPECT_EQ(d.data(), nullptr);
  EXPECT_EQ(moved.to_host(), h);
  DeviceBuffer<float> empty(0);
  EXPECT_TRUE(empty.to_host().empty());
}

// ---- residual -----------------------------------------------------------------------------------

TEST(CudaOps, Residual) {
  SKIP_WITHOUT_DEVICE();
  for (size_t n : {size_t(1), size_t(37), size_t(37 * 771), size_t(100003)}) {
    SCOPED_TRACE("n = " + std::to_string(n));
    const Vec a = rand_vec(n, 22), b = rand_vec(n, 23);
    const FVec af = to_f(a), bf = to_f(b);
    FVec cpu(n);
    ops::residual_forward<float>(cpu.data(), af.data(), bf.data(), n);
    DeviceBuffer<float> da(af), db(bf), dout(nans(n));
    cuda::residual_forward(dout.data(), da.data(), db.data(), n);
    expect_close("out", dout.to_host(), cpu,
                 kBoth * tol_f32().gamma(1) * (max_abs(a) + max_abs(b)));
    // In place, as the blocks call it (out == a).
    cuda::residual_forward(da.data(), da.data(), db.data(), n);
    expect_close("out (in place)", da.to_host(), cpu,
                 kBoth * tol_f32().gamma(1) * (max_abs(a) + max_abs(b)));
  }
}

// ---- gelu ---------------------------------------------------------------------------------------

TEST(CudaOps, Gelu) {
  SKIP_WITHOUT_DEVICE();
  const Tol t = tol_f32();
  for (size_t n : {size_t(1), size_t(37), size_t(37 * 771), size_t(100003)}) {
    SCOPED_TRACE("n = " + std::to_string(n));
    const Vec x = rand_vec(n, 20, -6.0, 6.0), dout = rand_vec(n, 21);
    const FVec xf = to_f(x), doutf = to_f(dout);
    FVec out_c(n), dinp_c(n);
    ops::gelu_forward<float>(out_c.data(), xf.data(), n);
    ops::gelu_backward<float>(dinp_c.data(), xf.data(), doutf.data(), n);
    Vec out_r(n);
    ops::ref::gelu_forward(out_r.data(), x.data(), n);

    DeviceBuffer<float> dx(xf), ddout(doutf), dout_g(nans(n)), ddinp(nans(n));
    cuda::gelu_forward(dout_g.data(), dx.data(), n);
    cuda::gelu_backward(ddinp.data(), dx.data(), ddout.data(), n);

    // The bounds of test_ops.cpp check_gelu (op_tolerance.h), times kBoth.
    const GeluTolerance g = gelu_tolerance(x, dout, out_r, t);
    Vec tol_out = g.out, tol_dinp = g.dinp;
    for (size_t i = 0; i < n; ++i) {
      tol_out[i] *= kBoth;
      tol_dinp[i] *= kBoth;
    }
    expect_close("out", dout_g.to_host(), out_c, tol_out);
    expect_close("dinp", ddinp.to_host(), dinp_c, tol_dinp);
    // In place, as gpt2_block calls it (dinp == dout).
    cuda::gelu_backward(ddout.data(), dx.data(), ddout.data(), n);
    expect_close("dinp (in place)", ddout.to_host(), dinp_c, tol_dinp);
  }
}

// ---- the MLP's GEMMs fused with GELU -------------------------------------------------------------

// fp32 storage: the GEMM then our GELU kernel, so the same bits as the two ops in turn on the GPU
// (which the matmul and GELU tests hold to the CPU).
TEST(CudaOps, MatmulGeluIsTheTwoOpsInTurn) {
  SKIP_WITHOUT_DEVICE();
  const int N = 37, C = 67, OC = 131;
  const FVec inp = to_f(rand_vec((size_t)N * C, 90)), w = to_f(rand_vec((size_t)OC * C, 91)),
             bias = to_f(rand_vec(OC, 92)), dout = to_f(rand_vec((size_t)N * OC, 93)),
             pre_in = to_f(rand_vec((size_t)N * C, 94, -4.0, 4.0)), dw0 = to_f(rand_vec((size_t)OC * C, 95)),
             db0 = to_f(rand_vec(OC, 96));
  DeviceBuffer<float> d_inp(inp), d_w(w), d_bias(bias), d_dout(dout), d_pre_in(pre_in);
  DeviceBuffer<float> out(nans((size_t)N * OC)), pre(nans((size_t)N * OC)), out2(nans((size_t)N * OC)),
      pre2(nans((size_t)N * OC));
  cuda::matmul_gelu_forward(out.data(), pre.data(), d_inp.data(), d_w.data(), d_bias.data(), N, C, OC);
  cuda::matmul_forward(pre2.data(), d_inp.data(), d_w.data(), d_bias.data(), N, C, OC);
  cuda::gelu_forward(out2.data(), pre2.data(), (size_t)N * OC);
  EXPECT_EQ(pre.to_host(), pre2.to_host());
  EXPECT_EQ(out.to_host(), out2.to_host());
  DeviceBuffer<float> dinp(nans((size_t)N * C)), dinp2(nans((size_t)N * C)), dw(dw0), db(db0), dw2(dw0), db2(db0);
  cuda::matmul_dgelu_backward(dinp.data(), dw.data(), db.data(), d_dout.data(), d_inp.data(), d_w.data(),
                              d_pre_in.data(), N, C, OC);
  cuda::matmul_backward(dinp2.data(), dw2.data(), db2.data(), d_dout.data(), d_inp.data(), d_w.data(), N, C, OC);
  cuda::gelu_backward(dinp2.data(), d_pre_in.data(), dinp2.data(), (size_t)N * C);
  EXPECT_EQ(dinp.to_host(), dinp2.to_host());
  EXPECT_EQ(dw.to_host(), dw2.to_host());
  EXPECT_EQ(db.to_host(), db2.to_host());
}

// ---- residual + norm, fused ---------------------------------------------------------------------

// The fused kernels do the unfused pair's arithmetic in the same order (the sums of the values they
// wrote, then the same row code), so they must give the GPU's residual_forward + norm bits exactly;
// those are checked against the CPU below. Out of place and in place (res == a, as the blocks could).
void check_residual_norms(int N, int C) {
  SCOPED_TRACE("N = " + std::to_string(N) + ", C = " + std::to_string(C));
  const size_t NC = (size_t)N * C;
  const FVec a = to_f(rand_vec(NC, 50, 1.0, 3.0)), b = to_f(rand_vec(NC, 51)), w = to_f(rand_vec(C, 52)),
             bias = to_f(rand_vec(C, 53));
  DeviceBuffer<float> da(a), db(b), dw(w), dbias(bias);
  DeviceBuffer<float> res(nans(NC)), out(nans(NC)), mean(nans(N)), rstd(nans(N));
  cuda::residual_forward(res.data(), da.data(), db.data(), NC);
  cuda::layernorm_forward(out.data(), mean.data(), rstd.data(), res.data(), dw.data(), dbias.data(), N, C);
  DeviceBuffer<float> rms_out(nans(NC)), rms_rstd(nans(N));
  cuda::rmsnorm_forward(rms_out.data(), rms_rstd.data(), res.data(), dw.data(), N, C, 1e-5f);
  for (bool in_place : {false, true}) {
    SCOPED_TRACE(in_place ? "in place" : "out of place");
    DeviceBuffer<float> f_res(in_place ? a : nans(NC)), f_out(nans(NC)), f_mean(nans(N)), f_rstd(nans(N));
    cuda::residual_layernorm_forward(f_res.data(), f_out.data(), f_mean.data(), f_rstd.data(),
                                     in_place ? f_res.data() : da.data(), db.data(), dw.data(), dbias.data(), N,
                                     C);
    EXPECT_EQ(f_res.to_host(), res.to_host());
    EXPECT_EQ(f_out.to_host(), out.to_host());
    EXPECT_EQ(f_mean.to_host(), mean.to_host());
    EXPECT_EQ(f_rstd.to_host(), rstd.to_host());
    DeviceBuffer<float> g_res(in_place ? a : nans(NC)), g_out(nans(NC)), g_rstd(nans(N));
    cuda::residual_rmsnorm_forward(g_res.data(), g_out.data(), g_rstd.data(), in_place ? g_res.data() : da.data(),
                                   db.data(), dw.data(), N, C, 1e-5f);
    EXPECT_EQ(g_res.to_host(), res.to_host());
    EXPECT_EQ(g_out.to_host(), rms_out.to_host());
    EXPECT_EQ(g_rstd.to_host(), rms_rstd.to_host());
  }
}

TEST(CudaOps, ResidualNormsFused) {
  SKIP_WITHOUT_DEVICE();
  check_residual_norms(37, 771);
  check_residual_norms(37, 768);
  check_residual_norms(1, 1);
  check_residual_norms(130, 96);
}

// ---- layernorm ----------------------------------------------------------------------------------

void check_layernorm(int N, int C) {
  SCOPED_TRACE("N = " + std::to_string(N) + ", C = " + std::to_string(C));
  const Tol t = tol_f32();
  const size_t NC = (size_t)N * C;
  // Inputs centred at 2, as for a residual stream (test_ops.cpp).
  const Vec x = rand_vec(NC, 13, 1.0, 3.0), w = rand_vec(C, 14), b = rand_vec(C, 15),
            dout = rand_vec(NC, 16), dinp0 = rand_vec(NC, 17), dw0 = rand_vec(C, 18),
            db0 = rand_vec(C, 19);
  const FVec xf = to_f(x), wf = to_f(w), bf = to_f(b), doutf = to_f(dout);

  // Exact (double) forward: only for the bounds.
  Vec out_r(NC), mean_r(N), rstd_r(N);
  ops::ref::layernorm_forward(out_r.data(), mean_r.data(), rstd_r.data(), x.data(), w.data(),
                              b.data(), N, C);
  // CPU, the specification.
  FVec out_c(NC), mean_c(N), rstd_c(N);
  ops::layernorm_forward<float>(out_c.data(), mean_c.data(), rstd_c.data(), xf.data(), wf.data(),
                                bf.data(), N, C);
  FVec dinp_c = to_f(dinp0), dw_c = to_f(dw0), db_c = to_f(db0);
  ops::layernorm_backward<float>(dinp_c.data(), dw_c.data(), db_c.data(), doutf.data(), xf.data(),
                                 wf.data(), mean_c.data(), rstd_c.data(), N, C);
  // GPU: outputs that must be assigned start as NaN, gradients start from dinp0, dw0, db0.
  DeviceBuffer<float> dx(xf), dwt(wf), dbias(bf), ddout(doutf), dout_g(nans(NC)), dmean(nans(N)),
      drstd(nans(N));
  cuda::layernorm_forward(dout_g.data(), dmean.data(), drstd.data(), dx.data(), dwt.data(),
                          dbias.data(), N, C);
  DeviceBuffer<float> ddinp(to_f(dinp0)), ddw(to_f(dw0)), ddb(to_f(db0));
  cuda::layernorm_backward(ddinp.data(), ddw.data(), ddb.data(), ddout.data(), dx.data(),
                           dwt.data(), dmean.data(), drstd.data(), N, C);

  // Bounds of test_ops.cpp check_layernorm, derivations there.
  const double X = max_abs(x), W = max_abs(w), Bm = max_abs(b), G = max_abs(dout),
               r = max_abs(rstd_r);
  double nu = 0;
  for (int i = 0; i < N; ++i)
    for (int c = 0; c < C; ++c)
      nu = std::max(nu, std::abs(x[(size_t)i * C + c] - mean_r[i]) * rstd_r[i]);
  const double tol_mean = t.gamma(C) * X, tol_rstd = r * (0.5 * t.gamma(C) * nu * nu + t.gamma(4));
  const double dnorm = t.gamma(C) * (X * r + 0.5 * nu * nu * nu) + t.gamma(4) * nu;
  expect_close("mean", dmean.to_host(), mean_c, kBoth * tol_mean);
  expect_close("rstd", drstd.to_host(), rstd_c, kBoth * tol_rstd);
  expect_close("out", dout_g.to_host(), out_c, kBoth * (W * dnorm + t.gamma(3) * (nu * W + Bm)));

  const double g = W * G, bracket = g * (2 + nu * nu);
  const double tol_dinp = r * (t.gamma(C) * g * (1 + nu * nu) + 2 * nu * g * dnorm +
                               bracket * (0.5 * t.gamma(C) * nu * nu + t.gamma(4))) +
                          t.gamma(1) * (max_abs(dinp0) + r * bracket);
  expect_close("dinp", ddinp.to_host(), dinp_c, kBoth * tol_dinp);
  expect_close("dw", ddw.to_host(), dw_c,
               kBoth * (t.gamma(N + 1) * (N * nu * G + max_abs(dw0)) + N * G * dnorm));
  expect_close("db", ddb.to_host(), db_c, kBoth * t.gamma(N + 1) * (N * G + max_abs(db0)));

  // Deterministic: the same backward again gives the same bits.
  DeviceBuffer<float> ddinp2(to_f(dinp0)), ddw2(to_f(dw0)), ddb2(to_f(db0));
  cuda::layernorm_backward(ddinp2.data(), ddw2.data(), ddb2.data(), ddout.data(), dx.data(),
                           dwt.data(), dmean.data(), drstd.data(), N, C);
  EXPECT_EQ(ddinp2.to_host(), ddinp.to_host());
  EXPECT_EQ(ddw2.to_host(), ddw.to_host());
  EXPECT_EQ(ddb2.to_host(), ddb.to_host());
}

TEST(CudaOps, Layernorm) {
  SKIP_WITHOUT_DEVICE();
  check_layernorm(37, 771);
  check_layernorm(37, 768);
  check_layernorm(1, 1);
  check_layernorm(5, 31);
  check_layernorm(33, 33);
  check_layernorm(130, 96);
  check_layernorm(1031, 64);  // N past the 32 row lanes of the parameter-gradient kernel
}

// ---- adamw --------------------------------------------------------------------------------------

void check_adamw(size_t n, long step) {
  SCOPED_TRACE("n = " + std::to_string(n) + ", step = " + std::to_string(step));
  const Tol t = tol_f32();
  const float lr = 1e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
  const Vec p = rand_vec(n, 31), g = rand_vec(n, 32), m = rand_vec(n, 33, -0.1, 0.1),
            v = rand_vec(n, 34, 0.0, 0.01);
  Vec p_r = p, m_r = m, v_r = v;  // exact, for the bounds
  ops::ref::adamw_update<double>(p_r.data(), g.data(), m_r.data(), v_r.data(), n, lr, b1, b2, eps,
                                 wd, step);
  FVec p_c = to_f(p), g_c = to_f(g), m_c = to_f(m), v_c = to_f(v);
  DeviceBuffer<float> dp(p_c), dg(g_c), dm(m_c), dv(v_c);
  ops::adamw_update(p_c.data(), g_c.data(), m_c.data(), v_c.data(), n, lr, b1, b2, eps, wd, step);
  cuda::adamw_update(dp.data(), dg.data(), dm.data(), dv.data(), n, lr, b1, b2, eps, wd, step);

  Vec tol_p(n), tol_m(n), tol_v(n);
  const double b1c = 1 - std::pow((double)b1, step), b2c = 1 - std::pow((double)b2, step);
  for (size_t i = 0; i < n; ++i) {
    tol_m[i] = kBoth * t.gamma(3) * (b1 * std::abs(m[i]) + (1 - b1) * std::abs(g[i]));
    tol_v[i] = kBoth * t.gamma(4) * (b2 * v[i] + (1 - b2) * g[i] * g[i]);
    const double step_mag = std::abs(m_r[i] / b1c) / (std::sqrt(v_r[i] / b2c) + eps);
    tol_p[i] = kBoth * t.gamma(12) * (std::abs(p[i]) + lr * (step_mag + wd * std::abs(p[i])));
  }
  expect_close("m", dm.to_host(), m_c, tol_m);
  expect_close("v", dv.to_host(), v_c, tol_v);
  expect_close("p", dp.to_host(), p_c, tol_p);
  EXPECT_EQ(dg.to_host(), g_c);  // the gradient is read-only
}

// The multi-tensor form (one launch) against the CPU's, per-chunk decay and a clipping factor of
// 1/2 (exact, so the bounds are check_adamw's with g / 2).
void check_adamw_chunks(size_t n, long step) {
  SCOPED_TRACE("chunks, n = " + std::to_string(n) + ", step = " + std::to_string(step));
  const Tol t = tol_f32();
  const float lr = 1e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.5f;
  const auto chunks = test_adamw_chunks(n, wd);
  const Vec p = rand_vec(n, 35), g = rand_vec(n, 36), m = rand_vec(n, 37, -0.1, 0.1),
            v = rand_vec(n, 38, 0.0, 0.01);
  Vec p_r = p, m_r = m, v_r = v, g_half = g;
  for (double& x : g_half) x *= gs;
  Vec wd_of(n, -1.0);  // -1: in a gap, never updated
  for (const auto& c : chunks) {
    ops::ref::adamw_update<double>(p_r.data() + c.offset, g_half.data() + c.offset, m_r.data() + c.offset,
                                   v_r.data() + c.offset, c.size, lr, b1, b2, eps, c.wd, step);
    std::fill_n(wd_of.begin() + (long)c.offset, c.size, (double)c.wd);
  }
  FVec p_c = to_f(p), g_c = to_f(g), m_c = to_f(m), v_c = to_f(v);
  DeviceBuffer<float> dp(p_c), dg(g_c), dm(m_c), dv(v_c);
  DeviceBuffer<ops::AdamwChunk> dchunks(chunks);
  const ops::AdamwStep s = ops::AdamwStep::at(lr, b1, b2, eps, 0.0f, step);
  ops::adamw_chunks(p_c.data(), g_c.data(), m_c.data(), v_c.data(), chunks.data(), chunks.size(), s, gs);
  cuda::adamw_chunks(dp.data(), dg.data(), dm.data(), dv.data(), dchunks.data(), chunks.size(), s, gs);

  Vec tol_p(n, 0.0), tol_m(n, 0.0), tol_v(n, 0.0);  // 0 in the gaps: must stay exactly as they were
  const double b1c = 1 - std::pow((double)b1, step), b2c = 1 - std::pow((double)b2, step);
  for (size_t i = 0; i < n; ++i) {
    if (wd_of[i] < 0) continue;
    tol_m[i] = kBoth * t.gamma(3) * (b1 * std::abs(m[i]) + (1 - b1) * std::abs(g_half[i]));
    tol_v[i] = kBoth * t.gamma(4) * (b2 * v[i] + (1 - b2) * g_half[i] * g_half[i]);
    const double step_mag = std::abs(m_r[i] / b1c) / (std::sqrt(v_r[i] / b2c) + eps);
    tol_p[i] = kBoth * t.gamma(12) * (std::abs(p[i]) + lr * (step_mag + wd_of[i] * std::abs(p[i])));
  }
  expect_close("m", dm.to_host(), m_c, tol_m);
  expect_close("v", dv.to_host(), v_c, tol_v);
  expect_close("p", dp.to_host(), p_c, tol_p);
  EXPECT_EQ(dg.to_host(), g_c);  // the gradient is read-only: the factor is applied on the fly
}

TEST(CudaOps, AdamwChunks) {
  SKIP_WITHOUT_DEVICE();
  check_adamw_chunks(1, 1);
  check_adamw_chunks(300001, 1);
  check_adamw_chunks(300001, 1000);
}

TEST(CudaOps, Adamw) {
  SKIP_WITHOUT_DEVICE();
  check_adamw(1, 1);
  check_adamw(37, 1);
  check_adamw(100003, 1);
  check_adamw(100003, 1000);
}

// ---- rmsnorm ------------------------------------------------------------------------------------

// amp scales the inputs; at 1e-3 mean(x^2) ~ 1e-6 is below eps, so a dropped or misplaced eps
// fails.
void check_rmsnorm(int N, int C, double amp = 1.0) {
  SCOPED_TRACE("N = " + std::to_string(N) + ", C = " + std::to_string(C) +
               ", amp = " + std::to_string(amp));
  const Tol t = tol_f32();
  const float eps = 1e-5f;
  const size_t NC = (size_t)N * C;
  // Inputs off-centre, as for a residual stream (test_ops.cpp).
  const Vec x = rand_vec(NC, 40, -1.0 * amp, 3.0 * amp), w = rand_vec(C, 41),
            dout = rand_vec(NC, 42), dinp0 = rand_vec(NC, 43), dw0 = rand_vec(C, 44);
  const FVec xf = to_f(x), wf = to_f(w), doutf = to_f(dout);

  // Exact (double) forward: only for the bounds.
  Vec out_r(NC), rstd_r(N);
  ops::ref::rmsnorm_forward(out_r.data(), rstd_r.data(), x.data(), w.data(), N, C, eps);
  // CPU, the specification.
  FVec out_c(NC), rstd_c(N);
  ops::rmsnorm_forward<float>(out_c.data(), rstd_c.data(), xf.data(), wf.data(), N, C, eps);
  FVec dinp_c = to_f(dinp0), dw_c = to_f(dw0);
  ops::rmsnorm_backward<float>(dinp_c.data(), dw_c.data(), doutf.data(), xf.data(), wf.data(),
                               rstd_c.data(), N, C);
  // GPU: outputs that must be assigned start as NaN, gradients start from dinp0, dw0 (nonzero), so
  // a kernel that assigned instead of accumulating fails.
  DeviceBuffer<float> dx(xf), dwt(wf), ddout(doutf), dout_g(nans(NC)), drstd(nans(N));
  cuda::rmsnorm_forward(dout_g.data(), drstd.data(), dx.data(), dwt.data(), N, C, eps);
  DeviceBuffer<float> ddinp(to_f(dinp0)), ddw(to_f(dw0));
  cuda::rmsnorm_backward(ddinp.data(), ddw.data(), ddout.data(), dx.data(), dwt.data(),
                         drstd.data(), N, C);

  // Bounds of test_ops.cpp check_rmsnorm, derivations there: rstd's relative error rel_r (sum of
  // C squares, /C, +eps, sqrt, 1/); out = x rstd w two roundings more; dinp through the bracket
  // (dnorm - norm M), M a mean of C products; dw a sum of N products plus dw0.
  const double W = max_abs(w), G = max_abs(dout), r = max_abs(rstd_r);
  double nu = 0;  // max |normalised value|
  for (int i = 0; i < N; ++i)
    for (int c = 0; c < C; ++c) nu = std::max(nu, std::abs(x[(size_t)i * C + c]) * rstd_r[i]);
  const double rel_r = 0.5 * t.gamma(C + 1) + t.gamma(4);
  expect_close("rstd", drstd.to_host(), rstd_c, kBoth * r * rel_r);
  expect_close("out", dout_g.to_host(), out_c, kBoth * W * nu * (rel_r + t.gamma(2)));

  const double g = W * G, bracket = g * (1 + nu * nu);
  const double e_m = g * nu * (t.gamma(C + 3) + rel_r);
  const double e_bracket = t.gamma(4) * bracket + nu * e_m + g * nu * nu * rel_r;
  expect_close(
      "dinp", ddinp.to_host(), dinp_c,
      kBoth * (r * (e_bracket + bracket * rel_r) + t.gamma(1) * (max_abs(dinp0) + r * bracket)));
  expect_close("dw", ddw.to_host(), dw_c,
               kBoth * (t.gamma(N + 2) * (N * nu * G + max_abs(dw0)) + N * G * nu * rel_r));

  // Deterministic: the same backward again gives the same bits.
  DeviceBuffer<float> ddinp2(to_f(dinp0)), ddw2(to_f(dw0));
  cuda::rmsnorm_backward(ddinp2.data(), ddw2.data(), ddout.data(), dx.data(), dwt.data(),
                         drstd.data(), N, C);
  EXPECT_EQ(ddinp2.to_host(), ddinp.to_host());
  EXPECT_EQ(ddw2.to_host(), ddw.to_host());
}

TEST(CudaOps, Rmsnorm) {
  SKIP_WITHOUT_DEVICE();
  check_rmsnorm(37, 67);
  check_rmsnorm(37, 771);
  check_rmsnorm(37, 768);
  check_rmsnorm(1, 1);
  check_rmsnorm(5, 31);
  check_rmsnorm(33, 33);
  check_rmsnorm(1031, 64);      // N past the 32 row lanes of the dw kernel
  check_rmsnorm(37, 67, 1e-3);  // mean(x^2) below eps
}

// ---- swiglu -------------------------------------------------------------------------------------

TEST(CudaOps, Swiglu) {
  SKIP_WITHOUT_DEVICE();
  const Tol t = tol_f32();
  for (size_t n : {size_t(1), size_t(37), size_t(37 * 771), size_t(100003)}) {
    SCOPED_TRACE("n = " + std::to_string(n));
    // gate out to |8|: sigmoid near 0 and near 1, where silu' cancels (test_ops.cpp).
    const Vec gate = rand_vec(n, 47, -8.0, 8.0), up = rand_vec(n, 48), dout = rand_vec(n, 49);
    const FVec gf = to_f(gate), uf = to_f(up), df = to_f(dout);
    FVec out_c(n), dgate_c(n), dup_c(n);
    ops::swiglu_forward<float>(out_c.data(), gf.data(), uf.data(), n);
    ops::swiglu_backward<float>(dgate_c.data(), dup_c.data(), df.data(), gf.data(), uf.data(), n);
    Vec out_r(n), dgate_r(n), dup_r(n);
    ops::ref::swiglu_forward(out_r.data(), gate.data(), up.data(), n);
    ops::ref::swiglu_backward(dgate_r.data(), dup_r.data(), dout.data(), gate.data(), up.data(), n);

    DeviceBuffer<float> dg(gf), du(uf), dd(df), dout_g(nans(n)), ddgate(nans(n)), ddup(nans(n));
    cuda::swiglu_forward(dout_g.data(), dg.data(), du.data(), n);
    cuda::swiglu_backward(ddgate.data(), ddup.data(), dd.data(), dg.data(), du.data(), n);

    // Per-element bounds of test_ops.cpp check_swiglu: sigmoid's relative error gamma(18) (exp as
    // 16 roundings, then two); out and dup two products more; silu' = s + g s (1 - s) carries s's
    // error absolutely (cancellation as s -> 1) plus four roundings, then two products.
    Vec tol_out(n), tol_dgate(n), tol_dup(n);
    for (size_t i = 0; i < n; ++i) {
      const double g = gate[i], sg = 1 / (1 + std::exp(-g)), ag = std::abs(g);
      const double es = t.gamma(18) * sg;
      tol_out[i] = kBoth * t.gamma(20) * std::abs(out_r[i]);
      tol_dup[i] = kBoth * t.gamma(20) * std::abs(dup_r[i]);
      const double dsilu = sg + ag * sg * (1 - sg);
      const double e_dsilu = es * (1 + ag * (1 - sg) + ag * sg) + t.gamma(4) * dsilu;
      tol_dgate[i] = kBoth * std::abs(dout[i] * up[i]) * (e_dsilu + t.gamma(2) * dsilu);
    }
    expect_close("out", dout_g.to_host(), out_c, tol_out);
    expect_close("dgate", ddgate.to_host(), dgate_c, tol_dgate);
    expect_close("dup", ddup.to_host(), dup_c, tol_dup);
    // In place (dgate == dout): each element's inputs are read before it is written.
    cuda::swiglu_backward(dd.data(), ddup.data(), dd.data(), dg.data(), du.data(), n);
    expect_close("dgate (in place)", dd.to_host(), dgate_c, tol_dgate);
    expect_close("dup (in place)", ddup.to_host(), dup_c, tol_dup);
  }
}

// ---- rope ---------------------------------------------------------------------------------------

void check_rope(int B, int T, int NH, int hs, bool interleaved, int pos0) {
  SCOPED_TRACE("B = " + std::to_string(B) + ", T = " + std::to_string(T) +
               ", NH = " + std::to_string(NH) + ", hs = " + std::to_string(hs) +
               (interleaved ? ", interleaved" : ", rotate-half") +
               ", pos0 = " + std::to_string(pos0));
  const Tol t = tol_f32();
  const std::vector<double> inv_freq = ops::rope_inv_freq(hs, 10000.0);
  const size_t n = (size_t)B * T * NH * hs;
  const Vec x = rand_vec(n, 45), dout = rand_vec(n, 46);
  const FVec xf = to_f(x), df = to_f(dout);
  FVec out_c(n), dinp_c(n);
  ops::rope_forward<float>(out_c.data(), xf.data(), B, T, NH, hs, inv_freq.data(), interleaved,
                           pos0);
  ops::rope_backward<float>(dinp_c.data(), df.data(), B, T, NH, hs, inv_freq.data(), interleaved,
                            pos0);

  // The table lives on the device (uploaded once, as a model would).
  DeviceBuffer<double> dfreq(inv_freq);
  DeviceBuffer<float> dx(xf), dd(df), dout_g(nans(n)), ddinp(nans(n));
  cuda::rope_forward(dout_g.data(), dx.data(), B, T, NH, hs, dfreq.data(), interleaved, pos0);
  cuda::rope_backward(ddinp.data(), dd.data(), B, T, NH, hs, dfreq.data(), interleaved, pos0);

  // Bound of test_ops.cpp check_rope: cos and sin rounded once to float from double, two products
  // and one add, |cos|, |sin| <= 1: gamma(4) (|a| + |b|) <= gamma(4) 2 max|x|.
  const FVec out_g = dout_g.to_host(), dinp_g = ddinp.to_host();
  expect_close("out", out_g, out_c, kBoth * t.gamma(4) * 2 * max_abs(x));
  expect_close("dinp", dinp_g, dinp_c, kBoth * t.gamma(4) * 2 * max_abs(dout));
  // In place (out == inp, dinp == dout) is the same arithmetic: bitwise equal.
  cuda::rope_forward(dx.data(), dx.data(), B, T, NH, hs, dfreq.data(), interleaved, pos0);
  EXPECT_EQ(dx.to_host(), out_g) << "in-place forward differs";
  cuda::rope_backward(dd.data(), dd.data(), B, T, NH, hs, dfreq.data(), interleaved, pos0);
  EXPECT_EQ(dd.to_host(), dinp_g) << "in-place backward differs";
}

TEST(CudaOps, Rope) {
  SKIP_WITHOUT_DEVICE();
  for (bool interleaved : {false, true})
    for (int pos0 : {0, 5}) check_rope(2, 9, 3, 10, interleaved, pos0);
  check_rope(1, 1, 1, 2, true, 0);  // one pair
  check_rope(1, 1, 1, 2, false, 0);
  check_rope(3, 37, 5, 64, false, 0);      // more (b, t, j) than one block
  check_rope(1, 3, 2, 128, true, 100000);  // large angles: the double angle keeps them exact
  check_rope(1, 3, 2, 128, false, 100000);
}

// ---- flat vectors: fill, sum_squares, scale -----------------------------------------------------

// Sizes: empty, one, odd, one block +- 1 (256), past one full grid of the sum's partials (1024
// blocks of 256: 262144) so threads loop, and several grid strides.
const size_t kVecSizes[] = {0, 1, 37, 255, 256, 257, 100003, 262147, (size_t(1) << 22) + 5};

TEST(CudaOps, Fill) {
  SKIP_WITHOUT_DEVICE();
  for (size_t n : kVecSizes) {
    SCOPED_TRACE("n = " + std::to_string(n));
    DeviceBuffer<float> d(nans(n + 1));  // one guard element past n
    cuda::fill(d.data(), -0.375f, n);
    const FVec h = d.to_host();
    EXPECT_EQ(FVec(h.begin(), h.begin() + (ptrdiff_t)n), FVec(n, -0.375f));  // exact: a store
    EXPECT_TRUE(std::isnan(h[n])) << "wrote past n";
  }
}

TEST(CudaOps, SumSquares) {
  SKIP_WITHOUT_DEVICE();
  // Each x^2 is exact in double (two 24-bit significands), so only the n - 1 additions round, in
  // another order than the CPU's: both lie within gamma_d(n) sum x^2 of the exact sum
  // (op_tolerance.h, u = 2^-53), so within kBoth times that of each other. For n = 4M that is
  // ~3e-12 relative.
  const Tol td{std::numeric_limits<double>::epsilon() / 2};
  for (size_t n : kVecSizes) {
    SCOPED_TRACE("n = " + std::to_string(n));
    const FVec x = to_f(rand_vec(n, 50, -3.0, 3.0));
    const double cpu = ops::sum_squares(x.data(), n);
    DeviceBuffer<float> dx(x);
    const double gpu = cuda::sum_squares(dx.data(), n);
    if (n == 0) {
      EXPECT_EQ(gpu, 0.0);
      continue;
    }
    EXPECT_LE(std::abs(gpu - cpu), kBoth * td.gamma((double)n) * cpu)
        << "gpu " << gpu << " cpu " << cpu;
    // Deterministic: the same input gives the same bits.
    EXPECT_EQ(cuda::sum_squares(dx.data(), n), gpu);
    // A prefix (another n, another grid) reads only [0, n / 2).
    const size_t half = n / 2;
    const double cpu_half = ops::sum_squares(x.data(), half);
    EXPECT_LE(std::abs(cuda::sum_squares(dx.data(), half) - cpu_half),
              kBoth * td.gamma((double)half) * cpu_half);
  }
}

TEST(CudaOps, Scale) {
  SKIP_WITHOUT_DEVICE();
  for (size_t n : kVecSizes) {
    SCOPED_TRACE("n = " + std::to_string(n));
    FVec x = to_f(rand_vec(n, 51, -3.0, 3.0));
    x.push_back(std::numeric_limits<float>::quiet_NaN());  // guard element past n
    DeviceBuffer<float> dx(x);
    cuda::scale(dx.data(), 0.37f, n);
    ops::scale(x.data(), 0.37f, n);
    const FVec h = dx.to_host();
    // One fp32 multiply per element on both sides, no reduction: bitwise equal.
    EXPECT_EQ(FVec(h.begin(), h.begin() + (ptrdiff_t)n), FVec(x.begin(), x.begin() + (ptrdiff_t)n));
    EXPECT_TRUE(std::isnan(h[n])) << "wrote past n";
  }
}

// ---- the backend table --------------------------------------------------------------------------

TEST(CudaBackend, EveryOpIsSet) {
  SKIP_WITHOUT_DEVICE();
  const ops::Backend<float>& b = cuda::backend();
  EXPECT_STREQ(b.name, "cuda");
  ASSERT_NE(b.memory, nullptr);
  EXPECT_STREQ(b.memory->name, "cuda");
  EXPECT_FALSE(b.on_host());
  // Every member but matmul_precision is a pointer (name, memory, then the ops), so a null one,
  // such as a member added to ops::Backend and not filled in by ops/cuda/backend.cu, shows as a
  // zero word. (matmul_precision's word holds fp32 = 0 here: skipped.)
  constexpr size_t kWords = sizeof(ops::Backend<float>) / sizeof(void*);
  static_assert(sizeof(ops::Backend<float>) == kWords * sizeof(void*));
  constexpr size_t kPrecisionWord = offsetof(ops::Backend<float>, matmul_precision) / sizeof(void*);
  std::array<uintptr_t, kWords> words{};
  std::memcpy(words.data(), &b, sizeof(b));
  for (size_t i = 0; i < kWords; ++i) {
    if (i != kPrecisionWord) {
      EXPECT_NE(words[i], 0u) << "member " << i << " is null";
    }
  }
  EXPECT_EQ(b.matmul_precision, ops::MatmulPrecision::fp32);
}

TEST(CudaBackend, MemoryRoundTripsAndOpsRun) {
  SKIP_WITHOUT_DEVICE();
  const ops::Backend<float>& b = cuda::backend();
  const MemorySpace& m = *b.memory;
  const size_t n = 1001;
  const FVec h = to_f(rand_vec(n, 52));
  FVec back(n, 1.0f);

  void* p = m.allocate(n * sizeof(float));
  ASSERT_NE(p, nullptr);
  m.copy_to_host(back.data(), p, n * sizeof(float));
  EXPECT_EQ(back, FVec(n, 0.0f)) << "allocate is not zero-filled";
  m.copy_from_host(p, h.data(), n * sizeof(float));
  m.copy_to_host(back.data(), p, n * sizeof(float));
  EXPECT_EQ(back, h);
  m.zero(p, n * sizeof(float));
  m.copy_to_host(back.data(), p, n * sizeof(float));
  EXPECT_EQ(back, FVec(n, 0.0f));
  m.deallocate(p, n * sizeof(float));

  // Through Array and the table's ops: 0.5^2 = 0.25 and n * 0.25 are exact.
  Array<float> a(m);
  a.resize(n);
  b.fill(a.data(), 0.5f, n);
  EXPECT_EQ(b.sum_squares(a.data(), n), 0.25 * n);
  b.scale(a.data(), 4.0f, n);
  b.synchronize();
  a.download(back.data(), n);
  EXPECT_EQ(back, FVec(n, 2.0f));
  // copy: device to device.
  Array<float> c(m);
  c.resize(n);
  a.upload(h.data(), n);
  b.copy(c.data(), a.data(), n);
  b.synchronize();
  c.download(back.data(), n);
  EXPECT_EQ(back, h);
}

// Graphs (ops/backend.h): the table's ops between capture_begin and capture_end are recorded, not
// run; each launch runs them over the memory as it is then. An op that waits for the host inside a
// capture (sum_squares returns its sum there) throws, capture_end then throws, and the backend
// works on afterwards; so does a capture abandoned that way by StepGraph.
TEST(CudaBackend, GraphsRecordTheOpsAndRefuseHostWork) {
  SKIP_WITHOUT_DEVICE();
  const ops::Backend<float>& b = cuda::backend();
  ASSERT_TRUE(b.has_graphs());
  const size_t n = 1001;
  const FVec x = to_f(rand_vec(n, 61)), y = to_f(rand_vec(n, 62));
  Array<float> a(*b.memory), c(*b.memory), out(*b.memory);
  a.resize(n);
  c.resize(n);
  out.resize(n);
  a.upload(x.data(), n);
  c.upload(y.data(), n);
  b.capture_begin();
  b.residual_forward(out.data(), a.data(), c.data(), n);
  b.scale(out.data(), 2.0f, n);
  ops::Graph* g = b.capture_end();
  FVec back(n, 1.0f);
  out.download(back.data(), n);
  EXPECT_EQ(back, FVec(n, 0.0f)) << "a capture ran its ops";
  FVec want(n);
  for (size_t i = 0; i < n; ++i) want[i] = (x[i] + y[i]) * 2.0f;  // both steps exact in fp32 order
  b.graph_launch(g);
  out.download(back.data(), n);
  EXPECT_EQ(back, want);
  a.upload(y.data(), n);  // new input in the same buffer
  b.graph_launch(g);
  out.download(back.data(), n);
  for (size_t i = 0; i < n; ++i) want[i] = (y[i] + y[i]) * 2.0f;
  EXPECT_EQ(back, want);
  b.graph_free(g);

  b.capture_begin();
  EXPECT_THROW(b.sum_squares(a.data(), n), Error);
  try {
    b.capture_end();
    ADD_FAILURE() << "a capture with host work ended";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA graph capture failed"), std::string::npos) << e.what();
  }
  double ss = 0;
  for (size_t i = 0; i < n; ++i) ss += double(y[i]) * y[i];
  EXPECT_NEAR(b.sum_squares(a.data(), n), ss, 1e-5 * ss) << "the backend after a failed capture";

  StepGraph<float> sg;
  const auto bad = [&] { b.sum_squares(a.data(), n); };
  sg.run(b, {1, 1, 1.0, 0}, bad);  // eager: fine
  EXPECT_THROW(sg.run(b, {1, 1, 1.0, 0}, bad), Error);  // its capture: refused, abandoned
  EXPECT_EQ(sg.captures(), 0);
  EXPECT_NEAR(b.sum_squares(a.data(), n), ss, 1e-5 * ss);
}

// The environment's counts (LMF_CLASSIFIER_CHUNK_ROWS): unset or empty is 0, a whole number is
// itself, anything else one line naming the variable. Host code: no device needed.
TEST(CudaRuntime, EnvironmentCountsAreWholeNumbers) {
  const char* name = "LMF_TEST_ENV_COUNT";
  unsetenv(name);
  EXPECT_EQ(cuda::env_count(name), 0);
  for (const auto& [value, want] : {std::pair{"", 0}, std::pair{"0", 0}, std::pair{"160", 160}}) {
    setenv(name, value, 1);
    EXPECT_EQ(cuda::env_count(name), want) << value;
  }
  for (const char* bad : {"x", "-1", "16x", " 4", "99999999999"}) {
    setenv(name, bad, 1);
    try {
      cuda::env_count(name);
      ADD_FAILURE() << bad << " accepted";
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find("LMF_TEST_ENV_COUNT: expected a whole number >= 0"), std::string::npos)
          << e.what();
    }
  }
  unsetenv(name);
}

bool vmm_turned_off() {
  const char* v = std::getenv("LMF_CUDA_VMM");
  return v != nullptr && std::string(v) == "0";
}

// LMF_CUDA_VMM=0 leaves the space without virtual memory (ctest runs this both ways under the
// emulation; the model tests run without it there too).
TEST(CudaBackend, VirtualMemoryCanBeTurnedOff) {
  SKIP_WITHOUT_DEVICE();
  EXPECT_EQ(cuda::backend().memory->virtual_memory == nullptr, vmm_turned_off());
}

// The parameters' device copy lives in the driver's virtual memory (ops/cuda/virtual_memory.cu):
// granules handed back and taken again, released values reading zero; a granule handed back waits
// in a pool, so mapping it again creates nothing; the granules count in the backend's allocated
// bytes (so in the peak) until the last reservation goes.
TEST(CudaBackend, VirtualMemoryReleasesAndCommitsGranules) {
  SKIP_WITHOUT_DEVICE();
  const MemorySpace& space = *cuda::backend().memory;
  if (vmm_turned_off()) GTEST_SKIP() << "LMF_CUDA_VMM=0";
  test::check_paged_array(space);
  const size_t before = cuda::allocated_bytes(), G = space.virtual_memory->granularity();
  {
    PagedArray<float> a(space);
    const size_t n = 3 * G / sizeof(float);
    a.resize(n);
    const size_t created = cuda::virtual_memory_creates();
    EXPECT_EQ(cuda::allocated_bytes(), before + 3 * G);
    a.release(0, 2 * n / 3);
    EXPECT_EQ(a.resident_bytes(), G);
    EXPECT_EQ(cuda::allocated_bytes(), before + 3 * G) << "released granules wait in the pool";
    // The ops run on what stays backed.
    cuda::backend().fill(a.data() + 2 * n / 3, 3.0f, n / 3);
    std::vector<float> h(n);
    a.download(h.data(), h.size());
    EXPECT_EQ(h.front(), 0.0f);
    EXPECT_EQ(h.back(), 3.0f);
    for (int cycle = 0; cycle < 3; ++cycle) {  // as ZeRO 3 does every step
      a.commit(0, 2 * n / 3);
      a.release(0, 2 * n / 3);
    }
    EXPECT_EQ(cuda::virtual_memory_creates(), created) << "granules came from the pool";
    EXPECT_EQ(cuda::allocated_bytes(), before + 3 * G);
  }
  EXPECT_EQ(cuda::allocated_bytes(), before) << "the pool drained when the last reservation went";
}

TEST(CudaBackend, OutOfMemoryThrowsAndLeavesNoStickyError) {
  SKIP_WITHOUT_DEVICE();
  const MemorySpace& m = *cuda::backend().memory;
  const size_t huge = size_t(1) << 60;  // no GPU has an exabyte
  try {
    m.allocate(huge);
    FAIL() << "allocate(2^60) did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(huge)), std::string::npos) << e.what();
  }
  // The failed cudaMalloc must not surface in the next op's launch check.
  DeviceBuffer<float> d(nans(7));
  EXPECT_NO_THROW(cuda::fill(d.data(), 1.0f, 7));
  EXPECT_EQ(d.to_host(), FVec(7, 1.0f));
}

// ---- a non-default stream -----------------------------------------------------------------------

TEST(CudaOps, RunsOnAStream) {
  SKIP_WITHOUT_DEVICE();
  const size_t n = 4099;
  const FVec a = to_f(rand_vec(n, 40)), b = to_f(rand_vec(n, 41));
  FVec cpu(n);
  ops::residual_forward<float>(cpu.data(), a.data(), b.data(), n);
  cudaStream_t s = nullptr;
  LMF_CUDA_CHECK(cudaStreamCreate(&s));
  DeviceBuffer<float> da(a), db(b), dout(nans(n));
  cuda::residual_forward(dout.data(), da.data(), db.data(), n, s);
  LMF_CUDA_CHECK(cudaStreamSynchronize(s));
  LMF_CUDA_CHECK(cudaStreamDestroy(s));
  expect_close("out", dout.to_host(), cpu, kBoth * tol_f32().gamma(1) * 2.0);
}

}  // namespace
}  // namespace lmf

#endif  // LMF_HAVE_CUDA
