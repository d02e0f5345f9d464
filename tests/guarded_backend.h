#pragma once
// A stand-in for a device backend that runs on any machine: the CPU's ops over "device" memory
// the host cannot touch. Its MemorySpace maps pages with no access (PROT_NONE); only its own
// functions (the ops, copies in and out, zero) open them, for the length of the call. So code
// that reads or writes device memory from the host, or hands a device pointer to a host op,
// dies with SIGSEGV, and an op handed a host pointer where the backend's memory is expected is
// counted as a violation. Any model, optimizer or trainer code that passes on it keeps its
// buffers where a real device backend (CUDA) needs them, and computes the same numbers as the
// CPU backend, bit for bit (the same ops run in the same order).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <type_traits>
#include <utility>

#include "core/error.h"
#include "dist/communicator.h"
#include "ops/backend.h"
#include "ops/cpu/matmul_gelu.h"

namespace lmf::test {

class Guarded {
 public:
  static Guarded& get() {
    static Guarded g;
    return g;
  }
  // Pointer checks that failed (an op given memory that is not the backend's), and the first.
  long violations() const { return violations_; }
  const std::string& first_violation() const { return first_; }
  void reset_violations() {
    violations_ = 0;
    first_.clear();
  }
  size_t live_allocations() const { return ranges_.size(); }
  long allocations() const { return allocations_; }  // every allocate() so far

  // While one lives (on any thread), every allocation of the space is readable and writable.
  class Open {
   public:
    Open() {
      std::lock_guard lk(get().mu_);
      if (get().open_++ == 0) get().protect(PROT_READ | PROT_WRITE);
    }
    ~Open() {
      std::lock_guard lk(get().mu_);
      if (--get().open_ == 0) get().protect(PROT_NONE);
    }
    Open(const Open&) = delete;
    Open& operator=(const Open&) = delete;
  };

  bool owns(const void* p) const {  // call with mu_ held, or from one thread
    auto it = ranges_.upper_bound(static_cast<const char*>(p));
    if (it == ranges_.begin()) return false;
    --it;
    return static_cast<const char*>(p) < it->first + it->second;
  }
  void check(const void* p, const char* op, size_t arg) {
    std::lock_guard lk(mu_);
    if (p == nullptr || owns(p)) return;
    if (violations_++ == 0) first_ = fmt::format("{}: argument {} is not in the guarded device memory", op, arg);
  }

  static const MemorySpace& space() {
    static const VirtualMemory vm{&granularity, &reserve, &free_reserved, &map, &unmap};
    static const MemorySpace s{"guarded", false, &allocate, &deallocate, &copy_in, &copy_out, &zero, &vm};
    return s;
  }
  // Granules of the virtual memory: two pages, so that ranges that end inside one are exercised.
  static size_t granularity() { return 2 * size_t(sysconf(_SC_PAGESIZE)); }
  // Bytes of reserved addresses backed now (mapped), over every reservation.
  size_t mapped_bytes() {
    std::lock_guard lk(mu_);
    return mapped_.size() * granularity();
  }

