// bf16 storage on the CPU: the backend table ops::cpu_backend<bf16> (ops/cpu/bf16.cpp), which
// specifies what a GPU computes with bf16 activations and weights, and the models over it.
//
//  - Ops: each one gives exactly the bits of the float op of the bf16 matmul-precision table on
//    the widened inputs, with every bf16 result rounded to nearest even, and the float results
//    (gradients of the master weights, statistics, losses) of that op unchanged. The expected
//    values are computed here from the float table directly, so a wrong argument, an assigned
//    output that should accumulate, or a result stored without rounding fails.
//  - Models: GPT-2 and Llama over bf16 against the same model in double, on the same weights and
//    batch, with a bound from bf16's unit roundoff per stored value (derived below), and far from
//    the float model (so the activations really are stored in bf16); and a few AdamW steps, in
//    which the float master weights move and each forward reads them rounded again.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "core/half.h"
#include "model/gpt2.h"
#include "infer/decoder.h"
#include "model/llama.h"
#include "model/model.h"
#include "model_test_util.h"
#include "op_tolerance.h"
#include "ops/backend.h"
#include "ops/cpu/blas.h"
#include "optim/adamw.h"
#include "tp_test_util.h"

namespace lmf {
namespace {

using B16 = std::vector<bf16>;
using Floats = std::vector<float>;

const ops::Backend<bf16>& be16() { return ops::cpu_backend<bf16>(); }
const ops::Backend<float>& be32() { return ops::cpu_backend<float>(ops::MatmulPrecision::bf16); }

// n values uniform in [lo, hi), rounded to bf16.
B16 rand_b16(size_t n, uint64_t stream, double lo = -1.0, double hi = 1.0) {
  B16 v;
  for (double x : test::rand_vec(n, stream, lo, hi)) v.push_back(bf16(float(x)));
  return v;
}
Floats widen(const B16& v) {
  Floats w;
  for (bf16 x : v) w.push_back(float(x));
  return w;
}
B16 nan16(size_t n) { return B16(n, bf16(std::numeric_limits<float>::quiet_NaN())); }
Floats nan32(size_t n) { return Floats(n, std::numeric_limits<float>::quiet_NaN()); }

// got == want rounded to bf16, bit for bit.
void expect_rounded(const char* what, const B16& got, const Floats& want) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_EQ(got[i].bits, bf16(want[i]).bits)
        << what << "[" << i << "]: " << float(got[i]) << ", want " << want[i] << " rounded";
}
void expect_same(const char* what, const Floats& got, const Floats& want) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << what << "[" << i << "]";
}

TEST(Bf16Ops, MatmulAndClassifier) {
  const int N = 33, C = 31, OC = 40, V = 57;
  const B16 x = rand_b16(N * C, 1), w = rand_b16(OC * C, 2), bias = rand_b16(OC, 3), dout = rand_b16(N * OC, 4);
  const Floats xf = widen(x), wf = widen(w), bf = widen(bias), df = widen(dout);
  B16 out = nan16(N * OC);
  Floats want(N * OC);
  be16().matmul_forward(out.data(), x.data(), w.data(), bias.data(), N, C, OC);
  be32().matmul_forward(want.data(), xf.data(), wf.data(), bf.data(), N, C, OC);
  expect_rounded("matmul out", out, want);

  // dinp assigned (NaN before), dw and dbias accumulated onto what they held.
  B16 dinp = nan16(N * C);
  Floats dw = widen(rand_b16(OC * C, 5)), db = widen(rand_b16(OC, 6)), dw_want = dw, db_want = db,
         dinp_want(N * C);
  be16().matmul_backward(dinp.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), N, C, OC);
  be32().matmul_backward(dinp_want.data(), dw_want.data(), db_want.data(), df.data(), xf.data(), wf.data(), N, C,
                         OC);
  expect_rounded("matmul dinp", dinp, dinp_want);
  expect_same("matmul dw", dw, dw_want);
  expect_same("matmul dbias", db, db_want);

  // The classifier: losses and the weight gradient float, dx bf16.
  const B16 wv = rand_b16(V * C, 7);
  const Floats wvf = widen(wv);
  std::vector<int32_t> targets = test::rand_tokens(N, V, 8);
  targets[5] = -1;
  const Floats dloss(N, 1.0f / N);
  Floats losses = nan32(N), losses_want(N), dwv(V * C, 0.5f), dwv_want = dwv, dx_want(N * C);
  B16 dx = nan16(N * C);
  const double sum = be16().classifier_ce_forward(losses.data(), dx.data(), dwv.data(), x.data(), wv.data(),
                                                  targets.data(), dloss.data(), N, C, V);
  const double sum_want = be32().classifier_ce_forward(losses_want.data(), dx_want.data(), dwv_want.data(), xf.data(),
                                                       wvf.data(), targets.data(), dloss.data(), N, C, V);
  EXPECT_EQ(sum, sum_want);
  expect_same("classifier losses", losses, losses_want);
  expect_rounded("classifier dx", dx, dx_want);
  expect_same("classifier dw", dwv, dwv_want);
  Floats logits(2 * V), logits_want(2 * V);
  be16().classifier_logits(logits.data(), x.data(), wv.data(), 2, C, V);
  be32().classifier_logits(logits_want.data(), xf.data(), wvf.data(), 2, C, V);
  expect_same("classifier logits", logits, logits_want);
}

