// CUDA attention and encoder ops (ops/cuda/attention.cu, encoder.cu) against the CPU ops
// (ops/ops.h), the specification, in fp32 on the same inputs. Every test that runs a kernel skips
// without a CUDA device; in a build without CUDA only a placeholder runs.
//
// Tolerances as in tests/gpu/test_cuda_ops.cpp: for each output a bound on |computed - exact| from
// tests/unit/test_ops.cpp (gamma(K) = lambda sqrt(K) u, Higham & Mary's probabilistic bound; the
// attention chain is its check_attention_gqa, see attention_bounds below). Both the GPU and the
// CPU result lie within that bound of the exact (double) value, so they lie within twice it of
// each other: every tolerance here is kBoth times the bound. The encoder is compared bitwise: the
// GPU adds the same terms in the same order as the CPU (see check_encoder).
// Shapes are odd on purpose: T not a multiple of the 32-key chunk (37, 33, 257), hs below, at and
// above the warp (10, 16, 32, 33, 64, 96, 256: 1, 2, 4 and 8 dimensions per lane).
#include <gtest/gtest.h>

#include <string>
#include <utility>

#include "core/error.h"
#include "ops/cuda_backend.h"

#ifndef LMF_HAVE_CUDA

TEST(CudaAttention, Skipped) { GTEST_SKIP() << "built without CUDA"; }

#else

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/rng.h"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/ops_cuda.h"
#include "ops/ops.h"
#include "ops/reference.h"
#include "gpu/cuda_test_util.h"

