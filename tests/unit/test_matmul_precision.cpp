// The tf32 / bf16 GEMM modes on the CPU (ops/backend.h MatmulPrecision, ops/cpu/matmul_precision.cpp):
// the rounding itself against an independent construction, and the emulated GEMM ops against the
// exact (double) op on rounded operands, within fp32 accumulation error only. Each check also shows
// that the mode acts: the fp32 op is outside that bound.
#include <gtest/gtest.h>

#include <cfenv>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "core/rng.h"
#include "matmul_precision_ref.h"
#include "op_tolerance.h"
#include "ops/backend.h"
#include "ops/ops.h"
#include "ops/reference.h"

namespace lmf::ops {
namespace {

using test::max_abs;
using test::rand_vec;
using test::rounded;
using test::Tol;
using test::Vec;
using FVec = std::vector<float>;

const Tol kTol32{std::numeric_limits<float>::epsilon()};
constexpr MatmulPrecision kModes[] = {MatmulPrecision::tf32, MatmulPrecision::bf16};

FVec to_f(const Vec& v) { return FVec(v.begin(), v.end()); }

// Largest |got - want| / tol; a NaN counts as infinitely far.
double worst(const FVec& got, const Vec& want, double tol) {
  double w = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::abs((double)got[i] - want[i]);
    w = std::max(w, std::isnan(e) ? std::numeric_limits<double>::infinity() : e / tol);
  }
  return w;
}

// x rounded to `bits` significant bits by an independent route: frexp, then nearbyint under the
// default (to nearest, ties to even) mode. For normal floats whose rounding stays finite.
float round_significand(float x, int bits) {
  int e = 0;
  const double m = std::frexp((double)x, &e);  // x = m 2^e, |m| in [0.5, 1)
  return (float)std::ldexp(std::nearbyint(std::ldexp(m, bits)), e - bits);
}

TEST(MatmulPrecision, NamesRoundTrip) {
  for (auto p : {MatmulPrecision::fp32, MatmulPrecision::tf32, MatmulPrecision::bf16})
    EXPECT_EQ(parse_matmul_precision(to_string(p)), p);
  EXPECT_FALSE(parse_matmul_precision("fp16").has_value());
  EXPECT_FALSE(parse_matmul_precision("BF16").has_value());
  EXPECT_FALSE(parse_matmul_precision("").has_value());
  EXPECT_EQ(operand_unit_roundoff(MatmulPrecision::bf16), std::ldexp(1.0, -8));
  EXPECT_EQ(operand_unit_roundoff(MatmulPrecision::tf32), std::ldexp(1.0, -11));
  EXPECT_EQ(operand_unit_roundoff(MatmulPrecision::fp32), std::ldexp(1.0, -24));
}

TEST(MatmulPrecision, RoundOperandTiesAndSpecialValues) {
  const auto bf = MatmulPrecision::bf16, tf = MatmulPrecision::tf32;
  // bf16 keeps 8 significant bits: 1 + 2^-8 is the tie between 1 and 1 + 2^-7: to even, 1.
  EXPECT_EQ(round_operand(1.0f + 0x1p-8f, bf), 1.0f);
  EXPECT_EQ(round_operand(1.0f + 3 * 0x1p-8f, bf), 1.0f + 0x1p-6f);  // tie, up to even
  EXPECT_EQ(round_operand(1.0f + 0x1p-8f + 0x1p-20f, bf), 1.0f + 0x1p-7f);  // above the tie
  EXPECT_EQ(round_operand(-(1.0f + 0x1p-8f + 0x1p-20f), bf), -(1.0f + 0x1p-7f));
  EXPECT_EQ(round_operand(1.0f + 0x1p-11f, tf), 1.0f);  // tf32: 11 significant bits
  EXPECT_EQ(round_operand(1.0f + 0x1p-11f + 0x1p-22f, tf), 1.0f + 0x1p-10f);
  EXPECT_EQ(round_operand(2.0f - 0x1p-23f, bf), 2.0f);  // a carry into the exponent
  const float inf = std::numeric_limits<float>::infinity();
  for (auto p : kModes) {
    SCOPED_TRACE(to_string(p));
    EXPECT_EQ(round_operand(0.0f, p), 0.0f);
    EXPECT_TRUE(std::signbit(round_operand(-0.0f, p)));
    EXPECT_EQ(round_operand(inf, p), inf);
    EXPECT_EQ(round_operand(-inf, p), -inf);
    EXPECT_TRUE(std::isnan(round_operand(std::numeric_limits<float>::quiet_NaN(), p)));
    EXPECT_EQ(round_operand(std::numeric_limits<float>::max(), p), inf);  // rounds past the top
  }
  EXPECT_EQ(round_operand(1.2345678f, MatmulPrecision::fp32), 1.2345678f);
}

TEST(MatmulPrecision, RoundOperandMatchesAnIndependentRounding) {
  ASSERT_EQ(std::fegetround(), FE_TONEAREST);
  Rng rng(7, 1);
  int checked = 0;
  for (int i = 0; i < 200000; ++i) {
    const uint32_t bits = rng.next_u32();
    float x;
    std::memcpy(&x, &bits, sizeof x);
    if (!std::isnormal(x) || std::abs(x) > 1e38f) continue;
    ASSERT_EQ(round_operand(x, MatmulPrecision::bf16), round_significand(x, 8)) << x;
    ASSERT_EQ(round_operand(x, MatmulPrecision::tf32), round_significand(x, 11)) << x;
    // and bf16 agrees with the checkpoint writer's conversion (core/half.h)
    ASSERT_EQ(round_operand(x, MatmulPrecision::bf16), bf16_to_float(float_to_bf16(x))) << x;
    ++checked;
  }
  EXPECT_GT(checked, 150000);
}

TEST(MatmulPrecision, OnlyFloatHasRoundedModes) {
  EXPECT_EQ(&cpu_backend<float>(MatmulPrecision::fp32), &cpu_backend<float>());
  EXPECT_EQ(cpu_backend<float>().matmul_precision, MatmulPrecision::fp32);
  for (auto p : kModes) {
    EXPECT_EQ(cpu_backend<float>(p).matmul_precision, p);
    EXPECT_NE(cpu_backend<float>(p).matmul_forward, cpu_backend<float>().matmul_forward);
    EXPECT_THROW(cpu_backend<double>(p), UserError);
    // Only the GEMM ops differ from the fp32 table, and in bf16 attention (the tensor cores').
    EXPECT_EQ(cpu_backend<float>(p).layernorm_forward, cpu_backend<float>().layernorm_forward);
    const bool rounded_attention = p == MatmulPrecision::bf16;
    EXPECT_EQ(cpu_backend<float>(p).attention_forward != cpu_backend<float>().attention_forward,
              rounded_attention);
    EXPECT_EQ(cpu_backend<float>(p).attention_gqa_backward != cpu_backend<float>().attention_gqa_backward,
              rounded_attention);
  }
}

// Odd shapes; C small enough that even tf32's effect stands out of the fp32 bound.
TEST(MatmulPrecision, EmulatedMatmulIsTheExactProductOfRoundedOperands) {
  const int N = 23, C = 37, OC = 41;
  const Vec inp = rand_vec((size_t)N * C, 1), w = rand_vec((size_t)OC * C, 2), bias = rand_vec(OC, 3),
            dout = rand_vec((size_t)N * OC, 4), dw0 = rand_vec((size_t)OC * C, 5), db0 = rand_vec(OC, 6);
  const FVec inpf = to_f(inp), wf = to_f(w), biasf = to_f(bias), doutf = to_f(dout);
  const double A = max_abs(inp), W = max_abs(w), G = max_abs(dout);
  // fp32 accumulation only (test_ops.cpp's bounds for the same op).
  const double tol_out = kTol32.gamma(C + 1) * (C * A * W + max_abs(bias));
  const double tol_dinp = kTol32.gamma(OC) * OC * G * W;
  const double tol_dw = kTol32.gamma(N + 1) * (N * G * A + max_abs(dw0));
  const double tol_db = kTol32.gamma(N + 1) * (N * G + max_abs(db0));
  for (auto p : kModes) {
    SCOPED_TRACE(to_string(p));
    const Backend<float>& b = cpu_backend<float>(p);
    const Vec ri = rounded(inp, p), rw = rounded(w, p), rd = rounded(dout, p);

    Vec want((size_t)N * OC);
    ref::matmul_forward<double>(want.data(), ri.data(), rw.data(), bias.data(), N, C, OC);
    FVec got((size_t)N * OC, NAN), fp32((size_t)N * OC, NAN);
    b.matmul_forward(got.data(), inpf.data(), wf.data(), biasf.data(), N, C, OC);
    matmul_forward<float>(fp32.data(), inpf.data(), wf.data(), biasf.data(), N, C, OC);
    EXPECT_LE(worst(got, want, tol_out), 1.0) << "forward";
    EXPECT_GT(worst(fp32, want, tol_out), 1.0) << "the fp32 op should not compute the rounded product";
    // and the mode stays within its own bound of the unrounded product
    Vec exact((size_t)N * OC);
    ref::matmul_forward<double>(exact.data(), inp.data(), w.data(), bias.data(), N, C, OC);
    EXPECT_LE(worst(got, exact, (test::product_error(p) + kTol32.gamma(C + 1)) * (C * A * W + max_abs(bias))), 1.0);

    // Backward: dinp = r(dout) r(w); dw += r(dout)^T r(inp); dbias += column sums of the UNROUNDED dout.
    Vec want_dinp((size_t)N * C), want_dw = dw0, want_db = db0;
    ref::matmul_backward<double>(want_dinp.data(), want_dw.data(), nullptr, rd.data(), ri.data(), rw.data(), N, C, OC);
    for (int i = 0; i < N; ++i)
      for (int o = 0; o < OC; ++o) want_db[o] += dout[(size_t)i * OC + o];
    for (bool with_dinp : {true, false}) {
      SCOPED_TRACE(with_dinp ? "dinp" : "dinp = nullptr, w = nullptr");
      FVec dinp((size_t)N * C, NAN), dw = to_f(dw0), db = to_f(db0);
      // Without dinp, w is not read (as in matmul_backward): pass none.
      b.matmul_backward(with_dinp ? dinp.data() : nullptr, dw.data(), db.data(), doutf.data(), inpf.data(),
                        with_dinp ? wf.data() : nullptr, N, C, OC);
      if (with_dinp) {
        EXPECT_LE(worst(dinp, want_dinp, tol_dinp), 1.0) << "dinp";
      }
      EXPECT_LE(worst(dw, want_dw, tol_dw), 1.0) << "dw";
      EXPECT_LE(worst(db, want_db, tol_db), 1.0) << "dbias";
    }
    FVec dinp32((size_t)N * C, NAN), dw32 = to_f(dw0);
    matmul_backward<float>(dinp32.data(), dw32.data(), nullptr, doutf.data(), inpf.data(), wf.data(), N, C, OC);
    EXPECT_GT(worst(dinp32, want_dinp, tol_dinp), 1.0);
    EXPECT_GT(worst(dw32, want_dw, tol_dw), 1.0);
  }
}

// The classifier's forward with rounding is the fp32 classifier on pre-rounded operands (rounding
// is idempotent and the GEMMs are the same calls), bit for bit; so are its logits.
TEST(MatmulPrecision, EmulatedClassifierForwardIsTheFp32OneOnRoundedOperands) {
  const int N = 37, C = 19, V = 211;
  const Vec x = rand_vec((size_t)N * C, 11, -3, 3), w = rand_vec((size_t)V * C, 12);
  std::vector<int32_t> targets = test::rand_tokens(N, V, 13);
  targets[5] = -1;
  for (auto p : kModes) {
    SCOPED_TRACE(to_string(p));
    const FVec xf = to_f(x), wf = to_f(w), rxf = to_f(rounded(x, p)), rwf = to_f(rounded(w, p));
    FVec got(N, NAN), want(N, NAN), fp32(N, NAN);
    const double tg = cpu_backend<float>(p).classifier_ce_forward(got.data(), nullptr, nullptr, xf.data(), wf.data(),
                                                                  targets.data(), nullptr, N, C, V);
    const double tw = classifier_ce_forward<float>(want.data(), nullptr, nullptr, rxf.data(), rwf.data(),
                                                   targets.data(), nullptr, N, C, V);
    classifier_ce_forward<float>(fp32.data(), nullptr, nullptr, xf.data(), wf.data(), targets.data(), nullptr, N,
                                 C, V);
    EXPECT_EQ(tg, tw);
    EXPECT_EQ(got, want);
    EXPECT_NE(got, fp32);
    FVec lg((size_t)N * V, NAN), lw((size_t)N * V, NAN);
    cpu_backend<float>(p).classifier_logits(lg.data(), xf.data(), wf.data(), N, C, V);
    classifier_logits<float>(lw.data(), rxf.data(), rwf.data(), N, C, V);
    EXPECT_EQ(lg, lw);
  }
}

// The backward rounds dlogits before both GEMMs. With w = [I_V | 0] (V <= C) the fp32 classifier's
// dx IS its fp32 dlogits (one nonzero term per sum), so the emulated dx must be exactly their
// rounding, and its dw the exact product r(dlogits)^T r(x) within fp32 accumulation.
TEST(MatmulPrecision, EmulatedClassifierBackwardRoundsTheLogitGradient) {
  const int N = 37, V = 23, C = 29;
  const Vec x = rand_vec((size_t)N * C, 21, -4, 4), dw0 = rand_vec((size_t)V * C, 22);
  Vec w((size_t)V * C, 0.0);
  for (int v = 0; v < V; ++v) w[(size_t)v * C + v] = 1.0;
  std::vector<int32_t> targets = test::rand_tokens(N, V, 23);
  targets[3] = -1;
  const Vec dloss = rand_vec(N, 24, 0.5, 2.0);
  const FVec wf = to_f(w), dlf = to_f(dloss);
  for (auto p : kModes) {
    SCOPED_TRACE(to_string(p));
    const Vec rx = rounded(x, p);
    const FVec xf = to_f(x), rxf = to_f(rx);
    FVec l32(N), dl32((size_t)N * C, NAN), dw32 = to_f(dw0);
    classifier_ce_forward<float>(l32.data(), dl32.data(), dw32.data(), rxf.data(), wf.data(), targets.data(),
                                 dlf.data(), N, C, V);
    FVec lg(N), dx((size_t)N * C, NAN), dw = to_f(dw0);
    cpu_backend<float>(p).classifier_ce_forward(lg.data(), dx.data(), dw.data(), xf.data(), wf.data(),
                                                targets.data(), dlf.data(), N, C, V);
    EXPECT_EQ(lg, l32);
    Vec rdl((size_t)N * V);  // the rounded fp32 dlogits
    FVec want_dx((size_t)N * C, 0.0f);
    for (int i = 0; i < N; ++i)
      for (int v = 0; v < V; ++v) {
        const float d = round_operand(dl32[(size_t)i * C + v], p);
        rdl[(size_t)i * V + v] = d;
        want_dx[(size_t)i * C + v] = d;
      }
    EXPECT_EQ(dx, want_dx);
    EXPECT_NE(dx, dl32);  // the rounding did something
    Vec want_dw = dw0;
    for (int i = 0; i < N; ++i)
      for (int v = 0; v < V; ++v)
        for (int c = 0; c < C; ++c) want_dw[(size_t)v * C + c] += rdl[(size_t)i * V + v] * rx[(size_t)i * C + c];
    const double tol_dw = kTol32.gamma(N + 1) * (N * max_abs(rdl) * max_abs(rx) + max_abs(dw0));
    EXPECT_LE(worst(dw, want_dw, tol_dw), 1.0);
  }
}

// General shapes, against the exact rounded-operand classifier (matmul_precision_ref.h). The
// fp32 dlogits and the exact ones round alike except near a rounding boundary; such a flip moves
// one term of a dx / dw sum by at most 2u |dlogit| |operand|, allowed for up to kFlips terms.
TEST(MatmulPrecision, EmulatedClassifierAgainstTheExactRoundedOne) {
  const int N = 41, C = 23, V = 307;
  const Vec x = rand_vec((size_t)N * C, 31, -2, 2), w = rand_vec((size_t)V * C, 32), dw0 = rand_vec((size_t)V * C, 33),
            dloss = rand_vec(N, 34, 0.5, 2.0);
  std::vector<int32_t> targets = test::rand_tokens(N, V, 35);
  targets[0] = -1;
  constexpr double kFlips = 4;
  for (auto p : kModes) {
    SCOPED_TRACE(to_string(p));
    const test::ClassifierRef r = test::classifier_rounded_ref(x, w, dw0, targets, dloss, N, C, V, p);
    const double X = max_abs(rounded(x, p)), W = max_abs(rounded(w, p)), D = max_abs(dloss), u = operand_unit_roundoff(p);
    // logits: fp32 accumulation of C products, |error| <= dl = gamma(C) C X W; the loss
    // lse - l_t moves by at most 2 dl plus the fp32 softmax (16 per exp, V terms, one log).
    const double dlogit = kTol32.gamma(C) * C * X * W;
    const double tol_loss = 2 * dlogit + kTol32.gamma(16 * V) * (1 + max_abs(r.losses) + C * X * W);
    // dlogits = (p - onehot) dloss: each p_v off by a relative 2 dl + softmax error, sum_v p_v = 1,
    // so sum_v |error| <= (2 dl + gamma(16 V)) D; then the GEMMs (fp32) and the flips.
    const double sum_ddl = (2 * dlogit + kTol32.gamma(16 * V)) * D;
    const double tol_dx = sum_ddl * W + kTol32.gamma(V) * 2 * D * W + kFlips * 2 * u * D * W;
    const double tol_dw = sum_ddl * X + kTol32.gamma(N + 1) * (2 * D * X * N + max_abs(dw0)) + kFlips * 2 * u * D * X;
    FVec losses(N, NAN), dx((size_t)N * C, NAN), dw = to_f(dw0);
    const FVec xf = to_f(x), wf = to_f(w), dlf = to_f(dloss);
    cpu_backend<float>(p).classifier_ce_forward(losses.data(), dx.data(), dw.data(), xf.data(), wf.data(),
                                                targets.data(), dlf.data(), N, C, V);
    EXPECT_LE(worst(losses, r.losses, tol_loss), 1.0) << "losses";
    EXPECT_LE(worst(dx, r.dx, tol_dx), 1.0) << "dx";
    EXPECT_LE(worst(dw, r.dw, tol_dw), 1.0) << "dw";
    EXPECT_EQ(losses[0], 0.0f);
    if (p == MatmulPrecision::bf16) {  // (tf32's effect on the loss hides in this looser bound)
      FVec l32(N, NAN);
      classifier_ce_forward<float>(l32.data(), nullptr, nullptr, xf.data(), wf.data(), targets.data(), nullptr, N,
                                   C, V);
      EXPECT_GT(worst(l32, r.losses, tol_loss), 1.0) << "the fp32 classifier should be outside the bound";
    }
  }
}

// Against the exact classifier of the UNROUNDED operands, with the bound tests/gpu/
// test_cuda_matmul.cpp (CudaClassifier.Tf32AndBf16WithinTheirBound) holds the GPU to: logits off
// by dl = (e + gamma32(C)) C X W, e = product_error(p); the rest follows as there.
TEST(MatmulPrecision, EmulatedClassifierWithinTheBoundOfTheUnroundedOne) {
  const int N = 70, C = 96, V = 1031;
  const Vec x = rand_vec((size_t)N * C, 61), w = rand_vec((size_t)V * C, 62), dw0 = rand_vec((size_t)V * C, 63),
            dloss = rand_vec(N, 64, 0.5, 2.0);
  std::vector<int32_t> targets = test::rand_tokens(N, V, 65);
  targets[4] = -1;
  Vec losses_x(N), dx_x((size_t)N * C), dw_x = dw0;
  ref::classifier_ce_forward(losses_x.data(), dx_x.data(), dw_x.data(), x.data(), w.data(), targets.data(),
                             dloss.data(), N, C, V);
  const double X = max_abs(x), W = max_abs(w), D = max_abs(dloss);
  for (auto p : kModes) {
    SCOPED_TRACE(to_string(p));
    const double e = test::product_error(p), dl = (e + kTol32.gamma(C)) * C * X * W;
    const double soft = kTol32.gamma(16 * V), sum_ddl = (2 * dl + soft) * D;
    const double tol_loss = 2 * dl + soft * (1 + max_abs(losses_x) + C * X * W);
    const double tol_dx = sum_ddl * W + (e + kTol32.gamma(V)) * 2 * D * W;
    const double tol_dw = sum_ddl * X + (e + kTol32.gamma(N + 1)) * (2 * D * X * N + max_abs(dw0));
    FVec losses(N, NAN), dx((size_t)N * C, NAN), dw = to_f(dw0);
    const FVec xf = to_f(x), wf = to_f(w), dlf = to_f(dloss);
    cpu_backend<float>(p).classifier_ce_forward(losses.data(), dx.data(), dw.data(), xf.data(), wf.data(),
                                                targets.data(), dlf.data(), N, C, V);
    EXPECT_LE(worst(losses, losses_x, tol_loss), 1.0) << "losses";
    EXPECT_LE(worst(dx, dx_x, tol_dx), 1.0) << "dx";
    EXPECT_LE(worst(dw, dw_x, tol_dw), 1.0) << "dw";
  }
}

// Largest |got - want| / tol[i] (per-element bounds).
double worst_each(const FVec& got, const Vec& want, const Vec& tol) {
  double w = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::abs((double)got[i] - want[i]);
    w = std::max(w, std::isnan(e) ? std::numeric_limits<double>::infinity() : e / tol[i]);
  }
  return w;
}