// A decoder's products, of 1 to kSkinnyRows rows, read the bf16 weights as they are (no widened copy
// per call): the same numbers as the float op on the widened operands, rounded once.
TEST(Bf16Ops, FewRowProductsAreTheFloatOpsRounded) {
  const int C = 100, OC = 67, V = 131;
  for (int N : {1, 4, ops::cpu::kSkinnyRows}) {
    SCOPED_TRACE(testing::Message() << "N " << N);
    const B16 x = rand_b16(size_t(N) * C, 11), w = rand_b16(size_t(OC) * C, 12), bias = rand_b16(OC, 13),
              wv = rand_b16(size_t(V) * C, 14);
    B16 out = nan16(size_t(N) * OC), plain = nan16(size_t(N) * OC);
    Floats want(size_t(N) * OC), plain_want(size_t(N) * OC), logits(size_t(N) * V), logits_want(size_t(N) * V);
    be16().matmul_forward(out.data(), x.data(), w.data(), bias.data(), N, C, OC);
    be32().matmul_forward(want.data(), widen(x).data(), widen(w).data(), widen(bias).data(), N, C, OC);
    expect_rounded("matmul out", out, want);
    be16().matmul_forward(plain.data(), x.data(), w.data(), nullptr, N, C, OC);
    be32().matmul_forward(plain_want.data(), widen(x).data(), widen(w).data(), nullptr, N, C, OC);
    expect_rounded("matmul out, no bias", plain, plain_want);
    be16().classifier_logits(logits.data(), x.data(), wv.data(), N, C, V);
    be32().classifier_logits(logits_want.data(), widen(x).data(), widen(wv).data(), N, C, V);
    expect_same("classifier logits", logits, logits_want);
  }
}

// GPT-2's MLP GEMMs fused with GELU: the float composition, each bf16 output rounded once, so GELU
// reads the GEMM's float result (a GPU epilogue's semantics), not pre as stored; the unfused bf16
// pair, which rounds pre first, differs somewhere.
TEST(Bf16Ops, MatmulGeluRoundsOnlyItsOutputs) {
  const int N = 33, C = 31, OC = 40;
  const B16 x = rand_b16(N * C, 31), w = rand_b16(OC * C, 32), bias = rand_b16(OC, 33), dout = rand_b16(N * OC, 34),
            pre_in = rand_b16(N * C, 35, -4.0, 4.0);
  const Floats xf = widen(x), wf = widen(w), bf = widen(bias), df = widen(dout), pf = widen(pre_in);
  B16 out = nan16(N * OC), pre = nan16(N * OC);
  Floats out_want(N * OC), pre_want(N * OC);
  be16().matmul_gelu_forward(out.data(), pre.data(), x.data(), w.data(), bias.data(), N, C, OC);
  be32().matmul_gelu_forward(out_want.data(), pre_want.data(), xf.data(), wf.data(), bf.data(), N, C, OC);
  expect_rounded("matmul_gelu out", out, out_want);
  expect_rounded("matmul_gelu pre", pre, pre_want);
  B16 out_pair = nan16(N * OC), pre_pair = nan16(N * OC);
  be16().matmul_forward(pre_pair.data(), x.data(), w.data(), bias.data(), N, C, OC);
  be16().gelu_forward(out_pair.data(), pre_pair.data(), out_pair.size());
  EXPECT_EQ(pre_pair, pre);
  EXPECT_NE(out_pair, out) << "GELU read pre rounded";

  B16 dinp = nan16(N * C), dinp_pair = nan16(N * C);
  Floats dinp_want(N * C), dw = widen(rand_b16(OC * C, 36)), db = widen(rand_b16(OC, 37)), dw_want = dw,
                           db_want = db;
  be16().matmul_dgelu_backward(dinp.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), pre_in.data(), N,
                               C, OC);
  be32().matmul_dgelu_backward(dinp_want.data(), dw_want.data(), db_want.data(), df.data(), xf.data(), wf.data(),
                               pf.data(), N, C, OC);
  expect_rounded("matmul_dgelu dinp", dinp, dinp_want);
  expect_same("matmul_dgelu dw", dw, dw_want);
  expect_same("matmul_dgelu db", db, db_want);
  Floats dw2 = dw, db2 = db;
  be16().matmul_backward(dinp_pair.data(), dw2.data(), db2.data(), dout.data(), x.data(), w.data(), N, C, OC);
  be16().gelu_backward(dinp_pair.data(), pre_in.data(), dinp_pair.data(), dinp_pair.size());
  EXPECT_NE(dinp_pair, dinp) << "GELU's backward read dout w rounded";
}