namespace lmf {
namespace {

using namespace test;  // NOLINT: the shared GPU test helpers (cuda_test_util.h)

// ---- attention ----------------------------------------------------------------------------------

struct AttnShape {
  int B, T, NH, KVH, hs;
};
std::string describe(const AttnShape& s) {
  return "B = " + std::to_string(s.B) + ", T = " + std::to_string(s.T) +
         ", NH = " + std::to_string(s.NH) + ", KVH = " + std::to_string(s.KVH) +
         ", hs = " + std::to_string(s.hs);
}

// The bound of test_ops.cpp's attention checks (op_tolerance.h, derivation there) with one term
// more, for the GPU's online softmax over chunks of 32 keys, times kBoth: the CPU's error is
// within the smaller bound, so kBoth times this one covers |GPU - CPU|. Layouts: out, dq (B, T,
// NH*hs); lse (B, NH, T); dk, dv (B, T, KVH*hs).
//
// With p = bf16 the tensor-core kernels (attention_mma.cu) run: every product's operands are
// rounded to bf16 (Tol::op = 2u + u^2, u = 2^-8, per term), and the online softmax steps over 64
// keys. The CPU's fp32 error is within the smaller fp32 bound, so kBoth times this bound still
// covers |GPU - CPU|.
Tol kernel_tol(ops::MatmulPrecision p) {
  Tol t = tol_f32();
  if (p == ops::MatmulPrecision::bf16) {
    const double u = ops::operand_unit_roundoff(p);
    t.op = 2 * u + u * u;
  }
  return t;
}
int online_chunk(ops::MatmulPrecision p) { return p == ops::MatmulPrecision::bf16 ? 64 : 32; }

AttentionTolerance attention_tolerances(const AttnShape& s, const Vec& q, const Vec& k, const Vec& v,
                                        const Vec& dout, ops::MatmulPrecision p) {
  Vec out_r(q.size()), lse_r((size_t)s.B * s.NH * s.T);
  ops::ref::attention_gqa_forward(out_r.data(), lse_r.data(), q.data(), k.data(), v.data(), s.B, s.T, s.NH,
                                  s.KVH, s.hs);
  AttentionTolerance r = attention_tolerance(q, k, v, dout, out_r, lse_r, s.B, s.T, s.NH, s.KVH, s.hs,
                                             kernel_tol(p), online_chunk(p));
  for (Vec* x : {&r.out, &r.lse, &r.dq, &r.dk, &r.dv})
    for (double& e : *x) e *= kBoth;
  return r;
}

// Multi-head attention over a packed qkv (B, T, 3C), C = NH * hs.
// The tensor-core kernels must really round: somewhere their output is further from the CPU's
// fp32 one than the fp32 kernels' bound allows.
void expect_not_fp32(const char* what, const FVec& gpu, const FVec& cpu, const Vec& tol_f32_bound) {
  double worst = 0;
  for (size_t i = 0; i < cpu.size(); ++i)
    worst = std::max(worst, std::abs((double)gpu[i] - cpu[i]) / tol_f32_bound[i]);
  EXPECT_GT(worst, 1.0) << what << ": within the fp32 bound everywhere, so not bf16 products";
}

// FlashAttention's rule against the CPU's bf16 emulation (the same operand roundings, cpu/
// attention.cpp): the GPU's largest error against the exact op is at most twice the emulation's
// own, plus the fp32 kernels' bound for the sums' other order. Tighter than the bf16 bound, which
// covers every operand's worst rounding at once.
void expect_within_twice_emulation(const char* what, const FVec& gpu, const FVec& emu, const Vec& exact,
                                   const Vec& f32_bound) {
  double e_gpu = 0, e_emu = 0, slack = 0;
  for (size_t i = 0; i < exact.size(); ++i) {
    e_gpu = std::max(e_gpu, std::abs((double)gpu[i] - exact[i]));
    e_emu = std::max(e_emu, std::abs((double)emu[i] - exact[i]));
    slack = std::max(slack, f32_bound[i]);
  }
  EXPECT_LE(e_gpu, 2 * e_emu + slack) << what << ": the GPU's error " << e_gpu << " against the emulation's "
                                      << e_emu;
}

void check_attention(int B, int T_, int NH, int hs, ops::MatmulPrecision p = ops::MatmulPrecision::fp32) {
  const AttnShape s{B, T_, NH, NH, hs};
  SCOPED_TRACE(describe(s) + ", " + ops::to_string(p));
  const int C = NH * hs;
  const size_t BT = (size_t)B * T_;
  const Vec qkv = rand_vec(BT * 3 * C, 24), dout = rand_vec(BT * C, 25);
  const Qkv sep = split_qkv(qkv, BT, C);
  const AttentionTolerance tol = attention_tolerances(s, sep.q, sep.k, sep.v, dout, p);
  const Vec tol_dqkv = join_qkv(tol.dq, tol.dk, tol.dv, BT, C);

  // CPU, the specification.
  const FVec qkv_f = to_f(qkv), dout_f = to_f(dout);
  FVec out_c(BT * C), lse_c((size_t)B * NH * T_), dqkv_c = nans(qkv.size());
  ops::attention_forward<float>(out_c.data(), lse_c.data(), qkv_f.data(), B, T_, C, NH);
  ops::attention_backward<float>(dqkv_c.data(), dout_f.data(), qkv_f.data(), out_c.data(),
                                 lse_c.data(), B, T_, C, NH);
  // GPU: every output starts as NaN, so an element left unwritten fails.
  DeviceBuffer<float> d_qkv(qkv_f), d_dout(dout_f), d_out(nans(out_c.size())),
      d_lse(nans(lse_c.size())), d_dqkv(nans(qkv.size()));
  cuda::attention_forward(d_out.data(), d_lse.data(), d_qkv.data(), B, T_, C, NH, 0, p);
  cuda::attention_backward(d_dqkv.data(), d_dout.data(), d_qkv.data(), d_out.data(), d_lse.data(),
                           B, T_, C, NH, 0, p);
  const FVec dqkv_g = d_dqkv.to_host();
  expect_close("out", d_out.to_host(), out_c, tol.out);
  expect_close("lse", d_lse.to_host(), lse_c, tol.lse);
  expect_close("dqkv", dqkv_g, dqkv_c, tol_dqkv);
  if (p == ops::MatmulPrecision::bf16 && T_ > 1) {
    const AttentionTolerance f32 = attention_tolerances(s, sep.q, sep.k, sep.v, dout, ops::MatmulPrecision::fp32);
    expect_not_fp32("out", d_out.to_host(), out_c, f32.out);
    expect_not_fp32("dqkv", dqkv_g, dqkv_c, join_qkv(f32.dq, f32.dk, f32.dv, BT, C));
    const auto& emu = ops::cpu_backend<float>(p);
    FVec out_e(BT * C), lse_e(lse_c.size()), dqkv_e(qkv.size());
    emu.attention_forward(out_e.data(), lse_e.data(), qkv_f.data(), B, T_, C, NH);
    emu.attention_backward(dqkv_e.data(), dout_f.data(), qkv_f.data(), out_e.data(), lse_e.data(), B, T_, C, NH);
    Vec out_x(BT * C), lse_x(lse_c.size()), dqkv_x(qkv.size());
    ops::ref::attention_forward(out_x.data(), lse_x.data(), qkv.data(), B, T_, C, NH);
    ops::ref::attention_backward(dqkv_x.data(), dout.data(), qkv.data(), out_x.data(), lse_x.data(), B, T_, C, NH);
    expect_within_twice_emulation("out", d_out.to_host(), out_e, out_x, f32.out);
    expect_within_twice_emulation("dqkv", dqkv_g, dqkv_e, dqkv_x, join_qkv(f32.dq, f32.dk, f32.dv, BT, C));
  }

  // Deterministic: the same calls again give the same bits.
  DeviceBuffer<float> d_out2(nans(out_c.size())), d_lse2(nans(lse_c.size())),
      d_dqkv2(nans(qkv.size()));
  cuda::attention_forward(d_out2.data(), d_lse2.data(), d_qkv.data(), B, T_, C, NH, 0, p);
  cuda::attention_backward(d_dqkv2.data(), d_dout.data(), d_qkv.data(), d_out.data(), d_lse.data(),
                           B, T_, C, NH, 0, p);
  EXPECT_EQ(d_out2.to_host(), d_out.to_host());
  EXPECT_EQ(d_lse2.to_host(), d_lse.to_host());
  EXPECT_EQ(d_dqkv2.to_host(), dqkv_g);
}

void check_attention_gqa(const AttnShape& s, ops::MatmulPrecision p = ops::MatmulPrecision::fp32) {
  SCOPED_TRACE(describe(s) + ", " + ops::to_string(p));
  const int B = s.B, T_ = s.T, NH = s.NH, KVH = s.KVH, hs = s.hs;
  const size_t BT = (size_t)B * T_, C = (size_t)NH * hs, KC = (size_t)KVH * hs;
  const Vec q = rand_vec(BT * C, 50), k = rand_vec(BT * KC, 51), v = rand_vec(BT * KC, 52),
            dout = rand_vec(BT * C, 53);
  const AttentionTolerance tol = attention_tolerances(s, q, k, v, dout, p);

  const FVec qf = to_f(q), kf = to_f(k), vf = to_f(v), dof = to_f(dout);
  FVec out_c(BT * C), lse_c((size_t)B * NH * T_), dq_c = nans(q.size()), dk_c = nans(k.size()),
                                                  dv_c = nans(v.size());
  ops::attention_gqa_forward<float>(out_c.data(), lse_c.data(), qf.data(), kf.data(), vf.data(), B,
                                    T_, NH, KVH, hs);
  ops::attention_gqa_backward<float>(dq_c.data(), dk_c.data(), dv_c.data(), dof.data(), qf.data(),
                                     kf.data(), vf.data(), out_c.data(), lse_c.data(), B, T_, NH,
                                     KVH, hs);

  DeviceBuffer<float> d_q(qf), d_k(kf), d_v(vf), d_dout(dof), d_out(nans(out_c.size())),
      d_lse(nans(lse_c.size()));
  cuda::attention_gqa_forward(d_out.data(), d_lse.data(), d_q.data(), d_k.data(), d_v.data(), B, T_,
                              NH, KVH, hs, 0, p);
  auto backward = [&](DeviceBuffer<float>& dq, DeviceBuffer<float>& dk, DeviceBuffer<float>& dv) {
    cuda::attention_gqa_backward(dq.data(), dk.data(), dv.data(), d_dout.data(), d_q.data(),
                                 d_k.data(), d_v.data(), d_out.data(), d_lse.data(), B, T_, NH, KVH,
                                 hs, 0, p);
  };
  DeviceBuffer<float> d_dq(nans(q.size())), d_dk(nans(k.size())), d_dv(nans(v.size()));
  backward(d_dq, d_dk, d_dv);
  expect_close("out", d_out.to_host(), out_c, tol.out);
  expect_close("lse", d_lse.to_host(), lse_c, tol.lse);
  expect_close("dq", d_dq.to_host(), dq_c, tol.dq);
  expect_close("dk", d_dk.to_host(), dk_c, tol.dk);
  expect_close("dv", d_dv.to_host(), dv_c, tol.dv);
  if (p == ops::MatmulPrecision::bf16 && T_ > 1) {
    const AttentionTolerance f32 = attention_tolerances(s, q, k, v, dout, ops::MatmulPrecision::fp32);
    expect_not_fp32("out", d_out.to_host(), out_c, f32.out);
    // The gradients together (one of them can stay inside its looser fp32 bound).
    auto cat = [](auto a, const auto& b, const auto& c) {
      a.insert(a.end(), b.begin(), b.end());
      a.insert(a.end(), c.begin(), c.end());
      return a;
    };
    expect_not_fp32("dq, dk, dv", cat(d_dq.to_host(), d_dk.to_host(), d_dv.to_host()), cat(dq_c, dk_c, dv_c),
                    cat(f32.dq, f32.dk, f32.dv));
    const auto& emu = ops::cpu_backend<float>(p);
    FVec out_e(out_c.size()), lse_e(lse_c.size()), dq_e(q.size()), dk_e(k.size()), dv_e(v.size());
    emu.attention_gqa_forward(out_e.data(), lse_e.data(), qf.data(), kf.data(), vf.data(), B, T_, NH, KVH, hs);
    emu.attention_gqa_backward(dq_e.data(), dk_e.data(), dv_e.data(), dof.data(), qf.data(), kf.data(), vf.data(),
                               out_e.data(), lse_e.data(), B, T_, NH, KVH, hs);
    Vec out_x(out_c.size()), lse_x(lse_c.size()), dq_x(q.size()), dk_x(k.size()), dv_x(v.size());
    ops::ref::attention_gqa_forward(out_x.data(), lse_x.data(), q.data(), k.data(), v.data(), B, T_, NH, KVH, hs);
    ops::ref::attention_gqa_backward(dq_x.data(), dk_x.data(), dv_x.data(), dout.data(), q.data(), k.data(),
                                     v.data(), out_x.data(), lse_x.data(), B, T_, NH, KVH, hs);
    expect_within_twice_emulation("out", d_out.to_host(), out_e, out_x, f32.out);
    expect_within_twice_emulation("dq", d_dq.to_host(), dq_e, dq_x, f32.dq);
    expect_within_twice_emulation("dk", d_dk.to_host(), dk_e, dk_x, f32.dk);
    expect_within_twice_emulation("dv", d_dv.to_host(), dv_e, dv_x, f32.dv);
  }

  // Deterministic: the same backward again gives the same bits (dk, dv sum over the group in a
  // fixed order).
  DeviceBuffer<float> d_dq2(nans(q.size())), d_dk2(nans(k.size())), d_dv2(nans(v.size()));
  backward(d_dq2, d_dk2, d_dv2);
  EXPECT_EQ(d_dq2.to_host(), d_dq.to_host());
  EXPECT_EQ(d_dk2.to_host(), d_dk.to_host());
  EXPECT_EQ(d_dv2.to_host(), d_dv.to_host());
}

// Both kernel families (ops_cuda.h AttentionKernel): the row kernels, and the tiled ones (64-row
// tiles, 32-row steps; heads above 128 fall back to rows). The process-wide choice is restored.
class CudaAttentionKernels : public ::testing::TestWithParam<cuda::AttentionKernel> {
 protected:
  void SetUp() override {
    saved_ = cuda::attention_kernel();
    cuda::set_attention_kernel(GetParam());
  }
  void TearDown() override { cuda::set_attention_kernel(saved_); }
  cuda::AttentionKernel saved_{};
};

TEST_P(CudaAttentionKernels, MultiHead) {
  SKIP_WITHOUT_DEVICE();
  check_attention(2, 37, 3, 10);  // T past one 32-key chunk, hs below the warp
  check_attention(1, 1, 2, 8);    // one key
  check_attention(2, 33, 2, 32);  // hs exactly one dimension per lane
  check_attention(2, 257, 2, 64);  // five 64-row tiles, the last of one row
#ifdef LMF_CUDA_EMU
  // The CPU emulation of CUDA (tests/cuda_emu) needs minutes for the row kernels' 12K warps
  // here; it runs this case with the tiled kernels only.
  if (GetParam() == cuda::AttentionKernel::tiled)
#endif
    if (test::production_shapes()) check_attention(1, 1024, 12, 64);  // GPT-2 124M's heads at T = 1024
}

TEST_P(CudaAttentionKernels, GroupedQuery) {
  SKIP_WITHOUT_DEVICE();
  check_attention_gqa({2, 37, 4, 2, 16});
  check_attention_gqa({2, 37, 4, 1, 16});  // multi-query
  check_attention_gqa({1, 257, 4, 2, 64});
  check_attention_gqa({1, 40, 3, 3, 33});   // KVH == NH; 2 dimensions per lane, one partial
  check_attention_gqa({1, 20, 2, 1, 96});   // 4 per lane (96 rounds up), the last one idle
  check_attention_gqa({1, 130, 4, 1, 128});  // the largest tiled head (the most shared memory)
  check_attention_gqa({1, 65, 2, 1, 256});  // the largest head: 8 per lane (rows in both)
}

INSTANTIATE_TEST_SUITE_P(Kernels, CudaAttentionKernels,
                         ::testing::Values(cuda::AttentionKernel::rowwise, cuda::AttentionKernel::tiled),
                         [](const auto& info) {
                           return info.param == cuda::AttentionKernel::tiled ? "tiled" : "rowwise";
                         });

// The tensor-core kernels (matmul_precision = bf16; attention_mma.cu): head sizes that are
// multiples of 16 up to 128 (others run the fp32 kernels), T below, at and past the 64-row tiles, every warp of a tile
// partly past T, GQA and MQA groups.
TEST(CudaAttentionTensorCores, MultiHead) {
  SKIP_WITHOUT_DEVICE();
  constexpr auto bf16 = ops::MatmulPrecision::bf16;
  check_attention(1, 1, 2, 16, bf16);    // one key
  check_attention(2, 37, 3, 16, bf16);   // one tile, its last warps past T
  check_attention(2, 65, 2, 32, bf16);   // two tiles, the second of one row
  check_attention(1, 200, 2, 64, bf16);  // GPT-2's head size, four tiles
  check_attention(1, 100, 2, 128, bf16);  // Llama 2 / 3's: 32-row steps, dk and dv in two kernels
  check_attention(1, 70, 2, 48, bf16);    // 3 k-slabs of 16
  check_attention(1, 45, 2, 80, bf16);    // Phi-2's: 5 k-slabs, the 32-row steps
  if (test::production_shapes()) check_attention(1, 1024, 12, 64, bf16);  // GPT-2 124M's, T = 1024 (25 s emulated)
}

TEST(CudaAttentionTensorCores, GroupedQuery) {
  SKIP_WITHOUT_DEVICE();
  constexpr auto bf16 = ops::MatmulPrecision::bf16;
  check_attention_gqa({2, 37, 4, 2, 16}, bf16);
  check_attention_gqa({1, 70, 4, 1, 32}, bf16);   // multi-query
  check_attention_gqa({1, 130, 4, 2, 64}, bf16);  // three tiles, the last of two rows
  check_attention_gqa({2, 97, 4, 1, 128}, bf16);  // hs 128, multi-query
  check_attention_gqa({1, 66, 4, 2, 96}, bf16);
}

// A small grouped-query forward (B = 1, NH = 2, KVH = 1) on device copies of random q, k, v:
// forward(out, lse, q, k, v, B, T, NH, KVH, hs) is called and out comes back.
template <class Forward>
FVec small_gqa_out(int T_, int hs, uint64_t seed, Forward&& forward) {
  const int NH = 2, KVH = 1;
  const size_t C = (size_t)NH * hs, KC = (size_t)KVH * hs;
  DeviceBuffer<float> d_q(to_f(rand_vec(T_ * C, seed))), d_k(to_f(rand_vec(T_ * KC, seed + 1))),
      d_v(to_f(rand_vec(T_ * KC, seed + 2))), out(nans(T_ * C)), lse(nans((size_t)NH * T_));
  forward(out.data(), lse.data(), d_q.data(), d_k.data(), d_v.data(), 1, T_, NH, KVH, hs);
  return out.to_host();
}

// Head sizes the tensor-core kernels do not take run the fp32 kernels: the same bits.
TEST(CudaAttentionTensorCores, OtherHeadSizesStayFp32) {
  SKIP_WITHOUT_DEVICE();
  auto with = [](ops::MatmulPrecision p) {
    return [p](auto... a) { cuda::attention_gqa_forward(a..., 0, p); };
  };
  EXPECT_EQ(small_gqa_out(40, 24, 70, with(ops::MatmulPrecision::bf16)),
            small_gqa_out(40, 24, 70, with(ops::MatmulPrecision::fp32)));
}

// The backend tables pass their precision to attention: the bf16 table runs the tensor cores.
TEST(CudaAttentionTensorCores, Bf16BackendTableRunsThem) {
  SKIP_WITHOUT_DEVICE();
  const FVec direct =
      small_gqa_out(50, 32, 74, [](auto... a) { cuda::attention_gqa_forward(a..., 0, ops::MatmulPrecision::bf16); });
  EXPECT_EQ(small_gqa_out(50, 32, 74, cuda::backend(ops::MatmulPrecision::bf16).attention_gqa_forward), direct);
  EXPECT_NE(small_gqa_out(50, 32, 74, cuda::backend(ops::MatmulPrecision::fp32).attention_gqa_forward), direct);
}

// The shape checks run on the host before any launch: no device needed. (The first pointer is
// typed: the ops are overloaded over float and bf16 storage.)
TEST(CudaAttention, RejectsBadHeads) {
  float* none = nullptr;
  EXPECT_THROW(
      cuda::attention_gqa_forward(none, nullptr, nullptr, nullptr, nullptr, 1, 4, 2, 1, 257),
      Error);  // head size above the limit
  EXPECT_THROW(cuda::attention_gqa_backward(none, nullptr, nullptr, nullptr, nullptr, nullptr,
                                            nullptr, nullptr, nullptr, 1, 4, 3, 2, 16),
               Error);  // NH not a multiple of KVH
  EXPECT_THROW(cuda::attention_forward(none, nullptr, nullptr, 1, 4, 30, 4), Error);
}

// ---- encoder ------------------------------------------------------------------------------------

// Bitwise against the CPU. Forward: each element is one fp32 add (or a copy), the same on both.
// Backward: the CPU adds dout[b, t] into each dwte element in (b, t) order and into each dwpe
// element in b order, one rounding per add; the GPU starts from the same value and adds the same
// terms in the same order, so the results are identical (no tolerance to derive).
void check_encoder(int B, int T_, int C, int V, bool with_wpe) {
  SCOPED_TRACE("B = " + std::to_string(B) + ", T = " + std::to_string(T_) +
               ", C = " + std::to_string(C) + ", V = " + std::to_string(V) +
               (with_wpe ? ", with wpe" : ", no wpe"));
  const size_t BT = (size_t)B * T_;
  const auto tokens = rand_tokens(BT, V, 7);
  const FVec wte = to_f(rand_vec((size_t)V * C, 8)), wpe = to_f(rand_vec((size_t)T_ * C, 9)),
             dout = to_f(rand_vec(BT * C, 10)), dwte0 = to_f(rand_vec(wte.size(), 11)),
             dwpe0 = to_f(rand_vec(wpe.size(), 12));

  FVec out_c = nans(BT * C), dwte_c = dwte0, dwpe_c = dwpe0;
  ops::encoder_forward<float>(out_c.data(), tokens.data(), wte.data(),
                              with_wpe ? wpe.data() : nullptr, B, T_, C);
  ops::encoder_backward<float>(dwte_c.data(), with_wpe ? dwpe_c.data() : nullptr, dout.data(),
                               tokens.data(), B, T_, C);

  DeviceBuffer<int32_t> d_tokens(tokens);
  DeviceBuffer<float> d_wte(wte), d_wpe(wpe), d_dout(dout), d_out(nans(BT * C)), d_dwte(dwte0),
      d_dwpe(dwpe0);
  cuda::encoder_forward(d_out.data(), d_tokens.data(), d_wte.data(),
                        with_wpe ? d_wpe.data() : nullptr, B, T_, C);
  // Gradients start from dwte0, dwpe0 (nonzero): a kernel that assigned fails.
  cuda::encoder_backward(d_dwte.data(), with_wpe ? d_dwpe.data() : nullptr, d_dout.data(),
                         tokens.data(), B, T_, C);
  EXPECT_EQ(d_out.to_host(), out_c);
  EXPECT_EQ(d_dwte.to_host(), dwte_c);
  EXPECT_EQ(d_dwpe.to_host(), with_wpe ? dwpe_c : dwpe0);  // untouched without a position table

  // A second backward accumulates again, and still matches the CPU doing the same.
  ops::encoder_backward<float>(dwte_c.data(), with_wpe ? dwpe_c.data() : nullptr, dout.data(),
                               tokens.data(), B, T_, C);
  cuda::encoder_backward(d_dwte.data(), with_wpe ? d_dwpe.data() : nullptr, d_dout.data(),
                         tokens.data(), B, T_, C);
  EXPECT_EQ(d_dwte.to_host(), dwte_c);
  EXPECT_EQ(d_dwpe.to_host(), with_wpe ? dwpe_c : dwpe0);
}

TEST(CudaEncoder, MatchesCpuBitwise) {
  SKIP_WITHOUT_DEVICE();
  // V = 7 over 74 positions: every token repeats about ten times, so each dwte row sums many
  // terms and the order matters.
  check_encoder(2, 37, 33, 7, true);
  check_encoder(2, 37, 33, 7, false);
  check_encoder(3, 33, 300, 1000,
                true);  // C past one 256-thread channel tile; most rows untouched
  check_encoder(4, 130, 96, 50,
                false);  // the largest first, then smaller: the workspace is reused
  check_encoder(1, 1, 1, 1, true);
  check_encoder(2, 8, 130, 3, true);
}

// Tokens in a sorted run and in reverse: the grouping by token must keep (b, t) order inside each
// group whatever the input order (a stable sort), here with one token repeated everywhere.
TEST(CudaEncoder, RepeatedTokenSumsInPositionOrder) {
  SKIP_WITHOUT_DEVICE();
  const int B = 3, T_ = 50, C = 5;
  const size_t BT = (size_t)B * T_;
  std::vector<int32_t> tokens(BT);
  for (size_t i = 0; i < BT; ++i) tokens[i] = i % 3 == 0 ? 2 : (int32_t)(BT - i) % 4;
  // Magnitudes spread over many binades, so a different summation order changes the bits.
  Vec dd = rand_vec(BT * C, 60);
  for (size_t i = 0; i < dd.size(); ++i)
    dd[i] = (double)(float)(dd[i] * std::ldexp(1.0, (int)(i % 40) - 20));
  const FVec dout = to_f(dd), dwte0 = to_f(rand_vec(4 * C, 61));
  FVec dwte_c = dwte0;
  ops::encoder_backward<float>(dwte_c.data(), nullptr, dout.data(), tokens.data(), B, T_, C);
  DeviceBuffer<float> d_dwte(dwte0), d_dout(dout);
  cuda::encoder_backward(d_dwte.data(), nullptr, d_dout.data(), tokens.data(), B, T_, C);
  EXPECT_EQ(d_dwte.to_host(), dwte_c);
}

TEST(CudaEncoder, RejectsNegativeToken) {  // checked on the host before any launch
  const std::vector<int32_t> tokens = {0, -1};
  const float* none = nullptr;  // typed: the op is overloaded over float and bf16 storage
  EXPECT_THROW(cuda::encoder_backward(nullptr, nullptr, none, tokens.data(), 1, 2, 4), Error);
}

}  // namespace
}  // namespace lmf

#endif  // LMF_HAVE_CUDA
