// The CUDA backend over bf16 storage (cuda::backend_bf16(), the bf16 overloads of ops_cuda.h)
// against its CPU specification: every op widens its bf16 inputs to float, runs the float op of
// the bf16 matmul-precision table (ops::cpu_backend<float>(MatmulPrecision::bf16)) and rounds
// every bf16 output once, to nearest even (the `spec` namespace below: a stand-in for
// ops::cpu_backend<bf16>() with the same semantics, to be replaced by it once both are on one
// branch). Every test skips without a CUDA device; the emulation build (tests/cuda_emu) runs them
// on the CPU.
//
// What is compared, and how:
//  - The store: to_compute rounds exactly as core/half.h's float_to_bf16 (ties, NaN, Inf,
//    overflow, subnormals, 150 000 random floats), bit for bit.
//  - Elementwise ops run the fp32 kernel's float formulas between a widening load and a rounding
//    store, so each equals the fp32 CUDA op on the widened inputs, rounded, bit for bit (on a GPU
//    and under the emulation). Against the CPU spec: residual and the encoder's forward (one fp32
//    add each) bit for bit; GELU, SwiGLU and RoPE within the fp32 op's bound (test_cuda_ops.cpp)
//    plus one bf16 rounding on each side (the CPU's vtanh / vexp are not the GPU's tanhf / expf,
//    and a float difference can straddle a rounding boundary).
//  - Reductions (norms, GEMMs, the classifier, attention): an output stored as bf16 lies within
//    the fp32 bound e (op_tolerance.h, derivations in test_cuda_ops.cpp / test_cuda_matmul.cpp /
//    test_ops.cpp) of the exact value of the same inputs before its rounding, and the rounding
//    adds at most u |stored| (u = 2^-8, bf16's unit roundoff, round to nearest). So GPU and CPU,
//    each within that of the exact value, differ by at most kBoth e + u (|gpu| + |cpu|). float
//    outputs (statistics, parameter gradients) keep kBoth e. Products whose operands the spec
//    rounds to bf16 (dlogits; attention's P and dS) carry Tol::op per term on top.
//  - Accumulating outputs start non-zero (dw, db, dinp += ...), assigned ones start as NaN.
#include <gtest/gtest.h>

#include "ops/cuda_backend.h"

#ifndef LMF_HAVE_CUDA

TEST(CudaBf16, Skipped) { GTEST_SKIP() << "built without CUDA"; }

#else

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <type_traits>
#include <vector>

#include "core/half.h"
#include "core/rng.h"
#include "gpu/cuda_test_util.h"
#include "matmul_precision_ref.h"
#include "ops/backend.h"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/ops_cuda.h"
#include "ops/ops.h"
#include "ops/reference.h"

namespace lmf {
namespace {

using namespace test;  // NOLINT: the shared GPU test helpers (cuda_test_util.h)
using Bf = std::vector<bf16>;

constexpr double kU = 0x1p-8;  // bf16's unit roundoff (8 significant bits, round to nearest)

// ---- bf16 vectors -------------------------------------------------------------------------------

Bf narrow(const FVec& v) {
  Bf r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = bf16(v[i]);
  return r;
}
Bf narrow(const Vec& v) {
  Bf r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = bf16((float)v[i]);
  return r;
}
FVec widen(const Bf& v) {
  FVec r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = float(v[i]);
  return r;
}
Vec wide_d(const Bf& v) {
  Vec r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = double(float(v[i]));
  return r;
}
// n values uniform in [lo, hi) rounded to bf16: the inputs of every test, so that the exact
// references (double) see what the ops see.
Bf rand_bf(size_t n, uint64_t stream, double lo = -1.0, double hi = 1.0) {
  return narrow(rand_vec(n, stream, lo, hi));
}
Bf bnans(size_t n) { return Bf(n, bf16(std::numeric_limits<float>::quiet_NaN())); }
Vec to_d(const FVec& v) { return Vec(v.begin(), v.end()); }

// Every element's bits equal; the first difference and the count otherwise.
void expect_bits(const char* what, const Bf& a, const Bf& b) {
  ASSERT_EQ(a.size(), b.size()) << what;
  size_t differ = 0, first = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].bits != b[i].bits && differ++ == 0) first = i;
  EXPECT_EQ(differ, 0u) << what << ": " << differ << " of " << a.size() << " differ, first at "
                        << first << ": " << std::hex << a[first].bits << " vs " << b[first].bits
                        << std::dec << " (" << float(a[first]) << " vs " << float(b[first]) << ")";
}
// How many elements differ in their bits (printed, for the report of how close GPU and CPU are).
size_t count_differ(const Bf& a, const Bf& b) {
  size_t n = 0;
  for (size_t i = 0; i < a.size(); ++i) n += a[i].bits != b[i].bits;
  return n;
}

// bf16 outputs: tol32[i] (already kBoth times the fp32 bound) plus each side's rounding.
void expect_close_bf(const char* what, const Bf& gpu, const Bf& cpu, const Vec& tol32) {
  ASSERT_EQ(gpu.size(), cpu.size()) << what;
  ASSERT_EQ(gpu.size(), tol32.size()) << what;
  const FVec g = widen(gpu), c = widen(cpu);
  Vec tol(g.size());
  for (size_t i = 0; i < g.size(); ++i)
    tol[i] = tol32[i] + kU * (std::abs((double)g[i]) + std::abs((double)c[i]));
  expect_close(what, g, c, tol);
}
void expect_close_bf(const char* what, const Bf& gpu, const Bf& cpu, double tol32) {
  expect_close_bf(what, gpu, cpu, Vec(gpu.size(), tol32));
}

// ---- the CPU specification: ops::cpu_backend<bf16>()
// ---------------------------------------------- Widen, run the float op of the bf16
// matmul-precision table, round each bf16 output once (ops/cpu/bf16.cpp; test_bf16 holds it to
// exactly that). Where a test needs the spec's float results before rounding, it calls f32() on the
// widened inputs itself.

namespace spec {

const ops::Backend<bf16>& cpu() { return ops::cpu_backend<bf16>(); }
const ops::Backend<float>& f32() { return ops::cpu_backend<float>(ops::MatmulPrecision::bf16); }

void residual_forward(Bf& out, const Bf& a, const Bf& b) {
  out.resize(a.size());
  cpu().residual_forward(out.data(), a.data(), b.data(), a.size());
}
void gelu_forward(Bf& out, const Bf& x) {
  out.resize(x.size());
  cpu().gelu_forward(out.data(), x.data(), x.size());
}
void gelu_backward(Bf& dinp, const Bf& x, const Bf& dout) {
  dinp.resize(x.size());
  cpu().gelu_backward(dinp.data(), x.data(), dout.data(), x.size());
}
void swiglu_forward(Bf& out, const Bf& g, const Bf& u) {
  out.resize(g.size());
  cpu().swiglu_forward(out.data(), g.data(), u.data(), g.size());
}
void swiglu_backward(Bf& dg, Bf& du, const Bf& dout, const Bf& g, const Bf& u) {
  dg.resize(g.size());
  du.resize(g.size());
  cpu().swiglu_backward(dg.data(), du.data(), dout.data(), g.data(), u.data(), g.size());
}
// Accumulating into dinp.
void layernorm_backward(Bf& dinp, FVec& dw, FVec& db, const Bf& dout, const Bf& x, const Bf& w,
                        const FVec& mean, const FVec& rstd, int N, int C) {
  cpu().layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                           mean.data(), rstd.data(), N, C);
}
void rmsnorm_backward(Bf& dinp, FVec& dw, const Bf& dout, const Bf& x, const Bf& w,
                      const FVec& rstd, int N, int C) {
  cpu().rmsnorm_backward(dinp.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), N,
                         C);
}

}  // namespace spec

// ---- the store ----------------------------------------------------------------------------------

// to_compute (the master -> compute copy) is the store every kernel uses (ops/cuda/bf16.cuh):
// it must be float_to_bf16 bit for bit, NaN included.
TEST(CudaBf16, StoreRoundsAsFloatToBf16) {
  SKIP_WITHOUT_DEVICE();
  const float inf = std::numeric_limits<float>::infinity();
  FVec x = {0.0f,
            -0.0f,
            1.0f,
            -1.0f,
            inf,
            -inf,
            std::numeric_limits<float>::quiet_NaN(),
            std::bit_cast<float>(0x7f800001u),  // a signalling NaN: must stay NaN
            std::bit_cast<float>(0xffffffffu),  // NaN with every payload bit: must not carry
            std::bit_cast<float>(0x3f808000u),  // halfway, even below: down
            std::bit_cast<float>(0x3f818000u),  // halfway, odd below: up
            std::bit_cast<float>(0x3f808001u),  // above halfway: up
            std::bit_cast<float>(0x3f807fffu),  // below halfway: down
            std::bit_cast<float>(0x7f7fffffu),  // the largest float: rounds to Inf
            std::bit_cast<float>(0x00000001u),  // the smallest subnormal: to zero
            std::bit_cast<float>(0x00018000u),  // a subnormal tie, odd below: up
            std::bit_cast<float>(0x80400000u)};
  Rng r(20240611, 70);
  for (int i = 0; i < 150000; ++i)
    x.push_back(std::bit_cast<float>((uint32_t)r.below(uint64_t(1) << 32)));
  DeviceBuffer<float> d_src(x);
  DeviceBuffer<bf16> d_dst(bnans(x.size()));
  cuda::backend_bf16().to_compute(d_dst.data(), d_src.data(), x.size());
  const Bf got = d_dst.to_host();
  size_t differ = 0, first = 0;
  for (size_t i = 0; i < x.size(); ++i)
    if (got[i].bits != float_to_bf16(x[i]) && differ++ == 0) first = i;
  EXPECT_EQ(differ, 0u) << "first at " << first << ": float bits " << std::hex
                        << std::bit_cast<uint32_t>(x[first]) << " gave " << got[first].bits
                        << ", float_to_bf16 " << float_to_bf16(x[first]);
}

// ---- elementwise --------------------------------------------------------------------------------

const size_t kSizes[] = {1, 37, 37 * 771, 100003};

TEST(CudaBf16, Residual) {
  SKIP_WITHOUT_DEVICE();
  for (size_t n : kSizes) {
    SCOPED_TRACE("n = " + std::to_string(n));
    const Bf a = rand_bf(n, 1, -3.0, 3.0), b = rand_bf(n, 2);
    Bf out_c;
    spec::residual_forward(out_c, a, b);
    DeviceBuffer<bf16> da(a), db(b), dout(bnans(n));
    cuda::backend_bf16().residual_forward(dout.data(), da.data(), db.data(), n);
    expect_bits("out vs spec", dout.to_host(), out_c);  // one fp32 add, one rounding: exact
    cuda::backend_bf16().residual_forward(da.data(), da.data(), db.data(), n);
    expect_bits("out (in place) vs spec", da.to_host(), out_c);
  }
}