TEST(Bf16Ops, NormsAccumulateIntoTheResidualGradient) {
  const int N = 33, C = 31;
  const B16 x = rand_b16(N * C, 11, 1.0, 3.0), w = rand_b16(C, 12), b = rand_b16(C, 13), dout = rand_b16(N * C, 14),
            dinp0 = rand_b16(N * C, 15);
  const Floats xf = widen(x), wf = widen(w), bf = widen(b), df = widen(dout);
  // LayerNorm: mean and rstd float; the input gradient adds to what the residual stream holds.
  B16 out = nan16(N * C);
  Floats mean = nan32(N), rstd = nan32(N), out_want(N * C), mean_want(N), rstd_want(N);
  be16().layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  be32().layernorm_forward(out_want.data(), mean_want.data(), rstd_want.data(), xf.data(), wf.data(), bf.data(), N, C);
  expect_rounded("layernorm out", out, out_want);
  expect_same("layernorm mean", mean, mean_want);
  expect_same("layernorm rstd", rstd, rstd_want);
  B16 dinp = dinp0;
  Floats dinp_want = widen(dinp0), dw(C, 0.25f), db(C, -0.5f), dw_want = dw, db_want = db;
  be16().layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(),
                            rstd.data(), N, C);
  be32().layernorm_backward(dinp_want.data(), dw_want.data(), db_want.data(), df.data(), xf.data(), wf.data(),
                            mean.data(), rstd.data(), N, C);
  expect_rounded("layernorm dinp", dinp, dinp_want);
  expect_same("layernorm dw", dw, dw_want);
  expect_same("layernorm db", db, db_want);

  // RMSNorm, the same way.
  const float eps = 1e-5f;
  Floats rms = nan32(N), rms_want(N);
  be16().rmsnorm_forward(out.data(), rms.data(), x.data(), w.data(), N, C, eps);
  be32().rmsnorm_forward(out_want.data(), rms_want.data(), xf.data(), wf.data(), N, C, eps);
  expect_rounded("rmsnorm out", out, out_want);
  expect_same("rmsnorm rstd", rms, rms_want);
  dinp = dinp0;
  dinp_want = widen(dinp0);
  be16().rmsnorm_backward(dinp.data(), dw.data(), dout.data(), x.data(), w.data(), rms.data(), N, C);
  be32().rmsnorm_backward(dinp_want.data(), dw_want.data(), df.data(), xf.data(), wf.data(), rms.data(), N, C);
  expect_rounded("rmsnorm dinp", dinp, dinp_want);
  expect_same("rmsnorm dw", dw, dw_want);

  // The fused residual + norm stores the sum rounded, and normalises the sum as stored (what a
  // kernel must reproduce: the unfused pair reads res back from memory).
  B16 res = nan16(N * C);
  Floats res_want(N * C);
  be16().residual_rmsnorm_forward(res.data(), out.data(), rms.data(), x.data(), dout.data(), w.data(), N, C, eps);
  be32().residual_forward(res_want.data(), xf.data(), df.data(), size_t(N) * C);
  expect_rounded("residual_rmsnorm res", res, res_want);
  be32().rmsnorm_forward(out_want.data(), rms_want.data(), widen(res).data(), wf.data(), N, C, eps);
  expect_rounded("residual_rmsnorm out", out, out_want);
  expect_same("residual_rmsnorm rstd", rms, rms_want);
  B16 a = x;  // res may be a
  be16().residual_layernorm_forward(a.data(), out.data(), mean.data(), rstd.data(), a.data(), dout.data(), w.data(),
                                    b.data(), N, C);
  EXPECT_EQ(a, res);
  be32().layernorm_forward(out_want.data(), mean_want.data(), rstd_want.data(), widen(res).data(), wf.data(),
                           bf.data(), N, C);
  expect_rounded("residual_layernorm out", out, out_want);
  expect_same("residual_layernorm rstd", rstd, rstd_want);
}

