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
    const dist::Sharding sh(s.flat, s.dp);
    const size_t own = size_t(sh.counts[size_t(s.dp_rank)]);
    if (s.zero < 2) {
      ar = s.flat * 4;  // the gradients
    } else {
      rs = s.flat * 4;
      ar = s.tp > 1 ? 16 : 8;  // the gradient norm's sums of squares (split and replicated)
    }
    if (s.zero == 1 || s.zero == 2) ag = own * 4;  // parameters, after the update
    if (s.zero == 3) {
      // Per micro-batch: every range once for the forward (this rank's shard in all), the blocks
      // but the last again for the backward; the gradients reduce-scattered range by range.
      const size_t lo = sh.begin(s.dp_rank), hi = sh.end(s.dp_rank);
      uint64_t again = 0;
      for (size_t l = 0; l + 1 < s.blocks.size(); ++l) {
        const size_t a = std::max(lo, s.blocks[l].first), b = std::min(hi, s.blocks[l].second);
        again += a < b ? b - a : 0;
      }
      ag = (own + again) * 4 * uint64_t(s.micro);
      rs *= uint64_t(s.micro);
    }
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
                           dist::Communicator* tp, const ops::Backend<float>* be, dist::Communicator* device_comm)
    : comm_(comm),
      buf_(device_comm ? *device_comm : comm),
      ps_(ps),
      be_(be ? be : &ops::cpu_backend<float>()),
      zero_(zero),
      shards_(ps.flat_size(), comm.world()),
      tp_(tp),
      dgshard_(*be_->memory),
      rs_tmp_(*be_->memory) {
  LMF_CHECK(zero >= 0 && zero <= 3, "zero stage {}", zero);
  LMF_CHECK(be_->on_host() || comm.world() == 1 || (device_comm && device_comm->world() == comm.world()),
            "data parallelism on the {} backend: {} ranks, ZeRO {}, {} device communicator", be_->name, comm.world(),
            zero, device_comm ? "a" : "no");
  const int r = comm.rank();
  if (zero_ == 0)
    opt_ = std::make_unique<AdamW>(ps, oc, be_);
  else
    opt_ = std::make_unique<AdamW>(ps, oc, shards_.begin(r), shards_.end(r), be_);
  if (zero_ >= 2) {
    if (be_->on_host())
      gshard_.resize(size_t(shards_.counts[r]));
    else
      dgshard_.resize(size_t(shards_.counts[r]));
  }
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
    buf_.start_all_reduce_sum(ps_.dev_grads() + lo, hi - lo);
    started_ = true;
  });
}

