// The NCCL communicator (dist/nccl_communicator.h) on one rank: a LocalCommunicator as host, every
// collective on device buffers. With one rank each collective is an identity (or a copy), so
// values must come back bit-exact, and the payload counted must equal what LocalCommunicator
// counts for the same calls on host buffers. Multi-rank behaviour needs several GPUs (NCCL
// refuses two ranks on one) and is not tested here.
//
// Without a device, or in a build without NCCL, the device tests skip; the first test runs
// everywhere and checks the no-NCCL build's error.
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "dist/communicator.h"
#include "dist/nccl_communicator.h"
#include "ops/cuda_backend.h"

namespace lmf {
namespace {

constexpr double kTimeoutS = 120;

TEST(NcclBuild, WithoutNcclMakeThrowsOneLineUserError) {
  if (dist::nccl_built()) GTEST_SKIP() << "this build has NCCL (the device tests cover it)";
  dist::LocalCommunicator host;
  try {
    (void)dist::make_nccl_communicator(host, kTimeoutS);
    FAIL() << "make_nccl_communicator did not throw";
  } catch (const UserError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("NCCL"), std::string::npos) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << "one line: " << what;
  }
}

}  // namespace
}  // namespace lmf

#ifndef LMF_HAVE_CUDA

TEST(NcclCommunicator, Skipped) { GTEST_SKIP() << "built without CUDA"; }

#else

#include "gpu/cuda_test_util.h"