TEST(Bf16Ops, Pointwise) {
  const size_t n = 70001;  // odd, across the conversions' parallel threshold
  const B16 a = rand_b16(n, 21, -3.0, 3.0), b = rand_b16(n, 22), d = rand_b16(n, 23);
  const Floats af = widen(a), bf = widen(b), df = widen(d);
  B16 out = nan16(n), out2 = nan16(n);
  Floats want(n), want2(n);
  be16().gelu_forward(out.data(), a.data(), n);
  be32().gelu_forward(want.data(), af.data(), n);
  expect_rounded("gelu", out, want);
  be16().gelu_backward(out.data(), a.data(), d.data(), n);
  be32().gelu_backward(want.data(), af.data(), df.data(), n);
  expect_rounded("gelu backward", out, want);
  be16().swiglu_forward(out.data(), a.data(), b.data(), n);
  be32().swiglu_forward(want.data(), af.data(), bf.data(), n);
  expect_rounded("swiglu", out, want);
  be16().swiglu_backward(out.data(), out2.data(), d.data(), a.data(), b.data(), n);
  be32().swiglu_backward(want.data(), want2.data(), df.data(), af.data(), bf.data(), n);
  expect_rounded("swiglu dgate", out, want);
  expect_rounded("swiglu dup", out2, want2);
  be16().residual_forward(out.data(), a.data(), b.data(), n);
  be32().residual_forward(want.data(), af.data(), bf.data(), n);
  expect_rounded("residual", out, want);

  // RoPE in place (out == inp), at a decoding offset, both pair conventions.
  const int B = 2, T = 5, NH = 3, hs = 8;
  const std::vector<double> inv_freq = ops::rope_inv_freq(hs, 10000.0);
  for (bool interleaved : {false, true}) {
    B16 x = rand_b16(size_t(B) * T * NH * hs, 24);
    Floats xf = widen(x);
    be16().rope_forward(x.data(), x.data(), B, T, NH, hs, inv_freq.data(), interleaved, 7);
    be32().rope_forward(xf.data(), xf.data(), B, T, NH, hs, inv_freq.data(), interleaved, 7);
    expect_rounded("rope", x, xf);
    xf = widen(x);
    be16().rope_backward(x.data(), x.data(), B, T, NH, hs, inv_freq.data(), interleaved, 7);
    be32().rope_backward(xf.data(), xf.data(), B, T, NH, hs, inv_freq.data(), interleaved, 7);
    expect_rounded("rope backward", x, xf);
  }

  // The compute copy: master weights rounded.
  Floats master;
  for (double x : test::rand_vec(n, 25)) master.push_back(float(x));
  be16().to_compute(out.data(), master.data(), n);
  expect_rounded("to_compute", out, master);
}

