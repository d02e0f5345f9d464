// Whole-model checks: finite differences in double over every parameter of a tiny GPT-2,
// float against double, initialisation statistics, and KV-cache decoding against the full
// forward.
#include <gtest/gtest.h>

#include "model_test_util.h"
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "core/rng.h"
#include "core/error.h"
#include "infer/decoder.h"
#include "infer/generate.h"
#include "model/model.h"

namespace lmf {
namespace {

ModelConfig tiny(bool tied = true) {
  ModelConfig c;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 8;
  c.vocab_size = 11;
  c.block_size = 7;
  c.tied_embeddings = tied;
  return c;
}

void gradcheck(bool tied) {
  Gpt2<double> m(tiny(tied));
  test::check_every_parameter_gradient(m, 2, 5, 11);
}

TEST(Gpt2, FiniteDifferenceGradientTied) { gradcheck(true); }
TEST(Gpt2, FiniteDifferenceGradientUntied) { gradcheck(false); }

TEST(Gpt2, FloatMatchesDouble) {
  Gpt2<double> md(tiny());
  Gpt2<float> mf(tiny());
  test::expect_float_matches_double(mf, md, 3, 7, 11);
}

TEST(Gpt2, InitStatisticsAndThreadIndependence) {
  ModelConfig c;
  c.n_layer = 6;
  c.n_head = 4;
  c.n_embd = 128;
  c.vocab_size = 1000;
  c.block_size = 64;
  Gpt2<float> a(c), b(c);
  omp_set_num_threads(1);
  a.init(11);
  omp_set_num_threads(2);
  b.init(11);
  ASSERT_EQ(0, std::memcmp(a.params().params(), b.params().params(), a.params().flat_size() * sizeof(float)));
  auto stdev = [&](const std::string& name) {
    long i = a.params().find(name);
    EXPECT_GE(i, 0) << name;
    const auto& e = a.params().entry(i);
    double s = 0, s2 = 0;
    for (size_t j = 0; j < e.size; ++j) {
      s += a.params().param(i)[j];
      s2 += double(a.params().param(i)[j]) * a.params().param(i)[j];
    }
    return std::sqrt(s2 / e.size - (s / e.size) * (s / e.size));
  };
  EXPECT_NEAR(stdev("transformer.wte.weight"), 0.02, 0.02 * 0.02);  // 128k samples: ~0.2% error
  EXPECT_NEAR(stdev("transformer.h.0.mlp.c_fc.weight"), 0.02, 0.02 * 0.02);
  double resid = 0.02 / std::sqrt(12.0);
  EXPECT_NEAR(stdev("transformer.h.3.mlp.c_proj.weight"), resid, resid * 0.02);
  EXPECT_NEAR(stdev("transformer.h.3.attn.c_proj.weight"), resid, resid * 0.03);
  long ln = a.params().find("transformer.h.0.ln_1.weight");
  EXPECT_EQ(a.params().param(ln)[5], 1.0f);
  long bias = a.params().find("transformer.h.0.attn.c_attn.bias");
  EXPECT_EQ(a.params().param(bias)[5], 0.0f);
}

// Decoding one token at a time through the KV cache, or a prefill of the first tokens and then
// one at a time, for one sequence or a batch of three, gives, at every position, the logits of a
// full forward over the prefix; for each family and the Llama variants (GQA, MQA, biases, both
// RoPE conventions, llama3 scaling).
void expect_decoder_matches_forward(const ModelConfig& c, uint64_t seed) {
  auto m = make_model(c);
  for (size_t i = 0; i < m->params().flat_size(); ++i)
    m->params().params()[i] = float(0.3 * philox_normal2(seed, 0, i)[0]);
  const int T = c.block_size;
  test::Batch b = test::random_batch(1, T, c.vocab_size, seed + 1);
  auto dec = test::expect_decoder_follows_forward(*m, b.x, c.vocab_size);
  test::expect_prefill_follows_forward(*m, b.x, c.vocab_size);
  std::vector<std::vector<int32_t>> seqs;
  for (int s = 0; s < 3; ++s) seqs.push_back(test::random_batch(1, T, c.vocab_size, seed + 10 + s).x);
  test::expect_batch_decoder_follows_forward(*m, seqs, c.vocab_size);
  EXPECT_EQ(dec->capacity(), T);
  EXPECT_EQ(dec->position(), T);
  dec->reset();
  EXPECT_THROW(dec->feed(-1), UserError);
  EXPECT_THROW(dec->feed(c.vocab_size), UserError);
}

TEST(Decoder, Gpt2KvCacheMatchesFullForward) {
  ModelConfig c = tiny();
  c.block_size = 12;
  expect_decoder_matches_forward(c, 8);
}

TEST(Decoder, LlamaKvCacheMatchesFullForward) {
  ModelConfig c;
  c.arch = "llama";
  c.n_layer = 2;
  c.n_head = 4;
  c.n_embd = 16;
  c.vocab_size = 13;
  c.block_size = 12;
  for (int variant = 0; variant < 4; ++variant) {
    SCOPED_TRACE(variant);
    c.n_kv_head = variant == 0 ? 4 : variant == 1 ? 2 : 1;
    c.rope_interleaved = variant % 2 == 1;
    c.attention_bias = c.mlp_bias = variant >= 2;
    c.rope_scaling = variant == 3 ? "llama3" : variant == 2 ? "linear" : "none";
    c.rope_factor = 4;
    c.rope_original_context = 6;
    c.tied_embeddings = variant != 1;
    expect_decoder_matches_forward(c, 20 + variant);
  }
}

// Model::forward_backward is forward then backward (the same loss and gradients bit for bit, also
// for a batch with ignored targets); graphs (model/step_graph.h) are a GPU's, so the CPU model
// refuses them in one line (tests/gpu/test_cuda_model.cpp checks them on a GPU or its emulation).
TEST(Model, ForwardBackwardIsOneStepAndGraphsNeedAGpu) {
  for (const std::string arch : {"gpt2", "llama"}) {
    SCOPED_TRACE(arch);
    const ModelConfig c = test::small_config(arch, /*tied=*/false, 16, 13, 8);
    const int B = 2, T = 8;
    test::Batch b = test::random_batch(B, T, c.vocab_size, 5);
    b.y[3] = -1;
    auto run = [&](bool one_call) {
      auto m = make_model(c);
      test::randomise(*m, 4);
      double loss = 0;
      if (one_call) {
        loss = m->forward_backward(b.x.data(), b.y.data(), B, T, 1.0 / (B * T));
      } else {
        loss = m->forward(b.x.data(), b.y.data(), B, T, 1.0 / (B * T));
        m->backward();
      }
      const float* g = m->params().grads();
      return std::pair{loss, std::vector<float>(g, g + m->params().flat_size())};
    };
    const auto [l1, g1] = run(true);
    const auto [l0, g0] = run(false);
    EXPECT_EQ(l1, l0);
    EXPECT_EQ(g1, g0);
    auto m = make_model(c);
    try {
      m->set_graphs(true);
      ADD_FAILURE() << "graphs on the CPU";
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find("CUDA graphs need a GPU backend; this model runs on cpu"),
                std::string::npos)
          << e.what();
    }
    m->set_graphs(false);  // always possible
  }
}

// [model] recompute_mlp = false keeps the MLP's activation (GELU / SwiGLU output) instead of
// recomputing it in backward: the same loss and gradients bit for bit, and exactly one
// (B T, ffn) buffer more per block.
TEST(Model, KeepingTheMlpActivationChangesMemoryNotNumbers) {
  for (const std::string arch : {"gpt2", "llama"}) {
    SCOPED_TRACE(arch);
    ModelConfig c = test::small_config(arch, /*tied=*/false, 16, 13, 8);
    const int B = 2, T = 8;
    auto run = [&](bool recompute) {
      c.recompute_mlp = recompute;
      auto m = make_model(c);
      test::randomise(*m, 4);
      test::Batch b = test::random_batch(B, T, c.vocab_size, 5);
      const double loss = m->forward(b.x.data(), b.y.data(), B, T, 1.0 / (B * T));
      m->backward();
      const float* g = m->params().grads();
      return std::tuple{loss, std::vector<float>(g, g + m->params().flat_size()), m->activation_bytes()};
    };
    const auto [l1, g1, bytes1] = run(true);
    const auto [l0, g0, bytes0] = run(false);
    EXPECT_EQ(l0, l1);
    EXPECT_EQ(g0, g1);
    EXPECT_EQ(bytes0 - bytes1, size_t(c.n_layer) * B * T * c.ffn_size() * sizeof(float));
  }
}

// The choice by a full sort: every id in the order logit descending (ties by id), the top_k,
// then the nucleus, then min_p's cut, a draw over what is kept in that order. Over the whole
// vocabulary without a nucleus the draw walks the ids in id order instead (any fixed order samples
// the same law), min_p's cut a weight of 0.
int32_t sample_by_full_sort(const std::vector<float>& logits, const SampleOptions& o, Rng& rng) {
  const int V = int(logits.size());
  std::vector<int32_t> ids(V);
  std::iota(ids.begin(), ids.end(), 0);
  if (o.top_k > 0 || o.top_p < 1.0)
    std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
      return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
    });
  size_t keep = o.top_k > 0 ? std::min<size_t>(o.top_k, V) : size_t(V);
  const double mx = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(keep);
  double z = 0;
  for (size_t i = 0; i < keep; ++i) z += (p[i] = std::exp((logits[ids[i]] - mx) / o.temperature));
  if (o.top_p < 1.0) {
    double cum = 0;
    size_t n = 0;
    while (n < keep && cum < o.top_p * z) cum += p[n++];
    keep = std::max<size_t>(n, 1);
  }
  if (o.top_k > 0 || o.top_p < 1.0) {
    while (keep > 1 && p[keep - 1] < o.min_p) --keep;
  } else {
    for (double& w : p) w = w >= o.min_p ? w : 0.0;
  }
  z = 0;
  for (size_t i = 0; i < keep; ++i) z += p[i];
  double u = rng.uniform() * z, cum = 0;
  for (size_t i = 0; i < keep; ++i)
    if (u < (cum += p[i])) return ids[i];
  return ids[keep - 1];
}

