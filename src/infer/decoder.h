#pragma once
// Incremental decoding with a KV cache: one token per step, each layer's keys and values kept
// for every earlier position, so step t costs O(t) attention instead of a full forward. One
// decoder per model family, behind one interface.
#include <cstdint>
#include <memory>

#include "model/model.h"

namespace lmf {

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Appends `token` at the next position; returns the logits (V) for the position after it.
  // UserError for an id outside the vocabulary.
  virtual const float* feed(int32_t token) = 0;
  // Appends tokens[0, n) and returns the logits (V) for the position after the last, as n calls
  // of feed would, up to summation order. From an empty cache, in one pass of the model over the
  // n rows (a prompt's prefill: matrix products instead of n vector products, and the causal
  // attention of training); else token by token. UserError for an id outside the vocabulary or
  // more tokens than the cache has room for.
  const float* prefill(const int32_t* tokens, int n);
  int position() const { return pos_; }  // tokens in the cache
  int capacity() const { return max_t_; }
  void reset() { pos_ = 0; }

 protected:
  Decoder(int max_t, int vocab) : max_t_(max_t), vocab_(vocab) {}
  // prefill's one pass: tokens[0, n) (checked: ids in the vocabulary, n in [1, capacity]) into
  // the empty cache.
  virtual const float* prefill_empty(const int32_t* tokens, int n) = 0;
  int max_t_;
  int vocab_;
  int pos_ = 0;
};

// A decoder for the model's family caching up to max_context positions (0: the model's
// block_size). The model must outlive the decoder and not change while it decodes.
std::unique_ptr<Decoder> make_decoder(const Model& model, int max_context = 0);

}  // namespace lmf
