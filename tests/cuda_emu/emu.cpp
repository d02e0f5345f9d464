// The CPU emulation of CUDA (tests/cuda_emu/README.md): the fiber scheduler behind emu.h's
// launches, the runtime API of include/cuda_runtime_api.h and cuBLAS's GEMM.
#include "emu.h"

#include <cblas.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define LMF_EMU_ASAN 1
#endif

#include "core/half.h"
#include "include/cublasLt.h"
#include "include/cublas_v2.h"
#include "include/cuda.h"
#include "ops/backend.h"
#include "ops/cuda/gelu.cuh"

// Switching between fibers. glibc's swapcontext saves and restores the signal mask with a system
// call each time, which made a launch of a million threads take seconds; on x86-64 the switch is
// instead these few instructions (the System V callee-saved registers, the SSE and x87 control
// words, and the stack pointer). Elsewhere, ucontext.
#if defined(__x86_64__)
extern "C" void lmf_emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl lmf_emu_switch
  .type lmf_emu_switch, @function
lmf_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size lmf_emu_switch, .-lmf_emu_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");
#define LMF_EMU_ASM_SWITCH 1
#endif

namespace lmf::emu {

thread_local Index t_thread, t_block;
thread_local dim3 t_block_dim, t_grid_dim;

namespace {

constexpr size_t kStackBytes = 256 * 1024;  // per fiber; kernels' frames are small

enum class State { runnable, at_block_barrier, at_warp_barrier, done };

// A saved execution context: a stack pointer (the asm switch) or a ucontext. Under
// AddressSanitizer also the bounds of the context's stack, which ASan must be told of at every
// switch (a fiber's are its allocation; the scheduler's, the thread's own stack, ASan reports to
// the first fiber that starts).
struct Context {
#ifdef LMF_EMU_ASM_SWITCH
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
#ifdef LMF_EMU_ASAN
  const void* stack_bottom = nullptr;
  size_t stack_size = 0;
#endif
};

// Switches from `save` (the running context) to `load`; returns when something switches back.
// finishing: the running context never resumes (a fiber at its end).
void switch_to(Context& save, Context& load, bool finishing = false) {
#ifdef LMF_EMU_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(finishing ? nullptr : &fake_stack, load.stack_bottom, load.stack_size);
#else
  (void)finishing;
#endif
#ifdef LMF_EMU_ASM_SWITCH
  lmf_emu_switch(&save.sp, load.sp);
#else
  swapcontext(&save.uc, &load.uc);
#endif
#ifdef LMF_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
}

struct Fiber {
  Context ctx;
  State state = State::runnable;
};

struct Block {
  unsigned threads = 0;
  std::vector<Fiber> fibers;
  Context scheduler;
  int current = -1;
  const std::function<void()>* body = nullptr;
  std::vector<uint64_t> posted;  // per thread: the value of its current exchange
  std::vector<char> dynamic_shared;
};

thread_local Block* t_run = nullptr;
thread_local std::vector<std::unique_ptr<char[]>> t_stacks;  // kept between launches

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "cuda emulation: %s\n", msg.c_str());
  std::abort();
}

extern "C" void lmf_emu_fiber_main() {
  Block& b = *t_run;
#ifdef LMF_EMU_ASAN
  // The first switch onto this stack: ASan says where the scheduler's stack is.
  __sanitizer_finish_switch_fiber(nullptr, &b.scheduler.stack_bottom, &b.scheduler.stack_size);
#endif
  (*b.body)();
  b.fibers[size_t(b.current)].state = State::done;
  switch_to(b.fibers[size_t(b.current)].ctx, b.scheduler, /*finishing=*/true);
  die("a finished fiber was resumed");
}

// A fresh fiber on `stack` that starts in lmf_emu_fiber_main.
void start_fiber(Fiber& f, char* stack) {
#ifdef LMF_EMU_ASAN
  // A stack's last fiber ended without returning from its frames, whose redzones are still marked.
  __asan_unpoison_memory_region(stack, kStackBytes);
  f.ctx.stack_bottom = stack;
  f.ctx.stack_size = kStackBytes;
#endif
#ifdef LMF_EMU_ASM_SWITCH
  // The frame lmf_emu_switch pops, from the top: a dummy return address (so that the entry sees
  // the stack aligned as after a call), the entry as the return address, six registers, and the
  // control words (MXCSR 0x1f80, x87 0x037f: the defaults).
  auto top = reinterpret_cast<uintptr_t>(stack + kStackBytes) & ~uintptr_t(15);
  auto* w = reinterpret_cast<uint64_t*>(top);
  w[-1] = 0;
  w[-2] = reinterpret_cast<uint64_t>(&lmf_emu_fiber_main);
  for (int i = 3; i <= 8; ++i) w[-i] = 0;
  w[-9] = 0x1f80ull | (0x037full << 32);
  f.ctx.sp = &w[-9];
#else
  if (getcontext(&f.ctx.uc) != 0) die("getcontext failed");
  f.ctx.uc.uc_stack.ss_sp = stack;
  f.ctx.uc.uc_stack.ss_size = kStackBytes;
  f.ctx.uc.uc_link = nullptr;
  makecontext(&f.ctx.uc, lmf_emu_fiber_main, 0);
#endif
}

void wait(State s) {
  Block& b = *t_run;
  if (b.current < 0) die("a synchronisation outside a kernel");
  Fiber& f = b.fibers[size_t(b.current)];
  f.state = s;
  switch_to(f.ctx, b.scheduler);
}

void set_thread_index(unsigned linear) {
  t_thread.x = linear % t_block_dim.x;
  t_thread.y = linear / t_block_dim.x % t_block_dim.y;
  t_thread.z = linear / (t_block_dim.x * t_block_dim.y);
}