TEST(Bf16Ops, EncoderAndAttention) {
  const int B = 2, T = 9, C = 12, V = 17, NH = 4, KVH = 2, hs = 3;
  const std::vector<int32_t> tokens = test::rand_tokens(size_t(B) * T, V, 31);
  const B16 wte = rand_b16(V * C, 32), wpe = rand_b16(T * C, 33), dout = rand_b16(B * T * C, 34);
  const Floats wtef = widen(wte), wpef = widen(wpe), df = widen(dout);
  for (bool pos : {true, false}) {  // with a position table and without (RoPE models)
    B16 out = nan16(B * T * C);
    Floats want(B * T * C);
    be16().encoder_forward(out.data(), tokens.data(), wte.data(), pos ? wpe.data() : nullptr, B, T, C);
    be32().encoder_forward(want.data(), tokens.data(), wtef.data(), pos ? wpef.data() : nullptr, B, T, C);
    expect_rounded("encoder", out, want);
  }
  Floats dwte(V * C, 0.125f), dwpe(T * C, 1.0f), dwte_want = dwte, dwpe_want = dwpe;
  be16().encoder_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), B, T, C);
  be32().encoder_backward(dwte_want.data(), dwpe_want.data(), df.data(), tokens.data(), B, T, C);
  expect_same("encoder dwte", dwte, dwte_want);
  expect_same("encoder dwpe", dwpe, dwpe_want);

  // Grouped-query attention: out bf16, lse float; the backward reads the stored out.
  const size_t NQ = size_t(B) * T * NH * hs, NK = size_t(B) * T * KVH * hs;
  const B16 q = rand_b16(NQ, 35, -2, 2), k = rand_b16(NK, 36, -2, 2), v = rand_b16(NK, 37), dy = rand_b16(NQ, 38);
  const Floats qf = widen(q), kf = widen(k), vf = widen(v), dyf = widen(dy);
  B16 y = nan16(NQ), dq = nan16(NQ), dk = nan16(NK), dv = nan16(NK);
  Floats lse = nan32(size_t(B) * NH * T), y_want(NQ), lse_want(lse.size()), dq_want(NQ), dk_want(NK), dv_want(NK);
  be16().attention_gqa_forward(y.data(), lse.data(), q.data(), k.data(), v.data(), B, T, NH, KVH, hs);
  be32().attention_gqa_forward(y_want.data(), lse_want.data(), qf.data(), kf.data(), vf.data(), B, T, NH, KVH, hs);
  expect_rounded("attention out", y, y_want);
  expect_same("attention lse", lse, lse_want);
  be16().attention_gqa_backward(dq.data(), dk.data(), dv.data(), dy.data(), q.data(), k.data(), v.data(), y.data(),
                                lse.data(), B, T, NH, KVH, hs);
  be32().attention_gqa_backward(dq_want.data(), dk_want.data(), dv_want.data(), dyf.data(), qf.data(), kf.data(),
                                vf.data(), widen(y).data(), lse.data(), B, T, NH, KVH, hs);
  expect_rounded("attention dq", dq, dq_want);
  expect_rounded("attention dk", dk, dk_want);
  expect_rounded("attention dv", dv, dv_want);

  // Packed multi-head attention: qkv (B, T, 3C).
  const B16 qkv = rand_b16(size_t(B) * T * 3 * C, 39, -2, 2);
  const Floats qkvf = widen(qkv);
  B16 o = nan16(B * T * C), dqkv = nan16(qkv.size());
  Floats l(size_t(B) * NH * T), o_want(B * T * C), l_want(l.size()), dqkv_want(qkv.size());
  be16().attention_forward(o.data(), l.data(), qkv.data(), B, T, C, NH);
  be32().attention_forward(o_want.data(), l_want.data(), qkvf.data(), B, T, C, NH);
  expect_rounded("packed attention out", o, o_want);
  expect_same("packed attention lse", l, l_want);
  be16().attention_backward(dqkv.data(), dout.data(), qkv.data(), o.data(), l.data(), B, T, C, NH);
  be32().attention_backward(dqkv_want.data(), df.data(), qkvf.data(), widen(o).data(), l.data(), B, T, C, NH);
  expect_rounded("packed attention dqkv", dqkv, dqkv_want);

  // Decoding, 2 sequences, against caches whose rows are wider than the kv heads (ld > KVH hs),
  // the first T/2 positions read from sequence 0's (a shared prefix), queries q_ld apart.
  const int ld = KVH * hs + 5, Q = NH * hs, q_ld = Q + 3;
  const size_t seq = size_t(T) * ld + 2, cache = seq + size_t(T) * ld;
  const ops::DecodeLayout lay{.B = 2, .T = T, .shared = T / 2, .ld = ld, .seq = seq, .q_ld = q_ld};
  const B16 kc = rand_b16(cache, 40), vc = rand_b16(cache, 41), q1 = rand_b16(2 * size_t(q_ld), 42);
  B16 y1 = nan16(2 * size_t(Q));
  Floats scratch(2 * size_t(NH) * T), scratch_want(scratch.size()), y1_want(2 * size_t(Q));
  be16().attention_decode(y1.data(), scratch.data(), q1.data(), kc.data(), vc.data(), lay, NH, KVH, hs);
  be32().attention_decode(y1_want.data(), scratch_want.data(), widen(q1).data(), widen(kc).data(), widen(vc).data(),
                          lay, NH, KVH, hs);
  expect_rounded("attention_decode", y1, y1_want);
}