// The fp32 CUDA op on the widened inputs, rounded: the same formulas, so the same bits.
TEST(CudaBf16, GeluIsTheFp32KernelRounded) {
  SKIP_WITHOUT_DEVICE();
  for (size_t n : kSizes) {
    SCOPED_TRACE("n = " + std::to_string(n));
    const Bf x = rand_bf(n, 20, -6.0, 6.0), dout = rand_bf(n, 21);
    DeviceBuffer<bf16> dx(x), dd(dout), dout_g(bnans(n)), ddinp(bnans(n));
    cuda::backend_bf16().gelu_forward(dout_g.data(), dx.data(), n);
    cuda::backend_bf16().gelu_backward(ddinp.data(), dx.data(), dd.data(), n);
    DeviceBuffer<float> fx(widen(x)), fd(widen(dout)), fout(nans(n)), fdinp(nans(n));
    cuda::gelu_forward(fout.data(), fx.data(), n);
    cuda::gelu_backward(fdinp.data(), fx.data(), fd.data(), n);
    const Bf out_g = dout_g.to_host(), dinp_g = ddinp.to_host();
    expect_bits("out vs fp32 kernel rounded", out_g, narrow(fout.to_host()));
    expect_bits("dinp vs fp32 kernel rounded", dinp_g, narrow(fdinp.to_host()));

    Bf out_c, dinp_c;
    spec::gelu_forward(out_c, x);
    spec::gelu_backward(dinp_c, x, dout);
    const GeluTolerance g = gelu_tolerance(wide_d(x), wide_d(dout), wide_d(out_c), tol_f32());
    Vec tol_out = g.out, tol_dinp = g.dinp;
    for (size_t i = 0; i < n; ++i) {
      tol_out[i] *= kBoth;
      tol_dinp[i] *= kBoth;
    }
    expect_close_bf("out vs spec", out_g, out_c, tol_out);
    expect_close_bf("dinp vs spec", dinp_g, dinp_c, tol_dinp);
    std::printf("[ info ] gelu n=%zu: bits differ from the CPU spec in %zu (out), %zu (dinp)\n", n,
                count_differ(out_g, out_c), count_differ(dinp_g, dinp_c));
    // In place (dinp == dout), as gpt2_block calls it.
    cuda::backend_bf16().gelu_backward(dd.data(), dx.data(), dd.data(), n);
    expect_bits("dinp (in place)", dd.to_host(), dinp_g);
  }
}

TEST(CudaBf16, SwigluIsTheFp32KernelRounded) {
  SKIP_WITHOUT_DEVICE();
  const Tol t = tol_f32();
  for (size_t n : kSizes) {
    SCOPED_TRACE("n = " + std::to_string(n));
    const Bf gate = rand_bf(n, 47, -8.0, 8.0), up = rand_bf(n, 48), dout = rand_bf(n, 49);
    DeviceBuffer<bf16> dg(gate), du(up), dd(dout), dout_g(bnans(n)), ddgate(bnans(n)),
        ddup(bnans(n));
    cuda::backend_bf16().swiglu_forward(dout_g.data(), dg.data(), du.data(), n);
    cuda::backend_bf16().swiglu_backward(ddgate.data(), ddup.data(), dd.data(), dg.data(),
                                         du.data(), n);
    DeviceBuffer<float> fg(widen(gate)), fu(widen(up)), fd(widen(dout)), fout(nans(n)),
        fdg(nans(n)), fdu(nans(n));
    cuda::swiglu_forward(fout.data(), fg.data(), fu.data(), n);
    cuda::swiglu_backward(fdg.data(), fdu.data(), fd.data(), fg.data(), fu.data(), n);
    const Bf out_g = dout_g.to_host(), dgate_g = ddgate.to_host(), dup_g = ddup.to_host();
    expect_bits("out vs fp32 kernel rounded", out_g, narrow(fout.to_host()));
    expect_bits("dgate vs fp32 kernel rounded", dgate_g, narrow(fdg.to_host()));
    expect_bits("dup vs fp32 kernel rounded", dup_g, narrow(fdu.to_host()));

    Bf out_c, dgate_c, dup_c;
    spec::swiglu_forward(out_c, gate, up);
    spec::swiglu_backward(dgate_c, dup_c, dout, gate, up);
    // test_cuda_ops.cpp's Swiglu bounds (derivation there), on the widened inputs.
    const Vec g = wide_d(gate), u = wide_d(up), d = wide_d(dout);
    Vec tol_out(n), tol_dgate(n), tol_dup(n);
    for (size_t i = 0; i < n; ++i) {
      const double sg = 1 / (1 + std::exp(-g[i])), ag = std::abs(g[i]), silu = g[i] * sg;
      const double es = t.gamma(18) * sg;
      tol_out[i] = kBoth * t.gamma(20) * std::abs(silu * u[i]);
      tol_dup[i] = kBoth * t.gamma(20) * std::abs(d[i] * silu);
      const double dsilu = sg + ag * sg * (1 - sg);
      const double e_dsilu = es * (1 + ag * (1 - sg) + ag * sg) + t.gamma(4) * dsilu;
      tol_dgate[i] = kBoth * std::abs(d[i] * u[i]) * (e_dsilu + t.gamma(2) * dsilu);
    }
    expect_close_bf("out vs spec", out_g, out_c, tol_out);
    expect_close_bf("dgate vs spec", dgate_g, dgate_c, tol_dgate);
    expect_close_bf("dup vs spec", dup_g, dup_c, tol_dup);
    std::printf(
        "[ info ] swiglu n=%zu: bits differ from the CPU spec in %zu (out), %zu (dgate), %zu "
        "(dup)\n",
        n, count_differ(out_g, out_c), count_differ(dgate_g, dgate_c), count_differ(dup_g, dup_c));
  }
}

void check_rope(int B, int T, int NH, int hs, bool interleaved, int pos0) {
  SCOPED_TRACE("B = " + std::to_string(B) + ", T = " + std::to_string(T) +
               ", NH = " + std::to_string(NH) + ", hs = " + std::to_string(hs) +
               (interleaved ? ", interleaved" : ", rotate-half") +
               ", pos0 = " + std::to_string(pos0));
  const Tol t = tol_f32();
  const std::vector<double> inv_freq = ops::rope_inv_freq(hs, 10000.0);
  const size_t n = (size_t)B * T * NH * hs;
  const Bf x = rand_bf(n, 45), dout = rand_bf(n, 46);
  DeviceBuffer<double> dfreq(inv_freq);
  DeviceBuffer<bf16> dx(x), dd(dout), dout_g(bnans(n)), ddinp(bnans(n));
  cuda::backend_bf16().rope_forward(dout_g.data(), dx.data(), B, T, NH, hs, dfreq.data(),
                                    interleaved, pos0);
  cuda::backend_bf16().rope_backward(ddinp.data(), dd.data(), B, T, NH, hs, dfreq.data(),
                                     interleaved, pos0);
  DeviceBuffer<float> fx(widen(x)), fd(widen(dout)), fout(nans(n)), fdinp(nans(n));
  cuda::rope_forward(fout.data(), fx.data(), B, T, NH, hs, dfreq.data(), interleaved, pos0);
  cuda::rope_backward(fdinp.data(), fd.data(), B, T, NH, hs, dfreq.data(), interleaved, pos0);
  const Bf out_g = dout_g.to_host(), dinp_g = ddinp.to_host();
  expect_bits("out vs fp32 kernel rounded", out_g, narrow(fout.to_host()));
  expect_bits("dinp vs fp32 kernel rounded", dinp_g, narrow(fdinp.to_host()));

  FVec out_c(n), dinp_c(n);  // the spec: float op on the widened inputs, then rounded
  spec::f32().rope_forward(out_c.data(), widen(x).data(), B, T, NH, hs, inv_freq.data(),
                           interleaved, pos0);
  spec::f32().rope_backward(dinp_c.data(), widen(dout).data(), B, T, NH, hs, inv_freq.data(),
                            interleaved, pos0);
  // test_cuda_ops.cpp's Rope bound: gamma(4) (|a| + |b|).
  expect_close_bf("out vs spec", out_g, narrow(out_c), kBoth * t.gamma(4) * 2 * max_abs(wide_d(x)));
  expect_close_bf("dinp vs spec", dinp_g, narrow(dinp_c),
                  kBoth * t.gamma(4) * 2 * max_abs(wide_d(dout)));
  std::printf("[ info ] rope: bits differ from the CPU spec in %zu of %zu (out)\n",
              count_differ(out_g, narrow(out_c)), n);
  cuda::backend_bf16().rope_forward(dx.data(), dx.data(), B, T, NH, hs, dfreq.data(), interleaved,
                                    pos0);
  expect_bits("out (in place)", dx.to_host(), out_g);
}

TEST(CudaBf16, RopeIsTheFp32KernelRounded) {
  SKIP_WITHOUT_DEVICE();
  for (bool interleaved : {false, true})
    for (int pos0 : {0, 5}) check_rope(2, 9, 3, 10, interleaved, pos0);
  check_rope(1, 1, 1, 2, true, 0);
  check_rope(3, 37, 5, 64, false, 0);
}

TEST(CudaBf16, FillCopyFillStat) {
  SKIP_WITHOUT_DEVICE();
  const ops::Backend<bf16>& be = cuda::backend_bf16();
  for (size_t n : {size_t(0), size_t(1), size_t(257), size_t(100003)}) {
    SCOPED_TRACE("n = " + std::to_string(n));
    DeviceBuffer<bf16> d(bnans(n + 1));  // a guard element past n
    be.fill(d.data(), bf16(-0.375f), n);
    Bf h = d.to_host();
    expect_bits("fill", Bf(h.begin(), h.begin() + (ptrdiff_t)n), Bf(n, bf16(-0.375f)));
    EXPECT_TRUE(std::isnan(float(h[n]))) << "fill wrote past n";
    const Bf src = rand_bf(n, 71);
    DeviceBuffer<bf16> s(src), c(bnans(n + 1));
    be.copy(c.data(), s.data(), n);
    h = c.to_host();
    expect_bits("copy", Bf(h.begin(), h.begin() + (ptrdiff_t)n), src);
    EXPECT_TRUE(std::isnan(float(h[n]))) << "copy wrote past n";
    DeviceBuffer<float> f(nans(n + 1));
    be.fill_stat(f.data(), 0.1f, n);  // not representable in bf16: must stay float
    const FVec fh = f.to_host();
    EXPECT_EQ(FVec(fh.begin(), fh.begin() + (ptrdiff_t)n), FVec(n, 0.1f));
    EXPECT_TRUE(std::isnan(fh[n])) << "fill_stat wrote past n";
  }
}

// ---- norms --------------------------------------------------------------------------------------
// Bounds of test_cuda_ops.cpp's check_layernorm / check_rmsnorm (derivations in test_ops.cpp) on
// the widened inputs, plus the bf16 rounding of out and dinp. Each side's backward reads its own
// forward's statistics, as in the float test (the bounds cover their difference).

