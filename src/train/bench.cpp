#include "train/bench.h"

#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/buffer.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/timer.h"
#include "model/model.h"
#include "optim/adamw.h"

namespace lmf {

BenchResult bench_train_step(const ModelConfig& cfg, int B, int T, int steps, int warmup, uint64_t seed,
                             const ops::Backend<float>* be, bool profile, const ops::Backend<bf16>* be16,
                             bool graphs) {
  if (profile && graphs) throw UserError("profiling waits for each op's end, which a CUDA graph cannot: not both");
  if (profile) {
    be = &profiled_backend(be ? *be : ops::cpu_backend<float>());
    if (be16) be16 = &profiled_backend(*be16);
  }
  auto owned = make_model(cfg, true, {}, be, be16);
  Model& model = *owned;
  const ops::Backend<float>& backend = model.backend();
  model.init(seed);
  if (graphs) model.set_graphs(true);
  OptimConfig oc;
  AdamW opt(model.params(), oc, &backend);
  Buffer<int32_t> x(size_t(B) * T), y(size_t(B) * T);
  Rng rng(seed, kStreamData);
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = int32_t(rng.below(cfg.vocab_size));
    y[i] = int32_t(rng.below(cfg.vocab_size));
  }
  std::vector<double> times;
  BenchResult r;
  for (int s = 0; s < warmup + steps; ++s) {
    if (s == warmup) reset_op_profile();
    Timer t;
    model.params().zero_grad();
    r.loss = model.forward_backward(x.data(), y.data(), B, T, 1.0 / (double(B) * T));
    // As the trainer: the norm, then the clipping factor folded into the update.
    opt.step(model.params(), 1e-4, clip_scale(grad_norm(model.params(), backend), 1.0));
    backend.synchronize();
    if (s >= warmup) times.push_back(t.seconds());
  }
  std::sort(times.begin(), times.end());
  double med = times[times.size() / 2];
  r.ms_per_step = med * 1e3;
  r.tokens_per_s = double(B) * T / med;
  r.flops_per_token = model.flops_per_token(T);
  r.model_tflops = r.flops_per_token * r.tokens_per_s / 1e12;
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  r.peak_rss_mb = ru.ru_maxrss / 1024.0;
  r.peak_device_mb = double(backend.peak_memory_bytes()) / 1048576.0;
  r.params = model.params().num_params();
  if (profile) r.ops = op_profile();
  return r;
}

}  // namespace lmf