// sample_token orders only as much of the vocabulary as the choice needs (a partial sort for the
// top_k, a histogram for the nucleus); it makes the full sort's choice, draw for draw, on a
// vocabulary of 5000 with ties, for a top_k, nuclei from one token to thousands, both, none, and
// min_p with each. Over the same draws, min_p = 0.3 keeps only tokens within ln(1/0.3) of the top.
TEST(Sampling, PartialOrderMakesTheFullSortsChoices) {
  const int V = 5000;
  std::vector<float> logits(V);
  Rng g(11, kStreamSample);
  for (int i = 0; i < V; ++i) logits[i] = float(std::floor(8 * g.uniform()) / 2);  // 16 values: many ties
  struct Case {
    int top_k;
    double top_p, temperature, min_p;
  };
  for (const Case& c : {Case{50, 1.0, 1.0, 0}, Case{0, 0.05, 1.0, 0}, Case{0, 0.3, 0.5, 0}, Case{0, 0.9, 1.0, 0},
                        Case{0, 0.999, 2.0, 0}, Case{1000, 0.5, 1.0, 0}, Case{0, 1.0, 1.0, 0}, Case{V, 0.7, 1.0, 0},
                        Case{0, 1.0, 1.0, 0.3}, Case{0, 0.9, 1.0, 0.2}, Case{200, 1.0, 2.0, 0.5}}) {
    SCOPED_TRACE(testing::Message() << "top_k " << c.top_k << " top_p " << c.top_p << " temperature "
                                    << c.temperature << " min_p " << c.min_p);
    SampleOptions o;
    o.top_k = c.top_k;
    o.top_p = c.top_p;
    o.temperature = c.temperature;
    o.min_p = c.min_p;
    Rng a(3, kStreamSample), b(3, kStreamSample);
    std::set<int32_t> seen;
    for (int draw = 0; draw < 400; ++draw) {
      const int32_t want = sample_by_full_sort(logits, o, b);
      ASSERT_EQ(sample_token(logits.data(), V, o, a), want) << "draw " << draw;
      seen.insert(want);
    }
    EXPECT_GT(seen.size(), 1u);  // the draws pick among many tokens, not one
    const float top = *std::max_element(logits.begin(), logits.end());
    for (int32_t t : seen)  // min_p's bound on what is drawn: exp((l - top) / T) >= min_p
      EXPECT_GE(std::exp((double(logits[t]) - top) / c.temperature), c.min_p) << "token " << t;
  }
}

