// The emulation's own checks (README.md): the schedules that expose races in either direction,
// and the launch limits of an sm_90 GPU. Each kernel here is deliberately small; the racy ones
// are the bugs the schedules exist to catch.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "emu.h"
#include "ops/cuda/launch.cuh"

namespace {

constexpr int kN = 64;  // threads per block

// out[t] = in[clamp(t + shift)] of the block's row, through shared memory. Without the barrier,
// a thread reads a neighbour's slot that the neighbour may not have written yet.
template <bool Barrier>
__global__ void neighbour_kernel(float* out, const float* in, int shift) {
  __shared__ float tile[kN];
  const int t = int(threadIdx.x), row = int(blockIdx.x) * kN;
  tile[t] = in[row + t];
  if (Barrier) __syncthreads();
  out[row + t] = tile[std::clamp(t + shift, 0, kN - 1)];
}

// out[b] = b + 1 as a chain through the previous block's output: a dependence between blocks of
// one launch, which CUDA does not order.
__global__ void chain_kernel(float* out) {
  const int b = int(blockIdx.x);
  out[b] = b == 0 ? 1.0f : out[b - 1] + 1.0f;
}

// Two warps exchange values through a shared tile, one step after another: each thread stores
// its step's value, then (after a barrier) reads the other warp's slot. Without the barrier at
// the top of the loop, a warp that runs ahead overwrites the tile while the other warp has yet to
// read it. The __syncwarp after the read is what keeps warps in step in the other orders, as an
// mma or a shuffle does in the tensor-core kernels.
template <bool Barrier>
__global__ void warp_steps_kernel(float* out, const float* in, int steps) {
  __shared__ float tile[2 * 32];
  const int t = int(threadIdx.x);
  float acc = 0.0f;
  for (int s = 0; s < steps; ++s) {
    if (Barrier) __syncthreads();  // every read of the last step is done
    tile[t] = in[s * 64 + t];
    __syncthreads();
    acc += tile[(t + 32) % 64];
    __syncwarp();
  }
  out[t] = acc;
}

bool warp_steps_are_right(bool barrier, int steps) {
  std::vector<float> in(size_t(steps) * 64), out(64, 0.0f);
  for (size_t i = 0; i < in.size(); ++i) in[i] = float(i % 97) + 0.5f;
  if (barrier)
    LMF_LAUNCH(warp_steps_kernel<true>, 1, 64, 0, nullptr)(out.data(), in.data(), steps);
  else
    LMF_LAUNCH(warp_steps_kernel<false>, 1, 64, 0, nullptr)(out.data(), in.data(), steps);
  for (int t = 0; t < 64; ++t) {
    float want = 0.0f;
    for (int s = 0; s < steps; ++s) want += in[size_t(s) * 64 + (t + 32) % 64];
    if (out[size_t(t)] != want) return false;
  }
  return true;
}

__global__ void dynamic_kernel(float* out) {
  LMF_DYNAMIC_SHARED(float, sm);
  sm[threadIdx.x] = float(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = sm[(threadIdx.x + 1) % blockDim.x];
}

__global__ void noop_kernel() {}

struct Buffers {
  std::vector<float> in, out, want;
};

// Runs neighbour_kernel over `blocks` rows of fresh random values; true if every output is right.
template <bool Barrier>
bool neighbour_is_right(int shift, int blocks, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1, 1);
  Buffers b;
  b.in.resize(size_t(blocks) * kN);
  for (float& v : b.in) v = u(rng);
  b.out.assign(b.in.size(), 0.0f);
  LMF_LAUNCH(neighbour_kernel<Barrier>, blocks, kN, 0, nullptr)(b.out.data(), b.in.data(), shift);
  for (int r = 0; r < blocks; ++r)
    for (int t = 0; t < kN; ++t)
      if (b.out[size_t(r * kN + t)] != b.in[size_t(r * kN + std::clamp(t + shift, 0, kN - 1))]) return false;
  return true;
}

bool chain_is_right(int blocks) {
  std::vector<float> out(size_t(blocks), -1.0f);
  LMF_LAUNCH(chain_kernel, blocks, 1, 0, nullptr)(out.data());
  for (int b = 0; b < blocks; ++b)
    if (out[size_t(b)] != float(b + 1)) return false;
  return true;
}

class EmuSchedule : public ::testing::Test {
 protected:
  void TearDown() override { lmf::emu::set_schedule("forward"); }
};

// Index order runs a thread before the higher ones, so reading a higher thread's slot without a
// barrier reads the old contents: the race shows. Reverse order hides it; shuffles show it.
TEST_F(EmuSchedule, ReadingAHigherThreadWithoutBarrierFailsInIndexOrder) {
  lmf::emu::set_schedule("forward");
  EXPECT_FALSE(neighbour_is_right<false>(+1, 4, 1));
  lmf::emu::set_schedule("reverse");
  EXPECT_TRUE(neighbour_is_right<false>(+1, 4, 2));
  lmf::emu::set_schedule("shuffle:3");
  EXPECT_FALSE(neighbour_is_right<false>(+1, 4, 3));
}

// The other direction: index order hides it (the lower thread has written), reverse order and
// shuffles show it.
TEST_F(EmuSchedule, ReadingALowerThreadWithoutBarrierFailsInReverseAndShuffled) {
  lmf::emu::set_schedule("forward");
  EXPECT_TRUE(neighbour_is_right<false>(-1, 4, 4));
  lmf::emu::set_schedule("reverse");
  EXPECT_FALSE(neighbour_is_right<false>(-1, 4, 5));
  lmf::emu::set_schedule("shuffle:6");
  EXPECT_FALSE(neighbour_is_right<false>(-1, 4, 6));
}

TEST_F(EmuSchedule, WithTheBarrierEveryOrderIsRight) {
  for (const char* s : {"forward", "reverse", "shuffle", "shuffle:12345", "warps"}) {
    lmf::emu::set_schedule(s);
    EXPECT_TRUE(neighbour_is_right<true>(+1, 5, 7)) << s;
    EXPECT_TRUE(neighbour_is_right<true>(-1, 5, 8)) << s;
  }
}

// Blocks too: a launch whose blocks read each other's output is right only in index order.
TEST_F(EmuSchedule, BlocksThatDependOnEachOtherFailOutOfIndexOrder) {
  lmf::emu::set_schedule("forward");
  EXPECT_TRUE(chain_is_right(50));
  lmf::emu::set_schedule("reverse");
  EXPECT_FALSE(chain_is_right(50));
  lmf::emu::set_schedule("shuffle:9");
  EXPECT_FALSE(chain_is_right(50));
}

// Warps move in step through their warp barriers in the other orders, which hides a missing
// __syncthreads between one step's reads and the next step's writes; `warps` lets each run ahead.
TEST_F(EmuSchedule, AWarpRunningAheadOverwritesWhatAnotherHasYetToRead) {
  for (const char* s : {"forward", "reverse", "shuffle:5"}) {
    lmf::emu::set_schedule(s);
    EXPECT_TRUE(warp_steps_are_right(false, 4)) << s << " hides it";
  }
  lmf::emu::set_schedule("warps");
  EXPECT_FALSE(warp_steps_are_right(false, 4));
  for (const char* s : {"forward", "reverse", "shuffle:5", "warps"}) {
    lmf::emu::set_schedule(s);
    EXPECT_TRUE(warp_steps_are_right(true, 4)) << s;
  }
}

// A seed gives the same orders each time it is set; another seed gives others.
TEST_F(EmuSchedule, ShufflesRepeatForASeed) {
  const auto orders = [](const char* spec) {
    lmf::emu::set_schedule(spec);
    std::vector<float> out(200, -1.0f);
    LMF_LAUNCH(chain_kernel, 200, 1, 0, nullptr)(out.data());
    return out;  // how far each block's chain got: a trace of the block order
  };
  EXPECT_EQ(orders("shuffle:21"), orders("shuffle:21"));
  EXPECT_NE(orders("shuffle:21"), orders("shuffle:22"));
}

TEST(EmuScheduleDeathTest, RejectsAnUnknownSchedule) {
  EXPECT_DEATH(lmf::emu::set_schedule("backwards"), "LMF_EMU_SCHEDULE: expected forward, reverse, shuffle");
  EXPECT_DEATH(lmf::emu::set_schedule("shuffle:x1"), "got 'shuffle:x1'");
}

TEST(EmuLaunchDeathTest, RejectsBlocksAndGridsOutsideTheLimits) {
  EXPECT_DEATH(LMF_LAUNCH(noop_kernel, 1, 1025, 0, nullptr)(), "at most 1024 threads");
  EXPECT_DEATH(LMF_LAUNCH(noop_kernel, 1, dim3(1, 1, 65), 0, nullptr)(), "z at most 64");
  EXPECT_DEATH(LMF_LAUNCH(noop_kernel, dim3(1, 65536), 32, 0, nullptr)(), "y and z in 1..65535");
  EXPECT_DEATH(LMF_LAUNCH(noop_kernel, 0, 32, 0, nullptr)(), "launch of a grid");
}

// Above 48 KiB a kernel must be granted its dynamic shared memory first, and 227 KiB is the most.
TEST(EmuLaunchDeathTest, DynamicSharedMemoryAbove48KiBNeedsTheKernelsOptIn) {
  std::vector<float> out(256);
  constexpr size_t kBytes = 64 << 10;
  LMF_LAUNCH(dynamic_kernel, 1, 256, 48 << 10, nullptr)(out.data());  // the default limit: fine
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_DEATH(LMF_LAUNCH(dynamic_kernel, 1, 256, kBytes, nullptr)(out.data()),
               "above the 49152 the kernel may use: raise it with cudaFuncSetAttribute");
  ASSERT_EQ(cudaFuncSetAttribute(dynamic_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kBytes)),
            cudaSuccess);
  LMF_LAUNCH(dynamic_kernel, 1, 256, kBytes, nullptr)(out.data());
  EXPECT_EQ(out[255], 0.0f);
  EXPECT_DEATH(LMF_LAUNCH(dynamic_kernel, 1, 256, kBytes + 4, nullptr)(out.data()), "above the 65536");
  EXPECT_EQ(cudaFuncSetAttribute(dynamic_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 << 10),
            cudaErrorInvalidValue);
  EXPECT_DEATH(LMF_LAUNCH(dynamic_kernel, 1, 256, 228 << 10, nullptr)(out.data()), "sm_90 allows 232448");
}