// ---- models ------------------------------------------------------------------------------------

// The bf16 model and the float model against the double model, on the same batch and weights:
// random ones, which the double and float models then round to bf16 as the bf16 model's compute
// copy does, so that all three compute the same function and only their arithmetic differs.
// Returns the loss errors (relative) and the largest gradient error (relative to the largest
// exact gradient) of each.
struct Errors {
  double loss16, grad16, loss32, grad32;
};
template <template <class> class Family>
Errors errors_against_double(const ModelConfig& cfg, int B, int T) {
  Family<double> md(cfg);
  Family<float> mf(cfg);
  Family<bf16> mb(cfg);
  test::randomise(md, 5);
  test::randomise(mb, 5);
  for (size_t k = 0; k < md.params().flat_size(); ++k) {
    const float r = float(bf16(float(md.params().params()[k])));
    md.params().params()[k] = r;
    mf.params().params()[k] = r;
  }
  const test::Batch b = test::random_batch(B, T, cfg.vocab_size, 6);
  const double s = 1.0 / (B * T);
  const double ld = md.forward(b.x.data(), b.y.data(), B, T, s);
  const double lf = mf.forward(b.x.data(), b.y.data(), B, T, s);
  const double lb = mb.forward(b.x.data(), b.y.data(), B, T, s);
  md.backward();
  mf.backward();
  mb.backward();
  double gmax = 0, ef = 0, eb = 0;
  for (size_t k = 0; k < md.params().flat_size(); ++k) {
    const double g = md.params().grads()[k];
    gmax = std::max(gmax, std::abs(g));
    ef = std::max(ef, std::abs(double(mf.params().grads()[k]) - g));
    eb = std::max(eb, std::abs(double(mb.params().grads()[k]) - g));
  }
  return {std::abs(lb - ld) / ld, eb / gmax, std::abs(lf - ld) / ld, ef / gmax};
}

// The bounds. To first order, a computed result's error is a sum of the effects of the roundings
// on the way, sum_i c_i d_i. The float model rounds every value it computes, |d_i| <= u32 = 2^-24;
// the bf16 model rounds the values it stores, a subset of those, to |d_i| <= u16 = 2^-8 (and the
// rest to u32, negligible beside them). With the same coefficients c_i and roundings of random
// sign, such sums grow as the root of the sum of their squares, so the bf16 error is at most
// about u16 / u32 = 2^16 times the float one; we allow 4 times that for the spread of the largest
// of many random sums. The loss is one such sum, whose spread is wider: it gets the worst case
// instead, one u16 per rounding on the way through layers of gain about one: a block stores at
// most 11 activations (Llama: h1, q, k, v, attention, res, h2, gate, up, SwiGLU, out) forward and
// as many gradients backward; the embeddings, the final norm and dx add 3: for 2 layers at most
// 2 (11 + 11) + 3 = 47, so 48 u16 = 0.19 relative. A missing accumulation or an op on the wrong
// operands gives errors of order one; the last check shows the errors are bf16's, not float's.
void expect_bf16_errors(const Errors& e) {
  const double u16 = 0x1p-8, u32 = 0x1p-24;
  std::printf("loss: bf16 %.3g, float %.3g; gradients: bf16 %.3g, float %.3g (relative)\n", e.loss16, e.loss32,
              e.grad16, e.grad32);
  EXPECT_LE(e.loss16, 48 * u16);
  EXPECT_LE(e.grad16, 4 * (u16 / u32) * e.grad32);
  EXPECT_GT(e.grad16, 100 * e.grad32) << "the bf16 model computes as precisely as float: is anything rounded?";
}