TEST(Sampling, GreedyTopKTopP) {
  std::vector<float> logits = {0.0f, 3.0f, 1.0f, 2.9f, -1.0f};
  Rng r(1, kStreamSample);
  SampleOptions o;
  o.temperature = 0;
  EXPECT_EQ(sample_token(logits.data(), 5, o, r), 1);
  o.temperature = 1.0;
  o.top_k = 2;
  for (int i = 0; i < 200; ++i) {
    int t = sample_token(logits.data(), 5, o, r);
    EXPECT_TRUE(t == 1 || t == 3) << t;
  }
  o.top_k = 0;
  o.top_p = 0.3;  // the single most likely token already has p > 0.3
  for (int i = 0; i < 50; ++i) EXPECT_EQ(sample_token(logits.data(), 5, o, r), 1);
  // Unrestricted sampling follows the softmax: token 2 has p = e^1 / Z.
  o.top_p = 1.0;
  double z = 0;
  for (float l : logits) z += std::exp(l);
  int n = 20000, hits = 0;
  for (int i = 0; i < n; ++i) hits += sample_token(logits.data(), 5, o, r) == 2;
  double p = std::exp(1.0) / z, se = std::sqrt(p * (1 - p) / n);
  EXPECT_NEAR(double(hits) / n, p, 5 * se);
}

}  // namespace
}  // namespace lmf