void check_layernorm(int N, int C) {
  SCOPED_TRACE("N = " + std::to_string(N) + ", C = " + std::to_string(C));
  const Tol t = tol_f32();
  const size_t NC = (size_t)N * C;
  const Bf x = rand_bf(NC, 13, 1.0, 3.0), w = rand_bf(C, 14), b = rand_bf(C, 15),
           dout = rand_bf(NC, 16), dinp0 = rand_bf(NC, 17);
  const FVec dw0 = to_f(rand_vec(C, 18)), db0 = to_f(rand_vec(C, 19));
  const Vec xd = wide_d(x), wd = wide_d(w), bd = wide_d(b), gd = wide_d(dout);

  Vec out_r(NC), mean_r(N), rstd_r(N);  // exact (double): only for the bounds
  ops::ref::layernorm_forward(out_r.data(), mean_r.data(), rstd_r.data(), xd.data(), wd.data(),
                              bd.data(), N, C);
  FVec out_cf(NC), mean_c(N), rstd_c(N);
  spec::f32().layernorm_forward(out_cf.data(), mean_c.data(), rstd_c.data(), widen(x).data(),
                                widen(w).data(), widen(b).data(), N, C);
  Bf dinp_c = dinp0;
  FVec dw_c = dw0, db_c = db0;
  spec::layernorm_backward(dinp_c, dw_c, db_c, dout, x, w, mean_c, rstd_c, N, C);

  const ops::Backend<bf16>& be = cuda::backend_bf16();
  DeviceBuffer<bf16> dx(x), dwt(w), dbias(b), ddout(dout), dout_g(bnans(NC)), ddinp(dinp0);
  DeviceBuffer<float> dmean(nans(N)), drstd(nans(N)), ddw(dw0), ddb(db0);
  be.layernorm_forward(dout_g.data(), dmean.data(), drstd.data(), dx.data(), dwt.data(),
                       dbias.data(), N, C);
  be.layernorm_backward(ddinp.data(), ddw.data(), ddb.data(), ddout.data(), dx.data(), dwt.data(),
                        dmean.data(), drstd.data(), N, C);

  const double X = max_abs(xd), W = max_abs(wd), Bm = max_abs(bd), G = max_abs(gd),
               r = max_abs(rstd_r);
  double nu = 0;
  for (int i = 0; i < N; ++i)
    for (int c = 0; c < C; ++c)
      nu = std::max(nu, std::abs(xd[(size_t)i * C + c] - mean_r[i]) * rstd_r[i]);
  const double tol_mean = t.gamma(C) * X, tol_rstd = r * (0.5 * t.gamma(C) * nu * nu + t.gamma(4));
  const double dnorm = t.gamma(C) * (X * r + 0.5 * nu * nu * nu) + t.gamma(4) * nu;
  expect_close("mean", dmean.to_host(), mean_c, kBoth * tol_mean);
  expect_close("rstd", drstd.to_host(), rstd_c, kBoth * tol_rstd);
  expect_close_bf("out", dout_g.to_host(), narrow(out_cf),
                  kBoth * (W * dnorm + t.gamma(3) * (nu * W + Bm)));
  const double g = W * G, bracket = g * (2 + nu * nu);
  const double tol_dinp = r * (t.gamma(C) * g * (1 + nu * nu) + 2 * nu * g * dnorm +
                               bracket * (0.5 * t.gamma(C) * nu * nu + t.gamma(4))) +
                          t.gamma(1) * (max_abs(wide_d(dinp0)) + r * bracket);
  expect_close_bf("dinp", ddinp.to_host(), dinp_c, kBoth * tol_dinp);
  expect_close("dw", ddw.to_host(), dw_c,
               kBoth * (t.gamma(N + 1) * (N * nu * G + max_abs(to_d(dw0))) + N * G * dnorm));
  expect_close("db", ddb.to_host(), db_c, kBoth * t.gamma(N + 1) * (N * G + max_abs(to_d(db0))));

  // The fp32 kernels on the widened values, rounded: the same float arithmetic, so the same bits
  // (a store that truncated, or a dinp += done in bf16, would show here, below the bounds above).
  DeviceBuffer<float> fx(widen(x)), fw(widen(w)), fb(widen(b)), fd(widen(dout)), fout(nans(NC)),
      fmean(nans(N)), frstd(nans(N)), fdinp(widen(dinp0)), fdw(dw0), fdb(db0);
  cuda::layernorm_forward(fout.data(), fmean.data(), frstd.data(), fx.data(), fw.data(), fb.data(),
                          N, C);
  cuda::layernorm_backward(fdinp.data(), fdw.data(), fdb.data(), fd.data(), fx.data(), fw.data(),
                           fmean.data(), frstd.data(), N, C);
  expect_bits("out vs fp32 kernel rounded", dout_g.to_host(), narrow(fout.to_host()));
  EXPECT_EQ(dmean.to_host(), fmean.to_host()) << "mean vs fp32 kernel";
  EXPECT_EQ(drstd.to_host(), frstd.to_host()) << "rstd vs fp32 kernel";
  expect_bits("dinp vs fp32 kernel rounded", ddinp.to_host(), narrow(fdinp.to_host()));
  EXPECT_EQ(ddw.to_host(), fdw.to_host()) << "dw vs fp32 kernel";
  EXPECT_EQ(ddb.to_host(), fdb.to_host()) << "db vs fp32 kernel";

  // Fused residual + norm: the GPU's unfused pair's bits (res rounded, then normalised as stored).
  const Bf a = rand_bf(NC, 20, -2.0, 2.0);
  DeviceBuffer<bf16> da(a), res(bnans(NC)), out_u(bnans(NC)), res_f(bnans(NC)), out_f(bnans(NC));
  DeviceBuffer<float> mean_u(nans(N)), rstd_u(nans(N)), mean_f(nans(N)), rstd_f(nans(N));
  be.residual_forward(res.data(), da.data(), dx.data(), NC);
  be.layernorm_forward(out_u.data(), mean_u.data(), rstd_u.data(), res.data(), dwt.data(),
                       dbias.data(), N, C);
  be.residual_layernorm_forward(res_f.data(), out_f.data(), mean_f.data(), rstd_f.data(), da.data(),
                                dx.data(), dwt.data(), dbias.data(), N, C);
  expect_bits("fused res", res_f.to_host(), res.to_host());
  expect_bits("fused out", out_f.to_host(), out_u.to_host());
  EXPECT_EQ(mean_f.to_host(), mean_u.to_host());
  EXPECT_EQ(rstd_f.to_host(), rstd_u.to_host());
  // In place (res == a), as GPT-2's ln2 calls it.
  be.residual_layernorm_forward(da.data(), out_f.data(), mean_f.data(), rstd_f.data(), da.data(),
                                dx.data(), dwt.data(), dbias.data(), N, C);
  expect_bits("fused res (in place)", da.to_host(), res.to_host());
  expect_bits("fused out (in place)", out_f.to_host(), out_u.to_host());
}

TEST(CudaBf16, Layernorm) {
  SKIP_WITHOUT_DEVICE();
  check_layernorm(37, 771);
  check_layernorm(37, 768);
  check_layernorm(1, 1);
  check_layernorm(130, 96);
}

void check_rmsnorm(int N, int C) {
  SCOPED_TRACE("N = " + std::to_string(N) + ", C = " + std::to_string(C));
  const Tol t = tol_f32();
  const float eps = 1e-5f;
  const size_t NC = (size_t)N * C;
  const Bf x = rand_bf(NC, 40, -1.0, 3.0), w = rand_bf(C, 41), dout = rand_bf(NC, 42),
           dinp0 = rand_bf(NC, 43);
  const FVec dw0 = to_f(rand_vec(C, 44));
  const Vec xd = wide_d(x), wd = wide_d(w), gd = wide_d(dout);

  Vec out_r(NC), rstd_r(N);
  ops::ref::rmsnorm_forward(out_r.data(), rstd_r.data(), xd.data(), wd.data(), N, C, eps);
  FVec out_cf(NC), rstd_c(N);
  spec::f32().rmsnorm_forward(out_cf.data(), rstd_c.data(), widen(x).data(), widen(w).data(), N, C,
                              eps);
  Bf dinp_c = dinp0;
  FVec dw_c = dw0;
  spec::rmsnorm_backward(dinp_c, dw_c, dout, x, w, rstd_c, N, C);

  const ops::Backend<bf16>& be = cuda::backend_bf16();
  DeviceBuffer<bf16> dx(x), dwt(w), ddout(dout), dout_g(bnans(NC)), ddinp(dinp0);
  DeviceBuffer<float> drstd(nans(N)), ddw(dw0);
  be.rmsnorm_forward(dout_g.data(), drstd.data(), dx.data(), dwt.data(), N, C, eps);
  be.rmsnorm_backward(ddinp.data(), ddw.data(), ddout.data(), dx.data(), dwt.data(), drstd.data(),
                      N, C);

  const double W = max_abs(wd), G = max_abs(gd), r = max_abs(rstd_r);
  double nu = 0;
  for (int i = 0; i < N; ++i)
    for (int c = 0; c < C; ++c) nu = std::max(nu, std::abs(xd[(size_t)i * C + c]) * rstd_r[i]);
  const double rel_r = 0.5 * t.gamma(C + 1) + t.gamma(4);
  expect_close("rstd", drstd.to_host(), rstd_c, kBoth * r * rel_r);
  expect_close_bf("out", dout_g.to_host(), narrow(out_cf), kBoth * W * nu * (rel_r + t.gamma(2)));
  const double g = W * G, bracket = g * (1 + nu * nu);
  const double e_m = g * nu * (t.gamma(C + 3) + rel_r);
  const double e_bracket = t.gamma(4) * bracket + nu * e_m + g * nu * nu * rel_r;
  expect_close_bf("dinp", ddinp.to_host(), dinp_c,
                  kBoth * (r * (e_bracket + bracket * rel_r) +
                           t.gamma(1) * (max_abs(wide_d(dinp0)) + r * bracket)));
  expect_close("dw", ddw.to_host(), dw_c,
               kBoth * (t.gamma(N + 2) * (N * nu * G + max_abs(to_d(dw0))) + N * G * nu * rel_r));

  // The fp32 kernels on the widened values, rounded: the same bits (as for layernorm).
  DeviceBuffer<float> fx(widen(x)), fw(widen(w)), fd(widen(dout)), fout(nans(NC)), frstd(nans(N)),
      fdinp(widen(dinp0)), fdw(dw0);
  cuda::rmsnorm_forward(fout.data(), frstd.data(), fx.data(), fw.data(), N, C, eps);
  cuda::rmsnorm_backward(fdinp.data(), fdw.data(), fd.data(), fx.data(), fw.data(), frstd.data(), N,
                         C);
  expect_bits("out vs fp32 kernel rounded", dout_g.to_host(), narrow(fout.to_host()));
  EXPECT_EQ(drstd.to_host(), frstd.to_host()) << "rstd vs fp32 kernel";
  expect_bits("dinp vs fp32 kernel rounded", ddinp.to_host(), narrow(fdinp.to_host()));
  EXPECT_EQ(ddw.to_host(), fdw.to_host()) << "dw vs fp32 kernel";

  const Bf a = rand_bf(NC, 21, -2.0, 2.0);
  DeviceBuffer<bf16> da(a), res(bnans(NC)), out_u(bnans(NC)), res_f(bnans(NC)), out_f(bnans(NC));
  DeviceBuffer<float> rstd_u(nans(N)), rstd_f(nans(N));
  be.residual_forward(res.data(), da.data(), dx.data(), NC);
  be.rmsnorm_forward(out_u.data(), rstd_u.data(), res.data(), dwt.data(), N, C, eps);
  be.residual_rmsnorm_forward(res_f.data(), out_f.data(), rstd_f.data(), da.data(), dx.data(),
                              dwt.data(), N, C, eps);
  expect_bits("fused res", res_f.to_host(), res.to_host());
  expect_bits("fused out", out_f.to_host(), out_u.to_host());
  EXPECT_EQ(rstd_f.to_host(), rstd_u.to_host());
}