// Opens the barriers every live thread of their scope has reached; false if none could open.
// Opens warp w's barrier if every live thread of it has reached it.
bool release_warp(Block& b, unsigned w) {
  unsigned live = 0, waiting = 0;
  for (unsigned t = w * 32; t < std::min(b.threads, (w + 1) * 32); ++t) {
    if (b.fibers[t].state == State::done) continue;
    ++live;
    waiting += b.fibers[t].state == State::at_warp_barrier;
  }
  if (live == 0 || waiting != live) return false;
  for (unsigned t = w * 32; t < std::min(b.threads, (w + 1) * 32); ++t)
    if (b.fibers[t].state == State::at_warp_barrier) b.fibers[t].state = State::runnable;
  return true;
}

// Opens the block barrier if every live thread has reached it.
bool release_block(Block& b) {
  unsigned live = 0, waiting = 0;
  for (const Fiber& f : b.fibers) {
    if (f.state == State::done) continue;
    ++live;
    waiting += f.state == State::at_block_barrier;
  }
  if (live == 0 || waiting != live) return false;
  for (Fiber& f : b.fibers) f.state = State::runnable;
  return true;
}

unsigned warps_of(const Block& b) { return (b.threads + 31) / 32; }

// Opens the barriers every live thread of their scope has reached; false if none could open.
bool release(Block& b) {
  bool any = false;
  for (unsigned w = 0; w < warps_of(b); ++w) any = release_warp(b, w) || any;
  return release_block(b) || any;
}

// The order in which a launch runs its blocks, and each round of a block its runnable threads:
// LMF_EMU_SCHEDULE = forward (the default: index order), reverse, or shuffle[:SEED] (a fresh
// permutation each time, from a generator seeded once per host thread). A GPU promises no
// order, so a kernel must give the same result under all three. Index order alone hides one
// direction of each race: a thread that reads, without a barrier, what a lower-indexed thread
// (or block) writes sees the new value, since that thread ran first. Reverse order hides the
// other direction, and shuffles mix them (README.md, "What it checks"). In all three the warps of
// a block move in step: a warp barrier (each shuffle and mma too) opens only when a round ends.
// `warps` breaks that step: each warp in turn runs on alone, through its warp barriers, until it
// waits at a block barrier or returns, so a warp that overwrites shared memory another warp has
// yet to read, with no __syncthreads between, is seen.
enum class Order { forward, reverse, shuffle, warps };

struct Schedule {
  Order order = Order::forward;
  uint64_t seed = 0x9e3779b97f4a7c15ull;
};

Schedule parse_schedule(const std::string& v) {
  Schedule s;
  if (v.empty() || v == "forward") return s;
  if (v == "reverse") {
    s.order = Order::reverse;
    return s;
  }
  if (v == "warps") {
    s.order = Order::warps;
    return s;
  }
  if (v.rfind("shuffle", 0) == 0) {
    s.order = Order::shuffle;
    if (v.size() == 7) return s;
    char* end = nullptr;
    if (v[7] == ':' && v.size() > 8 && v[8] >= '0' && v[8] <= '9') {
      s.seed = std::strtoull(v.c_str() + 8, &end, 10);
      if (end != nullptr && *end == '\0') return s;
    }
  }
  die(fmt::format("LMF_EMU_SCHEDULE: expected forward, reverse, shuffle, shuffle:SEED (a decimal seed) or "
                  "warps, got '{}'", v));
}

Schedule& schedule() {
  static Schedule s = [] {
    const char* env = std::getenv("LMF_EMU_SCHEDULE");
    return parse_schedule(env == nullptr ? "" : env);
  }();
  return s;
}

// splitmix64 for the shuffles: one stream per host thread, from the schedule's seed.
thread_local uint64_t t_random = schedule().seed;