namespace lmf {
namespace {

// A GPT-2 of width 8 over 11 tokens, initialised from `seed`, for the generation tests: `owner`
// is the Model that generate takes, `m` its family, for full forwards.
struct TinyGpt2 {
  static ModelConfig config(int n_layer, int block_size) {
    ModelConfig c;
    c.n_layer = n_layer;
    c.n_head = 2;
    c.n_embd = 8;
    c.vocab_size = 11;
    c.block_size = block_size;
    return c;
  }
  TinyGpt2(int n_layer, int block_size, uint64_t seed)
      : c(config(n_layer, block_size)), owner(c), m(owner.impl()) {
    m.init(seed);
  }
  ModelConfig c;
  ModelOf<Gpt2<float>> owner;
  Gpt2<float>& m;
};

// Replays a generation through full forwards over the window the cache holds: at most
// max_context tokens, restarting from the last half whenever it fills. `choose` picks each token
// from the forward's logits; the generated tokens `out` must be those picks.
void expect_replay(Gpt2<float>& m, std::vector<int32_t> all, const std::vector<int32_t>& out, int max_context,
                   const std::function<int32_t(const float*)>& choose) {
  int start = 0;
  std::vector<float> logits(m.config().vocab_size);
  for (size_t i = 0; i < out.size(); ++i) {
    if (int(all.size()) - start > max_context) start = int(all.size()) - max_context / 2;
    m.forward(all.data() + start, nullptr, 1, int(all.size()) - start);
    m.last_logits(logits.data());
    ASSERT_EQ(out[i], choose(logits.data())) << "token " << i;
    all.push_back(out[i]);
  }
}

// Past max_context the cache restarts from the last half of the text: the logits must equal a
// full forward over exactly that window.
TEST(Generate, SlidingContextMatchesFullForwardOfTheWindow) {
  TinyGpt2 g(2, 16, 3);
  const ModelConfig& c = g.c;
  auto& owner = g.owner;
  auto& m = g.m;
  SampleOptions o;
  o.temperature = 0;
  o.max_new_tokens = 12;
  o.max_context = 6;
  std::vector<int32_t> prompt = {1, 2, 3, 4};
  auto out = generate(owner, prompt, o);
  ASSERT_EQ(out.size(), 12u);
  // Each greedy token is the argmax over a window of at most 6 tokens that restarts from the
  // last 3 whenever the cache fills.
  expect_replay(m, prompt, out, 6, [&](const float* logits) {
    return int32_t(std::max_element(logits, logits + c.vocab_size) - logits);
  });
}

// Samples generated together (one decoder batch): sample 0 is generate()'s text for the seed;
// every sample s is what drawing from the seed's stream at counter s 2^40 over a full forward of
// its own text gives, token by token, through the cache's rebuilds; the samples differ; greedy,
// they are all generate()'s text.
TEST(Generate, SamplesTogetherFollowTheirOwnForwardAndDraws) {
  TinyGpt2 g(2, 24, 7);
  const ModelConfig& c = g.c;
  auto& owner = g.owner;
  auto& m = g.m;
  SampleOptions o;
  o.temperature = 1.5;
  o.max_new_tokens = 14;
  o.max_context = 10;  // the cache is rebuilt on the way
  o.seed = 9;
  const std::vector<int32_t> prompt = {1, 2, 3, 4};
  GenerateStats st;
  const auto samples = generate_samples(owner, prompt, o, 4, {}, &st);
  ASSERT_EQ(samples.size(), 4u);
  EXPECT_EQ(samples[0], generate(owner, prompt, o));
  int total = 0;
  for (int s = 0; s < 4; ++s) {
    SCOPED_TRACE(testing::Message() << "sample " << s);
    ASSERT_EQ(samples[s].size(), 14u);
    total += int(samples[s].size());
    Rng r(o.seed, kStreamSample, uint64_t(s) << 40);
    expect_replay(m, prompt, samples[s], 10,
                  [&](const float* logits) { return sample_token(logits, c.vocab_size, o, r); });
  }
  EXPECT_EQ(st.new_tokens, total);
  EXPECT_NE(samples[1], samples[2]);
  o.temperature = 0;
  const auto greedy = generate_samples(owner, prompt, o, 3);
  for (const auto& g : greedy) EXPECT_EQ(g, generate(owner, prompt, o));
  EXPECT_THROW(generate_samples(owner, prompt, o, 0), UserError);
}

// The repetition penalty (Hugging Face's): greedy generation picks, at each step, the argmax of
// the full forward's logits with every id already in the text (the prompt's included) divided by
// the penalty if positive, multiplied if not; without it this model repeats itself; a penalty
// that is not positive is refused.
TEST(Generate, RepetitionPenaltyActsOnTheIdsOfTheText) {
  TinyGpt2 g(2, 32, 3);
  const ModelConfig& c = g.c;
  auto& owner = g.owner;
  auto& m = g.m;
  SampleOptions o;
  o.temperature = 0;
  o.max_new_tokens = 20;
  const std::vector<int32_t> prompt = {1, 2, 3, 4};
  auto distinct = [](const std::vector<int32_t>& v) { return std::set<int32_t>(v.begin(), v.end()).size(); };
  const auto plain = generate(owner, prompt, o);
  o.repetition_penalty = 3.0;
  const auto penalized = generate(owner, prompt, o);
  EXPECT_LT(distinct(plain), distinct(penalized)) << "the penalty spreads the choices";
  std::vector<int32_t> text = prompt;
  expect_replay(m, prompt, penalized, c.block_size, [&](const float* logits) {
    std::vector<float> l(logits, logits + c.vocab_size);
    for (int32_t id : std::set<int32_t>(text.begin(), text.end())) l[id] = l[id] > 0 ? l[id] / 3.0f : l[id] * 3.0f;
    const int32_t best = int32_t(std::max_element(l.begin(), l.end()) - l.begin());
    text.push_back(best);
    return best;
  });
  // The rule on its own: positive logits divided, negative ones multiplied, unseen ids untouched.
  std::vector<float> l = {2.0f, -2.0f, 1.0f, -1.0f};
  penalize_repeats(l.data(), {1, 1, 0, 0}, 2.0);
  EXPECT_EQ(l, (std::vector<float>{1.0f, -4.0f, 1.0f, -1.0f}));
  o.repetition_penalty = 0;
  EXPECT_THROW(generate(owner, prompt, o), UserError);
  o.repetition_penalty = 1;
  o.min_p = 1.5;
  EXPECT_THROW(generate(owner, prompt, o), UserError);
}

// A vocabulary limit (the tokenizer's, below a padded model vocabulary) keeps every choice under
// it, greedy and sampled, where without it this model picks ids past it; and the stats count the
// prompt and the new tokens.
TEST(Generate, VocabularyLimitKeepsChoicesBelowIt) {
  TinyGpt2 g(1, 32, 5);
  auto& owner = g.owner;
  const std::vector<int32_t> prompt = {1, 2, 3};
  for (double temperature : {0.0, 1.0}) {
    SCOPED_TRACE(testing::Message() << "temperature " << temperature);
    SampleOptions o;
    o.temperature = temperature;
    o.max_new_tokens = 24;
    auto free = generate(owner, prompt, o);
    EXPECT_TRUE(std::any_of(free.begin(), free.end(), [](int32_t t) { return t >= 4; }))
        << "the model picks ids past the limit without it";
    o.vocab_limit = 4;
    GenerateStats st;
    auto limited = generate(owner, prompt, o, {}, &st);
    ASSERT_EQ(limited.size(), 24u);
    for (int32_t t : limited) EXPECT_LT(t, 4);
    EXPECT_EQ(st.prompt_tokens, 3);
    EXPECT_EQ(st.new_tokens, 24);
  }
  SampleOptions bad;
  bad.vocab_limit = 12;
  EXPECT_THROW(generate(owner, prompt, bad), UserError);
}

}  // namespace
}  // namespace lmf

