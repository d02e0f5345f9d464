// Hugging Face interoperability: tiny GPT-2 and Llama checkpoints written as transformers writes
// them (tools/hf_reference.py; fixtures in tests/fixtures/hf_tiny) load and give the reference
// logits and hidden states; export and re-import keep every weight (f32 exactly, bf16/f16 to
// their rounding), single-file and sharded; malformed checkpoints give one clear error.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "model/hf.h"
#include "model/model.h"
#include "test_util.h"

namespace lmf {
namespace {

namespace fs = std::filesystem;
const fs::path kFixtures = fs::path(LMF_SOURCE_DIR) / "tests/fixtures/hf_tiny";

struct Reference {
  int B = 0, T = 0;
  std::vector<int32_t> ids;
  SafetensorsFile file;
};

Reference read_reference(const std::string& name) {
  auto st = SafetensorsFile::open(kFixtures / (name + ".reference.safetensors"));
  const auto* ids = st.find("input_ids");
  EXPECT_NE(ids, nullptr);
  Reference r{int(ids->shape[0]), int(ids->shape[1]), {}, std::move(st)};
  r.ids.resize(size_t(r.B) * r.T);
  std::memcpy(r.ids.data(), r.file.data(*r.file.find("input_ids")), r.ids.size() * 4);
  return r;
}

std::vector<float> read_tensor(const SafetensorsFile& f, const std::string& name, const Shape& shape) {
  std::vector<float> v(size_t(numel(shape)));
  f.read_as_float(name, shape, v.data());
  return v;
}

// Worst-case float32 error of a forward pass against float64 on the same weights: each
// layer's dot products (attention over C and T, the MLP over C and its hidden width, the
// output projections) add their lengths to K, and the bound is gamma(K) * magnitude.
double forward_tolerance(const ModelConfig& c, int T, double magnitude) {
  const double K = c.n_layer * (2.0 * c.n_embd + T + c.ffn_size() + c.n_embd) + c.n_embd;
  const double u = std::ldexp(1.0, -24);
  return K * u / (1 - K * u) * magnitude;
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, double(std::abs(x)));
  return m;
}

// Loads fixture `name` and checks hidden states after each block and the logits at every position.
void check_fixture(const std::string& name) {
  SCOPED_TRACE(name);
  const fs::path dir = kFixtures / name;
  ModelConfig c = read_hf_config(dir);
  auto m = make_model(c);
  load_hf_weights(*m, dir);
  Reference ref = read_reference(name);
  const int B = ref.B, T = ref.T, C = c.n_embd, V = c.vocab_size;
  // Logits at every position: the last position of each prefix.
  auto want = read_tensor(ref.file, "logits", {B, T, V});
  const double tol = forward_tolerance(c, T, max_abs(want));
  std::vector<float> got(size_t(B) * V);
  std::vector<int32_t> prefix;
  double worst = 0;
  for (int t = 1; t <= T; ++t) {
    prefix.clear();
    for (int b = 0; b < B; ++b) prefix.insert(prefix.end(), ref.ids.begin() + b * T, ref.ids.begin() + b * T + t);
    m->forward(prefix.data(), nullptr, B, t);
    m->last_logits(got.data());
    for (int b = 0; b < B; ++b)
      for (int v = 0; v < V; ++v) {
        double d = std::abs(got[size_t(b) * V + v] - want[(size_t(b) * T + t - 1) * V + v]);
        worst = std::max(worst, d);
        ASSERT_LE(d, tol) << "logit b=" << b << " t=" << t - 1 << " v=" << v;
      }
  }
  ::testing::Test::RecordProperty(name + "_logit_err_over_tol", std::to_string(worst / tol));
  // Hidden states after each block, from the full forward.
  m->forward(ref.ids.data(), nullptr, B, T);
  for (int l = 0; l < c.n_layer; ++l) {
    auto h = read_tensor(ref.file, "hidden." + std::to_string(l), {B, T, C});
    const float* ours = nullptr;
    if (auto* g = family<Gpt2<float>>(*m)) ours = g->block_output(l);
    if (auto* q = family<Llama<float>>(*m)) ours = q->block_output(l);
    ASSERT_NE(ours, nullptr);
    const double htol = forward_tolerance(c, T, max_abs(h));
    for (size_t i = 0; i < h.size(); ++i) ASSERT_NEAR(ours[i], h[i], htol) << "hidden." << l << " at " << i;
  }
}

TEST(HfImport, Gpt2MatchesReferenceLogits) { check_fixture("gpt2"); }
// bf16 weights, two shards with an index, GQA, untied, llama3 RoPE scaling.
TEST(HfImport, LlamaShardedBf16MatchesReferenceLogits) { check_fixture("llama"); }
// f16 weights, attention and MLP biases, multi-query attention, tied, linear RoPE scaling.
TEST(HfImport, LlamaBiasF16MatchesReferenceLogits) { check_fixture("llama_bias"); }

TEST(HfImport, ConfigFields) {
  ModelConfig g = read_hf_config(kFixtures / "gpt2");
  EXPECT_EQ(g.arch, "gpt2");
  EXPECT_EQ(g.vocab_size, 300);
  EXPECT_EQ(g.block_size, 16);
  EXPECT_TRUE(g.tied_embeddings);
  ModelConfig l = read_hf_config(kFixtures / "llama");
  EXPECT_EQ(l.arch, "llama");
  EXPECT_EQ(l.n_kv_head, 2);
  EXPECT_EQ(l.ffn_size(), 72);
  EXPECT_EQ(l.rope_scaling, "llama3");
  EXPECT_EQ(l.rope_original_context, 8);
  EXPECT_FALSE(l.tied_embeddings);
  EXPECT_FALSE(l.rope_interleaved);
  ModelConfig b = read_hf_config(kFixtures / "llama_bias");
  EXPECT_TRUE(b.attention_bias);
  EXPECT_TRUE(b.mlp_bias);
  EXPECT_EQ(b.rope_scaling, "linear");
  EXPECT_DOUBLE_EQ(b.rope_factor, 2.0);
}

// Export then import: f32 keeps every bit; bf16 and f16 keep each weight rounded to nearest even.
TEST(HfExport, RoundTripEveryDtypeSingleAndSharded) {
  for (const char* name : {"gpt2", "llama", "llama_bias"}) {
    SCOPED_TRACE(name);
    ModelConfig c = read_hf_config(kFixtures / name);
    auto m = make_model(c);
    load_hf_weights(*m, kFixtures / name);
    for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
      for (bool sharded : {false, true}) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + (sharded ? " sharded" : " single"));
        test::TempDir tmp;
        HfExportOptions opt;
        opt.dtype = dt;
        opt.max_shard_bytes = sharded ? 4000 : 5000000000ull;
        save_hf(*m, tmp / "out", opt);
        EXPECT_EQ(fs::exists(tmp / "out/model.safetensors.index.json"), sharded);
        EXPECT_EQ(fs::exists(tmp / "out/model.safetensors"), !sharded);
        ModelConfig c2 = read_hf_config(tmp / "out");
        EXPECT_EQ(c2.arch, c.arch);
        EXPECT_EQ(c2.n_embd, c.n_embd);
        EXPECT_EQ(c2.kv_heads(), c.kv_heads());
        EXPECT_EQ(c2.ffn_size(), c.ffn_size());
        EXPECT_EQ(c2.tied_embeddings, c.tied_embeddings);
        EXPECT_EQ(c2.rope_scaling, c.rope_scaling);
        EXPECT_EQ(c2.attention_bias, c.attention_bias);
        auto m2 = make_model(c2);
        load_hf_weights(*m2, tmp / "out");
        const auto& a = m->params();
        const auto& b = m2->params();
        ASSERT_EQ(a.flat_size(), b.flat_size());
        for (size_t i = 0; i < a.flat_size(); ++i) {
          float w = a.params()[i];
          float expect = dt == DType::F32    ? w
                         : dt == DType::BF16 ? bf16_to_float(float_to_bf16(w))
                                             : f16_to_float(float_to_f16(w));
          ASSERT_EQ(b.params()[i], expect) << "element " << i;
        }
      }
    }
  }
}

