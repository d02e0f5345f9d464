// The op profiler (train/op_profile.h): a pass-through (the same bits as the backend it wraps)
// that counts every op a step calls and the time it takes.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "guarded_backend.h"
#include "model/model.h"
#include "model_test_util.h"
#include "train/op_profile.h"

namespace lmf {
namespace {

struct Step {
  double loss;
  std::vector<float> grads;
};

// One forward and backward of a fresh model on backend be.
Step run_step(const ModelConfig& cfg, const ops::Backend<float>* be) {
  auto m = make_model(cfg, true, {}, be);
  m->init(3);
  const int B = 2, T = 8;
  test::Batch b = test::random_batch(B, T, cfg.vocab_size, 17);
  Step s{m->forward(b.x.data(), b.y.data(), B, T, 1.0 / (B * T)), {}};
  m->backward();
  m->params().download_grads();
  s.grads.assign(m->params().grads(), m->params().grads() + m->params().flat_size());
  return s;
}

std::map<std::string, OpTime> by_name() {
  std::map<std::string, OpTime> r;
  for (const auto& op : op_profile()) r[op.op] = op;
  return r;
}

TEST(OpProfile, PassesThroughAndCountsEveryOp) {
  for (const std::string arch : {"gpt2", "llama"}) {
    SCOPED_TRACE(arch);
    const ModelConfig cfg = test::small_config(arch, /*tied=*/true, 16, 13, 8);  // 2 layers
    const Step plain = run_step(cfg, nullptr);
    reset_op_profile();
    const Step prof = run_step(cfg, &profiled_backend(ops::cpu_backend<float>()));
    EXPECT_EQ(prof.loss, plain.loss);
    ASSERT_EQ(prof.grads.size(), plain.grads.size());
    EXPECT_EQ(std::memcmp(prof.grads.data(), plain.grads.data(), plain.grads.size() * sizeof(float)), 0);

    const auto ops = op_profile();
    for (size_t i = 1; i < ops.size(); ++i) EXPECT_GE(ops[i - 1].seconds, ops[i].seconds) << "most time first";
    auto n = by_name();
    const long L = cfg.n_layer;
    EXPECT_EQ(n["classifier_ce_forward"].calls, 1);
    EXPECT_EQ(n["encoder_forward"].calls, 1);
    EXPECT_EQ(n["encoder_backward"].calls, 1);
    if (arch == "gpt2") {
      EXPECT_EQ(n["matmul_forward"].calls, 3 * L);        // qkv, proj, fc proj
      EXPECT_EQ(n["matmul_gelu_forward"].calls, L);       // fc and its GELU, fused
      EXPECT_EQ(n["matmul_dgelu_backward"].calls, L);     // fc proj's backward and GELU's
      EXPECT_EQ(n["gelu_forward"].calls, L);              // recompute_mlp: GELU again in backward
      EXPECT_EQ(n.count("gelu_backward"), 0u);            // inside matmul_dgelu_backward
      EXPECT_EQ(n["attention_forward"].calls, L);
      EXPECT_EQ(n["attention_backward"].calls, L);
      EXPECT_EQ(n["layernorm_forward"].calls, L + 1);           // ln1 of each block, the final norm
      EXPECT_EQ(n["residual_layernorm_forward"].calls, L);      // ln2, fused with the residual before it
      EXPECT_EQ(n["residual_forward"].calls, L);                // the block's last residual
      EXPECT_EQ(n.count("rmsnorm_forward"), 0u);  // not GPT-2's
    } else {
      EXPECT_EQ(n["matmul_forward"].calls, 7 * L);  // q, k, v, o, gate, up, down
      EXPECT_EQ(n["attention_gqa_forward"].calls, L);
      EXPECT_EQ(n["rmsnorm_forward"].calls, L + 1);        // attn_norm of each block, the final norm
      EXPECT_EQ(n["residual_rmsnorm_forward"].calls, L);   // ffn_norm, fused with the residual before it
      EXPECT_EQ(n.count("layernorm_forward"), 0u);
    }
    for (const auto& op : ops) EXPECT_GE(op.seconds, 0.0) << op.op;
  }
}

// It wraps any backend: on the guarded stand-in device (tests/guarded_backend.h) the profiled
// step still touches device memory only inside the backend's ops, and matches the CPU bit for bit.
TEST(OpProfile, WrapsADeviceBackend) {
  test::Guarded::get().reset_violations();
  const ModelConfig cfg = test::small_config("gpt2", /*tied=*/false, 16, 13, 8);
  const Step plain = run_step(cfg, nullptr);
  reset_op_profile();
  const Step prof = run_step(cfg, &profiled_backend(test::guarded_backend()));
  EXPECT_EQ(prof.loss, plain.loss);
  EXPECT_EQ(std::memcmp(prof.grads.data(), plain.grads.data(), plain.grads.size() * sizeof(float)), 0);
  EXPECT_EQ(test::Guarded::get().violations(), 0);
  EXPECT_EQ(by_name()["matmul_backward"].calls, 6);  // qkv, proj, fc of 2 blocks; fc proj's is fused
  EXPECT_EQ(by_name()["matmul_dgelu_backward"].calls, 2);
  EXPECT_STREQ(profiled_backend(test::guarded_backend()).name, "guarded");
}

}  // namespace
}  // namespace lmf