uint64_t next_random() {
  uint64_t z = (t_random += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// order = 0, 1, ..., n - 1 arranged as the schedule says.
void arrange(std::vector<unsigned>& order, unsigned n) {
  order.resize(n);
  for (unsigned i = 0; i < n; ++i) order[i] = i;
  switch (schedule().order) {
    case Order::forward:
    case Order::warps: break;
    case Order::reverse: std::reverse(order.begin(), order.end()); break;
    case Order::shuffle:
      for (unsigned i = n; i > 1; --i) std::swap(order[i - 1], order[next_random() % i]);
      break;
  }
}

void run_block(Block& b) {
  for (unsigned t = 0; t < b.threads; ++t) {
    b.fibers[t].state = State::runnable;
    start_fiber(b.fibers[t], t_stacks[t].get());
  }
  const auto run_fiber = [&b](unsigned t) {
    b.current = int(t);
    set_thread_index(t);
    switch_to(b.scheduler, b.fibers[t].ctx);
    b.current = -1;
  };
  const bool warps_ahead = schedule().order == Order::warps;
  std::vector<unsigned> order;
  for (;;) {
    bool ran = false, all_done = true;
    if (warps_ahead) {
      // Each warp alone, round after round, until none of its threads can run.
      for (unsigned w = 0; w < warps_of(b); ++w)
        for (bool more = true; more;) {
          bool ran_w = false;
          for (unsigned t = w * 32; t < std::min(b.threads, (w + 1) * 32); ++t) {
            if (b.fibers[t].state != State::runnable) continue;
            ran_w = true;
            run_fiber(t);
          }
          ran = ran || ran_w;
          more = release_warp(b, w) || ran_w;
        }
    } else {
      arrange(order, b.threads);
      for (const unsigned t : order) {
        if (b.fibers[t].state != State::runnable) continue;
        ran = true;
        run_fiber(t);
      }
    }
    for (const Fiber& f : b.fibers) all_done = all_done && f.state == State::done;
    if (all_done) return;
    if (!release(b) && !ran) {
      std::string states;
      for (unsigned t = 0; t < b.threads; ++t)
        if (b.fibers[t].state != State::done)
          states += fmt::format(" {}:{}", t, b.fibers[t].state == State::at_block_barrier ? "block" : "warp");
      die(fmt::format("deadlock in block ({}, {}): threads waiting at barriers that cannot open:{}", t_block.x,
                      t_block.y, states));
    }
  }
}

}  // namespace

namespace {

// The dynamic shared memory each kernel may ask for, as cudaFuncSetAttribute raised it.
std::mutex g_shared_mu;
std::map<const void*, size_t>& shared_limits() {
  static auto* m = new std::map<const void*, size_t>();
  return *m;
}

// What a launch on an H100 or H200 (sm_90) refuses with an error: a block of more than 1024
// threads or outside its per-dimension limits, a grid outside its limits, and dynamic shared
// memory above 48 KiB that the kernel was not granted with cudaFuncSetAttribute, or above the
// 227 KiB opt-in maximum.
void check_launch(const void* kernel, dim3 grid, dim3 block, size_t shared_bytes) {
  const size_t threads = size_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64)
    die(fmt::format("launch of a block ({}, {}, {}): at most 1024 threads, and z at most 64", block.x,
                    block.y, block.z));
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    die(fmt::format("launch of a grid ({}, {}, {}): x in 1..2^31-1, y and z in 1..65535", grid.x, grid.y,
                    grid.z));
  constexpr size_t kDefault = 48 << 10, kOptInMax = 227 << 10;
  if (shared_bytes > kOptInMax)
    die(fmt::format("launch with {} bytes of dynamic shared memory: sm_90 allows {}", shared_bytes, kOptInMax));
  if (shared_bytes > kDefault) {
    std::lock_guard lk(g_shared_mu);
    const auto it = shared_limits().find(kernel);
    const size_t granted = it == shared_limits().end() ? kDefault : it->second;
    if (shared_bytes > granted)
      die(fmt::format("launch with {} bytes of dynamic shared memory, above the {} the kernel may use: raise "
                      "it with cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize) first",
                      shared_bytes, granted));
  }
}

}  // namespace

void set_schedule(const std::string& spec) {
  schedule() = parse_schedule(spec);
  t_random = schedule().seed;
}

void check_aligned(const void* p, size_t bytes) {
  if (reinterpret_cast<uintptr_t>(p) % bytes != 0)
    die(fmt::format("misaligned address: a {}-byte access at {}", bytes, p));
}

void set_max_dynamic_shared(const void* kernel, int bytes) {
  std::lock_guard lk(g_shared_mu);
  shared_limits()[kernel] = size_t(bytes);
}

void run_grid(const void* kernel, dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body) {
  if (t_run != nullptr) die("a kernel launched from a kernel");
  check_launch(kernel, grid, block, shared_bytes);
  const unsigned threads = block.x * block.y * block.z;
  while (t_stacks.size() < threads) t_stacks.push_back(std::make_unique<char[]>(kStackBytes));
  Block b;
  b.threads = threads;
  b.fibers.resize(threads);
  b.body = &body;
  b.posted.assign(threads, 0);
  t_block_dim = block;
  t_grid_dim = grid;
  t_run = &b;
  const size_t blocks = size_t(grid.x) * grid.y * grid.z;
  std::vector<unsigned> order;
  arrange(order, unsigned(blocks));
  for (const unsigned i : order) {
    t_block.x = i % grid.x;
    t_block.y = i / grid.x % grid.y;
    t_block.z = i / (grid.x * grid.y);
    b.dynamic_shared.assign(shared_bytes, char(0xff));  // NaN-filled, as uninitialised memory might be
    run_block(b);
  }
  t_run = nullptr;
}

void sync_threads() { wait(State::at_block_barrier); }
void sync_warp() { wait(State::at_warp_barrier); }

int lane() { return int((t_thread.z * t_block_dim.y + t_thread.y) * t_block_dim.x + t_thread.x) % 32; }

uint64_t exchange(uint64_t v, int src) {
  Block& b = *t_run;
  const unsigned me = unsigned(b.current), base = me - me % 32;
  b.posted[me] = v;
  sync_warp();  // every live lane has posted
  const unsigned from = base + unsigned(src);
  const uint64_t r = from < b.threads ? b.posted[from] : v;
  sync_warp();  // every lane has read before any posts again
  return r;
}

uint32_t bf16_bits(float x) {
  if (std::isnan(x)) return 0x7fc0u;
  const float r = ::lmf::ops::round_operand(x, ::lmf::ops::MatmulPrecision::bf16);
  uint32_t u;
  std::memcpy(&u, &r, sizeof u);
  return u >> 16;  // round_operand leaves the low 16 bits zero
}

namespace {

struct MmaFragments {
  const uint32_t* a;  // 4 registers
  const uint32_t* b;  // 2 registers
};

float bf16_value(uint32_t reg, int half) {
  const uint32_t u = (half ? reg >> 16 : reg & 0xffffu) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Element (row, k) of A and (k, n) of B from the warp's posted fragments (PTX's layouts, mma.cuh).
float a_elem(const MmaFragments* f, int row, int k) {
  const int g = row % 8, c = (k % 8) / 2, reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
  return bf16_value(f[g * 4 + c].a[reg], k % 2);
}
float b_elem(const MmaFragments* f, int k, int n) {
  const int c = (k % 8) / 2, reg = k >= 8 ? 1 : 0;
  return bf16_value(f[n * 4 + c].b[reg], k % 2);
}

}  // namespace

