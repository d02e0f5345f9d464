#include "data/loader.h"

#include <algorithm>
#include <exception>
#include <numeric>
#include <optional>

#include "core/error.h"
#include "core/rng.h"

namespace lmf::data {

namespace fs = std::filesystem;

std::vector<fs::path> find_shards(const fs::path& dir, const std::string& split) {
  std::vector<fs::path> out;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) throw UserError("data directory {}: cannot list: {}", dir.string(), ec.message());
  const std::string pre = split + "_", mid = "_" + split + "_", suf = "_" + split + ".bin";
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    if (ec) break;
    const std::string name = it->path().filename().string();
    std::error_code fec;
    if (!name.ends_with(".bin") || !it->is_regular_file(fec)) continue;
    if (name.starts_with(pre) || name.find(mid) != std::string::npos || name.ends_with(suf))
      out.push_back(it->path());
  }
  if (ec) throw UserError("data directory {}: cannot list: {}", dir.string(), ec.message());
  std::sort(out.begin(), out.end());
  return out;
}

DataLoader::DataLoader(const fs::path& dir, const std::string& split, int B, int T, uint64_t seed,
                       bool shuffle, int rank, int world)
    : B_(B), T_(T), seed_(seed), shuffle_(shuffle), rank_(rank), world_(world) {
  if (B <= 0 || T <= 0)
    throw UserError("data loader: batch size {} and sequence length {} must be positive", B, T);
  LMF_CHECK(world >= 1 && rank >= 0 && rank < world, "rank {} of world {}", rank, world);
  std::vector<fs::path> paths = find_shards(dir, split);
  if (paths.empty())
    throw UserError("data directory {}: no shards for split \"{}\" (expected {}_*.bin)",
                    dir.string(), split, split);

  // Opening validates each shard in full (checksum pass), so open them in parallel.
  const int64_t S = static_cast<int64_t>(paths.size());
  std::vector<std::exception_ptr> errors(paths.size());
  std::vector<std::optional<Shard>> slots(paths.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < S; ++i) {
    try {
      slots[i].emplace(Shard::open(paths[i]));
    } catch (...) {
      errors[i] = std::current_exception();
    }
  }
  for (int64_t i = 0; i < S; ++i)
    if (errors[i]) std::rethrow_exception(errors[i]);
  starts_.push_back(0);
  for (auto& s : slots) {
    total_ += s->size();
    starts_.push_back(total_);
    uint32_t v = s->vocab_size() ? s->vocab_size() : (s->size() ? s->max_token() + 1 : 0);
    vocab_ = std::max(vocab_, v);
    shards_.push_back(std::move(*s));
  }

  const uint64_t need = static_cast<uint64_t>(T) + 1;
  if (total_ < need)
    throw UserError(
        "data directory {}: split \"{}\" has {} tokens, but sequence length {} needs "
        "at least {} (T + 1)",
        dir.string(), split, total_, T, need);
  windows_ = (total_ - 1) / static_cast<uint64_t>(T);
  per_rank_ = windows_ / static_cast<uint64_t>(world);
  if (per_rank_ == 0)
    throw UserError(
        "data directory {}: split \"{}\" has {} tokens = {} windows of {} tokens, "
        "fewer than the {} ranks",
        dir.string(), split, total_, windows_, need, world);
  window_.resize(need);
}

void DataLoader::restore(const LoaderState& s) {
  if (s.index > windows_)
    throw UserError(
        "data loader state index {} exceeds the {} windows per epoch of this data "
        "(did the data change since the checkpoint?)",
        s.index, windows_);
  epoch_ = s.epoch;
  base_ = s.index;
  taken_ = 0;
}

uint64_t DataLoader::window_at(uint64_t epoch, uint64_t pos) {
  if (!shuffle_) return pos;
  if (!perm_valid_ || perm_epoch_ != epoch) {
    // Fisher-Yates (Durstenfeld) from the back; the draws depend only on (seed, epoch).
    perm_.resize(windows_);
    std::iota(perm_.begin(), perm_.end(), uint64_t{0});
    Rng rng(seed_, kStreamData, epoch << 40);
    for (uint64_t i = windows_ - 1; i > 0; --i) std::swap(perm_[i], perm_[rng.below(i + 1)]);
    perm_epoch_ = epoch;
    perm_valid_ = true;
  }
  return perm_[pos];
}

void DataLoader::read_tokens(uint64_t start, uint64_t n, int32_t* out) const {
  // Shard holding `start`: the last with starts_[s] <= start (empty shards are skipped).
  size_t s = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), start) -
                                 starts_.begin()) -
             1;
  while (n > 0) {
    LMF_CHECK(s < shards_.size(), "read past the end of the split ({} tokens)", total_);
    uint64_t off = start - starts_[s];
    uint64_t take = std::min(n, shards_[s].size() - off);
    shards_[s].read(off, take, out);
    out += take;
    start += take;
    n -= take;
    ++s;
  }
}

void DataLoader::next(int32_t* inputs, int32_t* targets) {
  const size_t T = static_cast<size_t>(T_);
  const uint64_t world = static_cast<uint64_t>(world_);
  for (int b = 0; b < B_; ++b) {
    // Every rank takes the same count per epoch (the remainder is dropped), so ranks stay in
    // lockstep: (windows - base) / world, which is per_rank_ for an epoch started fresh.
    if (taken_ == (windows_ - base_) / world) {
      ++epoch_;
      base_ = taken_ = 0;
    }
    uint64_t w = window_at(epoch_, base_ + taken_++ * world + static_cast<uint64_t>(rank_));
    read_tokens(w * T, T + 1, window_.data());
    std::copy(window_.begin(), window_.begin() + T, inputs + b * T);
    std::copy(window_.begin() + 1, window_.end(), targets + b * T);
  }
}

}  // namespace lmf::data