 private:
  static size_t rounded(size_t bytes) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    return (bytes + page - 1) / page * page;
  }
  static void* allocate(size_t bytes) {
    std::lock_guard lk(get().mu_);
    void* p = mmap(nullptr, rounded(bytes), get().open_ > 0 ? PROT_READ | PROT_WRITE : PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw Error(fmt::format("guarded memory: mmap of {} bytes failed", bytes));
    get().ranges_[static_cast<const char*>(p)] = rounded(bytes);
    ++get().allocations_;
    return p;
  }
  static void deallocate(void* p, size_t bytes) noexcept {
    std::lock_guard lk(get().mu_);
    get().ranges_.erase(static_cast<const char*>(p));
    munmap(p, rounded(bytes));
  }
  static void copy_in(void* dst, const void* src, size_t bytes) {
    get().check(dst, "copy_from_host", 0);
    Open open;
    std::memcpy(dst, src, bytes);
  }
  static void copy_out(void* dst, const void* src, size_t bytes) {
    get().check(src, "copy_to_host", 1);
    Open open;
    std::memcpy(dst, src, bytes);
  }
  static void zero(void* p, size_t bytes) {
    get().check(p, "zero", 0);
    Open open;
    std::memset(p, 0, bytes);
  }
  void protect(int prot) {
    for (const auto& [p, n] : ranges_)
      if (reserved_.contains(p)) {
        // A reservation opens only where it is mapped: released granules fault even inside an op.
        // Runs of adjacent mapped granules, one call each.
        for (auto it = mapped_.lower_bound(p); it != mapped_.end() && *it < p + n;) {
          const char* a = *it;
          const char* b = a + granularity();
          while (++it != mapped_.end() && *it == b) b += granularity();
          if (mprotect(const_cast<char*>(a), size_t(b - a), prot) != 0) throw Error("guarded memory: mprotect failed");
        }
      } else if (mprotect(const_cast<char*>(p), n, prot) != 0) {
        throw Error("guarded memory: mprotect failed");
      }
  }
  // The virtual memory: a reservation is an allocation of the space (ops may be handed pointers
  // into it) whose granules stay without access until mapped. Unmapping drops a granule's contents;
  // mapping it again fills it with NaN bytes (contents undefined, as on a GPU), so a read of
  // mapped values that nothing zeroed or wrote shows.
  static void* reserve(size_t bytes) {
    LMF_CHECK(bytes % granularity() == 0, "guarded reserve of {} bytes", bytes);
    std::lock_guard lk(get().mu_);
    void* p = mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw Error(fmt::format("guarded memory: reserve of {} bytes failed", bytes));
    get().ranges_[static_cast<const char*>(p)] = bytes;
    get().reserved_.insert(static_cast<const char*>(p));
    return p;
  }
  static void free_reserved(void* p, size_t bytes) noexcept {
    std::lock_guard lk(get().mu_);
    for (size_t at = 0; at < bytes; at += granularity()) get().mapped_.erase(static_cast<const char*>(p) + at);
    get().ranges_.erase(static_cast<const char*>(p));
    get().reserved_.erase(static_cast<const char*>(p));
    munmap(p, bytes);
  }
  static void map(void* p, size_t bytes) {
    std::lock_guard lk(get().mu_);
    for (size_t at = 0; at < bytes; at += granularity()) {
      const char* g = static_cast<const char*>(p) + at;
      LMF_CHECK(get().owns(g) && !get().mapped_.contains(g), "guarded map: {} bytes at {} not a free granule",
                bytes, static_cast<const void*>(g));
      get().mapped_.insert(g);
      char* w = const_cast<char*>(g);
      if (mprotect(w, granularity(), PROT_READ | PROT_WRITE) != 0) throw Error("guarded memory: mprotect failed");
      std::memset(w, 0xff, granularity());  // contents undefined: NaNs
      if (get().open_ == 0 && mprotect(w, granularity(), PROT_NONE) != 0)
        throw Error("guarded memory: mprotect failed");
    }
  }
  static void unmap(void* p, size_t bytes) {
    std::lock_guard lk(get().mu_);
    for (size_t at = 0; at < bytes; at += granularity()) {
      const char* g = static_cast<const char*>(p) + at;
      LMF_CHECK(get().mapped_.erase(g) == 1, "guarded unmap: granule at {} not mapped", static_cast<const void*>(g));
      madvise(const_cast<char*>(g), granularity(), MADV_DONTNEED);
      if (mprotect(const_cast<char*>(g), granularity(), PROT_NONE) != 0) throw Error("guarded memory: mprotect failed");
    }
  }

  std::recursive_mutex mu_;                // threads as ranks (tests/thread_comm.h)
  std::map<const char*, size_t> ranges_;  // base -> bytes (whole pages)
  std::set<const char*> reserved_;        // the bases of ranges_ that are virtual memory reservations
  std::set<const char*> mapped_;          // their mapped granules
  int open_ = 0;
  long violations_ = 0;
  long allocations_ = 0;
  std::string first_;
};

// The wrapper of one CPU op: checks that every pointer argument but `host_arg` is in the
// guarded memory, opens it, runs the op.
template <auto Op, int host_arg = -1>
struct GuardedOp;
template <class R, class... A, R (*Op)(A...), int host_arg>
struct GuardedOp<Op, host_arg> {
  static R call(A... a) {
    check(std::index_sequence_for<A...>{}, a...);
    Guarded::Open open;
    return Op(a...);
  }
  template <size_t... I>
  static void check(std::index_sequence<I...>, A... a) {
    (check_one(I, a), ...);
  }
  template <class T>
  static void check_one(size_t i, T v) {
    if constexpr (std::is_pointer_v<T> && !std::is_function_v<std::remove_pointer_t<T>>)
      if (int(i) != host_arg) Guarded::get().check(v, "op", i);
  }
};

// A device communicator's stand-in: the collectives of `inner` (e.g. a thread communicator)
// over guarded memory, which must hold every buffer handed to it (else a violation), opened for
// the length of each collective.
class GuardedComm final : public dist::Communicator {
 public:
  explicit GuardedComm(std::unique_ptr<dist::Communicator> inner) : in_(std::move(inner)) {}
  int rank() const override { return in_->rank(); }
  int world() const override { return in_->world(); }
  std::string kind() const override { return "guarded " + in_->kind(); }
  void all_reduce_sum(float* d, size_t n) override { go(d, [&] { in_->all_reduce_sum(d, n); }); }
  void all_reduce_sum(double* d, size_t n) override { go(d, [&] { in_->all_reduce_sum(d, n); }); }
  void all_reduce_sum(bf16* d, size_t n) override { go(d, [&] { in_->all_reduce_sum(d, n); }); }
  void all_reduce_max(int* d, size_t n) override { go(d, [&] { in_->all_reduce_max(d, n); }); }
  void reduce_scatter_sum(const float* i, float* o, const std::vector<int>& c) override {
    Guarded::get().check(o, "reduce_scatter_sum", 1);
    go(i, [&] { in_->reduce_scatter_sum(i, o, c); });
  }
  void all_gather(float* d, const std::vector<int>& c) override { go(d, [&] { in_->all_gather(d, c); }); }
  void broadcast(void* d, size_t b, int root) override { go(d, [&] { in_->broadcast(d, b, root); }); }
  // Started collectives run at once here (in order), so that their buffers are open meanwhile.
  void start_all_reduce_sum(float* d, size_t n) override { all_reduce_sum(d, n); }
  void start_all_gather(float* d, const std::vector<int>& c) override { all_gather(d, c); }
  void finish_all() override {}
  void barrier() override { in_->barrier(); }
  std::unique_ptr<dist::Communicator> split(int color, int key) override {
    return std::make_unique<GuardedComm>(in_->split(color, key));
  }
  [[noreturn]] void abort(int code) override {
    in_->abort(code);
    std::abort();  // not reached
  }
  const dist::CommStats& inner_stats() const { return in_->stats(); }

