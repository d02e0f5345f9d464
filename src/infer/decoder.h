#pragma once
// Incremental decoding with a KV cache: one token per step, each layer's keys and values kept
// for every earlier position, so step t costs O(t) attention instead of a full forward. One
// decoder per model family, behind one interface. A decoder holds a batch of sequences that
// advance together, one token each per step (several samples of one prompt: the step's products
// have a row per sequence, and the weights are read once for all of them).
#include <cstdint>
#include <memory>

#include "model/model.h"

namespace lmf {

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Appends tokens[b] to sequence b at the next position, for each b of the batch; returns the
  // logits (batch, V), row b for the position after sequence b's new token. UserError for an id
  // outside the vocabulary; the cache must have room.
  const float* feed(const int32_t* tokens);
  // feed for a batch of one sequence.
  const float* feed(int32_t token) { return feed(&token); }
  // Appends tokens (batch, n), row b to sequence b, and returns the logits (batch, V) for the
  // position after the last, as n calls of feed would, up to summation order. From an empty
  // cache, in one pass of the model over the rows (a prompt's prefill: matrix products instead
  // of n vector products, and the causal attention of training); else token by token. When the
  // rows are all the same (several samples of one prompt) the pass runs once, and its keys and
  // values are cached once, in sequence 0's cache, which every sequence's attention then reads
  // for those positions (shared()): the numbers of N copies, bit for bit, without N times the
  // cache traffic. UserError for an id outside the vocabulary or more tokens than the cache has
  // room for.
  const float* prefill(const int32_t* tokens, int n);
  int position() const { return pos_; }  // tokens in each sequence's cache
  int shared() const { return shared_; }  // leading positions all sequences read from sequence 0's
  int capacity() const { return max_t_; }
  int batch() const { return batch_; }
  void reset() { pos_ = shared_ = 0; }

 protected:
  Decoder(int max_t, int vocab, int batch) : max_t_(max_t), vocab_(vocab), batch_(batch) {}
  // feed's step, the tokens checked and the cache known to have room.
  virtual const float* feed_checked(const int32_t* tokens) = 0;
  // prefill's one pass into the empty cache: tokens (rows, n), checked, n in [1, capacity]; rows
  // is the batch, or 1 when every sequence gets the same tokens (then cached in sequence 0's rows
  // only, which shared() then says all of them read).
  virtual const float* prefill_empty(const int32_t* tokens, int n, int rows) = 0;
  int max_t_;
  int vocab_;
  int batch_;
  int pos_ = 0;
  int shared_ = 0;
};

// A decoder for the model's family caching up to max_context positions (0: the model's
// block_size) for each of `batch` sequences. The model must outlive the decoder and not change
// while it decodes.
std::unique_ptr<Decoder> make_decoder(const Model& model, int max_context = 0, int batch = 1);

}  // namespace lmf