TEST(CudaBf16, Rmsnorm) {
  SKIP_WITHOUT_DEVICE();
  check_rmsnorm(37, 771);
  check_rmsnorm(37, 768);
  check_rmsnorm(1, 1);
  check_rmsnorm(130, 96);
}

// ---- encoder ------------------------------------------------------------------------------------

// Forward: one fp32 add, rounded (bits of the spec). Backward: dwte, dwpe float, each element's
// widened terms summed in (b, t) order as on the CPU: the spec's bits.
TEST(CudaBf16, Encoder) {
  SKIP_WITHOUT_DEVICE();
  for (bool with_wpe : {true, false}) {
    SCOPED_TRACE(with_wpe ? "wte + wpe" : "wte only");
    const int B = 3, T_ = 37, C = 70, V = 50;
    const size_t BT = (size_t)B * T_;
    const std::vector<int32_t> tokens =
        rand_tokens(BT, V, 80);  // repeats: several positions per token
    const Bf wte = rand_bf((size_t)V * C, 81), wpe = rand_bf((size_t)T_ * C, 82),
             dout = rand_bf(BT * C, 83);
    const FVec dwte0 = to_f(rand_vec((size_t)V * C, 84)),
               dwpe0 = to_f(rand_vec((size_t)T_ * C, 85));
    FVec out_cf(BT * C), dwte_c = dwte0, dwpe_c = dwpe0;
    const FVec wte_f = widen(wte), wpe_f = widen(wpe), dout_f = widen(dout);
    spec::f32().encoder_forward(out_cf.data(), tokens.data(), wte_f.data(),
                                with_wpe ? wpe_f.data() : nullptr, B, T_, C);
    spec::f32().encoder_backward(dwte_c.data(), with_wpe ? dwpe_c.data() : nullptr, dout_f.data(),
                                 tokens.data(), B, T_, C);
    DeviceBuffer<int32_t> dtok(tokens);
    DeviceBuffer<bf16> dwte(wte), dwpe(wpe), ddout(dout), dout_g(bnans(BT * C));
    DeviceBuffer<float> ddwte(dwte0), ddwpe(dwpe0);
    const ops::Backend<bf16>& be = cuda::backend_bf16();
    be.encoder_forward(dout_g.data(), dtok.data(), dwte.data(), with_wpe ? dwpe.data() : nullptr, B,
                       T_, C);
    be.encoder_backward(ddwte.data(), with_wpe ? ddwpe.data() : nullptr, ddout.data(),
                        tokens.data(), B, T_, C);
    expect_bits("out", dout_g.to_host(), narrow(out_cf));
    EXPECT_EQ(ddwte.to_host(), dwte_c) << "dwte";
    EXPECT_EQ(ddwpe.to_host(), dwpe_c) << "dwpe";
  }
}

// ---- matmul -------------------------------------------------------------------------------------
// bf16 operands make every product exact in fp32, so only the fp32 sums err (gamma(K) sum |terms|,
// test_cuda_matmul.cpp's bounds with no operand error); out and dinp then round once to bf16, dw
// and dbias stay float (accumulated onto dw0, db0).

struct MatmulShape {
  int N, C, OC;
};

void check_matmul(const MatmulShape& sh, bool with_bias) {
  const int N = sh.N, C = sh.C, OC = sh.OC;
  SCOPED_TRACE("N = " + std::to_string(N) + ", C = " + std::to_string(C) +
               ", OC = " + std::to_string(OC) + (with_bias ? ", bias" : ", no bias"));
  const Tol t = tol_f32();
  const Bf inp = rand_bf((size_t)N * C, 41), w = rand_bf((size_t)OC * C, 42),
           bias = rand_bf(OC, 43), dout = rand_bf((size_t)N * OC, 44);
  const FVec dw0 = to_f(rand_vec((size_t)OC * C, 45)), db0 = to_f(rand_vec(OC, 46));
  const double A = max_abs(wide_d(inp)), W = max_abs(wide_d(w)), G = max_abs(wide_d(dout));
  const double Bm = with_bias ? max_abs(wide_d(bias)) : 0.0;

  FVec out_cf((size_t)N * OC), dinp_cf((size_t)N * C), dw_c = dw0, db_c = db0;
  const FVec inp_f = widen(inp), w_f = widen(w), bias_f = widen(bias), dout_f = widen(dout);
  spec::f32().matmul_forward(out_cf.data(), inp_f.data(), w_f.data(),
                             with_bias ? bias_f.data() : nullptr, N, C, OC);
  spec::f32().matmul_backward(dinp_cf.data(), dw_c.data(), with_bias ? db_c.data() : nullptr,
                              dout_f.data(), inp_f.data(), w_f.data(), N, C, OC);

  const ops::Backend<bf16>& be = cuda::backend_bf16();
  DeviceBuffer<bf16> d_inp(inp), d_w(w), d_bias(bias), d_dout(dout), d_out(bnans((size_t)N * OC)),
      d_dinp(bnans((size_t)N * C));
  DeviceBuffer<float> d_dw(dw0), d_db(db0);
  be.matmul_forward(d_out.data(), d_inp.data(), d_w.data(), with_bias ? d_bias.data() : nullptr, N,
                    C, OC);
  be.matmul_backward(d_dinp.data(), d_dw.data(), with_bias ? d_db.data() : nullptr, d_dout.data(),
                     d_inp.data(), d_w.data(), N, C, OC);
  expect_close_bf("out", d_out.to_host(), narrow(out_cf),
                  kBoth * t.gamma(C + 1) * (C * A * W + Bm));
  expect_close_bf("dinp", d_dinp.to_host(), narrow(dinp_cf), kBoth * t.gamma(OC) * OC * G * W);
  expect_close("dw", d_dw.to_host(), dw_c,
               kBoth * t.gamma(N + 1) * (N * G * A + max_abs(to_d(dw0))));
  if (with_bias) {
    expect_close("dbias", d_db.to_host(), db_c,
                 kBoth * t.gamma(N + 1) * (N * G + max_abs(to_d(db0))));
  } else {
    EXPECT_EQ(d_db.to_host(), db0) << "no dbias asked: left alone";
  }
  // dinp may be skipped (the first layer's input): dw still accumulates, by the same GEMM.
  DeviceBuffer<float> d_dw2(dw0);
  be.matmul_backward(nullptr, d_dw2.data(), nullptr, d_dout.data(), d_inp.data(), d_w.data(), N, C,
                     OC);
  EXPECT_EQ(d_dw2.to_host(), d_dw.to_host()) << "dw without dinp";
}

TEST(CudaBf16, Matmul) {
  SKIP_WITHOUT_DEVICE();
  EXPECT_EQ(cuda::backend_bf16().matmul_precision, ops::MatmulPrecision::bf16);
  for (const MatmulShape& sh :
       {MatmulShape{37, 67, 131}, MatmulShape{256, 768, 512}, MatmulShape{1, 1, 1}})
    for (bool with_bias : {true, false}) check_matmul(sh, with_bias);
}

// ---- the MLP's GEMMs fused with GELU (matmul_gelu_forward, matmul_dgelu_backward) ---------------
// The spec: the float GEMM, GELU on its float result, each bf16 output rounded once. The GPU:
// cuBLASLt's GELU_AUX_BIAS and DGELU epilogues on the fp32 result (the emulation computes GELU as
// elementwise.cu does), or, where the epilogue does not apply (OC or C not a multiple of 8, or the
// epilogues turned off), the two ops in turn, whose GELU reads pre rounded. Bounds: the GEMM's
// (check_matmul above) through GELU, whose slope is at most kGeluSlope; GELU's own fp32 bound
// (op_tolerance.h); one bf16 rounding on each side; and, for the two-op path, the rounding of its
// intermediate (u |pre| through GELU forward, u |dout w| backward).
constexpr double kGeluSlope = 1.13;  // max |gelu'(x)| of the tanh form, at x near 1.5

struct MlpResult {
  Bf out, pre, dinp;
  FVec dw, db;
};

MlpResult run_mlp_fused(const ops::Backend<bf16>& be, const Bf& inp, const Bf& w, const Bf& bias, const Bf& dout,
                        const Bf& pre_in, const FVec& dw0, const FVec& db0, int N, int C, int OC) {
  DeviceBuffer<bf16> d_inp(inp), d_w(w), d_bias(bias), d_out(bnans((size_t)N * OC)), d_pre(bnans((size_t)N * OC));
  be.matmul_gelu_forward(d_out.data(), d_pre.data(), d_inp.data(), d_w.data(), d_bias.data(), N, C, OC);
  // The backward of a layer with the same shapes (inp (N, C), w (OC, C)) whose input was
  // gelu(pre_in), pre_in (N, C).
  DeviceBuffer<bf16> d_dout(dout), d_pre_in(pre_in), d_x(inp), d_dinp(bnans((size_t)N * C));
  DeviceBuffer<float> d_dw(dw0), d_db(db0);
  be.matmul_dgelu_backward(d_dinp.data(), d_dw.data(), d_db.data(), d_dout.data(), d_x.data(), d_w.data(),
                           d_pre_in.data(), N, C, OC);
  return {d_out.to_host(), d_pre.to_host(), d_dinp.to_host(), d_dw.to_host(), d_db.to_host()};
}

