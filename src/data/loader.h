#pragma once
// DataLoader: (inputs, targets) batches from the token shards of one split.
//
// The shards of a split (files in `dir` named <split>_*.bin, or llm.c's *_<split>_*.bin /
// *_<split>.bin, sorted by name) are one concatenated token stream of N tokens. It is cut into
// W = (N - 1) / T windows: window w is tokens [w*T, w*T + T + 1), so consecutive windows share
// one token and every token but the first is a target exactly once per epoch. Windows may
// straddle shards.
//
// Each epoch visits the windows in a permutation: Fisher-Yates driven by
// Rng(seed, kStreamData, epoch << 40) when shuffling, the identity otherwise. Rank r of `world`
// takes positions r, r + world, r + 2*world, ... of that order, so ranks see disjoint windows;
// every rank gets W / world windows per epoch (the remainder is dropped) so that all ranks run
// the same number of batches. A batch is the rank's next B windows; at the end of an epoch it
// continues with the next epoch's order.
//
// State: (epoch, index), index = positions of the epoch's order consumed by all ranks together
// (ranks advance in lockstep, so every rank reports the same state). restore() then next()
// yields exactly what the uninterrupted loader would have, bit for bit, and the state does
// not depend on the world size: a checkpoint saved by 2 ranks resumes on 1 or 4, which take
// the following positions r, r + world', ... from where the 2 ranks stopped.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "data/shard.h"

namespace lmf::data {

struct LoaderState {
  uint64_t epoch = 0;
  uint64_t index = 0;  // positions of `epoch`'s window order consumed, all ranks together
};

class DataLoader {
 public:
  // B sequences of T tokens (windows of T + 1) per batch. Throws UserError when the split has
  // no shards or fewer than T + 1 tokens (too few for one window per rank).
  DataLoader(const std::filesystem::path& dir, const std::string& split, int B, int T,
             uint64_t seed, bool shuffle, int rank = 0, int world = 1);

  // inputs (B, T), targets (B, T): targets[b][t] = inputs[b][t + 1] within one window.
  void next(int32_t* inputs, int32_t* targets);

  LoaderState state() const { return {epoch_, base_ + taken_ * static_cast<uint64_t>(world_)}; }
  void restore(const LoaderState& s);  // UserError if s.index exceeds the epoch's windows
  void reset() { epoch_ = base_ = taken_ = 0; }  // a fresh validation pass

  uint64_t num_tokens() const { return total_; }  // whole split, all ranks
  // Max over the shards' headers; for llm.c shards (no vocab in the header) max token + 1.
  uint32_t vocab_size() const { return vocab_; }
  uint64_t windows_per_epoch() const { return per_rank_; }  // this rank's
  uint64_t batches_per_epoch() const { return per_rank_ / static_cast<uint64_t>(B_); }  // floor
  int batch_size() const { return B_; }
  int seq_len() const { return T_; }
  const std::vector<Shard>& shards() const { return shards_; }

 private:
  uint64_t window_at(uint64_t epoch, uint64_t pos);  // window id at position `pos` of `epoch`'s order
  void read_tokens(uint64_t start, uint64_t n, int32_t* out) const;  // across shards

  std::vector<Shard> shards_;
  std::vector<uint64_t> starts_;  // (S + 1,) prefix sums of shard sizes
  uint64_t total_ = 0;
  uint32_t vocab_ = 0;
  int B_, T_;
  uint64_t seed_;
  bool shuffle_;
  int rank_, world_;
  uint64_t windows_ = 0;   // W, all ranks
  uint64_t per_rank_ = 0;  // W / world
  // Position: this rank's next window is at base_ + taken_ * world + rank of epoch_'s order.
  // base_ is where this loader started in its first epoch (a restore), 0 after that.
  uint64_t epoch_ = 0, base_ = 0, taken_ = 0;
  std::vector<uint64_t> perm_;  // (W,) order of perm_epoch_; empty when !shuffle_
  uint64_t perm_epoch_ = 0;
  bool perm_valid_ = false;
  std::vector<int32_t> window_;  // (T + 1,) scratch
};

// The shard files of `split` in `dir`, sorted; empty if none (the loader turns that into an
// error). Exposed for tools that list or check a dataset.
std::vector<std::filesystem::path> find_shards(const std::filesystem::path& dir,
                                               const std::string& split);

}  // namespace lmf::data