double DataParallel::sync_and_clip(double max_norm) {
  const size_t n = ps_.flat_size();
  float* g = ps_.dev_grads();  // the host's own on the CPU backend; on a device, one rank only
  size_t lo = 0, hi = n;  // the part of the summed gradients this rank holds
  if (comm_.world() > 1) {
    if (started_) {
      // The blocks' gradients are on their way; add what lies outside them, then wait for all.
      if (covered_lo_ > 0) buf_.start_all_reduce_sum(g, covered_lo_);
      if (covered_hi_ < n) buf_.start_all_reduce_sum(g + covered_hi_, n - covered_hi_);
      buf_.finish_all();
      started_ = armed_ = false;
    } else if (zero_ < 2) {
      buf_.all_reduce_sum(g, n);
    } else if (zero_ == 3) {
      // Every range's sum already arrived in the shard's sums, block by block
      // (reduce_scatter_into_shard); this rank's range of the gradients was released since.
      lo = opt_->lo();
      hi = lo + opt_->size();
      ps_.commit_grads(lo, hi);
      be_->copy(g + lo, shard_sum(), hi - lo);
      be_->fill(shard_sum(), 0.0f, hi - lo);
    } else {
      // This rank's shard of the summed gradients lands in its own range of the gradient buffer
      // (the rest of the buffer is stale and never read).
      lo = opt_->lo();
      hi = lo + opt_->size();
      if (be_->on_host()) {
        comm_.reduce_scatter_sum(g, gshard_.data(), shards_.counts);
        std::memcpy(g + lo, gshard_.data(), sizeof(float) * (hi - lo));
      } else {
        buf_.reduce_scatter_sum(g, dgshard_.data(), shards_.counts);
        be_->copy(g + lo, dgshard_.data(), hi - lo);
      }
    }
  }
  double sumsq;
  if (tp_ == nullptr || tp_->world() == 1) {
    sumsq = be_->sum_squares(g + lo, hi - lo);
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
  grad_scale_ = clip_scale(norm, max_norm);  // applied inside the update: no pass over g here
  return norm;
}

std::array<double, 2> DataParallel::sum_squares_split_replicated(const float* g, size_t lo, size_t hi) const {
  std::array<double, 2> parts{0.0, 0.0};
  for (const auto& e : ps_.entries()) {
    const size_t a = std::max(lo, e.offset), b = std::min(hi, e.offset + e.size);
    if (a < b) parts[e.split_dim >= 0 ? 0 : 1] += be_->sum_squares(g + a, b - a);
  }
  return parts;
}

void DataParallel::update(double lr) {
  opt_->step(ps_, lr, grad_scale_);
  grad_scale_ = 1.0f;
  if (zero_ > 0 && zero_ < 3 && comm_.world() > 1) buf_.all_gather(ps_.dev_params(), shards_.counts);
}

void DataParallel::zero_grad() {
  if (stage3())
    ps_.release_grads(0, ps_.flat_size());  // zero, and no gradient page stays resident
  else
    ps_.zero_grad();
}

std::vector<int> DataParallel::counts_in(size_t lo, size_t hi) const {
  std::vector<int> c(shards_.counts.size());
  for (size_t r = 0; r < c.size(); ++r) {
    const size_t a = std::max(lo, shards_.begin(int(r))), b = std::min(hi, shards_.end(int(r)));
    c[r] = a < b ? int(b - a) : 0;
  }
  return c;
}

void DataParallel::gather(size_t lo, size_t hi, bool wait) {
  ps_.commit_params(lo, hi);  // a device backs the range again before the gather writes it
  if (wait)
    buf_.all_gather(ps_.dev_params() + lo, counts_in(lo, hi));
  else
    buf_.start_all_gather(ps_.dev_params() + lo, counts_in(lo, hi));
}

void DataParallel::drop_params(size_t lo, size_t hi) {
  // A device hands granules back only once the device is idle (a queued kernel may still use
  // them), and the prefetch under way may wait on the other ranks: wait for it here, under the
  // communicator's timeout, rather than in the driver, where a dead rank would hang this one.
  if (!be_->on_host()) buf_.finish_all();
  const size_t own_lo = opt_->lo(), own_hi = own_lo + opt_->size();
  ps_.release_params(lo, std::min(hi, std::max(lo, own_lo)));
  ps_.release_params(std::max(lo, std::min(hi, own_hi)), hi);
}

void DataParallel::reduce_scatter_into_shard(size_t lo, size_t hi) {
  auto counts = counts_in(lo, hi);
  const size_t n = size_t(counts[size_t(comm_.rank())]);
  LMF_CHECK(n <= rs_tmp_.size(), "ZeRO 3: a range's part of {} values, room for {}", n, rs_tmp_.size());
  buf_.reduce_scatter_sum(ps_.dev_grads() + lo, rs_tmp_.data(), counts);
  const size_t at = std::max(lo, opt_->lo()) - opt_->lo();
  if (n > 0) be_->residual_forward(shard_sum() + at, shard_sum() + at, rs_tmp_.data(), n);  // +=
  ps_.release_grads(lo, hi);
}

void DataParallel::attach(Model& model) {
  if (!stage3()) return;
  const size_t n = ps_.flat_size(), L = model.num_blocks();
  blocks_.clear();
  for (size_t l = 0; l < L; ++l) blocks_.push_back(model.block_param_range(l));
  rest_.clear();
  const size_t first = L ? blocks_.front().first : n, last = L ? blocks_.back().second : n;
  if (first > 0) rest_.push_back({0, first});
  if (last < n) rest_.push_back({last, n});
  resident_.assign(L, 0);
  // The largest part of one range this rank receives, allocated once (not in the step loop).
  size_t most = 0;
  for (const auto& ranges : {blocks_, rest_})
    for (auto [lo, hi] : ranges) most = std::max(most, size_t(counts_in(lo, hi)[size_t(comm_.rank())]));
  rs_tmp_.resize(most);
  model.on_block_use([this](size_t l, nn::BlockUse use) { on_use(l, use); });
  model.on_block_grads([this](size_t l) {
    peak_resident_ = std::max(peak_resident_, ps_.resident_bytes());
    reduce_scatter_into_shard(blocks_[l].first, blocks_[l].second);
    drop_params(blocks_[l].first, blocks_[l].second);
    resident_[l] = 0;
  });
}

void DataParallel::on_use(size_t l, nn::BlockUse use) {
  const long L = long(blocks_.size());
  auto bring = [&](size_t b) {
    if (resident_[b]) return;
    if (prefetched_ == long(b)) {
      comm_.finish_all();
      prefetched_ = -1;
    } else {
      gather(blocks_[b].first, blocks_[b].second, /*wait=*/true);
    }
    resident_[b] = 1;
  };
  auto prefetch = [&](long b) {
    if (b < 0 || b >= L || resident_[size_t(b)] || prefetched_ >= 0) return;
    gather(blocks_[size_t(b)].first, blocks_[size_t(b)].second, /*wait=*/false);
    prefetched_ = b;
  };
  switch (use) {
    case nn::BlockUse::kForward:
      bring(l);
      prefetch(long(l) + 1);
      break;
    case nn::BlockUse::kForwardDone:
      // The last block's backward comes next (in training): keep it.
      if (long(l) != L - 1) {
        drop_params(blocks_[l].first, blocks_[l].second);
        resident_[l] = 0;
      }
      break;
    case nn::BlockUse::kBackward:
      bring(l);
      ps_.commit_grads(blocks_[l].first, blocks_[l].second);  // the backward accumulates into them
      prefetch(long(l) - 1);
      break;
  }
}

void DataParallel::begin_micro_batch() {
  if (!stage3()) return;
  for (auto [lo, hi] : rest_) {
    gather(lo, hi, /*wait=*/true);
    ps_.commit_grads(lo, hi);  // the head's backward comes first, before any block hook
  }
}

void DataParallel::end_micro_batch(bool backward) {
  if (!stage3()) return;
  // Every prefetch is awaited by the next block's use: the forward prefetches block l + 1 only
  // before running it, the backward block l - 1 likewise.
  LMF_CHECK(prefetched_ < 0, "ZeRO 3: the gather of block {} is still under way", prefetched_);
  for (auto [lo, hi] : rest_) {
    if (backward) reduce_scatter_into_shard(lo, hi);
    drop_params(lo, hi);
  }
  for (size_t l = 0; l < blocks_.size(); ++l) {
    if (!resident_[l]) continue;
    drop_params(blocks_[l].first, blocks_[l].second);
    resident_[l] = 0;
  }
}

void DataParallel::release_unowned() {
  if (!stage3()) return;
  drop_params(0, ps_.flat_size());
  ps_.release_grads(0, ps_.flat_size());
  std::fill(resident_.begin(), resident_.end(), 0);
}

void DataParallel::gather_all() {
  if (!stage3()) return;
  ps_.commit_params(0, ps_.flat_size());
  buf_.all_gather(ps_.dev_params(), shards_.counts);  // a device's copy: download_params() next
}

DataParallel::FullState DataParallel::full_state() {
  FullState st{opt_->m(), opt_->v(), opt_->t(), {}, {}};
  if ((zero_ == 0 || comm_.world() == 1) && be_->on_host()) return st;
  st.m_buf.assign(ps_.flat_size(), 0.0f);
  st.v_buf.assign(ps_.flat_size(), 0.0f);
  opt_->download_moments(st.m_buf.data() + opt_->lo(), st.v_buf.data() + opt_->lo());
  st.m = st.m_buf.data();
  st.v = st.v_buf.data();
  if (zero_ == 0 || comm_.world() == 1) return st;
  comm_.all_gather(st.m_buf.data(), shards_.counts);
  comm_.all_gather(st.v_buf.data(), shards_.counts);
  return st;
}

void DataParallel::load_optimizer(const float* m, const float* v, long t) {
  opt_->upload_moments(m + opt_->lo(), v + opt_->lo());
  opt_->set_t(t);
}

}  // namespace lmf