void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  Block& blk = *t_run;
  const unsigned me = unsigned(blk.current), base = me - me % 32;
  if (base + 32 > blk.threads) die("mma.sync in a partial warp");
  MmaFragments mine{a, b};
  blk.posted[me] = reinterpret_cast<uint64_t>(&mine);
  sync_warp();  // every lane has posted
  MmaFragments all[32];
  for (int l = 0; l < 32; ++l) {
    const uint64_t p = blk.posted[base + unsigned(l)];
    all[l] = *reinterpret_cast<const MmaFragments*>(p);
  }
  // This lane's rows g, g + 8 of A and columns 2c, 2c + 1 of B, then its four outputs.
  const int ln = int(me % 32), g = ln / 4, c = ln % 4;
  float ar[2][16], bc[2][16];
  for (int k = 0; k < 16; ++k) {
    for (int x = 0; x < 2; ++x) {
      ar[x][k] = a_elem(all, g + 8 * x, k);
      bc[x][k] = b_elem(all, k, 2 * c + x);
    }
  }
  for (int i = 0; i < 4; ++i) {
    float acc = d[i];
    for (int k = 0; k < 16; ++k) acc += ar[i / 2][k] * bc[i % 2][k];
    d[i] = acc;
  }
  sync_warp();  // every lane has read the others' fragments before any changes its own
}

void* dynamic_shared_ptr() {
  if (t_run == nullptr) die("dynamic shared memory outside a kernel");
  return t_run->dynamic_shared.data();
}

}  // namespace lmf::emu

// ---- the runtime API -------------------------------------------------------------------------

namespace {

thread_local cudaError_t t_last_error = cudaSuccess;
std::mutex g_mu;
std::unordered_map<void*, size_t>& allocations() {
  static auto* m = new std::unordered_map<void*, size_t>();
  return *m;
}

cudaError_t fail(cudaError_t e) {
  t_last_error = e;
  return e;
}

}  // namespace

// ---- streams and their capture -----------------------------------------------------------------
// Work runs when it is enqueued (every call completes before it returns), except on a capturing
// stream, which records it. The captures under way are global (cudaStreamCaptureModeGlobal): while
// there is one, a call from any thread that would synchronise or allocate invalidates them all.

struct CUstream_st {
  bool capturing = false;
  bool invalidated = false;
  std::vector<std::function<void()>> recorded;
};
struct CUgraph_st {
  std::vector<std::function<void()>> work;
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> work;
};

namespace {

std::mutex g_capture_mu;
std::vector<cudaStream_t>& capturing_streams() {
  static auto* v = new std::vector<cudaStream_t>();
  return *v;
}

// A call that a capture forbids: invalidates every capture under way and returns `e`, or returns
// cudaSuccess when there is none.
cudaError_t forbidden_in_capture(cudaError_t e) {
  std::lock_guard lk(g_capture_mu);
  if (capturing_streams().empty()) return cudaSuccess;
  for (cudaStream_t s : capturing_streams()) s->invalidated = true;
  return fail(e);
}

}  // namespace

namespace lmf::emu {

cudaError_t enqueue(cudaStream_t s, std::function<void()> work) {
  if (s == nullptr) {
    if (const cudaError_t e = forbidden_in_capture(cudaErrorStreamCaptureImplicit)) return e;
  } else if (s->capturing) {
    s->recorded.push_back(std::move(work));
    return cudaSuccess;
  }
  work();
  return cudaSuccess;
}

}  // namespace lmf::emu

cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : fail(cudaErrorInvalidValue); }
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) {
  *v = 1 << 20;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() { return forbidden_in_capture(cudaErrorStreamCaptureUnsupported); }
cudaError_t cudaGetLastError() {
  const cudaError_t e = t_last_error;
  t_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return t_last_error; }
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureImplicit: return "cudaErrorStreamCaptureImplicit";
  }
  return "cudaErrorUnknown";
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalState: return "the resource is not in a valid state for this operation";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureImplicit:
      return "operation would make the legacy stream depend on a capturing blocking stream";
  }
  return "unknown error";
}

// 64 GiB of "device" memory; new allocations are filled with NaN bytes, so a kernel that reads
// memory nothing wrote sees NaN rather than the zeros a fresh host page would give.
constexpr size_t kDeviceBytes = size_t(64) << 30;

cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = nullptr;
  if (const cudaError_t e = forbidden_in_capture(cudaErrorStreamCaptureUnsupported)) return e;
  if (bytes > kDeviceBytes) return fail(cudaErrorMemoryAllocation);
  // 256-byte aligned, as the runtime's. Exactly `bytes` long: under AddressSanitizer a kernel's
  // access one element past the end of a buffer is reported (the runtime's rounding would hide
  // it on a GPU, where it reads or writes a neighbour's memory).
  void* q = nullptr;
  if (posix_memalign(&q, 256, bytes == 0 ? 1 : bytes) != 0) return fail(cudaErrorMemoryAllocation);
  std::memset(q, 0xff, bytes);
  std::lock_guard lk(g_mu);
  allocations()[q] = bytes;
  *p = q;
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (p == nullptr) return cudaSuccess;
  if (const cudaError_t e = forbidden_in_capture(cudaErrorStreamCaptureUnsupported)) return e;
  std::lock_guard lk(g_mu);
  if (allocations().erase(p) == 0) return fail(cudaErrorInvalidValue);
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  *free_bytes = *total_bytes = kDeviceBytes;
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (const cudaError_t e = forbidden_in_capture(cudaErrorStreamCaptureUnsupported)) return e;
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s) {
  // Host memory is pageable here: a capture cannot take the copy.
  if (s != nullptr && s->capturing && kind != cudaMemcpyDeviceToDevice) {
    s->invalidated = true;
    return fail(cudaErrorStreamCaptureUnsupported);
  }
  return lmf::emu::enqueue(s, [=] {
    if (bytes) std::memmove(dst, src, bytes);
  });
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  if (const cudaError_t e = forbidden_in_capture(cudaErrorStreamCaptureUnsupported)) return e;
  if (bytes) std::memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s) {
  return lmf::emu::enqueue(s, [=] {
    if (bytes) std::memset(p, value, bytes);
  });
}

