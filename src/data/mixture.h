#pragma once
// Training batches drawn from several shard directories ("sources") with weights, and a second
// set of weights for a final cooldown phase (e.g. anneal on the cleanest source, or MeCo's
// switch from metadata-prefixed documents to plain ones for the last 10% of training).
//
// Row r of the batch for optimizer step s, micro-batch m, comes from source i with probability
// w_i(s) / sum w(s), drawn from Philox(seed, kStreamMixture, (s * accum + m) * B + r): the
// choice is a function of the position in training, not of history. Each source is its own
// DataLoader (one window per row), so the state is one (epoch, index) per source, and a
// restored mixture continues bit for bit.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/loader.h"

namespace lmf::data {

struct MixtureSource {
  std::filesystem::path dir;
  double weight = 1;           // before the cooldown
  double cooldown_weight = 1;  // during the last `cooldown_fraction` of the steps
};

// Parses "dir=weight,dir=weight" (weights >= 0, at least one > 0). `what` names the setting
// in errors. An empty spec gives an empty list.
std::vector<std::pair<std::filesystem::path, double>> parse_mixture(const std::string& spec, const std::string& what);

class MixtureLoader {
 public:
  MixtureLoader(std::vector<MixtureSource> sources, int B, int T, uint64_t seed, bool shuffle,
                long total_steps, double cooldown_fraction, int grad_accum, int rank = 0, int world = 1);
  // Micro-batch `micro` of optimizer step `step` (0-based): inputs, targets (B, T).
  void next(int32_t* inputs, int32_t* targets, long step, int micro);
  nlohmann::json state() const;  // [{"epoch", "index"}, ...], one per source
  void restore(const nlohmann::json& state);
  uint32_t vocab_size() const;
  // Source weights in force at `step`, normalised.
  std::vector<double> weights_at(long step) const;
  size_t size() const { return loaders_.size(); }

 private:
  std::vector<MixtureSource> sources_;
  std::vector<std::unique_ptr<DataLoader>> loaders_;  // B = 1 each
  int B_, T_, accum_;
  uint64_t seed_;
  long cooldown_start_;
  std::vector<int32_t> x_, y_;  // (T) scratch
};

}  // namespace lmf::data
