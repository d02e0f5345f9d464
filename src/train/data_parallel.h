#pragma once
// Data parallelism over a Communicator, with ZeRO (Rajbhandari et al. 2020) stages 0-2:
//   zero 0: gradients all-reduced; every rank holds the whole optimizer state and updates all;
//   zero 1: gradients all-reduced; rank r holds AdamW's moments for its shard of the flat
//           buffer only, updates that shard, and the parameters are all-gathered;
//   zero 2: gradients reduce-scattered (each rank receives only its shard's sum: half the
//           traffic of an all-reduce), then as zero 1.
// Shards are contiguous ranges of the registry's flat buffer (dist::Sharding), so every stage
// sees the same numbers: the runs differ only in who computes which update.
// Checkpoints always hold the whole state in the single-process layout, gathered on save and
// sliced on load, so a run resumes on any number of ranks.
#include <array>
#include <filesystem>
#include <memory>

#include "core/param_store.h"
#include "dist/communicator.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "train/config.h"

namespace lmf {

// Collective payload bytes one rank hands its communicators in one training step (no
// evaluation, no checkpoint), and the bytes a ring algorithm sends per rank for them. The
// trainer records what the communicators counted as metrics' "comm_bytes", so the model is
// checked against every MPI run.
struct CommPlan {
  uint64_t all_reduce = 0, reduce_scatter = 0, all_gather = 0;  // payload
  uint64_t tp_all_reduce = 0;  // of all_reduce: the tensor-parallel group's (activations, norm)
  uint64_t total() const { return all_reduce + reduce_scatter + all_gather; }
  double wire = 0;  // ring, per group of W: all_reduce 2(W-1)/W n, reduce_scatter (W-1)/W n,
                    // all_gather (W-1) shard
};
// The shape of a step, for plan_step.
struct StepShape {
  size_t flat = 0;   // this rank's registry's flat size (ParamStore::flat_size; its part under tp)
  int dp = 1;        // data-parallel ranks
  int zero = 0;      // ZeRO stage
  int tp = 1;        // tensor-parallel ranks per group
  // Tensor parallelism: values all-reduced per micro-batch (2 per block in forward and 2 in
  // backward, each (B T, C)), and micro-batches per step.
  uint64_t tp_values_per_micro = 0;
  int micro = 1;
  int dp_rank = 0;  // whose plan (only the last rank's shard may be shorter)
};
CommPlan plan_step(const StepShape& s);

class DataParallel {
 public:
  // comm: the data-parallel group. tp: the tensor-parallel group, when `ps` is this rank's
  // part of a tensor-parallel model (the gradient norm then sums over it).
  DataParallel(dist::Communicator& comm, ParamStore<float>& ps, const OptimConfig& oc, int zero,
               dist::Communicator* tp = nullptr);

  // Overlap (stages 0 and 1): each block's gradients start their all-reduce as soon as the
  // model's backward has finished that block, while earlier blocks still compute; the rest
  // (embeddings, final norm, head) follow in sync_and_clip. The sums are elementwise, so the
  // result is bit-identical to reducing after the backward. Call arm(true) before the backward
  // of the last micro-batch of a step (earlier micro-batches' gradients are not final).
  void overlap_with(Model& model);
  void arm(bool last_micro) { armed_ = last_micro && overlap_; }

  // After this rank's backward (its gradients already scaled so that the sum over ranks is the
  // mean over the global batch): sums the gradients over ranks and clips them to max_norm
  // (<= 0: no clipping) by their global norm, which it returns (the same on every rank).
  double sync_and_clip(double max_norm);
  // AdamW step on this rank's shard (all of it at zero 0), then the parameters are gathered.
  void update(double lr);

  // The whole optimizer state in the single-process layout (collective: shards are gathered).
  struct FullState {
    const float* m;
    const float* v;
    long t;
    std::vector<float> m_buf, v_buf;  // the gathered copies, when sharded
  };
  FullState full_state();
  // m, v (flat_size) the whole state in the single-process layout; every rank keeps its shard.
  void load_optimizer(const float* m, const float* v, long t);
  long step_count() const { return opt_->t(); }
  size_t shard_size() const { return opt_->size(); }

 private:
  dist::Communicator& comm_;
  ParamStore<float>& ps_;
  int zero_;
  dist::Sharding shards_;
  std::unique_ptr<AdamW> opt_;
  std::vector<float> gshard_;  // zero 2: this rank's summed gradient shard
  dist::Communicator* tp_;
  // Sums of squares of g over [lo, hi): {split tensors, replicated tensors}.
  std::array<double, 2> sum_squares_split_replicated(const float* g, size_t lo, size_t hi) const;
  bool overlap_ = false, armed_ = false, started_ = false;
  size_t covered_lo_ = 0, covered_hi_ = 0;  // the blocks' part of the flat buffer
};

}  // namespace lmf
