#pragma once
// Autoregressive generation with a KV cache: one token per step, each layer's keys and values
// kept for every earlier position, so step t costs O(t) attention instead of a full forward.
#include <cstdint>
#include <functional>
#include <vector>

#include "core/buffer.h"
#include "core/rng.h"
#include "model/gpt2.h"

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

class KvGenerator {
 public:
  // Caches up to max_context positions (0: the model's block_size).
  explicit KvGenerator(const Gpt2<float>& model, int max_context = 0);
  // Appends `token` at the next position; returns the logits (V) for the position after it.
  const float* feed(int32_t token);
  int position() const { return pos_; }  // tokens in the cache
  int capacity() const { return max_t_; }
  void reset() { pos_ = 0; }

 private:
  const Gpt2<float>& m_;
  int C_, NH_, V_, L_, max_t_, pos_ = 0;
  Buffer<float> k_, v_;  // (L, maxT, C) each: head h in columns [h*hs, (h+1)*hs)
  Buffer<float> x_, h_, qkv_, y_, a_, wide_, logits_, stats_;
};

// Picks a token id from logits (V) under the options; `rng` advances by one draw (none if greedy).
int32_t sample_token(const float* logits, int V, const SampleOptions& opt, Rng& rng);

// Feeds the prompt, then samples up to max_new_tokens, calling on_token for each new id.
// When the context fills (max_context), the cache is rebuilt from the last half.
std::vector<int32_t> generate(const Gpt2<float>& model, const std::vector<int32_t>& prompt, const SampleOptions& opt,
                              const std::function<void(int32_t)>& on_token = {});

}  // namespace lmf