// llama2.c / Meta models rotate interleaved pairs; transformers rotates halves. The export
// permutes q and k rows so that the Hugging Face model computes the same function.
TEST(HfExport, InterleavedRopeBecomesRotateHalf) {
  ModelConfig c;
  c.arch = "llama";
  c.n_layer = 2;
  c.n_head = 4;
  c.n_kv_head = 2;
  c.n_embd = 32;
  c.vocab_size = 29;
  c.block_size = 16;
  c.rope_interleaved = true;
  c.attention_bias = true;
  auto m = make_model(c);
  for (size_t i = 0; i < m->params().flat_size(); ++i)
    m->params().params()[i] = float(0.3 * philox_normal2(77, 0, i)[0]);
  test::TempDir tmp;
  save_hf(*m, tmp / "out");
  ModelConfig c2 = read_hf_config(tmp / "out");
  EXPECT_FALSE(c2.rope_interleaved);
  auto m2 = make_model(c2);
  load_hf_weights(*m2, tmp / "out");
  std::vector<int32_t> ids = {3, 17, 0, 28, 5, 5, 9, 11, 2, 20, 14, 1};
  const int T = int(ids.size()), V = c.vocab_size;
  std::vector<float> a(V), b(V);
  double worst = 0, mag = 0;
  for (int t = 1; t <= T; ++t) {
    m->forward(ids.data(), nullptr, 1, t);
    m->last_logits(a.data());
    m2->forward(ids.data(), nullptr, 1, t);
    m2->last_logits(b.data());
    for (int v = 0; v < V; ++v) {
      worst = std::max(worst, double(std::abs(a[v] - b[v])));
      mag = std::max(mag, double(std::abs(a[v])));
    }
  }
  // The same arithmetic up to the order of the attention dot products' terms.
  EXPECT_LE(worst, forward_tolerance(c, T, mag)) << "largest logit difference " << worst;
  EXPECT_GT(mag, 1.0);
  // Without the permutation the models differ: re-read the rows as they are, interleaved off.
  auto m3 = make_model(c2);
  std::memcpy(m3->params().params(), m->params().params(), sizeof(float) * m->params().flat_size());
  m3->forward(ids.data(), nullptr, 1, T);
  m3->last_logits(b.data());
  m->forward(ids.data(), nullptr, 1, T);
  m->last_logits(a.data());
  double diff = 0;
  for (int v = 0; v < V; ++v) diff = std::max(diff, double(std::abs(a[v] - b[v])));
  EXPECT_GT(diff, 100 * forward_tolerance(c, T, mag));
}