TEST(Bf16Model, Gpt2FollowsDoubleWithinTheRoundingOfWhatItStores) {
  for (bool tied : {true, false}) {
    SCOPED_TRACE(tied ? "tied" : "untied");
    expect_bf16_errors(errors_against_double<Gpt2>(test::small_config("gpt2", tied, 32, 37, 16), 2, 16));
  }
}

TEST(Bf16Model, LlamaFollowsDoubleWithinTheRoundingOfWhatItStores) {
  for (bool tied : {true, false}) {  // untied: with every optional bias
    SCOPED_TRACE(tied ? "tied" : "untied");
    expect_bf16_errors(errors_against_double<Llama>(test::small_config("llama", tied, 32, 37, 16), 2, 16));
  }
}

// Training: AdamW updates the float master weights, and each forward reads them rounded afresh
// (were the compute copy stale, the bf16 loss would not move). On a fixed batch both the float and
// the bf16 model fit it, and the bf16 losses follow the float ones.
template <template <class> class Family>
void expect_trains_like_float(const ModelConfig& cfg) {
  Family<float> mf(cfg);
  Family<bf16> mb(cfg);
  mf.init(1);
  mb.init(1);
  OptimConfig oc;
  oc.lr = 3e-3;
  oc.weight_decay = 0;
  AdamW of(mf.params(), oc), ob(mb.params(), oc);
  const int B = 4, T = 16;
  const test::Batch b = test::random_batch(B, T, cfg.vocab_size, 2);
  double first = 0, lf = 0, lb = 0;
  for (int step = 0; step < 40; ++step) {
    mf.params().zero_grad();
    mb.params().zero_grad();
    lf = mf.forward(b.x.data(), b.y.data(), B, T, 1.0 / (B * T));
    lb = mb.forward(b.x.data(), b.y.data(), B, T, 1.0 / (B * T));
    if (step == 0) first = lf;
    mf.backward();
    mb.backward();
    of.step(mf.params(), oc.lr);
    ob.step(mb.params(), oc.lr);
  }
  std::printf("loss from %.4f to %.4f (float), %.4f (bf16)\n", first, lf, lb);
  EXPECT_LT(lf, 0.5 * first);
  EXPECT_LT(lb, 0.5 * first);
  EXPECT_NEAR(lb, lf, 0.05 * lf);
}

TEST(Bf16Model, Gpt2TrainsLikeFloat) { expect_trains_like_float<Gpt2>(test::small_config("gpt2", true, 32, 37, 16)); }
TEST(Bf16Model, LlamaTrainsLikeFloat) {
  expect_trains_like_float<Llama>(test::small_config("llama", false, 32, 37, 16));
}

// What bf16 storage is for: the activations take half the bytes. Only the statistics (mean, rstd,
// lse, losses: a few values per row against the rows' widths) stay float.
template <template <class> class Family>
double activation_bytes_ratio(const ModelConfig& cfg) {
  const int B = 2, T = 32;
  const test::Batch b = test::random_batch(B, T, cfg.vocab_size, 3);
  auto bytes = [&](auto& m) {
    m.init(1);
    m.forward(b.x.data(), b.y.data(), B, T, 1.0);
    return double(m.activation_bytes());
  };
  Family<float> f(cfg);
  Family<bf16> h(cfg);
  return bytes(h) / bytes(f);
}
TEST(Bf16Model, ActivationsTakeHalfTheBytes) {
  for (double r : {activation_bytes_ratio<Gpt2>(test::small_config("gpt2", true, 64, 37, 32)),
                   activation_bytes_ratio<Llama>(test::small_config("llama", true, 64, 37, 32))}) {
    EXPECT_GT(r, 0.5);
    EXPECT_LT(r, 0.55);
  }
}

