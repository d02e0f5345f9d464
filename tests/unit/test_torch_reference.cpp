// A tiny GPT-2 against PyTorch: tools/torch_reference.py built the same model from lmforge's
// initial weights (tests/fixtures/gpt2_tiny/init.safetensors) and stored every intermediate,
// the loss, every gradient, and the losses of five AdamW steps. The regeneration command is
// in the script's docstring.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/safetensors.h"
#include "model/gpt2.h"
#include "model/model.h"
#include "ops/ops.h"
#include "optim/adamw.h"
#include "train/run_io.h"

namespace lmf {
namespace {

const std::string kDir = std::string(LMF_SOURCE_DIR) + "/tests/fixtures/gpt2_tiny/";

std::vector<float> get(const SafetensorsFile& f, const std::string& name, const Shape& shape) {
  std::vector<float> v(numel(shape));
  f.read_as_float(name, shape, v.data());
  return v;
}

// float32 against a float64 reference: each output is a chain of reductions of length at
// most K; rounding grows like eps * sqrt(K) per reduction, over ~4 reductions per layer and
// L = 2 layers: allow 16 * eps * sqrt(K) relative to the tensor's largest magnitude.
double tolerance(const std::vector<float>& ref, int K) {
  double mx = 0;
  for (float r : ref) mx = std::max(mx, double(std::abs(r)));
  return 16 * std::numeric_limits<float>::epsilon() * std::sqrt(double(K)) * std::max(mx, 1e-3);
}

void expect_close(const float* got, const std::vector<float>& ref, int K, const std::string& what) {
  double tol = tolerance(ref, K), worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    worst = std::max(worst, std::abs(double(got[i]) - ref[i]));
    ASSERT_NEAR(got[i], ref[i], tol) << what << "[" << i << "]";
  }
  ::testing::Test::RecordProperty(what, std::to_string(worst / tol));
}

struct Fixture {
  ModelConfig cfg;
  int B = 2, T = 8;
  SafetensorsFile ref = SafetensorsFile::open(kDir + "reference.safetensors");
  std::vector<int32_t> tokens, targets;
  Fixture() {
    auto init = SafetensorsFile::open(kDir + "init.safetensors");
    const auto& m = init.metadata();
    cfg.n_layer = std::stoi(m.at("lmforge.n_layer"));
    cfg.n_head = std::stoi(m.at("lmforge.n_head"));
    cfg.n_embd = std::stoi(m.at("lmforge.n_embd"));
    cfg.vocab_size = std::stoi(m.at("lmforge.vocab_size"));
    cfg.block_size = std::stoi(m.at("lmforge.block_size"));
    tokens = ints("batch.tokens");
    targets = ints("batch.targets");
  }
  std::vector<int32_t> ints(const std::string& name) const {
    const StTensorInfo* t = ref.find(name);
    EXPECT_TRUE(t && t->dtype == DType::I32 && t->nbytes == sizeof(int32_t) * B * T) << name;
    const auto* p = static_cast<const int32_t*>(ref.data(*t));
    return std::vector<int32_t>(p, p + B * T);
  }
};

TEST(TorchReference, ForwardBackwardMatchLayerByLayer) {
  Fixture fx;
  ModelOf<Gpt2<float>> owner(fx.cfg);
  load_model(owner, kDir + "init.safetensors");
  Gpt2<float>& model = owner.impl();
  const int B = fx.B, T = fx.T, C = fx.cfg.n_embd, V = fx.cfg.vocab_size, N = B * T;
  model.params().zero_grad();
  double loss = model.forward(fx.tokens.data(), fx.targets.data(), B, T, 1.0 / N);
  model.backward();
  for (int l = 0; l < fx.cfg.n_layer; ++l) {
    std::string name = "act.h." + std::to_string(l);
    expect_close(model.block_output(l), get(fx.ref, name, {B, T, C}), 4 * C, name);
  }
  expect_close(model.final_norm_output(), get(fx.ref, "act.ln_f", {B, T, C}), 4 * C, "act.ln_f");
  std::vector<float> logits(size_t(N) * V);
  ops::classifier_logits(logits.data(), model.final_norm_output(),
                         model.params().param(model.index().lm_head), N, C, V);
  expect_close(logits.data(), get(fx.ref, "logits", {B, T, V}), 4 * C, "logits");
  auto ref_loss = get(fx.ref, "loss", {});
  EXPECT_NEAR(loss, ref_loss[0], tolerance(ref_loss, V));

  // Gradients: the reference is in Hugging Face layout; Conv1D matrices are (in, out).
  const auto& ps = model.params();
  for (size_t i = 0; i < ps.entries().size(); ++i) {
    const auto& e = ps.entry(i);
    bool tr = Gpt2<float>::hf_transposed(e.name);
    Shape hf = tr ? Shape{e.shape[1], e.shape[0]} : e.shape;
    auto ref = get(fx.ref, "grad." + e.name, hf);
    std::vector<float> mine(e.size);
    const float* g = const_cast<ParamStore<float>&>(ps).grad(i);
    if (tr) {
      for (int64_t r = 0; r < e.shape[0]; ++r)
        for (int64_t c = 0; c < e.shape[1]; ++c) mine[c * e.shape[0] + r] = g[r * e.shape[1] + c];
    } else {
      std::copy(g, g + e.size, mine.begin());
    }
    // Parameter gradients also sum over the N rows of the batch and, for the classifier,
    // over V logits.
    expect_close(mine.data(), ref, std::max({4 * C, N, V}), "grad." + e.name);
  }
}

TEST(TorchReference, AdamWStepsFollowTheSameLosses) {
  Fixture fx;
  ModelOf<Gpt2<float>> owner(fx.cfg);
  load_model(owner, kDir + "init.safetensors");
  Gpt2<float>& model = owner.impl();
  OptimConfig oc;  // as tools/torch_reference.py: lr 1e-2, betas (0.9, 0.95), eps 1e-8, wd 0.1
  oc.lr = 1e-2;
  oc.beta1 = 0.9;
  oc.beta2 = 0.95;
  oc.eps = 1e-8;
  oc.weight_decay = 0.1;
  AdamW opt(model.params(), oc);
  auto ref = get(fx.ref, "adamw.losses", {5});
  const int N = fx.B * fx.T;
  for (int k = 0; k < 5; ++k) {
    model.params().zero_grad();
    double loss = model.forward(fx.tokens.data(), fx.targets.data(), fx.B, fx.T, 1.0 / N);
    model.backward();
    // Gradients agree to ~1e-5 relative (test above), so after k updates of size <= lr each
    // weight differs by ~k * lr * 1e-5 ~ 5e-7; through |dL/dw| ~ 1 over ~100 weights that
    // moves the loss by < 1e-4 relative.
    EXPECT_NEAR(loss, ref[k], 1e-4 * ref[k]) << "AdamW step " << k;
    opt.step(model.params(), oc.lr);
  }
}

}  // namespace
}  // namespace lmf
