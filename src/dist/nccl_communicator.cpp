// NCCL implementation of Communicator (compiled when CMake finds CUDA and NCCL >= 2.14; read
// dist/nccl_communicator.h first). Host code: the NCCL and CUDA runtime C APIs only.
//
// The NCCL communicator is non-blocking (ncclConfig_t::blocking = 0): initialisation, split and
// every enqueue return at once, maybe with ncclInProgress, and this file polls
// ncclCommGetAsyncError until the call has settled. So nothing here blocks inside NCCL, and one
// deadline (timeout_s) covers a peer that died before init, during a split, or mid-collective, as
// MpiCommunicator's MPI_Test polling does. A blocking collective then polls cudaStreamQuery(0):
// the collective is on stream 0 after everything queued before it.
//
// Uneven shards: NCCL's reduce-scatter and all-gather need equal counts, and dist::Sharding's
// last shard may be shorter or empty, so reduce_scatter_sum is one ncclReduce per rank (root r
// receives its block) and all_gather one in-place ncclBroadcast per rank (root r sends its
// block), each batch fused by ncclGroupStart/End into one launch.
#include "dist/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <nccl.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <numeric>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "ops/cuda/cuda_util.h"

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 14, 0)
#error "lmforge's NCCL communicator needs NCCL >= 2.14 (non-blocking communicators); CMake checks"
#endif