// ---- stream capture and graphs ------------------------------------------------------------------

// x[i] = x[i] * a + b[i], one thread per element.
__global__ void axpy_kernel(float* x, const float* b, float a, int n) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) x[i] = x[i] * a + b[i];
}

class EmuGraph : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess); }
  void TearDown() override { cudaStreamDestroy(s); }
  cudaStream_t s = nullptr;
};

// A capturing stream records: nothing runs until the graph launches, each launch runs the kernels
// again with the arguments of their capture, over the memory as it is at the launch, in order.
TEST_F(EmuGraph, CaptureRecordsAndEachLaunchRunsOnTheMemoryOfThatMoment) {
  std::vector<float> x{1, 2, 3, 4, 5}, b{10, 20, 30, 40, 50};
  float a = 2.0f;
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  ASSERT_EQ(cudaStreamIsCapturing(s, &st), cudaSuccess);
  EXPECT_EQ(st, cudaStreamCaptureStatusActive);
  LMF_LAUNCH(axpy_kernel, 1, 32, 0, s)(x.data(), b.data(), a, 5);
  EXPECT_EQ(cudaMemsetAsync(b.data(), 0, sizeof(float), s), cudaSuccess);  // b[0] = 0, after the axpy
  a = 3.0f;  // a launch keeps the value it was captured with
  LMF_LAUNCH(axpy_kernel, 1, 32, 0, s)(x.data(), b.data(), 1.0f, 5);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  ASSERT_EQ(cudaStreamIsCapturing(s, &st), cudaSuccess);
  EXPECT_EQ(st, cudaStreamCaptureStatusNone);
  EXPECT_EQ(x, (std::vector<float>{1, 2, 3, 4, 5}));  // recorded, not run
  EXPECT_EQ(b[0], 10.0f);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphDestroy(graph), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  // x * 2 + b (b[0] = 10), then b[0] = 0, then x + b.
  EXPECT_EQ(x, (std::vector<float>{12, 44, 66, 88, 110}));
  b[1] = 1.0f;  // the next launch reads b as it is then
  ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  EXPECT_EQ(x, (std::vector<float>{24, 90, 192, 256, 320}));
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
}