namespace lmf {
namespace {

// The gradient rule: parameter gradients accumulate, so two half batches with half the loss
// scale each give the gradient of the whole batch (in double: equal to rounding).
TEST(Gpt2, GradientAccumulationEqualsTheWholeBatch) {
  ModelConfig c;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 8;
  c.vocab_size = 13;
  c.block_size = 6;
  Gpt2<double> whole(c), parts(c);
  whole.init(4);
  parts.init(4);
  const int B = 4, T = 6;
  std::vector<int32_t> x(B * T), y(B * T);
  Rng r(2, 1);
  for (int i = 0; i < B * T; ++i) {
    x[i] = int32_t(r.below(13));
    y[i] = int32_t(r.below(13));
  }
  const double scale = 1.0 / (B * T);
  whole.params().zero_grad();
  whole.forward(x.data(), y.data(), B, T, scale);
  whole.backward();
  parts.params().zero_grad();
  for (int h = 0; h < 2; ++h) {
    parts.forward(x.data() + h * (B / 2) * T, y.data() + h * (B / 2) * T, B / 2, T, scale);
    parts.backward();
  }
  double gmax = 0, dmax = 0;
  for (size_t k = 0; k < whole.params().flat_size(); ++k) {
    gmax = std::max(gmax, std::abs(whole.params().grads()[k]));
    dmax = std::max(dmax, std::abs(whole.params().grads()[k] - parts.params().grads()[k]));
  }
  EXPECT_GT(gmax, 0);
  EXPECT_LT(dmax, 1e-12 * gmax);
}

}  // namespace
}  // namespace lmf