TEST(HfExport, RefusesANonEmptyDirectory) {
  auto m = make_model(read_hf_config(kFixtures / "gpt2"));
  test::TempDir tmp;
  test::write_file(tmp / "out/keep.txt", "mine");
  EXPECT_THROW(save_hf(*m, tmp / "out"), UserError);
  EXPECT_EQ(test::slurp(tmp / "out/keep.txt"), "mine");
}

// Copies a fixture into a temp dir so that a test can break one file of it.
fs::path copy_fixture(const test::TempDir& tmp, const std::string& name) {
  fs::copy(kFixtures / name, tmp / name, fs::copy_options::recursive);
  return tmp / name;
}

std::string load_error(const fs::path& dir) {
  try {
    auto m = make_model(read_hf_config(dir));
    load_hf_weights(*m, dir);
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

void edit_config(const fs::path& dir, const std::function<void(nlohmann::json&)>& edit) {
  auto j = nlohmann::json::parse(test::slurp(dir / "config.json"));
  edit(j);
  test::write_file(dir / "config.json", j.dump());
}

TEST(HfImport, BadInputNamesTheProblem) {
  struct Case {
    const char* what;
    const char* fixture;
    std::function<void(const fs::path&)> damage;
    const char* expect;  // a substring of the error
  };
  const std::vector<Case> cases = {
      {"unsupported model_type", "gpt2", [](const fs::path& d) { edit_config(d, [](auto& j) { j["model_type"] = "bert"; }); },
       "model_type \"bert\" is not supported"},
      {"missing field", "llama", [](const fs::path& d) { edit_config(d, [](auto& j) { j.erase("hidden_size"); }); },
       "missing field 'hidden_size'"},
      {"wrong type", "llama",
       [](const fs::path& d) { edit_config(d, [](auto& j) { j["num_hidden_layers"] = "two"; }); },
       "'num_hidden_layers' must be a non-negative integer"},
      {"config not JSON", "gpt2", [](const fs::path& d) { test::write_file(d / "config.json", "{nope"); },
       "config.json: not valid JSON"},
      {"shape mismatch", "gpt2", [](const fs::path& d) { edit_config(d, [](auto& j) { j["n_positions"] = 17; }); },
       "transformer.wpe.weight"},
      {"more layers than weights", "llama",
       [](const fs::path& d) { edit_config(d, [](auto& j) { j["num_hidden_layers"] = 3; }); },
       "'model.layers.2.input_layernorm.weight' is missing"},
      {"fewer layers than weights", "llama",
       [](const fs::path& d) { edit_config(d, [](auto& j) { j["num_hidden_layers"] = 1; }); },
       "has no place in a 1-layer llama model"},
      {"unknown rope scaling", "llama",
       [](const fs::path& d) { edit_config(d, [](auto& j) { j["rope_scaling"]["rope_type"] = "yarn"; }); },
       "type \"yarn\" is not supported"},
      {"head_dim other than hidden/heads", "llama",
       [](const fs::path& d) { edit_config(d, [](auto& j) { j["head_dim"] = 16; }); }, "field 'head_dim'"},
      {"shard missing", "llama", [](const fs::path& d) { fs::remove(d / "model-00002-of-00002.safetensors"); },
       "model-00002-of-00002.safetensors"},
      {"index names a path outside", "llama",
       [](const fs::path& d) {
         auto j = nlohmann::json::parse(test::slurp(d / "model.safetensors.index.json"));
         j["weight_map"]["model.norm.weight"] = "../x.safetensors";
         test::write_file(d / "model.safetensors.index.json", j.dump());
       },
       "is not a file name in this directory"},
      {"truncated weights", "gpt2",
       [](const fs::path& d) { fs::resize_file(d / "model.safetensors", fs::file_size(d / "model.safetensors") - 7); },
       "model.safetensors"},
      {"no weights at all", "gpt2", [](const fs::path& d) { fs::remove(d / "model.safetensors"); },
       "not a Hugging Face checkpoint directory"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    test::TempDir tmp;
    fs::path dir = copy_fixture(tmp, c.fixture);
    c.damage(dir);
    std::string err = load_error(dir);
    EXPECT_NE(err.find(c.expect), std::string::npos) << "error was: " << err;
    EXPECT_EQ(err.find('\n'), std::string::npos) << "one line: " << err;
  }
}

}  // namespace
}  // namespace lmf
