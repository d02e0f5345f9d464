#pragma once
// End-to-end training-step benchmark on random tokens: forward, backward, clip, AdamW.
#include "model/model_config.h"
#include "ops/backend.h"

namespace lmf {

struct BenchResult {
  double ms_per_step = 0;  // median over the timed steps
  double tokens_per_s = 0;
  double model_tflops = 0;  // flops_per_token x tokens/s
  double flops_per_token = 0;
  double peak_rss_mb = 0;
  double peak_device_mb = 0;  // the backend's peak memory (0 on the CPU)
  double loss = 0;
  size_t params = 0;
};

// be: the backend (nullptr: the CPU's); a step is timed to the end of its last op.
BenchResult bench_train_step(const ModelConfig& cfg, int B, int T, int steps, int warmup, uint64_t seed = 0,
                             const ops::Backend<float>* be = nullptr);

}  // namespace lmf
