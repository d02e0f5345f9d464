#include "infer/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/timer.h"
#include "infer/decoder.h"
#include "ops/ops.h"

namespace lmf {

int32_t sample_token(const float* logits, int V, const SampleOptions& opt, Rng& rng) {
  if (opt.temperature <= 0) return static_cast<int32_t>(std::max_element(logits, logits + V) - logits);
  std::vector<int32_t> ids(V);
  std::iota(ids.begin(), ids.end(), 0);
  // Sort by logit, descending; ties by id so the order is deterministic.
  std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  });
  size_t keep = (opt.top_k > 0) ? std::min<size_t>(opt.top_k, V) : size_t(V);
  std::vector<double> p(keep);
  double mx = logits[ids[0]], z = 0;
  for (size_t i = 0; i < keep; ++i) z += (p[i] = std::exp((logits[ids[i]] - mx) / opt.temperature));
  if (opt.top_p < 1.0) {
    double cum = 0;
    size_t n = 0;
    while (n < keep && cum < opt.top_p * z) cum += p[n++];
    keep = std::max<size_t>(n, 1);
    z = 0;
    for (size_t i = 0; i < keep; ++i) z += p[i];
  }
  double u = rng.uniform() * z, cum = 0;
  for (size_t i = 0; i < keep; ++i) {
    cum += p[i];
    if (u < cum) return ids[i];
  }
  return ids[keep - 1];
}

std::vector<int32_t> generate(const Model& model, const std::vector<int32_t>& prompt, const SampleOptions& opt,
                              const std::function<void(int32_t)>& on_token, GenerateStats* stats) {
  if (prompt.empty()) throw UserError("generation needs at least one prompt token");
  const int V = model.config().vocab_size;
  if (opt.vocab_limit < 0 || opt.vocab_limit > V)
    throw UserError("the sampling vocabulary limit {} is outside the model's vocabulary of {}", opt.vocab_limit, V);
  const int choices = opt.vocab_limit > 0 ? opt.vocab_limit : V;
  auto dec = make_decoder(model, opt.max_context);
  Decoder& gen = *dec;
  Rng rng(opt.seed, kStreamSample);
  std::vector<int32_t> all = prompt, out;
  // Keep the most recent tokens that fit, then prefill the empty cache with them in one pass.
  auto refill = [&]() -> const float* {
    gen.reset();
    size_t keep = std::min<size_t>(all.size(), size_t(std::max(1, gen.capacity() / 2)));
    if (all.size() <= size_t(gen.capacity())) keep = all.size();
    return gen.prefill(all.data() + (all.size() - keep), int(keep));
  };
  Timer timer;
  const float* logits = refill();
  GenerateStats st;
  st.prompt_tokens = gen.position();
  st.prefill_s = timer.seconds();
  timer.reset();
  for (int n = 0; n < opt.max_new_tokens; ++n) {
    int32_t tok = sample_token(logits, choices, opt, rng);
    out.push_back(tok);
    all.push_back(tok);
    if (on_token) on_token(tok);
    if (tok == opt.stop_token) break;
    if (n + 1 == opt.max_new_tokens) break;
    logits = gen.position() < gen.capacity() ? gen.feed(tok) : refill();
  }
  st.new_tokens = int(out.size());
  st.decode_s = timer.seconds();
  if (stats) *stats = st;
  return out;
}

}  // namespace lmf
