#include "train/data_parallel.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "ops/ops.h"

namespace lmf {

CommPlan plan_step(const StepShape& s) {
  CommPlan p;
  const int world = s.dp * s.tp;
  if (world <= 1) return p;
  auto ring = [](int w, double all_reduce, double reduce_scatter, double all_gather_shard) {
    return 2.0 * (w - 1) / w * all_reduce + double(w - 1) / w * reduce_scatter + (w - 1) * all_gather_shard;
  };
  // Every rank: the agreed stop flag (int, whole world) and the step's mean loss (double, over
  // the data-parallel group, whatever its size).
  p.all_reduce = 4 + 8;
  p.wire = ring(world, 4, 0, 0) + ring(s.dp, 8, 0, 0);
  if (s.dp > 1) {
    uint64_t ar = 0, rs = 0, ag = 0;
    if (s.zero < 2) {
      ar = s.flat * 4;  // the gradients
    } else {
      rs = s.flat * 4;
      ar = s.tp > 1 ? 16 : 8;  // the gradient norm's sums of squares (split and replicated)
    }
    if (s.zero > 0) ag = uint64_t(dist::Sharding(s.flat, s.dp).counts[s.dp_rank]) * 4;  // parameters
    p.all_reduce += ar;
    p.reduce_scatter += rs;
    p.all_gather += ag;
    p.wire += ring(s.dp, double(ar), double(rs), double(ag));
  }
  if (s.tp > 1) {
    p.tp_all_reduce = s.tp_values_per_micro * 4 * uint64_t(s.micro) + 8;  // + the norm's split part
    p.all_reduce += p.tp_all_reduce;
    p.wire += ring(s.tp, double(p.tp_all_reduce), 0, 0);
  }
  return p;
}

DataParallel::DataParallel(dist::Communicator& comm, ParamStore<float>& ps, const OptimConfig& oc, int zero,
                           dist::Communicator* tp)
    : comm_(comm), ps_(ps), zero_(zero), shards_(ps.flat_size(), comm.world()), tp_(tp) {
  LMF_CHECK(zero >= 0 && zero <= 2, "zero stage {}", zero);
  const int r = comm.rank();
  if (zero_ == 0)
    opt_ = std::make_unique<AdamW>(ps, oc);
  else
    opt_ = std::make_unique<AdamW>(ps, oc, shards_.begin(r), shards_.end(r));
  if (zero_ == 2) gshard_.resize(size_t(shards_.counts[r]));
}

void DataParallel::overlap_with(Model& model) {
  if (comm_.world() == 1 || zero_ >= 2 || model.num_blocks() == 0) return;
  covered_lo_ = model.block_param_range(0).first;
  covered_hi_ = model.block_param_range(model.num_blocks() - 1).second;
  for (size_t l = 1; l < model.num_blocks(); ++l)
    LMF_CHECK(model.block_param_range(l).first == model.block_param_range(l - 1).second, "blocks not adjacent");
  overlap_ = true;
  model.on_block_grads([this, &model](size_t l) {
    if (!armed_) return;
    auto [lo, hi] = model.block_param_range(l);
    comm_.start_all_reduce_sum(ps_.grads() + lo, hi - lo);
    started_ = true;
  });
}

double DataParallel::sync_and_clip(double max_norm) {
  const size_t n = ps_.flat_size();
  float* g = ps_.grads();
  size_t lo = 0, hi = n;  // the part of the summed gradients this rank holds
  if (comm_.world() > 1) {
    if (started_) {
      // The blocks' gradients are on their way; add what lies outside them, then wait for all.
      if (covered_lo_ > 0) comm_.start_all_reduce_sum(g, covered_lo_);
      if (covered_hi_ < n) comm_.start_all_reduce_sum(g + covered_hi_, n - covered_hi_);
      comm_.finish_all();
      started_ = armed_ = false;
    } else if (zero_ < 2) {
      comm_.all_reduce_sum(g, n);
    } else {
      // This rank's shard of the summed gradients lands in its own range of the gradient buffer
      // (the rest of the buffer is stale and never read).
      lo = opt_->lo();
      hi = lo + opt_->size();
      comm_.reduce_scatter_sum(g, gshard_.data(), shards_.counts);
      std::memcpy(g + lo, gshard_.data(), sizeof(float) * (hi - lo));
    }
  }
  double sumsq;
  if (tp_ == nullptr || tp_->world() == 1) {
    sumsq = ops::sum_squares(g + lo, hi - lo);
    if (lo > 0 || hi < n) comm_.all_reduce_sum(&sumsq, 1);
  } else {
    // Split tensors' squares add up over the tensor-parallel group; replicated ones are the
    // same on every rank of it and count once.
    auto parts = sum_squares_split_replicated(g, lo, hi);
    if (lo > 0 || hi < n) comm_.all_reduce_sum(parts.data(), 2);
    tp_->all_reduce_sum(parts.data(), 1);
    sumsq = parts[0] + parts[1];
  }
  const double norm = std::sqrt(sumsq);
  if (max_norm > 0 && norm > max_norm && std::isfinite(norm))
    ops::scale(g + lo, static_cast<float>(max_norm / norm), hi - lo);
  return norm;
}

std::array<double, 2> DataParallel::sum_squares_split_replicated(const float* g, size_t lo, size_t hi) const {
  std::array<double, 2> parts{0.0, 0.0};
  for (const auto& e : ps_.entries()) {
    const size_t a = std::max(lo, e.offset), b = std::min(hi, e.offset + e.size);
    if (a < b) parts[e.split_dim >= 0 ? 0 : 1] += ops::sum_squares(g + a, b - a);
  }
  return parts;
}

void DataParallel::update(double lr) {
  opt_->step(ps_, lr);
  if (zero_ > 0 && comm_.world() > 1) comm_.all_gather(ps_.params(), shards_.counts);
}

DataParallel::FullState DataParallel::full_state() {
  FullState st{opt_->m(), opt_->v(), opt_->t(), {}, {}};
  if (zero_ == 0 || comm_.world() == 1) return st;
  st.m_buf.assign(ps_.flat_size(), 0.0f);
  st.v_buf.assign(ps_.flat_size(), 0.0f);
  std::memcpy(st.m_buf.data() + opt_->lo(), opt_->m(), sizeof(float) * opt_->size());
  std::memcpy(st.v_buf.data() + opt_->lo(), opt_->v(), sizeof(float) * opt_->size());
  comm_.all_gather(st.m_buf.data(), shards_.counts);
  comm_.all_gather(st.v_buf.data(), shards_.counts);
  st.m = st.m_buf.data();
  st.v = st.v_buf.data();
  return st;
}

void DataParallel::load_optimizer(const float* m, const float* v, long t) {
  std::memcpy(opt_->m(), m + opt_->lo(), sizeof(float) * opt_->size());
  std::memcpy(opt_->v(), v + opt_->lo(), sizeof(float) * opt_->size());
  opt_->set_t(t);
}

}  // namespace lmf
