#pragma once
// Data parallelism over a Communicator, with ZeRO (Rajbhandari et al. 2020) stages 0-2:
//   zero 0: gradients all-reduced; every rank holds the whole optimizer state and updates all;
//   zero 1: gradients all-reduced; rank r holds AdamW's moments for its shard of the flat
//           buffer only, updates that shard, and the parameters are all-gathered;
//   zero 2: gradients reduce-scattered (each rank receives only its shard's sum: half the
//           traffic of an all-reduce), then as zero 1;
//   zero 3: each rank keeps only its shard of the parameters too. A block's parameters are
//           all-gathered just before its forward (the next block's gather already under way:
//           prefetch) and dropped after it, gathered again for its backward, and its gradients
//           reduce-scattered and dropped as soon as its backward ends. The rest (embeddings,
//           final norm, head) is gathered for each micro-batch and dropped after it.
//           Dropped means the pages go back to the kernel (ParamStore::release_params), so a
//           rank's resident parameters and gradients are its shard plus about two blocks. On
//           a device the same holds of the granules of its virtual memory (core/paged_array.h),
//           committed again just before a gather or a backward writes them.
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
  // ZeRO 3: the blocks' ranges of the flat buffer (Model::block_param_range).
  std::vector<std::pair<size_t, size_t>> blocks;
};
CommPlan plan_step(const StepShape& s);

class DataParallel {
 public:
  // comm: the data-parallel group. tp: the tensor-parallel group, when `ps` is this rank's
  // part of a tensor-parallel model (the gradient norm then sums over it). be: the model's
  // backend (nullptr: the CPU's); a device backend keeps the optimizer state in its memory and
  // works on the compute copy of `ps`. Its gradients and parameters then travel over
  // `device_comm` (NCCL over the same ranks as comm, which still carries the host values); on
  // more than one rank a device backend supports every ZeRO stage, and tensor parallelism (whose
  // activations travel over the model's own device communicator; `tp` here carries the gradient
  // norm's host values).
  DataParallel(dist::Communicator& comm, ParamStore<float>& ps, const OptimConfig& oc, int zero,
               dist::Communicator* tp = nullptr, const ops::Backend<float>* be = nullptr,
               dist::Communicator* device_comm = nullptr);

  // Overlap (stages 0 and 1): each block's gradients start their all-reduce as soon as the
  // model's backward has finished that block, while earlier blocks still compute; the rest
  // (embeddings, final norm, head) follow in sync_and_clip. The sums are elementwise, so the
  // result is bit-identical to reducing after the backward. Call arm(true) before the backward
  // of the last micro-batch of a step (earlier micro-batches' gradients are not final).
  void overlap_with(Model& model);
  void arm(bool last_micro) { armed_ = last_micro && overlap_; }

  // ZeRO 3 (no-ops at other stages, and on one rank): attach installs the model's block hooks;
  // release_unowned drops every parameter outside this rank's shard (after init or load, and
  // after a checkpoint); gather_all brings them all back (before a checkpoint). Around every
  // forward (and its backward): begin_micro_batch gathers the parameters outside the blocks,
  // end_micro_batch(backward) reduce-scatters their gradients (if there was a backward) and
  // drops them. zero_grad replaces ParamStore::zero_grad at every stage.
  void attach(Model& model);
  void release_unowned();
  void gather_all();
  void begin_micro_batch();
  void end_micro_batch(bool backward);
  void zero_grad();
  // ZeRO 3: the most parameter and gradient memory resident at once so far (sampled when a
  // block's backward ends, the fullest moment), in bytes; 0 at other stages.
  size_t peak_resident_bytes() const { return peak_resident_; }

  // After this rank's backward (its gradients already scaled so that the sum over ranks is the
  // mean over the global batch): sums the gradients over ranks and clips them to max_norm
  // (<= 0: no clipping) by their global norm, which it returns (the same on every rank). The
  // clipping factor is applied by the next update(), inside AdamW (the gradient buffer keeps the
  // unclipped sums).
  double sync_and_clip(double max_norm);
  // AdamW step on this rank's shard (all of it at zero 0), then the parameters are gathered
  // (zero 1 and 2; zero 3 gathers them block by block when they are next used).
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
  dist::Communicator& comm_;  // host values (and, on the CPU backend, everything)
  dist::Communicator& buf_;   // the gradient and parameter buffers: comm_, or the device's
  ParamStore<float>& ps_;
  const ops::Backend<float>* be_;
  int zero_;
  dist::Sharding shards_;
  std::unique_ptr<AdamW> opt_;
  float grad_scale_ = 1.0f;    // the last sync_and_clip's clipping factor, for update()
  std::vector<float> gshard_;  // zero 2: this rank's summed gradient shard
  dist::Communicator* tp_;
  Array<float> dgshard_;       // zero 2 on a device backend: the same, in its memory
  // ZeRO 3: this rank's summed gradient shard, in the backend's memory.
  float* shard_sum() { return be_->on_host() ? gshard_.data() : dgshard_.data(); }
  // Sums of squares of g over [lo, hi): {split tensors, replicated tensors}.
  std::array<double, 2> sum_squares_split_replicated(const float* g, size_t lo, size_t hi) const;
  bool overlap_ = false, armed_ = false, started_ = false;
  size_t covered_lo_ = 0, covered_hi_ = 0;  // the blocks' part of the flat buffer

  // ZeRO 3.
  bool stage3() const { return zero_ == 3 && comm_.world() > 1; }
  std::vector<int> counts_in(size_t lo, size_t hi) const;  // each rank's part of [lo, hi)
  void gather(size_t lo, size_t hi, bool wait);            // all-gather [lo, hi) in place
  void drop_params(size_t lo, size_t hi);                  // release [lo, hi) but this rank's shard
  void reduce_scatter_into_shard(size_t lo, size_t hi);    // gshard += this rank's part of the sum
  void on_use(size_t l, nn::BlockUse use);
  std::vector<std::pair<size_t, size_t>> blocks_;          // each block's range
  std::vector<std::pair<size_t, size_t>> rest_;            // the ranges outside the blocks
  std::vector<char> resident_;                             // per block: gathered now
  long prefetched_ = -1;                                   // block whose gather is under way
  Array<float> rs_tmp_;  // one range's part of a reduce-scatter, in the backend's memory
  size_t peak_resident_ = 0;
};

}  // namespace lmf