namespace lmf {
namespace {

using cuda::DeviceBuffer;

#define SKIP_WITHOUT_NCCL_DEVICE() \
  SKIP_WITHOUT_DEVICE();           \
  if (!::lmf::dist::nccl_built()) GTEST_SKIP() << "built without NCCL"

void expect_same_stats(const dist::CommStats& got, const dist::CommStats& want) {
  EXPECT_EQ(got.all_reduce, want.all_reduce);
  EXPECT_EQ(got.reduce_scatter, want.reduce_scatter);
  EXPECT_EQ(got.all_gather, want.all_gather);
  EXPECT_EQ(got.broadcast, want.broadcast);
  EXPECT_EQ(got.calls, want.calls);
}

// Distinct, exactly representable values (so "unchanged" is a bit-exact check).
template <class T>
std::vector<T> ramp(size_t n, T scale) {
  std::vector<T> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = T(int64_t(i % 4099) - 2049) * scale;
  return v;
}

// Sizes: one value, below and above a warp, and more than NCCL's smallest chunks.
const size_t kSizes[] = {1, 31, 33, 1000003};

TEST(NcclCommunicator, OneRankIdentityAndTheIdGoesThroughTheHost) {
  SKIP_WITHOUT_NCCL_DEVICE();
  dist::LocalCommunicator host;
  auto c = dist::make_nccl_communicator(host, kTimeoutS);
  EXPECT_EQ(c->rank(), 0);
  EXPECT_EQ(c->world(), 1);
  EXPECT_EQ(c->kind(), "nccl");
  // Rank 0's unique id went through host.broadcast: one call, counted on the host, not on c.
  EXPECT_EQ(host.stats().calls, 1u);
  EXPECT_GT(host.stats().broadcast, 0u);
  expect_same_stats(c->stats(), dist::CommStats{});
}

TEST(NcclCommunicator, AllReduceKeepsValuesAndCountsAsLocal) {
  SKIP_WITHOUT_NCCL_DEVICE();
  dist::LocalCommunicator host, local;
  auto c = dist::make_nccl_communicator(host, kTimeoutS);
  for (size_t n : kSizes) {
    const auto f = ramp<float>(n, 0.25f);
    const auto d = ramp<double>(n, 1.0 / 3);
    const auto i = ramp<int>(n, 7);
    DeviceBuffer<float> df(f);
    DeviceBuffer<double> dd(d);
    DeviceBuffer<int> di(i);
    c->all_reduce_sum(df.data(), n);
    c->all_reduce_sum(dd.data(), n);
    c->all_reduce_max(di.data(), n);
    EXPECT_EQ(df.to_host(), f) << n;
    EXPECT_EQ(dd.to_host(), d) << n;
    EXPECT_EQ(di.to_host(), i) << n;
    auto hf = f;
    auto hd = d;
    auto hi = i;
    local.all_reduce_sum(hf.data(), n);
    local.all_reduce_sum(hd.data(), n);
    local.all_reduce_max(hi.data(), n);
  }
  // Zero values: no NCCL call, still counted as a call.
  c->all_reduce_sum(static_cast<float*>(nullptr), 0);
  local.all_reduce_sum(static_cast<float*>(nullptr), 0);
  expect_same_stats(c->stats(), local.stats());
}

TEST(NcclCommunicator, ReduceScatterCopiesInToOutAndAllGatherKeepsData) {
  SKIP_WITHOUT_NCCL_DEVICE();
  dist::LocalCommunicator host, local;
  auto c = dist::make_nccl_communicator(host, kTimeoutS);
  for (size_t n : kSizes) {
    const auto v = ramp<float>(n, 0.5f);
    const std::vector<int> counts = {int(n)};
    DeviceBuffer<float> in(v), out(n);
    c->reduce_scatter_sum(in.data(), out.data(), counts);
    EXPECT_EQ(out.to_host(), v) << n;
    EXPECT_EQ(in.to_host(), v) << n;                      // the input is not written
    c->reduce_scatter_sum(in.data(), in.data(), counts);  // in place
    EXPECT_EQ(in.to_host(), v) << n;
    c->all_gather(in.data(), counts);
    EXPECT_EQ(in.to_host(), v) << n;
    std::vector<float> hin = v, hout(n);
    local.reduce_scatter_sum(hin.data(), hout.data(), counts);
    local.reduce_scatter_sum(hin.data(), hin.data(), counts);
    local.all_gather(hin.data(), counts);
  }
  // An empty shard (dist::Sharding's last may be): nothing moves, counted as a call.
  DeviceBuffer<float> one(std::vector<float>{3.5f});
  c->reduce_scatter_sum(one.data(), one.data(), {0});
  c->all_gather(one.data(), {0});
  EXPECT_EQ(one.to_host(), std::vector<float>{3.5f});
  float h = 3.5f;
  local.reduce_scatter_sum(&h, &h, {0});
  local.all_gather(&h, {0});
  expect_same_stats(c->stats(), local.stats());
}

TEST(NcclCommunicator, BroadcastKeepsBytesAndCountsThem) {
  SKIP_WITHOUT_NCCL_DEVICE();
  dist::LocalCommunicator host, local;
  auto c = dist::make_nccl_communicator(host, kTimeoutS);
  std::vector<uint8_t> bytes(13);  // an odd size: ncclInt8, no rounding to words
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = uint8_t(17 * i + 3);
  DeviceBuffer<uint8_t> d(bytes);
  c->broadcast(d.data(), bytes.size(), 0);
  EXPECT_EQ(d.to_host(), bytes);
  local.broadcast(bytes.data(), bytes.size(), 0);
  expect_same_stats(c->stats(), local.stats());
}

TEST(NcclCommunicator, StartedCollectivesCompleteInFinishAll) {
  SKIP_WITHOUT_NCCL_DEVICE();
  dist::LocalCommunicator host, local;
  auto c = dist::make_nccl_communicator(host, kTimeoutS);
  const size_t n = 1000003;
  const auto a = ramp<float>(n, 0.125f), b = ramp<float>(n, -2.0f);
  DeviceBuffer<float> da(a), db(b);
  c->start_all_reduce_sum(da.data(), n);
  c->start_all_gather(db.data(), {int(n)});
  c->start_all_reduce_sum(db.data(), 31);
  c->finish_all();
  c->finish_all();  // nothing pending: returns at once
  EXPECT_EQ(da.to_host(), a);
  EXPECT_EQ(db.to_host(), b);
  std::vector<float> ha = a, hb = b;
  local.start_all_reduce_sum(ha.data(), n);
  local.start_all_gather(hb.data(), {int(n)});
  local.start_all_reduce_sum(hb.data(), 31);
  local.finish_all();
  expect_same_stats(c->stats(), local.stats());
}

TEST(NcclCommunicator, BarrierReturnsAndCountsACallWithoutPayload) {
  SKIP_WITHOUT_NCCL_DEVICE();
  dist::LocalCommunicator host;
  auto c = dist::make_nccl_communicator(host, kTimeoutS);
  c->barrier();
  c->barrier();
  dist::CommStats want;
  want.calls = 2;
  expect_same_stats(c->stats(), want);
}

TEST(NcclCommunicator, SplitGivesAWorkingOneRankCommunicatorWithItsOwnStats) {
  SKIP_WITHOUT_NCCL_DEVICE();
  dist::LocalCommunicator host;
  auto c = dist::make_nccl_communicator(host, kTimeoutS);
  const std::vector<float> v = {1.5f, -2.0f, 3.25f};
  DeviceBuffer<float> d(v);
  c->all_reduce_sum(d.data(), v.size());
  {
    auto sub = c->split(0, 0);  // destroyed before its parent
    EXPECT_EQ(sub->rank(), 0);
    EXPECT_EQ(sub->world(), 1);
    EXPECT_EQ(sub->kind(), "nccl");
    expect_same_stats(sub->stats(), dist::CommStats{});  // from zero; the split is not counted
    sub->all_reduce_sum(d.data(), v.size());
    sub->all_gather(d.data(), {int(v.size())});
    sub->barrier();
    EXPECT_EQ(d.to_host(), v);
    EXPECT_EQ(sub->stats().all_reduce, v.size() * 4);
    EXPECT_EQ(sub->stats().all_gather, v.size() * 4);
    EXPECT_EQ(sub->stats().calls, 3u);
  }
  EXPECT_EQ(c->stats().all_reduce, v.size() * 4);  // the split's traffic is not the parent's
  EXPECT_EQ(c->stats().calls, 1u);
  c->all_reduce_sum(d.data(), v.size());  // the parent still works after the split is gone
  EXPECT_EQ(d.to_host(), v);
}

TEST(NcclCommunicator, CollectivesAreOrderedWithWorkOnTheDefaultStream) {
  SKIP_WITHOUT_NCCL_DEVICE();
  dist::LocalCommunicator host;
  auto c = dist::make_nccl_communicator(host, kTimeoutS);
  // An asynchronous memset of `in` on stream 0, then an out-of-place reduce-scatter (on one rank,
  // NCCL's copy of in to out): the copy must see the memset's zeros, and the host the copy.
  const size_t n = 1000003;
  DeviceBuffer<float> in(ramp<float>(n, 1.0f)), out(ramp<float>(n, 2.0f));
  LMF_CUDA_CHECK(cudaMemsetAsync(in.data(), 0, n * sizeof(float), nullptr));
  c->reduce_scatter_sum(in.data(), out.data(), {int(n)});
  std::vector<float> h(n, -1.0f);  // cudaMemcpyAsync does not wait by itself for a pageable copy
  LMF_CUDA_CHECK(
      cudaMemcpyAsync(h.data(), out.data(), n * sizeof(float), cudaMemcpyDeviceToHost, nullptr));
  LMF_CUDA_CHECK(cudaStreamSynchronize(nullptr));
  EXPECT_EQ(h, std::vector<float>(n, 0.0f));
}

}  // namespace
}  // namespace lmf

#endif  // LMF_HAVE_CUDA
