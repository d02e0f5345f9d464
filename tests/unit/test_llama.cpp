// Llama family: finite differences in double over every parameter of a tiny Llama (both RoPE
// conventions, tied and untied), float against double, and the golden test against llama2.c's
// published greedy output of the pretrained stories260K checkpoint.
#include <gtest/gtest.h>

#include "model_test_util.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>

#include "core/error.h"
#include "core/rng.h"
#include "data/sp_tokenizer.h"
#include "model/llama.h"
#include "model/llama2c.h"
#include "test_util.h"

namespace lmf {
namespace {

ModelConfig tiny(bool tied, bool interleaved) {
  ModelConfig c;
  c.arch = "llama";
  c.n_layer = 2;
  c.n_head = 4;
  c.n_kv_head = 2;
  c.n_embd = 16;
  c.ffn_hidden = 24;
  c.vocab_size = 11;
  c.block_size = 7;
  c.tied_embeddings = tied;
  c.rope_interleaved = interleaved;
  return c;
}

void gradcheck(bool tied, bool interleaved) {
  Llama<double> m(tiny(tied, interleaved));
  test::check_every_parameter_gradient(m, 2, 7, 11);
}

TEST(Llama, ParameterNames) {
  Llama<float> m(tiny(false, true));
  const auto& ps = m.params();
  for (const char* n : {"model.embed_tokens.weight", "model.layers.1.input_layernorm.weight",
                        "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                        "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight",
                        "model.layers.0.post_attention_layernorm.weight", "model.layers.0.mlp.gate_proj.weight",
                        "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight",
                        "model.norm.weight", "lm_head.weight"})
    EXPECT_GE(ps.find(n), 0) << n;
  EXPECT_EQ(ps.entry(size_t(ps.find("model.layers.0.self_attn.k_proj.weight"))).size, 8u * 16u);
  EXPECT_EQ(ps.entry(size_t(ps.find("model.layers.0.mlp.down_proj.weight"))).size, 16u * 24u);
  Llama<float> t(tiny(true, true));
  EXPECT_LT(t.params().find("lm_head.weight"), 0);
  EXPECT_EQ(t.index().lm_head, t.index().embed);
}

TEST(Llama, FiniteDifferenceGradientTiedInterleaved) { gradcheck(true, true); }
TEST(Llama, FiniteDifferenceGradientTiedRotateHalf) { gradcheck(true, false); }
TEST(Llama, FiniteDifferenceGradientUntiedInterleaved) { gradcheck(false, true); }
TEST(Llama, FiniteDifferenceGradientUntiedRotateHalf) { gradcheck(false, false); }

// The optional parts: attention and MLP biases, multi-query attention, llama3 RoPE scaling.
TEST(Llama, FiniteDifferenceGradientBiasesMqaLlama3Rope) {
  ModelConfig c = tiny(false, false);
  c.n_kv_head = 1;
  c.attention_bias = true;
  c.mlp_bias = true;
  c.rope_scaling = "llama3";
  c.rope_factor = 8;
  c.rope_original_context = 4;
  Llama<double> m(c);
  EXPECT_GE(m.params().find("model.layers.1.self_attn.o_proj.bias"), 0);
  EXPECT_GE(m.params().find("model.layers.0.mlp.down_proj.bias"), 0);
  EXPECT_EQ(m.params().entry(size_t(m.params().find("model.layers.0.self_attn.k_proj.bias"))).size, 4u);
  test::check_every_parameter_gradient(m, 2, 7, 11);
}

TEST(Llama, FloatMatchesDouble) {
  for (bool tied : {true, false}) {
    SCOPED_TRACE(tied ? "tied" : "untied");
    Llama<double> md(tiny(tied, false));
    Llama<float> mf(tiny(tied, false));
    test::expect_float_matches_double(mf, md, 3, 7, 11);
  }
}

const std::filesystem::path kShared = LMF_SHARED_DIR;
const std::filesystem::path kModel = kShared / "data/tinyllamas/stories260K.bin";
const std::filesystem::path kTok = kShared / "data/tinyllamas/tok512.bin";

TEST(Llama2c, GoldenGreedyStories260K) {
  if (!std::filesystem::exists(kModel)) GTEST_SKIP() << "no " << kModel;
  ModelConfig c = read_llama2c_config(kModel);
  EXPECT_EQ(c.n_embd, 64);
  EXPECT_EQ(c.ffn_hidden, 172);
  EXPECT_EQ(c.n_layer, 5);
  EXPECT_EQ(c.n_head, 8);
  EXPECT_EQ(c.n_kv_head, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.block_size, 512);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_TRUE(c.rope_interleaved);
  Llama<float> m(c);
  load_llama2c(m, kModel);
  std::vector<int32_t> ids = {1, 403, 407, 261, 378};
  const size_t prompt = ids.size();
  std::vector<float> logits(size_t(c.vocab_size));
  for (int step = 0; step < 24; ++step) {
    m.forward(ids.data(), nullptr, 1, int(ids.size()));
    m.last_logits(logits.data());
    ids.push_back(int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin()));
  }
  std::vector<int32_t> gen(ids.begin() + long(prompt), ids.end());
  const std::vector<int32_t> want = {432, 383, 286, 261, 376, 298, 315, 421, 395};
  ASSERT_EQ(std::vector<int32_t>(gen.begin(), gen.begin() + long(want.size())), want)
      << "generated: " << ::testing::PrintToString(gen);
  if (std::filesystem::exists(kTok)) {
    auto tok = data::SpTokenizer::load(kTok, c.vocab_size);
    std::string text = tok->decode(gen);
    EXPECT_TRUE(text.starts_with(", there was a little girl named Lily.")) << text;
    EXPECT_EQ(tok->decode(std::vector<int32_t>(ids.begin(), ids.begin() + long(prompt))), "Once upon a time");
  }
}

TEST(Llama2c, TruncatedFileIsUserErrorNamingIt) {
  if (!std::filesystem::exists(kModel)) GTEST_SKIP() << "no " << kModel;
  test::TempDir dir;
  std::string bytes = test::slurp(kModel);
  const auto bad = dir / "cut.bin";
  test::write_file(bad, bytes.substr(0, bytes.size() - 4));
  auto expect_error = [&](auto&& fn, const std::string& also) {
    try {
      fn();
      ADD_FAILURE() << "no UserError";
    } catch (const UserError& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find(bad.string()), std::string::npos) << msg;
      EXPECT_NE(msg.find(also), std::string::npos) << msg;
    }
  };
  const std::string sizes = std::to_string(bytes.size() - 4) + " bytes";
  expect_error([&] { read_llama2c_config(bad); }, std::to_string(bytes.size()));
  expect_error([&] { read_llama2c_config(bad); }, sizes);
  Llama<float> m(read_llama2c_config(kModel));
  expect_error([&] { load_llama2c(m, bad); }, std::to_string(bytes.size()));
  // A header with n_heads not dividing dim.
  std::string h = bytes;
  int32_t heads = 7;
  std::memcpy(h.data() + 12, &heads, 4);
  test::write_file(bad, h);
  expect_error([&] { read_llama2c_config(bad); }, "n_heads 7");
  test::write_file(bad, bytes.substr(0, 10));
  expect_error([&] { read_llama2c_config(bad); }, "header");
}

// Found by tests/fuzz/fuzz_llama2c: the size a header implies was summed in int64, so 31-bit
// dimensions could overflow it (undefined behaviour) and wrap to a small size. This 36-byte file
// (header + 2 floats) wrapped to exactly its own size and was accepted as a model with
// n_embd 2^30 and vocab_size 2^30 - 3, which Llama<float> then tried to allocate.
TEST(Llama2c, HeaderWhoseImpliedSizeOverflowsIsUserError) {
  test::TempDir dir;
  const auto bad = dir / "wrap.bin";
  const int32_t header[7] = {1 << 30, 1 << 30, 1, 1 << 29, 1 << 29, (1 << 30) - 3, 1};
  std::string bytes(sizeof header + 2 * sizeof(float), '\0');
  std::memcpy(bytes.data(), header, sizeof header);
  test::write_file(bad, bytes);
  try {
    read_llama2c_config(bad);
    ADD_FAILURE() << "no UserError";
  } catch (const UserError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(bad.string()), std::string::npos) << msg;
    EXPECT_NE(msg.find("implies over 2^63 bytes"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace lmf