// ---- the driver's virtual memory (include/cuda.h) ----------------------------------------------
// Reserved addresses have no access until a granule of host memory is mapped there; unmapping
// takes the access and the contents away again. A mapping must be unmapped whole, and a
// reservation freed only with nothing mapped in it, as the driver requires.
namespace {

constexpr size_t kGranule = size_t(64) << 10;  // small, so that tiny test models span several

struct VirtualState {
  std::unordered_map<CUmemGenericAllocationHandle, size_t> handles;  // created, not yet released
  std::map<uintptr_t, size_t> mappings;                              // address -> bytes
  std::map<uintptr_t, size_t> reservations;
  CUmemGenericAllocationHandle next = 1;
};
VirtualState& vstate() {
  static auto* v = new VirtualState();
  return *v;
}
// True when [a, a + n) lies inside one reservation and holds no mapping (or only mappings, when
// mapped is true: then every byte of it is covered by them).
bool in_reservation(uintptr_t a, size_t n) {
  auto& r = vstate().reservations;
  auto it = r.upper_bound(a);
  if (it == r.begin()) return false;
  --it;
  return a >= it->first && a + n <= it->first + it->second;
}
bool covered_by_mappings(uintptr_t a, size_t n, bool mapped) {
  auto& m = vstate().mappings;
  if (!mapped) {
    auto it = m.lower_bound(a);
    if (it != m.end() && it->first < a + n) return false;
    if (it != m.begin() && std::prev(it)->first + std::prev(it)->second > a) return false;
    return true;
  }
  for (uintptr_t at = a; at < a + n;) {
    auto it = m.find(at);
    if (it == m.end()) return false;
    at += it->second;
  }
  return true;
}

CUresult emu_address_reserve(CUdeviceptr* p, size_t bytes, size_t align, CUdeviceptr, unsigned long long) {
  if (bytes == 0 || bytes % kGranule != 0) return CUDA_ERROR_INVALID_VALUE;
  align = std::max(align, kGranule);
  void* q = mmap(nullptr, bytes + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (q == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  const uintptr_t raw = reinterpret_cast<uintptr_t>(q), a = (raw + align - 1) / align * align;
  if (a > raw) munmap(q, a - raw);
  if (raw + align > a) munmap(reinterpret_cast<void*>(a + bytes), raw + align - a);
  std::lock_guard lk(g_mu);
  vstate().reservations[a] = bytes;
  *p = a;
  return CUDA_SUCCESS;
}
CUresult emu_address_free(CUdeviceptr p, size_t bytes) {
  std::lock_guard lk(g_mu);
  auto it = vstate().reservations.find(uintptr_t(p));
  if (it == vstate().reservations.end() || it->second != bytes || !covered_by_mappings(p, bytes, false))
    return CUDA_ERROR_INVALID_VALUE;
  vstate().reservations.erase(it);
  munmap(reinterpret_cast<void*>(p), bytes);
  return CUDA_SUCCESS;
}
CUresult emu_create(CUmemGenericAllocationHandle* h, size_t bytes, const CUmemAllocationProp* prop,
                    unsigned long long) {
  if (bytes == 0 || bytes % kGranule != 0 || prop->type != CU_MEM_ALLOCATION_TYPE_PINNED ||
      prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE || prop->location.id != 0)
    return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(g_mu);
  *h = vstate().next++;
  vstate().handles[*h] = bytes;
  return CUDA_SUCCESS;
}
CUresult emu_release(CUmemGenericAllocationHandle h) {
  std::lock_guard lk(g_mu);
  return vstate().handles.erase(h) == 1 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
CUresult emu_map(CUdeviceptr p, size_t bytes, size_t offset, CUmemGenericAllocationHandle h, unsigned long long) {
  std::lock_guard lk(g_mu);
  auto it = vstate().handles.find(h);
  if (it == vstate().handles.end() || it->second != bytes || offset != 0 || p % kGranule != 0 ||
      !in_reservation(p, bytes) || !covered_by_mappings(p, bytes, false))
    return CUDA_ERROR_INVALID_VALUE;
  // Readable at once here (the real driver wants cuMemSetAccess first); contents undefined: NaNs.
  void* q = mmap(reinterpret_cast<void*>(p), bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                 -1, 0);
  if (q == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  std::memset(q, 0xff, bytes);
  vstate().mappings[uintptr_t(p)] = bytes;
  return CUDA_SUCCESS;
}
CUresult emu_unmap(CUdeviceptr p, size_t bytes) {
  std::lock_guard lk(g_mu);
  auto it = vstate().mappings.find(uintptr_t(p));
  if (it == vstate().mappings.end() || it->second != bytes) return CUDA_ERROR_INVALID_VALUE;
  vstate().mappings.erase(it);
  mmap(reinterpret_cast<void*>(p), bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
  return CUDA_SUCCESS;
}
CUresult emu_set_access(CUdeviceptr p, size_t bytes, const CUmemAccessDesc* d, size_t n) {
  std::lock_guard lk(g_mu);
  if (n != 1 || d->flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE || d->location.type != CU_MEM_LOCATION_TYPE_DEVICE ||
      !covered_by_mappings(p, bytes, true))
    return CUDA_ERROR_INVALID_VALUE;
  return CUDA_SUCCESS;
}
CUresult emu_granularity(size_t* g, const CUmemAllocationProp*, CUmemAllocationGranularity_flags) {
  *g = kGranule;
  return CUDA_SUCCESS;
}
CUresult emu_error_name(CUresult r, const char** name) {
  switch (r) {
    case CUDA_SUCCESS: *name = "CUDA_SUCCESS"; return CUDA_SUCCESS;
    case CUDA_ERROR_INVALID_VALUE: *name = "CUDA_ERROR_INVALID_VALUE"; return CUDA_SUCCESS;
    case CUDA_ERROR_OUT_OF_MEMORY: *name = "CUDA_ERROR_OUT_OF_MEMORY"; return CUDA_SUCCESS;
  }
  return CUDA_ERROR_INVALID_VALUE;
}

}  // namespace

cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** fn, unsigned, unsigned long long,
                                             cudaDriverEntryPointQueryResult* status) {
  static const std::unordered_map<std::string, void*> table{
      {"cuMemAddressReserve", reinterpret_cast<void*>(&emu_address_reserve)},
      {"cuMemAddressFree", reinterpret_cast<void*>(&emu_address_free)},
      {"cuMemCreate", reinterpret_cast<void*>(&emu_create)},
      {"cuMemRelease", reinterpret_cast<void*>(&emu_release)},
      {"cuMemMap", reinterpret_cast<void*>(&emu_map)},
      {"cuMemUnmap", reinterpret_cast<void*>(&emu_unmap)},
      {"cuMemSetAccess", reinterpret_cast<void*>(&emu_set_access)},
      {"cuMemGetAllocationGranularity", reinterpret_cast<void*>(&emu_granularity)},
      {"cuGetErrorName", reinterpret_cast<void*>(&emu_error_name)},
  };
  auto it = table.find(symbol);
  *fn = it == table.end() ? nullptr : it->second;
  if (status) *status = it == table.end() ? cudaDriverEntryPointSymbolNotFound : cudaDriverEntryPointSuccess;
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = new CUstream_st;
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (s != nullptr && s->capturing) return fail(cudaErrorIllegalState);
  delete s;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return forbidden_in_capture(cudaErrorStreamCaptureUnsupported); }
cudaError_t cudaStreamQuery(cudaStream_t) { return forbidden_in_capture(cudaErrorStreamCaptureUnsupported); }

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
  if (s == nullptr) return fail(cudaErrorStreamCaptureUnsupported);  // the legacy stream cannot capture
  std::lock_guard lk(g_capture_mu);
  if (s->capturing) return fail(cudaErrorIllegalState);
  s->capturing = true;
  s->invalidated = false;
  s->recorded.clear();
  capturing_streams().push_back(s);
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph) {
  *graph = nullptr;
  std::lock_guard lk(g_capture_mu);
  if (s == nullptr || !s->capturing) return fail(cudaErrorIllegalState);
  auto& v = capturing_streams();
  v.erase(std::find(v.begin(), v.end(), s));
  s->capturing = false;
  std::vector<std::function<void()>> work = std::move(s->recorded);
  s->recorded.clear();
  if (s->invalidated) return fail(cudaErrorStreamCaptureInvalidated);
  *graph = new CUgraph_st{std::move(work)};
  return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* status) {
  *status = s == nullptr || !s->capturing ? cudaStreamCaptureStatusNone
            : s->invalidated              ? cudaStreamCaptureStatusInvalidated
                                          : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  if (graph == nullptr) return fail(cudaErrorInvalidValue);
  *exec = new CUgraphExec_st{graph->work};
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  if (exec == nullptr) return fail(cudaErrorInvalidValue);
  return lmf::emu::enqueue(s, [exec] {
    for (const auto& w : exec->work) w();
  });
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete graph;
  return cudaSuccess;
}

struct CUevent_st {
  std::chrono::steady_clock::time_point at;
};
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new CUevent_st;
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  return lmf::emu::enqueue(s, [e] { e->at = std::chrono::steady_clock::now(); });
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return forbidden_in_capture(cudaErrorStreamCaptureUnsupported); }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop) {
  *ms = std::chrono::duration<float, std::milli>(stop->at - start->at).count();
  return cudaSuccess;
}

// ---- cuBLAS ------------------------------------------------------------------------------------

struct cublasContext {
  cudaStream_t stream = nullptr;
};

cublasStatus_t cublasCreate(cublasHandle_t* h) {
  *h = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetAtomicsMode(cublasHandle_t, cublasAtomicsMode_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetPointerMode(cublasHandle_t, cublasPointerMode_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
  if (h == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  h->stream = s;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void*, size_t) {
  return h == nullptr ? CUBLAS_STATUS_INVALID_VALUE : CUBLAS_STATUS_SUCCESS;
}
const char* cublasGetStatusName(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_INVALID_VALUE: break;
  }
  return "CUBLAS_STATUS_INVALID_VALUE";
}
const char* cublasGetStatusString(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_INVALID_VALUE: break;
  }
  return "invalid value";
}

namespace {

bool gemm_args_valid(cudaDataType_t at, cudaDataType_t bt, cudaDataType_t ct, int m, int n, int k) {
  return at == bt && (at == CUDA_R_32F || at == CUDA_R_16BF) &&
         (ct == CUDA_R_32F || (ct == CUDA_R_16BF && at == CUDA_R_16BF)) && m >= 0 && n >= 0 && k >= 0;
}

// The GEMM itself, at once (cublasGemmEx enqueues it; cublasLtMatmul's work calls it).
void gemm_now(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha, const void* A,
              cudaDataType_t at, int lda, const void* B, int ldb, float beta, void* C, cudaDataType_t ct,
              int ldc, cublasComputeType_t compute) {
  if (m == 0 || n == 0) return;
  if (ct == CUDA_R_16BF) {
    // A bf16 C: the fp32 GEMM on C widened (exactly), then each result rounded once to nearest
    // even (core/half.h), as cuBLAS rounds its fp32 accumulator into a bf16 D.
    auto* c16 = static_cast<uint16_t*>(C);
    std::vector<float> wide((size_t)ldc * n);
    for (size_t i = 0; i < wide.size(); ++i) wide[i] = lmf::bf16_to_float(c16[i]);
    gemm_now(ta, tb, m, n, k, alpha, A, at, lda, B, ldb, beta, wide.data(), CUDA_R_32F, ldc, compute);
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < m; ++i)
        c16[(size_t)j * ldc + i] = lmf::float_to_bf16(wide[(size_t)j * ldc + i]);
    return;
  }
  const float* a = static_cast<const float*>(A);
  const float* b = static_cast<const float*>(B);
  const size_t na = size_t(lda) * size_t(ta == CUBLAS_OP_N ? k : m);
  const size_t nb = size_t(ldb) * size_t(tb == CUBLAS_OP_N ? n : k);
  // The fast compute types read their operands rounded (the CPU backend's emulation of them);
  // bf16 operands are widened (exactly).
  std::vector<float> ra, rb;
  if (at == CUDA_R_16BF) {
    auto widen = [](const void* src, size_t count, std::vector<float>& dst) {
      const auto* bits = static_cast<const uint16_t*>(src);
      dst.resize(count);
      for (size_t i = 0; i < count; ++i) {
        const uint32_t u = uint32_t(bits[i]) << 16;
        std::memcpy(&dst[i], &u, sizeof u);
      }
    };
    widen(A, na, ra);
    widen(B, nb, rb);
    a = ra.data();
    b = rb.data();
  } else if (compute != CUBLAS_COMPUTE_32F) {
    const auto p = compute == CUBLAS_COMPUTE_32F_FAST_16BF ? lmf::ops::MatmulPrecision::bf16
                                                           : lmf::ops::MatmulPrecision::tf32;
    ra.resize(na);
    rb.resize(nb);
    for (size_t i = 0; i < na; ++i) ra[i] = lmf::ops::round_operand(a[i], p);
    for (size_t i = 0; i < nb; ++i) rb[i] = lmf::ops::round_operand(b[i], p);
    a = ra.data();
    b = rb.data();
  }
  cblas_sgemm(CblasColMajor, ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
              tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, alpha, a, lda, b, ldb, beta,
              static_cast<float*>(C), ldc);
}

// Enqueues a GEMM's work on its stream; a refusal (the legacy stream during a capture) is an
// execution failure, as cuBLAS reports a launch that failed.
cublasStatus_t enqueue_gemm(cudaStream_t s, std::function<void()> work) {
  return lmf::emu::enqueue(s, std::move(work)) == cudaSuccess ? CUBLAS_STATUS_SUCCESS
                                                              : CUBLAS_STATUS_EXECUTION_FAILED;
}

}  // namespace

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void* alpha, const void* A, cudaDataType_t at, int lda, const void* B,
                            cudaDataType_t bt, int ldb, const void* beta, void* C, cudaDataType_t ct, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t) {
  if (h == nullptr || !gemm_args_valid(at, bt, ct, m, n, k)) return CUBLAS_STATUS_INVALID_VALUE;
  // alpha and beta are host values (CUBLAS_POINTER_MODE_HOST), read at the call as cuBLAS reads them.
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  return enqueue_gemm(h->stream,
                      [=] { gemm_now(ta, tb, m, n, k, al, A, at, lda, B, ldb, be, C, ct, ldc, compute); });
}

