// The tiled attention kernels (src/ops/cuda/attention_tiled_body.h) run on the CPU under an
// emulation of CUDA thread blocks, against the CPU op (the specification), on every machine. The
// kernels' own code runs: one std::thread per CUDA thread (256 per block), a block-wide barrier
// for __syncthreads, a barrier per warp for __syncwarp, and a per-warp exchange array for
// __shfl_xor_sync. Blocks run one after another. What this cannot see is what only a GPU does
// (memory ordering without the barriers, shared-memory limits, speed); tests/gpu/
// test_cuda_attention runs the same kernels on a device.
//
// Tolerances: those of the GPU test (op_tolerance.h's attention bound with the online softmax
// over chunks of 32 keys, times 2 for two results each within it of the exact value). Every
// output starts as NaN, so an element the kernels leave unwritten fails.
#include <gtest/gtest.h>
#include <math.h>

#include <barrier>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "op_tolerance.h"
#include "ops/ops.h"
#include "ops/reference.h"

namespace emu {

// One emulated thread block: its barriers and the warps' exchange slots.
struct Block {
  explicit Block(int threads) : all(threads) {
    for (int w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<std::barrier<>>(32));
    exchange.assign(size_t(threads), 0.0f);
  }
  std::barrier<> all;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<float> exchange;
};

thread_local int tid = 0, bid = 0;
thread_local Block* block = nullptr;

inline void sync_threads() { block->all.arrive_and_wait(); }
inline void sync_warp() { block->warps[size_t(tid / 32)]->arrive_and_wait(); }
// __shfl_xor_sync over the full warp: every lane posts its value, then reads its partner's.
inline float shfl_xor(float v, int mask) {
  const int lane = tid % 32, base = tid - lane;
  block->exchange[size_t(tid)] = v;
  sync_warp();
  const float r = block->exchange[size_t(base + (lane ^ mask))];
  sync_warp();
  return r;
}

// Runs body(shared memory) for blocks [0, grid) of `threads` threads each, one block at a time.
template <class Body>
void launch(int grid, int threads, size_t shared_floats, Body body) {
  for (int b = 0; b < grid; ++b) {
    Block blk(threads);
    std::vector<float> shared(shared_floats, std::numeric_limits<float>::quiet_NaN());
    std::vector<std::thread> ts;
    ts.reserve(size_t(threads));
    for (int t = 0; t < threads; ++t)
      ts.emplace_back([&, t] {
        tid = t;
        bid = b;
        block = &blk;
        body(shared.data());
      });
    for (auto& th : ts) th.join();
  }
}

}  // namespace emu

#define LMF_TILED_DEV inline
#define LMF_TILED_UNROLL
#define LMF_TILED_TID emu::tid
#define LMF_TILED_BID emu::bid
#define LMF_TILED_SYNC_THREADS() emu::sync_threads()
#define LMF_TILED_SYNC_WARP() emu::sync_warp()
#define LMF_TILED_SHFL_XOR(v, m) emu::shfl_xor(v, m)
#include "ops/cuda/attention_tiled_body.h"

namespace lmf {
namespace {

using cuda::detail::Heads;
using namespace cuda::detail::tiled;
using test::AttentionTolerance;
using test::rand_vec;
using test::Vec;
using FVec = std::vector<float>;

FVec to_f(const Vec& v) { return FVec(v.begin(), v.end()); }
FVec nans(size_t n) { return FVec(n, std::numeric_limits<float>::quiet_NaN()); }

void expect_close(const char* what, const FVec& got, const FVec& want, const Vec& tol) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::abs(double(got[i]) - double(want[i]));
    const double ratio = std::isnan(e) ? std::numeric_limits<double>::infinity() : e / tol[i];
    if (ratio > worst) worst = ratio, at = i;
  }
  EXPECT_LE(worst, 1.0) << what << " at " << at << ": got " << got[at] << ", CPU " << want[at]
                        << ", tol " << tol[at];
}

// The kernels' dispatch on hs (attention_tiled.cu): dimensions per thread.
template <class F>
void with_per_thread(int hs, F f) {
  if (hs <= 32) {
    f(std::integral_constant<int, 8>{});
  } else if (hs <= 64) {
    f(std::integral_constant<int, 16>{});
  } else {
    f(std::integral_constant<int, 32>{});
  }
}

