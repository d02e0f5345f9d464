#include "data/stats.h"

#include <cmath>
#include <vector>

#include "data/loader.h"
#include "data/shard.h"

namespace lmf::data {

namespace {

// Calls f(token) for every token of a split, shard by shard, in blocks.
template <class Fn>
void for_each_token(const std::filesystem::path& dir, const std::string& split, Fn&& f) {
  std::vector<int32_t> buf(1 << 16);
  for (const auto& p : find_shards(dir, split)) {
    Shard s = Shard::open(p);
    for (uint64_t i = 0; i < s.size(); i += buf.size()) {
      uint64_t n = std::min<uint64_t>(buf.size(), s.size() - i);
      s.read(i, n, buf.data());
      for (uint64_t j = 0; j < n; ++j) f(buf[j]);
    }
  }
}

}  // namespace

double unigram_cross_entropy(const std::filesystem::path& dir) {
  std::vector<double> counts;
  for_each_token(dir, "train", [&](int32_t t) {
    if (size_t(t) >= counts.size()) counts.resize(size_t(t) + 1, 0.0);
    counts[t] += 1;
  });
  double total = 0;
  for (double& c : counts) total += (c += 1);  // add-one smoothing
  double h = 0;
  uint64_t n = 0;
  for_each_token(dir, "val", [&](int32_t t) {
    double c = size_t(t) < counts.size() ? counts[t] : 1.0;
    h -= std::log(c / total);
    ++n;
  });
  return n ? h / double(n) : 0.0;
}

}  // namespace lmf::data
