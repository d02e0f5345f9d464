// MPI implementation of Communicator (compiled when CMake finds MPI). Each collective is the
// non-blocking MPI-3 call (MPI_Iallreduce, ...) completed by polling MPI_Test against a
// deadline, so that a rank whose peer died or hangs gives up after timeout_s with one line
// instead of blocking forever. split() gives MpiCommunicators over MPI_Comm_split
// sub-communicators, which free their MPI_Comm; only the world one finalizes MPI.
// The C API only: no MPI C++ bindings (deprecated, and a separate library in OpenMPI).
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "dist/communicator.h"

namespace lmf::dist {

namespace {

class MpiCommunicator final : public Communicator {
 public:
  // The world communicator: initializes MPI unless someone else did, and then finalizes it.
  explicit MpiCommunicator(double timeout_s) : timeout_s_(timeout_s) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      int provided = 0;
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
      owns_mpi_ = true;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &world_);
    world_rank_ = rank_;
    world_size_ = world_;
    who_ = "rank " + std::to_string(rank_) + " of " + std::to_string(world_);
  }
  MpiCommunicator(const MpiCommunicator&) = delete;  // one owner frees each MPI_Comm
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;  // a sub-communicator outlived the world one: nothing left to free
    if (comm_ != MPI_COMM_WORLD) MPI_Comm_free(&comm_);
    if (owns_mpi_) MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int world() const override { return world_; }
  std::string kind() const override { return "mpi"; }

