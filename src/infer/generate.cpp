#include "infer/generate.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>

#include "core/error.h"
#include "core/timer.h"
#include "infer/decoder.h"
#include "ops/ops.h"

namespace lmf {

int32_t sample_token(const float* logits, int V, const SampleOptions& opt, Rng& rng) {
  if (opt.temperature <= 0) return static_cast<int32_t>(std::max_element(logits, logits + V) - logits);
  // Candidates in the order logit descending, ties by id (deterministic), and their weights
  // exp((logit - max) / temperature). Only as much of the order as the choice needs is made, the
  // top_k or the nucleus: a full sort of a 128K vocabulary costs 14 ms a token, more than a GPU's
  // decode step (docs/performance.md).
  auto before = [logits](int32_t a, int32_t b) { return logits[a] != logits[b] ? logits[a] > logits[b] : a < b; };
  const double mx = *std::max_element(logits, logits + V);
  auto weight = [&](int32_t i) { return std::exp((logits[i] - mx) / opt.temperature); };
  std::vector<int32_t> ids(V);
  std::iota(ids.begin(), ids.end(), 0);
  const size_t top_k = opt.top_k > 0 ? std::min<size_t>(opt.top_k, V) : size_t(V);
  std::vector<double> p;
  size_t keep;
  if (top_k < size_t(V)) {
    std::nth_element(ids.begin(), ids.begin() + top_k, ids.end(), before);  // the top_k first, then in order
    std::sort(ids.begin(), ids.begin() + top_k, before);
    p.resize(top_k);
    double z = 0;
    for (size_t i = 0; i < top_k; ++i) z += (p[i] = weight(ids[i]));
    keep = top_k;
    if (opt.top_p < 1.0) {  // the nucleus within the top_k
      double cum = 0;
      size_t n = 0;
      while (n < keep && cum < opt.top_p * z) cum += p[n++];
      keep = std::max<size_t>(n, 1);
    }
  } else if (opt.top_p < 1.0) {
    // The nucleus of the whole vocabulary. The weights and their total in id order, and their mass
    // in buckets of 1/8 nat below the largest logit, which finds the bucket where top_p of the
    // total is reached. Only the ids up to it are sorted: they are a prefix of the order, since
    // a bucket is monotone in the logit, and every other id has a smaller logit.
    constexpr int kPerNat = 8, kBuckets = 1024;
    std::vector<double> w(V), mass(kBuckets);
    std::vector<uint16_t> bucket(V);
    double z = 0;
    for (int i = 0; i < V; ++i) {
      z += (w[i] = weight(i));
      bucket[i] = uint16_t(std::min<double>(kBuckets - 1, (mx - logits[i]) / opt.temperature * kPerNat));
      mass[bucket[i]] += w[i];
    }
    int last = 0;
    for (double below = 0; last < kBuckets - 1 && below + mass[last] < opt.top_p * z;) below += mass[last++];
    const auto mid = std::partition(ids.begin(), ids.end(), [&](int32_t i) { return bucket[i] <= last; });
    std::sort(ids.begin(), mid, before);
    p.resize(V);
    double cum = 0;
    size_t n = 0;
    auto take = [&](size_t end) {
      for (; n < end && cum < opt.top_p * z; ++n) cum += (p[n] = w[ids[n]]);
    };
    take(size_t(mid - ids.begin()));
    if (cum < opt.top_p * z) {  // the buckets' sums and this one differ in the last bits: go on
      std::sort(mid, ids.end(), before);
      take(size_t(V));
    }
    keep = std::max<size_t>(n, 1);
  } else {
    // Every token: no order needed, the draw walks the ids in order (min_p drops the unlikely).
    p.resize(V);
    for (int i = 0; i < V; ++i) {
      const double w = weight(i);
      p[i] = w >= opt.min_p ? w : 0.0;
    }
    keep = size_t(V);
  }
  if (top_k < size_t(V) || opt.top_p < 1.0)  // kept in order: min_p cuts the tail (never the first)
    while (keep > 1 && p[keep - 1] < opt.min_p) --keep;
  double z = 0;
  for (size_t i = 0; i < keep; ++i) z += p[i];
  double u = rng.uniform() * z, cum = 0;
  for (size_t i = 0; i < keep; ++i) {
    cum += p[i];
    if (u < cum) return ids[i];
  }
  return ids[keep - 1];
}

void penalize_repeats(float* logits, const std::vector<uint8_t>& seen, double penalty) {
  if (penalty == 1.0) return;
  const float f = float(penalty);
  for (size_t i = 0; i < seen.size(); ++i)
    if (seen[i]) logits[i] = logits[i] > 0 ? logits[i] / f : logits[i] * f;
}

std::vector<std::vector<int32_t>> generate_samples(const Model& model, const std::vector<int32_t>& prompt,
                                                  const SampleOptions& opt, int samples,
                                                  const std::function<void(int, int32_t)>& on_token,
                                                  GenerateStats* stats) {
  if (prompt.empty()) throw UserError("generation needs at least one prompt token");
  if (samples < 1) throw UserError("the number of samples must be at least 1 (got {})", samples);
  const int V = model.config().vocab_size;
  if (opt.vocab_limit < 0 || opt.vocab_limit > V)
    throw UserError("the sampling vocabulary limit {} is outside the model's vocabulary of {}", opt.vocab_limit, V);
  if (!(opt.min_p >= 0 && opt.min_p <= 1)) throw UserError("min_p must be in [0, 1] (got {})", opt.min_p);
  if (!(opt.repetition_penalty > 0))
    throw UserError("the repetition penalty must be positive (got {})", opt.repetition_penalty);
  const int choices = opt.vocab_limit > 0 ? opt.vocab_limit : V;
  auto dec = make_decoder(model, opt.max_context, samples);
  Decoder& gen = *dec;
  // Sample s draws from its own stretch of the seed's sampling stream: 2^40 draws apart.
  std::vector<Rng> rng;
  for (int s = 0; s < samples; ++s) rng.emplace_back(opt.seed, kStreamSample, uint64_t(s) << 40);
  // Each sequence's text so far, (samples, length): all advance together, so one length.
  std::vector<std::vector<int32_t>> all(samples, prompt), out(samples);
  std::vector<bool> done(samples, false);
  // For the repetition penalty: the ids each sample's text holds so far, and a row to penalise.
  const bool penalize = opt.repetition_penalty != 1.0;
  std::vector<std::vector<uint8_t>> seen(penalize ? samples : 0, std::vector<uint8_t>(V));
  for (auto& sn : seen)
    for (int32_t t : prompt)
      if (t >= 0 && t < V) sn[t] = 1;  // (an id outside is refused by the decoder's prefill)
  std::vector<float> row(penalize ? V : 0);
  // Keep the most recent tokens that fit, then prefill the empty cache with them in one pass.
  std::vector<int32_t> rows;
  auto refill = [&]() -> const float* {
    gen.reset();
    const size_t len = all[0].size();
    size_t keep = std::min<size_t>(len, size_t(std::max(1, gen.capacity() / 2)));
    if (len <= size_t(gen.capacity())) keep = len;
    rows.clear();
    for (const auto& a : all) rows.insert(rows.end(), a.end() - keep, a.end());
    return gen.prefill(rows.data(), int(keep));
  };
  Timer timer;
  const float* logits = refill();
  GenerateStats st;
  st.prompt_tokens = gen.position();
  st.prefill_s = timer.seconds();
  timer.reset();
  std::vector<int32_t> next(samples);
  for (int n = 0; n < opt.max_new_tokens; ++n) {
    for (int s = 0; s < samples; ++s) {
      // A finished sequence goes on with its last token, its choices unused.
      if (done[s]) {
        next[s] = all[s].back();
      } else {
        const float* l = logits + size_t(s) * V;
        if (penalize) {
          std::copy(l, l + V, row.begin());
          penalize_repeats(row.data(), seen[s], opt.repetition_penalty);
          l = row.data();
        }
        next[s] = sample_token(l, choices, opt, rng[s]);
        if (penalize) seen[s][next[s]] = 1;
      }
      all[s].push_back(next[s]);
      if (done[s]) continue;
      out[s].push_back(next[s]);
      if (on_token) on_token(s, next[s]);
      done[s] = next[s] == opt.stop_token;
    }
    if (n + 1 == opt.max_new_tokens || std::all_of(done.begin(), done.end(), [](bool d) { return d; })) break;
    logits = gen.position() < gen.capacity() ? gen.feed(next.data()) : refill();
  }
  st.new_tokens = 0;
  for (const auto& o : out) st.new_tokens += int(o.size());
  st.decode_s = timer.seconds();
  if (stats) *stats = st;
  return out;
}

std::vector<int32_t> generate(const Model& model, const std::vector<int32_t>& prompt, const SampleOptions& opt,
                              const std::function<void(int32_t)>& on_token, GenerateStats* stats) {
  return generate_samples(
      model, prompt, opt, 1, [&](int, int32_t id) { if (on_token) on_token(id); }, stats)[0];
}

}  // namespace lmf
