// The loader's state is a position in each epoch's window order shared by all ranks, so a run
// saved with one world size resumes on another and continues the same order of windows.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <set>

#include "data/loader.h"
#include "data/shard.h"

namespace lmf::data {
namespace {

namespace fs = std::filesystem;

struct Data {
  fs::path dir = fs::temp_directory_path() / ("lmf_reshard_" + std::to_string(::getpid()));
  static constexpr int T = 4;
  Data() {
    fs::create_directories(dir);
    // 4*101+1 tokens = 101 windows; token t at position p is p, so a window's first input
    // identifies it (window w starts at token w*T).
    std::vector<int32_t> t(T * 101 + 1);
    for (size_t i = 0; i < t.size(); ++i) t[i] = int32_t(i);
    write_shard(dir / "train_000000.bin", t, 1000);
  }
  ~Data() { fs::remove_all(dir); }
};

// Window ids of the next `n` batches of B rows.
std::vector<int32_t> take(DataLoader& dl, int n, int B) {
  std::vector<int32_t> x(B * Data::T), y(B * Data::T), ids;
  for (int i = 0; i < n; ++i) {
    dl.next(x.data(), y.data());
    for (int b = 0; b < B; ++b) ids.push_back(x[b * Data::T] / Data::T);
  }
  return ids;
}

// The order a single rank sees, from the start: the reference sequence of windows.
std::vector<int32_t> single_order(const Data& d, int n) {
  DataLoader one(d.dir, "train", 1, Data::T, 5, true);
  return take(one, n, 1);
}

TEST(LoaderReshard, TwoRanksResumeOnOneAndOnThree) {
  Data d;
  const int B = 3;
  auto ref = single_order(d, 400);  // spans several epochs of 101 windows
  // Two ranks, 7 batches each: positions 0..41 of epoch 0, interleaved.
  DataLoader r0(d.dir, "train", B, Data::T, 5, true, 0, 2), r1(d.dir, "train", B, Data::T, 5, true, 1, 2);
  auto a = take(r0, 7, B), b = take(r1, 7, B);
  for (int k = 0; k < 21; ++k) {
    EXPECT_EQ(a[k], ref[2 * k]);
    EXPECT_EQ(b[k], ref[2 * k + 1]);
  }
  ASSERT_EQ(r0.state().index, 42u);
  ASSERT_EQ(r0.state().index, r1.state().index);  // lockstep: one state for all ranks
  // Resume on one rank: it continues the same order at position 42.
  DataLoader one(d.dir, "train", B, Data::T, 5, true);
  one.restore(r0.state());
  auto c = take(one, 5, B);
  for (int k = 0; k < 15; ++k) EXPECT_EQ(c[k], ref[42 + k]) << k;
  // Resume on three ranks: together they cover positions 42.. without overlap or gap, until
  // the epoch's end (101 - 42 = 59 positions: 19 per rank, the remainder 2 dropped).
  std::vector<DataLoader> three;
  std::multiset<int32_t> got;
  for (int r = 0; r < 3; ++r) {
    three.emplace_back(d.dir, "train", 1, Data::T, 5, true, r, 3);
    three.back().restore(r0.state());
    for (int32_t w : take(three.back(), 19, 1)) got.insert(w);
  }
  std::multiset<int32_t> want(ref.begin() + 42, ref.begin() + 42 + 57);
  EXPECT_EQ(got, want);
  // Then all three roll into epoch 1 together, in its order.
  auto next0 = take(three[0], 1, 1);
  EXPECT_EQ(next0[0], ref[101]);
  EXPECT_EQ(three[0].state().epoch, 1u);
}

TEST(LoaderReshard, OneRankResumesOnTwo) {
  Data d;
  auto ref = single_order(d, 200);
  DataLoader one(d.dir, "train", 2, Data::T, 5, true);
  take(one, 5, 2);  // positions 0..9
  DataLoader r0(d.dir, "train", 2, Data::T, 5, true, 0, 2), r1(d.dir, "train", 2, Data::T, 5, true, 1, 2);
  r0.restore(one.state());
  r1.restore(one.state());
  auto a = take(r0, 3, 2), b = take(r1, 3, 2);
  for (int k = 0; k < 6; ++k) {
    EXPECT_EQ(a[k], ref[10 + 2 * k]);
    EXPECT_EQ(b[k], ref[11 + 2 * k]);
  }
}

}  // namespace
}  // namespace lmf::data