void check_mlp_fused(int N, int C, int OC) {
  SCOPED_TRACE("N = " + std::to_string(N) + ", C = " + std::to_string(C) + ", OC = " + std::to_string(OC));
  const Tol t = tol_f32();
  const Bf inp = rand_bf((size_t)N * C, 61), w = rand_bf((size_t)OC * C, 62), bias = rand_bf(OC, 63),
           dout = rand_bf((size_t)N * OC, 64), pre_in = rand_bf((size_t)N * C, 65, -4.0, 4.0);
  const FVec dw0 = to_f(rand_vec((size_t)OC * C, 66)), db0 = to_f(rand_vec(OC, 67));
  const double A = max_abs(wide_d(inp)), W = max_abs(wide_d(w)), Bm = max_abs(wide_d(bias)),
               G = max_abs(wide_d(dout));
  // The spec, and its float results before rounding (for the bounds).
  const ops::Backend<bf16>& cpu = spec::cpu();
  Bf out_c((size_t)N * OC), pre_c((size_t)N * OC), dinp_c((size_t)N * C);
  FVec dw_c = dw0, db_c = db0;
  cpu.matmul_gelu_forward(out_c.data(), pre_c.data(), inp.data(), w.data(), bias.data(), N, C, OC);
  cpu.matmul_dgelu_backward(dinp_c.data(), dw_c.data(), db_c.data(), dout.data(), inp.data(), w.data(), pre_in.data(),
                            N, C, OC);
  const FVec inp_f = widen(inp), w_f = widen(w), bias_f = widen(bias), dout_f = widen(dout);
  FVec pre_f((size_t)N * OC), g_f((size_t)N * C), scratch_dw((size_t)OC * C, 0.0f);
  spec::f32().matmul_forward(pre_f.data(), inp_f.data(), w_f.data(), bias_f.data(), N, C, OC);
  spec::f32().matmul_backward(g_f.data(), scratch_dw.data(), nullptr, dout_f.data(), inp_f.data(), w_f.data(), N, C,
                              OC);
  Vec out_r((size_t)N * OC);
  ops::ref::gelu_forward(out_r.data(), to_d(pre_f).data(), out_r.size());
  const GeluTolerance gf = gelu_tolerance(to_d(pre_f), Vec(pre_f.size(), 0.0), out_r, t);
  Vec out_r2((size_t)N * C);
  ops::ref::gelu_forward(out_r2.data(), wide_d(pre_in).data(), out_r2.size());
  const GeluTolerance gb = gelu_tolerance(wide_d(pre_in), to_d(g_f), out_r2, t);
  const double e_fwd = kBoth * t.gamma(C + 1) * (C * A * W + Bm), e_bwd = kBoth * t.gamma(OC) * OC * G * W;
  Vec tol_out(out_r.size()), tol_dinp(out_r2.size());
  for (size_t i = 0; i < tol_out.size(); ++i)
    tol_out[i] = kGeluSlope * (e_fwd + kU * std::abs((double)pre_f[i])) + kBoth * gf.out[i];
  for (size_t i = 0; i < tol_dinp.size(); ++i)
    tol_dinp[i] = kGeluSlope * (e_bwd + kU * std::abs((double)g_f[i])) + kBoth * gb.dinp[i];

  for (bool epilogues : {true, false}) {
    SCOPED_TRACE(epilogues ? "epilogues on" : "epilogues off");
    cuda::set_gelu_epilogues(epilogues);
    const MlpResult g = run_mlp_fused(cuda::backend_bf16(), inp, w, bias, dout, pre_in, dw0, db0, N, C, OC);
    expect_close_bf("pre", g.pre, pre_c, e_fwd);
    expect_close_bf("out", g.out, out_c, tol_out);
    expect_close_bf("dinp", g.dinp, dinp_c, tol_dinp);
    expect_close("dw", g.dw, dw_c, kBoth * t.gamma(N + 1) * (N * G * A + max_abs(to_d(dw0))));
    expect_close("db", g.db, db_c, kBoth * t.gamma(N + 1) * (N * G + max_abs(to_d(db0))));
  }
  cuda::set_gelu_epilogues(true);
}

TEST(CudaBf16, MatmulGeluFusedFollowsTheSpec) {
  SKIP_WITHOUT_DEVICE();
  check_mlp_fused(64, 96, 256);   // OC and C multiples of 8: the epilogues
  check_mlp_fused(37, 67, 131);   // not: the two ops in turn
  check_mlp_fused(1, 8, 8);
}

// With the epilogues, GELU reads the GEMM's unrounded result, so some outputs differ from the
// two-op path's (which rounds pre first): the epilogue really runs. On a GPU a failure here
// means cuBLASLt offered no algorithm for it (the fallback ran).
TEST(CudaBf16, MatmulGeluEpiloguesSkipTheIntermediateRounding) {
  SKIP_WITHOUT_DEVICE();
  const int N = 64, C = 96, OC = 256;
  const Bf inp = rand_bf((size_t)N * C, 71), w = rand_bf((size_t)OC * C, 72), bias = rand_bf(OC, 73),
           dout = rand_bf((size_t)N * OC, 74), pre_in = rand_bf((size_t)N * C, 75, -4.0, 4.0);
  const FVec dw0((size_t)OC * C, 0.0f), db0(OC, 0.0f);
  cuda::set_gelu_epilogues(true);
  const MlpResult fused = run_mlp_fused(cuda::backend_bf16(), inp, w, bias, dout, pre_in, dw0, db0, N, C, OC);
  cuda::set_gelu_epilogues(false);
  const MlpResult plain = run_mlp_fused(cuda::backend_bf16(), inp, w, bias, dout, pre_in, dw0, db0, N, C, OC);
  cuda::set_gelu_epilogues(true);
  EXPECT_GT(count_differ(fused.out, plain.out), 0u) << "forward: GELU_AUX_BIAS not used";
  EXPECT_GT(count_differ(fused.dinp, plain.dinp), 0u) << "backward: DGELU not used";
  std::printf("[ info ] GELU epilogues: %zu of %zu outputs and %zu of %zu input gradients differ from the two-op path\n",
              count_differ(fused.out, plain.out), fused.out.size(), count_differ(fused.dinp, plain.dinp),
              fused.dinp.size());
}

// ---- classifier ---------------------------------------------------------------------------------
// Against the exact (double) classifier on the same bf16 inputs, GPU and spec alike. The bounds are
// test_cuda_matmul.cpp's Tf32AndBf16WithinTheirBound (derivation there) with the operand error e
// of bf16 products: the logits' operands are exact here, but dlogits are rounded to bf16 before
// the dx and dw GEMMs (one operand of every product of the backward), which e covers. dx is stored
// as bf16: one more rounding, u |dx|.

// |got - exact| <= tol + u |got| for a bf16 output.
void expect_near_exact_bf(const char* what, const Bf& got, const Vec& exact, double tol) {
  const FVec g = widen(got);
  Vec tols(g.size());
  for (size_t i = 0; i < g.size(); ++i) tols[i] = tol + kU * std::abs((double)g[i]);
  expect_close(what, g, to_f(exact), tols);
}

TEST(CudaBf16, Classifier) {
  SKIP_WITHOUT_DEVICE();
  const int N = 70, C = 96, V = 1031;
  const Bf x = rand_bf((size_t)N * C, 61), w = rand_bf((size_t)V * C, 62);
  const Vec dw0 = rand_vec((size_t)V * C, 63), dloss = rand_vec(N, 64, 0.5, 2.0);
  std::vector<int32_t> targets = rand_tokens(N, V, 65);
  targets[4] = -1;  // ignored: loss 0, no gradient
  const Vec xd = wide_d(x), wd = wide_d(w);
  Vec losses_x(N), dx_x((size_t)N * C), dw_x = dw0, logits_x((size_t)N * V);
  ops::ref::classifier_ce_forward(losses_x.data(), dx_x.data(), dw_x.data(), xd.data(), wd.data(),
                                  targets.data(), dloss.data(), N, C, V);
  ops::ref::classifier_logits(logits_x.data(), xd.data(), wd.data(), N, C, V);
  const Tol t = tol_f32();
  const double X = max_abs(xd), W = max_abs(wd), D = max_abs(dloss);
  const double e = test::product_error(ops::MatmulPrecision::bf16),
               dl = (e + t.gamma(C)) * C * X * W;
  const double soft = t.gamma(16 * V), sum_ddl = (2 * dl + soft) * D;
  const double tol_loss = 2 * dl + soft * (1 + max_abs(losses_x) + C * X * W);
  const double tol_dx = sum_ddl * W + (e + t.gamma(V)) * 2 * D * W;
  const double tol_dw = sum_ddl * X + (e + t.gamma(N + 1)) * (2 * D * X * N + max_abs(dw0));
  const double tol_logits = t.gamma(C) * C * X * W;

  // The spec once.
  FVec losses_c(N), dx_cf((size_t)N * C), dw_c = to_f(dw0), logits_c((size_t)N * V);
  const FVec dloss_f = to_f(dloss);
  const double total_c =
      spec::f32().classifier_ce_forward(losses_c.data(), dx_cf.data(), dw_c.data(), widen(x).data(),
                                        widen(w).data(), targets.data(), dloss_f.data(), N, C, V);
  spec::f32().classifier_logits(logits_c.data(), widen(x).data(), widen(w).data(), N, C, V);
  expect_close("spec losses vs exact", losses_c, to_f(losses_x), tol_loss);
  expect_near_exact_bf("spec dx vs exact", narrow(dx_cf), dx_x, tol_dx);
  expect_close("spec dw vs exact", dw_c, to_f(dw_x), tol_dw);

  const ops::Backend<bf16>& be = cuda::backend_bf16();
  // One chunk; chunks of 16 rows in one group (the logits workspace reused); and in groups of
  // two chunks (the dlogits buffer reused, dx and dw per group; the last group of 6 rows).
  for (const auto& [chunk, group] : {std::pair{0, 0}, std::pair{16, 0}, std::pair{16, 2}}) {
    SCOPED_TRACE("chunk rows " + std::to_string(chunk) + ", chunks per group " + std::to_string(group));
    cuda::set_classifier_chunk_rows(chunk);
    cuda::set_classifier_group_chunks(group);
    DeviceBuffer<bf16> d_x(x), d_w(w), d_dx(bnans((size_t)N * C));
    DeviceBuffer<float> d_dl(dloss_f), d_losses(nans(N)), d_dw(to_f(dw0)),
        d_logits(nans((size_t)N * V));
    DeviceBuffer<int32_t> d_t(targets);
    const double total =
        be.classifier_ce_forward(d_losses.data(), d_dx.data(), d_dw.data(), d_x.data(), d_w.data(),
                                 d_t.data(), d_dl.data(), N, C, V);
    const FVec losses_g = d_losses.to_host();
    const Bf dx_g = d_dx.to_host();
    const FVec dw_g = d_dw.to_host();
    expect_close("losses vs exact", losses_g, to_f(losses_x), tol_loss);
    expect_near_exact_bf("dx vs exact", dx_g, dx_x, tol_dx);
    expect_close("dw vs exact", dw_g, to_f(dw_x), tol_dw);
    EXPECT_LE(std::abs(total - total_c), kBoth * N * tol_loss) << "sum of losses";
    expect_close_bf("dx vs spec", dx_g, narrow(dx_cf), kBoth * tol_dx);
    expect_close("dw vs spec", dw_g, dw_c, kBoth * tol_dw);
    // Forward only: the same losses, dw untouched.
    DeviceBuffer<float> d_losses2(nans(N)), d_dw2(to_f(dw0));
    be.classifier_ce_forward(d_losses2.data(), nullptr, nullptr, d_x.data(), d_w.data(), d_t.data(),
                             nullptr, N, C, V);
    EXPECT_EQ(d_losses2.to_host(), losses_g) << "forward only: other losses";
    EXPECT_EQ(d_dw2.to_host(), to_f(dw0)) << "forward only must leave dw alone";
    be.classifier_logits(d_logits.data(), d_x.data(), d_w.data(), N, C, V);
    expect_close("logits vs spec", d_logits.to_host(), logits_c, kBoth * tol_logits);
    // The fp32-storage op in the bf16 mode on the widened values makes the same cuBLAS calls for
    // the logits and dw (its rounded copies of x and w are these bf16 values) and the same row
    // kernel: the same losses and dw, bit for bit. Its dx is an fp32 GEMM output, ours a bf16 one:
    // rounded, the same bits under the emulation; cuBLAS may order the sums of the two otherwise.
    DeviceBuffer<float> f_x(widen(x)), f_w(widen(w)), f_losses(nans(N)), f_dx(nans((size_t)N * C)),
        f_dw(to_f(dw0));
    cuda::classifier_ce_forward(f_losses.data(), f_dx.data(), f_dw.data(), f_x.data(), f_w.data(),
                                d_t.data(), d_dl.data(), N, C, V, 0, ops::MatmulPrecision::bf16);
    EXPECT_EQ(losses_g, f_losses.to_host()) << "losses vs the fp32-storage op";
    EXPECT_EQ(dw_g, f_dw.to_host()) << "dw vs the fp32-storage op";
#ifdef LMF_CUDA_EMU
    expect_bits("dx vs the fp32-storage op rounded", dx_g, narrow(f_dx.to_host()));
#endif
    cuda::set_classifier_chunk_rows(0);
    cuda::set_classifier_group_chunks(0);
  }
}