// ---- cuBLASLt ----------------------------------------------------------------------------------

struct cublasLtContext {};
struct cublasLtMatmulDescOpaque {
  cublasComputeType_t compute;
  cublasOperation_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_N;
  uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  int32_t bias_type = -1;  // -1: D's type (cuBLASLt's default)
  const void* aux = nullptr;  // GELU's input: written by GELU_AUX(_BIAS), read by DGELU; D's type
  int64_t aux_ld = 0;
};
struct cublasLtMatrixLayoutOpaque {
  cudaDataType type;
  uint64_t rows, cols;
  int64_t ld;
};
struct cublasLtMatmulPreferenceOpaque {};

namespace {
template <class T>
cublasStatus_t read_attr(T& dst, const void* buf, size_t bytes) {
  if (buf == nullptr || bytes != sizeof(T)) return CUBLAS_STATUS_INVALID_VALUE;
  std::memcpy(&dst, buf, sizeof(T));
  return CUBLAS_STATUS_SUCCESS;
}
}  // namespace

cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) {
  *h = new cublasLtContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t compute, cudaDataType_t scale) {
  if (scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  *d = new cublasLtMatmulDescOpaque{compute};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t bytes) {
  int32_t op = 0;
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
      st = read_attr(op, buf, bytes);
      d->ta = cublasOperation_t(op);
      return st;
    case CUBLASLT_MATMUL_DESC_TRANSB:
      st = read_attr(op, buf, bytes);
      d->tb = cublasOperation_t(op);
      return st;
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return read_attr(d->epilogue, buf, bytes);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return read_attr(d->bias, buf, bytes);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: return read_attr(d->bias_type, buf, bytes);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER: return read_attr(d->aux, buf, bytes);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: return read_attr(d->aux_ld, buf, bytes);
  }
  return CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
  if ((type != CUDA_R_32F && type != CUDA_R_16BF) || ld < (int64_t)rows)
    return CUBLAS_STATUS_INVALID_VALUE;
  *l = new cublasLtMatrixLayoutOpaque{type, rows, cols, ld};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) {
  *p = new cublasLtMatmulPreferenceOpaque;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t,
                                                    const void* buf, size_t) {
  return buf ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
  delete p;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t,
                                              cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                              cublasLtMatmulPreference_t, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int* found) {
  if (h == nullptr || requested <= 0) return CUBLAS_STATUS_INVALID_VALUE;
  results[0] = cublasLtMatmulHeuristicResult_t{};
  results[0].state = CUBLAS_STATUS_SUCCESS;
  *found = 1;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t d, const void* alpha, const void* A,
                              cublasLtMatrixLayout_t a, const void* B, cublasLtMatrixLayout_t b, const void* beta,
                              const void* C, cublasLtMatrixLayout_t c, void* D, cublasLtMatrixLayout_t dl,
                              const cublasLtMatmulAlgo_t* algo, void*, size_t, cudaStream_t stream) {
  if (h == nullptr || algo == nullptr || C != D || c != dl) return CUBLAS_STATUS_NOT_SUPPORTED;  // as matmul.cu calls it
  const int m = (int)c->rows, n = (int)c->cols;
  const int k = (int)(d->ta == CUBLAS_OP_N ? a->cols : a->rows);
  if ((int)(d->tb == CUBLAS_OP_N ? b->rows : b->cols) != k) return CUBLAS_STATUS_INVALID_VALUE;
  if (a->type != b->type || (c->type == CUDA_R_16BF && a->type != CUDA_R_16BF))
    return CUBLAS_STATUS_NOT_SUPPORTED;
  const uint32_t epi = d->epilogue;
  const bool biased = epi == CUBLASLT_EPILOGUE_BIAS || epi == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
  const bool gelu = epi == CUBLASLT_EPILOGUE_GELU_AUX || epi == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
  const bool dgelu = epi == CUBLASLT_EPILOGUE_DGELU;
  if (!biased && !gelu && !dgelu && epi != CUBLASLT_EPILOGUE_DEFAULT) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (biased && d->bias == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  // The aux matrix: D's layout and type, its leading dimension a multiple of 8 and >= m, as the
  // library requires.
  if ((gelu || dgelu) && (d->aux == nullptr || d->aux_ld < (int64_t)c->rows || d->aux_ld % 8 != 0))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (!gemm_args_valid(a->type, b->type, CUDA_R_32F, m, n, k)) return CUBLAS_STATUS_INVALID_VALUE;
  const cudaDataType bias_type = d->bias_type < 0 ? c->type : cudaDataType(d->bias_type);
  // The call as it is now, copied: a graph's launch runs the GEMM that was enqueued, whatever the
  // descriptors say by then; alpha and beta are host values.
  const cublasLtMatmulDescOpaque desc = *d;
  const cublasLtMatrixLayoutOpaque lc = *c;
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  const cudaDataType a_type = a->type;
  const int lda = (int)a->ld, ldb = (int)b->ld;
  return enqueue_gemm(stream, [=] {
    const auto* d = &desc;
    const auto* c = &lc;
    // The epilogue works on the fp32 result: with a bf16 D, the GEMM goes to an fp32 copy of D,
    // the bias is added there, and each value is rounded once into D (to nearest even).
    const bool d16 = c->type == CUDA_R_16BF;
    std::vector<float> wide;
    float* out = static_cast<float*>(D);
    if (d16) {
      wide.resize((size_t)c->ld * n);
      const auto* d_bits = static_cast<const uint16_t*>(D);
      for (size_t i = 0; i < wide.size(); ++i) wide[i] = lmf::bf16_to_float(d_bits[i]);
      out = wide.data();
    }
    gemm_now(d->ta, d->tb, m, n, k, al, A, a_type, lda, B, ldb, be, out, CUDA_R_32F, (int)c->ld, d->compute);
    if (biased) {
      auto bias_at = [&](int i) {
        return bias_type == CUDA_R_16BF ? lmf::bf16_to_float(static_cast<const uint16_t*>(d->bias)[i])
                                        : static_cast<const float*>(d->bias)[i];
      };
      for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) out[(size_t)j * c->ld + i] += bias_at(i);
    }
    if (gelu || dgelu) {
      const auto aux_at = [&](size_t k) {
        return d16 ? lmf::bf16_to_float(static_cast<const uint16_t*>(d->aux)[k]) : static_cast<const float*>(d->aux)[k];
      };
      for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
          float& v = out[(size_t)j * c->ld + i];
          const size_t k = (size_t)j * d->aux_ld + i;
          if (gelu) {
            if (d16)
              static_cast<uint16_t*>(const_cast<void*>(d->aux))[k] = lmf::float_to_bf16(v);
            else
              static_cast<float*>(const_cast<void*>(d->aux))[k] = v;
            v = lmf::cuda::detail::gelu(v);  // the kernels' GELU (gelu.cuh)
          } else {
            v = lmf::cuda::detail::gelu_grad(aux_at(k), v);
          }
        }
    }
    if (d16) {
      auto* d_bits = static_cast<uint16_t*>(D);
      for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i)
          d_bits[(size_t)j * c->ld + i] = lmf::float_to_bf16(out[(size_t)j * c->ld + i]);
    }
  });
}
