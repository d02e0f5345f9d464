#pragma once
// End-to-end training-step benchmark on random tokens: forward, backward, clip, AdamW.
#include <vector>

#include "model/model_config.h"
#include "ops/backend.h"
#include "train/op_profile.h"

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
  std::vector<OpTime> ops;  // with profile: each op's calls and time over the timed steps (sum)
};

// be: the backend (nullptr: the CPU's); a step is timed to the end of its last op. profile: run on
// profiled_backend(be) (train/op_profile.h) and fill `ops`; every op then waits for its end.
// be16: bf16 storage on this table (over be's memory). graphs: each forward and backward through
// Model::forward_backward with graphs on (a GPU's CUDA graphs; not with profile).
BenchResult bench_train_step(const ModelConfig& cfg, int B, int T, int steps, int warmup, uint64_t seed = 0,
                             const ops::Backend<float>* be = nullptr, bool profile = false,
                             const ops::Backend<bf16>* be16 = nullptr, bool graphs = false);

}  // namespace lmf