// What a capture cannot take fails it, as the runtime does: the call returns its error, and the
// capture's end then reports it invalidated. Outside a capture the same calls work.
TEST_F(EmuGraph, HostWorkInACaptureInvalidatesIt) {
  std::vector<float> x(4, 1.0f), b(4, 1.0f);
  void* p = nullptr;
  double host = 0;
  const std::vector<std::pair<const char*, std::function<cudaError_t()>>> refused = {
      {"cudaMalloc", [&] { return cudaMalloc(&p, 64); }},
      {"cudaMemcpy", [&] { return cudaMemcpy(&host, x.data(), sizeof(float), cudaMemcpyDeviceToHost); }},
      {"cudaMemset", [&] { return cudaMemset(x.data(), 0, 4); }},
      {"cudaStreamSynchronize", [&] { return cudaStreamSynchronize(s); }},
      {"cudaDeviceSynchronize", [&] { return cudaDeviceSynchronize(); }},
      {"async copy to the host",
       [&] { return cudaMemcpyAsync(&host, x.data(), sizeof(float), cudaMemcpyDeviceToHost, s); }},
      {"launch on the legacy stream", [&] {
         LMF_LAUNCH(axpy_kernel, 1, 32, 0, nullptr)(x.data(), b.data(), 2.0f, 4);
         return cudaGetLastError();
       }},
  };
  for (const auto& [what, call] : refused) {
    SCOPED_TRACE(what);
    ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
    LMF_LAUNCH(axpy_kernel, 1, 32, 0, s)(x.data(), b.data(), 2.0f, 4);
    const cudaError_t e = call();
    EXPECT_TRUE(e == cudaErrorStreamCaptureUnsupported || e == cudaErrorStreamCaptureImplicit) << cudaGetErrorName(e);
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    ASSERT_EQ(cudaStreamIsCapturing(s, &st), cudaSuccess);
    EXPECT_EQ(st, cudaStreamCaptureStatusInvalidated);
    cudaGraph_t graph = nullptr;
    EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaErrorStreamCaptureInvalidated);
    EXPECT_EQ(graph, nullptr);
    (void)cudaGetLastError();
    EXPECT_EQ(x, std::vector<float>(4, 1.0f)) << "nothing ran";
  }
  ASSERT_EQ(cudaMalloc(&p, 64), cudaSuccess);  // no capture: fine again
  EXPECT_EQ(cudaFree(p), cudaSuccess);
  LMF_LAUNCH(axpy_kernel, 1, 32, 0, nullptr)(x.data(), b.data(), 2.0f, 4);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(x, std::vector<float>(4, 3.0f));
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaStreamBeginCapture(nullptr, cudaStreamCaptureModeGlobal), cudaErrorStreamCaptureUnsupported)
      << "the legacy stream cannot capture";
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaErrorIllegalState) << "no capture under way";
  (void)cudaGetLastError();
}

}  // namespace