// ---- attention ----------------------------------------------------------------------------------
// op_tolerance.h's attention_tolerance on the widened inputs, with Tol::op = 2u + u^2 per product
// term (the spec rounds q, k, v, dout, P and dS to bf16 before their products, as the tensor-core
// kernels do; on the fp32 kernels' head sizes only the inputs are bf16, within the same bound) and
// the online softmax's chunks of 32 keys (the smallest any kernel steps over: the largest bound).
// Outputs are stored bf16: plus u (|gpu| + |cpu|). The backward of both sides reads the same
// inputs: dout, q, k, v, and the GPU forward's out and lse.

Tol bf16_products() {
  Tol t = tol_f32();
  const double u = ops::operand_unit_roundoff(ops::MatmulPrecision::bf16);
  t.op =
      2 * u + u * u;  // both operands of each product rounded to nearest (test_cuda_attention.cpp)
  return t;
}

// FlashAttention's rule (test_cuda_attention.cpp's expect_within_twice_emulation): against the
// exact op, the GPU's largest error in a tensor is at most twice the CPU spec's (the same bf16
// roundings), plus the fp32 bound for the sums' other order. Tighter than the bf16 bound, which
// covers every rounding at its worst at once.
void expect_within_twice_spec(const char* what, const Bf& gpu, const Bf& cpu, const Vec& exact,
                              const Vec& f32_bound) {
  double e_gpu = 0, e_cpu = 0, slack = 0;
  for (size_t i = 0; i < exact.size(); ++i) {
    e_gpu = std::max(e_gpu, std::abs((double)float(gpu[i]) - exact[i]));
    e_cpu = std::max(e_cpu, std::abs((double)float(cpu[i]) - exact[i]));
    slack = std::max(slack, f32_bound[i]);
  }
  EXPECT_LE(e_gpu, 2 * e_cpu + slack)
      << what << ": the GPU's error " << e_gpu << " against the spec's " << e_cpu;
}

struct GqaShape {
  int B, T, NH, KVH, hs;
};

void check_attention_gqa(const GqaShape& sh) {
  const int B = sh.B, T_ = sh.T, NH = sh.NH, KVH = sh.KVH, hs = sh.hs;
  SCOPED_TRACE("B = " + std::to_string(B) + ", T = " + std::to_string(T_) +
               ", NH = " + std::to_string(NH) + ", KVH = " + std::to_string(KVH) +
               ", hs = " + std::to_string(hs));
  const size_t BT = (size_t)B * T_, Q = (size_t)NH * hs, KV = (size_t)KVH * hs,
               L = (size_t)B * NH * T_;
  const Bf q = rand_bf(BT * Q, 30), k = rand_bf(BT * KV, 31), v = rand_bf(BT * KV, 32),
           dout = rand_bf(BT * Q, 33);
  const Vec qd = wide_d(q), kd = wide_d(k), vd = wide_d(v), gd = wide_d(dout);
  Vec out_x(BT * Q), lse_x(L);
  ops::ref::attention_gqa_forward(out_x.data(), lse_x.data(), qd.data(), kd.data(), vd.data(), B,
                                  T_, NH, KVH, hs);
  AttentionTolerance tol =
      attention_tolerance(qd, kd, vd, gd, out_x, lse_x, B, T_, NH, KVH, hs, bf16_products(), 32);
  for (Vec* x : {&tol.out, &tol.lse, &tol.dq, &tol.dk, &tol.dv})
    for (double& e : *x) e *= kBoth;

  const ops::Backend<bf16>& be = cuda::backend_bf16();
  DeviceBuffer<bf16> d_q(q), d_k(k), d_v(v), d_dout(dout), d_out(bnans(BT * Q)),
      d_dq(bnans(BT * Q)), d_dk(bnans(BT * KV)), d_dv(bnans(BT * KV));
  DeviceBuffer<float> d_lse(nans(L));
  be.attention_gqa_forward(d_out.data(), d_lse.data(), d_q.data(), d_k.data(), d_v.data(), B, T_,
                           NH, KVH, hs);
  be.attention_gqa_backward(d_dq.data(), d_dk.data(), d_dv.data(), d_dout.data(), d_q.data(),
                            d_k.data(), d_v.data(), d_out.data(), d_lse.data(), B, T_, NH, KVH, hs);
  const Bf out_g = d_out.to_host();
  const FVec lse_g = d_lse.to_host();

  const FVec qf = widen(q), kf = widen(k), vf = widen(v), gf = widen(dout), out_gf = widen(out_g);
  FVec out_c(BT * Q), lse_c(L), dq_c(BT * Q), dk_c(BT * KV), dv_c(BT * KV);
  spec::f32().attention_gqa_forward(out_c.data(), lse_c.data(), qf.data(), kf.data(), vf.data(), B,
                                    T_, NH, KVH, hs);
  spec::f32().attention_gqa_backward(dq_c.data(), dk_c.data(), dv_c.data(), gf.data(), qf.data(),
                                     kf.data(), vf.data(), out_gf.data(), lse_g.data(), B, T_, NH,
                                     KVH, hs);
  expect_close_bf("out", out_g, narrow(out_c), tol.out);
  expect_close("lse", lse_g, lse_c, tol.lse);
  expect_close_bf("dq", d_dq.to_host(), narrow(dq_c), tol.dq);
  expect_close_bf("dk", d_dk.to_host(), narrow(dk_c), tol.dk);
  expect_close_bf("dv", d_dv.to_host(), narrow(dv_c), tol.dv);

  // Against the exact op (the backward on the exact forward), the rule above.
  Vec dq_x(BT * Q), dk_x(BT * KV), dv_x(BT * KV);
  ops::ref::attention_gqa_backward(dq_x.data(), dk_x.data(), dv_x.data(), gd.data(), qd.data(),
                                   kd.data(), vd.data(), out_x.data(), lse_x.data(), B, T_, NH, KVH,
                                   hs);
  const AttentionTolerance f32 =
      attention_tolerance(qd, kd, vd, gd, out_x, lse_x, B, T_, NH, KVH, hs, tol_f32(), 32);
  expect_within_twice_spec("out vs exact", out_g, narrow(out_c), out_x, f32.out);
  expect_within_twice_spec("dq vs exact", d_dq.to_host(), narrow(dq_c), dq_x, f32.dq);
  expect_within_twice_spec("dk vs exact", d_dk.to_host(), narrow(dk_c), dk_x, f32.dk);
  expect_within_twice_spec("dv vs exact", d_dv.to_host(), narrow(dv_c), dv_x, f32.dv);

  // The fp32-storage kernels of the same precision on the widened values (the backward on the
  // bf16 forward's out), rounded: the same bits. The tensor-core kernels round their fp32 tiles to
  // bf16 as they stage them, which leaves widened bf16 values as they are.
  DeviceBuffer<float> f_q(qf), f_k(kf), f_v(vf), f_g(gf), f_out(nans(BT * Q)), f_lse(nans(L)),
      f_outg(out_gf), f_dq(nans(BT * Q)), f_dk(nans(BT * KV)), f_dv(nans(BT * KV));
  cuda::attention_gqa_forward(f_out.data(), f_lse.data(), f_q.data(), f_k.data(), f_v.data(), B, T_,
                              NH, KVH, hs, 0, ops::MatmulPrecision::bf16);
  cuda::attention_gqa_backward(f_dq.data(), f_dk.data(), f_dv.data(), f_g.data(), f_q.data(),
                               f_k.data(), f_v.data(), f_outg.data(), d_lse.data(), B, T_, NH, KVH,
                               hs, 0, ops::MatmulPrecision::bf16);
  expect_bits("out vs fp32 kernel rounded", out_g, narrow(f_out.to_host()));
  EXPECT_EQ(lse_g, f_lse.to_host()) << "lse vs fp32 kernel";
  expect_bits("dq vs fp32 kernel rounded", d_dq.to_host(), narrow(f_dq.to_host()));
  expect_bits("dk vs fp32 kernel rounded", d_dk.to_host(), narrow(f_dk.to_host()));
  expect_bits("dv vs fp32 kernel rounded", d_dv.to_host(), narrow(f_dv.to_host()));

  // The table's bf16 precision takes the tensor-core kernels where they take the head size: their
  // products round P, so the output differs from the fp32 kernels' on the same bf16 inputs.
  if (hs % 16 == 0 && hs <= 128 && T_ > 1) {
    DeviceBuffer<bf16> d_out32(bnans(BT * Q));
    DeviceBuffer<float> d_lse32(nans(L));
    cuda::attention_gqa_forward(d_out32.data(), d_lse32.data(), d_q.data(), d_k.data(), d_v.data(),
                                B, T_, NH, KVH, hs, 0, ops::MatmulPrecision::fp32);
    EXPECT_GT(count_differ(d_out32.to_host(), out_g), 0u) << "bf16 attention ran the fp32 kernels";
  }
}

// Every launch path: the tensor-core kernels (head sizes 16 to 128 in steps of 16; above 64 the
// backward's 32-row steps and split dk / dv kernels), the tiled fp32 kernels (other head sizes up
// to 128) and the row kernels (above 128, or chosen).
TEST(CudaBf16, AttentionGqa) {
  SKIP_WITHOUT_DEVICE();
  for (const GqaShape& sh :
       {GqaShape{2, 37, 4, 2, 16}, GqaShape{1, 70, 2, 1, 64}, GqaShape{1, 33, 2, 2, 128},
        GqaShape{2, 33, 3, 3, 24}, GqaShape{1, 20, 2, 1, 160}, GqaShape{1, 1, 1, 1, 16}})
    check_attention_gqa(sh);
  cuda::set_attention_kernel(cuda::AttentionKernel::rowwise);
  check_attention_gqa(GqaShape{2, 33, 3, 3, 24});
  cuda::set_attention_kernel(cuda::AttentionKernel::tiled);
}