 private:
  template <class Fn>
  void go(const void* p, Fn&& fn) {
    Guarded::get().check(p, "collective", 0);
    Guarded::Open open;
    fn();
  }
  std::unique_ptr<dist::Communicator> in_;
};

inline void fill_values(float* x, float value, size_t n) { std::fill(x, x + n, value); }
inline void copy_values(float* dst, const float* src, size_t n) { std::copy(src, src + n, dst); }
inline void no_wait() {}
inline size_t no_peak() { return 0; }

// The guarded backend: the CPU's ops (ops::cpu_backend<float>) behind GuardedOp.
inline const ops::Backend<float>& guarded_backend() {
  using namespace ops;
  using F = float;
  static const Backend<F> b{
      "guarded",
      &Guarded::space(),
      MatmulPrecision::fp32,
      &GuardedOp<&matmul_forward<F>>::call,
      &GuardedOp<&matmul_backward<F>>::call,
      &GuardedOp<&encoder_forward<F>>::call,
      &GuardedOp<&encoder_backward<F>, 3>::call,  // tokens_host
      &GuardedOp<&layernorm_forward<F>>::call,
      &GuardedOp<&layernorm_backward<F>>::call,
      &GuardedOp<&gelu_forward<F>>::call,
      &GuardedOp<&gelu_backward<F>>::call,
      &GuardedOp<&cpu::matmul_gelu_forward<F, &matmul_forward<F>>>::call,
      &GuardedOp<&cpu::matmul_dgelu_backward<F, &matmul_backward<F>>>::call,
      &GuardedOp<&residual_forward<F>>::call,
      &GuardedOp<&residual_layernorm_forward<F>>::call,
      &GuardedOp<&residual_rmsnorm_forward<F>>::call,
      &GuardedOp<&attention_forward<F>>::call,
      &GuardedOp<&attention_backward<F>>::call,
      &GuardedOp<&classifier_ce_forward<F>>::call,
      &GuardedOp<&classifier_logits<F>>::call,
      &GuardedOp<&rmsnorm_forward<F>>::call,
      &GuardedOp<&rmsnorm_backward<F>>::call,
      &GuardedOp<&rope_forward<F>>::call,
      &GuardedOp<&rope_backward<F>>::call,
      &GuardedOp<&swiglu_forward<F>>::call,
      &GuardedOp<&swiglu_backward<F>>::call,
      &GuardedOp<&attention_gqa_forward<F>>::call,
      &GuardedOp<&attention_gqa_backward<F>>::call,
      &GuardedOp<&attention_decode<F>>::call,
      &GuardedOp<&fill_values>::call,
      &GuardedOp<&fill_values>::call,
      &GuardedOp<&copy_values>::call,
      &GuardedOp<&copy_values>::call,
      &GuardedOp<&adamw_update>::call,
      &GuardedOp<&adamw_chunks>::call,
      &GuardedOp<&sum_squares>::call,
      &GuardedOp<&scale>::call,
      &no_wait,
      &no_peak,
  };
  return b;
}

}  // namespace lmf::test
