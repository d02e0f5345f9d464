#include "data/mixture.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/rng.h"

namespace lmf::data {

namespace {
constexpr uint64_t kStreamMixture = 5;
}

std::vector<std::pair<std::filesystem::path, double>> parse_mixture(const std::string& spec, const std::string& what) {
  std::vector<std::pair<std::filesystem::path, double>> out;
  if (spec.empty()) return out;
  size_t pos = 0;
  double total = 0;
  while (pos <= spec.size()) {
    size_t comma = spec.find(',', pos);
    std::string item = spec.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    size_t eq = item.rfind('=');
    if (eq == std::string::npos || eq == 0)
      throw UserError("{}: expected dir=weight, got '{}'", what, item);
    double w;
    try {
      size_t used = 0;
      w = std::stod(item.substr(eq + 1), &used);
      if (used != item.size() - eq - 1) throw std::invalid_argument("trailing");
    } catch (const std::exception&) {
      throw UserError("{}: weight of '{}' is not a number", what, item);
    }
    if (!(w >= 0) || !std::isfinite(w)) throw UserError("{}: weight of '{}' must be >= 0", what, item);
    total += w;
    out.emplace_back(item.substr(0, eq), w);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  if (!(total > 0)) throw UserError("{}: at least one weight must be > 0", what);
  return out;
}

MixtureLoader::MixtureLoader(std::vector<MixtureSource> sources, int B, int T, uint64_t seed, bool shuffle,
                             long total_steps, double cooldown_fraction, int grad_accum, int rank, int world)
    : sources_(std::move(sources)), B_(B), T_(T), accum_(grad_accum), seed_(seed), x_(T), y_(T) {
  LMF_CHECK(!sources_.empty(), "MixtureLoader without sources");
  cooldown_start_ = total_steps - std::lround(cooldown_fraction * double(total_steps));
  for (size_t i = 0; i < sources_.size(); ++i) {
    // Each source shuffles with its own seed, so two sources built from one directory would
    // still differ.
    loaders_.push_back(std::make_unique<DataLoader>(sources_[i].dir, "train", 1, T, seed + i, shuffle, rank, world));
  }
}

std::vector<double> MixtureLoader::weights_at(long step) const {
  std::vector<double> w;
  double total = 0;
  for (const auto& s : sources_) total += (w.emplace_back(step >= cooldown_start_ ? s.cooldown_weight : s.weight));
  if (total <= 0) throw UserError("data mixture: every source has weight 0 at step {}", step + 1);
  for (double& x : w) x /= total;
  return w;
}

void MixtureLoader::next(int32_t* inputs, int32_t* targets, long step, int micro) {
  auto w = weights_at(step);
  for (int r = 0; r < B_; ++r) {
    uint64_t draw = (uint64_t(step) * uint64_t(accum_) + uint64_t(micro)) * uint64_t(B_) + uint64_t(r);
    double u = u32_to_unit(philox4x32(seed_, kStreamMixture, draw)[0]);
    size_t src = 0;
    for (double cum = w[0]; src + 1 < w.size() && u >= cum; cum += w[++src]) {
    }
    while (w[src] == 0) --src;  // u rounding past the last positive weight
    loaders_[src]->next(x_.data(), y_.data());
    std::memcpy(inputs + size_t(r) * T_, x_.data(), sizeof(int32_t) * T_);
    std::memcpy(targets + size_t(r) * T_, y_.data(), sizeof(int32_t) * T_);
  }
}

nlohmann::json MixtureLoader::state() const {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& l : loaders_) j.push_back({{"epoch", l->state().epoch}, {"index", l->state().index}});
  return j;
}

void MixtureLoader::restore(const nlohmann::json& state) {
  if (!state.is_array() || state.size() != loaders_.size())
    throw UserError("checkpoint data state has {} sources, the config has {}", state.is_array() ? state.size() : 0,
                    loaders_.size());
  for (size_t i = 0; i < loaders_.size(); ++i)
    loaders_[i]->restore({state[i].at("epoch").get<uint64_t>(), state[i].at("index").get<uint64_t>()});
}

uint32_t MixtureLoader::vocab_size() const {
  uint32_t v = 0;
  for (const auto& l : loaders_) v = std::max(v, l->vocab_size());
  return v;
}

}  // namespace lmf::data