// Packed qkv (B, T, 3C): the same kernels through the packed strides.
TEST(CudaBf16, AttentionPacked) {
  SKIP_WITHOUT_DEVICE();
  for (const int hs : {64, 24}) {
    const int B = 2, T_ = 40, NH = 2, C = NH * hs;
    SCOPED_TRACE("hs = " + std::to_string(hs));
    const size_t BT = (size_t)B * T_, L = (size_t)B * NH * T_;
    const Bf qkv = rand_bf(BT * 3 * C, 34), dout = rand_bf(BT * C, 35);
    const Qkv sep = split_qkv(wide_d(qkv), BT, C);
    const Vec gd = wide_d(dout);
    Vec out_x(BT * C), lse_x(L);
    ops::ref::attention_gqa_forward(out_x.data(), lse_x.data(), sep.q.data(), sep.k.data(),
                                    sep.v.data(), B, T_, NH, NH, hs);
    AttentionTolerance tol = attention_tolerance(sep.q, sep.k, sep.v, gd, out_x, lse_x, B, T_, NH,
                                                 NH, hs, bf16_products(), 32);
    for (Vec* x : {&tol.out, &tol.lse, &tol.dq, &tol.dk, &tol.dv})
      for (double& e : *x) e *= kBoth;
    const Vec tol_dqkv = join_qkv(tol.dq, tol.dk, tol.dv, BT, C);

    const ops::Backend<bf16>& be = cuda::backend_bf16();
    DeviceBuffer<bf16> d_qkv(qkv), d_dout(dout), d_out(bnans(BT * C)), d_dqkv(bnans(BT * 3 * C));
    DeviceBuffer<float> d_lse(nans(L));
    be.attention_forward(d_out.data(), d_lse.data(), d_qkv.data(), B, T_, C, NH);
    be.attention_backward(d_dqkv.data(), d_dout.data(), d_qkv.data(), d_out.data(), d_lse.data(), B,
                          T_, C, NH);
    const Bf out_g = d_out.to_host();
    const FVec lse_g = d_lse.to_host(), qkv_f = widen(qkv), gf = widen(dout), out_gf = widen(out_g);
    FVec out_c(BT * C), lse_c(L), dqkv_c(BT * 3 * C);
    spec::f32().attention_forward(out_c.data(), lse_c.data(), qkv_f.data(), B, T_, C, NH);
    spec::f32().attention_backward(dqkv_c.data(), gf.data(), qkv_f.data(), out_gf.data(),
                                   lse_g.data(), B, T_, C, NH);
    expect_close_bf("out", out_g, narrow(out_c), tol.out);
    expect_close("lse", lse_g, lse_c, tol.lse);
    const Bf dqkv_g = d_dqkv.to_host();
    expect_close_bf("dqkv", dqkv_g, narrow(dqkv_c), tol_dqkv);
    // Against the exact op, FlashAttention's rule (expect_within_twice_spec).
    Vec dq_x(BT * C), dk_x(BT * C), dv_x(BT * C);
    ops::ref::attention_gqa_backward(dq_x.data(), dk_x.data(), dv_x.data(), gd.data(), sep.q.data(),
                                     sep.k.data(), sep.v.data(), out_x.data(), lse_x.data(), B, T_,
                                     NH, NH, hs);
    const AttentionTolerance f32 = attention_tolerance(sep.q, sep.k, sep.v, gd, out_x, lse_x, B, T_,
                                                       NH, NH, hs, tol_f32(), 32);
    expect_within_twice_spec("out vs exact", out_g, narrow(out_c), out_x, f32.out);
    expect_within_twice_spec("dqkv vs exact", dqkv_g, narrow(dqkv_c),
                             join_qkv(dq_x, dk_x, dv_x, BT, C),
                             join_qkv(f32.dq, f32.dk, f32.dv, BT, C));
  }
}

// One query per sequence against its KV cache: 3 sequences, rows of ld > KVH hs, caches seq apart,
// the first `shared` positions read from sequence 0's cache, queries q_ld apart. Per sequence b and
// head h: the scores' error ds = gamma(hs) scale max_t sum_d |q_d k_td|; lse's: ds + gamma(T) +
// gamma(4) |lse|; p_t's relative error ds + that + gamma(16); y = sum_t p_t v_t: V (dp + gamma(T))
// (test_cuda_ops.cpp's attention bound for one row), times kBoth, plus the rounding of y.
TEST(CudaBf16, AttentionDecode) {
  SKIP_WITHOUT_DEVICE();
  const Tol t = tol_f32();
  const int T_ = 45, NH = 4, KVH = 2, hs = 24, ld = KVH * hs + 8, B = 3, shared = 20, Q = NH * hs, q_ld = Q + 4;
  const size_t seq = size_t(T_) * ld + 7, cache = (B - 1) * seq + size_t(T_) * ld;
  const ops::DecodeLayout lay{.B = B, .T = T_, .shared = shared, .ld = ld, .seq = seq, .q_ld = q_ld};
  const Bf q = rand_bf(size_t(B) * q_ld, 36), k = rand_bf(cache, 37), v = rand_bf(cache, 38);
  const Vec qd = wide_d(q), kd = wide_d(k), vd = wide_d(v);
  const double scale = 1 / std::sqrt((double)hs);
  Vec tol_y(size_t(B) * Q);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h) {
      const double* qh = qd.data() + size_t(b) * q_ld + size_t(h) * hs;
      auto at = [&](int tt) { return (tt < shared ? 0 : b * seq) + size_t(tt) * ld + size_t(h / (NH / KVH)) * hs; };
      double ds = 0, mx = -1e300, V = 0;
      Vec sc(T_);
      for (int tt = 0; tt < T_; ++tt) {
        double sab = 0, dot = 0;
        for (int d = 0; d < hs; ++d) {
          sab += std::abs(qh[d] * kd[at(tt) + d]);
          dot += qh[d] * kd[at(tt) + d];
          V = std::max(V, std::abs(vd[at(tt) + d]));
        }
        ds = std::max(ds, t.gamma(hs) * scale * sab);
        sc[tt] = dot * scale;
        mx = std::max(mx, sc[tt]);
      }
      double z = 0;
      for (double x : sc) z += std::exp(x - mx);
      const double lse = mx + std::log(z), dlse = ds + t.gamma(T_) + t.gamma(4) * std::abs(lse);
      for (int d = 0; d < hs; ++d)
        tol_y[size_t(b) * Q + size_t(h) * hs + d] = kBoth * V * (ds + dlse + t.gamma(16) + t.gamma(T_));
    }
  DeviceBuffer<bf16> d_q(q), d_k(k), d_v(v), d_y(bnans(size_t(B) * Q));
  DeviceBuffer<float> d_scratch(nans(size_t(B) * NH * T_));
  cuda::backend_bf16().attention_decode(d_y.data(), d_scratch.data(), d_q.data(), d_k.data(),
                                        d_v.data(), lay, NH, KVH, hs);
  FVec y_c(size_t(B) * Q), scratch_c(size_t(B) * NH * T_);
  spec::f32().attention_decode(y_c.data(), scratch_c.data(), widen(q).data(), widen(k).data(),
                               widen(v).data(), lay, NH, KVH, hs);
  expect_close_bf("y", d_y.to_host(), narrow(y_c), tol_y);
  DeviceBuffer<float> f_q(widen(q)), f_k(widen(k)), f_v(widen(v)), f_y(nans(size_t(B) * Q));
  cuda::attention_decode(f_y.data(), d_scratch.data(), f_q.data(), f_k.data(), f_v.data(), lay, NH,
                         KVH, hs);
  expect_bits("y vs fp32 kernel rounded", d_y.to_host(), narrow(f_y.to_host()));
}

// ---- the table ----------------------------------------------------------------------------------

// ---- 16-byte accesses (ops/cuda/pack.cuh) ------------------------------------------------------

// Inputs for one run of every kernel with 16-byte accesses, in storage type T. N C is a multiple of
// 8 (so aligned rows can take groups of 8), n is not (a tail of plain accesses).
constexpr int kVN = 5, kVC = 64;
constexpr size_t kVn = 1003;

template <class T>
std::vector<T> as_storage(const Vec& v) {
  if constexpr (std::is_same_v<T, float>) {
    return to_f(v);
  } else {
    return narrow(v);
  }
}

