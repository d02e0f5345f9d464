#pragma once
// Sampling: token choice under temperature / top-k / top-p / min-p and a repetition penalty, and
// autoregressive generation over a KV-cache decoder (infer/decoder.h) of any model family.
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
  double min_p = 0.0;        // then keep only tokens at least min_p times as likely as the most
                             // likely one (after the temperature); 0: off
  double repetition_penalty = 1.0;  // a token already in the text (prompt included) has its
                                    // logit divided by this if positive, multiplied if not
                                    // (Hugging Face's repetition_penalty); 1: off
  uint64_t seed = 0;
  int max_new_tokens = 256;
  int stop_token = -1;       // stop after emitting this id (e.g. end-of-text); -1: none
  int max_context = 0;       // positions used; 0 = the model's block_size. Set it to the trained
                             // sequence length: later positions' embeddings were never trained.
  int vocab_limit = 0;       // choose only ids below this (the tokenizer's vocabulary, where the
                             // model's is padded past it, as GPT-2's 50257 to 50304); 0: all
};

// Where generation's time went: the prompt's prefill (to its first logits) and the new tokens.
struct GenerateStats {
  int prompt_tokens = 0;  // fed in the first prefill (the prompt's tail that fits the context)
  double prefill_s = 0;
  int new_tokens = 0;     // of all samples
  double decode_s = 0;    // from the first logits to the last token, cache rebuilds included
};

// Picks a token id from logits (V) under the options (temperature, top_k, top_p, min_p; the
// repetition penalty is generate's); `rng` advances by one draw (none if greedy).
int32_t sample_token(const float* logits, int V, const SampleOptions& opt, Rng& rng);

// The repetition penalty on logits (V) for the ids marked in `seen` (V), in place.
void penalize_repeats(float* logits, const std::vector<uint8_t>& seen, double penalty);

// Prefills the cache with the prompt, then samples up to max_new_tokens, calling on_token for
// each new id. When the context fills (max_context), the cache is rebuilt from the last half.
// stats, when given, receives the timings.
std::vector<int32_t> generate(const Model& model, const std::vector<int32_t>& prompt, const SampleOptions& opt,
                              const std::function<void(int32_t)>& on_token = {}, GenerateStats* stats = nullptr);

// generate for `samples` continuations of the prompt at once: one decoder with a sequence per
// sample, so each step's products have a row per sample and read the weights once for all. Sample
// s draws from its own part of the seed's sampling stream (sample 0's is generate's: the same
// text); each stops at stop_token or max_new_tokens, and the batch when all have. on_token(s, id)
// for each new id of sample s; stats count the new tokens of all samples.
std::vector<std::vector<int32_t>> generate_samples(const Model& model, const std::vector<int32_t>& prompt,
                                                  const SampleOptions& opt, int samples,
                                                  const std::function<void(int, int32_t)>& on_token = {},
                                                  GenerateStats* stats = nullptr);

}  // namespace lmf