// LMF_NCCL_CHECK(ncclAllReduce(...)): throws lmf::Error naming the call unless it succeeded or,
// the communicator being non-blocking, is still in progress (then settle() waits for it).
#define LMF_NCCL_CHECK(call)                                              \
  do {                                                                    \
    const ncclResult_t lmf_nccl_res_ = (call);                            \
    if (lmf_nccl_res_ != ncclSuccess && lmf_nccl_res_ != ncclInProgress)  \
      ::lmf::dist::nccl_failed(lmf_nccl_res_, #call, __FILE__, __LINE__); \
  } while (0)

namespace lmf::dist {

namespace {

// NCCL is loaded when the first NCCL communicator is made (dlopen), not linked: lmforge then
// starts on machines without libnccl (one GPU, or the CPU), and NCCL (about 200 MB) need not
// travel with it. Only these entry points are used.
struct NcclApi {
  decltype(&::ncclAllReduce) AllReduce = nullptr;
  decltype(&::ncclBroadcast) Broadcast = nullptr;
  decltype(&::ncclCommAbort) CommAbort = nullptr;
  decltype(&::ncclCommCount) CommCount = nullptr;
  decltype(&::ncclCommDestroy) CommDestroy = nullptr;
  decltype(&::ncclCommFinalize) CommFinalize = nullptr;
  decltype(&::ncclCommGetAsyncError) CommGetAsyncError = nullptr;
  decltype(&::ncclCommInitRankConfig) CommInitRankConfig = nullptr;
  decltype(&::ncclCommSplit) CommSplit = nullptr;
  decltype(&::ncclCommUserRank) CommUserRank = nullptr;
  decltype(&::ncclGetErrorString) GetErrorString = nullptr;
  decltype(&::ncclGetLastError) GetLastError = nullptr;
  decltype(&::ncclGetUniqueId) GetUniqueId = nullptr;
  decltype(&::ncclGroupEnd) GroupEnd = nullptr;
  decltype(&::ncclGroupStart) GroupStart = nullptr;
  decltype(&::ncclReduce) Reduce = nullptr;
};

const NcclApi& nccl_api() {
  static const NcclApi api = [] {
    void* lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!lib) lib = dlopen("libnccl.so", RTLD_NOW | RTLD_LOCAL);
    if (!lib)
      throw UserError("GPU collectives need NCCL, and libnccl.so.2 was not found ({}); install NCCL (libnccl2) "
                      "or add its directory to LD_LIBRARY_PATH",
                      dlerror());
    NcclApi a;
    auto bind = [lib](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      if (!fn) throw UserError("the NCCL library found has no {} (lmforge needs NCCL >= 2.18)", name);
    };
    bind(a.AllReduce, "ncclAllReduce");
    bind(a.Broadcast, "ncclBroadcast");
    bind(a.CommAbort, "ncclCommAbort");
    bind(a.CommCount, "ncclCommCount");
    bind(a.CommDestroy, "ncclCommDestroy");
    bind(a.CommFinalize, "ncclCommFinalize");
    bind(a.CommGetAsyncError, "ncclCommGetAsyncError");
    bind(a.CommInitRankConfig, "ncclCommInitRankConfig");
    bind(a.CommSplit, "ncclCommSplit");
    bind(a.CommUserRank, "ncclCommUserRank");
    bind(a.GetErrorString, "ncclGetErrorString");
    bind(a.GetLastError, "ncclGetLastError");
    bind(a.GetUniqueId, "ncclGetUniqueId");
    bind(a.GroupEnd, "ncclGroupEnd");
    bind(a.GroupStart, "ncclGroupStart");
    bind(a.Reduce, "ncclReduce");
    return a;
  }();
  return api;
}

[[noreturn]] void nccl_failed(ncclResult_t res, const char* call, const char* file, int line) {
  const char* last = nccl_api().GetLastError(nullptr);  // NCCL's own message; its argument is unused
  throw Error(fmt::format("NCCL error {} ({}) in {} at {}:{}{}{}", int(res),
                          nccl_api().GetErrorString(res), call, file, line, last && *last ? ": " : "",
                          last ? last : ""));
}

// Legacy default stream: every lmforge kernel runs on it (nothing here or in ops/cuda is built
// with --default-stream per-thread), so collectives are ordered with the compute.
const cudaStream_t kStream = nullptr;

class NcclCommunicator final : public Communicator {
 public:
  // The world communicator over host's ranks, on the current device. Collective over host.
  NcclCommunicator(Communicator& host, double timeout_s)
      : host_(host), timeout_s_(timeout_s), world_rank_(host.rank()), world_size_(host.world()) {
    who_ = "rank " + std::to_string(world_rank_) + " of " + std::to_string(world_size_);
    int device = -1;  // NCCL binds the communicator to the current device: fail early without one
    LMF_CUDA_CHECK(cudaGetDevice(&device));
    ncclUniqueId id{};
    if (host.rank() == 0) LMF_NCCL_CHECK(nccl_api().GetUniqueId(&id));
    host.broadcast(&id, sizeof id, 0);  // counted in the host's stats, once
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    LMF_NCCL_CHECK(nccl_api().CommInitRankConfig(&comm_, host.world(), id, host.rank(), &config));
    settle("init");
    init_rank();
  }
  NcclCommunicator(const NcclCommunicator&) = delete;  // one owner destroys each ncclComm_t
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  // Finalizes the communicator (waits, under the timeout, until this rank's queued collectives
  // are flushed and the peers are quiescent) and destroys it. While an exception unwinds, or past
  // the timeout, it aborts instead: the peers may never reach their finalize, and an error on
  // its way to the user must not wait timeout_s for them.
  ~NcclCommunicator() override {
    if (comm_ != nullptr) {
      if (std::uncaught_exceptions() == 0 && finalized())
        (void)nccl_api().CommDestroy(comm_);
      else
        (void)nccl_api().CommAbort(comm_);
    }
    cuda::device_free(one_, sizeof(int));
  }

  int rank() const override { return rank_; }
  int world() const override { return world_; }
  std::string kind() const override { return "nccl"; }

  void all_reduce_sum(float* data, size_t n) override {
    issue_all_reduce(data, n, ncclFloat32, sizeof(float), ncclSum);
    wait("all_reduce");
  }
  void all_reduce_sum(double* data, size_t n) override {
    issue_all_reduce(data, n, ncclFloat64, sizeof(double), ncclSum);
    wait("all_reduce");
  }
  // NCCL adds bf16 in float and rounds each sum: over two ranks one rounding, as the host's
  // (Communicator::all_reduce_sum(bf16*)); over more, a ring rounds its partial sums on the way.
  void all_reduce_sum(bf16* data, size_t n) override {
    issue_all_reduce(data, n, ncclBfloat16, sizeof(bf16), ncclSum);
    wait("all_reduce");
  }
  void all_reduce_max(int* data, size_t n) override {
    issue_all_reduce(data, n, ncclInt32, sizeof(int), ncclMax);
    wait("all_reduce");
  }
  void reduce_scatter_sum(const float* in, float* out, const std::vector<int>& counts) override {
    check_counts("reduce_scatter", counts);
    count(stats_.reduce_scatter,
          uint64_t(std::accumulate(counts.begin(), counts.end(), int64_t(0))) * 4);
    issue_reduce_scatter(in, out, counts);
    wait("reduce_scatter");
  }
  void all_gather(float* data, const std::vector<int>& counts) override {
    check_counts("all_gather", counts);
    count(stats_.all_gather, uint64_t(counts[size_t(rank_)]) * 4);
    issue_all_gather(data, counts);
    wait("all_gather");
  }
  void broadcast(void* data, size_t bytes, int root) override {
    LMF_CHECK(root >= 0 && root < world_, "broadcast: root {} of {} ranks", root, world_);
    count(stats_.broadcast, bytes);
    if (bytes > 0) LMF_NCCL_CHECK(nccl_api().Broadcast(data, data, bytes, ncclInt8, root, comm_, kStream));
    wait("broadcast");
  }
  void start_all_reduce_sum(float* data, size_t n) override {
    issue_all_reduce(data, n, ncclFloat32, sizeof(float), ncclSum);
    settle("all_reduce");
    pending_ = true;
  }
  void start_all_gather(float* data, const std::vector<int>& counts) override {
    check_counts("all_gather", counts);
    count(stats_.all_gather, uint64_t(counts[size_t(rank_)]) * 4);
    issue_all_gather(data, counts);
    settle("all_gather");
    pending_ = true;
  }
  void finish_all() override {
    if (pending_) wait("started all_reduce/all_gather");
  }
  // A 1-int all-reduce on the device, then the wait: every rank has reached it (and this rank's
  // earlier work on stream 0 is done). Not host.barrier(): a split communicator's group is not
  // the host's. Counted as a call, without payload (as MpiCommunicator's barrier).
  void barrier() override {
    ++stats_.calls;
    LMF_NCCL_CHECK(nccl_api().AllReduce(one_, one_, 1, ncclInt32, ncclMax, comm_, kStream));
    wait("barrier");
  }
  std::unique_ptr<Communicator> split(int color, int key) override {
    LMF_CHECK(color >= 0, "split: color {}", color);
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0)
    ncclComm_t sub = nullptr;
    // config nullptr: the new communicator inherits this one's (non-blocking).
    LMF_NCCL_CHECK(nccl_api().CommSplit(comm_, color, key, &sub, nullptr));
    settle("split");
    return std::unique_ptr<Communicator>(new NcclCommunicator(*this, sub));
#else
    (void)key;
    throw UserError(
        "split of an NCCL communicator needs NCCL >= 2.18 (this lmforge was built with NCCL "
        "{}.{}.{})",
        NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH);
#endif
  }
  [[noreturn]] void abort(int code) override {
    std::fflush(stdout);
    std::fflush(stderr);
    if (comm_ != nullptr) (void)nccl_api().CommAbort(comm_);  // stops this rank's NCCL kernels
    comm_ = nullptr;
    host_.abort(code);  // the whole job, also from a split communicator
    std::_Exit(code);   // not reached ([[noreturn]] is not seen through the virtual call)
  }

 private:
  // A split of `parent` (sub from ncclCommSplit): same host, timeout and device, its own stats.
  NcclCommunicator(const NcclCommunicator& parent, ncclComm_t sub)
      : host_(parent.host_),
        timeout_s_(parent.timeout_s_),
        comm_(sub),
        world_rank_(parent.world_rank_),
        world_size_(parent.world_size_) {
    who_ = parent.world_who();
    LMF_CHECK(comm_ != nullptr, "ncclCommSplit gave no communicator for color >= 0");
    settle("split");  // the new communicator's own initialisation
    init_rank();
    // Messages name the process by its world rank, the one the launcher and the logs know it by.
    who_ = world_who() + " (" + std::to_string(rank_) + " of " + std::to_string(world_) +
           " in a split group)";
  }

  // ncclCommFinalize, then its completion polled under the timeout; false on an error or past it.
  bool finalized() noexcept {
    const ncclResult_t res = nccl_api().CommFinalize(comm_);
    if (res != ncclSuccess && res != ncclInProgress) return false;
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s_);
    for (;;) {
      ncclResult_t state = ncclSuccess;
      if (nccl_api().CommGetAsyncError(comm_, &state) != ncclSuccess) return false;
      if (state == ncclSuccess) return true;
      if (state != ncclInProgress || std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

  std::string world_who() const {
    return "rank " + std::to_string(world_rank_) + " of " + std::to_string(world_size_);
  }

  // After the communicator has settled: its rank and size, and barrier()'s device int. A
  // constructor that throws runs no destructor: the communicator is freed here then.
  void init_rank() {
    try {
      LMF_NCCL_CHECK(nccl_api().CommUserRank(comm_, &rank_));
      LMF_NCCL_CHECK(nccl_api().CommCount(comm_, &world_));
      one_ = static_cast<int*>(cuda::device_malloc(sizeof(int)));
      LMF_CUDA_CHECK(cudaMemset(one_, 0, sizeof(int)));
    } catch (...) {
      (void)nccl_api().CommAbort(comm_);
      cuda::device_free(one_, sizeof(int));
      throw;
    }
  }

  void count(uint64_t& what, uint64_t bytes) {
    what += bytes;
    ++stats_.calls;
  }

  void check_counts(const char* what, const std::vector<int>& counts) const {
    LMF_CHECK(int(counts.size()) == world_, "{}: {} counts for {} ranks", what, counts.size(),
              world_);
    for (int c : counts) LMF_CHECK(c >= 0, "{}: count {}", what, c);
  }

  // ncclGroupStart, the calls of `issue`, ncclGroupEnd (also when a call throws, so that NCCL's
  // group depth stays balanced).
  template <class Issue>
  void group(Issue&& issue) {
    LMF_NCCL_CHECK(nccl_api().GroupStart());
    try {
      issue();
    } catch (...) {
      (void)nccl_api().GroupEnd();
      throw;
    }
    LMF_NCCL_CHECK(nccl_api().GroupEnd());
  }

  // Root r gets the sum of everyone's in[offset_r, offset_r + counts[r]) into its `out`; `out`
  // is ignored on the other ranks.
  // Counts and enqueues an in-place all-reduce of n values (nothing is enqueued for n = 0).
  void issue_all_reduce(void* data, size_t n, ncclDataType_t type, size_t value_bytes, ncclRedOp_t op) {
    count(stats_.all_reduce, n * value_bytes);
    if (n > 0) LMF_NCCL_CHECK(nccl_api().AllReduce(data, data, n, type, op, comm_, kStream));
  }
  void issue_reduce_scatter(const float* in, float* out, const std::vector<int>& counts) {
    group([&] {
      size_t offset = 0;
      for (int r = 0; r < world_; ++r) {
        const size_t n = size_t(counts[size_t(r)]);
        if (n > 0)
          LMF_NCCL_CHECK(nccl_api().Reduce(in + offset, out, n, ncclFloat32, ncclSum, r, comm_, kStream));
        offset += n;
      }
    });
  }

  // Root r sends its block data[offset_r, offset_r + counts[r]), which every rank receives in
  // place.
  void issue_all_gather(float* data, const std::vector<int>& counts) {
    group([&] {
      size_t offset = 0;
      for (int r = 0; r < world_; ++r) {
        const size_t n = size_t(counts[size_t(r)]);
        if (n > 0)
          LMF_NCCL_CHECK(
              nccl_api().Broadcast(data + offset, data + offset, n, ncclFloat32, r, comm_, kStream));
        offset += n;
      }
    });
  }

  // Polls `done` (which reports a failure through failed()) until it is true, or ends the job
  // past the deadline. Spins briefly (a small collective on a quiet job takes microseconds), then
  // yields the core.
  template <class Done>
  void poll(const char* what, Done&& done) {
    using clock = std::chrono::steady_clock;
    const auto deadline = clock::now() + std::chrono::duration<double>(timeout_s_);
    for (long polls = 0;; ++polls) {
      if (done()) return;
      if (polls > 1000)
        std::this_thread::sleep_for(std::chrono::microseconds(polls > 100000 ? 1000 : 50));
      if (clock::now() > deadline) {
        std::fprintf(
            stderr,
            "lmforge: error: %s: NCCL %s did not complete within %.0f s ([dist] timeout_s): "
            "a rank died or hangs\n",
            who_.c_str(), what, timeout_s_);
        abort(3);
      }
    }
  }

  // True once the last NCCL call has settled (no longer ncclInProgress); a failure ends the job.
  bool settled(const char* what) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t res = nccl_api().CommGetAsyncError(comm_, &state);
    if (res != ncclSuccess) failed(what, nccl_api().GetErrorString(res));
    if (state == ncclInProgress) return false;
    if (state != ncclSuccess) failed(what, nccl_api().GetErrorString(state));
    return true;
  }

  // Waits until the last NCCL call has been issued (not completed).
  void settle(const char* what) {
    poll(what, [&] { return settled(what); });
  }

  // Waits until the last NCCL call is issued and stream 0 has drained: every collective started
  // so far (and every kernel before it) is complete.
  void wait(const char* what) {
    poll(what, [&] {
      if (!settled(what)) return false;
      const cudaError_t err = cudaStreamQuery(kStream);
      if (err == cudaErrorNotReady) return false;
      if (err != cudaSuccess) failed(what, cudaGetErrorString(err));
      return true;
    });
    pending_ = false;
  }

  // A collective failed after it was issued (a peer's failure seen by NCCL, a CUDA fault): the
  // job cannot go on, and the peers would otherwise wait out their timeout.
  [[noreturn]] void failed(const char* what, const char* why) {
    const char* last = nccl_api().GetLastError(comm_);
    std::fprintf(stderr, "lmforge: error: %s: NCCL %s failed: %s%s%s\n", who_.c_str(), what, why,
                 last && *last ? ": " : "", last ? last : "");
    abort(3);
  }

  Communicator& host_;  // the world host communicator: the unique id, and abort()
  double timeout_s_;
  ncclComm_t comm_ = nullptr;            // owned; non-blocking
  int rank_ = 0, world_ = 1;             // in comm_
  int world_rank_ = 0, world_size_ = 1;  // in the host communicator, for messages
  std::string who_;                      // "rank 3 of 8 ...": how messages name this process
  int* one_ = nullptr;                   // (1) device int, barrier()'s payload
  bool pending_ = false;                 // started collectives that no wait has completed yet
};

}  // namespace

bool nccl_built() { return true; }

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& host, double timeout_s) {
  return std::make_unique<NcclCommunicator>(host, timeout_s);
}

}  // namespace lmf::dist