  void all_reduce_sum(float* data, size_t n) override {
    stats_.all_reduce += n * 4;
    run("all_reduce", [&](MPI_Request* r) {
      return MPI_Iallreduce(MPI_IN_PLACE, data, int(n), MPI_FLOAT, MPI_SUM, comm_, r);
    });
  }
  void all_reduce_sum(double* data, size_t n) override {
    stats_.all_reduce += n * 8;
    run("all_reduce", [&](MPI_Request* r) {
      return MPI_Iallreduce(MPI_IN_PLACE, data, int(n), MPI_DOUBLE, MPI_SUM, comm_, r);
    });
  }
  void all_reduce_max(int* data, size_t n) override {
    stats_.all_reduce += n * 4;
    run("all_reduce", [&](MPI_Request* r) {
      return MPI_Iallreduce(MPI_IN_PLACE, data, int(n), MPI_INT, MPI_MAX, comm_, r);
    });
  }
  void reduce_scatter_sum(const float* in, float* out, const std::vector<int>& counts) override {
    LMF_CHECK(int(counts.size()) == world_, "reduce_scatter: {} counts for {} ranks", counts.size(), world_);
    stats_.reduce_scatter += uint64_t(std::accumulate(counts.begin(), counts.end(), int64_t(0))) * 4;
    run("reduce_scatter", [&](MPI_Request* r) {
      return MPI_Ireduce_scatter(in, out, counts.data(), MPI_FLOAT, MPI_SUM, comm_, r);
    });
  }
  void all_gather(float* data, const std::vector<int>& counts) override {
    LMF_CHECK(int(counts.size()) == world_, "all_gather: {} counts for {} ranks", counts.size(), world_);
    std::vector<int> displs(world_, 0);
    for (int r = 1; r < world_; ++r) displs[r] = displs[r - 1] + counts[r - 1];
    stats_.all_gather += uint64_t(counts[rank_]) * 4;
    run("all_gather", [&](MPI_Request* r) {
      return MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, counts.data(), displs.data(), MPI_FLOAT,
                             comm_, r);
    });
  }
  void broadcast(void* data, size_t bytes, int root) override {
    stats_.broadcast += bytes;
    run("broadcast", [&](MPI_Request* r) { return MPI_Ibcast(data, int(bytes), MPI_BYTE, root, comm_, r); });
  }
  void start_all_reduce_sum(float* data, size_t n) override {
    stats_.all_reduce += n * 4;
    ++stats_.calls;
    MPI_Request req;
    if (MPI_Iallreduce(MPI_IN_PLACE, data, int(n), MPI_FLOAT, MPI_SUM, comm_, &req) != MPI_SUCCESS)
      failed("all_reduce");
    pending_.push_back(req);
    int done = 0;  // MPI progresses only inside MPI calls: let the earlier ones move
    MPI_Testall(int(pending_.size()), pending_.data(), &done, MPI_STATUSES_IGNORE);
  }
  void start_all_gather(float* data, const std::vector<int>& counts) override {
    LMF_CHECK(int(counts.size()) == world_, "all_gather: {} counts for {} ranks", counts.size(), world_);
    stats_.all_gather += uint64_t(counts[rank_]) * 4;
    ++stats_.calls;
    // The counts and displacements must outlive the request: kept until finish_all().
    auto& arrays = pending_arrays_.emplace_back(counts);
    arrays.resize(2 * size_t(world_), 0);
    for (int r = 1; r < world_; ++r) arrays[size_t(world_ + r)] = arrays[size_t(world_ + r - 1)] + counts[size_t(r - 1)];
    MPI_Request req;
    if (MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, arrays.data(), arrays.data() + world_, MPI_FLOAT,
                        comm_, &req) != MPI_SUCCESS)
      failed("all_gather");
    pending_.push_back(req);
    int done = 0;
    MPI_Testall(int(pending_.size()), pending_.data(), &done, MPI_STATUSES_IGNORE);
  }
  void finish_all() override {
    if (pending_.empty()) return;
    wait("started all_reduce/all_gather", [&] {
      int done = 0;
      MPI_Testall(int(pending_.size()), pending_.data(), &done, MPI_STATUSES_IGNORE);
      return done != 0;
    });
    pending_.clear();
    pending_arrays_.clear();
  }
  void barrier() override {
    run("barrier", [&](MPI_Request* r) { return MPI_Ibarrier(comm_, r); });
  }
  std::unique_ptr<Communicator> split(int color, int key) override {
    LMF_CHECK(color >= 0, "split: color {}", color);
    // MPI has no non-blocking split (MPI_Comm_idup, but no MPI_Comm_isplit). A barrier under the
    // timeout first catches a peer that died or hangs; after it every rank is at the split, so
    // the blocking MPI_Comm_split returns promptly (only a peer dying in between could stall it).
    // Neither is counted in stats: no payload, and done once at startup.
    MPI_Request req;
    if (MPI_Ibarrier(comm_, &req) != MPI_SUCCESS) failed("split");
    wait("split", [&] {
      int done = 0;
      MPI_Test(&req, &done, MPI_STATUS_IGNORE);
      return done != 0;
    });
    MPI_Comm sub = MPI_COMM_NULL;
    if (MPI_Comm_split(comm_, color, key, &sub) != MPI_SUCCESS) failed("split");
    return std::unique_ptr<Communicator>(new MpiCommunicator(*this, sub));
  }
  [[noreturn]] void abort(int code) override {
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);  // the whole job, also from a sub-communicator
    std::_Exit(code);
  }

 private:
  // A sub-communicator of `parent`: same timeout, its own stats, freed (not finalized) at the end.
  MpiCommunicator(const MpiCommunicator& parent, MPI_Comm comm)
      : timeout_s_(parent.timeout_s_),
        comm_(comm),
        world_rank_(parent.world_rank_),
        world_size_(parent.world_size_) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &world_);
    // Messages name the process by its world rank, the one mpirun and the logs know it by.
    who_ = "rank " + std::to_string(world_rank_) + " of " + std::to_string(world_size_) + " (" +
           std::to_string(rank_) + " of " + std::to_string(world_) + " in a split group)";
  }

  [[noreturn]] void failed(const char* what) {
    std::fprintf(stderr, "lmforge: error: %s: MPI %s failed\n", who_.c_str(), what);
    abort(3);
  }

  // Starts a non-blocking collective and polls it to completion or the deadline.
  template <class Start>
  void run(const char* what, Start&& start) {
    ++stats_.calls;
    MPI_Request req;
    if (start(&req) != MPI_SUCCESS) failed(what);
    wait(what, [&] {
      int done = 0;
      MPI_Test(&req, &done, MPI_STATUS_IGNORE);
      return done != 0;
    });
  }

  // Polls `done` until it is true, or ends the job past the deadline.
  template <class Done>
  void wait(const char* what, Done&& done) {
    using clock = std::chrono::steady_clock;
    const auto deadline = clock::now() + std::chrono::duration<double>(timeout_s_);
    for (long polls = 0;; ++polls) {
      if (done()) return;
      // Spin briefly (collectives on a quiet job finish in microseconds), then yield the core.
      if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(polls > 100000 ? 1000 : 50));
      if (clock::now() > deadline) {
        std::fprintf(stderr,
                     "lmforge: error: %s: %s got no answer from the other ranks in %.0f s "
                     "([dist] timeout_s): a rank died or hangs\n",
                     who_.c_str(), what, timeout_s_);
        abort(3);
      }
    }
  }

  double timeout_s_;
  MPI_Comm comm_ = MPI_COMM_WORLD;       // or a split of it, which this object frees
  std::vector<MPI_Request> pending_;     // started by start_all_reduce_sum / start_all_gather
  std::deque<std::vector<int>> pending_arrays_;  // start_all_gather's counts + displacements
  int rank_ = 0, world_ = 1;             // in comm_
  int world_rank_ = 0, world_size_ = 1;  // in MPI_COMM_WORLD, for messages
  std::string who_;                      // "rank 3 of 8 ...": how messages name this process
  bool owns_mpi_ = false;                // initialized MPI, so finalizes it
};

}  // namespace

std::unique_ptr<Communicator> make_communicator(double timeout_s) {
  if (!launched_by_mpi()) return std::make_unique<LocalCommunicator>();
  return std::make_unique<MpiCommunicator>(timeout_s);
}

}  // namespace lmf::dist
