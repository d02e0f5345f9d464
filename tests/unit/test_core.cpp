#include <gtest/gtest.h>

#include <cstring>
#include <set>

#include "core/memory.h"
#include "core/param_store.h"
#include "core/rng.h"
#include "test_util.h"

namespace lmf {

using test::resident_bytes;

// A large host buffer is zero and takes memory only where it is written (a KV cache sized for the
// whole context holds what is used), and gives it back when freed; a small one is zero too.
TEST(HostMemory, LargeBuffersTakeMemoryOnlyWhereWritten) {
  const long slack = 8L << 20;  // other allocations of the test process meanwhile
  const size_t n = size_t(64) << 20;
  const long before = resident_bytes();
  ASSERT_GT(before, 0);
  Array<unsigned char> a;
  a.resize(n);
  EXPECT_LT(resident_bytes() - before, slack) << "allocating 64 MiB made it resident";
  EXPECT_EQ(a.data()[0] + a.data()[n / 2] + a.data()[n - 1], 0);
  std::memset(a.data(), 1, n / 2);
  EXPECT_GT(resident_bytes() - before, long(n / 2) - slack);
  EXPECT_EQ(a.data()[n / 2 - 1], 1);
  a.resize(0);
  EXPECT_LT(resident_bytes() - before, slack) << "freeing did not give the pages back";
  Array<float> small;
  small.resize(1000);
  for (size_t i = 0; i < small.size(); ++i) ASSERT_EQ(small.data()[i], 0.0f) << i;
}

TEST(ParamStore, OffsetsAreAlignedAndDisjoint) {
  ParamStore<float> ps;
  ps.add("a", {3, 5}, true);
  ps.add("b", {7}, false);
  ps.add("c", {2, 2, 2}, true);
  ps.allocate();
  size_t end = 0;
  for (const auto& e : ps.entries()) {
    EXPECT_EQ(e.offset % ParamStore<float>::kAlignElems, 0u) << e.name;
    EXPECT_GE(e.offset, end) << e.name;
    end = e.offset + e.size;
  }
  EXPECT_LE(end, ps.flat_size());
  EXPECT_EQ(ps.num_params(), 15u + 7u + 8u);
  EXPECT_EQ(ps.find("b"), 1);
  EXPECT_EQ(ps.find("zzz"), -1);
  EXPECT_THROW(ps.add("d", {1}, true), Error);
}

TEST(ParamStore, DuplicateNameIsAnError) {
  ParamStore<double> ps;
  ps.add("a", {1}, true);
  EXPECT_THROW(ps.add("a", {2}, true), Error);
}

// Known-answer test from the Random123 distribution (kat_vectors, philox4x32_10):
// counter = {0,0,0,0}, key = {0,0} -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8.
TEST(Rng, PhiloxKnownAnswer) {
  auto r = philox4x32(0, 0, 0);
  EXPECT_EQ(r[0], 0x6627e8d5u);
  EXPECT_EQ(r[1], 0xe169c58du);
  EXPECT_EQ(r[2], 0xbc57ac4cu);
  EXPECT_EQ(r[3], 0x9b00dbd8u);
}

TEST(Rng, SequentialMatchesCounterAndResumes) {
  Rng a(42, 7);
  std::vector<uint32_t> first;
  for (int i = 0; i < 10; ++i) first.push_back(a.next_u32());
  Rng b(42, 7, 4);  // resume after 4 draws
  for (int i = 4; i < 10; ++i) EXPECT_EQ(b.next_u32(), first[i]);
  std::set<uint32_t> uniq(first.begin(), first.end());
  EXPECT_EQ(uniq.size(), first.size());
}

TEST(Rng, NormalHasUnitMoments) {
  double s = 0, s2 = 0;
  const int n = 200000;
  for (int i = 0; i < n / 2; ++i) {
    auto z = philox_normal2(1, 3, i);
    s += z[0] + z[1];
    s2 += z[0] * z[0] + z[1] * z[1];
  }
  double mean = s / n, var = s2 / n - mean * mean;
  // Standard errors: mean 1/sqrt(n) ~ 0.0022, variance sqrt(2/n) ~ 0.0032; allow 5 sigma.
  EXPECT_NEAR(mean, 0.0, 5 * 0.0023);
  EXPECT_NEAR(var, 1.0, 5 * 0.0032);
}

TEST(Rng, BelowIsInRange) {
  Rng r(5, 1);
  for (int i = 0; i < 1000; ++i) EXPECT_LT(r.below(17), 17u);
}

}  // namespace lmf
