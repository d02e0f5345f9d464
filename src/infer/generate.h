#pragma once
// Sampling: token choice under temperature / top-k / top-p, and autoregressive generation over a
// KV-cache decoder (infer/decoder.h) of any model family.
#include <cstdint>
#include <functional>
#include <vector>

#include "core/rng.h"
#include "model/model.h"

namespace lmf {

struct SampleOptions {
  double temperature = 1.0;  // 0: greedy (argmax)
  int top_k = 0;             // keep the k most likely tokens; 0: all
  double top_p = 1.0;        // nucleus: smallest set with cumulative probability >= top_p
  uint64_t seed = 0;
  int max_new_tokens = 256;
  int stop_token = -1;       // stop after emitting this id (e.g. end-of-text); -1: none
  int max_context = 0;       // positions used; 0 = the model's block_size. Set it to the trained
                             // sequence length: later positions' embeddings were never trained.
};

// Picks a token id from logits (V) under the options; `rng` advances by one draw (none if greedy).
int32_t sample_token(const float* logits, int V, const SampleOptions& opt, Rng& rng);

// Feeds the prompt, then samples up to max_new_tokens, calling on_token for each new id.
// When the context fills (max_context), the cache is rebuilt from the last half.
std::vector<int32_t> generate(const Model& model, const std::vector<int32_t>& prompt, const SampleOptions& opt,
                              const std::function<void(int32_t)>& on_token = {});

}  // namespace lmf
