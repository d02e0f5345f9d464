// Single-process pieces of data parallelism: how the flat buffer is cut into shards, the local
// communicator, DataParallel on one rank (every ZeRO stage is plain AdamW there), and ZeRO 3
// on two ranks as threads.
#include <gtest/gtest.h>

#include <numeric>

#include "core/rng.h"
#include "dist/communicator.h"
#include "optim/adamw.h"
#include "model/model.h"
#include "model_test_util.h"
#include "thread_comm.h"
#include "train/data_parallel.h"

namespace lmf {
namespace {

TEST(Sharding, CoversTheBufferInAlignedContiguousBlocks) {
  for (size_t n : {0ul, 1ul, 10ul, 16ul, 17ul, 1000ul, 123457ul})
    for (int w : {1, 2, 3, 4, 7}) {
      dist::Sharding s(n, w);
      size_t next = 0;
      for (int r = 0; r < w; ++r) {
        EXPECT_EQ(s.begin(r), next) << n << " " << w << " " << r;
        EXPECT_GE(s.counts[r], 0);
        if (r + 1 < w && s.end(r) < n) {
          EXPECT_EQ(s.counts[r] % 16, 0) << "only the last shard may be ragged";
        }
        next = s.end(r);
      }
      EXPECT_EQ(next, n) << n << " " << w;
    }
}

TEST(LocalCommunicator, CollectivesAreIdentitiesAndCountBytes) {
  dist::LocalCommunicator c;
  EXPECT_EQ(c.world(), 1);
  std::vector<float> a = {1, 2, 3};
  c.all_reduce_sum(a.data(), 3);
  EXPECT_EQ(a, (std::vector<float>{1, 2, 3}));
  std::vector<float> out(3);
  c.reduce_scatter_sum(a.data(), out.data(), {3});
  EXPECT_EQ(out, a);
  c.all_gather(a.data(), {3});
  EXPECT_EQ(c.stats().all_reduce, 12u);
  EXPECT_EQ(c.stats().reduce_scatter, 12u);
  EXPECT_EQ(c.stats().all_gather, 12u);
  EXPECT_EQ(c.stats().calls, 3u);
}

TEST(DataParallel, OneRankIsPlainAdamWForEveryStage) {
  ParamStore<float> ref;
  ref.add("w", {37, 5}, true);
  ref.add("b", {5}, false);
  ref.allocate();
  auto fill = [](ParamStore<float>& ps, uint64_t key) {
    for (size_t i = 0; i < ps.flat_size(); ++i) ps.params()[i] = float(philox_normal2(key, 0, i)[0]);
    for (size_t i = 0; i < ps.flat_size(); ++i) ps.grads()[i] = float(philox_normal2(key, 1, i)[0]);
  };
  OptimConfig oc;
  fill(ref, 3);
  AdamW plain(ref, oc);
  clip_grad_norm(ref, 0.5);
  plain.step(ref, 1e-2);
  for (int zero : {0, 1, 2, 3}) {
    ParamStore<float> ps;
    ps.add("w", {37, 5}, true);
    ps.add("b", {5}, false);
    ps.allocate();
    fill(ps, 3);
    dist::LocalCommunicator comm;
    DataParallel dp(comm, ps, oc, zero);
    dp.sync_and_clip(0.5);
    dp.update(1e-2);
    for (size_t i = 0; i < ps.flat_size(); ++i) ASSERT_EQ(ps.params()[i], ref.params()[i]) << zero << " " << i;
    auto st = dp.full_state();
    for (size_t i = 0; i < ps.flat_size(); ++i) ASSERT_EQ(st.m[i], plain.m()[i]);
  }
}

// ZeRO 3 on 2 ranks (threads of this process) trains a Llama to exactly the weights that
// ZeRO 0 gives, while each rank keeps resident only its shard of the parameters between uses
// and about two blocks' worth more at its fullest moment.
TEST(DataParallel, Zero3MatchesZero0BitForBitAndHoldsAShard) {
  ModelConfig cfg;
  cfg.arch = "llama";
  cfg.n_layer = 6;
  cfg.n_head = 4;
  cfg.n_kv_head = 2;
  cfg.n_embd = 64;
  cfg.vocab_size = 64;
  cfg.block_size = 16;
  const int B = 2, T = 16, ranks = 2;
  struct Result {
    std::vector<float> params;  // rank 0's, gathered, after 3 steps
    std::vector<double> losses;
    size_t between = 0, peak = 0;  // resident bytes between steps / at the fullest (rank 0)
  };
  auto train = [&](int zero) {
    Result res;
    test::ThreadGroup::run(ranks, [&](dist::Communicator& comm) {
      auto model = make_model(cfg);
      model->init(7);
      OptimConfig oc;
      oc.warmup_steps = 0;
      DataParallel dp(comm, model->params(), oc, zero);
      dp.attach(*model);
      dp.release_unowned();
      for (int step = 0; step < 3; ++step) {
        auto batch = test::random_batch(B, T, cfg.vocab_size, uint64_t(100 * step + comm.rank()));
        dp.zero_grad();
        dp.begin_micro_batch();
        double loss = model->forward(batch.x.data(), batch.y.data(), B, T, 1.0 / (ranks * (B * T - 1)));
        model->backward();
        dp.end_micro_batch(true);
        dp.sync_and_clip(1.0);
        dp.update(1e-2);
        if (comm.rank() == 0) res.losses.push_back(loss);
      }
      if (comm.rank() == 0) {
        res.between = model->params().resident_bytes();
        res.peak = dp.peak_resident_bytes();
      }
      dp.gather_all();
      if (comm.rank() == 0) res.params.assign(model->params().params(), model->params().params() + model->params().flat_size());
    });
    return res;
  };
  auto z0 = train(0), z3 = train(3);
  ASSERT_EQ(z3.losses, z0.losses);
  ASSERT_EQ(z3.params.size(), z0.params.size());
  for (size_t i = 0; i < z0.params.size(); ++i) ASSERT_EQ(z3.params[i], z0.params[i]) << i;

  // What a rank may hold: its shard of parameters and gradients between steps; at the fullest,
  // its shard, the parameters and gradients outside the blocks, two blocks' parameters (the one
  // running and the prefetched one) and one block's gradients; plus one partly used page at
  // each end of each range.
  auto model = make_model(cfg, false);
  const size_t flat = model->params().flat_size(), L = model->num_blocks();
  size_t blocks = 0, biggest = 0;
  for (size_t l = 0; l < L; ++l) {
    auto [lo, hi] = model->block_param_range(l);
    blocks += hi - lo;
    biggest = std::max(biggest, hi - lo);
  }
  const size_t shard = size_t(dist::Sharding(flat, ranks).counts[0]), rest = flat - blocks;
  const size_t page = PageBuffer<float>::page(), slack = 4 * (L + 4) * page;
  EXPECT_GE(z0.between, 2 * flat * 4);  // ZeRO 0 holds everything, twice
  EXPECT_LE(z3.between, 2 * shard * 4 + slack);
  EXPECT_GT(z3.peak, 0u);
  EXPECT_LE(z3.peak, (shard + 2 * rest + 3 * biggest) * 4 + slack);
  EXPECT_LT(z3.peak, flat * 4 * 13 / 10);  // against 2 x flat for ZeRO 0..2
}

}  // namespace
}  // namespace lmf
