// Single-process pieces of data parallelism: how the flat buffer is cut into shards, the local
// communicator, and DataParallel on one rank (every ZeRO stage is plain AdamW there).
#include <gtest/gtest.h>

#include <numeric>

#include "core/rng.h"
#include "dist/communicator.h"
#include "optim/adamw.h"
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
  for (int zero : {0, 1, 2}) {
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

}  // namespace
}  // namespace lmf
