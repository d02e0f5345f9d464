// The test helper ThreadGroup (tests/thread_comm.h): n ranks as n threads. Its collectives must
// be exact, count bytes as LocalCommunicator does, give every rank the same bits, and never
// leave a rank waiting when a peer fails.
#include <gtest/gtest.h>

#include <cstring>
#include <stdexcept>
#include <vector>

#include "core/rng.h"
#include "thread_comm.h"

namespace lmf::test {
namespace {

// Rank r's input value i: normal values, one rank's 1e4 times larger at each i, so that the
// summation order shows in the last bits.
float input(int r, size_t i) {
  return float(philox_normal2(7, uint64_t(r), i)[0] * ((i + size_t(r)) % 3 == 0 ? 1e4 : 1.0));
}

TEST(ThreadComm, AllReduceSumIsTheRankOrderSumWithTheSameBitsOnEveryRank) {
  constexpr size_t kN = 1001;
  for (int n : {1, 2, 3}) {
    SCOPED_TRACE(n);
    // The spec: ((x0 + x1) + x2) in float; in double, exact for these small integers.
    std::vector<float> want(kN);
    size_t order_shows = 0;  // values where x0 + (x1 + x2) differs: the test can see the order
    for (size_t i = 0; i < kN; ++i) {
      want[i] = input(0, i);
      for (int r = 1; r < n; ++r) want[i] += input(r, i);
      if (n == 3) order_shows += want[i] != input(0, i) + (input(1, i) + input(2, i));
    }
    if (n == 3) {
      EXPECT_GT(order_shows, 10u);
    }
    std::vector<std::vector<float>> got(static_cast<size_t>(n));
    ThreadGroup::run(n, [&](dist::Communicator& c) {
      const int r = c.rank();
      EXPECT_EQ(c.world(), n);
      EXPECT_EQ(c.kind(), "thread");
      std::vector<float> a(kN);
      for (size_t i = 0; i < kN; ++i) a[i] = input(r, i);
      c.all_reduce_sum(a.data(), a.size());
      got[size_t(r)] = a;
      double d[2] = {r + 0.5, -1.0 * r};
      c.all_reduce_sum(d, 2);
      EXPECT_EQ(d[0], n * n / 2.0);
      EXPECT_EQ(d[1], -n * (n - 1) / 2.0);
      int m[2] = {r == n - 1 ? 7 : r, -r};
      c.all_reduce_max(m, 2);
      EXPECT_EQ(m[0], 7);
      EXPECT_EQ(m[1], 0);
      // The non-blocking form gives the same result.
      std::vector<float> b(kN);
      for (size_t i = 0; i < kN; ++i) b[i] = input(r, i);
      c.start_all_reduce_sum(b.data(), b.size());
      c.finish_all();
      EXPECT_EQ(std::memcmp(b.data(), a.data(), sizeof(float) * kN), 0);
      EXPECT_EQ(c.stats().all_reduce, kN * 4 + 16 + 8 + kN * 4);
      EXPECT_EQ(c.stats().calls, 4u);
    });
    for (int r = 0; r < n; ++r)
      EXPECT_EQ(std::memcmp(got[size_t(r)].data(), want.data(), sizeof(float) * kN), 0)
          << "rank " << r;
  }
}

TEST(ThreadComm, ReduceScatterAndAllGatherOverUnevenShards) {
  // 1000 over 3: 336, 336, 328; 20 over 3: 16, 4, 0 (an empty shard).
  for (size_t len : {1000ul, 20ul})
    for (int n : {1, 2, 3}) {
      SCOPED_TRACE(std::to_string(len) + " values, " + std::to_string(n) + " ranks");
      dist::Sharding sh(len, n);
      ThreadGroup::run(n, [&](dist::Communicator& c) {
        const int r = c.rank();
        std::vector<float> in(len), out(size_t(sh.counts[size_t(r)]));
        for (size_t i = 0; i < len; ++i) in[i] = input(r, i);
        c.reduce_scatter_sum(in.data(), out.data(), sh.counts);
        for (size_t i = 0; i < out.size(); ++i) {
          float want = input(0, sh.begin(r) + i);
          for (int q = 1; q < n; ++q) want += input(q, sh.begin(r) + i);
          ASSERT_EQ(out[i], want) << i;
        }
        std::vector<float> g(len, -1.0f);
        for (size_t i = sh.begin(r); i < sh.end(r); ++i) g[i] = float(10 * r + 1);
        c.all_gather(g.data(), sh.counts);
        for (int q = 0; q < n; ++q)
          for (size_t i = sh.begin(q); i < sh.end(q); ++i)
            ASSERT_EQ(g[i], float(10 * q + 1)) << q << " " << i;
        EXPECT_EQ(c.stats().reduce_scatter, len * 4);
        EXPECT_EQ(c.stats().all_gather, uint64_t(sh.counts[size_t(r)]) * 4);
        EXPECT_EQ(c.stats().calls, 2u);
      });
    }
}

TEST(ThreadComm, BroadcastAndBarrier) {
  ThreadGroup::run(3, [](dist::Communicator& c) {
    char msg[6] = "xxxxx";
    if (c.rank() == 2) std::memcpy(msg, "hello", 6);
    c.broadcast(msg, 6, 2);
    EXPECT_STREQ(msg, "hello");
    c.barrier();
    EXPECT_EQ(c.stats().broadcast, 6u);
    EXPECT_EQ(c.stats().calls, 1u);  // a barrier moves nothing, as in LocalCommunicator
  });
}

TEST(ThreadComm, SplitOrdersByKeyThenRank) {
  ThreadGroup::run(4, [](dist::Communicator& c) {
    const int r = c.rank();
    // Parity groups {0, 2} and {1, 3}, each reversed by its key.
    auto half = c.split(r % 2, -r);
    EXPECT_EQ(half->world(), 2);
    EXPECT_EQ(half->rank(), r < 2 ? 1 : 0);
    float v = float(r);
    half->all_reduce_sum(&v, 1);
    EXPECT_EQ(v, r % 2 == 0 ? 2.0f : 4.0f);
    // Equal keys: ordered by rank.
    auto all = c.split(0, 5);
    EXPECT_EQ(all->world(), 4);
    EXPECT_EQ(all->rank(), r);
    // A split of a split.
    auto solo = half->split(half->rank(), 0);
    EXPECT_EQ(solo->world(), 1);
    solo->all_reduce_sum(&v, 1);
    EXPECT_EQ(v, r % 2 == 0 ? 2.0f : 4.0f);
    // Fresh stats per communicator.
    EXPECT_EQ(half->stats().calls, 1u);
    EXPECT_EQ(solo->stats().calls, 1u);
    EXPECT_EQ(c.stats().calls, 0u);
  });
}

TEST(ThreadComm, AFailingRankStopsItsPeersAndItsErrorIsRethrown) {
  EXPECT_THROW(ThreadGroup::run(3,
                                [](dist::Communicator& c) {
                                  if (c.rank() == 1) throw std::invalid_argument("rank 1 fails");
                                  float v = 1;
                                  c.all_reduce_sum(&v, 1);
                                }),
               std::invalid_argument);
  // Mismatched sizes throw on every rank, as does abort.
  EXPECT_THROW(ThreadGroup::run(2,
                                [](dist::Communicator& c) {
                                  float v[2] = {1, 2};
                                  c.all_reduce_sum(v, size_t(1 + c.rank()));
                                }),
               Error);
  EXPECT_THROW(ThreadGroup::run(2, [](dist::Communicator& c) { c.abort(3); }), Error);
  // A rank that returns early: its peer's collective fails instead of waiting for the timeout.
  EXPECT_THROW(ThreadGroup::run(2,
                                [](dist::Communicator& c) {
                                  if (c.rank() == 0) return;
                                  c.barrier();
                                }),
               Error);
}

}  // namespace
}  // namespace lmf::test