// bf16 attention (the GPU's tensor-core kernels, ops/cuda/attention_mma.cu): every GEMM operand
// rounded. Against the exact (double) op it lies within test_ops' attention bound with each
// product's operand rounding added (Tol::op = 2u + u^2, u = 2^-8), and outside the fp32 bound;
// the packed multi-head ops equal the grouped ones bit for bit (the same rounded copies, the same
// GEMMs); tf32 keeps fp32 attention, as the GPU does.
TEST(MatmulPrecision, Bf16AttentionRoundsEveryOperand) {
  const int B = 2, T_ = 70, NH = 4, hs = 16;  // T past one 64-row block
  for (const int KVH : {4, 2, 1}) {
    SCOPED_TRACE("KVH = " + std::to_string(KVH));
    const size_t BT = (size_t)B * T_, C = (size_t)NH * hs, KC = (size_t)KVH * hs;
    const Vec q = rand_vec(BT * C, 80), k = rand_vec(BT * KC, 81), v = rand_vec(BT * KC, 82),
              dout = rand_vec(BT * C, 83);
    Vec out_r(BT * C), lse_r((size_t)B * NH * T_), dq_r(q.size()), dk_r(k.size()), dv_r(v.size());
    ref::attention_gqa_forward(out_r.data(), lse_r.data(), q.data(), k.data(), v.data(), B, T_, NH, KVH, hs);
    ref::attention_gqa_backward(dq_r.data(), dk_r.data(), dv_r.data(), dout.data(), q.data(), k.data(),
                                v.data(), out_r.data(), lse_r.data(), B, T_, NH, KVH, hs);
    const double u = operand_unit_roundoff(MatmulPrecision::bf16);
    const auto bound = test::attention_tolerance(q, k, v, dout, out_r, lse_r, B, T_, NH, KVH, hs,
                                                 Tol{kTol32.u, 2 * u + u * u});
    const auto bound32 = test::attention_tolerance(q, k, v, dout, out_r, lse_r, B, T_, NH, KVH, hs, kTol32);

    struct Result {
      FVec out, lse, dq, dk, dv;
    };
    const FVec qf = to_f(q), kf = to_f(k), vf = to_f(v), gf = to_f(dout);
    auto run = [&](const Backend<float>& be) {
      Result r{FVec(BT * C), FVec(lse_r.size()), FVec(q.size()), FVec(k.size()), FVec(v.size())};
      be.attention_gqa_forward(r.out.data(), r.lse.data(), qf.data(), kf.data(), vf.data(), B, T_, NH, KVH, hs);
      be.attention_gqa_backward(r.dq.data(), r.dk.data(), r.dv.data(), gf.data(), qf.data(), kf.data(),
                                vf.data(), r.out.data(), r.lse.data(), B, T_, NH, KVH, hs);
      return r;
    };
    const Result r16 = run(cpu_backend<float>(MatmulPrecision::bf16));
    EXPECT_LE(worst_each(r16.out, out_r, bound.out), 1.0) << "out";
    EXPECT_LE(worst_each(r16.lse, lse_r, bound.lse), 1.0) << "lse";
    EXPECT_LE(worst_each(r16.dq, dq_r, bound.dq), 1.0) << "dq";
    EXPECT_LE(worst_each(r16.dk, dk_r, bound.dk), 1.0) << "dk";
    EXPECT_LE(worst_each(r16.dv, dv_r, bound.dv), 1.0) << "dv";
    EXPECT_GT(worst_each(r16.out, out_r, bound32.out), 1.0) << "out within the fp32 bound: not rounded";
    EXPECT_GT(worst_each(r16.dk, dk_r, bound32.dk), 1.0) << "dk within the fp32 bound: not rounded";

    const Result r32 = run(cpu_backend<float>(MatmulPrecision::fp32));
    const Result rtf = run(cpu_backend<float>(MatmulPrecision::tf32));
    EXPECT_EQ(rtf.out, r32.out);
    EXPECT_EQ(rtf.dq, r32.dq);

    if (KVH == NH) {  // packed q | k | v per row
      FVec qkv(BT * 3 * C), dqkv(BT * 3 * C), out(BT * C), lse(lse_r.size());
      for (size_t bt = 0; bt < BT; ++bt)
        for (size_t c = 0; c < C; ++c) {
          qkv[bt * 3 * C + c] = qf[bt * C + c];
          qkv[bt * 3 * C + C + c] = kf[bt * C + c];
          qkv[bt * 3 * C + 2 * C + c] = vf[bt * C + c];
        }
      const Backend<float>& be = cpu_backend<float>(MatmulPrecision::bf16);
      be.attention_forward(out.data(), lse.data(), qkv.data(), B, T_, (int)C, NH);
      be.attention_backward(dqkv.data(), gf.data(), qkv.data(), out.data(), lse.data(), B, T_, (int)C, NH);
      EXPECT_EQ(out, r16.out);
      EXPECT_EQ(lse, r16.lse);
      for (size_t bt = 0; bt < BT; ++bt)
        for (size_t c = 0; c < C; ++c) {
          ASSERT_EQ(dqkv[bt * 3 * C + c], r16.dq[bt * C + c]);
          ASSERT_EQ(dqkv[bt * 3 * C + C + c], r16.dk[bt * C + c]);
          ASSERT_EQ(dqkv[bt * 3 * C + 2 * C + c], r16.dv[bt * C + c]);
        }
    }
  }
}

}  // namespace
}  // namespace lmf::ops
