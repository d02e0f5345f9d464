#pragma once
// The per-step constants of AdamW, computed once on the host and shared by the CPU and CUDA
// kernels, so that both apply exactly the same bias corrections (in double, rounded once).
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace lmf::ops {

struct AdamwStep {
  float lr, beta1, beta2, eps, wd;
  float inv_b1c, inv_b2c;  // 1 / (1 - beta^t): bias corrections

  static AdamwStep at(float lr, float beta1, float beta2, float eps, float wd, long t) {
    return {lr,
            beta1,
            beta2,
            eps,
            wd,
            (float)(1.0 / (1.0 - std::pow((double)beta1, (double)t))),
            (float)(1.0 / (1.0 - std::pow((double)beta2, (double)t)))};
  }
};

// One piece of a multi-tensor AdamW step (ops.h adamw_chunks): `size` values from `offset` of the
// flat range, with weight decay wd. A piece holds at most kAdamwChunk values (a GPU block takes
// one), and lies inside one registry entry.
struct AdamwChunk {
  size_t offset;
  uint32_t size;
  float wd;
};
constexpr uint32_t kAdamwChunk = 1u << 16;

}  // namespace lmf::ops