struct Shape {
  int B, T, NH, KVH, hs;
};

void check(const Shape& s) {
  SCOPED_TRACE("B " + std::to_string(s.B) + " T " + std::to_string(s.T) + " NH " +
               std::to_string(s.NH) + " KVH " + std::to_string(s.KVH) + " hs " +
               std::to_string(s.hs));
  const int B = s.B, T = s.T, NH = s.NH, KVH = s.KVH, hs = s.hs;
  const size_t BT = size_t(B) * T, C = size_t(NH) * hs, KC = size_t(KVH) * hs;
  const Vec q = rand_vec(BT * C, 70), k = rand_vec(BT * KC, 71), v = rand_vec(BT * KC, 72),
            dout = rand_vec(BT * C, 73);
  Vec out_r(q.size()), lse_r(size_t(B) * NH * T);
  ops::ref::attention_gqa_forward(out_r.data(), lse_r.data(), q.data(), k.data(), v.data(), B, T,
                                  NH, KVH, hs);
  AttentionTolerance tol =
      test::attention_tolerance(q, k, v, dout, out_r, lse_r, B, T, NH, KVH, hs,
                                test::Tol{std::numeric_limits<float>::epsilon()}, 32);
  for (Vec* x : {&tol.out, &tol.lse, &tol.dq, &tol.dk, &tol.dv})
    for (double& e : *x) e *= 2;

  const FVec qf = to_f(q), kf = to_f(k), vf = to_f(v), df = to_f(dout);
  FVec out_c(q.size()), lse_c(lse_r.size()), dq_c(q.size()), dk_c(k.size()), dv_c(v.size());
  ops::attention_gqa_forward<float>(out_c.data(), lse_c.data(), qf.data(), kf.data(), vf.data(), B,
                                    T, NH, KVH, hs);
  ops::attention_gqa_backward<float>(dq_c.data(), dk_c.data(), dv_c.data(), df.data(), qf.data(),
                                     kf.data(), vf.data(), out_c.data(), lse_c.data(), B, T, NH,
                                     KVH, hs);

  const Heads g{B, T, NH, KVH, hs, int(C), int(KC), int(C), 1.0f / std::sqrt(float(hs))};
  const int tiles = (T + kRows - 1) / kRows;
  FVec out = nans(q.size()), lse = nans(lse_c.size()), dq = nans(q.size()), dk = nans(k.size()),
       dv = nans(v.size());
  with_per_thread(hs, [&](auto per) {
    constexpr int kPer = decltype(per)::value;
    emu::launch(B * NH * tiles, kThreadsT, fwd_floats(hs), [&](float* sm) {
      fwd_tiled_body<kPer>(sm, out.data(), lse.data(), qf.data(), kf.data(), vf.data(), g);
    });
    emu::launch(B * NH * tiles, kThreadsT, dq_floats(hs), [&](float* sm) {
      dq_tiled_body<kPer>(sm, dq.data(), df.data(), qf.data(), kf.data(), vf.data(), out.data(),
                          lse.data(), g);
    });
    emu::launch(B * KVH * tiles, kThreadsT, dkv_floats(hs), [&](float* sm) {
      dkv_tiled_body<kPer>(sm, dk.data(), dv.data(), df.data(), qf.data(), kf.data(), vf.data(),
                           out.data(), lse.data(), g);
    });
  });
  expect_close("out", out, out_c, tol.out);
  expect_close("lse", lse, lse_c, tol.lse);
  expect_close("dq", dq, dq_c, tol.dq);
  expect_close("dk", dk, dk_c, tol.dk);
  expect_close("dv", dv, dv_c, tol.dv);
}

// T past one and two 64-row tiles and not a multiple of the 32-row steps; grouped, multi-query
// and plain multi-head; head sizes in each of the three dispatch classes, one not a multiple of 4.
TEST(TiledAttentionEmulated, MatchesTheCpuOp) {
  check({1, 1, 2, 2, 8});     // one key
  check({2, 37, 4, 2, 16});   // one query tile, two key steps
  check({1, 130, 2, 1, 33});  // three query tiles, multi-query, hs not a multiple of 4
  check({1, 70, 3, 3, 64});   // plain multi-head
  check({1, 65, 2, 1, 128});  // the largest tiled head
}

}  // namespace
}  // namespace lmf
