#pragma once
#include "train/config.h"

namespace lmf {
// Learning rate for optimizer step `step` (0-based) of `total`:
//  - linear warmup from lr/warmup to lr over warmup_steps;
//  - cosine: half-cosine from lr down to min_lr_ratio * lr at the last step;
//  - wsd (warmup-stable-decay, Hu et al. 2024 "MiniCPM"): constant lr, then a linear decay to
//    min_lr_ratio * lr over the last decay_fraction of the steps;
//  - constant: lr after warmup.
double lr_at(const OptimConfig& c, long step, long total);
}  // namespace lmf
