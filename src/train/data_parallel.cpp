#include "train/data_parallel.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "ops/ops.h"
#include "train/run_io.h"

namespace lmf {

CommPlan plan_step(size_t flat, int world, int zero, int rank) {
  CommPlan p;
  if (world <= 1) return p;
  p.all_reduce = 8 + 4;  // the step's mean loss (double) and the agreed stop flag (int)
  if (zero < 2) {
    p.all_reduce += flat * 4;  // the gradients
  } else {
    p.reduce_scatter = flat * 4;
    p.all_reduce += 8;  // the gradient norm's sum of squares
  }
  if (zero > 0) p.all_gather = uint64_t(dist::Sharding(flat, world).counts[rank]) * 4;  // parameters
  const double w = world;
  p.wire = 2 * (w - 1) / w * double(p.all_reduce) + (w - 1) / w * double(p.reduce_scatter) +
           (w - 1) * double(p.all_gather);
  return p;
}

DataParallel::DataParallel(dist::Communicator& comm, ParamStore<float>& ps, const OptimConfig& oc, int zero)
    : comm_(comm), ps_(ps), zero_(zero), shards_(ps.flat_size(), comm.world()) {
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
  double sumsq;
  if (comm_.world() == 1) {
    sumsq = ops::sum_squares(g, n);
  } else if (started_) {
    // The blocks' gradients are on their way; add what lies outside them, then wait for all.
    if (covered_lo_ > 0) comm_.start_all_reduce_sum(g, covered_lo_);
    if (covered_hi_ < n) comm_.start_all_reduce_sum(g + covered_hi_, n - covered_hi_);
    comm_.finish_all();
    started_ = armed_ = false;
    sumsq = ops::sum_squares(g, n);
  } else if (zero_ < 2) {
    comm_.all_reduce_sum(g, n);
    sumsq = ops::sum_squares(g, n);
  } else {
    // This rank's shard of the summed gradients lands in its own range of the gradient buffer
    // (the rest of the buffer is stale and never read).
    const size_t lo = opt_->lo(), cnt = opt_->size();
    comm_.reduce_scatter_sum(g, gshard_.data(), shards_.counts);
    std::memcpy(g + lo, gshard_.data(), sizeof(float) * cnt);
    sumsq = ops::sum_squares(g + lo, cnt);
    comm_.all_reduce_sum(&sumsq, 1);
  }
  const double norm = std::sqrt(sumsq);
  if (max_norm > 0 && norm > max_norm && std::isfinite(norm)) {
    const float s = static_cast<float>(max_norm / norm);
    if (zero_ == 2)
      ops::scale(g + opt_->lo(), s, opt_->size());
    else
      ops::scale(g, s, n);
  }
  return norm;
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

void DataParallel::load_optimizer(const std::filesystem::path& file) {
  std::vector<float> m(ps_.flat_size()), v(ps_.flat_size());
  long t = lmf::load_optimizer(m.data(), v.data(), ps_, file);
  std::memcpy(opt_->m(), m.data() + opt_->lo(), sizeof(float) * opt_->size());
  std::memcpy(opt_->v(), v.data() + opt_->lo(), sizeof(float) * opt_->size());
  opt_->set_t(t);
}

}  // namespace lmf