// A device copy of host values starting `offset` elements into its allocation, so that offset 1
// misaligns every pointer the kernels get.
template <class T>
struct Shifted {
  DeviceBuffer<T> buf;
  size_t offset, n;
  Shifted(const std::vector<T>& host, size_t off)
      : buf(host.size() + off), offset(off), n(host.size()) {
    LMF_CUDA_CHECK(
        cudaMemcpy(buf.data() + off, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  T* data() { return buf.data() + offset; }
  std::vector<T> to_host() const {
    std::vector<T> h(n);
    LMF_CUDA_CHECK(
        cudaMemcpy(h.data(), buf.data() + offset, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

// What every vectorised kernel wrote: the storage outputs, then the float ones (statistics, dw).
template <class T>
struct VecOutputs {
  std::vector<std::vector<T> > stored;
  std::vector<FVec> floats;
};

template <class T>
VecOutputs<T> run_vectorised_kernels(size_t offset) {
  const size_t NC = size_t(kVN) * kVC;
  const auto in = [&](size_t n, uint64_t stream, double lo = -1.0, double hi = 1.0) {
    return Shifted<T>(as_storage<T>(rand_vec(n, stream, lo, hi)), offset);
  };
  const auto out = [&](size_t n) { return Shifted<T>(as_storage<T>(Vec(n, 0.25)), offset); };
  const auto fout = [&](size_t n, uint64_t stream) {
    return Shifted<float>(to_f(rand_vec(n, stream)), offset);
  };
  VecOutputs<T> r;
  {  // elementwise, n values
    Shifted<T> a = in(kVn, 1, -3.0, 3.0), b = in(kVn, 2), g = in(kVn, 3, -6.0, 6.0), d = in(kVn, 4);
    Shifted<T> res = out(kVn), gf = out(kVn), gb = out(kVn), sf = out(kVn), sdg = out(kVn),
               sdu = out(kVn);
    cuda::residual_forward(res.data(), a.data(), b.data(), kVn);
    cuda::gelu_forward(gf.data(), g.data(), kVn);
    cuda::gelu_backward(gb.data(), g.data(), d.data(), kVn);
    cuda::swiglu_forward(sf.data(), g.data(), b.data(), kVn);
    cuda::swiglu_backward(sdg.data(), sdu.data(), d.data(), g.data(), b.data(), kVn);
    for (Shifted<T>* o : {&res, &gf, &gb, &sf, &sdg, &sdu}) r.stored.push_back(o->to_host());
    Shifted<float> master = fout(kVn, 5);
    Shifted<bf16> copy(Bf(kVn, bf16(0.0f)), offset);
    cuda::to_bf16(copy.data(), master.data(), kVn);
    const Bf c = copy.to_host();
    r.floats.push_back(widen(c));
  }
  {  // the norms' rows, N x C; gradients accumulate onto non-zero values
    Shifted<T> x = in(NC, 6, 1.0, 3.0), a = in(NC, 7), w = in(kVC, 8), bias = in(kVC, 9),
               dout = in(NC, 10);
    Shifted<T> ln = out(NC), lres = out(NC), lfused = out(NC), rms = out(NC), rres = out(NC),
               rfused = out(NC);
    Shifted<T> ldinp = in(NC, 11), rdinp = in(NC, 12);
    Shifted<float> mean = fout(kVN, 13), rstd = fout(kVN, 14), fmean = fout(kVN, 15),
                   frstd = fout(kVN, 16), rr = fout(kVN, 17), frr = fout(kVN, 18),
                   dw = fout(kVC, 19), db = fout(kVC, 20), rdw = fout(kVC, 21);
    cuda::layernorm_forward(ln.data(), mean.data(), rstd.data(), x.data(), w.data(), bias.data(),
                            kVN, kVC);
    cuda::layernorm_backward(ldinp.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                             mean.data(), rstd.data(), kVN, kVC);
    cuda::residual_layernorm_forward(lres.data(), lfused.data(), fmean.data(), frstd.data(),
                                     x.data(), a.data(), w.data(), bias.data(), kVN, kVC);
    cuda::rmsnorm_forward(rms.data(), rr.data(), x.data(), w.data(), kVN, kVC, 1e-5f);
    cuda::rmsnorm_backward(rdinp.data(), rdw.data(), dout.data(), x.data(), w.data(), rr.data(),
                           kVN, kVC);
    cuda::residual_rmsnorm_forward(rres.data(), rfused.data(), frr.data(), x.data(), a.data(),
                                   w.data(), kVN, kVC, 1e-5f);
    for (Shifted<T>* o : {&ln, &lres, &lfused, &rms, &rres, &rfused, &ldinp, &rdinp})
      r.stored.push_back(o->to_host());
    for (Shifted<float>* o : {&mean, &rstd, &fmean, &frstd, &rr, &frr, &dw, &db, &rdw})
      r.floats.push_back(o->to_host());
  }
  return r;
}

// Restores vectorised_access() as it was when the test began.
struct VectorisedAccessScope {
  bool was = cuda::vectorised_access();
  ~VectorisedAccessScope() { cuda::set_vectorised_access(was); }
};

template <class T>
void check_unaligned_pointers_take_the_plain_path() {
  VectorisedAccessScope scope;
  cuda::set_vectorised_access(true);
  const VecOutputs<T> vec = run_vectorised_kernels<T>(0), shifted = run_vectorised_kernels<T>(1);
  cuda::set_vectorised_access(false);
  const VecOutputs<T> plain = run_vectorised_kernels<T>(0);
  // Misaligned pointers (on a GPU a 16-byte access there would fault) run one element per
  // access: the plain path's bits, reductions included.
  ASSERT_EQ(shifted.stored.size(), plain.stored.size());
  for (size_t i = 0; i < plain.stored.size(); ++i) {
    SCOPED_TRACE("stored output " + std::to_string(i));
    if constexpr (std::is_same_v<T, float>) {
      EXPECT_EQ(shifted.stored[i], plain.stored[i]);
    } else {
      expect_bits("shifted vs plain", shifted.stored[i], plain.stored[i]);
    }
  }
  for (size_t i = 0; i < plain.floats.size(); ++i)
    EXPECT_EQ(shifted.floats[i], plain.floats[i]) << "float output " << i;
  // The elementwise kernels and the rounding copy give the same bits with 16-byte accesses
  // (the first 6 stored outputs and the first float one); the norms' sums run in another order.
  for (size_t i = 0; i < 6; ++i) {
    SCOPED_TRACE("elementwise output " + std::to_string(i));
    if constexpr (std::is_same_v<T, float>) {
      EXPECT_EQ(vec.stored[i], plain.stored[i]);
    } else {
      expect_bits("16-byte vs plain", vec.stored[i], plain.stored[i]);
    }
  }
  EXPECT_EQ(vec.floats[0], plain.floats[0]) << "to_bf16";
}

TEST(CudaBf16, UnalignedPointersTakeThePlainPath) {
  SKIP_WITHOUT_DEVICE();
  {
    SCOPED_TRACE("bf16");
    check_unaligned_pointers_take_the_plain_path<bf16>();
  }
  {
    SCOPED_TRACE("float");
    check_unaligned_pointers_take_the_plain_path<float>();
  }
}

// The tensor-core attention (attention_mma.cu) stages its tiles with 16-byte loads when every row
// is 16-byte aligned, else one element at a time; its dout . out row sums likewise. The staged
// values and the sums' order are the same, so all three runs give the same bits: 16-byte loads,
// the switch off, and pointers one element off alignment (on a GPU, and in the emulation, a
// 16-byte access there would fault).
template <class T>
std::vector<std::vector<T> > mma_attention_outputs(const GqaShape& sh, size_t offset, FVec* lse) {
  const int B = sh.B, T_ = sh.T, NH = sh.NH, KVH = sh.KVH, hs = sh.hs;
  const size_t BT = (size_t)B * T_, Q = (size_t)NH * hs, KV = (size_t)KVH * hs, L = (size_t)B * NH * T_;
  auto input = [](size_t n, uint64_t stream) {
    const Bf b = rand_bf(n, stream);
    if constexpr (std::is_same_v<T, float>) {
      return widen(b);
    } else {
      return b;
    }
  };
  auto nan_vec = [](size_t n) {
    if constexpr (std::is_same_v<T, float>) {
      return nans(n);
    } else {
      return bnans(n);
    }
  };
  Shifted<T> q(input(BT * Q, 40), offset), k(input(BT * KV, 41), offset), v(input(BT * KV, 42), offset),
      dout(input(BT * Q, 43), offset), out(nan_vec(BT * Q), offset), dq(nan_vec(BT * Q), offset),
      dk(nan_vec(BT * KV), offset), dv(nan_vec(BT * KV), offset);
  DeviceBuffer<float> d_lse(nans(L));
  constexpr auto bf16p = ops::MatmulPrecision::bf16;
  cuda::attention_gqa_forward(out.data(), d_lse.data(), q.data(), k.data(), v.data(), B, T_, NH, KVH, hs, 0, bf16p);
  cuda::attention_gqa_backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(), out.data(),
                               d_lse.data(), B, T_, NH, KVH, hs, 0, bf16p);
  *lse = d_lse.to_host();
  return {out.to_host(), dq.to_host(), dk.to_host(), dv.to_host()};
}

template <class T>
void check_mma_attention_staging(const GqaShape& sh) {
  SCOPED_TRACE("T = " + std::to_string(sh.T) + ", hs = " + std::to_string(sh.hs));
  VectorisedAccessScope scope;
  FVec lse_vec, lse_plain, lse_shifted;
  cuda::set_vectorised_access(true);
  const auto vec = mma_attention_outputs<T>(sh, 0, &lse_vec);
  const auto shifted = mma_attention_outputs<T>(sh, 1, &lse_shifted);
  cuda::set_vectorised_access(false);
  const auto plain = mma_attention_outputs<T>(sh, 0, &lse_plain);
  EXPECT_EQ(lse_vec, lse_plain);
  EXPECT_EQ(lse_shifted, lse_plain);
  const char* names[] = {"out", "dq", "dk", "dv"};
  for (size_t i = 0; i < plain.size(); ++i) {
    SCOPED_TRACE(names[i]);
    if constexpr (std::is_same_v<T, float>) {
      EXPECT_EQ(vec[i], plain[i]);
      EXPECT_EQ(shifted[i], plain[i]);
    } else {
      expect_bits("16-byte vs plain", vec[i], plain[i]);
      expect_bits("shifted vs plain", shifted[i], plain[i]);
    }
  }
}

// Shapes: rows past T in the last tile (37), the 64-row steps (hs 64, GQA) and the 32-row steps
// with dk and dv in two kernels (hs 128, multi-query).
TEST(CudaBf16, AttentionStagingPathsAgreeBitForBit) {
  SKIP_WITHOUT_DEVICE();
  for (const GqaShape& sh : {GqaShape{2, 37, 4, 2, 16}, GqaShape{1, 70, 4, 2, 64}, GqaShape{1, 45, 2, 1, 128}}) {
    {
      SCOPED_TRACE("bf16 storage");
      check_mma_attention_staging<bf16>(sh);
    }
    {
      SCOPED_TRACE("fp32 storage");
      check_mma_attention_staging<float>(sh);
    }
  }
}

TEST(CudaBf16, VectorisedAccessFollowsTheEnvironment) {
  // Set by the CTest entry emu.CudaBf16WithoutVectorisedAccess (LMF_CUDA_VEC=0), else unset.
  const char* e = std::getenv("LMF_CUDA_VEC");
  EXPECT_EQ(cuda::vectorised_access(), e == nullptr || std::string(e) != "0");
}

TEST(CudaBf16, EveryOpIsSet) {
  SKIP_WITHOUT_DEVICE();
  const ops::Backend<bf16>& b = cuda::backend_bf16();
  EXPECT_STREQ(b.name, "cuda");
  ASSERT_NE(b.memory, nullptr);
  EXPECT_STREQ(b.memory->name, "cuda");
  EXPECT_FALSE(b.on_host());
  EXPECT_EQ(b.matmul_precision, ops::MatmulPrecision::bf16);
  // Every member but matmul_precision is a pointer (name, memory, then the ops), so a null one,
  // such as a member added to ops::Backend and not filled in by ops/cuda/backend.cu, shows as a
  // zero word (test_cuda_ops.cpp's EveryOpIsSet, for the float tables).
  constexpr size_t kWords = sizeof(ops::Backend<bf16>) / sizeof(void*);
  static_assert(sizeof(ops::Backend<bf16>) == kWords * sizeof(void*));
  constexpr size_t kPrecisionWord = offsetof(ops::Backend<bf16>, matmul_precision) / sizeof(void*);
  std::array<uintptr_t, kWords> words{};
  std::memcpy(words.data(), &b, sizeof(b));
  for (size_t i = 0; i < kWords; ++i) {
    if (i != kPrecisionWord) {
      EXPECT_NE(words[i], 0u) << "member " << i << " is null";
    }
  }
  // The optimizer's ops are the float table's own (fp32 master weights and state).
  const ops::Backend<float>& f = cuda::backend(ops::MatmulPrecision::bf16);
  EXPECT_EQ(b.adamw_update, f.adamw_update);
  EXPECT_EQ(b.adamw_chunks, f.adamw_chunks);
  EXPECT_EQ(b.sum_squares, f.sum_squares);
  EXPECT_EQ(b.scale, f.scale);
  EXPECT_EQ(b.memory, f.memory);
}

}  // namespace
}  // namespace lmf

#endif  // LMF_HAVE_CUDA
