#pragma once
// Helpers for whole-model tests, templated over the model (Gpt2, Llama): random weights, a
// random batch, and the finite-difference check of every parameter in double.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "infer/decoder.h"
#include "model/model_config.h"

namespace lmf::test {

// The model's own init, then noise on everything (biases and norm gains too) so no gradient
// is trivially zero.
template <class Model>
void randomise(Model& m, uint64_t seed) {
  m.init(seed);
  auto& ps = m.params();
  using F = std::remove_reference_t<decltype(*ps.params())>;
  for (size_t i = 0; i < ps.entries().size(); ++i) {
    const auto& e = ps.entry(i);
    for (size_t j = 0; j < e.size; ++j) ps.param(i)[j] += F(0.3 * philox_normal2(seed + 1, i, j)[0]);
  }
}

// A small model of either family: 2 layers, 4 heads (llama: 2 kv heads, MLP width 1.5 C).
// Untied llama models carry every optional bias, so both variants are covered.
inline ModelConfig small_config(const std::string& arch, bool tied, int C, int vocab, int block) {
  ModelConfig c;
  c.arch = arch;
  c.n_layer = 2;
  c.n_head = 4;
  c.n_embd = C;
  c.vocab_size = vocab;
  c.block_size = block;
  c.tied_embeddings = tied;
  if (arch == "llama") {
    c.n_kv_head = 2;
    c.ffn_hidden = C * 3 / 2;
    c.attention_bias = c.mlp_bias = !tied;
  }
  return c;
}

struct Batch {
  std::vector<int32_t> x, y;  // (B, T) tokens, targets
};

// Random tokens and targets in [0, V); target 3 is ignored (-1).
inline Batch random_batch(int B, int T, int V, uint64_t seed) {
  Batch b;
  Rng r(seed, 9);
  for (int i = 0; i < B * T; ++i) {
    b.x.push_back(int32_t(r.below(V)));
    b.y.push_back(int32_t(r.below(V)));
  }
  b.y[3] = -1;
  return b;
}

// Central differences over every parameter of a double model, against its backward, on the
// mean loss of a random (B, T) batch.
template <class Model>
void check_every_parameter_gradient(Model& m, int B, int T, int V) {
  randomise(m, 3);
  Batch b = random_batch(B, T, V, 4);
  const double scale = 1.0 / (B * T - 1);  // mean over the valid targets
  auto& ps = m.params();
  ps.zero_grad();
  double loss = m.forward(b.x.data(), b.y.data(), B, T, scale);
  m.backward();
  EXPECT_GT(loss, 0);
  // h = 1e-5: truncation error ~ h^2 |f'''| ~ 1e-10, rounding error ~ eps |L| / h ~ 1e-11;
  // allow 1e-7 absolute plus 1e-5 relative.
  const double h = 1e-5;
  size_t checked = 0;
  for (size_t i = 0; i < ps.entries().size(); ++i) {
    const auto& e = ps.entry(i);
    for (size_t j = 0; j < e.size; ++j) {
      double& w = ps.param(i)[j];
      double w0 = w;
      w = w0 + h;
      double lp = m.forward(b.x.data(), b.y.data(), B, T);
      w = w0 - h;
      double lm = m.forward(b.x.data(), b.y.data(), B, T);
      w = w0;
      double fd = (lp - lm) / (2 * h);
      double an = ps.grad(i)[j];
      ASSERT_NEAR(an, fd, 1e-7 + 1e-5 * std::abs(fd)) << e.name << "[" << j << "]";
      ++checked;
    }
  }
  EXPECT_EQ(checked, ps.num_params());
}

// The float model against the same model in double, on the same random weights and batch:
// loss and every gradient. float's relative rounding (6e-8) grows with depth and reductions of
// a few dozen terms in these tiny models: 1e-5 (loss) and 1e-4 (gradients, relative to the
// largest) leave about two orders of magnitude of margin.
template <class ModelF, class ModelD>
void expect_float_matches_double(ModelF& mf, ModelD& md, int B, int T, int V) {
  randomise(md, 5);
  randomise(mf, 5);
  Batch b = random_batch(B, T, V, 6);
  double ld = md.forward(b.x.data(), b.y.data(), B, T, 1.0 / (B * T));
  double lf = mf.forward(b.x.data(), b.y.data(), B, T, 1.0 / (B * T));
  md.backward();
  mf.backward();
  EXPECT_NEAR(lf, ld, 1e-5 * ld);
  const auto& pd = md.params();
  const auto& pf = mf.params();
  double gmax = 0, dmax = 0;
  for (size_t k = 0; k < pd.flat_size(); ++k) {
    gmax = std::max(gmax, std::abs(pd.grads()[k]));
    dmax = std::max(dmax, std::abs(pd.grads()[k] - double(pf.grads()[k])));
  }
  EXPECT_LT(dmax, 1e-4 * gmax);
}

// Decoding tokens (T) one at a time through make_decoder(m) gives, at every position, the logits
// of a full forward over the prefix, within 1e-4 relative: the decoder's ops and the forward's
// differ in summation order only (a decoder is the forward, one row at a time, over a cache).
// Returns the decoder, at position T.
inline std::unique_ptr<Decoder> expect_decoder_follows_forward(Model& m, const std::vector<int32_t>& tokens,
                                                               int V) {
  auto dec = make_decoder(m);
  std::vector<float> full(V);
  const int T = int(tokens.size());
  for (int t = 1; t <= T; ++t) {
    const float* step = dec->feed(tokens[t - 1]);
    m.forward(tokens.data(), nullptr, 1, t);
    m.last_logits(full.data());
    for (int v = 0; v < V; ++v) {
      EXPECT_NEAR(step[v], full[v], 1e-4 * (1 + std::abs(full[v]))) << "position " << t << " token " << v;
      if (std::abs(step[v] - full[v]) > 1e-4 * (1 + std::abs(full[v]))) return dec;
    }
  }
  return dec;
}

// A prefill of the first n tokens (one pass over n rows from an empty cache) gives the logits of
// a full forward over them, and leaves a cache from which feeding the rest follows the forward,
// within the tolerance above: for n = 1, a middle split and all of them. A prefill into a cache
// that holds tokens already (fed one at a time) does too; one past the cache's room is refused.
inline void expect_prefill_follows_forward(Model& m, const std::vector<int32_t>& tokens, int V) {
  auto dec = make_decoder(m);
  std::vector<float> full(V);
  const int T = int(tokens.size());
  auto expect_forward = [&](const float* got, int t, const char* what) {
    m.forward(tokens.data(), nullptr, 1, t);
    m.last_logits(full.data());
    for (int v = 0; v < V; ++v)
      ASSERT_NEAR(got[v], full[v], 1e-4 * (1 + std::abs(full[v]))) << what << " at position " << t << " token " << v;
  };
  for (int n : {1, T / 2 + 1, T}) {
    SCOPED_TRACE(::testing::Message() << "prefill of " << n << " tokens");
    dec->reset();
    expect_forward(dec->prefill(tokens.data(), n), n, "prefill");
    ASSERT_EQ(dec->position(), n);
    for (int t = n + 1; t <= T; ++t) expect_forward(dec->feed(tokens[t - 1]), t, "feed after the prefill");
  }
  dec->reset();
  dec->feed(tokens[0]);
  expect_forward(dec->prefill(tokens.data() + 1, T - 1), T, "prefill after a feed");
  const std::vector<int32_t> too_many(size_t(dec->capacity() - dec->position() + 1), tokens[0]);
  EXPECT_THROW(dec->prefill(too_many.data(), int(too_many.size())), UserError) << "one more than the cache holds";
  dec->reset();
  EXPECT_THROW(dec->prefill(tokens.data(), 0), UserError);
}

// A decoder over a batch of sequences: row b of each step's logits follows a full forward over
// sequence b's prefix (the tolerance above), after a prefill of different rows and after one of
// alike rows (the one pass for all, cached once in sequence 0's cache and shared, while the
// sequences then part ways in their own).
inline void expect_batch_decoder_follows_forward(Model& m, const std::vector<std::vector<int32_t>>& seqs, int V) {
  const int B = int(seqs.size()), T = int(seqs[0].size()), n = T / 2;
  auto dec = make_decoder(m, 0, B);
  ASSERT_EQ(dec->batch(), B);
  std::vector<float> full(V);
  auto expect_row = [&](const float* logits, int b, const std::vector<int32_t>& seq, int t) {
    m.forward(seq.data(), nullptr, 1, t);
    m.last_logits(full.data());
    for (int v = 0; v < V; ++v)
      ASSERT_NEAR(logits[size_t(b) * V + v], full[v], 1e-4 * (1 + std::abs(full[v])))
          << "sequence " << b << " position " << t << " token " << v;
  };
  for (bool alike : {false, true}) {
    SCOPED_TRACE(alike ? "alike rows" : "different rows");
    auto seq = [&](int b) -> const std::vector<int32_t>& { return seqs[alike ? 0 : b]; };
    std::vector<int32_t> rows;
    for (int b = 0; b < B; ++b) rows.insert(rows.end(), seq(b).begin(), seq(b).begin() + n);
    dec->reset();
    const float* logits = dec->prefill(rows.data(), n);
    EXPECT_EQ(dec->shared(), alike ? n : 0);
    for (int b = 0; b < B; ++b) expect_row(logits, b, seq(b), n);
    std::vector<int32_t> column(B);
    for (int t = n + 1; t <= T; ++t) {
      for (int b = 0; b < B; ++b) column[b] = seqs[b][t - 1];  // the sequences part ways here
      logits = dec->feed(column.data());
      for (int b = 0; b < B; ++b) {
        std::vector<int32_t> prefix(seq(b).begin(), seq(b).begin() + n);
        for (int u = n; u < t; ++u) prefix.push_back(seqs[b][u]);
        expect_row(logits, b, prefix, t);
      }
    }
    EXPECT_EQ(dec->shared(), alike ? n : 0);
  }
  dec->reset();
  EXPECT_EQ(dec->shared(), 0);
}

}  // namespace lmf::test