// KV-cache decoding over bf16 storage (infer/decoder.cpp on the bf16 table): the decoder rounds
// the weights itself (none of this model's forwards has run), and at every position its logits,
// token by token or after a prefill, follow the bf16 model's full forward over the prefix. The
// two run the same ops on one row and on t rows: their float sums differ in the last bits, and a stored value can then round to the
// neighbouring bf16 value, 2^-8 relative; through the 2 layers' 22 stored values per row and the
// final norm that is the 48 u of the bound above, relative to the largest logit.
template <template <class> class Family>
double decoder_error(const ModelConfig& cfg) {
  ModelOf<Family<bf16>> owner(cfg);
  Model& m = owner;
  test::randomise(m, 3);
  auto dec = make_decoder(m);
  const test::Batch b = test::random_batch(1, 12, cfg.vocab_size, 4);
  std::vector<float> full(cfg.vocab_size);
  double worst = 0;
  // The decoder's logits after t tokens against the full forward's, relative to the largest.
  auto compare = [&](const float* got, int t) {
    m.forward(b.x.data(), nullptr, 1, t);
    m.last_logits(full.data());
    double d = 0, mx = 0;
    for (int v = 0; v < cfg.vocab_size; ++v) {
      d = std::max(d, std::abs(double(got[v]) - full[v]));
      mx = std::max(mx, std::abs(double(full[v])));
    }
    worst = std::max(worst, d / mx);
  };
  for (int t = 1; t <= 12; ++t) compare(dec->feed(b.x[t - 1]), t);
  for (int n : {1, 7, 12}) {  // a prefill of n rows from an empty cache: the same bound
    dec->reset();
    compare(dec->prefill(b.x.data(), n), n);
  }
  return worst;
}
TEST(Bf16Model, DecodingFollowsTheFullForward) {
  for (double e : {decoder_error<Gpt2>(test::small_config("gpt2", true, 32, 37, 16)),
                   decoder_error<Llama>(test::small_config("llama", false, 32, 37, 16))}) {
    std::printf("decoder against the full forward: %.3g of the largest logit\n", e);
    EXPECT_LE(e, 48 * 0x1p-8);
  }
}

// Tensor parallelism over bf16 storage: the model on `size` ranks (threads) against the same bf16
// model on one rank, on the same weights. A rank rounds its part of a row-parallel output to bf16
// before the all-reduce sums the parts in float and rounds once more, where the whole model rounds
// once: each all-reduced value may differ by that rounding, one u = 2^-8. Those are two of a
// block's stored values forward and two backward, among the 48 u of the bound above: the loss
// (relative) and every gradient (relative to the largest) within it, and not exactly equal.
template <template <class> class Family>
std::pair<double, double> tensor_parallel_errors(const ModelConfig& cfg, int size) {
  const int B = 2, T = 7;
  Family<bf16> whole(cfg);
  test::randomise(whole, 11);
  const test::Batch batch = test::random_batch(B, T, cfg.vocab_size, 12);
  const double scale = 1.0 / (B * T - 1);
  whole.params().zero_grad();
  const double loss = whole.forward(batch.x.data(), batch.y.data(), B, T, scale);
  whole.backward();
  const auto& wps = whole.params();
  const auto run = test::run_split<Family<bf16>>(cfg, size, wps, batch, B, T, scale);
  std::vector<float> grads(wps.flat_size(), 0.0f);
  for (int r = 0; r < size; ++r) test::place_split<Family<bf16>>(cfg, size, r, wps, run.grads[size_t(r)], grads.data());
  const auto& losses = run.losses;
  double gmax = 0, e = 0;
  for (size_t i = 0; i < grads.size(); ++i) {
    gmax = std::max(gmax, std::abs(double(wps.grads()[i])));
    e = std::max(e, std::abs(double(grads[i]) - wps.grads()[i]));
  }
  return {std::abs(losses[0] - loss) / loss, e / gmax};
}

TEST(Bf16Model, TensorParallelFollowsOneRank) {
  ModelConfig g = test::small_config("gpt2", false, 32, 37, 16), l = test::small_config("llama", false, 32, 37, 16);
  for (auto [loss, grad] : {tensor_parallel_errors<Gpt2>(g, 2), tensor_parallel_errors<Llama>(l, 2)}) {
    std::printf("tensor parallel against one rank: loss %.3g, gradients %.3g (relative)\n", loss, grad);
    EXPECT_LE(loss, 48 * 0x1p-8);
    EXPECT_LE(grad, 48 * 0x1p-8);
    EXPECT_GT(grad, 0.0);  // the parts were rounded before the sum: not the whole model's bits
  }
}

TEST(Bf16Ops, Tf32IsRefused) {
  EXPECT_THROW(ops::cpu_backend<bf16>(ops::MatmulPrecision::tf32), UserError);
  EXPECT_EQ(ops::cpu_backend<bf16>().matmul_precision, ops::MatmulPrecision::bf16);
}

}  // namespace
}  // namespace lmf
